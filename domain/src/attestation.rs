//! A gate decision as a supply-chain attestation: an in-toto Statement v1 carrying the SLSA
//! Verification Summary Attestation (VSA) v1 predicate, in a DSSE envelope signed with the
//! controller's Ed25519 report key. Pure computation: the controller passes the release, the
//! decision (which carries its own evaluation time) and the key; `tollgate report verify`
//! checks an envelope offline with nothing but this module and the pinned public key. Any
//! DSSE implementation checks the same envelope with that key (see the README).
//!
//! **Subjects.** One per release component, in the release's order. A component with a
//! sha256 is named by its component name, with its artifact URI and that digest: a verifier
//! holding the artifact matches it by digest. A component without one has no artifact to
//! identify, yet a subject needs a digest: it is named `NAME=VERSION` and its digest is the
//! sha256 of that name's UTF-8 bytes (annotated `digestOf: name`), so it records the version
//! the decision is about and matches no file.

use crate::gate::{Decision, Verdict};
use crate::release::{Component, Release};
use crate::report_signature::{fingerprint, sha256_hex};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The in-toto Statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The SLSA Verification Summary Attestation predicate type.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/verification_summary/v1";
/// The DSSE payload type of an in-toto Statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The SLSA specification version the predicate follows.
pub const SLSA_VERSION: &str = "1.0";
/// `verificationResult` of a passed decision.
pub const PASSED: &str = "PASSED";
/// `verificationResult` of any other decision, and its only verified level.
pub const FAILED: &str = "FAILED";
/// The verified level of a passed decision. Tollgate checks a release on hardware, not its
/// build track, so it claims no `SLSA_BUILD_LEVEL_*`; the VSA lets verifiers name their own
/// levels as long as they do not start with `SLSA_`.
pub const GATE_PASSED_LEVEL: &str = "TOLLGATE_GATE_PASSED";
/// The predicate's extension field (the VSA allows fields named by URIs) holding Tollgate's
/// own view of the decision: release, milestone, the exact verdict and its summary.
pub const DECISION_FIELD: &str = "urn:tollgate:decision";
/// The annotation a version-only subject carries: its digest is of its name.
pub const DIGEST_OF_ANNOTATION: &str = "digestOf";
/// The key `verifier.version` names the controller's version under.
pub const VERIFIER_COMPONENT: &str = "tollgate-controller";
/// Suggested file extension: one envelope on one line, as in-toto bundles are kept.
pub const FILE_EXTENSION: &str = "intoto.jsonl";

/// A digest set: algorithm name to lowercase hex.
pub type DigestSet = BTreeMap<String, String>;

/// An in-toto ResourceDescriptor, with the fields an attestation of a decision uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDescriptor {
    /// What the resource is called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where it is, or which it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Its digests.
    #[serde(default)]
    pub digest: DigestSet,
    /// Further facts about it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The VSA's `verifier`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verifier {
    /// The verifier's identity: `urn:tollgate:controller:<key fingerprint>`.
    pub id: String,
    /// Software versions of the verifier.
    #[serde(default)]
    pub version: BTreeMap<String, String>,
}

/// Tollgate's own view of the decision, kept in [`DECISION_FIELD`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionFacts {
    /// The release.
    pub release: String,
    /// The milestone whose gate decided.
    pub milestone: String,
    /// The verdict: passed, failed, waiting or error.
    pub verdict: String,
    /// The decision's one-sentence summary.
    pub summary: String,
    /// The decision's input digest (`tollgate gate show --at` replays it).
    pub decision_digest: String,
}

/// The SLSA Verification Summary Attestation v1 predicate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationSummary {
    /// The controller that decided.
    pub verifier: Verifier,
    /// When the decision was evaluated, RFC 3339 UTC.
    pub time_verified: String,
    /// The release: `urn:tollgate:release:<name>`.
    pub resource_uri: String,
    /// The gate: `urn:tollgate:gate:<milestone>` with the gate version as sha256.
    pub policy: ResourceDescriptor,
    /// What the decision read: its input digest (policy, evidence and waivers in force).
    pub input_attestations: Vec<ResourceDescriptor>,
    /// [`PASSED`] or [`FAILED`].
    pub verification_result: String,
    /// `[GATE_PASSED_LEVEL]` or `[FAILED]`.
    pub verified_levels: Vec<String>,
    /// [`SLSA_VERSION`].
    pub slsa_version: String,
    /// Tollgate's view of the decision.
    #[serde(rename = "urn:tollgate:decision")]
    pub decision: DecisionFacts,
}

