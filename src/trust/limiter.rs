//! A token bucket per source address, for the doors strangers knock on (joins, logins).
//!
//! Owns the buckets: each source starts with `burst` tokens, a request takes one, and tokens
//! come back at `per_minute` per minute up to `burst`. IPv4 sources are keyed by address
//! (IPv4-mapped IPv6 addresses count as the IPv4 address), other IPv6 sources by their /64
//! prefix, since one host usually owns a whole /64.
//!
//! Memory is bounded: at most [`MAX_SOURCES`] buckets are kept. When a new source arrives at
//! the bound, first every bucket that has refilled to full is dropped (losing nothing: a new
//! bucket for that source would be full too); if none is full, the bucket seen least recently
//! is dropped (that source starts again from a full bucket, the lenient side). Each eviction
//! pass is one scan of the map, and passes happen only at the bound.
//!
//! Must not: read the clock itself (the caller passes `now`, so tests need no sleeps).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// The most sources whose buckets are kept at once.
pub const MAX_SOURCES: usize = 10_000;

/// One source's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens left as of `last`.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

/// Token buckets keyed by source address (IPv6 by /64).
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    /// Tokens regained per second.
    per_second: f64,
    buckets: HashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    /// Each source may make `burst` requests at once, then `per_minute` a minute.
    /// `burst` 0 refuses everything; `per_minute` 0 never refills.
    pub fn new(burst: u32, per_minute: u32) -> RateLimiter {
        RateLimiter {
            burst: f64::from(burst),
            per_second: f64::from(per_minute) / 60.0,
            buckets: HashMap::new(),
        }
    }

    /// Takes a token from `source`'s bucket if there is one.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let key = source_key(source);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_SOURCES {
            self.evict(now);
        }
        let (burst, per_second) = (self.burst, self.per_second);
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let tokens = refilled(bucket, burst, per_second, now);
        // Never move `last` backwards: a stale `now` must not mint tokens later.
        bucket.last = bucket.last.max(now);
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            true
        } else {
            bucket.tokens = tokens;
            false
        }
    }

    /// How long until `source` has a token again: zero if it has one now, `Duration::MAX` if it
    /// never will (`per_minute` 0 or `burst` 0).
    pub fn retry_after(&self, source: IpAddr, now: Instant) -> Duration {
        let tokens = match self.buckets.get(&source_key(source)) {
            Some(bucket) => refilled(bucket, self.burst, self.per_second, now),
            None => self.burst,
        };
        if tokens >= 1.0 {
            return Duration::ZERO;
        }
        if self.per_second <= 0.0 || self.burst < 1.0 {
            return Duration::MAX;
        }
        Duration::try_from_secs_f64((1.0 - tokens) / self.per_second).unwrap_or(Duration::MAX)
    }

    /// How many sources have a bucket now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no source has a bucket.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Makes room for one more source: drops every full bucket, or else the least recent one.
    fn evict(&mut self, now: Instant) {
        let (burst, per_second) = (self.burst, self.per_second);
        self.buckets
            .retain(|_, bucket| refilled(bucket, burst, per_second, now) < burst);
        if self.buckets.len() < MAX_SOURCES {
            return;
        }
        let oldest = self
            .buckets
            .iter()
            .min_by_key(|(_, bucket)| bucket.last)
            .map(|(key, _)| *key);
        if let Some(key) = oldest {
            self.buckets.remove(&key);
        }
    }
}

/// The tokens in `bucket` at `now`.
fn refilled(bucket: &Bucket, burst: f64, per_second: f64, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
    (bucket.tokens + elapsed * per_second).min(burst)
}

