//! Sparkplug B as an independent host reads it: every message ferrule
//! publishes is decoded by Eclipse Tahu's codec (`tests/peers/sparkplug`,
//! from npm), which also checks the edge node's rules (births before data,
//! aliases, seq, bdSeq), and the commands sent to the gateway are encoded
//! by it. Real mosquitto with mutual TLS, real pymodbus device.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrule_tests::net::ModbusSim;
use ferrule_tests::{
    GatewayToml, Mosquitto, PluginToml, Process, Received, Rig, Subscriber, persistence_config,
    plugin, workspace_root,
};
use serde_json::{Value, json};

/// Runs the Tahu-based host over `messages` (in the order received) and
/// returns its report: `messages` decoded, `violations`, `seq_wraps`.
fn host_check(messages: &[Received]) -> anyhow::Result<Value> {
    let mut lines = String::new();
    for m in messages {
        let hex: String = m.payload.iter().map(|b| format!("{b:02x}")).collect();
        lines.push_str(&json!({"topic": m.topic, "hex": hex}).to_string());
        lines.push('\n');
    }
    let mut child = Command::new("node")
        .arg(host_script())
        .arg("check")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        stdin.write_all(lines.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "the Sparkplug host failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A payload encoded by Tahu's codec from its JSON form.
fn host_encode(payload: &Value) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("node")
        .arg(host_script())
        .arg("encode")
        .arg(payload.to_string())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "encode failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = String::from_utf8(out.stdout)?;
    let hex = hex.trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| Ok(u8::from_str_radix(&hex[i..i + 2], 16)?))
        .collect()
}

fn host_script() -> std::path::PathBuf {
    workspace_root().join("tests/peers/sparkplug/host.mjs")
}

/// `format = "sparkplug-b"` in group `plant`, with `extra` keys of
/// `[mqtt.sparkplug]`.
fn sparkplug(gateway: GatewayToml, extra: &[(&str, &str)]) -> GatewayToml {
    let mut table = toml::Table::new();
    table.insert("group_id".into(), "plant".into());
    for (k, v) in extra {
        table.insert((*k).into(), (*v).into());
    }
    gateway
        .set("mqtt", "format", "sparkplug-b")
        .set("mqtt", "sparkplug", toml::Value::Table(table))
}

fn sim(name: &str, interval_ms: i64, channels: usize) -> anyhow::Result<PluginToml> {
    let channels = (0..channels)
        .map(|i| {
            let mut t = toml::Table::new();
            t.insert("name".into(), format!("c{i}").into());
            t.insert("signal".into(), "counter".into());
            toml::Value::Table(t)
        })
        .collect();
    Ok(PluginToml::new(name, &plugin("sim")?)
        .set("interval_ms", interval_ms)
        .config("channels", toml::Value::Array(channels)))
}

/// Collects messages until `done` says so (given all so far), or fails
/// after `limit` naming `what`.
async fn collect_until(
    sub: &mut Subscriber,
    all: &mut Vec<Received>,
    limit: Duration,
    what: &str,
    ferrule: &Process,
    done: impl Fn(&[Received]) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done(all) {
        let left = deadline.saturating_duration_since(Instant::now());
        match sub.next(left, what).await {
            Ok(m) => all.push(m),
            Err(e) => anyhow::bail!("{e}; ferrule log:\n{}", ferrule.log_text()),
        }
    }
    Ok(())
}

fn kind(m: &Received) -> &str {
    m.topic.split('/').nth(2).unwrap_or_default()
}

fn count(all: &[Received], k: &str) -> usize {
    all.iter().filter(|m| kind(m) == k).count()
}

