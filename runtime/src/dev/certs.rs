//! A throwaway PKI for the demo and the tests: one CA, a server certificate
//! for loopback, and client certificates for gateways and subscribers.
//! Files are written world-readable on purpose, so a broker that drops
//! privileges (mosquitto started as root) can still read them; never use
//! these for anything but local testing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};

/// Why the PKI could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A certificate or key could not be generated.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("{}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The certificate's serial number (for revocation lists).
    pub serial: u64,
}

/// A CA that can issue more certificates.
pub struct DevCa {
    dir: PathBuf,
    params: CertificateParams,
    key: KeyPair,
    /// Serial number of the next certificate issued.
    next_serial: AtomicU64,
    /// The CA certificate, PEM.
    pub cert: PathBuf,
}

impl DevCa {
    /// Makes a new CA named `name` and writes `{dir}/{name}.pem`.
    pub fn new(dir: &Path, name: &str) -> Result<DevCa, CertError> {
        write_dir(dir)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let path = dir.join(format!("{name}.pem"));
        write_file(&path, &cert.pem())?;
        Ok(DevCa {
            dir: dir.to_path_buf(),
            params,
            key,
            next_serial: AtomicU64::new(1000),
            cert: path,
        })
    }

    /// Writes `{dir}/{file_stem}.crl.pem`: a revocation list of this CA
    /// revoking `serials`, valid for a day.
    pub fn revocation_list(&self, file_stem: &str, serials: &[u64]) -> Result<PathBuf, CertError> {
        let now = time_now();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(5),
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&Issuer::from_params(&self.params, &self.key))?;
        let path = self.dir.join(format!("{file_stem}.crl.pem"));
        write_file(&path, &crl.pem()?)?;
        Ok(path)
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, file_stem: &str, names: &[&str]) -> Result<CertFiles, CertError> {
        self.issue(Leaf::server(file_stem, names))
    }

    /// A server certificate for `names` for an existing key (PKCS#8 PEM;
    /// e.g. an RSA key made elsewhere).
    pub fn server_for_key(
        &self,
        file_stem: &str,
        names: &[&str],
        key_pem: &str,
    ) -> Result<CertFiles, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        self.issue(Leaf {
            key: Some(key),
            ..Leaf::server(file_stem, names)
        })
    }

    /// A client certificate with common name `cn`.
    pub fn client(&self, file_stem: &str, cn: &str) -> Result<CertFiles, CertError> {
        self.issue(Leaf::client(file_stem, cn))
    }

    /// A client certificate with common name `cn`, valid from now for `validity`.
    pub fn client_valid_for(
        &self,
        file_stem: &str,
        cn: &str,
        validity: Duration,
    ) -> Result<CertFiles, CertError> {
        self.issue(Leaf {
            validity: Some(validity),
            ..Leaf::client(file_stem, cn)
        })
    }

    /// A server certificate valid for `names` from now for `validity`.
    pub fn issue_valid_for(
        &self,
        file_stem: &str,
        names: &[&str],
        validity: Duration,
    ) -> Result<CertFiles, CertError> {
        self.issue(Leaf {
            validity: Some(validity),
            ..Leaf::server(file_stem, names)
        })
    }

    fn issue(&self, leaf: Leaf<'_>) -> Result<CertFiles, CertError> {
        let key = match leaf.key {
            Some(key) => key,
            None => KeyPair::generate()?,
        };
        let names: Vec<String> = leaf.names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, leaf.cn.unwrap_or(leaf.file_stem));
        params.extended_key_usages = vec![leaf.usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        params.serial_number = Some(SerialNumber::from(serial));
        if let Some(validity) = leaf.validity {
            let now = time_now();
            params.not_before = now - time::Duration::minutes(5);
            params.not_after =
                now + time::Duration::try_from(validity).unwrap_or(time::Duration::ZERO);
        }
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        let file_stem = leaf.file_stem;
        let files = CertFiles {
            cert: self.dir.join(format!("{file_stem}.pem")),
            key: self.dir.join(format!("{file_stem}.key")),
            serial,
        };
        write_file(&files.cert, &cert.pem())?;
        write_file(&files.key, &key.serialize_pem())?;
        Ok(files)
    }
}

/// What a leaf certificate is issued for.
struct Leaf<'a> {
    /// Names its files `{file_stem}.pem` and `.key`; its common name unless
    /// `cn` is given.
    file_stem: &'a str,
    /// Subject alternative names (DNS names or IP addresses).
    names: &'a [&'a str],
    usage: ExtendedKeyUsagePurpose,
    cn: Option<&'a str>,
    /// An existing key; a new one is made if `None`.
    key: Option<KeyPair>,
    /// Valid from now for this long; rcgen's default span if `None`.
    validity: Option<Duration>,
}

impl<'a> Leaf<'a> {
    fn server(file_stem: &'a str, names: &'a [&'a str]) -> Leaf<'a> {
        Leaf {
            file_stem,
            names,
            usage: ExtendedKeyUsagePurpose::ServerAuth,
            cn: None,
            key: None,
            validity: None,
        }
    }

    fn client(file_stem: &'a str, cn: &'a str) -> Leaf<'a> {
        Leaf {
            file_stem,
            names: &[],
            usage: ExtendedKeyUsagePurpose::ClientAuth,
            cn: Some(cn),
            key: None,
            validity: None,
        }
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn write_dir(dir: &Path) -> Result<(), CertError> {
    let err = |source| CertError::Write {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    set_mode(dir, 0o755).map_err(err)
}

fn write_file(path: &Path, text: &str) -> Result<(), CertError> {
    let err = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(path, text).map_err(err)?;
    set_mode(path, 0o644).map_err(err)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}
