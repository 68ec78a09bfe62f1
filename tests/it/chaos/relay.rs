//! A small delaying TCP relay, because this kernel has no netem: it listens on one address and
//! forwards each connection to `target`, holding every chunk for the current delay (order kept:
//! one writer per direction). `block()` cuts every connection and refuses new ones (a partition
//! seen as resets), `unblock()` ends it. Plain threads; dropping it stops them within ~100 ms.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Shared {
    target: SocketAddr,
    delay_ms: AtomicU64,
    blocked: AtomicBool,
    stop: AtomicBool,
    next_id: AtomicU64,
    /// Both sockets of every open connection, to cut them on block() and drop.
    conns: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
}

impl Shared {
    fn cut_all(&self) {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, a, b) in conns {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
    fn forget(&self, id: u64) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(i, _, _)| *i != id);
    }
}

/// A running relay; stops on drop.
pub struct Relay {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Relay {
    /// Listens on `listen` (port 0 for any) and relays to `target`.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Relay> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            delay_ms: AtomicU64::new(0),
            blocked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        std::thread::spawn(move || accept_loop(listener, s));
        Ok(Relay { addr, shared })
    }

    /// Every chunk from now on is held this long before it is passed on.
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Cuts every connection and refuses new ones until [`Relay::unblock`].
    pub fn block(&self) {
        self.shared.blocked.store(true, Ordering::SeqCst);
        self.shared.cut_all();
    }

    pub fn unblock(&self) {
        self.shared.blocked.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.cut_all();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((inbound, _)) => {
                if shared.blocked.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                }
                let s = shared.clone();
                std::thread::spawn(move || connect_and_pump(inbound, s));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn connect_and_pump(inbound: TcpStream, shared: Arc<Shared>) {
    let _ = inbound.set_nonblocking(false);
    let Ok(outbound) = TcpStream::connect_timeout(&shared.target, Duration::from_secs(2)) else {
        let _ = inbound.shutdown(Shutdown::Both);
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let (Ok(a), Ok(b), Ok(a2), Ok(b2)) = (
        inbound.try_clone(),
        outbound.try_clone(),
        inbound.try_clone(),
        outbound.try_clone(),
    ) else {
        return;
    };
    shared
        .conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id, a, b));
    if shared.stop.load(Ordering::SeqCst) || shared.blocked.load(Ordering::SeqCst) {
        shared.cut_all();
        return;
    }
    let s = shared.clone();
    let up = std::thread::spawn(move || pump(inbound, outbound, s));
    pump(b2, a2, shared.clone());
    let _ = up.join();
    shared.forget(id);
}

/// Copies `from` → `to`, each chunk held for the delay current when it was read.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_due = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let delay = Duration::from_millis(shared.delay_ms.load(Ordering::SeqCst));
                // Never before the previous chunk: the delay may have just shrunk.
                last_due = last_due.max(Instant::now() + delay);
                if tx.send((last_due, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    drop(tx);
    let _ = writer.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten().take(4) {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn the_relay_passes_bytes_in_order_and_holds_them_for_the_delay() {
        let relay = Relay::start("127.0.0.1:0".parse().unwrap(), echo_server()).unwrap();
        relay.set_delay(Duration::from_millis(40));
        let mut c = TcpStream::connect(relay.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let start = Instant::now();
        c.write_all(b"one,").unwrap();
        c.write_all(b"two").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < 7 {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"one,two");
        // Each way held ≥ 40 ms: a lower bound set by the relay, not a speed claim.
        assert!(start.elapsed() >= Duration::from_millis(80));
    }

    #[test]
    fn a_blocked_relay_cuts_connections_until_unblocked() {
        let relay = Relay::start("127.0.0.1:0".parse().unwrap(), echo_server()).unwrap();
        let mut c = TcpStream::connect(relay.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        relay.block();
        let mut buf = [0u8; 8];
        // Cut: the read ends (0 bytes or an error), it does not hang.
        let _ = c.write_all(b"x");
        assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
        relay.unblock();
        let mut c = TcpStream::connect(relay.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"back").unwrap();
        let mut got = Vec::new();
        while got.len() < 4 {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"back");
    }
}