/// The `ferrule/seq` values the host decoded from every DDATA.
fn entry_seqs(report: &Value) -> Vec<u64> {
    report["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["type"] == "DDATA")
        .flat_map(|m| m["metrics"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["name"] == "ferrule/seq")
        .filter_map(|m| m["value"].as_u64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tahu_host_accepts_births_data_seq_wrap_backfill_and_the_will() -> anyhow::Result<()> {
    let rig = Rig::persistent("spBv1.0/#", "sparkplug-host").await?;
    let gateway = sparkplug(rig.gateway(), &[])
        .driver(sim("line-1", 20, 3)?)
        .driver(sim("line-2", 20, 2)?);
    let (_config, mut ferrule) = rig.run(&gateway, None)?;
    let (dir, pki, port, broker, mut sub) = rig.into_parts();
    let mut all = Vec::new();
    // About 100 messages a second: past 256, so seq wraps at least once.
    collect_until(
        &mut sub,
        &mut all,
        Duration::from_secs(60),
        "300 Sparkplug messages",
        &ferrule,
        |all| all.len() >= 300,
    )
    .await?;

    // An outage: the readings captured meanwhile come after the next
    // births, flagged historical.
    let mut broker = broker;
    broker.process.terminate(Duration::from_secs(10))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _broker = Mosquitto::start(dir.path(), &pki, port, &persistence_config(dir.path())?)?;
    let before = all.len();
    collect_until(
        &mut sub,
        &mut all,
        Duration::from_secs(60),
        "births and live data after the outage",
        &ferrule,
        |all| {
            let after = &all[before..];
            let reborn = after.iter().position(|m| kind(m) == "NBIRTH");
            reborn.is_some_and(|i| count(&after[i..], "DDATA") >= 600)
        },
    )
    .await?;

    // kill -9: the broker publishes the will, NDEATH with this bdSeq.
    ferrule.kill9();
    collect_until(
        &mut sub,
        &mut all,
        Duration::from_secs(30),
        "NDEATH (the will)",
        &ferrule,
        |all| all.last().is_some_and(|m| kind(m) == "NDEATH"),
    )
    .await?;

    let report = host_check(&all)?;
    let violations = report["violations"].as_array().cloned().unwrap_or_default();
    assert!(violations.is_empty(), "host found: {violations:#?}");
    assert!(
        report["seq_wraps"].as_u64() >= Some(1),
        "seq never went 255 -> 0"
    );
    let messages = report["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages[0]["type"], "NBIRTH", "NBIRTH first");
    let first_data = messages.iter().position(|m| m["type"] == "DDATA");
    let births: Vec<_> = messages[..first_data.unwrap_or(0)]
        .iter()
        .filter(|m| m["type"] == "DBIRTH")
        .map(|m| m["device"].clone())
        .collect();
    assert!(
        births.contains(&json!("line-1")) && births.contains(&json!("line-2")),
        "both devices born before data: {births:?}"
    );
    let nbirths: Vec<&Value> = messages.iter().filter(|m| m["type"] == "NBIRTH").collect();
    assert!(nbirths.len() >= 2, "births again after the outage");
    let (first_bd, last_bd) = (
        nbirths[0]["bdSeq"].as_u64(),
        nbirths[nbirths.len() - 1]["bdSeq"].as_u64(),
    );
    assert!(last_bd > first_bd, "a new bdSeq per connection");
    let death = &messages[messages.len() - 1];
    assert_eq!(death["bdSeq"].as_u64(), last_bd);
    assert_eq!(death["matches_nbirth"], true);

    // Backfill: DDATA after the last NBIRTH with readings captured before
    // it are historical, and come before the live ones.
    let reborn = messages
        .iter()
        .rposition(|m| m["type"] == "NBIRTH")
        .unwrap_or(0);
    let born_at = messages[reborn]["timestamp"].as_u64().unwrap_or(0);
    let after: Vec<&Value> = messages[reborn..]
        .iter()
        .filter(|m| m["type"] == "DDATA")
        .collect();
    let historical: Vec<bool> = after
        .iter()
        .map(|m| {
            let flags: Vec<bool> = m["metrics"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| x["historical"] == true)
                .collect();
            assert!(
                flags.iter().all(|f| *f == flags[0]),
                "one flag per message: {m}"
            );
            assert_eq!(
                flags[0],
                m["timestamp"].as_u64() < Some(born_at),
                "historical exactly when captured before the births: {m}"
            );
            flags[0]
        })
        .collect();
    let live_from = historical
        .iter()
        .position(|h| !h)
        .unwrap_or(historical.len());
    assert!(
        live_from >= 20,
        "the outage's readings came back historical ({live_from})"
    );
    assert!(
        historical[live_from..].iter().all(|h| !h),
        "backfill first, in order"
    );

    // Nothing lost: every queue entry, in order per connection.
    let mut seqs = entry_seqs(&report);
    seqs.sort_unstable();
    seqs.dedup();
    anyhow::ensure!(
        !seqs.is_empty(),
        "no ferrule/seq in any DDATA: {}",
        messages
            .iter()
            .find(|m| m["type"] == "DDATA")
            .unwrap_or(&Value::Null)
    );
    let (lo, hi) = (seqs[0], seqs[seqs.len() - 1]);
    let missing: Vec<u64> = (lo..=hi)
        .filter(|s| seqs.binary_search(s).is_err())
        .collect();
    assert!(missing.is_empty(), "entries never delivered: {missing:?}");
    assert!(seqs.len() > 450, "{} entries", seqs.len());

    // Values resolved through aliases: the counters count up.
    let c0: Vec<f64> = messages
        .iter()
        .filter(|m| m["type"] == "DDATA" && m["device"] == "line-1")
        .flat_map(|m| m["metrics"].as_array().cloned().unwrap_or_default())
        .filter(|x| x["name"] == "c0")
        .filter_map(|x| x["value"].as_f64())
        .collect();
    assert!(c0.len() > 100 && c0.windows(2).filter(|w| w[1] < w[0]).count() <= 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_host_state_rebirth_and_dcmd_writes_reach_the_device() -> anyhow::Result<()> {
    let rig = Rig::start("", "spBv1.0/#").await?;
    let mut device = ModbusSim::start(rig.dir.path(), &json!({ "holding": [5, 0, 0] }))?;
    let plc = PluginToml::new("plc", &plugin("modbus_tcp")?)
        .set("device", format!("127.0.0.1:{}", device.port))
        .set("interval_ms", 200)
        .set("commands", crate::common::writable(&["setpoint"]))
        .config("timeout_ms", 500)
        .config(
            "channels",
            toml::Value::Array(vec![
                toml::from_str::<toml::Table>(
                    "name = \"setpoint\"\ntable = \"holding\"\naddress = 0",
                )?
                .into(),
            ]),
        );
    let gateway = sparkplug(rig.gateway(), &[("primary_host_id", "scada")]).driver(plc);
    let host = rig.sub.client.clone();
    state(&host, false, 1).await?;
    let (_config, ferrule) = rig.run(&gateway, None)?;
    ferrule
        .wait_for_log(
            "waiting for the Sparkplug primary host",
            Duration::from_secs(60),
        )
        .await?;
    // Offline host: no births, no data; readings queue.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut sub = rig.sub;
    let mut all = Vec::new();
    while let Ok(m) = sub.messages.try_recv() {
        all.push(m);
    }
    assert!(
        all.iter().all(|m| m.topic.contains("/STATE/")),
        "published while the primary host was offline: {:?}",
        all.iter().map(|m| &m.topic).collect::<Vec<_>>()
    );
    state(&host, true, 2).await?;
    collect_until(
        &mut sub,
        &mut all,
        Duration::from_secs(30),
        "births and data once the host is online",
        &ferrule,
        |all| count(all, "DDATA") >= 15,
    )
    .await?;

    // NCMD Node Control/Rebirth, encoded by Tahu.
    let rebirth = host_encode(&json!({
        "timestamp": 1,
        "metrics": [{"name": "Node Control/Rebirth", "type": "Boolean", "value": true}]
    }))?;
    sub.client
        .publish(
            "spBv1.0/plant/NCMD/gw-test",
            rumqttc::QoS::AtLeastOnce,
            false,
            rebirth,
        )
        .await?;
    collect_until(
        &mut sub,
        &mut all,
        Duration::from_secs(30),
        "the rebirth",
        &ferrule,
        |all| count(all, "NBIRTH") >= 2 && kind(&all[all.len() - 1]) == "DDATA",
    )
    .await?;

    // DCMD by name, then by the alias the DBIRTH declared.
    let report = host_check(&all)?;
    let alias = report["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["type"] == "DBIRTH")
        .flat_map(|m| m["metrics"].as_array().cloned().unwrap_or_default())
        .find(|m| m["name"] == "setpoint")
        .and_then(|m| m["alias"].as_u64())
        .ok_or_else(|| anyhow::anyhow!("no setpoint in a DBIRTH: {report}"))?;
    for (metric, expected) in [
        (
            json!({"name": "setpoint", "type": "Int64", "value": 1234}),
            1234u16,
        ),
        (json!({"alias": alias, "type": "Int64", "value": 77}), 77),
    ] {
        let dcmd = host_encode(&json!({"timestamp": 1, "metrics": [metric]}))?;
        sub.client
            .publish(
                "spBv1.0/plant/DCMD/gw-test/plc",
                rumqttc::QoS::AtLeastOnce,
                false,
                dcmd,
            )
            .await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while device.read_holding(0, 1)? != [expected] {
            anyhow::ensure!(
                Instant::now() < deadline,
                "DCMD {metric} never reached the register; ferrule log:\n{}",
                ferrule.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The new value shows in the data the host reads: a second of polls
    // after the last write, then whatever the subscriber holds, then more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok(m) = sub.messages.try_recv() {
        all.push(m);
    }
    let written_at = all.len();
    collect_until(
        &mut sub,
        &mut all,
        Duration::from_secs(30),
        "DDATA after the writes",
        &ferrule,
        |all| count(&all[written_at..], "DDATA") >= 3,
    )
    .await?;

    // The device goes away: its polls fail and it dies (DDEATH); when it
    // answers again it is born again before its data.
    device.stop();
    let stopped_at = all.len();
    collect_until(
        &mut sub,
        &mut all,
        Duration::from_secs(30),
        "DDEATH of the unavailable device",
        &ferrule,
        |all| all[stopped_at..].iter().any(|m| kind(m) == "DDEATH"),
    )
    .await?;
    device.restart()?;
    collect_until(
        &mut sub,
        &mut all,
        Duration::from_secs(30),
        "DBIRTH and data once the device answers again",
        &ferrule,
        |all| {
            let after = &all[stopped_at..];
            after
                .iter()
                .position(|m| kind(m) == "DDEATH")
                .is_some_and(|i| {
                    count(&after[i..], "DBIRTH") >= 1 && count(&after[i..], "DDATA") >= 2
                })
        },
    )
    .await?;
    let before_offline = all.len();

    // The host goes offline: the node disconnects (its will is NDEATH)
    // and waits; online again: births with the next bdSeq.
    state(&host, false, 3).await?;
    collect_until(
        &mut sub,
        &mut all,
        Duration::from_secs(30),
        "NDEATH after the host went offline",
        &ferrule,
        |all| all[before_offline..].iter().any(|m| kind(m) == "NDEATH"),
    )
    .await?;
    state(&host, true, 4).await?;
    collect_until(
        &mut sub,
        &mut all,
        Duration::from_secs(30),
        "births after the host came back",
        &ferrule,
        |all| count(&all[before_offline..], "DDATA") >= 3,
    )
    .await?;

    let report = host_check(&all)?;
    let violations = report["violations"].as_array().cloned().unwrap_or_default();
    assert!(violations.is_empty(), "host found: {violations:#?}");
    let messages = report["messages"].as_array().cloned().unwrap_or_default();
    let nbirths: Vec<&Value> = messages.iter().filter(|m| m["type"] == "NBIRTH").collect();
    assert!(nbirths.len() >= 3, "{} NBIRTH", nbirths.len());
    assert_eq!(
        nbirths[0]["bdSeq"], nbirths[1]["bdSeq"],
        "a rebirth keeps the connection's bdSeq"
    );
    assert_ne!(
        nbirths[1]["bdSeq"], nbirths[2]["bdSeq"],
        "a new connection, a new bdSeq"
    );
    // The first data after the host came online was captured while it was
    // offline: historical.
    let first = messages
        .iter()
        .find(|m| m["type"] == "DDATA")
        .ok_or_else(|| anyhow::anyhow!("no DDATA"))?;
    assert_eq!(first["metrics"][0]["historical"], true, "{first}");
    let written: Vec<f64> = messages
        .iter()
        .filter(|m| m["type"] == "DDATA")
        .flat_map(|m| m["metrics"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["name"] == "setpoint")
        .filter_map(|m| m["value"].as_f64())
        .collect();
    let at = |v: f64| written.iter().position(|w| *w == v);
    assert!(at(1234.0) < at(77.0) && at(1234.0).is_some(), "{written:?}");
    let deaths: Vec<&Value> = messages.iter().filter(|m| m["type"] == "DDEATH").collect();
    assert_eq!(deaths.len(), 1, "one DDEATH for the outage");
    assert_eq!(deaths[0]["device"], "plc");
    let setpoint_type = messages
        .iter()
        .filter(|m| m["type"] == "DBIRTH")
        .flat_map(|m| m["metrics"].as_array().cloned().unwrap_or_default())
        .find(|m| m["name"] == "setpoint")
        .map(|m| m["type"].clone());
    assert!(setpoint_type.is_some(), "setpoint declared with a datatype");
    drop(device);
    Ok(())
}

/// Publishes the primary host's retained STATE.
async fn state(client: &rumqttc::AsyncClient, online: bool, ts: u64) -> anyhow::Result<()> {
    let payload = json!({"online": online, "timestamp": ts}).to_string();
    client
        .publish(
            "spBv1.0/STATE/scada",
            rumqttc::QoS::AtLeastOnce,
            true,
            payload.into_bytes(),
        )
        .await?;
    Ok(())
}

/// A config with `format = "sparkplug-b"` and no `[mqtt.sparkplug]` is
/// refused at its line and column.
#[test]
fn sparkplug_without_its_table_is_refused_where_it_is_asked_for() -> anyhow::Result<()> {
    let dir = ferrule_tests::tempdir()?;
    let certs = ferrule_tests::Pki::new(&dir.path().join("certs"))?;
    let gateway = ferrule_tests::gateway_toml(&dir.path().join("data"), &certs, 8883)
        .set("mqtt", "format", "sparkplug-b")
        .driver(sim("s", 100, 1)?);
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, gateway.render())?;
    let (ok, _, err) = ferrule_tests::run_ferrule(dir.path(), &["check", &path(&config)])?;
    assert!(!ok);
    assert!(err.contains("[mqtt.sparkplug]"), "{err}");
    assert!(err.contains("gateway.toml:"), "{err}");
    Ok(())
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Report by exception: the shipped `deadband` processor holds back
/// readings that did not move past their deadband, and still reports each
/// channel at its maximum interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadband_processor_reports_changes_and_each_channel_at_its_maximum_interval()
-> anyhow::Result<()> {
    let rig = Rig::start("", "ferrule/gw-test/data/#").await?;
    let counter = |name: &str, offset: f64, step: f64| {
        let mut t = toml::Table::new();
        t.insert("name".into(), name.into());
        t.insert("signal".into(), "counter".into());
        t.insert("offset".into(), offset.into());
        t.insert("step".into(), step.into());
        toml::Value::Table(t)
    };
    // Rises 1 a second (0.05 a poll) from `offset`, wrapping every 20 s.
    let ramp = |name: &str, offset: f64| {
        let mut t = toml::Table::new();
        t.insert("name".into(), name.into());
        t.insert("signal".into(), "ramp".into());
        t.insert("offset".into(), offset.into());
        t.insert("amplitude".into(), 20.0.into());
        t.insert("period_s".into(), 20.0.into());
        toml::Value::Table(t)
    };
    let mut fast_rule = toml::Table::new();
    fast_rule.insert("absolute".into(), 0.5.into());
    let mut rules = toml::Table::new();
    // Per channel: `slow` by percent of its last value.
    let mut slow_rule = toml::Table::new();
    slow_rule.insert("percent".into(), 5.0.into());
    rules.insert("slow".into(), toml::Value::Table(slow_rule));
    rules.insert("fast".into(), toml::Value::Table(fast_rule));
    let line = PluginToml::new("line", &plugin("sim")?)
        .set("interval_ms", 50)
        .config(
            "channels",
            toml::Value::Array(vec![
                counter("steady", 7.0, 0.0),
                ramp("slow", 1.0),
                counter("fast", 0.0, 1.0),
            ]),
        )
        .processor(
            PluginToml::new("deadband", &plugin("deadband")?)
                .config("absolute", 0.5)
                .config("max_interval_s", 1.0)
                .config("channels", toml::Value::Table(rules)),
        );
    let (_config, ferrule) = rig.run(&rig.gateway().driver(line), None)?;
    let mut sub = rig.sub;
    let mut batches = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // 120 polls at 50 ms: six seconds of readings.
    while batches.len() < 120 {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = match sub.next(left, "data of the line").await {
            Ok(m) => m,
            Err(e) => anyhow::bail!("{e}; ferrule log:\n{}", ferrule.log_text()),
        };
        batches.push(m.json()?);
    }
    let series = |channel: &str| -> Vec<(u64, f64)> {
        batches
            .iter()
            .flat_map(|b| b["readings"].as_array().cloned().unwrap_or_default())
            .filter(|r| r["channel"] == channel)
            .filter_map(|r| Some((r["ts_ns"].as_u64()?, r["value"].as_f64()?)))
            .collect()
    };
    // `fast` moves 1 a poll, past its 0.5: every reading goes on.
    let fast = series("fast");
    assert_eq!(fast.len(), batches.len(), "every change of fast reported");
    // `steady` never moves: reported first, then once a second.
    let steady = series("steady");
    let span_s = (fast[fast.len() - 1].0 - fast[0].0) as f64 / 1e9;
    assert!(
        steady.len() >= 2 && (steady.len() as f64) <= span_s + 2.0,
        "{} steady readings over {span_s:.1} s",
        steady.len()
    );
    for w in steady.windows(2) {
        let gap_ms = (w[1].0 - w[0].0) as f64 / 1e6;
        assert!(
            (1000.0..1500.0).contains(&gap_ms),
            "steady reported after {gap_ms} ms, not at its 1 s maximum interval"
        );
    }
    // `slow` moves 0.05 a poll: reported when it moved over 5 % of its last
    // reported value (or at the maximum interval).
    let slow = series("slow");
    assert!(
        slow.len() >= 3 && slow.len() < batches.len() / 3,
        "{} slow readings",
        slow.len()
    );
    // Below 18, 5 % is less than the 0.9 it rises in 0.9 s: some reports
    // come from moves, before the maximum interval.
    assert!(
        slow.windows(2).any(|w| w[1].0 - w[0].0 < 900_000_000),
        "slow reported only at its maximum interval: {slow:?}"
    );
    // (Past its wrap it starts again low: a move, reported at once.)
    for w in slow.windows(2).filter(|w| w[1].1 >= w[0].1) {
        let moved = (w[1].1 - w[0].1).abs() > w[0].1 * 0.05;
        let waited = w[1].0 - w[0].0 >= 1_000_000_000;
        assert!(moved || waited, "slow reported without cause: {w:?}");
        assert!(
            (w[1].1 - w[0].1).abs() <= w[0].1.abs() * 0.05 + 0.2,
            "a change past the deadband held back: {w:?}"
        );
    }
    Ok(())
}
