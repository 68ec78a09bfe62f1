//! AI endpoints as peers. The proxy's way to them is the [`desk::AiDesk`] actor: it keeps one
//! [`AiAdapter`] actor per AI endpoint of the table, and runs a user's turn
//! ([`conversation`]: memory, streaming chunks to the page, the reply answered to the outbox,
//! which queues it durably). [`trust`] decides which of this proxy's keys may go where.
//!
//! The adapter owns the endpoint's resolved configuration and its awc `Client` (built once,
//! rebuilt only when the connect timeout changes). [`Ask`] sends the conversation so far and
//! gets back the complete reply, while each text delta goes out on a channel as it streams;
//! [`UpdateEndpoint`] swaps the configuration when the controller's table changes. It does not
//! store anything, know about peers, or route messages.
//!
//! Layout: [`target`] (table entry → call settings, incl. the original's entries), [`history`]
//! (conversation → provider roles), [`openai`] / [`anthropic`] / [`gemini`] (wire formats,
//! pure; SSE framing is [`crate::hop::sse`]), [`reply`] (answer → reply or error), [`error`] (what
//! users see), [`keys`] (secrets), `call` (the HTTP exchange, timeouts and retries, and the one
//! place that picks a format's module). What differs per provider (URL, key header, format,
//! version, error hints) is its descriptor, `crate::config::ProviderSpec`.

use std::time::Duration;

use actix::{Actor, Context, Handler, Message, ResponseFuture};
use futures_channel::mpsc::UnboundedSender;
use futures_channel::oneshot;
use futures_util::future::{select, Either};

use crate::wire::control_plane::AiEndpoint;

pub mod anthropic;
mod call;
pub mod conversation;
pub mod desk;
pub mod error;
pub mod gemini;
pub mod history;
pub mod keys;
pub mod openai;
pub mod reply;
pub mod target;
pub mod trust;

pub use error::{AiError, TimeoutKind};
pub use reply::{AiReply, Finish, Usage};

/// One turn of the conversation, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// The user's name, or the AI endpoint's name (the adapter's own turns are its replies).
    pub speaker: String,
    pub text: String,
}

impl Turn {
    pub fn new(speaker: impl Into<String>, text: impl Into<String>) -> Turn {
        Turn {
            speaker: speaker.into(),
            text: text.into(),
        }
    }
}

/// Replace the endpoint's configuration (the table changed). Calls under way keep the old one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UpdateEndpoint {
    pub endpoint: AiEndpoint,
}

/// Produce a reply to `history`, whose last turn is the user's new message.
///
/// Each text delta is sent on `deltas` as it arrives (a non-streamed reply arrives as one
/// delta). The result is the complete reply, or an [`AiError`] whose `Display` is the message
/// the user sees in the conversation; [`AiError::partial_text`] is what had been streamed.
///
/// A message on `stop` ends the call wherever it is ([`AiError::Stopped`]): the request is
/// dropped, which closes its connection, so the provider stops writing (and billing) too. A
/// `stop` whose sender goes away without a message changes nothing.
#[derive(Message)]
#[rtype(result = "Result<AiReply, AiError>")]
pub struct Ask {
    pub history: Vec<Turn>,
    pub deltas: Option<UnboundedSender<String>>,
    pub stop: Option<oneshot::Receiver<()>>,
}

/// One AI endpoint.
pub struct AiAdapter {
    name: String,
    target: Result<target::Target, String>,
    /// Built on the first ask (a TLS client costs memory; many endpoints are never used).
    client: Option<awc::Client>,
    connect: Duration,
}

fn build_client(connect: Duration) -> awc::Client {
    awc::Client::builder()
        // The system's roots, never the overlay's CA.
        .connector(
            awc::Connector::new()
                .rustls_0_23(crate::trust::tls::system_client())
                .timeout(connect),
        )
        // Our own timeouts (first token, idle, total) apply; awc's 5 s default must not.
        .disable_timeout()
        // A redirect could carry the key to another host.
        .disable_redirects()
        .finish()
}

fn resolve(name: &str, endpoint: &AiEndpoint) -> Result<target::Target, String> {
    target::resolve(endpoint).map_err(|e| {
        let detail = match e {
            AiError::Config { detail } => detail,
            other => other.to_string(),
        };
        log::warn!("AI endpoint {name}: {detail}");
        detail
    })
}

impl AiAdapter {
    /// An adapter for the endpoint `name` of the table. A bad entry is not fatal: every
    /// [`Ask`] then answers with a configuration error naming what to fix.
    pub fn new(name: String, endpoint: AiEndpoint) -> Self {
        let target = resolve(&name, &endpoint);
        let connect = match &target {
            Ok(t) => t.timeouts.connect,
            Err(_) => endpoint.timeouts.connect(),
        };
        AiAdapter {
            name,
            target,
            client: None,
            connect,
        }
    }

    /// The endpoint's name, as its replies are labelled.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Actor for AiAdapter {
    type Context = Context<Self>;
}

impl Handler<UpdateEndpoint> for AiAdapter {
    type Result = ();

    /// Table changed: resolve the new entry; a new client only if its connect timeout moved.
    fn handle(&mut self, msg: UpdateEndpoint, _ctx: &mut Context<Self>) {
        self.target = resolve(&self.name, &msg.endpoint);
        let connect = match &self.target {
            Ok(t) => t.timeouts.connect,
            Err(_) => msg.endpoint.timeouts.connect(),
        };
        if connect != self.connect {
            self.client = None;
            self.connect = connect;
        }
    }
}

impl Handler<Ask> for AiAdapter {
    type Result = ResponseFuture<Result<AiReply, AiError>>;

    /// Asks the provider; the call runs beside the actor, which stays free for other asks.
    fn handle(&mut self, msg: Ask, _ctx: &mut Context<Self>) -> Self::Result {
        let target = match &self.target {
            Ok(t) => t.clone(),
            Err(detail) => {
                let e = AiError::Config {
                    detail: detail.clone(),
                };
                return Box::pin(async move { Err(e) });
            }
        };
        let connect = self.connect;
        let client = self.client.get_or_insert_with(|| build_client(connect));
        let call = call::ask(
            client.clone(),
            self.name.clone(),
            target,
            msg.history,
            msg.deltas,
        );
        let Some(stop) = msg.stop else {
            return Box::pin(call);
        };
        let name = self.name.clone();
        Box::pin(async move {
            let stopped = async move {
                if stop.await.is_err() {
                    // No stop will come: the call runs its course.
                    std::future::pending::<()>().await;
                }
            };
            match select(Box::pin(call), Box::pin(stopped)).await {
                Either::Left((answer, _)) => answer,
                Either::Right(((), call)) => {
                    drop(call);
                    log::info!("{name}: the reply was stopped; its call is dropped");
                    Err(AiError::Stopped)
                }
            }
        })
    }
}
