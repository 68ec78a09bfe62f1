//! The controller's keys on disk: the root key (the overlay's root of trust, which proxies pin by
//! fingerprint), the online signing key and the root's certificate of it, and the admin token
//! that the command line (`overlay token create`, `overlay revoke`) presents.
//!
//! In the data directory: `controller-root.key` (move it offline once the controller is set up:
//! it is needed again only to certify a new online key), `controller.key`, `controller.cert`,
//! `root.fingerprint` (public: what proxies pin), `admin.token`. Every secret file is 0600 and
//! checked at load ([`crate::trust::private_file`]); none of them is ever logged.
//!
//! A lost online key is recovered with `overlay controller init` and the root key: a new online
//! key and certificate, and no proxy needs re-pinning (they pin the root).

use std::path::{Path, PathBuf};

use crate::trust::private_file;
use crate::trust::{Fingerprint, Identity, KeyCert, KeyError, Signed};
use crate::wire::now_ms;

pub const ROOT_KEY_FILE: &str = "controller-root.key";
pub const ONLINE_KEY_FILE: &str = "controller.key";
pub const CERT_FILE: &str = "controller.cert";
pub const FINGERPRINT_FILE: &str = "root.fingerprint";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The root's X.509 certificate (public; rebuilt from the root key when missing).
pub const ROOT_CERT_FILE: &str = "controller-root.crt";
/// The overlay CA's key: back it up with the root key (README, Trust).
pub const CA_KEY_FILE: &str = "controller-ca.key";
/// The root's certificate of the overlay CA.
pub const CA_CERT_FILE: &str = "controller-ca.crt";
/// The CA before the last rotation: trusted until every leaf it issued has expired.
pub const PREVIOUS_CA_CERT_FILE: &str = "controller-ca.previous.crt";

/// What the running controller signs with.
pub struct ControllerKeys {
    /// The root's fingerprint: what proxies pin.
    pub root: Fingerprint,
    /// The online key: signs directory documents.
    pub online: Identity,
    /// The root's certificate of `online`.
    pub cert: Signed<KeyCert>,
    /// `Bearer` token of the admin API.
    pub admin_token: String,
    /// The overlay CA (none: not made yet and the root key is not here to make it).
    pub ca: Option<crate::trust::x509::Ca>,
    /// The CA before the last rotation, while leaves it issued may still be valid.
    pub previous_ca: Option<Fingerprint>,
}

/// What `init` did, for the user.
#[derive(Debug, PartialEq, Eq)]
pub enum Init {
    /// A new root key (and online key) was made.
    NewRoot,
    /// The root key was there; a new online key was certified (recovery of a lost online key).
    NewOnlineKey,
    /// Everything was already there.
    Nothing,
}

fn path(dir: &Path, file: &str) -> PathBuf {
    dir.join(file)
}

