//! One integration-test binary: every test starts real servers in-process on port 0
//! (or runs the real `overlay` binary where the CLI is the subject).

mod helpers;
mod link;

mod ai;
mod ai_e2e;
mod api_reference;
mod browser;
mod chaos;
mod cli;
mod controller;
mod e2e;
mod host;
mod login;
mod metrics;
mod peer;
mod proxy;
mod relay;
mod sealed;
mod tls;
mod trust;
mod upgrade;
