//! Who may speak for a name: join tokens and their redemption, signed registrations, key
//! rotation, revocation, the audit log of all of it, and who the original's unsigned API
//! answers.
//!
//! Redeeming a token and pinning the key it was redeemed for are one store transaction, and the
//! registry handles one message at a time: of any number of joins with one token (at once or
//! not) exactly one pins its key. The token's secret never reaches the controller; the joiner
//! proves it with an HMAC over the root fingerprint, the name and the key, so a sniffed join
//! cannot be replayed for another key.
//!
//! The original's API answers only proxies of the original listed under `legacy_proxies` in
//! config.yaml, each by its name and the address its requests come from. An unsigned
//! registration (`POST /api/register`) is accepted only for a listed name from its listed
//! address, and never for a name with a pinned key, listed or not (the pin is checked first).
//! An unsigned heartbeat or table fetch (`POST /api/heartbeat`, `GET /api/getendpoints`) is
//! answered only from a listed address, and only for the proxy listed there; a signed one is
//! checked against the key pinned to the proxy's user. A signature that nothing can check (its
//! user has no pinned key) counts for nothing: the call is judged as unsigned; the proxy of a
//! user whose key is revoked is refused, signed or not. Those checks decide only: the handlers
//! record and store.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::config::InstanceName;
use crate::trust::{Fingerprint, JoinToken, PublicKey, Signed};
use crate::wire::control_plane::{RegisterRequest, NATIVE_PROTOCOL};
use crate::wire::directory::{
    Certified, JoinRequest, RegisterClaim, Role, RotateClaim, RotateRequest, Snapshot, UserEntry,
    CLAIM_SKEW_MS, REGISTER_DOMAIN, ROTATE_DOMAIN,
};
use crate::wire::now_ms;

use super::super::error::ControllerError;
use super::super::store::{
    AuditEntry, Change, PinRecord, Revocation, TokenRecord, TokenUse, AUDIT_KEEP,
};
use super::{instance_key, Registry, SignedCall, AUDIT_SHOWN};

/// How long refusals wait to be stored together.
const AUDIT_FLUSH: Duration = Duration::from_millis(500);

/// The longest a join token may live.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// `POST /api/v1/join`.
#[derive(Message)]
#[rtype(result = "Result<Certified<Snapshot>, ControllerError>")]
pub struct Join {
    pub request: JoinRequest,
    pub source: IpAddr,
}

/// `POST /api/v1/register`: a joined proxy registers (its address, its id), signed.
#[derive(Message)]
#[rtype(result = "Result<Certified<Snapshot>, ControllerError>")]
pub struct RegisterSigned {
    pub claim: Signed<RegisterClaim>,
    /// The key of the caller's TLS client certificate (none: plain HTTP or no certificate).
    pub tls_key: Option<crate::trust::PublicKey>,
    pub source: IpAddr,
}

/// `POST /api/v1/rotate`.
#[derive(Message)]
#[rtype(result = "Result<(), ControllerError>")]
pub struct Rotate {
    pub request: RotateRequest,
    pub source: IpAddr,
}

/// `POST /api/v1/admin/tokens`, `overlay token create`, `overlay up`.
#[derive(Message)]
#[rtype(result = "Result<IssuedToken, ControllerError>")]
pub struct IssueToken {
    pub name: String,
    pub ttl: Duration,
    /// May replace a key already pinned to the name (a lost key).
    pub replace: bool,
    /// Who asked, for the audit log.
    pub source: String,
}

/// A new token: shown once, never stored.
#[derive(Debug)]
pub struct IssuedToken {
    pub token: JoinToken,
    pub name: String,
    pub root: Fingerprint,
    pub expires_at_ms: u64,
    pub replace: bool,
}

/// `POST /api/v1/admin/revoke`, `overlay revoke`.
#[derive(Message)]
#[rtype(result = "Result<(), ControllerError>")]
pub struct Revoke {
    pub name: String,
    pub reason: String,
    pub source: String,
}

/// An admin event for the audit log (a login, a refusal, an edit), with its source address.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordAudit {
    pub kind: String,
    pub name: String,
    pub source: String,
    pub detail: String,
}

impl Handler<RecordAudit> for Registry {
    type Result = ();

    fn handle(&mut self, msg: RecordAudit, ctx: &mut Self::Context) {
        self.record_audit(&msg.kind, &msg.name, &msg.source, &msg.detail, ctx);
    }
}

