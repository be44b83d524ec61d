//! One report signing identity per deployment, over time. The secret key lives in each
//! controller's data directory (`signing_key`); the database (`report_keys`) records every
//! public key the deployment has signed with and when, the current one last. Replicas on one
//! database therefore hold copies of one key file.
//!
//! - At start ([`key_at_start`]) a controller records its key if the deployment has none yet,
//!   and refuses to start unless its key is the current one.
//! - A rotation ([`rotate`], `tollgate-controller report-key rotate`) makes a new key in one
//!   data directory and, in one transaction with its audit entry, retires the current key and
//!   records the new one. The other replicas' data directories need the new key files.
//! - Before every signature ([`Signer::key`]) a controller checks that its key is still the
//!   current one. After a rotation elsewhere it reads its data directory again, so copying the
//!   new key files in is enough (no restart); until then it signs nothing.

use super::signing_key::{self, KEY_FILE, PUBLIC_KEY_FILE};
use crate::store::{AuditNote, Store, StoreError};
use anyhow::Context as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use tollgate_domain::Timestamp;
use tollgate_domain::report_key::{self, ReportKey, Rotation, Standing, format_time};

/// Why a controller may not sign with the key it holds; the message says what to copy where.
pub fn refusal(
    standing: &Standing<'_>,
    held: &VerifyingKey,
    data_dir: &Path,
    made_now: bool,
) -> Option<String> {
    let key_path = data_dir.join(KEY_FILE);
    let held = format!(
        "the report signing key {} (public key {}{})",
        key_path.display(),
        hex::encode(held.as_bytes()),
        if made_now {
            ", made now and removed again"
        } else {
            ""
        }
    );
    let current = |current: Option<&ReportKey>| match current {
        Some(current) => format!(
            "public key {} (fingerprint {}) since {}",
            current.hex(),
            current.fingerprint(),
            format_time(current.active_from)
        ),
        None => "no key: every key was retired".to_owned(),
    };
    match standing {
        Standing::Current => None,
        Standing::Retired { key, current: now } => Some(format!(
            "{held} was retired at {}: reports here are signed with {}; copy {KEY_FILE} and \
             {PUBLIC_KEY_FILE} from the data directory where `tollgate-controller report-key \
             rotate` ran (or from a replica that has the new key) into {}",
            key.retired_at.map_or_else(String::new, format_time),
            current(*now),
            data_dir.display()
        )),
        Standing::Foreign { current: now } => Some(format!(
            "{held} is not this deployment's: reports here are signed with {}; copy {KEY_FILE} \
             and {PUBLIC_KEY_FILE} from a replica (or a backup) that has it into {}",
            current(*now),
            data_dir.display()
        )),
    }
}

/// The report signing key of the data directory (made on first start), checked against the
/// deployment's keys: replicas on one database sign with one key, so a replica with another
/// key (a data directory not copied, a key file lost and made anew, a key retired by a
/// rotation) refuses to start rather than sign reports customers cannot verify with the key
/// they know.
pub async fn key_at_start(
    store: &Store,
    data_dir: &Path,
    now: Timestamp,
) -> anyhow::Result<SigningKey> {
    let key_path = data_dir.join(KEY_FILE);
    let existed = key_path.exists();
    let key = signing_key::load_or_create(data_dir).context("loading the report signing key")?;
    let keys = store
        .claim_report_key(&key.verifying_key(), now)
        .await
        .context("recording the report signing key")?;
    let standing = report_key::standing(&keys, &key.verifying_key());
    let Some(message) = refusal(&standing, &key.verifying_key(), data_dir, !existed) else {
        return Ok(key);
    };
    if !existed {
        // Made just now: remove it, so that restoring the deployment's key is a plain copy.
        let _ = std::fs::remove_file(&key_path);
        let _ = std::fs::remove_file(data_dir.join(PUBLIC_KEY_FILE));
    }
    anyhow::bail!(message)
}

