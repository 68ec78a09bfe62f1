use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;
use crate::trust::x509::{ca_cert, root_cert, tls_name, Ca, DEFAULT_LEAF_MS};

const NOW: u64 = 1_800_000_000_000;

fn unix(ms: u64) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_millis(ms))
}

/// Active users by name → key, as a directory would pin them (changed by the tests).
#[derive(Debug, Default)]
struct Static(Mutex<BTreeMap<String, PublicKey>>);

impl Pins for Static {
    fn key_of(&self, name: &str) -> Option<PublicKey> {
        let users = self.0.lock().unwrap();
        users
            .iter()
            .find(|(user, _)| tls_name(user) == name)
            .map(|(_, k)| *k)
    }
    fn user_of(&self, key: &PublicKey) -> Option<String> {
        let users = self.0.lock().unwrap();
        users
            .iter()
            .find(|(_, k)| *k == key)
            .map(|(u, _)| u.clone())
    }
    fn cas(&self) -> Option<Vec<Fingerprint>> {
        None
    }
}

struct World {
    root: Identity,
    ca: Ca,
    pins: Arc<Static>,
    bob: Identity,
    carol: Identity,
}

fn world() -> World {
    let root = Identity::from_seed([1; 32]);
    let ca_key = Identity::from_seed([2; 32]);
    let ca = Ca::new(
        &ca_key,
        ca_cert(&root, &ca_key.public(), NOW).unwrap(),
        root_cert(&root, NOW).unwrap(),
    )
    .unwrap();
    let bob = Identity::from_seed([3; 32]);
    let carol = Identity::from_seed([4; 32]);
    let pins = Arc::new(Static::default());
    pins.0.lock().unwrap().insert("bob".into(), bob.public());
    pins.0
        .lock()
        .unwrap()
        .insert("carol".into(), carol.public());
    World {
        root,
        ca,
        pins,
        bob,
        carol,
    }
}

impl World {
    fn verifier(&self) -> Arc<OverlayVerifier> {
        OverlayVerifier::new(self.root.fingerprint(), self.pins.clone(), true)
    }
    fn leaf(&self, who: &Identity, user: &str) -> Vec<CertificateDer<'static>> {
        self.ca
            .issue(&who.public(), &tls_name(user), NOW, DEFAULT_LEAF_MS)
            .unwrap()
    }
}

#[test]
fn the_server_must_be_the_member_this_request_is_for_with_its_pinned_key() {
    let w = world();
    let v = w.verifier();
    let bob = w.leaf(&w.bob, "bob");
    assert_eq!(
        v.check_server(&bob, "bob.proxy.overlay", unix(NOW))
            .unwrap(),
        w.bob.public()
    );
    // carol's valid certificate, served where bob is expected.
    let carol = w.leaf(&w.carol, "carol");
    let e = v
        .check_server(&carol, "bob.proxy.overlay", unix(NOW))
        .unwrap_err();
    assert!(
        e.to_string().contains("does not name bob.proxy.overlay"),
        "{e}"
    );
    // A certificate naming bob for carol's key (a CA mistake) still fails the pin.
    let misissued = w.leaf(&w.carol, "bob");
    let e = v
        .check_server(&misissued, "bob.proxy.overlay", unix(NOW))
        .unwrap_err();
    assert!(e.to_string().contains("not its pinned key"), "{e}");
}

#[test]
fn a_revoked_member_with_an_unexpired_certificate_is_refused_both_ways_once_the_pins_say_so() {
    let w = world();
    let v = w.verifier();
    let carol = w.leaf(&w.carol, "carol");
    assert_eq!(v.check_client(&carol, unix(NOW)).unwrap(), "carol");
    assert!(v
        .check_server(&carol, "carol.proxy.overlay", unix(NOW))
        .is_ok());
    // The directory push that revokes carol.
    w.pins.0.lock().unwrap().remove("carol");
    let e = v.check_client(&carol, unix(NOW)).unwrap_err();
    assert!(
        e.to_string()
            .contains("not the pinned key of any active user"),
        "{e}"
    );
    let e = v
        .check_server(&carol, "carol.proxy.overlay", unix(NOW))
        .unwrap_err();
    assert!(e.to_string().contains("no pinned, unrevoked key"), "{e}");
}

#[test]
fn the_controller_name_is_checked_by_chain_and_name_only() {
    let w = world();
    let v = w.verifier();
    let online = Identity::from_seed([9; 32]);
    let chain =
        w.ca.issue(&online.public(), CONTROLLER_TLS_NAME, NOW, DEFAULT_LEAF_MS)
            .unwrap();
    assert!(v
        .check_server(&chain, CONTROLLER_TLS_NAME, unix(NOW))
        .is_ok());
    // A proxy's certificate cannot pass for the controller.
    let bob = w.leaf(&w.bob, "bob");
    assert!(v
        .check_server(&bob, CONTROLLER_TLS_NAME, unix(NOW))
        .is_err());
}

#[test]
fn a_leaf_serves_only_its_own_key() {
    let w = world();
    let leaf = Leaf::new();
    assert!(!ResolvesClientCert::has_certs(&*leaf));
    assert!(leaf.set(&w.bob, w.leaf(&w.carol, "carol")).is_err());
    leaf.set(&w.bob, w.leaf(&w.bob, "bob")).unwrap();
    assert!(ResolvesClientCert::has_certs(&*leaf));
    let (from, to) = leaf.validity().unwrap();
    assert!(from < NOW && to > NOW);
}