/// The key pinned to `name` and whether it was revoked, if any (for `overlay up`, which
/// provisions its own users).
#[derive(Message)]
#[rtype(result = "Option<(PublicKey, bool)>")]
pub struct Pinned {
    pub name: String,
}

/// Everything the dashboard and the admin API show about trust.
#[derive(Message)]
#[rtype(result = "TrustView")]
pub struct TrustOverview;

/// What [`TrustOverview`] answers.
#[derive(Debug, Clone)]
pub struct TrustView {
    pub root: Fingerprint,
    pub version: u64,
    pub users: Vec<UserEntry>,
    /// Tokens not yet used and not expired (no secret: id, name, expiry).
    pub tokens: Vec<TokenRecord>,
    /// Newest first.
    pub audit: Vec<AuditEntry>,
}

fn forbidden(why: impl Into<String>) -> ControllerError {
    ControllerError::Forbidden(why.into())
}

impl Registry {
    /// Appends to the audit log: the dashboard sees it at once; it is stored with the others
    /// of the next [`AUDIT_FLUSH`] in one transaction (a burst of refusals costs one write).
    pub(super) fn record_audit(
        &mut self,
        kind: &str,
        name: &str,
        source: &str,
        detail: &str,
        ctx: &mut Context<Self>,
    ) {
        let entry = self.audit_entry(kind, name, source, detail);
        self.pending_audit.push(entry.clone());
        self.remember_audit(entry);
        if self.pending_audit.len() == 1 {
            ctx.run_later(AUDIT_FLUSH, |act, _| {
                let changes: Vec<Change> = std::mem::take(&mut act.pending_audit)
                    .into_iter()
                    .map(Change::Audit)
                    .collect();
                let store = act.store.clone();
                actix::spawn(async move {
                    if let Err(err) = store.commit(changes).await {
                        log::warn!("could not store audit entries: {err}");
                    }
                });
            });
        }
    }

    fn audit_entry(&mut self, kind: &str, name: &str, source: &str, detail: &str) -> AuditEntry {
        self.audit_seq += 1;
        AuditEntry {
            seq: self.audit_seq,
            at_ms: now_ms(),
            kind: kind.into(),
            name: name.into(),
            source: source.into(),
            detail: detail.into(),
        }
    }

    fn remember_audit(&mut self, entry: AuditEntry) {
        log::info!(
            "audit: {} {} from {}: {}",
            entry.kind,
            entry.name,
            entry.source,
            entry.detail
        );
        if self.audit.len() == AUDIT_SHOWN {
            self.audit.pop_front();
        }
        self.audit.push_back(entry);
        self.tell_dashboards("audit", &());
        debug_assert!(AUDIT_SHOWN as u64 <= AUDIT_KEEP);
    }

    /// A source over its failed attempts is refused before any signature is checked.
    pub(super) fn limit(&self, source: IpAddr) -> Result<(), ControllerError> {
        let wait = self.limiter.retry_after(source, Instant::now());
        if wait.is_zero() {
            return Ok(());
        }
        Err(ControllerError::TooManyRequests {
            source_addr: source.to_string(),
            retry_after_secs: wait.as_secs().max(1),
        })
    }

    /// A refused attempt: counted against its source, and in the audit log.
    pub(super) fn refused(
        &mut self,
        source: IpAddr,
        name: &str,
        what: &str,
        e: &ControllerError,
        ctx: &mut Context<Self>,
    ) {
        if matches!(e, ControllerError::TooManyRequests { .. }) {
            return;
        }
        self.limiter.allow(source, Instant::now());
        self.record_audit(
            "refused",
            name,
            &source.to_string(),
            &format!("{what}: {e}"),
            ctx,
        );
    }

