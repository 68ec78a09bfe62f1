//! The proxy's series in its role's registry (see [`crate::web::metrics`]), built once by
//! [`ProxyMetrics::register`] where the proxy starts:
//! - [`DeliveryMetrics`]: attempts by result, messages delivered, failed and expired, and how
//!   long a delivered message was queued; counted by the outbox (atomic adds, no lookup of a
//!   per-message label: there is none);
//! - [`Queues`]: each destination's queue depth and the age of its oldest item, from a
//!   snapshot the outbox takes every second; the ages are computed at the scrape;
//! - [`AiMetrics`]: AI calls by endpoint and [`AiOutcome`], their durations, time to the first
//!   token and token counts where the provider reports them; for the AI desk to count.
//!
//! Label values are destination and endpoint names of the table (bounded), never message ids.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;

use super::delivery::Outcome;
use crate::web::metrics::{HistogramFamily, Metrics};
use crate::wire::data_plane::DeliveryState;

/// Buckets of how long a delivered message was queued (seconds): 5 ms to a day.
const QUEUED_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
    3600.0, 21600.0, 86400.0,
];

/// Buckets of AI calls and their first token (seconds): 50 ms to 5 minutes.
const AI_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0,
];

/// Everything the proxy counts, registered in its role's registry.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    pub delivery: DeliveryMetrics,
    pub queues: Queues,
    /// For the AI desk ([`super::ai`]): one call finished, [`AiMetrics::call_finished`].
    pub ai: AiMetrics,
}

impl ProxyMetrics {
    /// Registers the proxy's series in `metrics` (once per proxy), each known label set at
    /// zero from the start (a series that appears only once something happens hides the
    /// first occurrence from `rate()`): every lane's results and outcomes, and every outcome of
    /// the AI endpoints of its own config (`ai_endpoints`; others appear at their first call).
    pub fn register<'a>(
        metrics: &Metrics,
        ai_endpoints: impl IntoIterator<Item = &'a str>,
    ) -> ProxyMetrics {
        let delivery = DeliveryMetrics::default();
        for lane in ["peer_inbox", "peer_receipts", "remote"] {
            for result in ["delivered", "retry", "refused", "unsupported"] {
                delivery
                    .attempts
                    .get_or_create_owned(&AttemptLabels { lane, result });
            }
            for outcome in ["delivered", "failed"] {
                delivery
                    .finished
                    .get_or_create_owned(&FinishedLabels { lane, outcome });
            }
        }
        metrics.register(
            "delivery_attempts",
            "Delivery attempts by lane and result (one per HTTP hop, whether it carried one \
             message or a batch; on peer_receipts one per receipt): delivered, retry (not now), \
             refused (a refused batch is then tried one by one; a refused message is given up \
             on), unsupported (a batch route it lacks)",
            delivery.attempts.clone(),
        );
        metrics.register(
            "deliveries",
            "Messages and receipts handed on (outcome=delivered) or given up on after a \
             refusal (outcome=failed), by lane",
            delivery.finished.clone(),
        );
        metrics.register(
            "delivery_expired",
            "Messages given up on because their destination stayed unreachable past \
             delivery.expire_after_secs",
            delivery.expired.clone(),
        );
        metrics.register(
            "dedup_duplicates",
            "Messages taken again under an id this proxy already holds (a retried submit or \
             relay): acknowledged, stored once",
            delivery.duplicates.clone(),
        );
        metrics.register(
            "delivery_latency_seconds",
            "How long a delivered message was queued at this proxy, from queued to handed on",
            delivery.latency.clone(),
        );
        let queues = Queues::default();
        metrics.register_collector(Box::new(queues.clone()));
        let ai = AiMetrics::default();
        for endpoint in ai_endpoints {
            ai.zero(endpoint);
        }
        metrics.register(
            "ai_requests",
            "Calls to AI endpoints, by endpoint and outcome (ok, error, timeout, stopped, \
             refused)",
            ai.requests.clone(),
        );
        metrics.register(
            "ai_request_duration_seconds",
            "How long an AI call took, to its last token, by endpoint and outcome",
            ai.duration.clone(),
        );
        metrics.register(
            "ai_time_to_first_token_seconds",
            "How long an AI call took to its first token, by endpoint",
            ai.first_token.clone(),
        );
        metrics.register(
            "ai_tokens",
            "Tokens of AI calls as the provider reported them, by endpoint and kind (input, \
             output)",
            ai.tokens.clone(),
        );
        ProxyMetrics {
            delivery,
            queues,
            ai,
        }
    }
}

