//! The deployment's report signing keys on the wire: each key the controller lists in
//! `PublicKey.keys`, and back again for the CLI, which checks every field (a key list is what
//! `tollgate report verify --public-keys-from` trusts).

use crate::FromProto;
use crate::fields::{FieldErrors, InvalidFields};
use crate::time::timestamp_to_proto;
use tollgate_domain::report_key::ReportKey;
use tollgate_domain::report_signature::{ALGORITHM, parse_public_key};
use tollgate_proto::v1 as proto;

/// One of the deployment's keys as `GetPublicKey` lists it.
pub fn report_key_to_proto(key: &ReportKey) -> proto::ReportKey {
    let ReportKey {
        public_key: _,
        active_from,
        retired_at,
    } = key;
    proto::ReportKey {
        algorithm: ALGORITHM.to_owned(),
        public_key: key.hex(),
        fingerprint: key.fingerprint(),
        active_from: Some(timestamp_to_proto(*active_from)),
        retired_at: retired_at.map(timestamp_to_proto),
    }
}

impl FromProto for ReportKey {
    type Proto = proto::ReportKey;

    /// A listed key: an Ed25519 key whose fingerprint is its own, with a start.
    fn from_proto(proto: proto::ReportKey) -> Result<Self, InvalidFields> {
        let proto::ReportKey {
            algorithm,
            public_key,
            fingerprint,
            active_from,
            retired_at,
        } = proto;
        let mut errors = FieldErrors::new();
        if algorithm != ALGORITHM {
            errors.add("algorithm", format!("'{algorithm}' is not {ALGORITHM}"));
        }
        let public_key = match parse_public_key(&public_key) {
            Ok(key) => Some(key),
            Err(message) => {
                errors.add("public_key", message);
                None
            }
        };
        if let Some(key) = &public_key {
            let own = tollgate_domain::report_signature::fingerprint(key);
            if fingerprint != own {
                errors.add(
                    "fingerprint",
                    format!("'{fingerprint}' is not the key's fingerprint {own}"),
                );
            }
        }
        let active_from = errors.required_timestamp("active_from", active_from);
        let retired_at = errors.optional_timestamp("retired_at", retired_at);
        let (Some(public_key), Some(active_from)) = (public_key, active_from) else {
            return Err(crate::release::missing_parts(errors));
        };
        errors.finish(ReportKey {
            public_key,
            active_from,
            retired_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_domain::test_support::at;

    fn key() -> ReportKey {
        ReportKey {
            public_key: ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key(),
            active_from: at(10),
            retired_at: Some(at(20)),
        }
    }

    #[test]
    fn a_key_round_trips() {
        let proto = report_key_to_proto(&key());
        assert_eq!(proto.algorithm, "ed25519");
        assert_eq!(ReportKey::from_proto(proto), Ok(key()));
    }

    #[test]
    fn a_bad_key_names_every_bad_field() {
        let mut proto = report_key_to_proto(&key());
        proto.fingerprint = "0000".into();
        proto.active_from = None;
        proto.algorithm = "rsa".into();
        let error = ReportKey::from_proto(proto).expect_err("refused");
        let fields = error.fields();
        assert_eq!(
            fields,
            ["algorithm", "fingerprint", "active_from"],
            "{error}"
        );
        let mut proto = report_key_to_proto(&key());
        proto.public_key = "zz".into();
        let error = ReportKey::from_proto(proto).expect_err("refused");
        assert_eq!(error.fields(), ["public_key"], "{error}");
    }
}