    /// A claim signed by its own key, meant for this controller, made just now.
    fn check_claim(&self, claim: &Signed<RegisterClaim>) -> Result<RegisterClaim, ControllerError> {
        let key = *claim.signer();
        let c = claim
            .verify(REGISTER_DOMAIN, &key)
            .map_err(|e| forbidden(format!("the registration's signature does not hold: {e}")))?;
        if c.root != self.root {
            return Err(forbidden(format!(
                "the registration is meant for the controller with root {}, this one is {}: \
                 check the --controller-root the proxy pins",
                c.root, self.root
            )));
        }
        let now = now_ms();
        if c.time_ms.abs_diff(now) > CLAIM_SKEW_MS {
            return Err(forbidden(format!(
                "the registration is dated {} s away from the controller's clock (at most {} \
                 s): check both clocks",
                c.time_ms.abs_diff(now) / 1000,
                CLAIM_SKEW_MS / 1000
            )));
        }
        InstanceName::parse(&c.instance_name).map_err(ControllerError::BadRequest)?;
        // The role is the controller's to say, from its config: a member cannot make itself a
        // relay (and vanish from tables, or report for one), nor a relay a user (and send).
        let relay = self
            .config
            .relays
            .iter()
            .any(|r| r.name.matches(&c.instance_name));
        match (c.role, relay) {
            (Role::Relay, false) => {
                return Err(forbidden(format!(
                    "{} registers as a relay, but the controller's config lists no relay of \
                     that name: add it under `relays:` in the controller's config.yaml",
                    c.instance_name
                )))
            }
            (Role::User, true) => {
                return Err(forbidden(format!(
                    "{} is a relay in the controller's config (`relays:`): it registers as one \
                     (`overlay relay --name {}`), not as a user's proxy",
                    c.instance_name, c.instance_name
                )))
            }
            _ => {}
        }
        if c.protocol != NATIVE_PROTOCOL {
            return Err(ControllerError::BadRequest(format!(
                "protocol must be {NATIVE_PROTOCOL}"
            )));
        }
        // The same checks as the original's registration (id, name, address).
        let mut m = serde_json::Map::new();
        m.insert("proxy_id".into(), c.proxy_id.clone().into());
        m.insert("instance_name".into(), c.instance_name.clone().into());
        m.insert("host".into(), c.host.clone().into());
        m.insert("port".into(), c.port.into());
        super::super::routes::parse_register(&m)?;
        Ok(c)
    }

    fn request_of(c: &RegisterClaim) -> RegisterRequest {
        RegisterRequest {
            tls: c.tls.clone(),
            seal: c.seal,
            role: c.role,
            via: c.via.clone(),
            auto: c.auto,
            proxy_id: c.proxy_id.clone(),
            instance_name: c.instance_name.clone(),
            host: c.host.clone(),
            port: c.port,
            protocol: Some(c.protocol.clone()),
            api_keys: c.api_keys.clone(),
        }
    }

    /// A proxy id already registered under another name cannot be taken by this one.
    fn check_id(&self, c: &RegisterClaim) -> Result<(), ControllerError> {
        match self.proxies.get(&c.proxy_id) {
            Some(p) if instance_key(&p.instance_name) != instance_key(&c.instance_name) => {
                Err(forbidden(format!(
                    "proxy id {} is registered as {}, not {}",
                    c.proxy_id, p.instance_name, c.instance_name
                )))
            }
            _ => Ok(()),
        }
    }

    /// What a join would do, or why it is refused. Ok(None): the key is pinned already.
    fn plan_join(
        &self,
        req: &JoinRequest,
        c: &RegisterClaim,
    ) -> Result<Option<(TokenRecord, PinRecord, &'static str)>, ControllerError> {
        let key = *req.claim.signer();
        let name_key = instance_key(&c.instance_name);
        let pinned = self.pins.get(&name_key);
        if pinned.is_some_and(|p| p.key == key && p.revoked.is_none()) {
            return Ok(None);
        }
        let token = self
            .tokens
            .get(&req.token_id)
            .ok_or_else(|| forbidden(format!("no join token has the id {}", req.token_id)))?;
        let now = now_ms();
        if let Some(used) = &token.used {
            return Err(forbidden(format!(
                "join token {} was used already (by key {}); ask for a new one",
                token.id,
                used.key.fingerprint()
            )));
        }
        if token.expires_at_ms <= now {
            return Err(forbidden(format!(
                "join token {} expired {} s ago; ask for a new one",
                token.id,
                (now - token.expires_at_ms) / 1000
            )));
        }
        if instance_key(&token.name) != name_key {
            return Err(forbidden(format!(
                "join token {} is for {}, not {}",
                token.id, token.name, c.instance_name
            )));
        }
        if !token
            .verifier
            .check(&self.root, &c.instance_name, &key, &req.proof)
        {
            return Err(forbidden(format!(
                "the proof of join token {} does not match (a wrong secret, or a join made for \
                 another key)",
                token.id
            )));
        }
        let kind = match pinned {
            None => "join",
            Some(_) if token.replace => "replace",
            Some(p) => {
                return Err(forbidden(format!(
                    "{} is pinned to another key ({}){}: a lost key is replaced with a replace \
                     token (`overlay token create --name {} --replace`)",
                    p.name,
                    p.key.fingerprint(),
                    if p.revoked.is_some() {
                        ", which was revoked"
                    } else {
                        ""
                    },
                    p.name
                )))
            }
        };
        let mut used = token.clone();
        used.used = Some(TokenUse { at_ms: now, key });
        let pin = PinRecord {
            name: c.instance_name.clone(),
            key,
            pinned_at_ms: now,
            revoked: None,
        };
        Ok(Some((used, pin, kind)))
    }
}