/// An in-toto Statement v1 with the VSA predicate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub statement_type: String,
    /// The release's components.
    pub subject: Vec<ResourceDescriptor>,
    /// [`PREDICATE_TYPE`].
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The verification summary.
    pub predicate: VerificationSummary,
}

/// One DSSE signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// The signing key's fingerprint, as `tollgate report public-key` prints it. A hint only:
    /// the signature is checked against the key the verifier trusts.
    #[serde(default)]
    pub keyid: String,
    /// The Ed25519 signature of the PAE, standard base64.
    pub sig: String,
}

/// A DSSE envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The statement's bytes, standard base64.
    pub payload: String,
    /// [`PAYLOAD_TYPE`].
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Signatures of the PAE of type and payload.
    pub signatures: Vec<EnvelopeSignature>,
}

/// Who decided: the controller's key and version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifierInfo {
    /// The key the controller signs with; its fingerprint names the verifier.
    pub public_key: VerifyingKey,
    /// The controller's version.
    pub version: String,
}

/// What a valid attestation says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedAttestation {
    /// The signing key's fingerprint.
    pub fingerprint: String,
    /// The statement.
    pub statement: Statement,
}

/// Why an attestation does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttestationError {
    /// The input is not a DSSE envelope of an in-toto statement.
    #[error("malformed attestation: {0}")]
    Malformed(String),
    /// No signature of the trusted key matches the payload.
    #[error("{0}")]
    BadSignature(String),
    /// The signed statement is not a Tollgate verification summary.
    #[error("signed statement is not a verification summary: {0}")]
    WrongStatement(String),
}

/// The verifier identity of a controller signing with `key`.
pub fn verifier_id(key: &VerifyingKey) -> String {
    format!("urn:tollgate:controller:{}", fingerprint(key))
}

/// The resource URI of a release.
pub fn release_uri(release: &str) -> String {
    format!("urn:tollgate:release:{release}")
}

/// The policy URI of a milestone's gate.
pub fn gate_uri(milestone: &str) -> String {
    format!("urn:tollgate:gate:{milestone}")
}

/// The URI of a decision's inputs.
pub fn decision_uri(release: &str, milestone: &str) -> String {
    format!("urn:tollgate:decision:{release}:{milestone}")
}

fn sha256_set(hex: &str) -> DigestSet {
    DigestSet::from([("sha256".to_owned(), hex.to_ascii_lowercase())])
}

/// The subject for one component (see the module doc).
pub fn subject(component: &Component) -> ResourceDescriptor {
    let version = BTreeMap::from([("version".to_owned(), component.version.clone())]);
    match &component.sha256 {
        Some(sha256) => ResourceDescriptor {
            name: Some(component.name.clone()),
            uri: component.artifact_uri.clone(),
            digest: sha256_set(sha256),
            annotations: version,
        },
        None => {
            let name = format!("{}={}", component.name, component.version);
            let mut annotations = version;
            annotations.insert(DIGEST_OF_ANNOTATION.to_owned(), "name".to_owned());
            ResourceDescriptor {
                digest: sha256_set(&sha256_hex(name.as_bytes())),
                name: Some(name),
                uri: component.artifact_uri.clone(),
                annotations,
            }
        }
    }
}

/// The statement of `decision` about `release`, decided by `verifier`. The time verified is
/// the decision's own evaluation time.
pub fn statement(release: &Release, decision: &Decision, verifier: &VerifierInfo) -> Statement {
    let passed = decision.verdict == Verdict::Passed;
    Statement {
        statement_type: STATEMENT_TYPE.to_owned(),
        subject: release.components.iter().map(subject).collect(),
        predicate_type: PREDICATE_TYPE.to_owned(),
        predicate: VerificationSummary {
            verifier: Verifier {
                id: verifier_id(&verifier.public_key),
                version: BTreeMap::from([(
                    VERIFIER_COMPONENT.to_owned(),
                    verifier.version.clone(),
                )]),
            },
            time_verified: decision
                .evaluated_at
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            resource_uri: release_uri(release.id.as_str()),
            policy: ResourceDescriptor {
                name: None,
                uri: Some(gate_uri(&decision.milestone)),
                digest: sha256_set(&decision.policy_version),
                annotations: BTreeMap::new(),
            },
            input_attestations: vec![ResourceDescriptor {
                name: Some("decision inputs".to_owned()),
                uri: Some(decision_uri(release.id.as_str(), &decision.milestone)),
                digest: sha256_set(&decision.digest),
                annotations: BTreeMap::new(),
            }],
            verification_result: if passed { PASSED } else { FAILED }.to_owned(),
            verified_levels: vec![if passed { GATE_PASSED_LEVEL } else { FAILED }.to_owned()],
            slsa_version: SLSA_VERSION.to_owned(),
            decision: DecisionFacts {
                release: release.id.as_str().to_owned(),
                milestone: decision.milestone.clone(),
                verdict: decision.verdict.as_str().to_owned(),
                summary: decision.summary.clone(),
                decision_digest: decision.digest.clone(),
            },
        },
    }
}

