//! `GET /healthz` of every role: who it is, and whether it can do its job. Each role gives
//! its checks ([`Check`]: a problem, or none); any problem answers 503 with every problem
//! named, so a container runtime or a load balancer sees a role that cannot work, and its
//! operator reads why.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

/// One check: a problem in words, or None.
pub type Check = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Body of `GET /healthz`.
#[derive(Clone, Serialize, Deserialize)]
pub struct Health {
    pub role: String,
    pub instance: Option<String>,
    pub version: String,
    /// `ok`, or `failing` (answered 503).
    #[serde(default)]
    pub status: String,
    /// What is wrong, one sentence each.
    #[serde(default)]
    pub problems: Vec<String>,
    #[serde(skip)]
    checks: Vec<Check>,
    /// The role's metrics registry (served at `/metrics`): it travels with the role's
    /// `Health`, built once per role, so every role that serves `/healthz` serves its own.
    #[serde(skip)]
    metrics: super::metrics::Metrics,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("role", &self.role)
            .field("instance", &self.instance)
            .field("status", &self.status)
            .field("problems", &self.problems)
            .field("checks", &self.checks.len())
            .finish()
    }
}

impl PartialEq for Health {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.role,
            &self.instance,
            &self.version,
            &self.status,
            &self.problems,
        ) == (
            &other.role,
            &other.instance,
            &other.version,
            &other.status,
            &other.problems,
        )
    }
}

impl Health {
    pub fn new(role: &str, instance: Option<&str>) -> Self {
        Self {
            role: role.to_string(),
            instance: instance.map(str::to_string),
            version: env!("CARGO_PKG_VERSION").to_string(),
            status: "ok".into(),
            problems: Vec::new(),
            checks: Vec::new(),
            metrics: super::metrics::Metrics::new(role),
        }
    }

    /// This role's metrics registry.
    pub fn metrics(&self) -> &super::metrics::Metrics {
        &self.metrics
    }

    /// With `check` run at every request.
    pub fn check(mut self, check: Check) -> Self {
        self.checks.push(check);
        self
    }

    /// This role now: its checks run.
    pub fn now(&self) -> Health {
        let problems: Vec<String> = self.checks.iter().filter_map(|c| c()).collect();
        Health {
            status: if problems.is_empty() { "ok" } else { "failing" }.into(),
            problems,
            checks: Vec::new(),
            ..self.clone()
        }
    }
}

/// # GET /healthz
pub async fn healthz(health: web::Data<Health>) -> HttpResponse {
    let now = health.now();
    if now.problems.is_empty() {
        HttpResponse::Ok().json(now)
    } else {
        HttpResponse::ServiceUnavailable().json(now)
    }
}

/// A check of a store: its writes go through.
pub fn store(what: &str, store: crate::storage::StoreHealth) -> Check {
    let what = what.to_string();
    Arc::new(move || {
        store.failure().map(|(since, why)| {
            format!(
                "{what} cannot be written since {} ({why}): check the disk (space, permissions)",
                crate::wire::rfc3339_ms(since)
            )
        })
    })
}

/// The destinations whose queue is at its limit, as the proxy's outbox last counted them
/// (every second): while one is, new messages for it are refused.
#[derive(Debug, Clone, Default)]
pub struct FullQueues(Arc<std::sync::Mutex<Vec<(String, usize)>>>);

impl FullQueues {
    /// `full`: (destination, messages queued) of every queue at its limit.
    pub fn set(&self, full: Vec<(String, usize)>) {
        if let Ok(mut f) = self.0.lock() {
            *f = full;
        }
    }

    /// A check: any queue at its limit is a problem.
    pub fn check(&self) -> Check {
        let this = self.clone();
        Arc::new(move || {
            let full = this.0.lock().ok()?.clone();
            // Counted, not named: /healthz answers anyone, and whom a user writes to is theirs
            // (the own peer reads the names at GET /api/v1/outbox).
            (!full.is_empty()).then(|| {
                let most = full.iter().map(|(_, n)| *n).max().unwrap_or(0);
                format!(
                    "{} destination queue{} at the limit (delivery.max_queued_per_destination, \
                     {most} messages): new messages for {} are refused until {} drain{} (which: \
                     GET /api/v1/outbox, from the own peer)",
                    full.len(),
                    if full.len() == 1 { " is" } else { "s are" },
                    if full.len() == 1 { "it" } else { "them" },
                    if full.len() == 1 { "it" } else { "they" },
                    if full.len() == 1 { "s" } else { "" },
                )
            })
        })
    }
}

/// When a role last heard from the controller (ms; shared with its link), and how long a
/// silence is still fine.
#[derive(Debug, Clone)]
pub struct ControllerContact {
    last_ms: Arc<std::sync::atomic::AtomicU64>,
    pub url: String,
}

