use super::*;

const NOW: u64 = 1_800_000_000_000;

fn unix(ms: u64) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_millis(ms))
}

/// A root, its CA, and the CA ready to issue.
struct Pki {
    root: Identity,
    ca: Ca,
}

fn pki(seed: u8) -> Pki {
    let root = Identity::from_seed([seed; 32]);
    let ca_key = Identity::from_seed([seed.wrapping_add(100); 32]);
    let root_der = root_cert(&root, NOW - 3_600_000).unwrap();
    let ca_der = ca_cert(&root, &ca_key.public(), NOW - 3_600_000).unwrap();
    let ca = Ca::new(&ca_key, ca_der, root_der).unwrap();
    Pki { root, ca }
}

fn trusted(root: &Fingerprint) -> Trusted<'_> {
    Trusted { root, cas: None }
}

#[test]
fn a_leaf_from_a_csr_names_only_its_user_is_no_ca_and_verifies_for_both_ends() {
    let p = pki(1);
    let bob = Identity::from_seed([7; 32]);
    // A CSR asking for more: other names, an IP, CA:true, any usage.
    let mut params = CertificateParams::new(vec![
        "bob.proxy.overlay".to_string(),
        "controller.overlay".to_string(),
        "evil.example.org".to_string(),
        "10.0.0.1".to_string(),
    ])
    .unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let greedy = params.serialize_request(&key_pair(&bob).unwrap()).unwrap();
    let chain =
        p.ca.issue_for_csr(greedy.der(), "bob", &bob.public(), NOW, DEFAULT_LEAF_MS)
            .unwrap();
    assert_eq!(chain.len(), 3);
    let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(sans, vec!["DNSName(bob.proxy.overlay)".to_string()]);
    assert!(!leaf.is_ca(), "the leaf is CA:false whatever the CSR asked");
    let (from, to) = validity_ms(&chain[0]).unwrap();
    assert_eq!(from, (NOW - BACKDATE_MS) / 1000 * 1000);
    assert_eq!(to, (NOW + DEFAULT_LEAF_MS) / 1000 * 1000);
    let root_fp = p.root.fingerprint();
    for usage in [Usage::Server, Usage::Client] {
        let key = check_chain(&chain, usage, &trusted(&root_fp), unix(NOW)).unwrap();
        assert_eq!(key, bob.public());
    }
    check_name(&chain[0], "bob.proxy.overlay").unwrap();
    for other in [
        "controller.overlay",
        "evil.example.org",
        "alice.proxy.overlay",
    ] {
        assert!(check_name(&chain[0], other).is_err(), "{other}");
    }
}

#[test]
fn a_csr_for_another_key_than_the_pinned_one_is_refused() {
    let p = pki(1);
    let bob = Identity::from_seed([7; 32]);
    let mallory = Identity::from_seed([8; 32]);
    let request = csr(&mallory, "bob").unwrap();
    let e =
        p.ca.issue_for_csr(&request, "bob", &bob.public(), NOW, DEFAULT_LEAF_MS)
            .unwrap_err();
    assert!(
        e.to_string().contains("not for the key pinned to bob"),
        "{e}"
    );
    let e =
        p.ca.issue_for_csr(
            b"\x30\x03garbage",
            "bob",
            &bob.public(),
            NOW,
            DEFAULT_LEAF_MS,
        )
        .unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
}

#[test]
fn leaves_live_at_most_72_hours() {
    let p = pki(1);
    let bob = Identity::from_seed([7; 32]);
    let chain =
        p.ca.issue(&bob.public(), "bob.proxy.overlay", NOW, 30 * 24 * 3_600_000)
            .unwrap();
    let (_, to) = validity_ms(&chain[0]).unwrap();
    assert_eq!(to, (NOW + MAX_LEAF_MS) / 1000 * 1000);
}

#[test]
fn the_right_name_from_another_root_is_refused() {
    let ours = pki(1);
    let theirs = pki(2);
    let bob = Identity::from_seed([7; 32]);
    let chain = theirs
        .ca
        .issue(&bob.public(), "bob.proxy.overlay", NOW, DEFAULT_LEAF_MS)
        .unwrap();
    let root_fp = ours.root.fingerprint();
    let e = check_chain(&chain, Usage::Server, &trusted(&root_fp), unix(NOW)).unwrap_err();
    assert!(
        e.to_string().contains("does not lead to the pinned root"),
        "{e}"
    );
    // Even with our root appended, their CA is not certified by it.
    let mut spliced = chain.clone();
    spliced.push(ours.ca.root.clone());
    let e = check_chain(&spliced, Usage::Server, &trusted(&root_fp), unix(NOW)).unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
}

