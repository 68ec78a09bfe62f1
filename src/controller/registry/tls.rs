//! The overlay CA's desk in the registry: which CAs the directory says are trusted, the
//! certificates it issues to joined proxies (`POST /api/v1/certificate`), and what TLS asks of
//! every signed call (it came over TLS, with the caller's own certificate).
//!
//! A certificate is issued for the key pinned to the name, to whoever proves that key with a
//! signed request (as a heartbeat is signed): no certificate is needed to get one, so a proxy
//! whose certificate expired while it was off renews with its key alone. The CA takes only the
//! public key from the CSR ([`crate::trust::x509::Ca::issue_for_csr`]).

use std::net::IpAddr;
use std::sync::Arc;

use actix::prelude::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::trust::x509::{self, Ca};
use crate::trust::{Fingerprint, PublicKey};
use crate::wire::directory::{CertificateAnswer, CertificateRequest, Directory};
use crate::wire::now_ms;

use super::super::error::ControllerError;
use super::{instance_key, Registry, SignedCall};

/// The CA, the previous one during a rotation, and whether signed calls must come over TLS.
#[derive(Default)]
pub struct CaDesk {
    ca: Option<Arc<Ca>>,
    previous: Option<Fingerprint>,
    required: bool,
    leaf_ms: u64,
    /// The directory as published, for the TLS listener's verifier.
    pins: Option<tokio::sync::watch::Sender<Arc<Directory>>>,
}

impl CaDesk {
    /// `required`: the controller has a TLS listener; signed calls on its plain one are refused.
    pub fn new(
        ca: Option<Arc<Ca>>,
        previous: Option<Fingerprint>,
        required: bool,
        leaf_ms: u64,
        pins: tokio::sync::watch::Sender<Arc<Directory>>,
    ) -> CaDesk {
        CaDesk {
            ca,
            previous,
            required,
            leaf_ms,
            pins: Some(pins),
        }
    }

    /// The CAs the directory lists as trusted: the CA, and the previous one while its leaves
    /// may still be valid.
    pub fn trusted(&self) -> Vec<Fingerprint> {
        let mut out: Vec<Fingerprint> = self.ca.iter().map(|c| c.fingerprint()).collect();
        out.extend(self.previous.clone());
        out
    }

    /// A verifier of members' certificates against the directory as published (none without
    /// TLS): what the reachability probe checks a proxy's answer with.
    pub fn verifier(&self, root: &Fingerprint) -> Option<Arc<crate::trust::tls::OverlayVerifier>> {
        let pins = self.pins.as_ref()?.subscribe();
        Some(crate::trust::tls::OverlayVerifier::new(
            root.clone(),
            Arc::new(crate::controller::tls::PublishedPins(pins)),
            false,
        ))
    }

    /// A new directory version: the TLS listener's verifier reads it from now on.
    pub fn publish(&self, directory: Arc<Directory>) {
        if let Some(tx) = &self.pins {
            tx.send_replace(directory);
        }
    }

    /// With TLS on, a signed call of `name` must come with a client certificate for its
    /// pinned key (the verifier checked the chain; here: that it is this caller's).
    pub fn check_caller(
        &self,
        name: &str,
        pinned: &PublicKey,
        tls_key: Option<&PublicKey>,
    ) -> Result<(), ControllerError> {
        if !self.required {
            return Ok(());
        }
        match tls_key {
            None => Err(ControllerError::Forbidden(format!(
                "{name}: a proxy's signed calls come over TLS with its certificate (the \
                 controller's https:// URL, controller.tls_listen), not in plain HTTP"
            ))),
            Some(k) if k != pinned => Err(ControllerError::Forbidden(format!(
                "{name}: the TLS client certificate is for key {}, not {name}'s pinned key {}",
                k.fingerprint(),
                pinned.fingerprint()
            ))),
            Some(_) => Ok(()),
        }
    }
}

/// `POST /api/v1/certificate`: a certificate for a joined proxy's pinned key.
#[derive(Message)]
#[rtype(result = "Result<CertificateAnswer, ControllerError>")]
pub struct IssueCertificate {
    pub request: CertificateRequest,
    pub call: SignedCall,
    pub source: IpAddr,
}

impl Registry {
    fn issue_certificate(
        &mut self,
        msg: &IssueCertificate,
    ) -> Result<CertificateAnswer, ControllerError> {
        use crate::trust::request::{self, RequestLine};
        self.limit(msg.source)?;
        let name = &msg.request.instance_name;
        let pin = match self.pins.get(&instance_key(name)) {
            Some(p) if p.revoked.is_none() => p.clone(),
            Some(p) => {
                return Err(ControllerError::Forbidden(format!(
                    "the key of {} was revoked: no certificate is issued for it",
                    p.name
                )))
            }
            None => {
                return Err(ControllerError::Forbidden(format!(
                    "{name} has not joined: no key is pinned to it, so no certificate is issued"
                )))
            }
        };
        let refuse = |e: request::RequestError| {
            ControllerError::Forbidden(format!("certificate for {name}: {e}"))
        };
        let h = request::parse(&msg.call.header).map_err(refuse)?;
        let line = RequestLine {
            method: &msg.call.method,
            target: &msg.call.target,
            body: &msg.call.body,
        };
        let now = now_ms();
        request::verify(
            &h,
            &line,
            self.root.as_str(),
            &pin.name,
            &pin.key,
            now,
            self.started_ms,
        )
        .map_err(refuse)?;
        self.nonces.check(&h, now).map_err(refuse)?;
        let ca = self.tls.ca.clone().ok_or_else(|| {
            ControllerError::Unavailable(
                "this controller has no overlay CA yet: on its machine, run `overlay controller \
                 init --root-key PATH` with the root key"
                    .into(),
            )
        })?;
        let csr = STANDARD
            .decode(msg.request.csr.trim())
            .map_err(|e| ControllerError::BadRequest(format!("csr: not base64: {e}")))?;
        let chain = ca
            .issue_for_csr(&csr, &pin.name, &pin.key, now, self.tls.leaf_ms)
            .map_err(|e| ControllerError::BadRequest(format!("csr: {e}")))?;
        let until = x509::validity_ms(&chain[0])
            .map(|(_, to)| to)
            .unwrap_or_default();
        log::info!(
            "issued {} a TLS certificate for key {}, valid until {}",
            pin.name,
            pin.key.fingerprint(),
            crate::wire::rfc3339_ms(until)
        );
        Ok(CertificateAnswer {
            chain_pem: x509::to_pem(&chain),
        })
    }
}

impl Handler<IssueCertificate> for Registry {
    type Result = Result<CertificateAnswer, ControllerError>;

    fn handle(&mut self, msg: IssueCertificate, ctx: &mut Context<Self>) -> Self::Result {
        let answer = self.issue_certificate(&msg);
        if let Err(e) = &answer {
            self.refused(
                msg.source,
                &msg.request.instance_name,
                "certificate",
                e,
                ctx,
            );
        }
        answer
    }
}
