//! Erasure: `ferrule data erase` on a running gateway by driver and by
//! time leaves the erased readings in no file under the data dir while
//! later readings are still delivered; signed orders over MQTT are carried
//! out and answered with counts, badly signed or replayed ones refused;
//! `--all` leaves the audit record of the erasure and shreds the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use ferrule::dev::config::{PluginToml, table};
use ferrule_tests::{
    GatewayToml, Rig, free_port, gateway_toml, plugin, queue_stats, start_ferrule,
};

use crate::common::{ferrule_ok, keygen};

const VICTIM: &str = "zq-erase-victim-chan-8817";
const KEEPER: &str = "zq-erase-keeper-chan-2290";

/// A sim driver `name` polling every 50 ms with one counter channel `channel`.
fn sim(name: &str, channel: &str) -> anyhow::Result<PluginToml> {
    Ok(PluginToml::new(name, &plugin("sim")?)
        .set("interval_ms", 50)
        .config(
            "channels",
            toml::Value::Array(vec![table([("name", channel), ("signal", "counter")])]),
        ))
}

fn write(dir: &Path, name: &str, gateway: &GatewayToml) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, gateway.render())?;
    Ok(path)
}

/// The files under `dir` whose bytes hold `needle`.
fn holding(dir: &Path, needle: &str) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)?
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
            {
                found.push(path.display().to_string());
            }
        }
    }
    Ok(found)
}

/// The audit records of `event`, oldest first.
fn audit_events(dir: &Path, config: &str, event: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    ferrule_ok(dir, &["audit", "show", config])?
        .lines()
        .map(serde_json::from_str::<serde_json::Value>)
        .filter(|r| r.as_ref().map_or(true, |r| r["event"] == event))
        .collect::<Result<_, _>>()
        .map_err(Into::into)
}