#[test]
fn a_certificate_signed_by_a_leaf_is_refused() {
    let p = pki(1);
    let carol = Identity::from_seed([9; 32]);
    let bob = Identity::from_seed([7; 32]);
    let carol_chain =
        p.ca.issue(&carol.public(), "carol.proxy.overlay", NOW, DEFAULT_LEAF_MS)
            .unwrap();
    // carol's leaf (CA:false) signs a certificate naming bob.
    let issuer = Issuer::from_ca_cert_der(&carol_chain[0], key_pair(&carol).unwrap()).unwrap();
    let mut params = CertificateParams::new(vec!["bob.proxy.overlay".to_string()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = at(NOW - 60_000).unwrap();
    params.not_after = at(NOW + 3_600_000).unwrap();
    let forged = params
        .signed_by(&Ed25519Public(&bob.public()), &issuer)
        .unwrap();
    let mut chain = vec![forged.der().clone()];
    chain.extend(carol_chain);
    let root_fp = p.root.fingerprint();
    let e = check_chain(&chain, Usage::Server, &trusted(&root_fp), unix(NOW)).unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
}

#[test]
fn expired_and_not_yet_valid_leaves_are_refused() {
    let p = pki(1);
    let bob = Identity::from_seed([7; 32]);
    let chain =
        p.ca.issue(&bob.public(), "bob.proxy.overlay", NOW, 3_600_000)
            .unwrap();
    let root_fp = p.root.fingerprint();
    let t = trusted(&root_fp);
    assert!(check_chain(&chain, Usage::Client, &t, unix(NOW + 3_600_000 - 1_000)).is_ok());
    assert!(check_chain(&chain, Usage::Client, &t, unix(NOW + 3_600_000 + 1_000)).is_err());
    // Backdated five minutes, not more.
    assert!(check_chain(&chain, Usage::Client, &t, unix(NOW - 4 * 60_000)).is_ok());
    assert!(check_chain(&chain, Usage::Client, &t, unix(NOW - 6 * 60_000)).is_err());
}

#[test]
fn a_ca_the_directory_no_longer_lists_is_refused_and_both_are_trusted_during_a_rotation() {
    let p = pki(1);
    let new_ca_key = Identity::from_seed([55; 32]);
    let new_ca = Ca::new(
        &new_ca_key,
        ca_cert(&p.root, &new_ca_key.public(), NOW).unwrap(),
        p.ca.root.clone(),
    )
    .unwrap();
    let bob = Identity::from_seed([7; 32]);
    let old_leaf =
        p.ca.issue(&bob.public(), "bob.proxy.overlay", NOW, DEFAULT_LEAF_MS)
            .unwrap();
    let new_leaf = new_ca
        .issue(&bob.public(), "bob.proxy.overlay", NOW, DEFAULT_LEAF_MS)
        .unwrap();
    let root_fp = p.root.fingerprint();
    let both = [p.ca.fingerprint(), new_ca.fingerprint()];
    let only_new = [new_ca.fingerprint()];
    let t = |cas| Trusted {
        root: &root_fp,
        cas: Some(cas),
    };
    for chain in [&old_leaf, &new_leaf] {
        assert!(check_chain(chain, Usage::Server, &t(&both), unix(NOW)).is_ok());
    }
    assert!(check_chain(&new_leaf, Usage::Server, &t(&only_new), unix(NOW)).is_ok());
    let e = check_chain(&old_leaf, Usage::Server, &t(&only_new), unix(NOW)).unwrap_err();
    assert!(e.to_string().contains("no longer trusts"), "{e}");
}

#[test]
fn the_ca_cannot_name_anything_outside_the_overlay() {
    let p = pki(1);
    let bob = Identity::from_seed([7; 32]);
    let chain =
        p.ca.issue(&bob.public(), "bank.example.com", NOW, DEFAULT_LEAF_MS)
            .unwrap();
    let root_fp = p.root.fingerprint();
    let e = check_chain(&chain, Usage::Server, &trusted(&root_fp), unix(NOW)).unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
}

#[test]
fn tls_names_are_dns_names_for_every_valid_user_name() {
    assert_eq!(tls_name("Alice"), "alice.proxy.overlay");
    assert_eq!(tls_name("bob.smith"), "bob.smith.proxy.overlay");
    let odd = [
        "under_score",
        "-dash",
        "x".repeat(64).as_str(),
        "a..b",
        "u-abc",
        "trailing-",
    ]
    .map(str::to_string);
    for name in odd {
        let t = tls_name(&name);
        assert!(
            t.starts_with("u-") && t.ends_with(".proxy.overlay"),
            "{name} → {t}"
        );
        assert!(ServerName::try_from(t.as_str()).is_ok(), "{t}");
    }
    assert_ne!(tls_name("under_score"), tls_name("under-score"));
}

#[test]
fn pem_round_trips_and_a_ca_refuses_a_certificate_for_another_key() {
    let p = pki(1);
    let bob = Identity::from_seed([7; 32]);
    let chain =
        p.ca.issue(&bob.public(), "bob.proxy.overlay", NOW, DEFAULT_LEAF_MS)
            .unwrap();
    assert_eq!(from_pem(to_pem(&chain).as_bytes()).unwrap(), chain);
    assert!(from_pem(b"nothing here").is_err());
    let stranger = Identity::from_seed([3; 32]);
    assert!(Ca::new(&stranger, p.ca.cert.clone(), p.ca.root.clone()).is_err());
}
