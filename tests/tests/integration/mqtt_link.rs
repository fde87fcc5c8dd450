//! The MQTT link heals itself: a revoked client certificate is an
//! authorization failure until a new one is installed on disk (no
//! restart), a silently dead link is noticed by keep-alive, and entries too
//! large for the broker's packet limit arrive in parts. No reading is lost
//! on the way.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferrule::dev::certs::CertFiles;
use ferrule_tests::net::StallingProxy;
use ferrule_tests::{
    Mosquitto, Pki, Process, Rig, SeqLog, Subscriber, clock_now, connects, free_port, queue_stats,
    start_ferrule, tempdir,
};

use crate::common::sim_config;

/// Puts `from`'s certificate and key where `to` is expected, each by an
/// atomic rename, as a deployment tool would.
fn install(from: &CertFiles, to: &CertFiles) -> anyhow::Result<()> {
    for (src, dst) in [(&from.cert, &to.cert), (&from.key, &to.key)] {
        let tmp = dst.with_extension("new");
        std::fs::copy(src, &tmp)?;
        std::fs::rename(&tmp, dst)?;
    }
    Ok(())
}

/// Lines of `log` containing `needle`.
fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

async fn wait_for_count(
    ferrule: &Process,
    needle: &str,
    n: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while count(&ferrule.log_text(), needle) < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "fewer than {n} {needle:?} lines within {limit:?}:\n{}",
            ferrule.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Writes `text` as the gateway's config and starts `ferrule run` on it.
fn run_config(dir: &Path, text: &str) -> anyhow::Result<(std::path::PathBuf, Process)> {
    let config = dir.join("gateway.toml");
    std::fs::write(&config, text)?;
    let ferrule = start_ferrule(dir, &["run", &config.to_string_lossy()])?;
    Ok((config, ferrule))
}

/// Waits for `n` log lines containing `needle`, checks each also contains
/// every one of `expected`, and returns them.
async fn failures(
    ferrule: &Process,
    needle: &str,
    n: usize,
    expected: &[&str],
) -> anyhow::Result<Vec<String>> {
    wait_for_count(ferrule, needle, n, Duration::from_secs(30)).await?;
    let lines: Vec<String> = ferrule
        .log_text()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect();
    for line in &lines {
        for fragment in expected {
            assert!(line.contains(fragment), "{fragment:?} in: {line}");
        }
    }
    Ok(lines)
}

/// The last sequence number the queue has handed out.
fn last_seq(dir: &Path, config: &Path) -> anyhow::Result<u64> {
    let stats = queue_stats(dir, config)?;
    Ok(stats["next_seq"].as_u64().unwrap_or(1).saturating_sub(1))
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_with_backoff_until_a_new_one_is_installed()
-> anyhow::Result<()> {
    // The gateway starts with a certificate its CA has revoked.
    let (dir, pki, port, _broker, mut sub) = Rig::start_with(
        |_, pki| {
            let revoked = pki.ca.client("revoked", "test-gateway")?;
            let crl = pki.ca.revocation_list("test-ca", &[revoked.serial])?;
            install(&revoked, &pki.gateway)?;
            Ok(format!("crlfile {}\n", crl.display()))
        },
        "ferrule/gw-test/data/#",
        None,
    )
    .await?
    .into_parts();
    let (config, mut ferrule) = run_config(
        dir.path(),
        &sim_config(&dir.path().join("data"), &pki, port, 100, 1, "")?.render(),
    )?;

    // Refused as an authorization failure, again and again, backing off.
    let failures = failures(
        &ferrule,
        "mqtt connection failed",
        4,
        &[
            "kind=\"authorization\"",
            "refused this gateway's client certificate (CertificateRevoked)",
        ],
    )
    .await?;
    // The first four waits double (100 ms doubling, jitter up to +25 %);
    // later ones sit at the 1 s cap.
    let waits: Vec<u64> = failures[..4]
        .iter()
        .filter_map(|l| {
            l.split("retry_in_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        waits.windows(2).all(|w| w[1] > w[0]),
        "retries back off: {waits:?}"
    );
    assert!(
        sub.messages.try_recv().is_err(),
        "nothing delivered with a revoked certificate"
    );
    let queued = queue_stats(dir.path(), &config)?;
    assert!(
        queued["depth"].as_u64().unwrap_or(0) >= 2,
        "readings stay queued: {queued}"
    );

    // A valid certificate and key are installed on disk; no restart.
    let fresh = pki.ca.client("fresh", "test-gateway")?;
    install(&fresh, &pki.gateway)?;
    let last = last_seq(dir.path(), &config)?;
    ferrule
        .wait_for_log("mqtt connected", Duration::from_secs(30))
        .await?;
    let mut seqs = SeqLog::default();
    seqs.wait_for_all(&mut sub, 1, last, Duration::from_secs(30))
        .await?;
    assert!(
        ferrule.child.try_wait()?.is_none(),
        "the same process, not restarted"
    );
    eprintln!(
        "revoked: {} refusals (retry waits {waits:?} ms), then {last} queued readings delivered after rotation",
        failures.len()
    );
    ferrule.kill9();
    Ok(())
}

#[tokio::test]
async fn a_silently_dead_link_is_detected_by_keep_alive_and_reconnected_without_gap()
-> anyhow::Result<()> {
    const KEEP_ALIVE_S: f64 = 2.0;
    const BACKOFF_CAP_S: f64 = 1.0;
    let (dir, pki, port, _broker, mut sub) =
        Rig::start("", "ferrule/gw-test/data/#").await?.into_parts();
    let proxy = StallingProxy::start(port).await?;
    let text = sim_config(&dir.path().join("data"), &pki, proxy.port, 100, 1, "")?
        .set("mqtt", "keep_alive_s", 2)
        .render();
    assert!(text.contains("keep_alive_s = 2") && text.contains("reconnect_max_ms = 1000"));
    let (config, mut ferrule) = run_config(dir.path(), &text)?;

    let mut seqs = SeqLog::default();
    seqs.wait_for_all(&mut sub, 1, 10, Duration::from_secs(30))
        .await?;
    proxy.freeze();
    let frozen_at = clock_now();
    wait_for_count(&ferrule, "mqtt connected", 2, Duration::from_secs(30)).await?;
    let log = ferrule.log_text();
    let lost = log
        .lines()
        .find(|l| l.contains("mqtt connection lost"))
        .unwrap_or_default()
        .to_string();
    let detected_s = ferrule_tests::log_clock(&lost).unwrap_or(f64::NAN) - frozen_at;
    let reconnected_s = connects(&log)
        .get(1)
        .map_or(f64::NAN, |(at, _)| at - frozen_at);
    eprintln!(
        "half-open link: detected after {detected_s:.2} s, reconnected after {reconnected_s:.2} s (keep-alive {KEEP_ALIVE_S} s); {lost}"
    );
    // Two keep-alive periods, the backoff (with up to 25 % jitter), and 2 s
    // of slack for a busy machine.
    let bound = 2.0 * KEEP_ALIVE_S + 1.25 * BACKOFF_CAP_S + 2.0;
    assert!(
        reconnected_s <= bound,
        "reconnected within {bound} s of the link going silent (took {reconnected_s:.2} s):\n{log}"
    );
    assert!(
        lost.contains("pingreq") || lost.contains("keep-alive"),
        "the keep-alive noticed it: {lost}"
    );
    assert!(proxy.connections() >= 2, "a new connection was made");

    // No gap: everything captured before, during and after arrives.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let last = last_seq(dir.path(), &config)?;
    seqs.wait_for_all(&mut sub, 1, last, Duration::from_secs(30))
        .await?;
    eprintln!(
        "half-open link: seqs 1..={last} all delivered, {} duplicates",
        seqs.duplicates()
    );
    ferrule.kill9();
    Ok(())
}

/// One delivered entry: its parts by number, and the channels in each.
#[derive(Default)]
struct Entry {
    parts: BTreeMap<u64, Vec<String>>,
    count: Option<u64>,
}

async fn split_at_the_brokers_limit(protocol: &str, configured: Option<u32>) -> anyhow::Result<()> {
    const LIMIT: usize = 2048;
    const CHANNELS: usize = 60;
    let (dir, pki, port, _broker, mut sub) = Rig::start(
        &format!("max_packet_size {LIMIT}\n"),
        "ferrule/gw-test/data/#",
    )
    .await?
    .into_parts();
    let mut gateway = sim_config(&dir.path().join("data"), &pki, port, 200, CHANNELS, "")?
        .set("mqtt", "protocol", protocol);
    if let Some(limit) = configured {
        gateway = gateway.set("mqtt", "max_packet_size", i64::from(limit));
    }
    let text = gateway.render();
    let (_config, mut ferrule) = run_config(dir.path(), &text)?;

    let mut entries: BTreeMap<u64, Entry> = BTreeMap::new();
    let complete = |entries: &BTreeMap<u64, Entry>, seq: u64| {
        entries
            .get(&seq)
            .is_some_and(|e| e.count.is_some_and(|n| e.parts.len() as u64 == n))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(1..=10).all(|s| complete(&entries, s)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = match sub.next(left, "the parts of entries 1..=10").await {
            Ok(m) => m,
            Err(e) => anyhow::bail!("{e}; ferrule log:\n{}", ferrule.log_text()),
        };
        assert!(
            m.payload.len() < LIMIT,
            "every message fits the broker's limit: {} bytes",
            m.payload.len()
        );
        let v = m.json()?;
        let seq = v["seq"].as_u64().unwrap_or_default();
        let part = v["part"].as_u64();
        let parts = v["parts"].as_u64();
        assert!(
            part.is_some() && parts.is_some(),
            "an entry of {CHANNELS} readings does not fit {LIMIT} bytes, so it is split: {v}"
        );
        let channels = v["readings"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|x| x["channel"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let entry = entries.entry(seq).or_default();
        entry.count = parts;
        entry.parts.insert(part.unwrap_or_default(), channels);
    }
    let expected: Vec<String> = (0..CHANNELS).map(|i| format!("c{i}")).collect();
    for seq in 1..=10 {
        let entry = &entries[&seq];
        let channels: Vec<String> = entry.parts.values().flatten().cloned().collect();
        assert_eq!(
            channels, expected,
            "entry {seq}: every reading once, in order"
        );
    }
    let log = ferrule.log_text();
    assert!(
        log.contains(&format!("max_packet_size={LIMIT}")),
        "the limit in use is logged:\n{log}"
    );
    assert!(!log.contains("too_large"), "nothing left out:\n{log}");
    eprintln!(
        "MQTT {protocol}: entries of {CHANNELS} readings delivered in {} parts each under a {LIMIT}-byte limit",
        entries[&1].parts.len()
    );
    ferrule.kill9();
    Ok(())
}

/// MQTT 5: the broker states its limit in CONNACK; nothing is configured.
#[tokio::test]
async fn over_mqtt_5_entries_larger_than_the_brokers_packet_limit_arrive_in_parts()
-> anyhow::Result<()> {
    split_at_the_brokers_limit("5", None).await
}

/// MQTT 3.1.1 cannot learn the limit; it is configured.
#[tokio::test]
async fn over_mqtt_3_1_1_entries_larger_than_the_configured_packet_limit_arrive_in_parts()
-> anyhow::Result<()> {
    split_at_the_brokers_limit("3.1.1", Some(2048)).await
}

/// Adds `user` with `password` to mosquitto's password `file`.
fn add_password(file: &Path, user: &str, password: &str) -> anyhow::Result<()> {
    let mut command = Command::new("mosquitto_passwd");
    if !file.exists() {
        command.arg("-c");
    }
    let out = command
        .arg("-b")
        .arg(file)
        .arg(user)
        .arg(password)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "mosquitto_passwd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Replaces a file's contents by an atomic rename.
fn replace_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

async fn wrong_password(protocol: &str) -> anyhow::Result<()> {
    let dir = tempdir()?;
    let pki = Pki::new(&dir.path().join("certs"))?;
    let passwords = dir.path().join("passwords");
    add_password(&passwords, "gateway", "right-secret")?;
    add_password(&passwords, "reader", "reader-secret")?;
    let port = free_port()?;
    let _broker = Mosquitto::start(
        dir.path(),
        &pki,
        port,
        &format!(
            "allow_anonymous false\npassword_file {}\n",
            passwords.display()
        ),
    )?;
    let mut sub = Subscriber::connect_as(
        &pki,
        port,
        "ferrule/gw-test/data/#",
        "reader",
        "reader-secret",
    )
    .await?;
    let secret = dir.path().join("gateway.secret");
    std::fs::write(&secret, "wrong-secret\n")?;
    let text = sim_config(&dir.path().join("data"), &pki, port, 100, 1, "")?
        .set("mqtt", "protocol", protocol)
        .set("mqtt", "username", "gateway")
        .set("mqtt", "password_file", secret.display().to_string())
        .render();
    let (config, mut ferrule) = run_config(dir.path(), &text)?;
    let refusals = failures(
        &ferrule,
        "mqtt connection failed",
        3,
        &[
            "kind=\"authorization\"",
            "the broker refused this gateway's credentials",
        ],
    )
    .await?;
    let queued = queue_stats(dir.path(), &config)?;
    assert!(
        queued["depth"].as_u64().unwrap_or(0) >= 2,
        "readings stay queued: {queued}"
    );

    // The password file is corrected on disk; no restart.
    replace_file(&secret, "right-secret\n")?;
    let last = last_seq(dir.path(), &config)?;
    ferrule
        .wait_for_log("mqtt connected", Duration::from_secs(30))
        .await?;
    let mut seqs = SeqLog::default();
    seqs.wait_for_all(&mut sub, 1, last, Duration::from_secs(30))
        .await?;
    let log = ferrule.log_text();
    assert!(
        !log.contains("wrong-secret") && !log.contains("right-secret"),
        "passwords are never logged:\n{log}"
    );
    eprintln!(
        "MQTT {protocol}: wrong password refused as authorization, then {last} queued readings delivered: {}",
        refusals[0]
    );
    ferrule.kill9();
    Ok(())
}

#[tokio::test]
async fn over_mqtt_3_1_1_a_wrong_password_is_an_authorization_failure_until_the_file_is_fixed()
-> anyhow::Result<()> {
    wrong_password("3.1.1").await
}

#[tokio::test]
async fn over_mqtt_5_a_wrong_password_is_an_authorization_failure_until_the_file_is_fixed()
-> anyhow::Result<()> {
    wrong_password("5").await
}

/// MQTT 5 brokers say when they refuse a publish (PUBACK "not authorized");
/// the entry stays queued and is sent again, with backoff, until accepted.
#[tokio::test]
async fn over_mqtt_5_publishes_the_broker_refuses_stay_queued_until_it_accepts_them()
-> anyhow::Result<()> {
    // Anonymous clients may set the status and read, not publish data.
    let (dir, pki, port, broker, mut sub) = Rig::start_with(
        |dir, _| {
            let acl = dir.join("acl");
            std::fs::write(
                &acl,
                "topic readwrite ferrule/gw-test/status\ntopic read ferrule/#\n",
            )?;
            Ok(format!("acl_file {}\n", acl.display()))
        },
        "ferrule/gw-test/data/#",
        None,
    )
    .await?
    .into_parts();
    let acl = dir.path().join("acl");
    let text = sim_config(&dir.path().join("data"), &pki, port, 100, 1, "")?
        .set("mqtt", "protocol", "5")
        .render();
    let (config, mut ferrule) = run_config(dir.path(), &text)?;
    let refusals = failures(
        &ferrule,
        "the broker refused entry",
        3,
        &["kind=\"authorization\"", "NotAuthorized"],
    )
    .await?;
    assert!(
        sub.messages.try_recv().is_err(),
        "nothing delivered while refused"
    );
    let queued = queue_stats(dir.path(), &config)?;
    assert!(
        queued["depth"].as_u64().unwrap_or(0) >= 2,
        "refused entries stay queued: {queued}"
    );

    // The broker's ACL is fixed and reloaded (SIGHUP); ferrule is not touched.
    replace_file(&acl, "topic readwrite ferrule/#\n")?;
    let status = Command::new("kill")
        .arg("-HUP")
        .arg(broker.process.child.id().to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -HUP mosquitto");
    let last = last_seq(dir.path(), &config)?;
    let mut seqs = SeqLog::default();
    seqs.wait_for_all(&mut sub, 1, last, Duration::from_secs(30))
        .await?;
    eprintln!(
        "MQTT 5: {} refusals, then seqs 1..={last} delivered: {}",
        count(&ferrule.log_text(), "the broker refused entry"),
        refusals[0]
    );
    ferrule.kill9();
    Ok(())
}

#[tokio::test]
async fn a_client_certificate_close_to_expiry_is_warned_about_and_reported() -> anyhow::Result<()> {
    let (dir, pki, port, _broker, mut sub) = Rig::start("", "ferrule/gw-test/telemetry")
        .await?
        .into_parts();
    let short =
        pki.ca
            .client_valid_for("short", "test-gateway", Duration::from_secs(10 * 86_400))?;
    install(&short, &pki.gateway)?;
    let text = sim_config(&dir.path().join("data"), &pki, port, 100, 1, "")?
        .set("telemetry", "interval_s", 1)
        .render();
    let (_config, ferrule) = run_config(dir.path(), &text)?;
    ferrule
        .wait_for_log("client certificate expires soon", Duration::from_secs(30))
        .await?;
    let log = ferrule.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("expires soon"))
        .unwrap_or_default();
    assert!(
        line.contains("days_left=9") || line.contains("days_left=10"),
        "{line}"
    );
    let snapshot = sub
        .next(Duration::from_secs(30), "telemetry")
        .await?
        .json()?;
    let days = snapshot["publisher"]["client_cert_days_left"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        (9.9..=10.01).contains(&days),
        "{days} days left: {snapshot}"
    );
    eprintln!("{line}\ntelemetry: client_cert_days_left = {days:.3}");
    Ok(())
}

/// Two brokers of a cluster on loopback, the second listed in
/// `mqtt.hosts`: the one the gateway is connected to is killed, the
/// gateway carries on with the other, and a subscriber on each sees every
/// sequence number between them.
#[tokio::test]
async fn when_its_broker_dies_the_gateway_carries_on_with_the_next_in_mqtt_hosts()
-> anyhow::Result<()> {
    let (dir, pki, first_port, first, mut first_sub) =
        Rig::start("", "ferrule/gw-test/data/#").await?.into_parts();
    let d = dir.path();
    let second_port = free_port()?;
    let _second = Mosquitto::start(d, &pki, second_port, "")?;
    let mut second_sub = Subscriber::connect(&pki, second_port, "ferrule/gw-test/data/#").await?;
    let gateway = sim_config(&d.join("data"), &pki, first_port, 50, 2, "")?.set(
        "mqtt",
        "hosts",
        toml::Value::Array(vec![format!("127.0.0.1:{second_port}").into()]),
    );
    let config = d.join("gateway.toml");
    std::fs::write(&config, gateway.render())?;
    let ferrule = start_ferrule(d, &["run", "gateway.toml"])?;
    let mut seqs = SeqLog::default();
    seqs.wait_for_all(&mut first_sub, 1, 20, Duration::from_secs(60))
        .await?;

    // The broker the gateway publishes to dies (kill -9).
    drop(first);
    let killed_at = Instant::now();
    let deadline = killed_at + Duration::from_secs(60);
    while !ferrule
        .log_text()
        .lines()
        .any(|l| l.contains("mqtt connected") && l.contains(&second_port.to_string()))
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "never connected to the second broker: {}",
            ferrule.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failover = killed_at.elapsed();
    seqs.drain(&mut first_sub)?;
    let before = seqs.max();
    seqs.wait_for_all(
        &mut second_sub,
        before + 1,
        before + 40,
        Duration::from_secs(60),
    )
    .await?;
    let stats = queue_stats(d, &config)?;
    let last = stats["next_seq"].as_u64().unwrap_or(1) - 1;
    seqs.wait_for_all(&mut second_sub, 1, last, Duration::from_secs(60))
        .await?;
    eprintln!(
        "failover: on the second broker {failover:?} after the first died; seq 1..={last} all seen, {} on the first broker, {} duplicates",
        before,
        seqs.duplicates()
    );
    Ok(())
}
