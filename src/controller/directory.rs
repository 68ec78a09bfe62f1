//! The directory as the controller builds it, and the signed documents it hands to proxies.
//!
//! Pure: [`build`] makes the [`Directory`] from the config, the registrations and the pinned
//! keys; [`History`] keeps the last versions (directory and edits), so a proxy that reconnects
//! with `Last-Event-ID` gets a [`Delta`] from where it is instead of a whole snapshot; the
//! `snapshot` / `delta` functions make the documents, which [`Signer`] signs with the online
//! key. No I/O, no actors.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::config::Config;
use crate::trust::{Identity, KeyCert, Signed};
use crate::wire::control_plane::EndpointTable;
use crate::wire::directory::{
    table_changes, Certified, Delta, Directory, Snapshot, UserEntry, UserState, DELTA_DOMAIN,
    SNAPSHOT_DOMAIN,
};
use crate::wire::host_port::HostPort;
use crate::wire::PeerName;

use super::store::{PinRecord, ProxyRecord};
use super::tables::{self, TablePatch};

/// How long a signed document is accepted after it was issued.
pub const DOCUMENT_LIFETIME_MS: u64 = 24 * 60 * 60 * 1000;
/// Versions kept for resuming with a delta.
pub const HISTORY: usize = 128;

/// Every user: config instances, pinned keys, registrations. A proxy of `reachable: auto` is
/// reached directly when it is in `direct` (the controller's probe reached it), else through
/// its relay.
pub fn build(
    config: &Config,
    proxies: &BTreeMap<String, ProxyRecord>,
    pins: &BTreeMap<String, PinRecord>,
    direct: &std::collections::BTreeSet<String>,
) -> Directory {
    let mut users: BTreeMap<String, UserEntry> = BTreeMap::new();
    for inst in &config.instances {
        let advertised = inst.proxy.advertised();
        let port = inst.proxy.listen.port();
        let HostPort { host, port } = HostPort::parse_or(&advertised, port).unwrap_or(HostPort {
            host: advertised,
            port,
        });
        users.insert(
            PeerName::from(inst.name.as_str()).key(),
            UserEntry {
                tls: None,
                seal: None,
                role: Default::default(),
                via: None,
                name: inst.name.to_string(),
                proxy_id: None,
                key: None,
                host,
                port,
                native: true,
                state: UserState::Pending,
            },
        );
    }
    // Newest sign of life last, so it wins.
    let mut recs: Vec<&ProxyRecord> = proxies.values().collect();
    recs.sort_by_key(|r| r.last_seen_ms);
    for r in recs {
        let key = PeerName::from(r.instance_name.as_str()).key();
        let native = r.protocol.as_deref() == Some(crate::wire::control_plane::NATIVE_PROTOCOL);
        let e = users.entry(key).or_insert_with(|| UserEntry {
            tls: None,
            seal: None,
            role: r.role,
            via: None,
            name: r.instance_name.clone(),
            proxy_id: None,
            key: None,
            host: String::new(),
            port: 0,
            native,
            state: UserState::Legacy,
        });
        e.proxy_id = Some(r.proxy_id.clone());
        e.host = r.host.clone();
        e.port = r.port;
        e.tls = r.tls.clone();
        e.seal = r.seal;
        e.role = r.role;
        e.via = match r.auto && direct.contains(&r.proxy_id) {
            true => None,
            false => r.via.clone(),
        };
        e.native = native;
        if e.state == UserState::Pending {
            e.state = UserState::Legacy;
        }
    }
    for (key, pin) in pins {
        let e = users.entry(key.clone()).or_insert_with(|| UserEntry {
            tls: None,
            seal: None,
            role: Default::default(),
            via: None,
            name: pin.name.clone(),
            proxy_id: None,
            key: None,
            host: String::new(),
            port: 0,
            native: true,
            state: UserState::Active,
        });
        e.key = Some(pin.key);
        e.state = match &pin.revoked {
            Some(r) => UserState::Revoked {
                at_ms: r.at_ms,
                reason: r.reason.clone(),
            },
            None => UserState::Active,
        };
    }
    Directory {
        cas: Vec::new(),
        users,
        ai: config
            .ai_endpoints
            .iter()
            .map(|a| a.name.to_string())
            .collect(),
    }
}

/// The table of `instance` at one version: the directory's users and the AI endpoints, with
/// that instance's edits.
pub fn table_for(
    config: &Config,
    directory: &Directory,
    edits: &BTreeMap<String, TablePatch>,
    instance: &str,
) -> EndpointTable {
    let base = tables::base_table(config, directory, instance);
    match edits.get(&PeerName::from(instance).key()) {
        Some(patch) => tables::apply_lenient(&base, patch),
        None => base,
    }
}

/// One version: what its tables were made from.
#[derive(Clone)]
pub struct Version {
    pub number: u64,
    pub directory: Arc<Directory>,
    pub edits: Arc<BTreeMap<String, TablePatch>>,
}

/// The last [`HISTORY`] versions, newest last.
#[derive(Default)]
pub struct History(VecDeque<Version>);

