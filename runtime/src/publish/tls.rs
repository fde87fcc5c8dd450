//! The publisher's TLS settings: TLS 1.3 and 1.2 only, ring's cipher suites
//! (all ECDHE or TLS 1.3, so every session has forward secrecy), the broker
//! verified against the configured CA bundle only, and optional client
//! authentication with the gateway's own certificate and key.
//!
//! Files are read anew for every connection attempt, so replacing them on
//! disk takes effect at the next reconnect.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate file cannot be read or parsed.
    #[error("{}: cannot read certificates: {message}", path.display())]
    Certificates {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A certificate file holds no certificate.
    #[error("{}: no certificate found (expected PEM \"CERTIFICATE\" blocks)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The private key cannot be read or parsed.
    #[error("{}: cannot read private key: {message}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// Files that make up the gateway's TLS identity and trust.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA bundle the broker's certificate is checked against.
    pub ca: PathBuf,
    /// This gateway's client certificate.
    pub client_cert: Option<PathBuf>,
    /// Its private key.
    pub client_key: Option<PathBuf>,
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificates {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Builds a client config from the files as they are on disk now.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&files.ca)? {
        roots.add(cert).map_err(|e| TlsError::Certificates {
            path: files.ca.clone(),
            message: e.to_string(),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&files.client_cert, &files.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
                path: key.clone(),
                message: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Setup(format!("client certificate and key: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// When the first certificate in the PEM file at `path` stops being valid,
/// in seconds since the Unix epoch (`None` if it cannot be read).
pub fn not_after(path: &Path) -> Option<i64> {
    let cert = read_certs(path).ok()?.into_iter().next()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificates_expiry_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::dev::certs::DevCa::new(dir.path(), "ca").unwrap();
        let cert = ca
            .issue_valid_for(
                "short",
                &["127.0.0.1"],
                std::time::Duration::from_secs(3 * 86_400),
            )
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let expiry = not_after(&cert.cert).unwrap();
        assert!((expiry - now - 3 * 86_400).abs() < 120, "{expiry} vs {now}");
        assert!(not_after(&dir.path().join("missing.pem")).is_none());
    }
}
