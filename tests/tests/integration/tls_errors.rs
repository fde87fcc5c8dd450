//! A broker that cannot be trusted, or that refuses this gateway, is named
//! plainly in the log: which certificate, what is wrong with it, and whether
//! it is an authorization failure. Readings keep being captured meanwhile.

use std::path::Path;
use std::time::Duration;

use ferrule::dev::certs::{CertFiles, DevCa};
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
    let mut text = sim_config(&dir.join("data"), pki, port, 200, 1, "")?;
    text = text.replace(
        &pki.ca.cert.display().to_string(),
        &gateway_ca.display().to_string(),
    );
    if client.is_none() {
        text = text
            .lines()
            .filter(|l| !l.starts_with("client_cert_file") && !l.starts_with("client_key_file"))
            .collect::<Vec<_>>()
            .join("\n");
    }
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
    Ok(ferrule.log_text())
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