fn erased_in(outcome: &serde_json::Value, queue: &str) -> u64 {
    outcome["detail"]["queues"][queue]["erased"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test]
async fn erasing_by_driver_and_by_time_on_a_running_gateway_leaves_no_trace_and_later_readings_arrive()
-> anyhow::Result<()> {
    let rig = Rig::start("", "ferrule/gw-test/#").await?;
    let dir = rig.dir.path().to_path_buf();
    let data_dir = rig.data_dir();
    // Plaintext at rest, so the byte scan below can see readings at all.
    let base = |port: u16| {
        gateway_toml(&data_dir, &rig.pki, port)
            .set("storage", "encryption", "none")
            .set("telemetry", "interval_s", 1)
            .set("retention", "plugin_data_days", 7)
    };
    // A file `keeper`'s plugin left in its private folder ten days ago:
    // plugin data retention removes it at start.
    let stale = data_dir.join("plugins/keeper/stale.bin");
    std::fs::create_dir_all(stale.parent().context("folder")?)?;
    std::fs::write(&stale, b"old")?;
    std::fs::File::options()
        .write(true)
        .open(&stale)?
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(10 * 86_400))?;
    let offline_port = free_port()?;
    let both = base(offline_port)
        .driver(sim("victim", VICTIM)?)
        .driver(sim("keeper", KEEPER)?);
    let config = write(&dir, "offline.toml", &both)?;
    let arg = config.to_string_lossy().to_string();
    let mut ferrule = start_ferrule(&dir, &["run", &arg])?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        !stale.exists(),
        "plugin data older than plugin_data_days removed"
    );
    ensure!(
        !holding(&data_dir, VICTIM)?.is_empty() && !holding(&data_dir, KEEPER)?.is_empty(),
        "both drivers' readings are on disk in plaintext before the erasure"
    );
    // The customer behind `victim` leaves: its driver is removed, then its data erased.
    write(
        &dir,
        "offline.toml",
        &base(offline_port).driver(sim("keeper", KEEPER)?),
    )?;
    ferrule_ok(&dir, &["reload", &arg])?;
    let printed = ferrule_ok(&dir, &["data", "erase", &arg, "--driver", "victim"])?;
    ensure!(printed.contains("entries erased"), "{printed}");
    let found = holding(&data_dir, VICTIM)?;
    ensure!(found.is_empty(), "erased readings still on disk: {found:?}");
    ensure!(
        !holding(&data_dir, KEEPER)?.is_empty(),
        "the scan sees the readings that were kept"
    );
    let stats = queue_stats(&dir, &config)?;
    let erased_by_driver = stats["erased"].as_u64().unwrap_or(0);
    ensure!(erased_by_driver >= 10, "{stats}");

    // By time, while `keeper` goes on capturing: what came before goes,
    // what comes after stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cut_ms = ferrule::reading::now_ms();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let printed = ferrule_ok(
        &dir,
        &["data", "erase", &arg, "--before", &cut_ms.to_string()],
    )?;
    ensure!(printed.contains("history"), "{printed}");
    let stats = queue_stats(&dir, &config)?;
    ensure!(
        stats["erased"].as_u64() > Some(erased_by_driver) && stats["depth"].as_u64() >= Some(10),
        "erased before the cut, kept after it: {stats}"
    );
    ferrule.terminate(Duration::from_secs(30))?;

    // Both erasures are in the audit log, with who and how much.
    let erasures = audit_events(&dir, &arg, "erase")?;
    ensure!(erasures.len() == 2, "{erasures:?}");
    let user = ferrule::audit::os_user();
    for record in &erasures {
        ensure!(
            record["detail"]["ok"] == true && record["detail"]["by"] == user.as_str(),
            "{record}"
        );
    }
    ensure!(erased_in(&erasures[0], "data") == erased_by_driver);
    ensure!(erasures[0]["detail"]["selector"]["driver"] == "victim");
    ensure!(erased_in(&erasures[1], "data") > 0);
    ensure!(erased_in(&erasures[1], "telemetry") > 0, "{}", erasures[1]);
    ferrule_ok(&dir, &["audit", "verify", &arg])?;
    // Every class's retention and what it removed, in `ferrule status`.
    let status = ferrule_ok(&dir, &["status", &arg, "--json"])?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    let classes = status["retention"].as_array().context("retention")?;
    let plugin_data = classes
        .iter()
        .find(|c| c["class"] == "plugin data")
        .context("plugin data class")?;
    ensure!(
        plugin_data["removed"] == 1 && plugin_data["keep"] == "7days",
        "{plugin_data}"
    );
    ensure!(classes.len() == 5, "{classes:?}");
    ensure!(status["queue"]["erased"].as_u64() > Some(erased_by_driver));

    // Online: the kept readings arrive, all captured after the cut and
    // none from `victim`; the erasures' records reach the audit topic.
    let online = write(
        &dir,
        "online.toml",
        &base(rig.port).driver(sim("keeper", KEEPER)?),
    )?;
    let queued = queue_stats(&dir, &online)?["depth"].as_u64().unwrap_or(0);
    let mut sub = rig.sub;
    let ferrule = start_ferrule(&dir, &["run", &online.to_string_lossy()])?;
    let (mut data, mut audited) = (0u64, 0usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while (data < queued || audited < 2) && tokio::time::Instant::now() < deadline {
        let m = sub
            .next(Duration::from_secs(30), "data and audit records")
            .await?;
        if m.topic.ends_with("/audit") {
            audited += usize::from(m.json()?["event"] == "erase");
        } else if m.topic.contains("/data/") {
            let batch = m.json()?;
            ensure!(m.topic.ends_with("/data/keeper"), "{}", m.topic);
            ensure!(!m.text().contains(VICTIM));
            let captured_ms = batch["captured_ns"].as_u64().unwrap_or(0) / 1_000_000;
            ensure!(
                captured_ms >= cut_ms,
                "a batch from before the cut: {batch}"
            );
            data += 1;
        }
    }
    ensure!(
        data >= queued && audited == 2,
        "{data} of {queued} queued batches, {audited} erase records on the audit topic"
    );
    drop(ferrule);
    Ok(())
}

/// The next answer on the erasure result topic.
async fn answer(sub: &mut ferrule_tests::Subscriber) -> anyhow::Result<serde_json::Value> {
    loop {
        let m = sub
            .next(Duration::from_secs(60), "an erasure answer")
            .await?;
        if m.topic.ends_with("/data/erase/result") {
            return m.json();
        }
    }
}

/// Sends an erasure order to gw-test and waits for its answer.
async fn ask(
    sub: &mut ferrule_tests::Subscriber,
    payload: Vec<u8>,
) -> anyhow::Result<serde_json::Value> {
    sub.client
        .publish(
            "ferrule/gw-test/data/erase",
            rumqttc::QoS::AtLeastOnce,
            false,
            payload,
        )
        .await?;
    answer(sub).await
}

/// An erasure order for gw-test, signed with `key`.
fn order(
    dir: &Path,
    key: &str,
    number: u64,
    all: bool,
    driver: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    let order = ferrule::erase::Order {
        schema: ferrule::erase::SCHEMA,
        erase: number,
        gateway: "gw-test".into(),
        issued_ms: ferrule::reading::now_ms(),
        driver: driver.map(str::to_string),
        before_ms: None,
        all,
    };
    let envelope = ferrule::deploy::sign_document(serde_json::to_vec(&order)?, &dir.join(key))
        .map_err(anyhow::Error::msg)?;
    Ok(serde_json::to_vec(&envelope)?)
}

