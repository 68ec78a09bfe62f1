//! overlay: a self-hosted chat overlay where people and AI models talk as peers.
//!
//! # Layout
//! Two planes, three roles, one binary.
//!
//! - **control plane**: the [`controller`] keeps the registry of proxies, hands each proxy its
//!   endpoint (routing) table, pushes changes at once and renders the live dashboard.
//! - **data plane**: each user's [`peer`] (chat page + local store) talks only to its own
//!   [`proxy`], which routes messages to other users' proxies and to AI APIs.
//!
//! Modules:
//! - [`cli`]: the command line (`controller | proxy | peer | up`), turned into checked settings.
//! - [`admin_client`]: the admin commands (`id`, `controller init`, `token create`, `revoke`,
//!   `rotate-key`).
//! - [`config`]: `config.yaml` parsed, validated and split into per-role settings.
//! - [`wire`]: the serde types that cross process boundaries, and nothing else.
//! - [`controller`], [`proxy`], [`peer`], [`relay`]: one folder per role, each with `start()`
//!   as its door.
//! - [`up`]: every role of `config.yaml` in one process.
//! - [`hop`]: one toolkit for HTTP hops: post and classify, backoff, `host:port`, SSE parsing.
//! - [`layout`]: the page layout both roles' pages share (a pure maud function).
//! - [`web`]: small pieces every role's HTTP server shares (assets, JSON limits, server handles,
//!   `/healthz`, and `/metrics` with each role's own registry).
//! - [`storage`]: the durable-store kit both stores are built from: write-ahead log, group
//!   commit, open-and-replay, and the one writer of each store.
//! - [`trust`]: the root of trust: keys, signatures, root certificates, join tokens, rate limits,
//!   X.509 and TLS, sealing keys and HPKE sealing.
//! - [`logging`]: env_logger set up so every line names its role and instance.
//!
//! Roles depend on `wire`, `config`, `trust`, `hop`, `storage`, `layout` and `web`, never on
//! each other, with one exception: a [`relay`] is a member like a proxy, and follows the
//! controller with the proxy's own pieces (its `ControllerLink`, `Router`, store and TLS),
//! rather than a copy of them. Only `up`, `admin_client` and the CLI entry point know all
//! roles.
//!
//! # Actors and who sends what to whom
//! Each role's actors run on its HTTP worker thread (the readers of the chat store on their
//! own threads); calls go one way, routes → actors → (redb | awc), and an actor that needs to
//! hear from another subscribes with a `Recipient` instead of knowing its type.
//!
//! | role | actor (file) | takes | sends to |
//! |---|---|---|---|
//! | controller | `Registry` (controller/registry/) | RegisterProxy, Heartbeat, GetEndpoints, UpdateEndpoints, RemoveProxy, SubscribeTable, SubscribeDashboard, ListProxies; Join, RegisterSigned, Rotate, IssueToken, Revoke, Pinned, TrustOverview; SubscribeDirectory, AckDirectory | its redb store; SSE subscribers (directory, legacy tables, dashboard) |
//! | proxy | `ControllerLink` (proxy/controller_link.rs) | its timers; RotateSeal | the controller over HTTP; Router `ApplyView`, `SetOnline`, `Settled` |
//! | proxy | `Router` (proxy/router.rs): the one owner of the table and the signed view | ApplyView, SetOnline, Settled, SubscribeTable, ResolveRoute, ListDirectory, GetTable, AppliedVersion | subscribers `TableChanged` (Outbox, AiDesk); Store `SaveView`; the routes' watch of the directory |
//! | proxy | `Outbox` (proxy/outbox/) | Enqueue, EnqueueMany, GetStatus, TableChanged, `Applied` (from the Store) | Store `Write`; next hops over HTTP; AiDesk `Converse` (the reply is the answer) |
//! | proxy | `AiDesk` (proxy/ai/desk.rs) | Converse, ForgetConversation, StopReply, Regenerate, TableChanged | AiAdapter `Ask`; Store `Remember` / `ForgetMemory` / `Recall`, and `Write` (a regenerated answer with its reply, one commit); own peer's stream route |
//! | proxy | `AiAdapter` ×N (proxy/ai/mod.rs) | Ask, UpdateEndpoint | the provider over HTTP |
//! | proxy | `Store` = `storage::Writer<ProxySchema>` (proxy/store.rs): the one writer of `proxy-NAME.redb` | Write, SaveView, PruneSeen, Remember, ForgetMemory, Recall | its observer (Outbox) `Applied` |
//! | proxy | `RelayLink` (proxy/relay_link.rs), behind NAT only | its stream's events | the relay over HTTP (attach, answers); the relay routes' checks, as if posted |
//! | relay | `Hub` (relay/hub.rs): attachments, carried requests, queues | IssueChallenge, TakeNonce, Attach, Send, Answer, Abandon, Status, Refused | attached streams (bounded: full drops) |
//! | relay | `ControllerLink`, `Router`, `Store` of the proxy's kind | as a proxy's | as a proxy's (the relay's report rides on heartbeats) |
//! | peer | `Outgoing` (peer/outgoing.rs): the one owner of sending | SendMessage | WriteQueue; ChatStore `ListUnsent`; the proxy over HTTP |
//! | peer | `AutoReply` (peer/auto_reply.rs) | MessageReceived, GetAutoReplyStats | Outgoing `SendMessage` |
//! | peer | `WriteQueue` = `storage::Writer<ChatSchema>` (peer/store/writes.rs) | AppendMessage, AppendOutgoing, AppendMany, SetDeliveryState, ApplyReceipts, SetHandOver, ClearConversations | its observer (Updates) `Applied` |
//! | peer | `ChatStore` (peer/store/reads.rs), a SyncArbiter | GetPage, GetHistory, ListConversations, ListUnsent | — |
//! | peer | `Updates` (peer/updates.rs) | Subscribe, Publish, CountClients, `Applied` (from the WriteQueue) | open pages over SSE |

pub mod admin_client;
pub mod cli;
pub mod config;
pub mod controller;
pub mod hop;
pub mod layout;
pub mod logging;
pub mod peer;
pub mod proxy;
pub mod relay;
pub mod storage;
pub mod trust;
pub mod up;
pub mod web;
pub mod wire;
