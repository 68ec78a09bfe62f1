//! Logging through env_logger (`RUST_LOG`), with every line naming the role and instance that
//! wrote it, so the interleaved output of `overlay up` can be read.
//!
//! Each role runs its HTTP workers and actors on threads of its own; [`tag_thread`] marks such a
//! thread once (e.g. `proxy/alice`), and the log format reads the mark. Threads not marked
//! print `overlay`. The tag is per thread, not a process global, so nine servers in one
//! process each keep their own.

use std::cell::RefCell;
use std::io::Write;

thread_local! {
    static TAG: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Marks the current thread as working for `tag` (e.g. `peer/alice`).
pub fn tag_thread(tag: &str) {
    TAG.with(|t| *t.borrow_mut() = Some(tag.to_string()));
}

/// The current thread's tag, or `overlay`.
pub fn current_tag() -> String {
    TAG.with(|t| t.borrow().clone())
        .unwrap_or_else(|| "overlay".to_string())
}

/// Sets up env_logger: `RUST_LOG` filters (default `info`); each line is
/// `TIME LEVEL role/instance target: message`. Safe to call more than once.
pub fn init() {
    let _ = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,actix_server=warn"),
    )
    .format(|buf, record| {
        let tag = current_tag();
        writeln!(
            buf,
            "{} {:<5} {:<16} {}: {}",
            buf.timestamp_millis(),
            record.level(),
            tag,
            record.target(),
            record.args()
        )
    })
    .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_own_tag() {
        tag_thread("proxy/alice");
        let other = std::thread::spawn(current_tag).join().unwrap();
        assert_eq!(current_tag(), "proxy/alice");
        assert_eq!(other, "overlay");
    }
}