/// `{lane, result}` of `overlay_delivery_attempts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    lane: &'static str,
    result: &'static str,
}

/// `{lane, outcome}` of `overlay_deliveries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    lane: &'static str,
    outcome: &'static str,
}

/// The `lane` label: `peer_inbox`, `peer_receipts` (the own peer's), or `remote` (another
/// user's proxy or an AI endpoint).
pub fn lane_kind(lane: &super::store::LaneId) -> &'static str {
    match lane {
        super::store::LaneId::PeerInbox => "peer_inbox",
        super::store::LaneId::PeerReceipts => "peer_receipts",
        super::store::LaneId::Remote(_) => "remote",
    }
}

/// What the outbox counts of its deliveries.
#[derive(Debug, Clone)]
pub struct DeliveryMetrics {
    attempts: Family<AttemptLabels, Counter>,
    finished: Family<FinishedLabels, Counter>,
    expired: Counter,
    duplicates: Counter,
    latency: Histogram,
}

impl Default for DeliveryMetrics {
    fn default() -> Self {
        Self {
            attempts: Family::default(),
            finished: Family::default(),
            expired: Counter::default(),
            duplicates: Counter::default(),
            latency: Histogram::new(QUEUED_BUCKETS.iter().copied()),
        }
    }
}

impl DeliveryMetrics {
    /// An attempt on `lane` (a [`lane_kind`]) ended with `outcome`.
    pub fn attempted(&self, lane: &'static str, outcome: &Outcome) {
        let result = match outcome {
            Outcome::Delivered => "delivered",
            Outcome::Retry { .. } => "retry",
            Outcome::Refused { .. } => "refused",
            Outcome::Unsupported { .. } => "unsupported",
        };
        self.attempts
            .get_or_create(&AttemptLabels { lane, result })
            .inc();
    }

    /// A message came again under an id already taken (stored once).
    pub fn duplicate(&self) {
        self.duplicates.inc();
    }

    /// An item of `lane` queued at `created_ms` was finished at `now_ms` in `state`;
    /// `expired`: given up on for its destination's silence.
    pub fn finished(
        &self,
        lane: &'static str,
        state: &DeliveryState,
        expired: bool,
        created_ms: u64,
        now_ms: u64,
    ) {
        if expired {
            self.expired.inc();
            return;
        }
        let outcome = match state {
            DeliveryState::Delivered => {
                let queued = now_ms.saturating_sub(created_ms) as f64 / 1000.0;
                self.latency.observe(queued);
                "delivered"
            }
            _ => "failed",
        };
        self.finished
            .get_or_create(&FinishedLabels { lane, outcome })
            .inc();
    }
}

/// One destination's queue, as the outbox last counted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    /// `peer/inbox`, `peer/receipts`, or the destination's name.
    pub destination: String,
    pub pending: usize,
    /// When its oldest item was queued (Unix ms).
    pub oldest_ms: u64,
}

/// The outbox's queues (non-empty ones), as it last counted them: encoded at each scrape as
/// `overlay_outbox_pending_messages{destination}`, `overlay_outbox_oldest_age_seconds
/// {destination}` (the age at the scrape) and `overlay_outbox_pending_destinations`.
#[derive(Debug, Clone, Default)]
pub struct Queues(Arc<Mutex<Vec<QueueDepth>>>);

impl Queues {
    /// The queues now.
    pub fn set(&self, queues: Vec<QueueDepth>) {
        if let Ok(mut q) = self.0.lock() {
            *q = queues;
        }
    }

    fn encode_at(&self, mut encoder: DescriptorEncoder, now_ms: u64) -> std::fmt::Result {
        let queues = self.0.lock().map(|q| q.clone()).unwrap_or_default();
        {
            let mut e = encoder.encode_descriptor(
                "outbox_pending_messages",
                "Items queued for a destination and not yet handed on",
                None,
                MetricType::Gauge,
            )?;
            for q in &queues {
                let labels = [("destination", q.destination.as_str())];
                ConstGauge::new(q.pending as i64).encode(e.encode_family(&labels)?)?;
            }
        }
        {
            let mut e = encoder.encode_descriptor(
                "outbox_oldest_age_seconds",
                "How long the oldest item queued for a destination has waited",
                None,
                MetricType::Gauge,
            )?;
            for q in &queues {
                let labels = [("destination", q.destination.as_str())];
                let age = now_ms.saturating_sub(q.oldest_ms) as f64 / 1000.0;
                ConstGauge::new(age).encode(e.encode_family(&labels)?)?;
            }
        }
        let e = encoder.encode_descriptor(
            "outbox_pending_destinations",
            "Destinations with items queued",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(queues.len() as i64).encode(e)
    }
}

impl Collector for Queues {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        self.encode_at(encoder, crate::wire::now_ms())
    }
}