fn io_error(path: &Path, e: std::io::Error) -> KeyError {
    KeyError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Makes whatever is missing of the root key, the online key and its certificate.
/// `root_key` overrides where the root key is (an offline copy brought back for recovery).
pub fn init(data_dir: &Path, root_key: Option<&Path>) -> Result<(Init, Fingerprint), KeyError> {
    let root_path = root_key
        .map(Path::to_path_buf)
        .unwrap_or_else(|| path(data_dir, ROOT_KEY_FILE));
    let online_path = path(data_dir, ONLINE_KEY_FILE);
    let cert_path = path(data_dir, CERT_FILE);
    if let Some((fp, _, _)) = certified(data_dir)? {
        if root_key.is_none() {
            return Ok((Init::Nothing, fp));
        }
    }
    let (root, created_root) = if root_path.exists() || root_key.is_some() {
        (Identity::load(&root_path)?, false)
    } else {
        (Identity::create(&root_path)?, true)
    };
    let root_fp = root.fingerprint();
    if !created_root && cert_path.exists() {
        // An existing certificate under another root means the wrong root key was given.
        if let Ok(cert) = read_cert(&cert_path) {
            if cert.signer().fingerprint() != root_fp {
                return Err(KeyError::Untrusted(format!(
                    "{} certifies the online key under root {}, not under the given root {}",
                    cert_path.display(),
                    cert.signer().fingerprint(),
                    root_fp
                )));
            }
        }
    }
    // A new online key every time the root certifies one: a lost or leaked one is replaced.
    if online_path.exists() {
        let old = online_path.with_extension("key.replaced");
        std::fs::rename(&online_path, &old).map_err(|e| io_error(&online_path, e))?;
    }
    let online = Identity::create(&online_path)?;
    let serial = now_ms();
    let cert = crate::trust::issue(
        &root,
        &KeyCert {
            key: online.public(),
            role: "controller-online".into(),
            serial,
            issued_at_ms: serial,
            not_after_ms: None,
        },
    );
    let text = serde_json::to_string_pretty(&cert).map_err(|e| KeyError::Malformed {
        path: cert_path.clone(),
        why: e.to_string(),
    })?;
    private_file::replace(&cert_path, text.as_bytes(), 0o644)?;
    private_file::replace(
        &path(data_dir, FINGERPRINT_FILE),
        format!("{root_fp}\n").as_bytes(),
        0o644,
    )?;
    make_ca(data_dir, &root, false)?;
    let what = if created_root {
        Init::NewRoot
    } else {
        Init::NewOnlineKey
    };
    Ok((what, root_fp))
}

/// The root fingerprint, the online key and its certificate, when both files are there and
/// agree.
type Certified = (Fingerprint, Identity, Signed<KeyCert>);

fn certified(data_dir: &Path) -> Result<Option<Certified>, KeyError> {
    let online_path = path(data_dir, ONLINE_KEY_FILE);
    let cert_path = path(data_dir, CERT_FILE);
    if !online_path.exists() || !cert_path.exists() {
        return Ok(None);
    }
    let online = Identity::load(&online_path)?;
    let cert = read_cert(&cert_path)?;
    let root = cert.signer().fingerprint();
    let certified = crate::trust::signed::check_chain(&root, &cert, now_ms())?;
    if certified.key != online.public() {
        return Err(KeyError::Untrusted(format!(
            "{} certifies another key than {}: run `overlay controller init` with the root key \
             to certify a new online key",
            cert_path.display(),
            online_path.display()
        )));
    }
    Ok(Some((root, online, cert)))
}

fn read_cert(p: &Path) -> Result<Signed<KeyCert>, KeyError> {
    let text = std::fs::read_to_string(p).map_err(|e| io_error(p, e))?;
    serde_json::from_str(&text).map_err(|e| KeyError::Malformed {
        path: p.to_path_buf(),
        why: e.to_string(),
    })
}

/// The keys the controller runs with. A data directory with nothing in it is initialised
/// (logged with where the root key is and that it belongs offline); one with an online key
/// but no certificate is an error naming the fix.
pub fn load(data_dir: &Path) -> Result<ControllerKeys, KeyError> {
    std::fs::create_dir_all(data_dir).map_err(|e| io_error(data_dir, e))?;
    let (root, online, cert) = match certified(data_dir)? {
        Some(keys) => keys,
        None => {
            let root_path = path(data_dir, ROOT_KEY_FILE);
            let had_root = root_path.exists();
            // Anything of an earlier set-up but the root key: never make a new root silently
            // (every proxy would have to re-pin); the offline root key recovers it.
            let earlier = [ONLINE_KEY_FILE, CERT_FILE, FINGERPRINT_FILE]
                .iter()
                .map(|f| path(data_dir, f))
                .find(|p| p.exists());
            if let (false, Some(found)) = (had_root, earlier) {
                return Err(KeyError::Untrusted(format!(
                    "{} is there but the online key and its certificate are not both valid, and \
                     the root key is not in {}: run `overlay controller init --root-key PATH` \
                     with the root key's offline copy to certify a new online key",
                    found.display(),
                    data_dir.display()
                )));
            }
            let (what, fp) = init(data_dir, None)?;
            if what == Init::NewRoot {
                log::warn!(
                    "created the controller's root key {} (fingerprint {fp}): proxies pin this \
                     fingerprint; back the key up and keep it offline (README, Trust)",
                    root_path.display()
                );
            }
            // What init wrote, read back and checked like any other start's.
            certified(data_dir)?.ok_or_else(|| {
                KeyError::Untrusted(format!(
                    "{}: the keys just made are not all there",
                    data_dir.display()
                ))
            })?
        }
    };
    let admin_token = admin_token(data_dir)?;
    let root_key = path(data_dir, ROOT_KEY_FILE);
    if !path(data_dir, CA_CERT_FILE).exists() && root_key.exists() {
        make_ca(data_dir, &Identity::load(&root_key)?, false)?;
        log::info!(
            "made the overlay CA {} under the root key (it issues the proxies' TLS \
             certificates); back it up with the root key",
            path(data_dir, CA_KEY_FILE).display()
        );
    }
    let (ca, previous_ca) = load_ca(data_dir, &root)?;
    Ok(ControllerKeys {
        root,
        online,
        cert,
        admin_token,
        ca,
        previous_ca,
    })
}

fn x509_error(p: &Path, e: crate::trust::x509::X509Error) -> KeyError {
    KeyError::Malformed {
        path: p.to_path_buf(),
        why: e.to_string(),
    }
}

fn read_pem(p: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, KeyError> {
    let bytes = std::fs::read(p).map_err(|e| io_error(p, e))?;
    crate::trust::x509::from_pem(&bytes).map_err(|e| x509_error(p, e))
}

/// Makes the root's certificate (when missing) and a new overlay CA certified by the root.
/// `rotate`: an existing CA becomes the previous one, trusted until its leaves expire.
pub fn make_ca(data_dir: &Path, root: &Identity, rotate: bool) -> Result<(), KeyError> {
    use crate::trust::x509;
    let now = now_ms();
    let root_cert_path = path(data_dir, ROOT_CERT_FILE);
    let root_cert = match read_pem(&root_cert_path) {
        Ok(mut certs) if x509::key_of(&certs[0]).ok() == Some(root.public()) => certs.remove(0),
        _ => {
            let cert = x509::root_cert(root, now).map_err(|e| x509_error(&root_cert_path, e))?;
            private_file::replace(
                &root_cert_path,
                x509::to_pem(std::slice::from_ref(&cert)).as_bytes(),
                0o644,
            )?;
            cert
        }
    };
    let key_path = path(data_dir, CA_KEY_FILE);
    let cert_path = path(data_dir, CA_CERT_FILE);
    if cert_path.exists() {
        if !rotate {
            return Ok(());
        }
        let previous = path(data_dir, PREVIOUS_CA_CERT_FILE);
        std::fs::rename(&cert_path, &previous).map_err(|e| io_error(&cert_path, e))?;
        // Its age is the rotation's: it stays trusted for a leaf's longest life from now.
        std::fs::File::options()
            .write(true)
            .open(&previous)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .map_err(|e| io_error(&previous, e))?;
        if key_path.exists() {
            let old = key_path.with_extension("key.replaced");
            std::fs::rename(&key_path, &old).map_err(|e| io_error(&key_path, e))?;
        }
    }
    let (ca_key, _) = Identity::load_or_create(&key_path)?;
    let ca_cert =
        x509::ca_cert(root, &ca_key.public(), now).map_err(|e| x509_error(&cert_path, e))?;
    private_file::replace(
        &cert_path,
        x509::to_pem(&[ca_cert, root_cert]).as_bytes(),
        0o644,
    )
}

/// The overlay CA, when its files are there and chain to `root`; and the previous CA's
/// fingerprint while leaves it issued may still be valid (a later one is deleted, logged).
pub fn load_ca(
    data_dir: &Path,
    root: &Fingerprint,
) -> Result<(Option<crate::trust::x509::Ca>, Option<Fingerprint>), KeyError> {
    use crate::trust::x509;
    let cert_path = path(data_dir, CA_CERT_FILE);
    if !cert_path.exists() {
        return Ok((None, None));
    }
    let mut certs = read_pem(&cert_path)?;
    if certs.len() != 2
        || x509::key_of(&certs[1])
            .map(|k| k.fingerprint())
            .ok()
            .as_ref()
            != Some(root)
    {
        return Err(KeyError::Untrusted(format!(
            "{} is not the overlay CA's certificate followed by root {root}'s: run `overlay \
             controller init --root-key PATH --new-ca` to make a new CA",
            cert_path.display()
        )));
    }
    let root_cert = certs.remove(1);
    let ca_cert = certs.remove(0);
    let key = Identity::load(&path(data_dir, CA_KEY_FILE))?;
    let ca = x509::Ca::new(&key, ca_cert, root_cert).map_err(|e| x509_error(&cert_path, e))?;
    let previous_path = path(data_dir, PREVIOUS_CA_CERT_FILE);
    let previous = match std::fs::metadata(&previous_path) {
        Err(_) => None,
        Ok(meta) => {
            let age = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .unwrap_or_default();
            if age.as_millis() as u64 > x509::MAX_LEAF_MS {
                std::fs::remove_file(&previous_path).map_err(|e| io_error(&previous_path, e))?;
                log::info!(
                    "the overlay CA before the last rotation is no longer trusted: every \
                     certificate it issued has expired"
                );
                None
            } else {
                let certs = read_pem(&previous_path)?;
                Some(
                    x509::key_of(&certs[0])
                        .map_err(|e| x509_error(&previous_path, e))?
                        .fingerprint(),
                )
            }
        }
    };
    Ok((Some(ca), previous))
}

/// The admin token, made (0600) on first use. Never logged: the log says where it is.
pub fn admin_token(data_dir: &Path) -> Result<String, KeyError> {
    let p = path(data_dir, ADMIN_TOKEN_FILE);
    let (token, created) = private_file::token(&p)?;
    if created {
        log::info!(
            "wrote the admin token to {} (mode 0600): `overlay token create` and \
             `overlay revoke` read it from there",
            p.display()
        );
    }
    Ok(token)
}

/// The root fingerprint of the controller whose data directory this is (from its public file).
pub fn root_fingerprint(data_dir: &Path) -> Result<Fingerprint, KeyError> {
    let p = path(data_dir, FINGERPRINT_FILE);
    let text = std::fs::read_to_string(&p).map_err(|e| io_error(&p, e))?;
    Fingerprint::parse(text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_directory_gets_a_root_an_online_key_and_a_certificate_once() {
        let dir = tempfile::tempdir().unwrap();
        let keys = load(dir.path()).unwrap();
        assert!(dir.path().join(ROOT_KEY_FILE).exists());
        assert_eq!(root_fingerprint(dir.path()).unwrap(), keys.root);
        let again = load(dir.path()).unwrap();
        assert_eq!(again.root, keys.root);
        assert_eq!(again.online.public(), keys.online.public());
        assert_eq!(again.admin_token, keys.admin_token);
        let (what, fp) = init(dir.path(), None).unwrap();
        assert_eq!((what, fp), (Init::Nothing, keys.root));
    }

    #[test]
    fn the_overlay_ca_is_made_under_the_root_and_a_rotation_keeps_the_old_one_trusted_for_now() {
        let dir = tempfile::tempdir().unwrap();
        let keys = load(dir.path()).unwrap();
        let ca = keys.ca.expect("a CA made with the root key at hand");
        assert_eq!(keys.previous_ca, None);
        // The CA chains to the pinned root, and the same CA loads again.
        let (again, _) = load_ca(dir.path(), &keys.root).unwrap();
        assert_eq!(again.unwrap().fingerprint(), ca.fingerprint());
        // With the root key gone (offline), a data dir without a CA gets none: no new root.
        let offline = tempfile::tempdir().unwrap();
        let moved = offline.path().join(ROOT_KEY_FILE);
        std::fs::copy(dir.path().join(ROOT_KEY_FILE), &moved).unwrap();
        std::fs::remove_file(dir.path().join(ROOT_KEY_FILE)).unwrap();
        std::fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
        let without = load(dir.path()).unwrap();
        assert!(without.ca.is_none());
        assert_eq!(without.root, keys.root);
        // The root key brought back makes a CA; a rotation keeps the old one as previous.
        let root = Identity::load(&moved).unwrap();
        make_ca(dir.path(), &root, false).unwrap();
        let (first, _) = load_ca(dir.path(), &keys.root).unwrap();
        let first = first.unwrap().fingerprint();
        make_ca(dir.path(), &root, true).unwrap();
        let (second, previous) = load_ca(dir.path(), &keys.root).unwrap();
        assert_ne!(second.unwrap().fingerprint(), first);
        assert_eq!(
            previous,
            Some(first),
            "trusted until its leaves have expired"
        );
        // Under another root, the CA files are refused with the fix.
        let other = Identity::from_seed([9; 32]).fingerprint();
        let e = load_ca(dir.path(), &other).unwrap_err().to_string();
        assert!(e.contains("--new-ca"), "{e}");
    }

    #[test]
    fn a_lost_online_key_is_replaced_under_the_same_root_from_the_offline_root_key() {
        let dir = tempfile::tempdir().unwrap();
        let first = load(dir.path()).unwrap();
        // The root key goes offline; the online key is lost.
        let offline = tempfile::tempdir().unwrap();
        let root_copy = offline.path().join("root.key");
        std::fs::rename(dir.path().join(ROOT_KEY_FILE), &root_copy).unwrap();
        std::fs::remove_file(dir.path().join(ONLINE_KEY_FILE)).unwrap();
        let refused = load(dir.path())
            .err()
            .expect("no online key, no root: refused");
        assert!(refused.to_string().contains("--root-key"), "{refused}");
        let (what, fp) = init(dir.path(), Some(&root_copy)).unwrap();
        assert_eq!(what, Init::NewOnlineKey);
        assert_eq!(fp, first.root, "the same root: no proxy re-pins");
        let second = load(dir.path()).unwrap();
        assert_ne!(second.online.public(), first.online.public());
        let chained =
            crate::trust::signed::check_chain(&first.root, &second.cert, now_ms()).unwrap();
        assert_eq!(chained.key, second.online.public());
    }

    #[test]
    fn the_admin_token_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        load(dir.path()).unwrap();
        for f in [ADMIN_TOKEN_FILE, ROOT_KEY_FILE, ONLINE_KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
}
