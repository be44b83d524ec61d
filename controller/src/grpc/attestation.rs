//! `ReportService.RenderAttestation`: the decision of a release at a milestone, evaluated now
//! as a report would show it, as a signed in-toto verification summary. The domain builds and
//! signs the statement (`tollgate_domain::attestation`); this handler loads and evaluates.

use super::status::no_gate;
use super::{load_release, resolve_milestone};
use crate::gates::evaluate_now;
use crate::shared::Shared;
use ed25519_dalek::SigningKey;
use tollgate_domain::attestation::{self, VerifierInfo};
use tollgate_proto::v1 as proto;
use tonic::Status;

/// Evaluates the gate of `request`'s release at its milestone (storing the decision, as every
/// evaluation does) and returns that decision's attestation signed with `key`.
pub async fn render(
    shared: &Shared,
    key: &SigningKey,
    request: proto::RenderAttestationRequest,
) -> Result<proto::Attestation, Status> {
    let proto::RenderAttestationRequest { release, milestone } = request;
    let release = load_release(shared, &release).await?;
    let milestone = resolve_milestone(&release, &milestone)?;
    let evaluated = evaluate_now(shared, &release, &milestone)
        .await?
        .ok_or_else(|| no_gate(&milestone))?;
    let verifier = VerifierInfo {
        public_key: key.verifying_key(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let statement = attestation::statement(&release, &evaluated.decision, &verifier);
    let envelope = attestation::sign(&statement, key);
    tracing::info!(
        release = %release.id,
        milestone,
        digest = evaluated.decision.digest,
        result = statement.predicate.verification_result,
        "attestation rendered"
    );
    Ok(proto::Attestation {
        envelope: attestation::encode(&envelope).into_bytes(),
        decision_digest: evaluated.decision.digest.clone(),
        verification_result: statement.predicate.verification_result,
        file_extension: attestation::FILE_EXTENSION.to_owned(),
    })
}