#[tokio::test]
async fn signed_erasure_orders_are_answered_with_counts_bad_ones_refused_and_all_shreds_the_key()
-> anyhow::Result<()> {
    let rig = Rig::start("", "ferrule/gw-test/#").await?;
    let dir = rig.dir.path().to_path_buf();
    keygen(&dir, "op.key")?;
    keygen(&dir, "rogue.key")?;
    let gateway = rig
        .gateway()
        .set(
            "trust",
            "operator_keys",
            toml::Value::Array(vec!["op.key.pub".into()]),
        )
        .driver(sim("meter", VICTIM)?);
    let config = write(&dir, "gateway.toml", &gateway)?;
    let arg = config.to_string_lossy().to_string();
    let ferrule = start_ferrule(&dir, &["run", &arg])?;
    ferrule
        .wait_for_log("mqtt connected", Duration::from_secs(60))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first_key = ferrule_ok(&dir, &["key", "show", &arg])?;
    let mut sub = rig.sub;

    // A rogue key, a document changed after signing, and an order for
    // another gateway are refused, each with its reason.
    let rogue = order(&dir, "rogue.key", 1, true, None)?;
    // Another order's document under this one's signature.
    let mut tampered: serde_json::Value =
        serde_json::from_slice(&order(&dir, "op.key", 2, false, Some("meter"))?)?;
    let other: serde_json::Value = serde_json::from_slice(&order(&dir, "op.key", 2, true, None)?)?;
    tampered["document"] = other["document"].clone();
    for (payload, reason) in [
        (rogue, "does not trust"),
        (serde_json::to_vec(&tampered)?, "does not match"),
    ] {
        let a = ask(&mut sub, payload).await?;
        ensure!(
            a["ok"] == false && a["error"].as_str().is_some_and(|e| e.contains(reason)),
            "{a}"
        );
    }
    ensure!(
        queue_stats(&dir, &config)?["erased"].as_u64() == Some(0),
        "nothing erased by a refused order"
    );

    // A good order by driver: answered with what it erased, and the old
    // storage key is gone from the key file.
    let a = ask(&mut sub, order(&dir, "op.key", 5, false, Some("meter"))?).await?;
    ensure!(a["ok"] == true && a["erase"] == 5, "{a}");
    let old_key = first_key
        .split_whitespace()
        .nth(1)
        .context("key id")?
        .trim_end_matches(':')
        .to_string();
    ensure!(
        a["keys_erased"]
            .as_array()
            .is_some_and(|k| k.iter().any(|id| id == old_key.as_str())),
        "the key the erased entries were encrypted with is erased: {a}"
    );
    ensure!(!ferrule_ok(&dir, &["key", "show", &arg])?.contains(&old_key));
    // Replayed: refused.
    let a = ask(&mut sub, order(&dir, "op.key", 5, false, Some("meter"))?).await?;
    ensure!(
        a["ok"] == false && a["error"].as_str().is_some_and(|e| e.contains("not above")),
        "{a}"
    );

    // Decommissioning through the operator CLI: everything goes; the
    // audit log starts with the erasure's record and still verifies.
    let ca = rig.pki.ca.cert.display();
    let (cert, key) = (
        rig.pki.subscriber.cert.display(),
        rig.pki.subscriber.key.display(),
    );
    std::fs::write(
        dir.join("operator.toml"),
        format!(
            "[operator]\nkey = \"op.key\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nca_file = \"{ca}\"\nclient_cert_file = \"{cert}\"\nclient_key_file = \"{key}\"\n",
            rig.port
        ),
    )?;
    let printed = ferrule_ok(
        &dir,
        &[
            "fleet",
            "erase",
            "--bootstrap",
            "operator.toml",
            "--gateway",
            "gw-test",
            "--all",
            "--number",
            "9",
        ],
    )?;
    let answer: serde_json::Value = serde_json::from_str(&printed)?;
    ensure!(
        answer["ok"] == true && answer["selector"]["all"] == true,
        "{answer}"
    );
    drop(ferrule);
    let records = ferrule_ok(&dir, &["audit", "show", &arg])?;
    let first: serde_json::Value =
        serde_json::from_str(records.lines().next().context("a record")?)?;
    ensure!(
        first["event"] == "erase" && first["detail"]["selector"]["all"] == true,
        "the log starts at the erasure: {first}"
    );
    ensure!(
        !records.contains("erase-refused") && !records.contains("\"start\""),
        "nothing from before the erasure is kept: {records}"
    );
    ferrule_ok(&dir, &["audit", "verify", &arg])?;
    Ok(())
}
