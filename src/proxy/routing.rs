//! Routing, as pure functions of a table: where a message for a name goes ([`choose_route`]:
//! this proxy's own peer, another user's proxy, or an AI endpoint; names compared ignoring
//! case), the table a proxy starts from when it has none ([`default_table`]), and the
//! directory its peer shows ([`directory`]), and which addresses a person's entry may never
//! name ([`peer_refusal`]: this proxy's own, its peer's, the controller's).
//!
//! The table itself has one owner, the [`super::router::Router`]; the actors that route hold the
//! snapshot it published (the same one, shared, never a copy of their own).

use crate::config::Config;
use crate::wire::control_plane::{split_url, AiEndpoint, Endpoint, EndpointTable, PeerEndpoint};
use crate::wire::data_plane::{DirectoryEntry, PeerKind};
use crate::wire::host_port::HostPort;
use crate::wire::PeerName;

/// Where a message for one name goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// This proxy's own peer.
    OwnPeer,
    /// Another user's proxy; `name` as the table spells it.
    Proxy {
        name: String,
        endpoint: PeerEndpoint,
    },
    /// An AI endpoint, handed to the AI adapter.
    Ai {
        name: String,
        endpoint: Box<AiEndpoint>,
    },
    Unknown,
}

/// The route for `to`, as the proxy of `me` with `table` sees it (names compared ignoring case).
pub fn choose_route(table: &EndpointTable, me: &str, to: &str) -> Route {
    let to = PeerName::from(to);
    if to == me {
        return Route::OwnPeer;
    }
    match table.iter().find(|(name, _)| to == **name) {
        Some((name, Endpoint::Peer(p))) => Route::Proxy {
            name: name.clone(),
            endpoint: p.clone(),
        },
        Some((name, Endpoint::Ai(a))) => Route::Ai {
            name: name.clone(),
            endpoint: a.clone(),
        },
        None => Route::Unknown,
    }
}

/// An address a person's table entry may not name, and whose it is (for the error).
#[derive(Debug, Clone, PartialEq)]
pub struct NotAPeer {
    pub addr: HostPort,
    pub whose: &'static str,
}

/// The addresses of this proxy's neighbours that are not another user's proxy: its own
/// listener and advertised address (its admin and relay routes), its own peer's and the
/// controller's (URLs as the settings give them).
pub fn not_peers(own: &[HostPort], peer_url: &str, controller_url: &str) -> Vec<NotAPeer> {
    let of_url = |url: &str, whose| {
        let (host, port, _) = split_url(url);
        NotAPeer {
            addr: HostPort { host, port },
            whose,
        }
    };
    own.iter()
        .map(|addr| NotAPeer {
            addr: addr.clone(),
            whose: "this proxy's own",
        })
        .chain([
            of_url(peer_url, "your chat app's"),
            of_url(controller_url, "the controller's"),
        ])
        .collect()
}

/// Why this proxy will not send a message for `name` to `endpoint`, if it will not: the table
/// comes from the controller, which anyone who reaches it may edit, and an entry naming this
/// proxy's own routes or the controller's would make it post there (issue 13, defect 5).
///
/// Addresses are compared by port and host, a loopback or unspecified host standing for any
/// other (this proxy cannot know every name of its machine: a LAN address of its own host
/// with its own port is not recognised).
pub fn peer_refusal(name: &str, endpoint: &PeerEndpoint, not_peers: &[NotAPeer]) -> Option<String> {
    let hit = not_peers
        .iter()
        .find(|n| n.addr.port == endpoint.port && same_host(&n.addr.host, &endpoint.host))?;
    Some(format!(
        "{name}'s address in the controller's table ({}:{}) is {} address, not another \
         user's proxy; this proxy does not send there",
        endpoint.host, endpoint.port, hit.whose
    ))
}

fn same_host(a: &str, b: &str) -> bool {
    let bare = |h: &str| {
        h.trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase()
    };
    let (a, b) = (bare(a), bare(b));
    a == b || (is_local(&a) && is_local(&b))
}