/// DSSE's pre-authentication encoding: `DSSEv1 SP len(type) SP type SP len(body) SP body`,
/// lengths as ASCII decimal byte counts. This is what is signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Signs `statement` into a DSSE envelope.
pub fn sign(statement: &Statement, key: &SigningKey) -> Envelope {
    let payload = serde_json::to_vec(statement).expect("a statement always serializes");
    let signature = key.sign(&pae(PAYLOAD_TYPE, &payload));
    Envelope {
        payload: BASE64.encode(&payload),
        payload_type: PAYLOAD_TYPE.to_owned(),
        signatures: vec![EnvelopeSignature {
            keyid: fingerprint(&key.verifying_key()),
            sig: BASE64.encode(signature.to_bytes()),
        }],
    }
}

/// The file form of an envelope: compact JSON on one line, ending in a newline.
pub fn encode(envelope: &Envelope) -> String {
    let mut line = serde_json::to_string(envelope).expect("an envelope always serializes");
    line.push('\n');
    line
}

/// Whether `text` looks like a DSSE envelope (a JSON object with a `payloadType`) rather
/// than a report, so a verifier can tell the two apart before parsing either.
pub fn looks_like_envelope(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "payloadType")]
        payload_type: Option<serde::de::IgnoredAny>,
    }
    let text = text.trim_start();
    text.starts_with('{')
        && serde_json::from_str::<Probe>(text.trim_end())
            .is_ok_and(|probe| probe.payload_type.is_some())
}

