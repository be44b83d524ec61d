//! The lab certificate authority and what it signs: the controller's server certificate (when
//! none is given with `--tls-cert`) and, at enrollment, each node's client certificate. Also
//! the rustls server configuration the listener accepts TLS with.
//!
//! Files: a CA directory holds `ca.pem` (the certificate agents and the CLI trust, with
//! `--ca-file`) and `ca.key` (its private key, mode 0600). `tollgate-controller ca init` makes
//! one, or copies an existing CA into it.

use crate::clock::Clock as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tollgate_domain::Timestamp;

/// The CA certificate's file name in a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name in a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// How long a lab CA made by `ca init` is valid.
const CA_LIFETIME_DAYS: i64 = 3650;
/// How long a server certificate the controller makes for itself at start is valid.
const SERVER_LIFETIME_DAYS: i64 = 90;

/// What went wrong with a certificate, key or CA directory.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `ca init` would overwrite a CA.
    #[error(
        "{} already exists: pick another --dir, or remove it to make a new CA (every node \
         enrolled with the old one must then enroll again)",
        path.display()
    )]
    Exists {
        /// The file that exists.
        path: PathBuf,
    },
    /// A file holds no usable PEM certificate or key.
    #[error("{} is not a usable PEM {what}: {reason}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// rcgen refused to make or sign a certificate.
    #[error("{what}: {source}")]
    Sign {
        /// What was being made.
        what: String,
        /// Why.
        source: rcgen::Error,
    },
    /// The lab CA cannot be used to verify client certificates.
    #[error("the lab CA cannot verify client certificates: {0}")]
    ClientVerifier(String),
    /// rustls refused the certificate and key.
    #[error(
        "the TLS certificate and key do not work together: {0}; check that --tls-key belongs to --tls-cert"
    )]
    Tls(rustls::Error),
}

/// A certificate chain and its private key, PEM.
#[derive(Clone)]
pub struct CertifiedKey {
    /// The certificate (then any intermediates), PEM.
    pub cert_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A loaded certificate authority that can sign certificates.
pub struct Ca {
    cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The two files of a CA directory.
pub fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE))
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes `text` to a new file (never over an existing one); `secret` files get mode 0600.
fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let failed = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                PkiError::Exists {
                    path: path.to_owned(),
                }
            } else {
                failed(source)
            }
        })?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)
}

