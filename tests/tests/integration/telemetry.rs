//! Self-telemetry: snapshots go through their own durable lane, so an
//! outage backfills them, in order.

use std::time::{Duration, Instant};

use ferrule_tests::{Mosquitto, PluginToml, Rig, persistence_config, start_ferrule};

use crate::common::sim_config;

/// Telemetry and data are both backed up during an outage; the telemetry
/// lane goes first after it, so a data backlog never holds it back.
#[tokio::test]
async fn snapshots_captured_during_an_outage_arrive_afterwards_in_order_ahead_of_the_data_backlog()
-> anyhow::Result<()> {
    let (dir, pki, port, mut broker, mut sub) =
        ferrule_tests::Rig::persistent("ferrule/gw-test/#", "telemetry-sub")
            .await?
            .into_parts();
    let extra = persistence_config(dir.path())?;
    let config = dir.path().join("gateway.toml");
    // A busy driver: a batch every 5 ms, so the outage leaves a backlog.
    let text = sim_config(&dir.path().join("data"), &pki, port, 5, 20, "")?
        .set("telemetry", "interval_s", 1)
        .render();
    std::fs::write(&config, text)?;
    let ferrule = start_ferrule(dir.path(), &["run", &config.to_string_lossy()])?;

    let mut snapshots: Vec<serde_json::Value> = Vec::new();
    while snapshots.len() < 2 {
        let m = sub.next(Duration::from_secs(30), "telemetry").await?;
        if m.topic.ends_with("/telemetry") {
            snapshots.push(m.json()?);
        }
    }
    let first = &snapshots[0];
    assert_eq!(first["schema"], 1);
    assert_eq!(first["gateway"], "gw-test");
    assert_eq!(first["drivers"][0]["name"], "sim-1");
    assert!(
        first["process"]["rss_bytes"].as_u64().unwrap_or(0) > 0,
        "{first}"
    );
    assert_eq!(first["publisher"]["connected"], true);

    broker.process.terminate(Duration::from_secs(10))?;
    // Data captured from here on cannot have reached the old broker.
    let down_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let outage = Duration::from_secs(5);
    tokio::time::sleep(outage).await;
    broker = Mosquitto::start(dir.path(), &pki, port, &extra)?;
    let back_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    // What arrives after the restart, in order: 't' telemetry, 'd' data
    // captured during the outage (the broker may still hold older data
    // for this subscriber from before it went down).
    let mut order = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while snapshots
        .last()
        .and_then(|s| s["ts_ms"].as_u64())
        .is_none_or(|ts| ts < back_ms + 1500)
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "telemetry did not resume: {} snapshots; log:\n{}",
            snapshots.len(),
            ferrule.log_text()
        );
        let m = sub
            .next(Duration::from_secs(30), "backfilled telemetry")
            .await?;
        if m.topic.ends_with("/telemetry") {
            snapshots.push(m.json()?);
            order.push('t');
        } else if m.topic.contains("/data/")
            && m.json()?["captured_ns"].as_u64().unwrap_or(0) > down_ns
        {
            order.push('d');
        }
    }
    // Delivery is at least once: a snapshot the broker had taken before it
    // went down, unacknowledged, comes again. Consumers drop it by ts_ms.
    let mut times: Vec<u64> = snapshots
        .iter()
        .filter_map(|s| s["ts_ms"].as_u64())
        .collect();
    let received = times.len();
    times.dedup();
    snapshots.dedup_by_key(|s| s["ts_ms"].as_u64());
    let gaps: Vec<u64> = times
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect();
    let during = snapshots
        .iter()
        .filter(|s| s["publisher"]["connected"] == false)
        .count();
    let backlog = snapshots
        .iter()
        .filter_map(|s| s["queue"]["depth"].as_u64())
        .max()
        .unwrap_or(0);
    eprintln!(
        "telemetry: {} snapshots ({received} received) across a {outage:?} outage ({during} taken during it, data backlog up to {backlog} entries), gaps (ms): {gaps:?}; after the restart: {}...",
        times.len(),
        &order[..order.len().min(40)]
    );
    assert!(times.windows(2).all(|w| w[1] > w[0]), "in order: {times:?}");
    assert!(
        gaps.iter().all(|g| *g < 2_000),
        "no snapshot missing (one a second): {gaps:?}"
    );
    assert!(
        during >= 3,
        "snapshots taken during the outage were backfilled: {during}"
    );
    assert!(backlog >= 100, "the outage left a data backlog: {backlog}");
    assert!(
        order.starts_with(&"t".repeat(during)),
        "the outage's snapshots came before the data backlog: {order}"
    );
    drop(broker);
    Ok(())
}