impl Registry {
    /// Stores a changed pin with its audit entry in one transaction, then applies both.
    fn store_pin(
        &mut self,
        key: String,
        pin: PinRecord,
        audit: AuditEntry,
    ) -> AtomicResponse<Self, Result<(), ControllerError>> {
        let changes = vec![
            Change::PutPin(key.clone(), pin.clone()),
            Change::Audit(audit.clone()),
        ];
        let store = self.store.clone();
        AtomicResponse::new(Box::pin(
            async move { store.commit(changes).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    res?;
                    act.pins.insert(key, pin);
                    act.remember_audit(audit);
                    act.changed(ctx);
                    Ok(())
                }),
        ))
    }
}

impl Handler<Join> for Registry {
    type Result = AtomicResponse<Self, Result<Certified<Snapshot>, ControllerError>>;

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) -> Self::Result {
        let source = msg.source.to_string();
        let planned = self.limit(msg.source).and_then(|()| {
            let c = self.check_claim(&msg.request.claim)?;
            self.check_id(&c)?;
            let plan = self.plan_join(&msg.request, &c)?;
            Ok((c, plan))
        });
        let (claim, plan) = match planned {
            Ok(x) => x,
            Err(e) => {
                let name = msg
                    .request
                    .claim
                    .peek()
                    .map(|c| c.instance_name)
                    .unwrap_or_default();
                self.refused(msg.source, &name, "join", &e, ctx);
                return AtomicResponse::new(Box::pin(fut::ready(Err(e))));
            }
        };
        let (record, replaces) = self.registration(Self::request_of(&claim));
        let mut changes: Vec<Change> = replaces.iter().cloned().map(Change::DeleteProxy).collect();
        changes.push(Change::PutProxy(record.clone()));
        let mut pinned = None;
        if let Some((token, pin, kind)) = plan {
            let old = self.pins.get(&instance_key(&claim.instance_name)).cloned();
            let detail = match &old {
                Some(o) => format!(
                    "key {} replaces {} (token {})",
                    pin.key.fingerprint(),
                    o.key.fingerprint(),
                    token.id
                ),
                None => format!("key {} pinned (token {})", pin.key.fingerprint(), token.id),
            };
            let audit = self.audit_entry(kind, &claim.instance_name, &source, &detail);
            changes.push(Change::PutToken(token.clone()));
            changes.push(Change::PutPin(
                instance_key(&claim.instance_name),
                pin.clone(),
            ));
            changes.push(Change::Audit(audit.clone()));
            pinned = Some((token, pin, audit));
        }
        let store = self.store.clone();
        AtomicResponse::new(Box::pin(
            async move { store.commit(changes).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    res?;
                    if let Some((token, pin, audit)) = pinned {
                        act.tokens.insert(token.id.clone(), token);
                        act.pins.insert(instance_key(&pin.name), pin);
                        act.remember_audit(audit);
                    }
                    let user = record.instance_name.clone();
                    act.registered(record, &replaces, ctx);
                    Ok(act.current_snapshot(&user))
                }),
        ))
    }
}

impl Handler<RegisterSigned> for Registry {
    type Result = AtomicResponse<Self, Result<Certified<Snapshot>, ControllerError>>;

