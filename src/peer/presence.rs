//! Presence pushed to the open pages: who is online, as the proxy's directory says, sent over
//! the page feed when it changes (`presence` events), instead of each page asking every 30 s.
//!
//! Owns: the directory as last sent. While at least one page listens it reads its proxy's
//! directory every [`EVERY`] (a loopback call, or the link's) and publishes it when it
//! differs; with no page listening it reads nothing.

use std::time::Duration;

use actix::prelude::*;

use super::contacts::AiNames;
use super::proxy_client::ProxyApi;
use super::updates::{CountClients, PageEvent, Publish, Updates};
use crate::wire::data_plane::DirectoryEntry;

/// How often the directory is read while pages listen.
pub const EVERY: Duration = Duration::from_secs(2);

pub struct Presence {
    me: String,
    proxy: ProxyApi,
    updates: Addr<Updates>,
    ai: AiNames,
    /// What the pages were last told; None when no page listened since.
    last: Option<Vec<DirectoryEntry>>,
    /// How many pages listened then: a page more is told where things stand, changed or not
    /// (what it rendered may be older than its connection).
    pages: usize,
}

impl Presence {
    pub fn new(me: &str, proxy: ProxyApi, updates: Addr<Updates>, ai: AiNames) -> Presence {
        Presence {
            me: me.to_string(),
            proxy,
            updates,
            ai,
            last: None,
            pages: 0,
        }
    }
}

impl Actor for Presence {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(EVERY, |act, ctx| {
            let (proxy, updates) = (act.proxy.clone(), act.updates.clone());
            async move {
                let (pages, _) = updates.send(CountClients).await.ok()?;
                if pages == 0 {
                    return Some((0, None));
                }
                // Unreadable now (the proxy restarting): nothing to say until it answers.
                proxy.directory().await.ok().map(|d| (pages, Some(d)))
            }
            .into_actor(act)
            .map(|read, act, _| match read {
                None => {}
                Some((_, None)) => {
                    act.last = None;
                    act.pages = 0;
                }
                Some((pages, Some(mut directory))) => {
                    directory.retain(|e| !e.name.eq_ignore_ascii_case(&act.me));
                    directory.sort_by(|a, b| a.name.cmp(&b.name));
                    act.ai.learn(&directory);
                    let more_pages = pages > act.pages;
                    act.pages = pages;
                    if more_pages || act.last.as_ref() != Some(&directory) {
                        act.updates.do_send(Publish {
                            event: PageEvent::Presence {
                                directory: directory.clone(),
                            },
                        });
                        act.last = Some(directory);
                    }
                }
            })
            // One read at a time: the next tick waits for this one.
            .wait(ctx);
        });
    }
}
