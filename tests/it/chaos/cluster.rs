//! The real `overlay` binary, one process per role, for the chaos suite: start, `kill -9`,
//! start again with the same command line (same data dir, same ports, so the others find it
//! again), and wait for `/healthz` with a bounded deadline. A [`Role`] kills its process when
//! dropped, panics included.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which role a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Controller,
    Proxy,
    Peer,
    Relay,
}

/// One role's process.
pub struct Role {
    /// `controller`, `proxy/u0`, `peer/u0`.
    pub label: String,
    pub kind: Kind,
    /// Where it listens (its `/healthz`).
    pub addr: SocketAddr,
    argv: Vec<OsString>,
    log: PathBuf,
    child: Option<Child>,
}

impl Role {
    /// A role run by `argv` (a program and its arguments), logging to `log`; not started yet.
    pub fn new(
        label: &str,
        kind: Kind,
        addr: SocketAddr,
        argv: Vec<OsString>,
        log: PathBuf,
    ) -> Role {
        Role {
            label: label.into(),
            kind,
            addr,
            argv,
            log,
            child: None,
        }
    }

    /// Starts the process (its log appended to, across restarts).
    pub fn start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: log {}: {e}", self.label, self.log.display()))?;
        let child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .env(
                "RUST_LOG",
                std::env::var("OVERLAY_CHAOS_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("OVERLAY_CONFIG")
            .env_remove("OVERLAY_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: cannot start {:?}: {e}", self.label, self.argv))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, and reap it. Nothing if it is not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether its process runs (false once it exited, or before start / after kill).
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The last `n` lines of its log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn health_url(&self) -> String {
        format!("http://{}/healthz", self.addr)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `roles[i]` if it is not running, and waits (bounded by `within`) until its
/// `/healthz` answers 200. A process that exits during start-up (e.g. its port is briefly
/// held by someone else's connection) is started again, at most 5 times.
pub async fn ensure_up(
    roles: &std::cell::RefCell<Vec<Role>>,
    i: usize,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let url = roles.borrow()[i].health_url();
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(2))
        .finish();
    let mut starts = 0;
    loop {
        {
            let mut all = roles.borrow_mut();
            let role = &mut all[i];
            if !role.running() {
                if starts >= 5 {
                    return Err(format!(
                        "{} exited {starts} times while starting; its log:\n{}",
                        role.label,
                        role.log_tail(30)
                    ));
                }
                role.kill9();
                role.start()?;
                starts += 1;
            }
        }
        if let Ok(r) = client.get(&url).send().await {
            if r.status() == 200 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            let all = roles.borrow();
            return Err(format!(
                "{} did not answer {url} within {within:?}; its log:\n{}",
                all[i].label,
                all[i].log_tail(30)
            ));
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}