impl ControllerContact {
    /// Counting from now (a role just started has not heard from it yet).
    pub fn new(url: &str) -> Self {
        Self {
            last_ms: Arc::new(std::sync::atomic::AtomicU64::new(crate::wire::now_ms())),
            url: url.to_string(),
        }
    }

    /// The controller answered.
    pub fn heard(&self) {
        self.last_ms
            .store(crate::wire::now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// A check: silent for longer than three heartbeats (30 s at least) is a problem.
    pub fn check(&self, heartbeat_every: Duration) -> Check {
        let this = self.clone();
        let allowed = (heartbeat_every * 3).max(Duration::from_secs(30));
        Arc::new(move || {
            let last = this.last_ms.load(std::sync::atomic::Ordering::Relaxed);
            silence(last, crate::wire::now_ms(), allowed, &this.url)
        })
    }
}

/// The problem of a controller last heard at `last_ms`, at `now_ms`, if it is one.
fn silence(last_ms: u64, now_ms: u64, allowed: Duration, url: &str) -> Option<String> {
    let silent = Duration::from_millis(now_ms.saturating_sub(last_ms));
    (silent > allowed).then(|| {
        format!(
            "the controller at {url} has not answered for {} s: this role's directory and \
             certificate cannot be renewed (is the controller up, and reachable from here?)",
            silent.as_secs()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test as web_test;
    use actix_web::App;

    #[actix_rt::test]
    async fn a_role_with_a_problem_answers_503_naming_each_one() {
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = failing.clone();
        let health = Health::new("proxy", Some("alice"))
            .check(Arc::new(|| None))
            .check(Arc::new(move || {
                f.load(std::sync::atomic::Ordering::Relaxed)
                    .then(|| "the outbox cannot be written".to_string())
            }));
        let app = web_test::init_service(
            App::new()
                .app_data(web::Data::new(health))
                .route("/healthz", web::get().to(healthz)),
        )
        .await;
        let ok: Health = web_test::call_and_read_body_json(
            &app,
            web_test::TestRequest::get().uri("/healthz").to_request(),
        )
        .await;
        assert_eq!((ok.status.as_str(), ok.problems.len()), ("ok", 0));
        assert_eq!(ok.instance.as_deref(), Some("alice"));
        failing.store(true, std::sync::atomic::Ordering::Relaxed);
        let res = web_test::call_service(
            &app,
            web_test::TestRequest::get().uri("/healthz").to_request(),
        )
        .await;
        assert_eq!(res.status(), 503);
        let bad: Health = web_test::read_body_json(res).await;
        assert_eq!(bad.status, "failing");
        assert_eq!(bad.problems, ["the outbox cannot be written"]);
    }

    #[test]
    fn a_store_that_failed_is_a_problem_until_a_write_goes_through() {
        let store = crate::storage::StoreHealth::default();
        let check = super::store("alice's outbox store", store.clone());
        assert_eq!(check(), None);
        store.record(Err("writing the store's log: No space left on device"));
        let problem = check().expect("a problem");
        assert!(
            problem.contains("alice's outbox store cannot be written since"),
            "{problem}"
        );
        assert!(problem.contains("No space left on device"), "{problem}");
        store.record(Ok(()));
        assert_eq!(check(), None);
        // The database failing while the log flushes fine: still failing, until the database
        // takes a write again.
        store.record(Err("a write transaction failed: no space"));
        store.record_log(Ok(()));
        assert!(check().is_some_and(|p| p.contains("no space")));
        store.record_log(Err("log: EIO"));
        store.record(Ok(()));
        assert!(check().is_some_and(|p| p.contains("EIO")));
        store.record_log(Ok(()));
        assert_eq!(check(), None);
    }

    #[test]
    fn a_full_queue_is_a_problem_while_it_is_full() {
        let full = FullQueues::default();
        let check = full.check();
        assert_eq!(check(), None);
        full.set(vec![("bob".into(), 100_000)]);
        let p = check().expect("a problem");
        assert!(
            p.starts_with("1 destination queue is at the limit") && p.contains("100000 messages"),
            "{p}"
        );
        assert!(!p.contains("bob"), "names stay with the user: {p}");
        full.set(Vec::new());
        assert_eq!(check(), None);
    }

    #[test]
    fn a_controller_silent_for_longer_than_three_heartbeats_or_30_s_is_a_problem() {
        let s = Duration::from_secs(30);
        assert_eq!(silence(1_000, 31_000, s, "https://c:8443"), None);
        let p = silence(1_000, 32_000, s, "https://c:8443").expect("a problem");
        assert!(
            p.contains("https://c:8443 has not answered for 31 s"),
            "{p}"
        );
    }
}
