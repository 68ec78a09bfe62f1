//! Files that hold secrets (identity keys, the admin token) and the small public files written
//! beside them (a certificate, a fingerprint).
//!
//! Owns how they are written and read: a secret is created with O_EXCL and mode 0600 (never
//! over an existing file), fsynced with its directory; at read it is refused when group or
//! others may access it or another user owns it, and its content never appears in an error.
//! A public file is replaced atomically (temporary file, fsync, rename).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::KeyError;

fn io(path: &Path) -> impl Fn(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates missing parent directories (0700 for new ones); returns the parent.
fn parent(path: &Path) -> Result<&Path, KeyError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    Ok(dir)
}

fn sync_dir(dir: &Path) -> Result<(), KeyError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Writes `bytes` to a new file at `path` (which must not exist: O_EXCL) with mode 0600;
/// file and directory are fsynced. A half-written file is removed.
pub fn create(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let dir = parent(path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(io(path)(e));
    }
    sync_dir(dir)
}

/// Reads at most `max` bytes of a secret file; refuses one that group or others can access,
/// one another user owns, and anything but a regular file.
pub fn read(path: &Path, max: u64) -> Result<Vec<u8>, KeyError> {
    let malformed = |why: &str| KeyError::Malformed {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    let file = File::open(path).map_err(io(path))?;
    // fstat on the open file: what is checked is what is read.
    let meta = file.metadata().map_err(io(path))?;
    if !meta.is_file() {
        return Err(malformed("not a regular file"));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(KeyError::Owner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if bytes.len() as u64 > max {
        return Err(malformed("longer than expected"));
    }
    Ok(bytes)
}

/// The secret token kept in `path` (0600), made now (40 random characters) when there is
/// none; and whether it was made now. A file holding less than a token is refused, saying to
/// delete it. The token itself is never in an error.
pub fn token(path: &Path) -> Result<(String, bool), KeyError> {
    let fresh = crate::trust::token::random_text(40);
    match create(path, format!("{fresh}\n").as_bytes()) {
        Ok(()) => Ok((fresh, true)),
        Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
            let bytes = read(path, 1024)?;
            let text = String::from_utf8(bytes).map_err(|_| KeyError::Malformed {
                path: path.to_path_buf(),
                why: "not text".into(),
            })?;
            let token = text.trim().to_string();
            if token.len() < 20 {
                return Err(KeyError::Malformed {
                    path: path.to_path_buf(),
                    why: "shorter than a token; delete it to have a new one made".into(),
                });
            }
            Ok((token, false))
        }
        Err(e) => Err(e),
    }
}

/// Replaces the file at `path` with `bytes` atomically (a temporary file beside it, fsynced,
/// renamed over it), with `mode`.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let dir = parent(path)?;
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_secret_is_created_once_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/secret");
        create(&p, b"s3cret").unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(create(&p, b"other"), Err(KeyError::Io { .. })));
        assert_eq!(read(&p, 64).unwrap(), b"s3cret");
    }

    #[test]
    fn a_readable_secret_is_refused_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        create(&p, b"hunter2-hunter2").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = read(&p, 64).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn a_public_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cert");
        replace(&p, b"one", 0o644).unwrap();
        replace(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!p.with_extension("tmp").exists());
    }
}