impl History {
    pub fn push(&mut self, v: Version) {
        if self.0.len() == HISTORY {
            self.0.pop_front();
        }
        self.0.push_back(v);
    }
    pub fn current(&self) -> Option<&Version> {
        self.0.back()
    }
    pub fn get(&self, number: u64) -> Option<&Version> {
        self.0.iter().rev().find(|v| v.number == number)
    }
}

/// The whole view of `user` at `at`.
pub fn snapshot(config: &Config, at: &Version, user: &str, now_ms: u64) -> Snapshot {
    Snapshot {
        for_user: user.to_string(),
        version: at.number,
        issued_at_ms: now_ms,
        expires_at_ms: now_ms + DOCUMENT_LIFETIME_MS,
        directory: (*at.directory).clone(),
        table: table_for(config, &at.directory, &at.edits, user),
    }
}

/// The change of `user`'s view from `from` to `to`.
pub fn delta(config: &Config, from: &Version, to: &Version, user: &str, now_ms: u64) -> Delta {
    let old = table_for(config, &from.directory, &from.edits, user);
    let new = table_for(config, &to.directory, &to.edits, user);
    Delta {
        for_user: user.to_string(),
        from: from.number,
        to: to.number,
        issued_at_ms: now_ms,
        expires_at_ms: now_ms + DOCUMENT_LIFETIME_MS,
        users: from.directory.changes_to(&to.directory),
        ai: (from.directory.ai != to.directory.ai).then(|| to.directory.ai.clone()),
        cas: (from.directory.cas != to.directory.cas).then(|| to.directory.cas.clone()),
        table: table_changes(&old, &new),
    }
}

/// The online key and the root's certificate of it.
pub struct Signer {
    pub online: Identity,
    pub cert: Signed<KeyCert>,
}

impl Signer {
    pub fn snapshot(&self, s: &Snapshot) -> Certified<Snapshot> {
        Certified {
            cert: self.cert.clone(),
            doc: Signed::sign(SNAPSHOT_DOMAIN, s, &self.online),
        }
    }
    pub fn delta(&self, d: &Delta) -> Certified<Delta> {
        Certified {
            cert: self.cert.clone(),
            doc: Signed::sign(DELTA_DOMAIN, d, &self.online),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::store::Revocation;
    use crate::trust::Identity;

    fn config() -> Config {
        serde_yaml::from_str(
            "controller: {listen: '127.0.0.1:8000'}\n\
             instances:\n\
             - {name: alice, peer: {listen: '127.0.0.1:5001'}, proxy: {listen: '127.0.0.1:10001'}}\n\
             - {name: bob, peer: {listen: '127.0.0.1:5002'}, proxy: {listen: '127.0.0.1:10002'}}\n",
        )
        .unwrap()
    }

    fn pin(name: &str, revoked: bool) -> PinRecord {
        PinRecord {
            name: name.into(),
            key: Identity::generate().public(),
            pinned_at_ms: 1,
            revoked: revoked.then(|| Revocation {
                at_ms: 2,
                reason: "stolen".into(),
            }),
        }
    }

    #[test]
    fn config_users_are_pending_pinned_ones_active_and_revoked_ones_leave_the_tables() {
        let c = config();
        let mut pins = BTreeMap::new();
        pins.insert("alice".to_string(), pin("alice", false));
        let dir = build(&c, &BTreeMap::new(), &pins, &Default::default());
        assert_eq!(dir.user("ALICE").unwrap().state, UserState::Active);
        assert_eq!(dir.user("bob").unwrap().state, UserState::Pending);
        assert!(table_for(&c, &dir, &BTreeMap::new(), "alice").contains_key("bob"));
        pins.insert("bob".to_string(), pin("bob", true));
        let dir = build(&c, &BTreeMap::new(), &pins, &Default::default());
        assert!(dir.revoked("bob").is_some());
        assert!(!table_for(&c, &dir, &BTreeMap::new(), "alice").contains_key("bob"));
    }

    #[test]
    fn a_delta_between_two_versions_turns_one_view_into_the_other() {
        let c = config();
        let v1 = Version {
            number: 1,
            directory: Arc::new(build(
                &c,
                &BTreeMap::new(),
                &BTreeMap::new(),
                &Default::default(),
            )),
            edits: Arc::new(BTreeMap::new()),
        };
        let mut pins = BTreeMap::new();
        pins.insert("bob".to_string(), pin("bob", true));
        let v2 = Version {
            number: 2,
            directory: Arc::new(build(&c, &BTreeMap::new(), &pins, &Default::default())),
            edits: Arc::new(BTreeMap::new()),
        };
        let mut view = snapshot(&c, &v1, "alice", 10);
        delta(&c, &v1, &v2, "alice", 11).apply_to(&mut view);
        let fresh = snapshot(&c, &v2, "alice", 11);
        assert_eq!(view.directory, fresh.directory);
        assert_eq!(view.table, fresh.table);
        assert_eq!(view.version, 2);
    }

    #[test]
    fn history_keeps_the_last_versions_only() {
        let mut h = History::default();
        for n in 0..(HISTORY as u64 + 5) {
            h.push(Version {
                number: n,
                directory: Arc::default(),
                edits: Arc::default(),
            });
        }
        assert!(h.get(0).is_none());
        assert!(h.get(5).is_some());
        assert_eq!(h.current().unwrap().number, HISTORY as u64 + 4);
    }
}
