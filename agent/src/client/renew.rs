//! Certificate rotation: at a jittered point between 70 % and 90 % of its certificate's
//! lifetime the agent makes a new key, sends a CSR over its current mTLS identity
//! (`RenewCertificate`), saves what comes back and presents it from the next connection on.
//! The open connection, and the job it serves, are not touched.

use super::tls::TlsSettings;
use super::until_shutdown;
use crate::identity;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tollgate_proto::v1;
use tollgate_proto::v1::agent_service_client::AgentServiceClient;
use tonic::transport::Channel;

/// How long after a failed renewal the agent tries again.
const RETRY: Duration = Duration::from_secs(5);

/// When to renew a certificate valid from `not_before` to `not_after`: at `fraction` (drawn
/// from 0.7..0.9) of its lifetime.
pub(crate) fn renew_at(
    not_before: tollgate_domain::Timestamp,
    not_after: tollgate_domain::Timestamp,
    fraction: f64,
) -> tollgate_domain::Timestamp {
    let lifetime = (not_after - not_before).num_milliseconds().max(0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    let offset = (lifetime as f64 * fraction.clamp(0.0, 1.0)) as i64;
    not_before + chrono::Duration::milliseconds(offset)
}

/// Renews the node's certificate whenever it is due, until shutdown.
pub(super) async fn renew_loop(
    channel: Channel,
    tls: Arc<TlsSettings>,
    node: String,
    state_dir: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let wait = match due_in(&state_dir) {
            Ok(Some(wait)) => wait,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "cannot read the node certificate's validity; not renewing it");
                return;
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = until_shutdown(&mut shutdown) => return,
        }
        match renew(channel.clone(), &node, &state_dir).await {
            Ok(renewed) => {
                if let Err(error) = tls.set_identity(&renewed) {
                    tracing::error!(%error, "the renewed certificate cannot be used");
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?RETRY, "renewing the node certificate failed");
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => {}
                    () = until_shutdown(&mut shutdown) => return,
                }
            }
        }
    }
}

/// How long until the saved certificate is due for renewal; `None` without one.
fn due_in(state_dir: &std::path::Path) -> anyhow::Result<Option<Duration>> {
    let Some(saved) = identity::load(state_dir)? else {
        return Ok(None);
    };
    let (not_before, not_after) = identity::validity(&saved.cert_pem)?;
    let at = renew_at(not_before, not_after, rand::random_range(0.7..0.9));
    Ok(Some(
        (at - crate::clock::now())
            .to_std()
            .unwrap_or(Duration::ZERO),
    ))
}

async fn renew(
    channel: Channel,
    node: &str,
    state_dir: &std::path::Path,
) -> anyhow::Result<identity::Identity> {
    let (key_pem, csr_pem) = identity::new_request(node)?;
    let response = AgentServiceClient::new(channel)
        .renew_certificate(v1::RenewCertificateRequest { csr_pem })
        .await
        .map_err(|status| anyhow::anyhow!("the controller refused: {}", status.message()))?
        .into_inner();
    let renewed = identity::Identity {
        cert_pem: response.certificate_pem,
        key_pem,
    };
    identity::save(state_dir, &renewed)?;
    tracing::info!(node, "node certificate renewed");
    Ok(renewed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    #[test]
    fn renewal_falls_at_the_drawn_fraction_of_the_lifetime() {
        let start = chrono::Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("a time");
        let end = start + chrono::Duration::seconds(100);
        assert_eq!(
            renew_at(start, end, 0.7),
            start + chrono::Duration::seconds(70)
        );
        assert_eq!(
            renew_at(start, end, 0.9),
            start + chrono::Duration::seconds(90)
        );
    }
}
