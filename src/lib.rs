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
//! - [`config`]: `config.yaml` parsed, validated and split into per-role settings.
//! - [`wire`]: the serde types that cross process boundaries, and nothing else.
//! - [`controller`], [`proxy`], [`peer`]: one folder per role, each with `run()` as its door.
//! - [`up`]: every role of `config.yaml` in one process.
//! - [`hop`]: one toolkit for HTTP hops: post and classify, backoff, `host:port`, SSE parsing.
//! - [`layout`]: the page layout both roles' pages share (a pure maud function).
//! - [`web`]: small pieces every role's HTTP server shares (assets, JSON limits, server handles).
//! - [`storage`]: the durable-store kit both stores are built from: write-ahead log, group
//!   commit, open-and-replay, and the one writer of each store.
//! - [`logging`]: env_logger set up so every line names its role and instance.
//!
//! Roles depend on `wire`, `config` and `web`, never on each other; only `up` and the CLI
//! entry point know all three.

pub mod cli;
pub mod config;
pub mod controller;
pub mod hop;
pub mod layout;
pub mod logging;
pub mod peer;
pub mod proxy;
pub mod storage;
pub mod up;
pub mod web;
pub mod wire;