    fn handle(&mut self, msg: RegisterSigned, ctx: &mut Context<Self>) -> Self::Result {
        let checked = self.limit(msg.source).and_then(|()| {
            let c = self.check_claim(&msg.claim)?;
            self.check_id(&c)?;
            let key = *msg.claim.signer();
            match self.pins.get(&instance_key(&c.instance_name)) {
                None => Err(forbidden(format!(
                    "{} has not joined: no key is pinned to it. Create a join token on the \
                     controller (`overlay token create --name {}`) and start the proxy with \
                     --join TOKEN",
                    c.instance_name, c.instance_name
                ))),
                Some(p) if p.key != key => Err(forbidden(format!(
                    "{} is pinned to another key ({}), not this proxy's ({}): a lost key is \
                     replaced with a replace token (`overlay token create --name {} --replace`)",
                    p.name,
                    p.key.fingerprint(),
                    key.fingerprint(),
                    p.name
                ))),
                Some(p) if p.revoked.is_some() => Err(forbidden(format!(
                    "the key of {} ({}) was revoked: {}",
                    p.name,
                    key.fingerprint(),
                    p.revoked.as_ref().map(|r| r.reason.as_str()).unwrap_or("")
                ))),
                Some(p) => self
                    .tls
                    .check_caller(&p.name, &p.key, msg.tls_key.as_ref())
                    .map(|()| c),
            }
        });
        let claim = match checked {
            Ok(c) => c,
            Err(e) => {
                let name = msg
                    .claim
                    .peek()
                    .map(|c| c.instance_name)
                    .unwrap_or_default();
                self.refused(msg.source, &name, "register", &e, ctx);
                return AtomicResponse::new(Box::pin(fut::ready(Err(e))));
            }
        };
        let user = claim.instance_name.clone();
        AtomicResponse::new(Box::pin(
            self.store_registration(Self::request_of(&claim))
                .map(move |res, act, _| {
                    res?;
                    Ok(act.current_snapshot(&user))
                }),
        ))
    }
}

impl Handler<Rotate> for Registry {
    type Result = AtomicResponse<Self, Result<(), ControllerError>>;

    fn handle(&mut self, msg: Rotate, ctx: &mut Context<Self>) -> Self::Result {
        let source = msg.source.to_string();
        let r = &msg.request;
        let checked = self.limit(msg.source).and_then(|()| {
            let c: RotateClaim = serde_json::from_str(&r.claim)
                .map_err(|e| ControllerError::BadRequest(format!("claim: {e}")))?;
            c.old_key
                .verify(ROTATE_DOMAIN, r.claim.as_bytes(), &r.old_sig)
                .map_err(|_| forbidden("the rotation is not signed by the old key"))?;
            c.new_key
                .verify(ROTATE_DOMAIN, r.claim.as_bytes(), &r.new_sig)
                .map_err(|_| forbidden("the rotation is not signed by the new key"))?;
            if c.root != self.root {
                return Err(forbidden("the rotation is meant for another controller"));
            }
            if c.time_ms.abs_diff(now_ms()) > CLAIM_SKEW_MS {
                return Err(forbidden("the rotation is not dated now: check the clocks"));
            }
            let key = instance_key(&c.instance_name);
            match self.pins.get(&key) {
                Some(p) if p.key == c.old_key && p.revoked.is_none() => {
                    let mut pin = p.clone();
                    pin.key = c.new_key;
                    pin.pinned_at_ms = now_ms();
                    Ok((c, key, pin))
                }
                Some(p) if p.revoked.is_some() => Err(forbidden(format!(
                    "the key of {} was revoked: a revoked key cannot rotate",
                    p.name
                ))),
                _ => Err(forbidden(format!(
                    "{}'s pinned key is not {}",
                    c.instance_name,
                    c.old_key.fingerprint()
                ))),
            }
        });
        let (claim, key, pin) = match checked {
            Ok(x) => x,
            Err(e) => {
                self.refused(msg.source, "", "rotate", &e, ctx);
                return AtomicResponse::new(Box::pin(fut::ready(Err(e))));
            }
        };
        let audit = self.audit_entry(
            "rotate",
            &claim.instance_name,
            &source,
            &format!(
                "key {} replaces {}",
                claim.new_key.fingerprint(),
                claim.old_key.fingerprint()
            ),
        );
        self.store_pin(key, pin, audit)
    }
}

impl Handler<IssueToken> for Registry {
    type Result = AtomicResponse<Self, Result<IssuedToken, ControllerError>>;

