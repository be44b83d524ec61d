//! The node's identity: a key pair made here and kept in the state directory (mode 0600),
//! the client certificate the controller signed for it, and the enrollment that gets that
//! certificate once, with an operator's bootstrap token.
//!
//! Files in the state directory: `node.key` (the private key), `node.crt` (the certificate,
//! PEM). They are replaced together, the key first, each by a rename.

use anyhow::Context as _;
use std::path::{Path, PathBuf};
use tollgate_proto::v1;
use tollgate_proto::v1::agent_service_client::AgentServiceClient;
use tonic::transport::Channel;

/// The private key's file name in the state directory.
pub const KEY_FILE: &str = "node.key";
/// The certificate's file name in the state directory.
pub const CERT_FILE: &str = "node.crt";

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Identity {
    /// The node's certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The paths of the key and certificate in `state_dir`.
pub fn paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    (state_dir.join(KEY_FILE), state_dir.join(CERT_FILE))
}

/// The saved identity, if the node enrolled before.
pub fn load(state_dir: &Path) -> anyhow::Result<Option<Identity>> {
    let (key, cert) = paths(state_dir);
    if !cert.exists() {
        return Ok(None);
    }
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    Ok(Some(Identity {
        cert_pem: read(&cert)?,
        key_pem: read(&key)?,
    }))
}

/// When a certificate (PEM) starts and stops being valid.
pub fn validity(
    cert_pem: &str,
) -> anyhow::Result<(tollgate_domain::Timestamp, tollgate_domain::Timestamp)> {
    use rustls::pki_types::pem::PemObject as _;
    use x509_parser::prelude::FromDer as _;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .context("reading node.crt")?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der)
        .map_err(|error| anyhow::anyhow!("parsing node.crt: {error}"))?;
    let at = |seconds: i64| {
        chrono::DateTime::from_timestamp(seconds, 0)
            .ok_or_else(|| anyhow::anyhow!("node.crt has a validity out of range"))
    };
    Ok((
        at(cert.validity().not_before.timestamp())?,
        at(cert.validity().not_after.timestamp())?,
    ))
}

/// A fresh key pair and a certificate signing request naming `node`: the key (PEM) and the
/// request (PEM).
pub fn new_request(node: &str) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate().context("making the node's key pair")?;
    let mut params = rcgen::CertificateParams::new(vec![node.to_owned()])
        .with_context(|| format!("a certificate request for node {node}"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node);
    let csr = params
        .serialize_request(&key)
        .context("signing the certificate request")?;
    let csr_pem = csr.pem().context("encoding the certificate request")?;
    Ok((key.serialize_pem(), csr_pem))
}

/// Writes `text` to `path` through a temporary file renamed over it; `secret` files are
/// created with mode 0600.
fn replace(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Saves a new identity: the key, then the certificate.
pub fn save(state_dir: &Path, identity: &Identity) -> anyhow::Result<()> {
    let (key, cert) = paths(state_dir);
    replace(&key, &identity.key_pem, true)?;
    replace(&cert, &identity.cert_pem, false)
}

/// Enrolls the node once with the bootstrap token: makes the key pair, sends the request,
/// saves what the controller signed. A refusal says why (spent, expired, another node).
pub async fn enroll(
    channel: Channel,
    node: &str,
    bootstrap_token: &str,
    state_dir: &Path,
) -> anyhow::Result<Identity> {
    let (key_pem, csr_pem) = new_request(node)?;
    let request = v1::EnrollRequest {
        node_name: node.to_owned(),
        bootstrap_token: bootstrap_token.trim().to_owned(),
        csr_pem,
    };
    let response = AgentServiceClient::new(channel)
        .enroll(request)
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "the controller refused to enroll node {node}: {}",
                status.message()
            )
        })?
        .into_inner();
    let identity = Identity {
        cert_pem: response.certificate_pem,
        key_pem,
    };
    save(state_dir, &identity)?;
    tracing::info!(node, "enrolled: client certificate saved");
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_identity_keeps_its_key_private_and_loads_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(load(dir.path()).expect("nothing yet").is_none());
        let (key_pem, csr_pem) = new_request("n1").expect("a request");
        assert!(csr_pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let identity = Identity {
            cert_pem: "CERT".to_owned(),
            key_pem,
        };
        save(dir.path(), &identity).expect("saved");
        let (key, _) = paths(dir.path());
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = load(dir.path()).expect("loads").expect("saved before");
        assert_eq!(loaded.key_pem, identity.key_pem);
    }
}
