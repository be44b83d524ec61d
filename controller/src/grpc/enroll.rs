//! Enrollment at the gRPC edge: `NodeService.EnrollNode` makes a one-time bootstrap token
//! (stored hashed, shown once, audited); `AgentService.Enroll` spends it: the domain decides
//! (`tollgate_domain::enrollment::check`), the lab CA signs the agent's CSR for exactly the
//! token's node, and the store spends the token with the certificate and audit entry in one
//! transaction. Every refusal is logged and audited.

use super::auth::{generate_token, hash_token};
use super::status::{FieldErrors, invalid_fields};
use crate::pki::PkiError;
use crate::shared::Shared;
use crate::store::{AuditNote, IssuedCertificate, StoreError};
use tollgate_domain::enrollment::{self, BootstrapToken, EnrollRefusal, MAX_TOKEN_TTL};
use tollgate_domain::{NodeId, limits};
use tollgate_proto::v1 as proto;
use tollgate_wire::time::timestamp_to_proto;
use tonic::Status;

/// Why an enrollment failed other than a refused token.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The token may not be spent.
    #[error(transparent)]
    Refused(#[from] EnrollRefusal),
    /// The controller runs without a lab CA and cannot sign.
    #[error(
        "this controller has no lab CA to sign node certificates: start it with --ca-dir DIR \
         (make one with `tollgate-controller ca init --dir DIR`)"
    )]
    NoCa,
    /// The CSR could not be signed.
    #[error("the certificate request cannot be signed: {0}")]
    BadRequest(#[source] PkiError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `EnrollNode`: a one-time token for `node_name` as `actor`.
pub async fn enroll_node(
    shared: &Shared,
    actor: &str,
    request: proto::EnrollNodeRequest,
) -> Result<proto::EnrollNodeResponse, Status> {
    let proto::EnrollNodeRequest {
        node_name,
        labels,
        ttl_seconds,
    } = request;
    let mut errors = FieldErrors::new();
    if let Some(message) = tollgate_domain::release::name_problem("node", &node_name) {
        errors.add("node_name", message);
    }
    let labels: tollgate_domain::fleet::Labels = labels.into_iter().collect();
    super::convert::check_labels(&mut errors, "labels", &labels);
    if ttl_seconds == 0 || ttl_seconds > MAX_TOKEN_TTL.as_secs() {
        errors.add(
            "ttl_seconds",
            format!(
                "{ttl_seconds} is not between 1 and {} (a week); give --expires 1h, say",
                MAX_TOKEN_TTL.as_secs()
            ),
        );
    }
    errors.finish(()).map_err(invalid_fields)?;
    let now = shared.now();
    let ttl = chrono::Duration::seconds(i64::try_from(ttl_seconds).unwrap_or(i64::MAX));
    let token = BootstrapToken {
        node: NodeId::new(node_name),
        labels,
        expires_at: now + ttl,
        spent_at: None,
    };
    let secret = generate_token();
    let note = AuditNote::new(
        now,
        actor,
        "node.enroll-token",
        format!("node/{}", token.node),
    )
    .details(serde_json::json!({
        "labels": token.labels,
        "expires_at": token.expires_at.to_rfc3339(),
    }));
    shared
        .store
        .create_bootstrap_token(&hash_token(&secret), &token, &note)
        .await?;
    tracing::info!(node = %token.node, expires_at = %token.expires_at, actor, "bootstrap token created");
    Ok(proto::EnrollNodeResponse {
        node_name: token.node.to_string(),
        bootstrap_token: secret,
        expires_at: Some(timestamp_to_proto(token.expires_at)),
    })
}

/// `Enroll`: spends the token and signs the CSR; refusals are logged and audited before they
/// are answered.
pub async fn enroll(
    shared: &Shared,
    request: proto::EnrollRequest,
) -> Result<proto::EnrollResponse, Status> {
    let proto::EnrollRequest {
        node_name,
        bootstrap_token,
        csr_pem,
    } = request;
    let mut errors = FieldErrors::new();
    if let Some(message) = tollgate_domain::release::name_problem("node", &node_name) {
        errors.add("node_name", message);
    }
    errors.text("bootstrap_token", &limits::TOKEN, &bootstrap_token);
    errors.text("csr_pem", &limits::CSR, &csr_pem);
    errors.finish(()).map_err(invalid_fields)?;
    let node = NodeId::new(node_name);
    match spend(shared, &node, &bootstrap_token, &csr_pem).await {
        Ok(response) => Ok(response),
        Err(error) => {
            tracing::warn!(node = %node, %error, "enrollment refused");
            if matches!(error, EnrollError::Refused(_)) {
                let note = AuditNote::new(
                    shared.now(),
                    format!("node/{node}"),
                    "node.enroll-refused",
                    format!("node/{node}"),
                )
                .details(serde_json::json!({ "reason": error.to_string() }));
                if let Err(audit_error) = shared.store.append_audit(&note).await {
                    tracing::error!(node = %node, %audit_error, "could not audit a refused enrollment");
                }
            }
            Err(error.into())
        }
    }
}

async fn spend(
    shared: &Shared,
    node: &NodeId,
    secret: &str,
    csr_pem: &str,
) -> Result<proto::EnrollResponse, EnrollError> {
    let ca = shared.config.ca.as_ref().ok_or(EnrollError::NoCa)?;
    let token_hash = hash_token(secret);
    let token = shared.store.bootstrap_token(&token_hash).await?;
    let now = shared.now();
    enrollment::check(token.as_ref(), node, now)?;
    let labels = token.map(|token| token.labels).unwrap_or_default();
    let Issued {
        answer,
        certificate,
        note,
    } = issue(shared, ca, node, csr_pem, now, "node.enroll")?;
    match shared
        .store
        .spend_bootstrap_token(&token_hash, &labels, &certificate, &note)
        .await
    {
        Ok(()) => {}
        // Another agent spent it between the check and now: it is spent, as for a reuse.
        Err(StoreError::Conflict { .. }) => {
            return Err(EnrollRefusal::Spent {
                node: node.clone(),
                at: now,
            }
            .into());
        }
        Err(error) => return Err(error.into()),
    }
    tracing::info!(node = %node, serial = certificate.serial, "node enrolled");
    Ok(answer)
}

/// A certificate the lab CA signed for a node: the agent's answer, the row recording it and
/// the audit entry of the `action` that issued it.
struct Issued {
    answer: proto::EnrollResponse,
    certificate: IssuedCertificate,
    note: AuditNote,
}

/// Signs `csr_pem` as `node`'s client certificate, valid for the configured lifetime from now.
fn issue(
    shared: &Shared,
    ca: &crate::pki::Ca,
    node: &NodeId,
    csr_pem: &str,
    now: tollgate_domain::Timestamp,
    action: &str,
) -> Result<Issued, EnrollError> {
    let signed = ca
        .sign_node(
            node.as_str(),
            csr_pem,
            now,
            shared.config.node_certificate_lifetime,
        )
        .map_err(EnrollError::BadRequest)?;
    let note = AuditNote::new(now, format!("node/{node}"), action, format!("node/{node}")).details(
        serde_json::json!({
            "serial": signed.serial,
            "not_after": signed.not_after.to_rfc3339(),
        }),
    );
    Ok(Issued {
        certificate: IssuedCertificate {
            serial: signed.serial,
            node: node.clone(),
            issued_at: now,
            not_after: signed.not_after,
        },
        note,
        answer: proto::EnrollResponse {
            certificate_pem: signed.cert_pem,
            ca_pem: ca.cert_pem().to_owned(),
            not_after: Some(timestamp_to_proto(signed.not_after)),
        },
    })
}

/// `RenewCertificate`: a new certificate for `node`, the one the caller's current (verified,
/// not revoked) certificate names, over the public key of its CSR; recorded and audited.
pub async fn renew(
    shared: &Shared,
    node: &NodeId,
    csr_pem: &str,
) -> Result<proto::EnrollResponse, Status> {
    let mut errors = FieldErrors::new();
    errors.text("csr_pem", &limits::CSR, csr_pem);
    errors.finish(()).map_err(invalid_fields)?;
    let ca = shared.config.ca.as_ref().ok_or(EnrollError::NoCa)?;
    let Issued {
        answer,
        certificate,
        note,
    } = issue(shared, ca, node, csr_pem, shared.now(), "node.renew")?;
    shared
        .store
        .record_certificate(&certificate, &note)
        .await
        .map_err(EnrollError::from)?;
    tracing::info!(node = %node, serial = certificate.serial, "node certificate renewed");
    Ok(answer)
}
