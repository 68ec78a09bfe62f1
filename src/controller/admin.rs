//! Who is the admin. The dashboard, its JSON and stream, and every state-changing API (table
//! edits, removal, join tokens, revocation) need a login: a session cookie
//! ([`crate::web::session`]) from `POST /login`, or the admin token as
//! `Authorization: Bearer TOKEN` (the CLI, scripts).
//!
//! The admin token is in `admin.token` (0600) in the data dir, written at the first start and
//! never logged (the log says where it is). An admin password can be set with
//! `overlay admin password` (kept as an argon2id hash in `admin.password`, 0600); until the
//! TLS issue lands a password is taken only from this machine (loopback), as it would cross the
//! network in the clear: beyond loopback, log in with the token.
//!
//! Failed logins and wrong tokens are rate-limited per source address before anything is
//! checked; logins, refusals and logouts go to the audit log with the address.
//!
//! Owns the gate ([`AdminGate`]), its middleware ([`require`]) and the login routes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use subtle::ConstantTimeEq;

use super::registry::Registry;
use super::routes::source_of;
use crate::trust::RateLimiter;
use crate::web::session::Sessions;
use crate::wire::legacy::ErrorBody;

/// The file of the admin password's hash, beside `admin.token`.
pub const PASSWORD_FILE: &str = "admin.password";
/// How long an admin session lasts.
const SESSION: Duration = Duration::from_secs(12 * 3600);
/// Shortest admin password.
pub const MIN_PASSWORD: usize = 12;

/// The controller's admin gate: its token, where its password hash is, its sessions.
pub struct AdminGate {
    token: String,
    password_file: PathBuf,
    sessions: Sessions,
    limiter: Mutex<RateLimiter>,
}

impl AdminGate {
    pub fn new(token: String, data_dir: &Path) -> AdminGate {
        AdminGate {
            token,
            password_file: data_dir.join(PASSWORD_FILE),
            sessions: Sessions::new("overlay-admin", SESSION),
            // Ten failed attempts at once, then ten a minute, per address (IPv6: per /64).
            limiter: Mutex::new(RateLimiter::new(10, 10)),
        }
    }

    /// Its session cookie is `Secure` (the dashboard is served over HTTPS).
    pub fn secure_cookie(mut self, secure: bool) -> AdminGate {
        self.sessions =
            std::mem::replace(&mut self.sessions, Sessions::new("overlay-admin", SESSION))
                .secure(secure);
        self
    }

    fn token_matches(&self, given: &str) -> bool {
        bool::from(given.trim().as_bytes().ct_eq(self.token.as_bytes()))
    }

    /// Whether `source` has used up its failed attempts for now (checked before anything).
    fn blocked(&self, source: IpAddr) -> bool {
        self.limiter()
            .retry_after(source, std::time::Instant::now())
            > Duration::ZERO
    }