/// Why no report can be signed now.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The deployment's keys could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// This controller holds no current key: a rotation retired it, and its data directory
    /// does not hold the new one yet.
    #[error("{0}; it is read at the next report, no restart needed")]
    NotCurrent(String),
}

/// The key this controller signs reports with, checked against the deployment's current key
/// before every signature.
#[derive(Debug)]
pub struct Signer {
    /// Where the key files are read from again after a rotation.
    data_dir: PathBuf,
    /// The key held; replaced when the data directory holds the new current key.
    held: Mutex<SigningKey>,
}

impl Signer {
    /// A signer holding `key`, the one [`key_at_start`] checked, from `data_dir`.
    pub fn new(data_dir: PathBuf, key: SigningKey) -> Self {
        Self {
            data_dir,
            held: Mutex::new(key),
        }
    }

    /// The deployment's current key, to sign with now: the one held, or the one the data
    /// directory holds after a rotation; refused when neither is current.
    pub async fn key(&self, store: &Store) -> Result<SigningKey, SignerError> {
        let keys = store.report_keys().await?;
        let held = self.held().clone();
        let standing = report_key::standing(&keys, &held.verifying_key());
        let Some(message) = refusal(&standing, &held.verifying_key(), &self.data_dir, false) else {
            return Ok(held);
        };
        // Rotated since this key was read: the data directory may hold the new key by now.
        if let Ok(fresh) = signing_key::load(&self.data_dir)
            && report_key::standing(&keys, &fresh.verifying_key()) == Standing::Current
        {
            tracing::info!(
                public_key = %signing_key::public_key_hex(&fresh),
                retired = %signing_key::public_key_hex(&held),
                "signing reports with the deployment's new report signing key"
            );
            *self.held() = fresh.clone();
            return Ok(fresh);
        }
        tracing::error!("{message}");
        Err(SignerError::NotCurrent(message))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, SigningKey> {
        // A poisoned lock still holds a whole key: it is only ever replaced whole.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Who rotates and why, for the audit entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotateRequest {
    /// The actor recorded in the audit log.
    pub actor: String,
    /// Why the key is rotated (a schedule, a suspected leak), if given.
    pub reason: Option<String>,
}

/// Rotates the deployment's report signing key from `data_dir`, which must hold the current
/// key: makes a new key there (first as `*.next` files), retires the current key and records
/// the new one at `now` with an audit entry, then puts the new key files in place. Returns the
/// rotation; every other replica's data directory then needs the new key files.
pub async fn rotate(
    store: &Store,
    data_dir: &Path,
    request: &RotateRequest,
    now: Timestamp,
) -> anyhow::Result<Rotation> {
    let held = signing_key::load(data_dir).with_context(|| {
        format!(
            "reading the current report signing key from {}: rotate in the data directory of \
             a controller that holds it",
            data_dir.display()
        )
    })?;
    let keys = store
        .report_keys()
        .await
        .context("reading the deployment's report signing keys")?;
    let new = signing_key::generate();
    let rotation = report_key::rotate(&keys, &held.verifying_key(), &new.verifying_key(), now)?;
    signing_key::write_pending(data_dir, &new).context("writing the new report signing key")?;
    let fingerprint = tollgate_domain::report_signature::fingerprint;
    let note = AuditNote::new(
        now,
        request.actor.clone(),
        "report-key.rotate",
        format!("report-key/{}", fingerprint(&rotation.current)),
    )
    .details(serde_json::json!({
        "retired": hex::encode(rotation.retired.as_bytes()),
        "retired_fingerprint": fingerprint(&rotation.retired),
        "current": hex::encode(rotation.current.as_bytes()),
        "reason": request.reason,
        "data_dir": data_dir.display().to_string(),
    }));
    if let Err(error) = store.rotate_report_key(&rotation, &note).await {
        signing_key::discard_pending(data_dir);
        return Err(error).context("recording the rotation");
    }
    signing_key::promote_pending(data_dir).with_context(|| {
        format!(
            "the rotation is recorded, but the new key files could not be put in place: \
             rename {0}{1} to {0} and {2}{1} to {2} in {3}",
            KEY_FILE,
            signing_key::PENDING_SUFFIX,
            PUBLIC_KEY_FILE,
            data_dir.display()
        )
    })?;
    tracing::info!(
        retired = %hex::encode(rotation.retired.as_bytes()),
        current = %hex::encode(rotation.current.as_bytes()),
        actor = request.actor,
        "rotated the report signing key"
    );
    Ok(rotation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_domain::test_support::at;

    async fn sqlite(dir: &Path) -> Store {
        Store::connect(&format!("sqlite://{}/tollgate.db", dir.display()))
            .await
            .expect("store")
    }

    fn request() -> RotateRequest {
        RotateRequest {
            actor: "alice".into(),
            reason: Some("yearly".into()),
        }
    }

    /// Two replicas share a key; one rotates. The other signs nothing until its data directory
    /// holds the new key, then signs with it without a restart; a controller starting with the
    /// retired key is refused, saying what to copy.
    #[tokio::test]
    async fn after_a_rotation_only_the_new_key_signs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite(dir.path()).await;
        let (here, there) = (dir.path().join("here"), dir.path().join("there"));
        let old = key_at_start(&store, &here, at(0))
            .await
            .expect("first start");
        std::fs::create_dir_all(&there).expect("mkdir");
        for file in [KEY_FILE, PUBLIC_KEY_FILE] {
            std::fs::copy(here.join(file), there.join(file)).expect("copy the key");
        }
        let replica = Signer::new(
            there.clone(),
            key_at_start(&store, &there, at(1)).await.expect("replica"),
        );
        assert_eq!(
            replica.key(&store).await.expect("signs").to_bytes(),
            old.to_bytes()
        );

        let rotation = rotate(&store, &here, &request(), at(10))
            .await
            .expect("rotate");
        assert_eq!(rotation.retired, old.verifying_key());
        let new = signing_key::load(&here).expect("the new key is in place");
        assert_eq!(new.verifying_key(), rotation.current);
        assert!(!signing_key::pending_path(&here, KEY_FILE).exists());
        let keys = store.report_keys().await.expect("keys");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].retired_at, Some(at(10)));
        assert_eq!(keys[1].active_from, at(10));

        let refused = replica.key(&store).await.expect_err("a retired key");
        let message = refused.to_string();
        assert!(
            message.contains("was retired at 2026-01-01T00:00:10Z")
                && message.contains(&hex::encode(rotation.current.as_bytes()))
                && message.contains("copy report-signing.key and report-signing.pub"),
            "{message}"
        );
        let at_start = key_at_start(&store, &there, at(11))
            .await
            .expect_err("a retired key does not start");
        assert!(
            at_start.to_string().contains("was retired at"),
            "{at_start}"
        );

        for file in [KEY_FILE, PUBLIC_KEY_FILE] {
            std::fs::copy(here.join(file), there.join(file)).expect("copy the new key");
        }
        assert_eq!(
            replica.key(&store).await.expect("signs again").to_bytes(),
            new.to_bytes()
        );
        key_at_start(&store, &there, at(12))
            .await
            .expect("starts with the new key");

        // Rotating from the stale copy of an old key is refused, and leaves nothing behind.
        let stale = dir.path().join("stale");
        std::fs::create_dir_all(&stale).expect("mkdir");
        std::fs::write(stale.join(KEY_FILE), hex::encode(old.to_bytes())).expect("old key");
        let error = rotate(&store, &stale, &request(), at(20))
            .await
            .expect_err("not the current key");
        assert!(
            error
                .to_string()
                .contains("is not the deployment's current"),
            "{error}"
        );
        assert!(!signing_key::pending_path(&stale, KEY_FILE).exists());
        store.close().await;
    }
}
