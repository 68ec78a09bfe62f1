//! [`PeerName`]: an instance (or AI endpoint) name as it travels and is compared.
//!
//! Names are case-insensitive everywhere in the overlay (the original lowercased them at
//! every comparison); this type folds ASCII case in `Eq`/`Hash`/`Ord` so callers stop doing it
//! by hand, while keeping the spelling it was given for display and on the wire.
//! It is deliberately not `Borrow<str>`: its hash folds case and a `str`'s does not.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use serde::{Deserialize, Serialize};

/// A peer or endpoint name: compares, hashes and orders ignoring ASCII case, and serializes
/// as the plain string it was given.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerName(String);

impl PeerName {
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }
    /// The spelling it was given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The lowercase form: what persisted keys and sorted listings use.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
    /// The spelling it was given, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

fn fold(s: &str) -> impl Iterator<Item = u8> + '_ {
    s.bytes().map(|b| b.to_ascii_lowercase())
}

impl PartialEq for PeerName {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}
impl Eq for PeerName {}

impl PartialEq<str> for PeerName {
    fn eq(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}
impl PartialEq<&str> for PeerName {
    fn eq(&self, other: &&str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}
impl PartialEq<String> for PeerName {
    fn eq(&self, other: &String) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

impl Hash for PeerName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for b in fold(&self.0) {
            state.write_u8(b);
        }
        state.write_u8(0xff);
    }
}

impl Ord for PeerName {
    fn cmp(&self, other: &Self) -> Ordering {
        fold(&self.0).cmp(fold(&other.0))
    }
}
impl PartialOrd for PeerName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Deref for PeerName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}
impl AsRef<str> for PeerName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for PeerName {
    fn from(s: String) -> Self {
        Self(s)
    }
}
impl From<&str> for PeerName {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}
impl From<&String> for PeerName {
    fn from(s: &String) -> Self {
        Self(s.clone())
    }
}
impl From<PeerName> for String {
    fn from(n: PeerName) -> Self {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;

    fn hash_of(n: &PeerName) -> u64 {
        let mut h = DefaultHasher::new();
        n.hash(&mut h);
        h.finish()
    }

    #[test]
    fn names_are_equal_ignoring_case() {
        assert_eq!(PeerName::from("Alice"), PeerName::from("aLICE"));
        assert_ne!(PeerName::from("alice"), PeerName::from("alicia"));
        assert_eq!(PeerName::from("Bob"), "bob");
        let bob = PeerName::from("Bob");
        assert!(bob == *"BOB");
    }

    #[test]
    fn names_equal_ignoring_case_hash_alike() {
        assert_eq!(
            hash_of(&PeerName::from("Alice")),
            hash_of(&PeerName::from("ALICE"))
        );
        let set: std::collections::HashSet<PeerName> = ["Alice", "alice", "Bob"]
            .into_iter()
            .map(PeerName::from)
            .collect();
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn names_order_ignoring_case() {
        let mut names: Vec<PeerName> = ["bob", "Alice", "carol", "Bea"]
            .into_iter()
            .map(PeerName::from)
            .collect();
        names.sort();
        let spelled: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        assert_eq!(spelled, ["Alice", "Bea", "bob", "carol"]);
    }

    #[test]
    fn a_name_keeps_its_spelling_and_its_key_is_lowercase() {
        let n = PeerName::from("AliCe");
        assert_eq!(n.as_str(), "AliCe");
        assert_eq!(n.to_string(), "AliCe");
        assert_eq!(n.key(), "alice");
        assert!(n.starts_with("Ali"));
    }

    #[test]
    fn json_is_the_plain_string() {
        let n = PeerName::from("AliCe");
        assert_eq!(serde_json::to_string(&n).unwrap(), r#""AliCe""#);
        let back: PeerName = serde_json::from_str(r#""alice""#).unwrap();
        assert_eq!(back.as_str(), "alice");
        assert_eq!(back, n);
    }
}