/// How an AI call ended: the `outcome` label of the AI series. A fixed set, so the label
/// stays bounded whatever the provider answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AiOutcome {
    /// A reply came, to its end.
    Ok,
    /// The provider failed or answered in a way that is not a reply (5xx, a broken stream,
    /// an unreadable body, no key).
    Error,
    /// No answer (or no next chunk) in time.
    Timeout,
    /// Stopped by the user while it streamed (what arrived is kept).
    Stopped,
    /// Refused by the provider for this request (4xx: quota, content policy, bad request).
    Refused,
}

impl AiOutcome {
    /// Every outcome, in the order the README lists them.
    pub const ALL: [AiOutcome; 5] = [
        AiOutcome::Ok,
        AiOutcome::Error,
        AiOutcome::Timeout,
        AiOutcome::Stopped,
        AiOutcome::Refused,
    ];

    /// The label value: `ok`, `error`, `timeout`, `stopped`, `refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            AiOutcome::Ok => "ok",
            AiOutcome::Error => "error",
            AiOutcome::Timeout => "timeout",
            AiOutcome::Stopped => "stopped",
            AiOutcome::Refused => "refused",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AiLabels {
    endpoint: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    endpoint: String,
    kind: &'static str,
}

fn ai_histogram() -> Histogram {
    Histogram::new(AI_BUCKETS.iter().copied())
}

/// What the AI desk counts of its calls. Cheap to clone (shared counters).
#[derive(Debug, Clone)]
pub struct AiMetrics {
    requests: Family<AiLabels, Counter>,
    duration: HistogramFamily<AiLabels>,
    first_token: HistogramFamily<EndpointLabels>,
    tokens: Family<TokenLabels, Counter>,
}

impl Default for AiMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(ai_histogram),
            first_token: Family::new_with_constructor(ai_histogram),
            tokens: Family::default(),
        }
    }
}

impl AiMetrics {
    /// Every series of `endpoint` at zero.
    fn zero(&self, endpoint: &str) {
        for outcome in AiOutcome::ALL {
            let labels = AiLabels {
                endpoint: endpoint.to_string(),
                outcome: outcome.as_str(),
            };
            self.requests.get_or_create_owned(&labels);
            self.duration.get_or_create_owned(&labels);
        }
        let endpoint = endpoint.to_string();
        for kind in ["input", "output"] {
            self.tokens.get_or_create_owned(&TokenLabels {
                endpoint: endpoint.clone(),
                kind,
            });
        }
        self.first_token
            .get_or_create_owned(&EndpointLabels { endpoint });
    }