/// Verifies an envelope file against the trusted key: a signature whose key id is the key's
/// fingerprint (or empty) must verify over the PAE of the payload type and the payload as
/// given, before anything in the payload is read; then the payload must be an in-toto
/// Statement v1 with the VSA v1 predicate.
pub fn verify(text: &str, key: &VerifyingKey) -> Result<VerifiedAttestation, AttestationError> {
    let envelope: Envelope = serde_json::from_str(text.trim())
        .map_err(|error| AttestationError::Malformed(format!("not a DSSE envelope: {error}")))?;
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(AttestationError::Malformed(format!(
            "payloadType is '{}', expected '{PAYLOAD_TYPE}'",
            envelope.payload_type
        )));
    }
    let payload = BASE64
        .decode(envelope.payload.as_bytes())
        .map_err(|error| {
            AttestationError::Malformed(format!("payload is not standard base64: {error}"))
        })?;
    let expected_keyid = fingerprint(key);
    let candidates: Vec<&EnvelopeSignature> = envelope
        .signatures
        .iter()
        .filter(|signature| signature.keyid.is_empty() || signature.keyid == expected_keyid)
        .collect();
    if candidates.is_empty() {
        let keyids: Vec<&str> = envelope
            .signatures
            .iter()
            .map(|signature| signature.keyid.as_str())
            .collect();
        return Err(AttestationError::BadSignature(format!(
            "no signature by the expected key {expected_keyid}; signed by key ids [{}]",
            keyids.join(", ")
        )));
    }
    let message = pae(&envelope.payload_type, &payload);
    let verifies = |signature: &EnvelopeSignature| {
        BASE64
            .decode(signature.sig.as_bytes())
            .ok()
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .is_some_and(|sig| key.verify(&message, &sig).is_ok())
    };
    if !candidates.into_iter().any(verifies) {
        return Err(AttestationError::BadSignature(format!(
            "the signature by key {expected_keyid} does not match the payload: the statement or the signature was changed after signing"
        )));
    }
    let statement: Statement = serde_json::from_slice(&payload)
        .map_err(|error| AttestationError::WrongStatement(error.to_string()))?;
    if statement.statement_type != STATEMENT_TYPE {
        return Err(AttestationError::WrongStatement(format!(
            "_type is '{}', expected '{STATEMENT_TYPE}'",
            statement.statement_type
        )));
    }
    if statement.predicate_type != PREDICATE_TYPE {
        return Err(AttestationError::WrongStatement(format!(
            "predicateType is '{}', expected '{PREDICATE_TYPE}'",
            statement.predicate_type
        )));
    }
    Ok(VerifiedAttestation {
        fingerprint: expected_keyid,
        statement,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn verifier() -> VerifierInfo {
        VerifierInfo {
            public_key: key().verifying_key(),
            version: "0.1.0".into(),
        }
    }

    fn release() -> Release {
        let mut release = test_support::release();
        release.components = vec![
            Component {
                name: "driver".into(),
                version: "550.54.15".into(),
                artifact_uri: Some("https://artifacts.example/driver-550.54.15.run".into()),
                sha256: Some("AB".repeat(32)),
            },
            Component {
                name: "vbios".into(),
                version: "96.00.89.00.01".into(),
                artifact_uri: None,
                sha256: None,
            },
        ];
        release
    }

    fn decision(verdict: Verdict) -> Decision {
        Decision {
            release: release().id.as_str().to_owned(),
            milestone: "lab-qual".into(),
            verdict,
            summary: "all 5 rules passed".into(),
            rules: Vec::new(),
            digest: "cd".repeat(32),
            policy_version: "ef".repeat(32),
            evaluated_at: chrono::DateTime::parse_from_rfc3339("2026-03-01T12:30:00Z")
                .expect("a valid time")
                .into(),
        }
    }

    fn envelope(verdict: Verdict) -> String {
        encode(&sign(
            &statement(&release(), &decision(verdict), &verifier()),
            &key(),
        ))
    }

    #[test]
    fn pae_matches_the_dsse_specification_example() {
        // The DSSE protocol's worked example.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn a_passed_decision_is_a_vsa_statement_with_components_as_subjects() {
        let statement = statement(&release(), &decision(Verdict::Passed), &verifier());
        let json = serde_json::to_value(&statement).expect("serializes");
        let name_digest = sha256_hex(b"vbios=96.00.89.00.01");
        let fingerprint = fingerprint(&key().verifying_key());
        assert_eq!(
            json,
            serde_json::json!({
                "_type": "https://in-toto.io/Statement/v1",
                "subject": [
                    {
                        "name": "driver",
                        "uri": "https://artifacts.example/driver-550.54.15.run",
                        "digest": {"sha256": "ab".repeat(32)},
                        "annotations": {"version": "550.54.15"}
                    },
                    {
                        "name": "vbios=96.00.89.00.01",
                        "digest": {"sha256": name_digest},
                        "annotations": {"digestOf": "name", "version": "96.00.89.00.01"}
                    }
                ],
                "predicateType": "https://slsa.dev/verification_summary/v1",
                "predicate": {
                    "verifier": {
                        "id": format!("urn:tollgate:controller:{fingerprint}"),
                        "version": {"tollgate-controller": "0.1.0"}
                    },
                    "timeVerified": "2026-03-01T12:30:00Z",
                    "resourceUri": format!("urn:tollgate:release:{}", release().id.as_str()),
                    "policy": {
                        "uri": "urn:tollgate:gate:lab-qual",
                        "digest": {"sha256": "ef".repeat(32)}
                    },
                    "inputAttestations": [{
                        "name": "decision inputs",
                        "uri": format!("urn:tollgate:decision:{}:lab-qual", release().id.as_str()),
                        "digest": {"sha256": "cd".repeat(32)}
                    }],
                    "verificationResult": "PASSED",
                    "verifiedLevels": ["TOLLGATE_GATE_PASSED"],
                    "slsaVersion": "1.0",
                    "urn:tollgate:decision": {
                        "release": release().id.as_str(),
                        "milestone": "lab-qual",
                        "verdict": "passed",
                        "summary": "all 5 rules passed",
                        "decisionDigest": "cd".repeat(32)
                    }
                }
            })
        );
    }

    #[test]
    fn every_verdict_but_passed_is_failed() {
        for verdict in [Verdict::Failed, Verdict::Waiting, Verdict::Error] {
            let statement = statement(&release(), &decision(verdict), &verifier());
            assert_eq!(statement.predicate.verification_result, FAILED);
            assert_eq!(statement.predicate.verified_levels, vec![FAILED.to_owned()]);
            assert_eq!(statement.predicate.decision.verdict, verdict.as_str());
        }
    }

    #[test]
    fn a_signed_envelope_verifies_with_its_key() {
        let text = envelope(Verdict::Passed);
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1);
        assert!(looks_like_envelope(&text));
        let verified = verify(&text, &key().verifying_key()).expect("verifies");
        assert_eq!(verified.fingerprint, fingerprint(&key().verifying_key()));
        assert_eq!(
            verified.statement,
            statement(&release(), &decision(Verdict::Passed), &verifier())
        );
    }

    #[test]
    fn the_signature_covers_the_payload_bytes_as_given() {
        let envelope: Envelope = serde_json::from_str(&envelope(Verdict::Failed)).expect("json");
        let key = key().verifying_key();
        let message = pae(
            PAYLOAD_TYPE,
            &BASE64.decode(&envelope.payload).expect("base64"),
        );
        let sig = BASE64.decode(&envelope.signatures[0].sig).expect("base64");
        let sig = Signature::from_slice(&sig).expect("64 bytes");
        assert!(key.verify(&message, &sig).is_ok());
    }

    fn edited(text: &str, edit: impl FnOnce(&mut Envelope)) -> String {
        let mut envelope: Envelope = serde_json::from_str(text).expect("json");
        edit(&mut envelope);
        encode(&envelope)
    }

    #[test]
    fn an_edited_envelope_does_not_verify() {
        let text = envelope(Verdict::Failed);
        let key = key().verifying_key();
        let forged_result = edited(&text, |envelope| {
            let payload = String::from_utf8(BASE64.decode(&envelope.payload).expect("base64"))
                .expect("UTF-8");
            let payload = payload.replace("\"FAILED\"", "\"PASSED\"");
            envelope.payload = BASE64.encode(payload);
        });
        let flipped_payload_byte = edited(&text, |envelope| {
            let mut payload = BASE64.decode(&envelope.payload).expect("base64");
            payload[40] ^= 1;
            envelope.payload = BASE64.encode(payload);
        });
        let flipped_signature_bit = edited(&text, |envelope| {
            let mut sig = BASE64.decode(&envelope.signatures[0].sig).expect("base64");
            sig[10] ^= 1;
            envelope.signatures[0].sig = BASE64.encode(sig);
        });
        let other_type = edited(&text, |envelope| {
            envelope.payload_type = "application/json".into();
        });
        for forged in [forged_result, flipped_payload_byte, flipped_signature_bit] {
            assert_ne!(forged, text);
            let error = verify(&forged, &key).expect_err("an edited envelope must not verify");
            assert!(
                matches!(error, AttestationError::BadSignature(_)),
                "{error}"
            );
        }
        assert_eq!(
            verify(&other_type, &key),
            Err(AttestationError::Malformed(
                "payloadType is 'application/json', expected 'application/vnd.in-toto+json'".into()
            ))
        );
    }

    #[test]
    fn another_key_is_named() {
        let text = envelope(Verdict::Passed);
        let other = SigningKey::from_bytes(&[9; 32]).verifying_key();
        let error = verify(&text, &other).expect_err("another key");
        assert_eq!(
            error.to_string(),
            format!(
                "no signature by the expected key {}; signed by key ids [{}]",
                fingerprint(&other),
                fingerprint(&key().verifying_key())
            )
        );
        // An empty key id is only a missing hint: the signature is still checked.
        let anonymous = edited(&text, |envelope| envelope.signatures[0].keyid.clear());
        assert!(verify(&anonymous, &key().verifying_key()).is_ok());
        assert!(matches!(
            verify(&anonymous, &other),
            Err(AttestationError::BadSignature(_))
        ));
    }

    #[test]
    fn reports_are_not_envelopes() {
        assert!(!looks_like_envelope(
            "{\"release\":\"r1\",\"signature\":{}}"
        ));
        assert!(!looks_like_envelope("<html></html>"));
        assert!(matches!(
            verify("not json", &key().verifying_key()),
            Err(AttestationError::Malformed(_))
        ));
    }
}