/// rcgen's time from ours.
fn offset_time(at: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(at.timestamp())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn sign_error(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Sign { what, source }
}

impl Ca {
    /// Makes a new lab CA in `dir` (created if missing): `ca.pem` and `ca.key` (mode 0600).
    /// Refuses to overwrite an existing CA.
    pub fn init(dir: &Path, now: Timestamp) -> Result<Self, PkiError> {
        let key = rcgen::KeyPair::generate().map_err(sign_error("making the CA key"))?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Tollgate lab CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = offset_time(now - chrono::Duration::minutes(5));
        params.not_after = offset_time(now + chrono::Duration::days(CA_LIFETIME_DAYS));
        let cert = params
            .self_signed(&key)
            .map_err(sign_error("making the CA certificate"))?;
        Self::store(dir, &cert.pem(), &key.serialize_pem())
    }

    /// Copies an existing CA (certificate and key files) into `dir`, after checking that it
    /// loads and can sign.
    pub fn import(dir: &Path, cert: &Path, key: &Path) -> Result<Self, PkiError> {
        let loaded = Self::load(cert, key)?;
        Self::store(dir, &loaded.cert_pem, &read(key)?)
    }

    fn store(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let (cert_path, key_path) = ca_paths(dir);
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(PkiError::Exists { path: path.clone() });
            }
        }
        write_new(&key_path, key_pem, true)?;
        write_new(&cert_path, cert_pem, false)?;
        Self::from_pem(cert_pem, key_pem, &cert_path, &key_path)
    }

    /// Loads the CA of a CA directory.
    pub fn load_dir(dir: &Path) -> Result<Self, PkiError> {
        let (cert, key) = ca_paths(dir);
        Self::load(&cert, &key)
    }

    /// Loads a CA from its certificate and key files.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, PkiError> {
        Self::from_pem(&read(cert)?, &read(key)?, cert, key)
    }

    fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, PkiError> {
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(|error| PkiError::BadPem {
            path: key_path.to_owned(),
            what: "private key",
            reason: error.to_string(),
        })?;
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(cert_pem, key).map_err(|error| PkiError::BadPem {
                path: cert_path.to_owned(),
                what: "CA certificate",
                reason: error.to_string(),
            })?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    /// The CA certificate, PEM: what clients trust with `--ca-file`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `names` (host names or IP addresses), signed by this CA, with
    /// a fresh key.
    pub fn server_certificate(
        &self,
        names: &[String],
        now: Timestamp,
    ) -> Result<CertifiedKey, PkiError> {
        let key = rcgen::KeyPair::generate().map_err(sign_error("making the server key"))?;
        let mut params = rcgen::CertificateParams::new(names.to_vec())
            .map_err(sign_error(format!("server names {names:?}")))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tollgate-controller");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = offset_time(now - chrono::Duration::minutes(5));
        params.not_after = offset_time(now + chrono::Duration::days(SERVER_LIFETIME_DAYS));
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(sign_error("signing the server certificate"))?;
        Ok(CertifiedKey {
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Makes a lab CA in `dir` at the system clock's time (for `ca init` and the demo).
pub fn init_ca_now(dir: &Path) -> Result<Ca, PkiError> {
    Ca::init(dir, crate::clock::SystemClock.now())
}

/// Parses every certificate of a PEM text.
pub fn parse_certificates(
    pem: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bad = |reason: String| PkiError::BadPem {
        path: path.to_owned(),
        what: "certificate",
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| bad(error.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".to_owned()));
    }
    Ok(certs)
}

/// The rustls configuration the listener accepts TLS with: `identity` is the server's
/// certificate chain and key; HTTP/2 is negotiated by ALPN (tonic clients insist on it).
/// With `client_ca` (PEM) clients may present a certificate that CA signed (agents do;
/// managers, who use API tokens, need not); one it did not sign fails the handshake.
pub fn server_config(
    identity: &CertifiedKey,
    cert_path: &Path,
    key_path: &Path,
    client_ca: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let certs = parse_certificates(&identity.cert_pem, cert_path)?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).map_err(|error| {
        PkiError::BadPem {
            path: key_path.to_owned(),
            what: "private key",
            reason: error.to_string(),
        }
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(PkiError::Tls)?;
    let builder = match client_ca {
        Some(ca_pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in parse_certificates(ca_pem, Path::new(CA_CERT_FILE))? {
                roots.add(cert).map_err(PkiError::Tls)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|error| PkiError::ClientVerifier(error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(PkiError::Tls)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A node's client certificate as signed.
#[derive(Clone, Debug)]
pub struct SignedNode {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its serial number, hex.
    pub serial: String,
    /// When it expires.
    pub not_after: Timestamp,
}

impl Ca {
    /// Signs a client certificate for exactly `node` (CN and a DNS SAN naming it) over the
    /// public key of `csr_pem`, valid for `lifetime` from `now`. Whatever names the request
    /// asks for are ignored: the node's identity is what the controller decided.
    pub fn sign_node(
        &self,
        node: &str,
        csr_pem: &str,
        now: Timestamp,
        lifetime: std::time::Duration,
    ) -> Result<SignedNode, PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|error| {
            PkiError::BadPem {
                path: PathBuf::from("csr_pem"),
                what: "certificate signing request",
                reason: error.to_string(),
            }
        })?;
        let mut params = rcgen::CertificateParams::new(vec![node.to_owned()])
            .map_err(sign_error(format!("node name {node}")))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let mut serial: [u8; 16] = rand::random();
        // Positive and without a leading zero byte, so DER keeps all 16 bytes as they are.
        serial[0] = (serial[0] & 0x7f).max(1);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let not_after =
            now + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::days(30));
        // Not back-dated: the agent renews at a fraction of not_after - not_before.
        params.not_before = offset_time(now);
        params.not_after = offset_time(not_after);
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(sign_error(format!(
                "signing the certificate of node {node}"
            )))?;
        Ok(SignedNode {
            cert_pem: cert.pem(),
            serial: hex::encode(serial),
            not_after: chrono::DateTime::from_timestamp(not_after.timestamp(), 0)
                .unwrap_or(not_after),
        })
    }
}

/// What a verified client certificate says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The node it names (its CN).
    pub node: tollgate_domain::NodeId,
    /// Its serial number, hex.
    pub serial: String,
    /// When it expires.
    pub not_after: Timestamp,
}

/// Reads a client certificate rustls verified against the lab CA; `None` when it names no
/// node.
pub fn peer_certificate(der: &[u8]) -> Option<PeerCertificate> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let node = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    let not_after = chrono::DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)?;
    Some(PeerCertificate {
        node: tollgate_domain::NodeId::new(node),
        serial: hex::encode(cert.raw_serial()),
        not_after,
    })
}

/// The serial numbers of revoked node certificates: loaded from the store at start, added to
/// on every revoke; the listener checks them on connect and the agent service on every call.
#[derive(Debug, Default)]
pub struct Revocations(std::sync::RwLock<std::collections::HashSet<String>>);

impl Revocations {
    /// Adds serials; returns how many were not known yet.
    pub fn add(&self, serials: impl IntoIterator<Item = String>) -> usize {
        let mut known = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        serials
            .into_iter()
            .filter(|serial| known.insert(serial.clone()))
            .count()
    }

    /// Whether the certificate with this serial was revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(serial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_init_writes_a_private_key_and_refuses_to_overwrite() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = init_ca_now(dir.path()).expect("a new CA");
        let (cert, key) = ca_paths(dir.path());
        let mode = std::fs::metadata(&key)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the CA key is readable by its owner only"
        );
        assert_eq!(std::fs::read_to_string(&cert).expect("cert"), ca.cert_pem());
        let again = init_ca_now(dir.path()).expect_err("a second init must refuse");
        assert!(matches!(again, PkiError::Exists { .. }), "{again}");
        Ca::load_dir(dir.path()).expect("the CA loads back");
    }

    #[test]
    fn a_server_certificate_chains_to_its_ca_and_loads_into_rustls() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = init_ca_now(dir.path()).expect("a new CA");
        let identity = ca
            .server_certificate(
                &["127.0.0.1".to_owned(), "localhost".to_owned()],
                crate::clock::SystemClock.now(),
            )
            .expect("server certificate");
        let certs = parse_certificates(&identity.cert_pem, Path::new("server.pem")).expect("pem");
        assert_eq!(certs.len(), 2, "the server certificate, then the CA");
        server_config(
            &identity,
            Path::new("server.pem"),
            Path::new("server.key"),
            None,
        )
        .expect("rustls takes it");
        server_config(
            &identity,
            Path::new("server.pem"),
            Path::new("server.key"),
            Some(ca.cert_pem()),
        )
        .expect("rustls takes it, asking for client certificates");
    }
}
