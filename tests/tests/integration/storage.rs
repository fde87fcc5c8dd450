//! Encryption at rest: readings captured during an outage are on disk only
//! as AES-256-GCM ciphertext; a wrong or missing key is a refusal to start
//! that leaves the queue as it was; with the right key everything is
//! delivered with no gap; a key rotated under load loses nothing, and the
//! old key is erased once nothing needs it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use ferrule::dev::config::{PluginToml, table};
use ferrule_tests::{
    Rig, SeqLog, free_port, gateway_toml, plugin, queue_stats, run_ferrule, start_ferrule,
};

use crate::common::ferrule_ok;

const NEEDLES: [&str; 3] = [
    "zq-secret-channel-7731",
    "zq-unit-secret",
    "zq-second-secret",
];

/// A gateway on `port` with a sim driver whose channel names and unit are
/// distinctive strings; written to `name` in `dir`.
fn config(dir: &Path, rig: &Rig, port: u16, name: &str) -> anyhow::Result<PathBuf> {
    let channels = vec![
        table([
            ("name", NEEDLES[0]),
            ("signal", "counter"),
            ("unit", NEEDLES[1]),
        ]),
        table([("name", NEEDLES[2]), ("signal", "counter")]),
    ];
    let sim = PluginToml::new("sim-1", &plugin("sim")?)
        .set("interval_ms", 50)
        .config("channels", toml::Value::Array(channels));
    let gateway = gateway_toml(&rig.data_dir(), &rig.pki, port)
        .set("mqtt", "max_inflight", 64)
        .driver(sim);
    let path = dir.join(name);
    std::fs::write(&path, gateway.render())?;
    Ok(path)
}

/// Every `.redb` file under `dir` and whether any holds a needle.
fn plaintext_in(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut files = 0;
    for entry in walk(dir)? {
        if entry.extension().is_some_and(|e| e == "redb") {
            files += 1;
            let bytes = std::fs::read(&entry)?;
            for needle in NEEDLES {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(format!("{} holds {needle}", entry.display()));
                }
            }
        }
    }
    ensure!(
        files >= 2,
        "expected the data and telemetry queues under {}",
        dir.display()
    );
    Ok(found)
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

