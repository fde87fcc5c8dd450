//! Self-telemetry: snapshots go through their own durable lane, so an
//! outage backfills them, in order.

use std::time::{Duration, Instant};

use ferrule_tests::{Mosquitto, Pki, Subscriber, free_port, start_ferrule, tempdir};

use crate::common::sim_config;

#[tokio::test]
async fn snapshots_captured_during_an_outage_arrive_afterwards_in_order() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let pki = Pki::new(&dir.path().join("certs"))?;
    let port = free_port()?;
    let store = ferrule_tests::broker_writable_dir(dir.path(), "mosquitto-db")?;
    let extra = format!(
        "persistence true\npersistence_location {}/\n",
        store.display()
    );
    let mut broker = Mosquitto::start(dir.path(), &pki, port, &extra)?;
    let mut sub =
        Subscriber::connect_persistent(&pki, port, "ferrule/gw-test/telemetry", "telemetry-sub")
            .await?;
    let config = dir.path().join("gateway.toml");
    let text = format!(
        "{}\n[telemetry]\ninterval_s = 1\n",
        sim_config(&dir.path().join("data"), &pki, port, 100, 2, "")?
    );
    std::fs::write(&config, text)?;
    let ferrule = start_ferrule(dir.path(), &["run", &config.to_string_lossy()])?;

    let mut snapshots: Vec<serde_json::Value> = Vec::new();
    while snapshots.len() < 2 {
        let m = sub.next(Duration::from_secs(30), "telemetry").await?;
        snapshots.push(m.json()?);
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
    let outage = Duration::from_secs(5);
    tokio::time::sleep(outage).await;
    broker = Mosquitto::start(dir.path(), &pki, port, &extra)?;
    let back_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    // Everything up to a snapshot taken after the broker returned.
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
        snapshots.push(m.json()?);
    }
    let times: Vec<u64> = snapshots
        .iter()
        .filter_map(|s| s["ts_ms"].as_u64())
        .collect();
    let gaps: Vec<u64> = times
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect();
    eprintln!(
        "telemetry: {} snapshots across a {outage:?} outage, gaps between them (ms): {gaps:?}",
        times.len()
    );
    assert!(times.windows(2).all(|w| w[1] > w[0]), "in order: {times:?}");
    assert!(
        gaps.iter().all(|g| *g < 2_000),
        "no snapshot missing (one a second): {gaps:?}"
    );
    let during = snapshots
        .iter()
        .filter(|s| s["publisher"]["connected"] == false)
        .count();
    assert!(
        during >= 3,
        "snapshots taken during the outage were backfilled: {during}"
    );
    drop(broker);
    Ok(())
}

#[tokio::test]
async fn published_counters_match_what_happened_and_bytes_match_what_arrived() -> anyhow::Result<()>
{
    let dir = tempdir()?;
    let pki = Pki::new(&dir.path().join("certs"))?;
    let port = free_port()?;
    let _broker = Mosquitto::start(dir.path(), &pki, port, "")?;
    let mut sub = Subscriber::connect(&pki, port, "ferrule/gw-test/#").await?;
    let config = dir.path().join("gateway.toml");
    let text = format!(
        "{}\n[[driver]]\nname = \"flaky\"\nplugin = \"{}\"\ninterval_ms = 100\n[driver.config]\nbehavior = \"fail-every\"\ncount = 3\n[[driver.processor]]\nname = \"scale\"\nplugin = \"{}\"\n[driver.processor.config]\nchannels = {{}}\n\n[telemetry]\ninterval_s = 1\n",
        sim_config(&dir.path().join("data"), &pki, port, 100, 2, "")?,
        ferrule_tests::plugin("hostile")?.display(),
        ferrule_tests::plugin("scale")?.display()
    );
    std::fs::write(&config, text)?;
    let ferrule = start_ferrule(dir.path(), &["run", &config.to_string_lossy()])?;

    // Every counted message (data and telemetry) in arrival order, which is
    // the order ferrule published them in (one connection, QoS 1).
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
        } else if !m.topic.contains("/data/") {
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
    let dir = tempdir()?;
    let pki = Pki::new(&dir.path().join("certs"))?;
    let port = free_port()?;
    let _broker = Mosquitto::start(dir.path(), &pki, port, "")?;
    let mut sub = Subscriber::connect(&pki, port, "ferrule/gw-test/telemetry").await?;
    let config = dir.path().join("gateway.toml");
    let text = format!(
        "{}\n[telemetry]\ninterval_s = 1\nraw_retention_s = 3\n",
        sim_config(&dir.path().join("data"), &pki, port, 100, 2, "")?
    );
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
    let (ok, out, err) =
        ferrule_tests::run_ferrule(dir.path(), &["telemetry", "show", &config_arg, "--json"])?;
    assert!(ok, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out)?;
    // Raw samples older than 3 s are gone (1 s apart: 4 at most, with the
    // one taken at shutdown).
    let kept = shown["raw_samples"].as_u64().unwrap_or(0);
    assert!(
        (1..=5).contains(&kept),
        "about 3 s of 1 s samples kept: {kept}"
    );
    let last = shown["latest"]["ts_ms"].as_u64().unwrap_or(0);
    let (ok, out, err) =
        ferrule_tests::run_ferrule(dir.path(), &["status", &config_arg, "--json"])?;
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        status["telemetry"]["ts_ms"].as_u64(),
        Some(last),
        "status reads the same history"
    );
    // Every sample ever recorded: those published plus those kept raw
    // (the last ones may not have been sent before shutdown).
    let mut recorded: std::collections::BTreeMap<u64, u64> = published
        .iter()
        .map(|s| {
            (
                s["ts_ms"].as_u64().unwrap_or(0),
                s["drivers"][0]["polls_ok"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    recorded.insert(
        last,
        shown["latest"]["drivers"][0]["polls_ok"]
            .as_u64()
            .unwrap_or(0),
    );
    assert!(
        recorded.keys().any(|ts| *ts + 3000 < last),
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
    eprintln!(
        "history: {} samples recorded, roll-up samples {samples}, min {min}, max {max}",
        recorded.len()
    );
    // Samples between the last published one and the final one may exist
    // only in the roll-ups; every recorded one is in them.
    assert!(
        samples >= recorded.len() as u64,
        "{samples} < {}",
        recorded.len()
    );
    assert!(
        samples <= recorded.len() as u64 + 3,
        "{samples} samples for {} recorded",
        recorded.len()
    );
    assert_eq!(
        min,
        *recorded.values().min().unwrap_or(&0) as f64,
        "roll-up min"
    );
    assert_eq!(
        max,
        *recorded.values().max().unwrap_or(&0) as f64,
        "roll-up max"
    );
    Ok(())
}