    /// Counts a failed attempt of `source`.
    fn failed(&self, source: IpAddr) {
        self.limiter().allow(source, std::time::Instant::now());
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, RateLimiter> {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `password` against the stored hash (none set: never).
    fn password_matches(&self, password: &str) -> bool {
        let Ok(bytes) = crate::trust::private_file::read(&self.password_file, 4096) else {
            return false;
        };
        let Ok(text) = String::from_utf8(bytes) else {
            return false;
        };
        let Ok(hash) = PasswordHash::new(text.trim()) else {
            log::warn!(
                "{} is not an argon2 hash: set the password again with `overlay admin password`",
                self.password_file.display()
            );
            return false;
        };
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    }

    fn has_password(&self) -> bool {
        self.password_file.exists()
    }
}

/// Sets the admin password of the controller whose data dir is `data_dir`: its argon2id hash
/// (a fresh salt, the crate's default cost) replaces `admin.password` (0600).
pub fn set_password(data_dir: &Path, password: &str) -> anyhow::Result<PathBuf> {
    if password.chars().count() < MIN_PASSWORD {
        anyhow::bail!("the admin password must be at least {MIN_PASSWORD} characters long");
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no random salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("{e}"))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?
        .to_string();
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(PASSWORD_FILE);
    crate::trust::private_file::replace(&path, format!("{hash}\n").as_bytes(), 0o600)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(path)
}

/// The routes only the admin may call: the dashboard and its feeds, the admin API, and the
/// original's table edits and removal.
fn is_admin_route(path: &str) -> bool {
    path == "/"
        || path == "/api/v1/dashboard/stream"
        || path == "/api/v1/proxies"
        || path.starts_with("/api/v1/proxies/")
        || path.starts_with("/api/v1/admin/")
        || path.starts_with("/api/update_proxy_endpoints/")
        || path.starts_with("/api/remove_proxy/")
}

/// Middleware for the controller's app; it must have `web::Data<AdminGate>` and
/// `web::Data<Addr<Registry>>`.
pub async fn require(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if !is_admin_route(req.path()) {
        return next.call(req).await;
    }
    let Some(gate) = req.app_data::<web::Data<AdminGate>>().cloned() else {
        return next.call(req).await;
    };
    if gate.sessions.holds(req.request(), crate::wire::now_ms()) {
        return next.call(req).await;
    }
    let bearer = crate::web::bearer(req.headers()).map(str::to_string);
    let source = source_of(req.request());
    let refusal = match bearer {
        Some(_) if gate.blocked(source) => {
            let answer = HttpResponse::TooManyRequests().json(ErrorBody::new(
                "too many wrong admin tokens from this address: wait a minute",
            ));
            return Ok(req.into_response(answer));
        }
        Some(t) if gate.token_matches(&t) => return next.call(req).await,
        Some(_) => {
            gate.failed(source);
            if let Some(registry) = req.app_data::<web::Data<actix::Addr<Registry>>>() {
                audit(
                    registry,
                    req.request(),
                    "admin refused",
                    "a wrong admin token",
                );
            }
            "the admin token is wrong: it is in admin.token in the controller's data directory"
        }
        None if req.path() == "/" && req.method() == actix_web::http::Method::GET => {
            let answer = HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/login"))
                .finish();
            return Ok(req.into_response(answer));
        }
        None => {
            "this needs an admin login: log in on the dashboard, or send the admin token \
             (Authorization: Bearer TOKEN; it is in admin.token in the controller's data \
             directory)"
        }
    };
    let answer = HttpResponse::Unauthorized().json(ErrorBody::new(refusal));
    Ok(req.into_response(answer))
}

/// Records an admin event with the request's source address.
fn audit(registry: &actix::Addr<Registry>, req: &HttpRequest, kind: &str, detail: &str) {
    registry.do_send(super::registry::RecordAudit {
        kind: kind.to_string(),
        name: "admin".into(),
        source: source_of(req).to_string(),
        detail: detail.to_string(),
    });
}

/// The login form's fields (one of them).
#[derive(serde::Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    password: String,
}

/// # GET /login
pub async fn login_page(gate: web::Data<AdminGate>, req: HttpRequest) -> HttpResponse {
    page(
        HttpResponse::Ok(),
        None,
        gate.has_password() && password_safe(&req),
    )
}

/// A password may be typed here: the request came from this machine, or over HTTPS.
fn password_safe(req: &HttpRequest) -> bool {
    source_of(req).is_loopback() || req.conn_data::<super::tls::PageTls>().is_some()
}

fn page(
    mut status: actix_web::HttpResponseBuilder,
    error: Option<&str>,
    password: bool,
) -> HttpResponse {
    status
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(super::dashboard::login_page(error, password).into_string())
}

/// # POST /login
/// The admin token, or the admin password (from this machine only, until TLS): a session
/// cookie and back to the dashboard; else the form again with what was wrong (401), or 429
/// when this address tried too often.
pub async fn login(
    gate: web::Data<AdminGate>,
    registry: web::Data<actix::Addr<Registry>>,
    req: HttpRequest,
    form: web::Form<LoginForm>,
) -> HttpResponse {
    let source = source_of(&req);
    let local = password_safe(&req);
    let offer_password = gate.has_password() && local;
    if gate.blocked(source) {
        audit(&registry, &req, "login refused", "too many attempts");
        return page(
            HttpResponse::TooManyRequests(),
            Some("Too many attempts from this address: wait a minute and try again."),
            offer_password,
        );
    }
    let form = form.into_inner();
    let (ok, how) = if !form.token.trim().is_empty() {
        (gate.token_matches(&form.token), "the admin token")
    } else if !form.password.is_empty() {
        if !local {
            audit(
                &registry,
                &req,
                "login refused",
                "a password beyond loopback",
            );
            return page(
                HttpResponse::Forbidden(),
                Some(
                    "Password login is refused beyond this machine in plain HTTP (it would \
                     cross the network in the clear): open the dashboard over HTTPS, or log in \
                     with the admin token.",
                ),
                false,
            );
        }
        (gate.password_matches(&form.password), "the admin password")
    } else {
        (false, "nothing")
    };
    if !ok {
        gate.failed(source);
        audit(&registry, &req, "login refused", &format!("wrong: {how}"));
        return page(
            HttpResponse::Unauthorized(),
            Some("That is not it. The admin token is in admin.token in the controller's data directory."),
            offer_password,
        );
    }
    audit(&registry, &req, "login", &format!("with {how}"));
    let cookie = gate.sessions.open(crate::wire::now_ms());
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/"))
        .insert_header((header::SET_COOKIE, cookie))
        .finish()
}

/// # POST /logout
pub async fn logout(
    gate: web::Data<AdminGate>,
    registry: web::Data<actix::Addr<Registry>>,
    req: HttpRequest,
) -> HttpResponse {
    audit(&registry, &req, "logout", "");
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/login"))
        .insert_header((header::SET_COOKIE, gate.sessions.close(&req)))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_its_feeds_and_every_change_are_the_admins() {
        for p in [
            "/",
            "/api/v1/proxies",
            "/api/v1/proxies/p1/table/stream",
            "/api/v1/dashboard/stream",
            "/api/v1/admin/tokens",
            "/api/update_proxy_endpoints/p1",
            "/api/remove_proxy/p1",
        ] {
            assert!(is_admin_route(p), "{p}");
        }
        for p in [
            "/login",
            "/api/register",
            "/api/v1/join",
            "/healthz",
            "/assets/dashboard.js",
        ] {
            assert!(!is_admin_route(p), "{p}");
        }
    }

    #[test]
    fn a_password_is_stored_as_an_argon2id_hash_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert!(set_password(dir.path(), "short").is_err());
        let path = set_password(dir.path(), "correct horse battery").unwrap();
        let stored = std::fs::read_to_string(&path).unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(!stored.contains("correct horse"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let gate = AdminGate::new("t".repeat(40), dir.path());
        assert!(gate.password_matches("correct horse battery"));
        assert!(!gate.password_matches("correct horse battery!"));
    }
}