    /// One call to AI endpoint `endpoint` (its name in the table) ended with `outcome` after
    /// `duration`; `first_token`: when its first token came, if one did; the token counts
    /// when the provider reported them (none is counted as zero, nothing is estimated).
    pub fn call_finished(
        &self,
        endpoint: &str,
        outcome: AiOutcome,
        duration: Duration,
        first_token: Option<Duration>,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
    ) {
        let labels = AiLabels {
            endpoint: endpoint.to_string(),
            outcome: outcome.as_str(),
        };
        self.duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        self.requests.get_or_create(&labels).inc();
        if let Some(t) = first_token {
            self.first_token
                .get_or_create(&EndpointLabels {
                    endpoint: endpoint.to_string(),
                })
                .observe(t.as_secs_f64());
        }
        for (kind, n) in [("input", input_tokens), ("output", output_tokens)] {
            if let Some(n) = n {
                self.tokens
                    .get_or_create(&TokenLabels {
                        endpoint: endpoint.to_string(),
                        kind,
                    })
                    .inc_by(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered() -> (Metrics, ProxyMetrics) {
        let metrics = Metrics::new("proxy");
        let proxy = ProxyMetrics::register(&metrics, ["BOT"]);
        (metrics, proxy)
    }

    #[test]
    fn attempts_deliveries_failures_and_expiries_are_counted_apart() {
        let (metrics, p) = registered();
        let d = &p.delivery;
        d.attempted("remote", &Outcome::Delivered);
        for _ in 0..2 {
            d.attempted(
                "remote",
                &Outcome::Retry {
                    what: "bob's proxy".into(),
                    error: "refused".into(),
                },
            );
        }
        d.finished("remote", &DeliveryState::Delivered, false, 1_000, 3_500);
        let failed = DeliveryState::Failed { reason: "x".into() };
        d.finished("peer_inbox", &failed, false, 1_000, 2_000);
        d.finished("remote", &failed, true, 1_000, 2_000);
        let text = metrics.encode();
        for line in [
            r#"overlay_delivery_attempts_total{role="proxy",lane="remote",result="delivered"} 1"#,
            r#"overlay_delivery_attempts_total{role="proxy",lane="remote",result="retry"} 2"#,
            r#"overlay_deliveries_total{role="proxy",lane="remote",outcome="delivered"} 1"#,
            r#"overlay_deliveries_total{role="proxy",lane="peer_inbox",outcome="failed"} 1"#,
            r#"overlay_delivery_expired_total{role="proxy"} 1"#,
            r#"overlay_delivery_latency_seconds_sum{role="proxy"} 2.5"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn queue_depth_and_the_oldest_items_age_are_shown_per_destination_at_the_scrape() {
        let q = Queues::default();
        q.set(vec![QueueDepth {
            destination: "bob".into(),
            pending: 3,
            oldest_ms: 10_000,
        }]);
        let mut text = String::new();
        let mut registry = prometheus_client::registry::Registry::with_prefix("overlay");
        registry.register_collector(Box::new(q.clone()));
        // The age as of the scrape: now minus when the oldest was queued.
        let now = crate::wire::now_ms();
        q.set(vec![QueueDepth {
            destination: "bob".into(),
            pending: 3,
            oldest_ms: now - 42_000,
        }]);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"overlay_outbox_pending_messages{destination="bob"} 3"#),
            "{text}"
        );
        let age: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"overlay_outbox_oldest_age_seconds{destination="bob"} "#)
            })
            .expect("an age")
            .parse()
            .unwrap();
        assert!((42.0..45.0).contains(&age), "{age}");
        assert!(
            text.contains("overlay_outbox_pending_destinations 1"),
            "{text}"
        );
        q.set(Vec::new());
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("bob"), "a drained queue leaves: {text}");
    }

    #[test]
    fn an_ai_call_is_counted_with_its_durations_and_the_tokens_reported() {
        let (metrics, p) = registered();
        p.ai.call_finished(
            "BOT",
            AiOutcome::Ok,
            Duration::from_millis(1500),
            Some(Duration::from_millis(300)),
            Some(12),
            Some(40),
        );
        p.ai.call_finished(
            "BOT",
            AiOutcome::Timeout,
            Duration::from_secs(30),
            None,
            None,
            None,
        );
        let text = metrics.encode();
        for line in [
            r#"overlay_ai_requests_total{role="proxy",endpoint="BOT",outcome="ok"} 1"#,
            r#"overlay_ai_requests_total{role="proxy",endpoint="BOT",outcome="timeout"} 1"#,
            r#"overlay_ai_request_duration_seconds_sum{role="proxy",endpoint="BOT",outcome="ok"} 1.5"#,
            r#"overlay_ai_time_to_first_token_seconds_count{role="proxy",endpoint="BOT"} 1"#,
            r#"overlay_ai_tokens_total{role="proxy",endpoint="BOT",kind="input"} 12"#,
            r#"overlay_ai_tokens_total{role="proxy",endpoint="BOT",kind="output"} 40"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn every_known_series_is_there_at_zero_before_anything_happens() {
        let (metrics, _) = registered();
        let text = metrics.encode();
        for line in [
            r#"overlay_delivery_attempts_total{role="proxy",lane="remote",result="retry"} 0"#,
            r#"overlay_deliveries_total{role="proxy",lane="peer_inbox",outcome="failed"} 0"#,
            r#"overlay_ai_requests_total{role="proxy",endpoint="BOT",outcome="stopped"} 0"#,
            r#"overlay_ai_tokens_total{role="proxy",endpoint="BOT",kind="output"} 0"#,
            r#"overlay_ai_time_to_first_token_seconds_count{role="proxy",endpoint="BOT"} 0"#,
            r#"overlay_delivery_expired_total{role="proxy"} 0"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn the_ai_outcomes_are_five_lower_case_words() {
        let words: Vec<&str> = AiOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(words, ["ok", "error", "timeout", "stopped", "refused"]);
    }
}
