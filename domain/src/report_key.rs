//! The deployment's report signing keys over time. A deployment signs with one key at a time,
//! the current one; a rotation retires it and makes a new key current from the same instant,
//! so the keys' periods follow each other without a gap or an overlap, and every report the
//! deployment ever signed was signed by one of its keys. A retired key signs nothing again,
//! but reports signed with it stay verifiable with its public key.
//!
//! ```text
//!   (first controller start) ──claim──▶ current ──rotate (a new key)──▶ retired (final)
//! ```
//!
//! Which key a controller may sign with is [`standing`]'s answer; whether a rotation may be
//! made, [`rotate`]'s; which of the deployment's keys signed a report, [`find`]'s.

use crate::Timestamp;
use crate::report_signature::fingerprint;
use ed25519_dalek::VerifyingKey;

/// One key a deployment has signed reports with, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportKey {
    /// The public key.
    pub public_key: VerifyingKey,
    /// When the deployment began signing with it.
    pub active_from: Timestamp,
    /// When a rotation retired it; `None` for the current key.
    pub retired_at: Option<Timestamp>,
}

impl ReportKey {
    /// The public key as lowercase hex, as reports embed it.
    pub fn hex(&self) -> String {
        hex::encode(self.public_key.as_bytes())
    }

    /// The key's fingerprint, as `tollgate report verify` prints it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public_key)
    }

    /// Whether the deployment signs with it now.
    pub fn is_current(&self) -> bool {
        self.retired_at.is_none()
    }
}

/// The deployment's current key: the one not retired.
pub fn current(keys: &[ReportKey]) -> Option<&ReportKey> {
    keys.iter().rev().find(|key| key.is_current())
}

/// The deployment's key `public_key`, if it ever had it.
pub fn find<'k>(keys: &'k [ReportKey], public_key: &VerifyingKey) -> Option<&'k ReportKey> {
    keys.iter().find(|key| key.public_key == *public_key)
}

/// Where a controller's key stands among the deployment's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing<'k> {
    /// The current key: the controller signs with it.
    Current,
    /// A key the deployment signed with until a rotation retired it: the controller signs
    /// nothing until it holds the current key.
    Retired {
        /// The retired key, with its period.
        key: &'k ReportKey,
        /// The key that is current now.
        current: Option<&'k ReportKey>,
    },
    /// A key the deployment never signed with.
    Foreign {
        /// The key that is current now.
        current: Option<&'k ReportKey>,
    },
}

/// Where `public_key` stands among `keys`.
pub fn standing<'k>(keys: &'k [ReportKey], public_key: &VerifyingKey) -> Standing<'k> {
    let current = current(keys);
    match find(keys, public_key) {
        Some(key) if key.is_current() => Standing::Current,
        Some(key) => Standing::Retired { key, current },
        None => Standing::Foreign { current },
    }
}

/// A rotation decided: `retired` stops signing at `at`, `current` signs from `at` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// The key retired, the current one until now.
    pub retired: VerifyingKey,
    /// The new current key.
    pub current: VerifyingKey,
    /// When one ends and the other begins.
    pub at: Timestamp,
}

/// Why a rotation may not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RotateRefusal {
    /// No controller has signed yet: there is nothing to rotate.
    #[error(
        "the deployment has no report signing key yet: start a controller, which makes one, \
         before rotating it"
    )]
    NoKey,
    /// The key rotated from is not the deployment's current one: a data directory not brought
    /// up to date, or another deployment's.
    #[error(
        "the key held here ({held}) is not the deployment's current report signing key \
         ({current}){retired}: rotate where the current key is, or copy it here first"
    )]
    NotCurrent {
        /// The held key's fingerprint.
        held: String,
        /// The current key's fingerprint.
        current: String,
        /// How the held key stands, for the message (", it was retired at ...").
        retired: String,
    },
    /// The new key was the deployment's before: a retired key never signs again.
    #[error("the new key {0} was this deployment's before: a retired key never signs again")]
    Reused(String),
    /// The rotation would begin before the current key did (a clock set back).
    #[error(
        "the rotation at {at} would come before the current key's start at {active_from}: \
         check this host's clock"
    )]
    BeforeCurrent {
        /// When the rotation would be.
        at: Timestamp,
        /// When the current key became current.
        active_from: Timestamp,
    },
}

