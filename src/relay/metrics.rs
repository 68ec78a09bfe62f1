//! The relay's series in its role's registry (see [`crate::web::metrics`]), read at each
//! scrape from the report its hub keeps (refreshed at every sweep, each 2 s): proxies attached,
//! names flagged, what it carried and what it dropped or refused. The attached streams are
//! also `overlay_sse_listeners{stream="relay_attach"}`, set by the hub itself.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use tokio::sync::watch;

use crate::wire::control_plane::RelayReport;

/// `{reason}` of `overlay_relay_dropped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The hub's report, encoded at each scrape.
#[derive(Debug)]
pub struct RelayCollector(pub watch::Receiver<RelayReport>);

impl Collector for RelayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        // The numbers only (the report lists every attached name: not copied at a scrape).
        let (attached, flagged, r) = {
            let r = self.0.borrow();
            let counts = RelayReport {
                attached: Vec::new(),
                flagged: Vec::new(),
                ..*r
            };
            (r.attached.len(), r.flagged.len(), counts)
        };
        let gauges = [
            (
                "relay_clients",
                "Proxies attached to this relay now",
                attached,
            ),
            (
                "relay_flagged",
                "Names refused for a while because two processes with their key took turns",
                flagged,
            ),
        ];
        for (name, help, v) in gauges {
            let e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(v as i64).encode(e)?;
        }
        let counters = [
            (
                "relay_attaches",
                "Streams attached since the relay started (a reconnect counts again)",
                r.attaches,
            ),
            (
                "relay_carried_requests",
                "Requests carried down attached streams",
                r.requests_carried,
            ),
            (
                "relay_carried_messages",
                "Messages in the requests carried",
                r.messages_carried,
            ),
            (
                "relay_carried_bytes",
                "Bytes of the requests carried",
                r.bytes_carried,
            ),
        ];
        for (name, help, v) in counters {
            let e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(v).encode(e)?;
        }
        let mut e = encoder.encode_descriptor(
            "relay_dropped",
            "Requests the relay did not carry, by reason: queue_full (an attached stream's \
             queue was full), not_here (nobody attached under that name), refused (a send or an \
             attach refused, or rate-limited)",
            None,
            MetricType::Counter,
        )?;
        for (reason, v) in [
            ("queue_full", r.dropped),
            ("not_here", r.not_here),
            ("refused", r.refused),
        ] {
            ConstCounter::new(v).encode(e.encode_family(&ReasonLabels { reason })?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hubs_report_is_shown_as_it_is_at_the_scrape() {
        let (tx, rx) = watch::channel(RelayReport::default());
        let metrics = crate::web::metrics::Metrics::new("relay");
        metrics.register_collector(Box::new(RelayCollector(rx)));
        tx.send_replace(RelayReport {
            attached: vec!["alice".into(), "bob".into()],
            attaches: 5,
            requests_carried: 9,
            dropped: 1,
            not_here: 2,
            ..Default::default()
        });
        let text = metrics.encode();
        for line in [
            r#"overlay_relay_clients{role="relay"} 2"#,
            r#"overlay_relay_attaches_total{role="relay"} 5"#,
            r#"overlay_relay_carried_requests_total{role="relay"} 9"#,
            r#"overlay_relay_dropped_total{role="relay",reason="queue_full"} 1"#,
            r#"overlay_relay_dropped_total{role="relay",reason="not_here"} 2"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains("alice"), "counted, not named: {text}");
    }
}