/// Loopback or unspecified: this machine, whatever the name.
fn is_local(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

/// The table of `me` built from the config alone (no controller, no cache): every other
/// instance's proxy (ours, so native), then every AI endpoint; an AI endpoint named like an
/// instance takes that name.
pub fn default_table(config: &Config, me: &str) -> EndpointTable {
    let mut table = EndpointTable::new();
    for inst in config.instances.iter().filter(|i| !i.name.matches(me)) {
        let Ok(addr) = HostPort::parse(&inst.proxy.advertised()) else {
            continue;
        };
        table.insert(
            inst.name.to_string(),
            Endpoint::Peer(PeerEndpoint {
                host: addr.bare_host().to_string(),
                port: addr.port,
                native: true,
            }),
        );
    }
    for ai in &config.ai_endpoints {
        table.retain(|name, _| !ai.name.matches(name));
        table.insert(
            ai.name.to_string(),
            Endpoint::Ai(Box::new(AiEndpoint::from_config(ai))),
        );
    }
    table
}

/// The directory a peer shows: every name of the table, persons with their liveness when known.
pub fn directory(table: &EndpointTable, online: Option<&[String]>) -> Vec<DirectoryEntry> {
    table
        .iter()
        .map(|(name, e)| match e {
            Endpoint::Ai(_) => DirectoryEntry {
                name: name.clone(),
                kind: PeerKind::Ai,
                online: None,
            },
            Endpoint::Peer(_) => {
                let this = PeerName::from(name.as_str());
                DirectoryEntry {
                    name: name.clone(),
                    kind: PeerKind::Person,
                    online: online.map(|o| o.iter().any(|n| this == *n)),
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> EndpointTable {
        serde_json::from_str(
            r#"{"Bob":{"host":"127.0.0.1","port":10002,"native":true},
                "carol":{"host":"10.0.0.3","port":10003},
                "BOT":{"host":"api.openai.com","port":443,"is_api":true}}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_own_name_routes_to_the_own_peer_in_any_case() {
        assert_eq!(choose_route(&table(), "alice", "ALICE"), Route::OwnPeer);
    }

    #[test]
    fn another_user_routes_to_its_proxy_ignoring_case() {
        match choose_route(&table(), "alice", "bob") {
            Route::Proxy { name, endpoint } => {
                assert_eq!(name, "Bob");
                assert!(endpoint.native);
                assert_eq!(endpoint.port, 10002);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            choose_route(&table(), "alice", "CAROL"),
            Route::Proxy {
                endpoint: PeerEndpoint { native: false, .. },
                ..
            }
        ));
    }

    #[test]
    fn an_ai_entry_routes_to_the_ai_adapter() {
        assert!(
            matches!(choose_route(&table(), "alice", "bot"), Route::Ai { name, .. } if name == "BOT")
        );
    }

    #[test]
    fn a_name_not_in_the_table_is_unknown() {
        assert_eq!(choose_route(&table(), "alice", "zed"), Route::Unknown);
    }

    #[test]
    fn the_config_table_lists_other_users_and_lets_an_ai_endpoint_win_its_name() {
        let config = Config::parse(include_str!("../../config.yaml"), "config.yaml").unwrap();
        let t = default_table(&config, "alice");
        let names: Vec<&str> = t.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["ANTHROPIC", "BOT", "GEMINI", "MISTRAL", "behrooz", "bob"]
        );
        assert!(matches!(&t["bob"], Endpoint::Peer(p) if p.port == 10002 && p.native));
        assert!(matches!(&t["BOT"], Endpoint::Ai(_)));
    }

    fn neighbours() -> Vec<NotAPeer> {
        not_peers(
            &[HostPort::parse("0.0.0.0:10001").unwrap()],
            "http://127.0.0.1:11001/",
            "http://localhost:9000",
        )
    }

    fn peer(host: &str, port: u16) -> PeerEndpoint {
        PeerEndpoint {
            host: host.into(),
            port,
            native: true,
        }
    }

    #[test]
    fn a_person_entry_at_this_proxy_its_peer_or_the_controller_is_refused_naming_whose() {
        for (host, port, whose) in [
            ("127.0.0.1", 10001, "this proxy's own"),
            ("LOCALHOST", 11001, "your chat app's"),
            ("[::1]", 9000, "the controller's"),
            ("127.0.0.2", 9000, "the controller's"),
        ] {
            let why = peer_refusal("bob", &peer(host, port), &neighbours())
                .unwrap_or_else(|| panic!("{host}:{port} was allowed"));
            assert!(
                why.starts_with("bob's address in the controller's table"),
                "{why}"
            );
            assert!(why.contains(whose), "{why}");
        }
    }

    #[test]
    fn another_users_proxy_is_not_refused() {
        for (host, port) in [
            ("127.0.0.1", 10002),
            ("10.0.0.3", 9000),
            ("bob.example", 10001),
        ] {
            assert_eq!(peer_refusal("bob", &peer(host, port), &neighbours()), None);
        }
    }

    #[test]
    fn the_directory_shows_liveness_of_persons_only_when_known() {
        let online = vec!["bob".to_string()];
        let d = directory(&table(), Some(&online));
        let bob = d.iter().find(|e| e.name == "Bob").unwrap();
        assert_eq!((bob.kind, bob.online), (PeerKind::Person, Some(true)));
        let carol = d.iter().find(|e| e.name == "carol").unwrap();
        assert_eq!(carol.online, Some(false));
        let bot = d.iter().find(|e| e.name == "BOT").unwrap();
        assert_eq!((bot.kind, bot.online), (PeerKind::Ai, None));
        assert!(directory(&table(), None).iter().all(|e| e.online.is_none()));
    }
}
