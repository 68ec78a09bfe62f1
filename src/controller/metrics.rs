//! The controller's series in its role's registry (see [`crate::web::metrics`]): registered
//! proxies by liveness state, the directory version, and the event streams held open
//! (dashboards, proxies' legacy table streams, proxies' directory streams). The registry sets
//! them at every liveness sweep (each second); nothing here reads its state.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::liveness::Badge;
use crate::web::metrics::Metrics;

/// `{state}` of `overlay_registry_proxies`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// The `state` label of a liveness badge: `active`, `warning`, `stale`.
pub fn state_label(badge: Badge) -> &'static str {
    match badge {
        Badge::Active => "active",
        Badge::Warning => "warning",
        Badge::Stale => "stale",
    }
}

/// What the registry counts now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryCounts {
    pub active: i64,
    pub warning: i64,
    pub stale: i64,
    pub version: u64,
    pub dashboards: i64,
    pub tables: i64,
    pub directories: i64,
}

/// The registry's gauges (unregistered by default: a registry built without a role's
/// metrics counts into nothing anyone reads).
#[derive(Debug, Clone, Default)]
pub struct RegistryGauges {
    proxies: Family<StateLabels, Gauge>,
    version: Gauge,
    dashboards: Gauge,
    tables: Gauge,
    directories: Gauge,
}

impl RegistryGauges {
    /// Registers the controller's series in `metrics`.
    pub fn register(metrics: &Metrics) -> RegistryGauges {
        let proxies = Family::<StateLabels, Gauge>::default();
        metrics.register(
            "registry_proxies",
            "Registered proxies (and relays) by liveness state: active, warning, stale",
            proxies.clone(),
        );
        let version = Gauge::default();
        metrics.register(
            "table_version",
            "The directory version the controller publishes now",
            version.clone(),
        );
        let gauges = RegistryGauges {
            proxies,
            version,
            dashboards: metrics.sse_listeners("dashboard"),
            tables: metrics.sse_listeners("tables"),
            directories: metrics.sse_listeners("directory"),
        };
        // Every state shown (at zero) before the first sweep.
        gauges.set(RegistryCounts::default());
        gauges
    }

    /// The counts now.
    pub fn set(&self, c: RegistryCounts) {
        for (badge, n) in [
            (Badge::Active, c.active),
            (Badge::Warning, c.warning),
            (Badge::Stale, c.stale),
        ] {
            self.proxies
                .get_or_create(&StateLabels {
                    state: state_label(badge),
                })
                .set(n);
        }
        self.version
            .set(i64::try_from(c.version).unwrap_or(i64::MAX));
        self.dashboards.set(c.dashboards);
        self.tables.set(c.tables);
        self.directories.set(c.directories);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxies_by_state_the_version_and_the_streams_are_shown() {
        let metrics = Metrics::new("controller");
        let gauges = RegistryGauges::register(&metrics);
        gauges.set(RegistryCounts {
            active: 2,
            warning: 1,
            stale: 0,
            version: 7,
            dashboards: 1,
            tables: 0,
            directories: 2,
        });
        let text = metrics.encode();
        for line in [
            r#"overlay_registry_proxies{role="controller",state="active"} 2"#,
            r#"overlay_registry_proxies{role="controller",state="warning"} 1"#,
            r#"overlay_registry_proxies{role="controller",state="stale"} 0"#,
            r#"overlay_table_version{role="controller"} 7"#,
            r#"overlay_sse_listeners{role="controller",stream="dashboard"} 1"#,
            r#"overlay_sse_listeners{role="controller",stream="directory"} 2"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