    fn handle(&mut self, msg: IssueToken, _: &mut Context<Self>) -> Self::Result {
        let checked = (|| {
            InstanceName::parse(&msg.name).map_err(|_| {
                ControllerError::BadRequest(format!(
                    "name `{}` is not a valid name: use 1 to 64 letters, digits, `_`, `-` or `.`",
                    super::super::tables::shown(&msg.name)
                ))
            })?;
            if msg.ttl.is_zero() || msg.ttl > MAX_TOKEN_TTL {
                return Err(ControllerError::BadRequest(format!(
                    "ttl must be more than 0 and at most {} days",
                    MAX_TOKEN_TTL.as_secs() / 86_400
                )));
            }
            let pinned = self.pins.get(&instance_key(&msg.name));
            if pinned.is_some() && !msg.replace {
                return Err(ControllerError::BadRequest(format!(
                    "{} has joined already (key {}); for a lost key make a replace token \
                     (--replace)",
                    msg.name,
                    pinned
                        .map(|p| p.key.fingerprint().to_string())
                        .unwrap_or_default()
                )));
            }
            Ok(())
        })();
        if let Err(e) = checked {
            return AtomicResponse::new(Box::pin(fut::ready(Err(e))));
        }
        let token = JoinToken::generate();
        let now = now_ms();
        let expires_at_ms = now + msg.ttl.as_millis() as u64;
        let record = TokenRecord {
            id: token.id().to_string(),
            name: msg.name.clone(),
            verifier: token.verifier(),
            created_at_ms: now,
            expires_at_ms,
            replace: msg.replace,
            used: None,
        };
        let audit = self.audit_entry(
            "token",
            &msg.name,
            &msg.source,
            &format!(
                "{}token {} valid for {}",
                if msg.replace { "replace " } else { "" },
                record.id,
                crate::hop::backoff::human_duration(msg.ttl.as_secs())
            ),
        );
        // Expired and used tokens older than a day are swept with each new one.
        let stale: Vec<String> = self
            .tokens
            .values()
            .filter(|t| t.expires_at_ms + 86_400_000 < now)
            .map(|t| t.id.clone())
            .collect();
        let mut changes: Vec<Change> = stale.iter().cloned().map(Change::DeleteToken).collect();
        changes.push(Change::PutToken(record.clone()));
        changes.push(Change::Audit(audit.clone()));
        let store = self.store.clone();
        let root = self.root.clone();
        AtomicResponse::new(Box::pin(
            async move { store.commit(changes).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    res?;
                    for id in &stale {
                        act.tokens.remove(id);
                    }
                    act.tokens.insert(record.id.clone(), record);
                    act.remember_audit(audit);
                    Ok(IssuedToken {
                        token,
                        name: msg.name,
                        root,
                        expires_at_ms,
                        replace: msg.replace,
                    })
                }),
        ))
    }
}

impl Handler<Revoke> for Registry {
    type Result = AtomicResponse<Self, Result<(), ControllerError>>;

    fn handle(&mut self, msg: Revoke, _: &mut Context<Self>) -> Self::Result {
        let key = instance_key(&msg.name);
        let reason = msg.reason.trim().to_string();
        let checked = match self.pins.get(&key) {
            None => Err(ControllerError::BadRequest(format!(
                "{} has no pinned key to revoke",
                msg.name
            ))),
            Some(p) if p.revoked.is_some() => Err(ControllerError::BadRequest(format!(
                "the key of {} is revoked already",
                p.name
            ))),
            Some(_) if reason.is_empty() || reason.len() > 200 => Err(ControllerError::BadRequest(
                "reason must be 1 to 200 characters".into(),
            )),
            Some(p) => Ok(p.clone()),
        };
        let mut pin = match checked {
            Ok(p) => p,
            Err(e) => return AtomicResponse::new(Box::pin(fut::ready(Err(e)))),
        };
        pin.revoked = Some(Revocation {
            at_ms: now_ms(),
            reason: reason.clone(),
        });
        let audit = self.audit_entry(
            "revoke",
            &pin.name,
            &msg.source,
            &format!("key {} revoked: {reason}", pin.key.fingerprint()),
        );
        self.store_pin(key, pin, audit)
    }
}

impl Handler<Pinned> for Registry {
    type Result = Option<(PublicKey, bool)>;

    fn handle(&mut self, msg: Pinned, _: &mut Context<Self>) -> Self::Result {
        self.pins
            .get(&instance_key(&msg.name))
            .map(|p| (p.key, p.revoked.is_some()))
    }
}

