//! The agent's TLS: a connector that trusts `--ca-file` and presents the node's current
//! certificate, read at every new connection. A renewed certificate is used from the next
//! connection on, while the open one (and the job it serves) goes on undisturbed.

use crate::identity::Identity;
use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::{Arc, RwLock};

/// The CA to trust and the identity to present; the identity is replaced on renewal.
pub struct TlsSettings {
    ca_pem: Vec<u8>,
    config: RwLock<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings").finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Trusts `ca_pem`, presenting `identity` when there is one.
    pub fn new(ca_pem: Vec<u8>, identity: Option<&Identity>) -> anyhow::Result<Arc<Self>> {
        let config = client_config(&ca_pem, identity)?;
        Ok(Arc::new(Self {
            ca_pem,
            config: RwLock::new(config),
        }))
    }

    /// Presents `identity` on every connection from now on.
    pub fn set_identity(&self, identity: &Identity) -> anyhow::Result<()> {
        let config = client_config(&self.ca_pem, Some(identity))?;
        *self
            .config
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
        Ok(())
    }

    /// The client configuration of the moment (the current certificate).
    pub(super) fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn client_config(
    ca_pem: &[u8],
    identity: Option<&Identity>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.context("reading --ca-file")?)
            .context("trusting --ca-file")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => {
            let chain = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .context("reading node.crt")?;
            let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
                .context("reading node.key")?;
            builder
                .with_client_auth_cert(chain, key)
                .context("node.key does not belong to node.crt")?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