/// Decides the rotation of the deployment's current key, held here as `held`, to `new` at
/// `at`: the held key must be the current one, the new key must be new, and the periods must
/// follow each other in time.
pub fn rotate(
    keys: &[ReportKey],
    held: &VerifyingKey,
    new: &VerifyingKey,
    at: Timestamp,
) -> Result<Rotation, RotateRefusal> {
    let current = current(keys).ok_or(RotateRefusal::NoKey)?;
    if current.public_key != *held {
        let retired = match find(keys, held).and_then(|key| key.retired_at) {
            Some(retired_at) => format!(", it was retired at {}", format_time(retired_at)),
            None => ", nor ever was".to_owned(),
        };
        return Err(RotateRefusal::NotCurrent {
            held: fingerprint(held),
            current: current.fingerprint(),
            retired,
        });
    }
    if find(keys, new).is_some() {
        return Err(RotateRefusal::Reused(fingerprint(new)));
    }
    if at <= current.active_from {
        return Err(RotateRefusal::BeforeCurrent {
            at,
            active_from: current.active_from,
        });
    }
    Ok(Rotation {
        retired: *held,
        current: *new,
        at,
    })
}

/// A key's period in words: `current since T` or `from T until T2 (retired)`.
pub fn describe_period(key: &ReportKey) -> String {
    match key.retired_at {
        None => format!(
            "the deployment's current key since {}",
            format_time(key.active_from)
        ),
        Some(retired_at) => format!(
            "the deployment's key from {} until {} (retired)",
            format_time(key.active_from),
            format_time(retired_at)
        ),
    }
}

/// A time as people and the key list read it: RFC 3339, UTC, seconds.
pub fn format_time(at: Timestamp) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::at;
    use ed25519_dalek::SigningKey;

    fn key(seed: u8) -> VerifyingKey {
        SigningKey::from_bytes(&[seed; 32]).verifying_key()
    }

    /// Key 1 from t=10 to t=20, key 2 current since t=20.
    fn history() -> Vec<ReportKey> {
        vec![
            ReportKey {
                public_key: key(1),
                active_from: at(10),
                retired_at: Some(at(20)),
            },
            ReportKey {
                public_key: key(2),
                active_from: at(20),
                retired_at: None,
            },
        ]
    }

    #[test]
    fn only_the_current_key_signs() {
        let keys = history();
        assert_eq!(standing(&keys, &key(2)), Standing::Current);
        assert_eq!(
            standing(&keys, &key(1)),
            Standing::Retired {
                key: &keys[0],
                current: Some(&keys[1])
            }
        );
        assert_eq!(
            standing(&keys, &key(3)),
            Standing::Foreign {
                current: Some(&keys[1])
            }
        );
        assert_eq!(current(&keys), Some(&keys[1]));
        assert_eq!(find(&keys, &key(1)), Some(&keys[0]));
        assert_eq!(find(&keys, &key(3)), None);
    }

    #[test]
    fn a_rotation_retires_the_current_key_for_a_new_one() {
        let keys = history();
        assert_eq!(
            rotate(&keys, &key(2), &key(3), at(30)),
            Ok(Rotation {
                retired: key(2),
                current: key(3),
                at: at(30)
            })
        );
    }

    #[test]
    fn a_rotation_is_refused_from_a_stale_key_to_an_old_one_or_back_in_time() {
        let keys = history();
        assert_eq!(
            rotate(&[], &key(1), &key(2), at(5)),
            Err(RotateRefusal::NoKey)
        );
        let stale = rotate(&keys, &key(1), &key(3), at(30)).expect_err("stale");
        assert!(
            stale
                .to_string()
                .contains("it was retired at 2026-01-01T00:00:20Z"),
            "{stale}"
        );
        let foreign = rotate(&keys, &key(4), &key(3), at(30)).expect_err("foreign");
        assert!(foreign.to_string().contains("nor ever was"), "{foreign}");
        assert_eq!(
            rotate(&keys, &key(2), &key(1), at(30)),
            Err(RotateRefusal::Reused(fingerprint(&key(1))))
        );
        assert_eq!(
            rotate(&keys, &key(2), &key(2), at(30)),
            Err(RotateRefusal::Reused(fingerprint(&key(2))))
        );
        assert_eq!(
            rotate(&keys, &key(2), &key(3), at(20)),
            Err(RotateRefusal::BeforeCurrent {
                at: at(20),
                active_from: at(20)
            })
        );
    }

    #[test]
    fn periods_read_as_words() {
        let keys = history();
        assert_eq!(
            describe_period(&keys[0]),
            "the deployment's key from 2026-01-01T00:00:10Z until 2026-01-01T00:00:20Z (retired)"
        );
        assert_eq!(
            describe_period(&keys[1]),
            "the deployment's current key since 2026-01-01T00:00:20Z"
        );
    }
}
