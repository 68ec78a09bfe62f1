//! One toolkit for the HTTP hops between processes (peer → proxy → proxy → peer, proxy →
//! controller, proxy → AI API): every hop posts, reads, times and retries the same way.
//!
//! - [`post`]: one request with a bounded answer read within a deadline, and one rule for what
//!   the answer means ([`post::Answer`]: ok, transient, refused, or a route the receiver lacks).
//! - [`backoff`]: when to retry (exponential, full jitter), and the one way a wait is written.
//! - [`link`]: who may call the peer ↔ proxy hop (loopback, or the shared link token).
//! - [`sse`]: the one Server-Sent-Events client parser (bytes in, events out; bounded lines).
//! - [`overlay`]: the client of hops between overlay members: TLS with the overlay's verifier,
//!   members named by their certificate names and found through the signed directory.
//!
//! It knows no role and no actor; addresses are [`crate::wire::host_port::HostPort`] (they cross
//! the wire, so the type lives there), error bodies are read by [`crate::wire::legacy`].

pub mod backoff;
pub mod link;
pub mod overlay;
pub mod post;
pub mod sse;