#[tokio::test]
async fn readings_are_ciphertext_on_disk_need_their_key_and_survive_a_rotation_under_load()
-> anyhow::Result<()> {
    let rig = Rig::start("", "ferrule/gw-test/data/#").await?;
    let dir = rig.dir.path().to_path_buf();
    let data_dir = rig.data_dir();
    // An outage: nothing listens on this port.
    let offline = config(&dir, &rig, free_port()?, "offline.toml")?;
    let online = config(&dir, &rig, rig.port, "gateway.toml")?;
    let mut ferrule = start_ferrule(&dir, &["run", &offline.to_string_lossy()])?;
    ferrule
        .wait_for_log("storage key created", Duration::from_secs(60))
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ferrule.terminate(Duration::from_secs(30))?;
    let stats = queue_stats(&dir, &offline)?;
    let depth = stats["depth"].as_u64().unwrap_or(0);
    ensure!(depth >= 10, "readings queued during the outage: {stats}");
    let found = plaintext_in(&data_dir)?;
    ensure!(found.is_empty(), "plaintext on disk: {found:?}");
    // The export still reads them, with the key.
    let export = ferrule_ok(&dir, &["queue", "export", &offline.to_string_lossy()])?;
    ensure!(export.contains(NEEDLES[0]) && export.lines().count() as u64 == depth);

    // A wrong key: refused, naming the key it needs; the queue is untouched.
    let key = dir.join("storage.key");
    std::fs::rename(&key, dir.join("storage.key.saved"))?;
    ferrule_ok(&dir, &["key", "init", &online.to_string_lossy()])?;
    let (ok, _, err) = run_ferrule(&dir, &["run", &online.to_string_lossy()])?;
    ensure!(
        !ok && err.contains("not in") && err.contains("restore the key file"),
        "wrong key: {err}"
    );
    // A missing one, the same.
    std::fs::remove_file(&key)?;
    let (ok, _, err) = run_ferrule(&dir, &["run", &online.to_string_lossy()])?;
    ensure!(
        !ok && err.contains("encrypted with storage key"),
        "missing key: {err}"
    );
    ensure!(
        queue_stats(&dir, &online)?["depth"].as_u64() == Some(depth),
        "queue untouched"
    );
    ensure!(
        queue_stats(&dir, &online)?["quarantined"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    std::fs::rename(dir.join("storage.key.saved"), &key)?;

    // The right key: everything from the outage on arrives, no gap.
    let mut sub = rig.sub;
    let mut seqs = SeqLog::default();
    let mut ferrule = start_ferrule(&dir, &["run", &online.to_string_lossy()])?;
    seqs.wait_for_all(&mut sub, 1, depth, Duration::from_secs(60))
        .await?;
    // Rotated under load: the gateway restarts on the new key, the old
    // entries still read; once delivered, the old key is erased.
    let before = ferrule_ok(&dir, &["key", "show", &online.to_string_lossy()])?;
    ferrule_ok(&dir, &["key", "rotate", &online.to_string_lossy()])?;
    ferrule.kill9();
    ferrule = start_ferrule(&dir, &["run", &online.to_string_lossy()])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    seqs.drain(&mut sub)?;
    let high = seqs.max();
    seqs.wait_for_all(&mut sub, 1, high, Duration::from_secs(60))
        .await?;
    ferrule.terminate(Duration::from_secs(30))?;
    let ferrule = start_ferrule(&dir, &["run", &online.to_string_lossy()])?;
    ferrule
        .wait_for_log(
            "storage keys no entry needs any more erased",
            Duration::from_secs(60),
        )
        .await?;
    let after = ferrule_ok(&dir, &["key", "show", &online.to_string_lossy()])?;
    ensure!(
        before.lines().count() == 1 && after.lines().count() == 1 && before != after,
        "one key before, the new one alone after: {before} / {after}"
    );
    drop(ferrule);
    ensure!(plaintext_in(&data_dir)?.is_empty());
    Ok(())
}

#[tokio::test]
async fn the_audit_log_records_starts_plugins_commands_reloads_and_data_access_and_names_tampering()
-> anyhow::Result<()> {
    let rig = Rig::start("", "ferrule/gw-test/cmd/#").await?;
    let dir = rig.dir.path().to_path_buf();
    let data_dir = rig.data_dir();
    let config = config(&dir, &rig, rig.port, "gateway.toml")?;
    let arg = config.to_string_lossy().to_string();
    let mut on_topic =
        ferrule_tests::Subscriber::connect(&rig.pki, rig.port, "ferrule/gw-test/audit").await?;
    let ferrule = start_ferrule(&dir, &["run", &arg])?;
    ferrule
        .wait_for_log("mqtt subscribed", Duration::from_secs(60))
        .await?;
    // A command (answered, whatever the driver says).
    let mut sub = rig.sub;
    sub.client
        .publish(
            "ferrule/gw-test/cmd/sim-1/write",
            rumqttc::QoS::AtLeastOnce,
            false,
            br#"{"id":"audit-1","channel":"zq-secret-channel-7731","value":5}"#.to_vec(),
        )
        .await?;
    // The subscription takes the command itself too: wait for the answer,
    // which the gateway publishes once the command is audited.
    loop {
        let m = sub.next(Duration::from_secs(30), "command result").await?;
        if m.topic.ends_with("/result") {
            break;
        }
    }
    // A config change, by reload.
    let text = std::fs::read_to_string(&config)?.replace("interval_ms = 50", "interval_ms = 60");
    std::fs::write(&config, text)?;
    ferrule_ok(&dir, &["reload", &arg])?;
    // Local data access.
    ferrule_ok(&dir, &["queue", "export", &arg])?;
    let shown = ferrule_ok(&dir, &["audit", "show", &arg])?;
    let records: Vec<serde_json::Value> = shown
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let has = |event: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        records
            .iter()
            .any(|r| r["event"] == event && pred(&r["detail"]))
    };
    ensure!(
        has("start", &|d| d["config_sha256"].as_str().map(str::len)
            == Some(64)),
        "{shown}"
    );
    ensure!(
        has("plugin", &|d| d["instance"] == "sim-1"
            && d["sha256"].is_string()),
        "{shown}"
    );
    ensure!(
        has("command", &|d| d["command"]["id"] == "audit-1"
            && d["command"]["value_type"] == "number"
            && d["command"]["value_sha256"]
                == ferrule::plugin::trust::sha256_hex(b"5")
            && d["command"].get("value").is_none()
            && d["result"]["id"] == "audit-1"),
        "{shown}"
    );
    ensure!(
        has("config", &|d| d["change"] == "reload" && d["ok"] == true),
        "{shown}"
    );
    ensure!(
        has("data-access", &|d| d["command"] == "queue export"
            && d["user"].as_str().is_some_and(|u| u.contains("uid"))),
        "{shown}"
    );
    let verified = ferrule_ok(&dir, &["audit", "verify", &arg])?;
    ensure!(verified.contains("chain intact"), "{verified}");
    // The cloud's copy: every record on the audit topic, in order, the
    // CLI's own included.
    let mut published = Vec::new();
    while published.len() < records.len() {
        let m = on_topic
            .next(Duration::from_secs(30), "audit record")
            .await?;
        published.push(m.json()?);
    }
    for (local, remote) in records.iter().zip(&published) {
        ensure!(local == remote, "published {remote} for {local}");
    }
    drop(ferrule);
    // One byte changed in the third record.
    let log = data_dir.join("audit.log");
    let mut lines: Vec<String> = std::fs::read_to_string(&log)?
        .lines()
        .map(String::from)
        .collect();
    lines[2] = lines[2].replacen("\"at_ms\":1", "\"at_ms\":2", 1);
    std::fs::write(&log, lines.join("\n") + "\n")?;
    let (ok, _, err) = run_ferrule(&dir, &["audit", "verify", &arg])?;
    ensure!(
        !ok && err.contains("record 3 (line 3) was changed"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn an_export_holds_every_queued_reading_once_with_a_manifest_that_checks_out()
-> anyhow::Result<()> {
    let rig = Rig::start("", "ferrule/gw-test/data/#").await?;
    let dir = rig.dir.path().to_path_buf();
    // Offline, so everything stays queued: the sim driver and one that
    // returns every value the WIT can carry that JSON has trouble with.
    let odd = ferrule_tests::hostile_driver("odd", "behavior = \"odd-values\"", "")?;
    let gateway = gateway_toml(&rig.data_dir(), &rig.pki, free_port()?)
        .set("telemetry", "interval_s", 1)
        .driver(odd);
    let config = dir.join("offline.toml");
    std::fs::write(&config, gateway.render())?;
    let arg = config.to_string_lossy().to_string();
    let mut ferrule = start_ferrule(&dir, &["run", &arg])?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ferrule.terminate(Duration::from_secs(30))?;
    let depth = queue_stats(&dir, &config)?["depth"].as_u64().unwrap_or(0);
    ensure!(depth >= 5, "queued: {depth}");
    let exported = ferrule_ok(&dir, &["queue", "export", &arg])?;

    let out = dir.join("export");
    ferrule_ok(
        &dir,
        &["data", "export", &arg, "--out", &out.to_string_lossy()],
    )?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json"))?)?;
    ensure!(
        manifest["gateway"] == "gw-test" && manifest["format"] == 1,
        "{manifest}"
    );
    for (name, figures) in manifest["files"].as_object().context("files")? {
        let bytes = std::fs::read(out.join(name))?;
        let sha = ferrule::plugin::trust::sha256_file(&out.join(name))?;
        ensure!(figures["sha256"] == sha.as_str(), "{name}: sha256 differs");
        ensure!(
            figures["bytes"] == bytes.len() as u64,
            "{name}: size differs"
        );
        let lines = bytes.iter().filter(|b| **b == b'\n').count() as u64;
        ensure!(figures["records"] == lines, "{name}: {lines} lines");
    }
    // Every queued batch exactly once, the same as the queue export.
    let queue = std::fs::read_to_string(out.join("queue.jsonl"))?;
    let seqs: std::collections::BTreeSet<u64> = queue
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).map(|v| v["seq"].as_u64().unwrap_or(0))
        })
        .collect::<Result<_, _>>()?;
    ensure!(
        seqs.len() as u64 == depth && queue.lines().count() as u64 == depth,
        "{depth} batches, once each"
    );
    ensure!(queue == exported, "the same batches as `queue export`");
    ensure!(
        queue.contains("\"nan\"") || queue.contains("NaN") || queue.contains("nan"),
        "odd values kept: {}",
        &queue[..queue.len().min(2000)]
    );
    ensure!(
        manifest["files"]["telemetry-raw.jsonl"]["records"].as_u64() > Some(0),
        "{manifest}"
    );
    ensure!(
        manifest["files"]["audit.jsonl"]["records"].as_u64() > Some(0),
        "{manifest}"
    );
    // The export is audited.
    let audit = ferrule_ok(&dir, &["audit", "show", &arg])?;
    ensure!(audit.contains("\"data export\""), "{audit}");
    Ok(())
}

#[tokio::test]
async fn a_key_from_a_systemd_credential_encrypts_everything_and_is_never_changed()
-> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let rig = Rig::start("", "ferrule/gw-test/data/#").await?;
    let dir = rig.dir.path().to_path_buf();
    // The key, made once and handed to the service as a credential
    // (systemd makes credential files read-only for their owner).
    let creds = dir.join("credentials");
    std::fs::create_dir(&creds)?;
    let key = creds.join("ferrule-storage-key");
    let maker = config(&dir, &rig, rig.port, "maker.toml")?;
    let text = std::fs::read_to_string(&maker)?.replace(
        "[mqtt]",
        &format!(
            "[storage]\nkey_file = {:?}\n\n[mqtt]",
            key.to_string_lossy()
        ),
    );
    std::fs::write(&maker, text)?;
    ferrule_ok(&dir, &["key", "init", "maker.toml"])?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400))?;
    let key_bytes = std::fs::read(&key)?;

    let offline = config(&dir, &rig, free_port()?, "offline.toml")?;
    let text = std::fs::read_to_string(&offline)?.replace(
        "[mqtt]",
        "[storage]\nkey_credential = \"ferrule-storage-key\"\n\n[mqtt]",
    );
    std::fs::write(&offline, text)?;
    let arg = offline.to_string_lossy().to_string();
    // Outside systemd (no credentials directory): a refusal that says how.
    let (ok, _, err) = run_ferrule(&dir, &["run", &arg])?;
    ensure!(
        !ok && err.contains("key_credential") && err.contains("CREDENTIALS_DIRECTORY is not set"),
        "{err}"
    );
    ensure!(
        !dir.join("storage.key").exists(),
        "no key file made instead"
    );

    // As the service: everything sealed with the credential's key.
    let mut command = std::process::Command::new(ferrule_tests::ferrule_bin()?);
    command
        .args(["run", &arg])
        .current_dir(&dir)
        .env("FERRULE_LOG", "info")
        .env("CREDENTIALS_DIRECTORY", &creds);
    let mut ferrule = ferrule_tests::spawn_logged("ferrule", command, dir.join("cred.log"))?;
    ferrule
        .wait_for_log(
            "storage key read from a systemd credential",
            Duration::from_secs(60),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ferrule.terminate(Duration::from_secs(30))?;
    let found = plaintext_in(&rig.data_dir())?;
    ensure!(found.is_empty(), "plaintext on disk: {found:?}");
    ensure!(queue_stats(&dir, &offline)?["depth"].as_u64() >= Some(10));

    // Commands that change the key refuse; one that reads data runs
    // with the credential, as `systemd-run -p LoadCredentialEncrypted=` gives it.
    let (ok, _, err) = run_ferrule(&dir, &["key", "rotate", &arg])?;
    ensure!(!ok && err.contains("systemd credential"), "{err}");
    let (ok, _, err) = run_ferrule(&dir, &["queue", "export", &arg])?;
    ensure!(!ok && err.contains("CREDENTIALS_DIRECTORY"), "{err}");
    let export = std::process::Command::new(ferrule_tests::ferrule_bin()?)
        .args(["queue", "export", &arg])
        .current_dir(&dir)
        .env("CREDENTIALS_DIRECTORY", &creds)
        .output()?;
    ensure!(
        export.status.success() && String::from_utf8_lossy(&export.stdout).contains(NEEDLES[0]),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    ensure!(
        std::fs::read(&key)? == key_bytes,
        "the credential is never written"
    );
    Ok(())
}
