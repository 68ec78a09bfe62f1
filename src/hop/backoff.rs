//! Retry timing for every hop: exponential backoff with full jitter, the tiny random source it
//! needs, and [`human_duration`], the one way a wait or an age is written for people.
//! Pure functions only: no clocks read here, no I/O.
//!
//! Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): the n-th retry waits a
//! uniformly random time in `[0, min(max, initial * 2^(n-1))]`, so many senders retrying the
//! same proxy do not stampede it in lock-step. Where a person waits for the answer,
//! [`three_quarter_jitter_ms`] keeps the wait near its ceiling instead.

/// The ceiling of the wait before retry number `attempt` (1 = the first retry), in ms.
pub fn backoff_ceiling_ms(attempt: u32, initial_ms: u64, max_ms: u64) -> u64 {
    let shift = attempt.saturating_sub(1).min(32);
    initial_ms.saturating_mul(1u64 << shift).min(max_ms).max(1)
}

/// The wait before retry number `attempt`: uniform in `[0, ceiling]` using `rng`.
pub fn full_jitter_ms(attempt: u32, initial_ms: u64, max_ms: u64, rng: &mut XorShift) -> u64 {
    let ceiling = backoff_ceiling_ms(attempt, initial_ms, max_ms);
    rng.next_u64() % (ceiling + 1)
}

/// The wait before retry number `attempt` when someone is waiting for the answer (an AI call
/// with the user watching): uniform in `[3/4 ceiling, ceiling]`, so a retry never comes at once
/// yet two callers still drift apart.
pub fn three_quarter_jitter_ms(
    attempt: u32,
    initial_ms: u64,
    max_ms: u64,
    rng: &mut XorShift,
) -> u64 {
    let ceiling = backoff_ceiling_ms(attempt, initial_ms, max_ms);
    let floor = ceiling - ceiling / 4;
    floor + rng.next_u64() % (ceiling - floor + 1)
}

/// xorshift64*: a small, fast, non-cryptographic random source for jitter.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// Seeded from a fresh UUID, so two proxies never share a sequence.
    pub fn from_entropy() -> Self {
        Self::seeded(uuid::Uuid::new_v4().as_u64_pair().0)
    }
    pub fn seeded(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A duration as people say it: `24h`, `90s`, `5m`, `1h30m`.
pub fn human_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_per_attempt_up_to_the_maximum() {
        let c: Vec<u64> = (1..=6).map(|a| backoff_ceiling_ms(a, 200, 3000)).collect();
        assert_eq!(c, [200, 400, 800, 1600, 3000, 3000]);
    }

    #[test]
    fn a_huge_attempt_count_does_not_overflow() {
        assert_eq!(backoff_ceiling_ms(u32::MAX, 200, 30_000), 30_000);
    }

    #[test]
    fn jitter_stays_within_the_ceiling_and_spreads_out() {
        let mut rng = XorShift::seeded(42);
        let waits: Vec<u64> = (0..1000)
            .map(|_| full_jitter_ms(3, 100, 10_000, &mut rng))
            .collect();
        assert!(waits.iter().all(|w| *w <= 400));
        assert!(waits.iter().any(|w| *w < 100) && waits.iter().any(|w| *w > 300));
    }

    #[test]
    fn three_quarter_jitter_stays_between_three_quarters_and_the_ceiling() {
        let mut rng = XorShift::seeded(7);
        let waits: Vec<u64> = (0..1000)
            .map(|_| three_quarter_jitter_ms(2, 500, 8000, &mut rng))
            .collect();
        assert!(waits.iter().all(|w| (750..=1000).contains(w)));
        assert!(waits.iter().any(|w| *w < 800) && waits.iter().any(|w| *w > 950));
        assert!((6000..=8000).contains(&three_quarter_jitter_ms(30, 500, 8000, &mut rng)));
    }

    #[test]
    fn two_sources_seeded_from_entropy_differ() {
        assert_ne!(
            XorShift::from_entropy().next_u64(),
            XorShift::from_entropy().next_u64()
        );
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human_duration(86_400), "24h");
        assert_eq!(human_duration(1), "1s");
        assert_eq!(human_duration(300), "5m");
        assert_eq!(human_duration(5400), "1h30m");
        assert_eq!(human_duration(90), "1m30s");
    }
}
