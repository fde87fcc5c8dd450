//! Why a connection attempt failed, said plainly: which side refused what,
//! and whether it is an authorization failure (a certificate or credentials
//! the broker will keep refusing until someone acts) or a network problem
//! that may heal by itself.

use super::link::{LinkError, Refusal};
use rustls::{AlertDescription, CertificateError};

/// What kind of failure, for logs and (later) telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The broker's certificate or TLS parameters are not acceptable here.
    Tls,
    /// The broker refused this gateway's certificate or credentials.
    Authorization,
    /// Anything else: unreachable, reset, timed out.
    Network,
}

impl FailureKind {
    /// As logged and reported: `tls`, `authorization` or `network`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Tls => "tls",
            FailureKind::Authorization => "authorization",
            FailureKind::Network => "network",
        }
    }
}

/// The rustls error inside a connection error, if there is one. It may sit
/// several levels down (a TLS alert read while waiting for CONNACK arrives as
/// an MQTT state error holding an I/O error holding the rustls error), and an
/// `io::Error` hides its inner error from `source()`, so each level is
/// checked both ways.
fn rustls_error(e: &LinkError) -> Option<&rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(t) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(t);
        }
        current = err.source();
    }
    None
}

/// The I/O error inside a connection error, if there is one.
fn io_error(e: &LinkError) -> Option<&std::io::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        current = err.source();
    }
    None
}

/// A one-line explanation of `e` for a connection to `host`, and its kind.
pub fn explain(e: &LinkError, host: &str) -> (FailureKind, String) {
    use FailureKind::{Authorization, Network, Tls};
    match e.refusal() {
        Some(Refusal::Authorization(code)) => {
            return (
                Authorization,
                format!("the broker refused this gateway's credentials: {code}"),
            );
        }
        Some(Refusal::Other(code)) => {
            return (
                Network,
                format!("the broker refused the connection: {code}"),
            );
        }
        None => {}
    }
    if e.went_silent() {
        return (
            Network,
            "the link went silent: no answer to a keep-alive ping (or writes stopped draining); reconnecting".to_string(),
        );
    }
    let Some(tls) = rustls_error(e) else {
        let text = match io_error(e) {
            Some(io) => format!("network: {io}"),
            None => e.to_string(),
        };
        return (Network, text);
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => {
            let why = match cert {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "has expired".to_string()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "is not valid yet (check the gateway's clock)".to_string()
                }
                CertificateError::UnknownIssuer => {
                    "is not signed by a CA in ca_file".to_string()
                }
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    format!("is not valid for host {host:?}")
                }
                CertificateError::Revoked => "is revoked".to_string(),
                other => format!("was refused ({other:?})"),
            };
            (Tls, format!("TLS: the broker's certificate {why}"))
        }
        rustls::Error::PeerIncompatible(what) => (
            Tls,
            format!("TLS: the broker offers nothing this gateway accepts (TLS 1.2 or 1.3 with forward-secret suites only): {what:?}"),
        ),
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::ProtocolVersion => (
                Tls,
                "TLS: the broker refused the protocol version (this gateway speaks TLS 1.2 and 1.3 only)".to_string(),
            ),
            AlertDescription::HandshakeFailure | AlertDescription::InsufficientSecurity => (
                Tls,
                "TLS: no cipher suite in common (this gateway offers forward-secret ECDHE suites only)".to_string(),
            ),
            AlertDescription::BadCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied => (
                Authorization,
                format!("TLS: the broker refused this gateway's client certificate ({alert:?})"),
            ),
            other => (Tls, format!("TLS: the broker sent alert {other:?}")),
        },
        other => (Tls, format!("TLS: {other}")),
    }
}
