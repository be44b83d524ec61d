//! The controller's report signing key: an Ed25519 key made on first start and kept in the
//! data directory (`report-signing.key`, 32 raw secret bytes as hex, mode 0600; the public key
//! beside it as `report-signing.pub`, hex). A key file that cannot be read is an error, never a
//! reason to make a new key: customers trust the old one. A rotation
//! (`tollgate-controller report-key rotate`, see `report::keys`) replaces both files with a
//! new key, written first as `*.next` files until the database records it.

use ed25519_dalek::SigningKey;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The secret key's file name inside the data directory.
pub const KEY_FILE: &str = "report-signing.key";
/// The public key's file name inside the data directory.
pub const PUBLIC_KEY_FILE: &str = "report-signing.pub";

/// Why the signing key cannot be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    /// Reading or writing a key file failed.
    #[error("report signing key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file holds something else than a hex Ed25519 secret key.
    #[error(
        "report signing key {path} is corrupt ({reason}); restore it from a backup — reports signed with it can only be verified with its public key, so it is not replaced"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Loads the key from `data_dir`, or makes and stores one when there is no key file yet.
pub fn load_or_create(data_dir: &Path) -> Result<SigningKey, SigningKeyError> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = parse(&text).map_err(|reason| SigningKeyError::Corrupt {
                path: path.clone(),
                reason,
            })?;
            // The public key file is a convenience copy; rewrite it if it is missing.
            let public = data_dir.join(PUBLIC_KEY_FILE);
            if !public.exists() {
                write_atomically(&public, &public_key_hex(&key), 0o644)?;
            }
            Ok(key)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(|source| SigningKeyError::Io {
                path: data_dir.to_owned(),
                source,
            })?;
            let key = generate();
            write_atomically(&path, &hex::encode(key.to_bytes()), 0o600)?;
            write_atomically(
                &data_dir.join(PUBLIC_KEY_FILE),
                &public_key_hex(&key),
                0o644,
            )?;
            tracing::info!(path = %path.display(), public_key = %public_key_hex(&key), "made a new report signing key");
            Ok(key)
        }
        Err(source) => Err(SigningKeyError::Io { path, source }),
    }
}

/// A new random key, not stored anywhere yet.
pub fn generate() -> SigningKey {
    let mut secret = [0u8; 32];
    rand::fill(&mut secret);
    SigningKey::from_bytes(&secret)
}

/// The suffix of a rotation's new key files until the rotation is recorded.
pub const PENDING_SUFFIX: &str = ".next";

/// The path of a key file's pending copy: `report-signing.key.next`.
pub fn pending_path(data_dir: &Path, file: &str) -> PathBuf {
    data_dir.join(format!("{file}{PENDING_SUFFIX}"))
}

/// Writes `key` beside the current key files as their pending copies (secret 0600), durably,
/// without touching the current ones: a rotation writes its new key first, records it in the
/// database, and only then puts it in place ([`promote_pending`]).
pub fn write_pending(data_dir: &Path, key: &SigningKey) -> Result<(), SigningKeyError> {
    write_atomically(
        &pending_path(data_dir, KEY_FILE),
        &hex::encode(key.to_bytes()),
        0o600,
    )?;
    write_atomically(
        &pending_path(data_dir, PUBLIC_KEY_FILE),
        &public_key_hex(key),
        0o644,
    )
}

/// Renames the pending key files over the current ones: the public key first, then the secret
/// key, which is what a controller reads.
pub fn promote_pending(data_dir: &Path) -> Result<(), SigningKeyError> {
    for file in [PUBLIC_KEY_FILE, KEY_FILE] {
        let pending = pending_path(data_dir, file);
        let path = data_dir.join(file);
        std::fs::rename(&pending, &path).map_err(|source| SigningKeyError::Io {
            path: pending.clone(),
            source,
        })?;
    }
    sync_dir(data_dir);
    Ok(())
}

/// Removes the pending key files of a rotation that was not recorded.
pub fn discard_pending(data_dir: &Path) {
    for file in [KEY_FILE, PUBLIC_KEY_FILE] {
        let _ = std::fs::remove_file(pending_path(data_dir, file));
    }
}

/// Loads the key from `data_dir` without ever making one.
pub fn load(data_dir: &Path) -> Result<SigningKey, SigningKeyError> {
    let path = data_dir.join(KEY_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| SigningKeyError::Io {
        path: path.clone(),
        source,
    })?;
    parse(&text).map_err(|reason| SigningKeyError::Corrupt { path, reason })
}

/// The public key as hex.
pub fn public_key_hex(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().as_bytes())
}

fn parse(text: &str) -> Result<SigningKey, String> {
    let bytes = hex::decode(text.trim()).map_err(|error| format!("not hex: {error}"))?;
    let secret: [u8; 32] = bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| format!("{} bytes, expected 32", bytes.len()))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Writes `text` to a temporary file with `mode`, syncs it and renames it over `path`.
fn write_atomically(path: &Path, text: &str, mode: u32) -> Result<(), SigningKeyError> {
    let io = |source| SigningKeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(io)?;
    // `mode` applies only when the file is created: a temporary file left by an earlier
    // attempt keeps its own, so set it on the open file before the secret is written.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.write_all(b"\n").map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Makes renames in `dir` durable; a failure here only risks losing a fresh key.
fn sync_dir(dir: &Path) {
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_and_loaded_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let made = load_or_create(dir.path()).expect("made");
        let loaded = load_or_create(dir.path()).expect("loaded");
        assert_eq!(made.to_bytes(), loaded.to_bytes());
        let public = std::fs::read_to_string(dir.path().join(PUBLIC_KEY_FILE)).expect("pub");
        assert_eq!(public.trim(), public_key_hex(&made));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_new_key_is_0600_even_over_a_leftover_temporary_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        // What a crash between creating and renaming the temporary file leaves behind, made
        // by a process with a permissive umask.
        let leftover = dir.path().join(format!("{KEY_FILE}.tmp"));
        std::fs::write(&leftover, "partial").expect("write");
        std::fs::set_permissions(&leftover, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        load_or_create(dir.path()).expect("made");
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_corrupt_key_is_an_error_and_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(KEY_FILE), "not a key").expect("write");
        let error = load_or_create(dir.path()).expect_err("corrupt");
        assert!(error.to_string().contains("is corrupt"), "{error}");
        let kept = std::fs::read_to_string(dir.path().join(KEY_FILE)).expect("read");
        assert_eq!(kept, "not a key");
    }
}