/// The key of a source: the IPv4 address (also when IPv4-mapped), or the IPv6 /64 prefix.
fn source_key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn a_source_gets_its_burst_then_is_refused() {
        let mut limiter = RateLimiter::new(3, 60);
        let now = Instant::now();
        let a = v4(1);
        assert!((0..3).all(|_| limiter.allow(a, now)));
        assert!(!limiter.allow(a, now));
        assert!(!limiter.allow(a, now));
        // Another source has its own bucket.
        assert!(limiter.allow(v4(2), now));
    }

    #[test]
    fn tokens_come_back_over_time_up_to_the_burst() {
        let mut limiter = RateLimiter::new(2, 60);
        let t0 = Instant::now();
        let a = v4(1);
        assert!(limiter.allow(a, t0) && limiter.allow(a, t0));
        assert!(!limiter.allow(a, t0));
        assert_eq!(limiter.retry_after(a, t0), Duration::from_secs(1));
        assert!(!limiter.allow(a, t0 + Duration::from_millis(500)));
        assert!(limiter.allow(a, t0 + Duration::from_millis(1000)));
        assert!(!limiter.allow(a, t0 + Duration::from_millis(1000)));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(limiter.retry_after(a, later), Duration::ZERO);
        assert!(limiter.allow(a, later) && limiter.allow(a, later));
        assert!(!limiter.allow(a, later));
    }

    #[test]
    fn zero_rates_refuse_and_say_never() {
        let now = Instant::now();
        let mut none = RateLimiter::new(0, 60);
        assert!(!none.allow(v4(1), now));
        assert_eq!(none.retry_after(v4(1), now), Duration::MAX);
        let mut once = RateLimiter::new(1, 0);
        assert!(once.allow(v4(1), now));
        assert!(!once.allow(v4(1), now + Duration::from_secs(86_400)));
        assert_eq!(once.retry_after(v4(1), now), Duration::MAX);
    }

    #[test]
    fn ipv6_sources_share_a_bucket_per_64_and_mapped_ipv4_counts_as_ipv4() {
        let mut limiter = RateLimiter::new(1, 1);
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limiter.allow(a, now));
        assert!(!limiter.allow(same_64, now));
        assert!(limiter.allow(other_64, now));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let mapped_other: IpAddr = "::ffff:192.0.2.2".parse().unwrap();
        assert!(limiter.allow(mapped, now));
        assert!(limiter.allow(mapped_other, now));
        assert!(!limiter.allow("192.0.2.1".parse().unwrap(), now));
    }

    #[test]
    fn at_most_max_sources_are_kept() {
        let mut limiter = RateLimiter::new(2, 1);
        let now = Instant::now();
        for n in 0..(MAX_SOURCES as u32 + 500) {
            assert!(limiter.allow(v4(n), now + Duration::from_micros(u64::from(n))));
            assert!(limiter.len() <= MAX_SOURCES);
        }
        assert_eq!(limiter.len(), MAX_SOURCES);
    }

    #[test]
    fn full_buckets_are_evicted_before_a_drained_one() {
        // 1 token a minute: a single request is back to full after 60 s, a drained bucket of 2
        // after 120 s.
        let mut limiter = RateLimiter::new(2, 1);
        let t0 = Instant::now();
        let drained = v4(u32::MAX);
        assert!(limiter.allow(drained, t0) && limiter.allow(drained, t0));
        for n in 0..(MAX_SOURCES as u32 - 1) {
            assert!(limiter.allow(v4(n), t0 + Duration::from_millis(1)));
        }
        assert_eq!(limiter.len(), MAX_SOURCES);
        let t1 = t0 + Duration::from_secs(61);
        assert!(limiter.allow(v4(MAX_SOURCES as u32), t1));
        assert_eq!(
            limiter.len(),
            2,
            "the full buckets went, the drained one stayed"
        );
        // The drained source kept its state: one token regained, not a fresh burst of two.
        assert!(limiter.allow(drained, t1));
        assert!(!limiter.allow(drained, t1));
    }

    #[test]
    fn without_full_buckets_the_least_recent_is_evicted() {
        let mut limiter = RateLimiter::new(2, 1);
        let t0 = Instant::now();
        for n in 0..(MAX_SOURCES as u32) {
            assert!(limiter.allow(v4(n), t0 + Duration::from_millis(u64::from(n))));
        }
        let t1 = t0 + Duration::from_secs(20);
        assert!(limiter.allow(v4(u32::MAX), t1));
        assert_eq!(limiter.len(), MAX_SOURCES);
        assert!(!limiter.buckets.contains_key(&v4(0)));
        assert!(limiter.buckets.contains_key(&v4(1)));
    }
}