#[tokio::test]
async fn published_counters_match_what_happened_and_bytes_match_what_arrived() -> anyhow::Result<()>
{
    let (dir, pki, port, _broker, mut sub) =
        Rig::start("", "ferrule/gw-test/#").await?.into_parts();
    let config = dir.path().join("gateway.toml");
    let flaky = PluginToml::new("flaky", &ferrule_tests::plugin("hostile")?)
        .set("interval_ms", 100)
        .config("behavior", "fail-every")
        .config("count", 3)
        .processor(
            PluginToml::new("scale", &ferrule_tests::plugin("scale")?)
                .config("channels", toml::Table::new()),
        );
    let text = sim_config(&dir.path().join("data"), &pki, port, 100, 2, "")?
        .driver(flaky)
        .set("telemetry", "interval_s", 1)
        .render();
    std::fs::write(&config, text)?;
    let ferrule = start_ferrule(dir.path(), &["run", &config.to_string_lossy()])?;

    // Every counted message (data, telemetry and audit) in arrival order,
    // which is the order ferrule published them in (one connection, QoS 1).
    let mut counted: Vec<(String, usize)> = Vec::new();
    let mut snapshots: Vec<(usize, serde_json::Value)> = Vec::new();
    let mut flaky_polls: Vec<i64> = Vec::new();
    while snapshots.len() < 4 {
        let m = match sub.next(Duration::from_secs(30), "telemetry").await {
            Ok(m) => m,
            Err(e) => anyhow::bail!("{e}; log:\n{}", ferrule.log_text()),
        };
        if m.topic.ends_with("/telemetry") {
            snapshots.push((counted.len(), m.json()?));
        } else if m.topic.contains("/data/flaky") {
            flaky_polls.push(m.json()?["readings"][0]["value"].as_i64().unwrap_or(-1));
        } else if !m.topic.contains("/data/") && !m.topic.ends_with("/audit") {
            continue;
        }
        counted.push((m.topic.clone(), m.payload.len()));
    }
    for (position, s) in &snapshots {
        let driver = |name: &str| {
            s["drivers"]
                .as_array()
                .and_then(|d| d.iter().find(|d| d["name"] == name))
                .cloned()
                .unwrap_or_default()
        };
        // flaky: poll n fails exactly when n is a multiple of 3.
        let f = driver("flaky");
        let (ok, failed) = (
            f["polls_ok"].as_u64().unwrap_or(0),
            f["polls_failed"].as_u64().unwrap_or(0),
        );
        let n = ok + failed;
        assert!(n >= 3, "{s}");
        assert_eq!(failed, n / 3, "failed polls of {n}: {s}");
        assert_eq!(
            f["readings"].as_u64(),
            Some(ok),
            "one reading per good poll: {s}"
        );
        let last_failed = 3 * (n / 3);
        assert!(
            f["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("fails on purpose (poll {last_failed})")),
            "last error is poll {last_failed}'s: {s}"
        );
        // Its processor saw every good poll's batch and passed each on.
        let p = &f["processors"][0];
        assert_eq!(p["name"], "flaky/scale", "{s}");
        assert_eq!(p["batches_in"].as_u64(), Some(ok), "{s}");
        assert_eq!(p["batches_out"].as_u64(), Some(ok), "{s}");
        assert_eq!(p["errors"], 0, "{s}");
        let sim = driver("sim-1");
        assert!(
            sim["memory_bytes"].as_u64().unwrap_or(0) >= 64 * 1024,
            "the plugin's linear memory (a page at least): {s}"
        );
        assert_eq!(sim["polls_failed"], 0);
        assert_eq!(
            sim["readings"].as_u64(),
            sim["polls_ok"].as_u64().map(|p| 2 * p),
            "two channels per poll: {s}"
        );
        // Bytes: what the broker acknowledged is a prefix of what arrived.
        let acked = s["publisher"]["messages_acked"].as_u64().unwrap_or(0) as usize;
        let bytes = s["publisher"]["payload_bytes_acked"].as_u64().unwrap_or(0) as usize;
        assert!(
            acked <= *position,
            "acked {acked} of {position} messages before the snapshot"
        );
        let arrived: usize = counted[..acked].iter().map(|(_, b)| b).sum();
        assert_eq!(
            bytes, arrived,
            "payload bytes counted = bytes the subscriber received for the first {acked} messages"
        );
        // As MQTT 3.1.1 PUBLISH packets: fixed header byte, remaining
        // length (varint), topic (2 + length), packet id (2), payload.
        let packets: usize = counted[..acked]
            .iter()
            .map(|(topic, payload)| {
                let remaining = 2 + topic.len() + 2 + payload;
                let varint = match remaining {
                    0..=127 => 1,
                    128..=16_383 => 2,
                    16_384..=2_097_151 => 3,
                    _ => 4,
                };
                1 + varint + remaining
            })
            .sum();
        assert_eq!(
            s["publisher"]["mqtt_bytes_acked"].as_u64(),
            Some(packets as u64),
            "MQTT bytes = payload + documented framing"
        );
    }
    // What the data stream shows agrees: every poll that is not a multiple
    // of 3 delivered, none that is.
    let max = flaky_polls.iter().copied().max().unwrap_or(0);
    let expected: Vec<i64> = (1..=max).filter(|p| p % 3 != 0).collect();
    assert_eq!(flaky_polls, expected);
    let (_, last) = &snapshots[snapshots.len() - 1];
    eprintln!(
        "telemetry counters: flaky {} ok / {} failed, {} messages = {} payload bytes acknowledged and received",
        last["drivers"][1]["polls_ok"],
        last["drivers"][1]["polls_failed"],
        last["publisher"]["messages_acked"],
        last["publisher"]["payload_bytes_acked"]
    );
    Ok(())
}

#[tokio::test]
async fn the_local_history_rotates_raw_samples_and_keeps_correct_roll_ups() -> anyhow::Result<()> {
    let (dir, pki, port, _broker, mut sub) = Rig::start("", "ferrule/gw-test/telemetry")
        .await?
        .into_parts();
    let config = dir.path().join("gateway.toml");
    let text = sim_config(&dir.path().join("data"), &pki, port, 100, 2, "")?
        .set("telemetry", "interval_s", 1)
        .set("telemetry", "raw_retention_s", 3)
        .render();
    std::fs::write(&config, text)?;
    let mut ferrule = start_ferrule(dir.path(), &["run", &config.to_string_lossy()])?;
    let mut published: Vec<serde_json::Value> = Vec::new();
    while published.len() < 8 {
        published.push(
            sub.next(Duration::from_secs(30), "telemetry")
                .await?
                .json()?,
        );
    }
    // While it runs: the operator's status and the telemetry table.
    let config_arg = config.to_string_lossy().into_owned();
    let (ok, out, err) = ferrule_tests::run_ferrule(dir.path(), &["status", &config_arg])?;
    assert!(ok, "{err}");
    assert!(
        out.contains("broker       connected") && out.contains("sim-1"),
        "{out}"
    );
    let (ok, out, err) =
        ferrule_tests::run_ferrule(dir.path(), &["telemetry", "show", &config_arg])?;
    assert!(ok, "{err}");
    assert!(
        out.contains("drivers.sim-1.polls_ok") && out.contains("hourly trend"),
        "{out}"
    );
    eprintln!("ferrule telemetry show:\n{out}");

    ferrule.terminate(Duration::from_secs(10))?;
    let (ok, out, err) = ferrule_tests::run_ferrule(
        dir.path(),
        &["telemetry", "show", &config_arg, "--json", "--raw"],
    )?;
    assert!(ok, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out)?;
    let raw = shown["raw"].as_array().cloned().unwrap_or_default();
    let ts = |s: &serde_json::Value| s["ts_ms"].as_u64().unwrap_or(0);
    let polls = |s: &serde_json::Value| s["drivers"][0]["polls_ok"].as_u64().unwrap_or(0);
    let last = raw.last().map(ts).unwrap_or(0);
    // Raw: only the last 3 s are kept (1 s apart, the shutdown one included).
    assert!(
        (1..=5).contains(&raw.len()) && raw.iter().all(|s| ts(s) + 3000 >= last),
        "raw samples within 3 s of the last: {:?}",
        raw.iter().map(ts).collect::<Vec<_>>()
    );
    let (ok, out, err) =
        ferrule_tests::run_ferrule(dir.path(), &["status", &config_arg, "--json"])?;
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        status["telemetry"]["ts_ms"].as_u64(),
        Some(last),
        "status reads the same history"
    );
    // Every sample ever recorded: those published plus those still raw (the
    // last ones may not have been sent before shutdown).
    let recorded: std::collections::BTreeMap<u64, u64> = published
        .iter()
        .chain(raw.iter())
        .map(|s| (ts(s), polls(s)))
        .collect();
    assert!(
        recorded.keys().any(|t| *t + 3000 < last),
        "some samples are older than the raw retention and were rotated away"
    );
    let rollups = shown["hourly"]["drivers.sim-1.polls_ok"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let samples: u64 = rollups.iter().filter_map(|r| r["samples"].as_u64()).sum();
    let min = rollups
        .iter()
        .filter_map(|r| r["min"].as_f64())
        .fold(f64::INFINITY, f64::min);
    let max = rollups
        .iter()
        .filter_map(|r| r["max"].as_f64())
        .fold(0.0, f64::max);
    let sum: f64 = rollups
        .iter()
        .filter_map(|r| Some(r["avg"].as_f64()? * r["samples"].as_u64()? as f64))
        .sum();
    let values: Vec<f64> = recorded.values().map(|v| *v as f64).collect();
    eprintln!(
        "history: {} samples recorded ({} still raw), roll-ups: {samples} samples, min {min}, max {max}, sum {sum}",
        recorded.len(),
        raw.len()
    );
    assert_eq!(
        samples,
        recorded.len() as u64,
        "every sample is in the roll-ups once"
    );
    assert_eq!(
        min,
        values.iter().copied().fold(f64::INFINITY, f64::min),
        "min"
    );
    assert_eq!(max, values.iter().copied().fold(0.0, f64::max), "max");
    assert!(
        (sum - values.iter().sum::<f64>()).abs() < 1e-6,
        "average x samples = sum"
    );
    Ok(())
}
