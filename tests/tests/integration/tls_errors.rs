//! A broker that cannot be trusted, or that refuses this gateway, is named
//! plainly in the log: which certificate, what is wrong with it, and whether
//! it is an authorization failure. Readings keep being captured meanwhile.

use std::path::Path;
use std::time::Duration;

use ferrule::dev::certs::{CertFiles, DevCa};
use ferrule_tests::net::{OpensslServer, rsa_server_cert};
use ferrule_tests::{Mosquitto, Pki, free_port, start_ferrule, tempdir};

use crate::common::sim_config;

/// Runs ferrule against a broker with `server` certificate; returns its log
/// once it contains `expected`.
async fn refused(
    dir: &Path,
    pki: &Pki,
    server: &CertFiles,
    gateway_ca: &Path,
    client: Option<&CertFiles>,
    expected: &str,
) -> anyhow::Result<String> {
    let port = free_port()?;
    let _broker = Mosquitto::start_with(dir, &pki.ca.cert, server, port, "")?;
    refused_by(dir, pki, port, gateway_ca, client, expected).await
}

/// Runs ferrule against whatever listens on `port`, trusting `gateway_ca`
/// and presenting `client`; returns its log once it contains `expected`,
/// after checking readings are still captured meanwhile.
async fn refused_by(
    dir: &Path,
    pki: &Pki,
    port: u16,
    gateway_ca: &Path,
    client: Option<&CertFiles>,
    expected: &str,
) -> anyhow::Result<String> {
    let gateway = sim_config(&dir.join("data"), pki, port, 200, 1, "")?.set(
        "mqtt",
        "ca_file",
        gateway_ca.display().to_string(),
    );
    let text = match client {
        Some(files) => gateway
            .set("mqtt", "client_cert_file", files.cert.display().to_string())
            .set("mqtt", "client_key_file", files.key.display().to_string()),
        None => gateway
            .unset("mqtt", "client_cert_file")
            .unset("mqtt", "client_key_file"),
    }
    .render();
    let config = dir.join("gateway.toml");
    std::fs::write(&config, text)?;
    let ferrule = start_ferrule(dir, &["run", &config.to_string_lossy()])?;
    ferrule
        .wait_for_log(expected, Duration::from_secs(20))
        .await?;
    // Still capturing: the queue grows while the broker is refused.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = ferrule_tests::queue_stats(dir, &config)?;
    assert!(
        stats["depth"].as_u64().unwrap_or(0) >= 2,
        "readings are queued: {stats}"
    );
    let log = ferrule.log_text();
    if let Some(line) = log.lines().find(|l| l.contains(expected)) {
        eprintln!("refused as expected: {line}");
    }
    assert!(
        !log.contains("mqtt connected"),
        "never connected to a refused peer:\n{log}"
    );
    Ok(log)
}

#[tokio::test]
async fn a_broker_certificate_from_another_ca_is_refused_and_named() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let pki = Pki::new(&dir.path().join("certs"))?;
    let other = DevCa::new(&dir.path().join("other"), "other-ca")?;
    let log = refused(
        dir.path(),
        &pki,
        &pki.server,
        &other.cert,
        Some(&pki.gateway),
        "TLS: the broker's certificate is not signed by a CA in ca_file",
    )
    .await?;
    assert!(log.contains("kind=\"tls\""), "{log}");
    Ok(())
}

#[tokio::test]
async fn a_broker_certificate_for_another_host_is_refused_and_named() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let pki = Pki::new(&dir.path().join("certs"))?;
    let elsewhere = pki.ca.server("elsewhere", &["broker.elsewhere.example"])?;
    refused(
        dir.path(),
        &pki,
        &elsewhere,
        &pki.ca.cert,
        Some(&pki.gateway),
        "TLS: the broker's certificate is not valid for host \"127.0.0.1\"",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_expired_broker_certificate_is_refused_and_named() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let pki = Pki::new(&dir.path().join("certs"))?;
    let expired = pki
        .ca
        .issue_valid_for("expired", &["127.0.0.1"], Duration::ZERO)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    refused(
        dir.path(),
        &pki,
        &expired,
        &pki.ca.cert,
        Some(&pki.gateway),
        "TLS: the broker's certificate has expired",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn connecting_without_a_client_certificate_is_an_authorization_failure() -> anyhow::Result<()>
{
    let dir = tempdir()?;
    let pki = Pki::new(&dir.path().join("certs"))?;
    let log = refused(
        dir.path(),
        &pki,
        &pki.server,
        &pki.ca.cert,
        None,
        "the broker refused this gateway's client certificate",
    )
    .await?;
    assert!(log.contains("kind=\"authorization\""), "{log}");
    Ok(())
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_an_authorization_failure() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let pki = Pki::new(&dir.path().join("certs"))?;
    let other = DevCa::new(&dir.path().join("other"), "other-ca")?;
    let stranger = other.client("stranger", "test-gateway")?;
    let log = refused(
        dir.path(),
        &pki,
        &pki.server,
        &pki.ca.cert,
        Some(&stranger),
        "the broker refused this gateway's client certificate",
    )
    .await?;
    assert!(log.contains("kind=\"authorization\""), "{log}");
    Ok(())
}

/// Starts `openssl s_server` with `cert` and `args`, proves with openssl's
/// own client (same `args`) that it completes a handshake showing
/// `control`, then runs ferrule against it; returns ferrule's log once it
/// has refused the server as a TLS failure.
async fn refused_by_openssl(
    dir: &Path,
    pki: &Pki,
    cert: &CertFiles,
    args: &[&str],
    control: &str,
) -> anyhow::Result<String> {
    let server = OpensslServer::start(dir, &cert.cert, &cert.key, args)?;
    let ca = pki.ca.cert.to_string_lossy().into_owned();
    let (ok, text) = server.handshake(&[args, &["-CAfile", &ca]].concat())?;
    assert!(
        ok && text.contains(control),
        "control: openssl's client completes a handshake ({control}) with the server:\n{text}"
    );
    refused_by(
        dir,
        pki,
        server.port,
        &pki.ca.cert,
        Some(&pki.gateway),
        "kind=\"tls\"",
    )
    .await
}

/// A server that speaks only TLS 1.1 (proved with openssl's own client)
/// is refused: this gateway speaks TLS 1.2 and 1.3 only.
#[tokio::test]
async fn a_tls_1_1_only_server_is_refused() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let pki = Pki::new(&dir.path().join("certs"))?;
    // OpenSSL 3 allows TLS 1.1 only at security level 0.
    let legacy = ["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"];
    let log = refused_by_openssl(dir.path(), &pki, &pki.server, &legacy, "TLSv1.1").await?;
    assert!(
        log.contains("TLS 1.2 and 1.3 only") || log.contains("TLS 1.2 or 1.3"),
        "the error names the protocol versions:\n{log}"
    );
    Ok(())
}

/// A TLS 1.2 server offering only a suite without forward secrecy (RSA key
/// exchange; proved with openssl's own client) is refused.
#[tokio::test]
async fn a_server_without_forward_secret_suites_is_refused() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let pki = Pki::new(&dir.path().join("certs"))?;
    let rsa = rsa_server_cert(&dir.path().join("certs"), &pki.ca)?;
    let static_rsa = ["-tls1_2", "-cipher", "AES128-GCM-SHA256"];
    let log = refused_by_openssl(dir.path(), &pki, &rsa, &static_rsa, "AES128-GCM-SHA256").await?;
    assert!(
        log.contains("no cipher suite in common") && log.contains("forward-secret"),
        "the error names the missing forward secrecy:\n{log}"
    );
    Ok(())
}
