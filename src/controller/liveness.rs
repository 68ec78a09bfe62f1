//! Liveness, as pure functions of a proxy's silence: its dashboard badge (the original's
//! Active / Warning / Stale) and when it leaves the registry.

use std::time::Duration;

use serde::Serialize;

use crate::config::LivenessConfig;

/// A proxy's liveness, from the age of its last sign of life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Badge {
    Active,
    Warning,
    Stale,
}

impl Badge {
    pub fn as_str(self) -> &'static str {
        match self {
            Badge::Active => "Active",
            Badge::Warning => "Warning",
            Badge::Stale => "Stale",
        }
    }
}

/// compat: the original's badges: Active below `warning_after`, Warning below `stale_after`,
/// Stale from then on.
pub fn badge(age: Duration, l: &LivenessConfig) -> Badge {
    if age < Duration::from_secs(l.warning_after_secs) {
        Badge::Active
    } else if age < Duration::from_secs(l.stale_after_secs) {
        Badge::Warning
    } else {
        Badge::Stale
    }
}

/// A proxy silent for longer than `drop_after` leaves the registry.
pub fn should_drop(age: Duration, l: &LivenessConfig) -> bool {
    age > Duration::from_secs(l.drop_after_secs)
}

/// How long ago `last_seen_ms` was, at `now_ms`.
pub fn age(last_seen_ms: u64, now_ms: u64) -> Duration {
    Duration::from_millis(now_ms.saturating_sub(last_seen_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l() -> LivenessConfig {
        LivenessConfig {
            heartbeat_every_secs: 30,
            warning_after_secs: 60,
            stale_after_secs: 120,
            drop_after_secs: 300,
        }
    }

    #[test]
    fn a_proxy_seen_less_than_a_minute_ago_is_active() {
        assert_eq!(badge(Duration::from_secs(0), &l()), Badge::Active);
        assert_eq!(badge(Duration::from_millis(59_999), &l()), Badge::Active);
    }

    #[test]
    fn a_proxy_silent_for_a_minute_is_a_warning_and_for_two_is_stale() {
        assert_eq!(badge(Duration::from_secs(60), &l()), Badge::Warning);
        assert_eq!(badge(Duration::from_secs(119), &l()), Badge::Warning);
        assert_eq!(badge(Duration::from_secs(120), &l()), Badge::Stale);
        assert_eq!(badge(Duration::from_secs(10_000), &l()), Badge::Stale);
    }

    #[test]
    fn a_proxy_is_dropped_only_after_the_drop_time() {
        assert!(!should_drop(Duration::from_secs(300), &l()));
        assert!(should_drop(Duration::from_millis(300_001), &l()));
    }
}