impl Handler<TrustOverview> for Registry {
    type Result = MessageResult<TrustOverview>;

    fn handle(&mut self, _: TrustOverview, _: &mut Context<Self>) -> Self::Result {
        let now = now_ms();
        MessageResult(TrustView {
            root: self.root.clone(),
            version: self.version,
            users: self.dir_now().users.values().cloned().collect(),
            tokens: self
                .tokens
                .values()
                .filter(|t| t.used.is_none() && t.expires_at_ms > now)
                .cloned()
                .collect(),
            audit: self.audit.iter().rev().cloned().collect(),
        })
    }
}

// ---- the original's API: listed legacy proxies ----

/// A source address as config.yaml spells it (an IPv4 peer on an IPv6 socket shows as IPv4).
fn shown_source(source: IpAddr) -> IpAddr {
    source.to_canonical()
}

impl Registry {
    /// An unsigned registration: refused for a name (or a proxy id) with a pinned key even when
    /// the name is listed, then unless `instance_name` is listed at `source`.
    pub(super) fn check_legacy_registration(
        &self,
        r: &RegisterRequest,
        source: IpAddr,
    ) -> Result<(), ControllerError> {
        self.check_unsigned(r)?;
        if self.config.legacy_proxy(&r.instance_name, source).is_some() {
            return Ok(());
        }
        let name = &r.instance_name;
        let source = shown_source(source);
        let is_user = self.config.instances.iter().any(|i| i.name.matches(name));
        Err(ControllerError::Forbidden(if is_user {
            format!(
                "{name} is a user of this overlay: its proxy joins with a token (`overlay token \
                 create --name {name}`) and registers signed; the original's API answers only \
                 proxies listed under `legacy_proxies` in config.yaml"
            )
        } else {
            format!(
                "the original's API answers only proxies listed under `legacy_proxies` in \
                 config.yaml: {name} from {source} is not listed (add `- {{name: {name}, \
                 address: {source}}}` there), or join with a token (`overlay token create \
                 --name {name}`)"
            )
        }))
    }

    /// A call of the original's API that speaks for proxy `proxy_id` (a heartbeat, a table
    /// fetch). Unknown proxy: 404, so a signed proxy of ours registers again, and a listed
    /// original one too; an unlisted caller learns nothing but its refusal.
    pub(super) fn check_original_call(
        &mut self,
        proxy_id: &str,
        call: Option<&SignedCall>,
        source: IpAddr,
    ) -> Result<(), ControllerError> {
        let rec = self.proxies.get(proxy_id);
        let pin = rec.and_then(|r| self.pins.get(&instance_key(&r.instance_name)));
        match (rec, pin, call) {
            (None, _, Some(_)) => return Err(Self::unknown(proxy_id)),
            (Some(rec), Some(pin), _) if pin.revoked.is_some() => {
                return Err(ControllerError::Forbidden(format!(
                    "the key of {} is revoked: calls of its proxy {proxy_id} are refused, signed \
                     or not; it joins again with a replace token (`overlay token create --name \
                     {} --replace`)",
                    rec.instance_name, rec.instance_name
                )))
            }
            // The pin wins: signed by that key, whatever the address.
            (Some(_), Some(_), _) => return self.check_call(proxy_id, call),
            _ => {}
        }
        // Unsigned, or signed for a user without a key to check it against.
        let source = shown_source(source);
        if !self.config.is_legacy_address(source) {
            return Err(ControllerError::Forbidden(format!(
                "the original's API answers unsigned calls only from addresses listed under \
                 `legacy_proxies` in config.yaml, and {source} is not one: list the proxy there \
                 (`- {{name: NAME, address: {source}}}`), or join with a token (`overlay token \
                 create --name NAME`) and sign calls, as overlay/1 proxies do{}",
                if call.is_some() {
                    " (this call is signed, but its user has no pinned key to check it with)"
                } else {
                    ""
                }
            )));
        }
        let rec = rec.ok_or_else(|| Self::unknown(proxy_id))?;
        if self
            .config
            .legacy_proxy(&rec.instance_name, source)
            .is_none()
        {
            return Err(ControllerError::Forbidden(format!(
                "proxy {proxy_id} is {}, which is not listed at {source} under `legacy_proxies`: \
                 an unsigned call speaks only for the proxy listed at the address it comes from",
                rec.instance_name
            )));
        }
        Ok(())
    }
}
