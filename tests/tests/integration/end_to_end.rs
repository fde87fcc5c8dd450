//! The skeleton's promise: a WASM driver's readings, through a WASM
//! processor and the redb queue, reach a real mosquitto over mutual TLS.

use std::time::{Duration, Instant};

use ferrule_tests::{Mosquitto, Rig, Subscriber, persistence_config, start_ferrule};

use crate::common::sim_scale_config;

#[tokio::test]
async fn over_mqtt_3_1_1_scaled_readings_arrive_in_sequence_and_status_goes_offline_on_kill()
-> anyhow::Result<()> {
    skeleton_end_to_end("3.1.1").await
}

#[tokio::test]
async fn over_mqtt_5_scaled_readings_arrive_in_sequence_and_status_goes_offline_on_kill()
-> anyhow::Result<()> {
    skeleton_end_to_end("5").await
}

async fn skeleton_end_to_end(protocol: &str) -> anyhow::Result<()> {
    let (dir, pki, port, broker, mut sub) = Rig::start("", "ferrule/gw-test/#").await?.into_parts();

    let config = dir.path().join("gateway.toml");
    let text = sim_scale_config(dir.path(), &pki, port, 100)?
        .set("mqtt", "protocol", protocol)
        .render();
    assert!(text.contains("protocol = "));
    std::fs::write(&config, text)?;
    let mut ferrule = start_ferrule(dir.path(), &["run", config.to_str().unwrap_or_default()])?;

    let mut online = false;
    let mut seqs = Vec::new();
    let mut counts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seqs.len() < 25 {
        if Instant::now() > deadline {
            anyhow::bail!(
                "only {} data messages in 60 s; ferrule log:\n{}",
                seqs.len(),
                ferrule.log_text()
            );
        }
        let m = sub.next(Duration::from_secs(30), "data messages").await?;
        if m.topic == "ferrule/gw-test/status" {
            if m.text() != "online" {
                // Let both processes finish writing their logs.
                tokio::time::sleep(Duration::from_secs(1)).await;
                anyhow::bail!(
                    "status {:?} before any data; mosquitto log:\n{}\nferrule log:\n{}",
                    m.text(),
                    broker.process.log_text(),
                    ferrule.log_text()
                );
            }
            online = true;
            continue;
        }
        if m.topic == "ferrule/gw-test/audit" {
            continue;
        }
        assert_eq!(m.topic, "ferrule/gw-test/data/sim-1");
        let v = m.json()?;
        assert_eq!(v["gateway"], "gw-test");
        assert_eq!(v["driver"], "sim-1");
        seqs.push(v["seq"].as_u64().unwrap_or_default());
        let readings = v["readings"].as_array().cloned().unwrap_or_default();
        assert_eq!(readings.len(), 2, "one reading per channel: {v}");
        let count = &readings[0];
        assert_eq!(count["channel"], "count");
        assert_eq!(count["type"], "float", "scaled values are floats");
        counts.push(count["value"].as_f64().unwrap_or(f64::NAN));
        let temp = &readings[1];
        assert_eq!(temp["channel"], "temperature_f", "renamed by scale");
        assert_eq!(temp["unit"], "degF");
        assert_eq!(temp["quality"], "good");
        let f = temp["value"].as_f64().unwrap_or(f64::NAN);
        // sine 20 ± 5 degC is 59..77 degF after scaling.
        assert!(
            (58.9..=77.1).contains(&f),
            "temperature_f {f} out of the scaled range"
        );
        assert!(temp["ts_ns"].as_u64().unwrap_or(0) > 0);
    }
    assert!(online, "status topic said online");
    let connected = ferrule
        .log_text()
        .lines()
        .find(|l| l.contains("mqtt connected"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        connected.contains(&format!("protocol=\"{protocol}\"")),
        "connected with MQTT {protocol}: {connected}"
    );
    eprintln!("MQTT {protocol}: {connected}");
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "sequence numbers contiguous from 1");
    // The counter starts at 0 and steps by 1 per poll; scale maps n to 2n + 1.
    for (i, c) in counts.iter().enumerate() {
        assert_eq!(*c, 2.0 * i as f64 + 1.0, "count reading {i} scaled");
    }

    ferrule.kill9();
    // The broker publishes the will as soon as it sees the socket close.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if Instant::now() > deadline {
            anyhow::bail!("no offline status within 20 s of kill -9");
        }
        let m = sub.next(Duration::from_secs(20), "offline status").await?;
        if m.topic == "ferrule/gw-test/status" {
            assert_eq!(m.text(), "offline");
            break;
        }
    }
    // The status is retained: a new subscriber sees "offline" at once.
    let mut late = Subscriber::connect(&pki, port, "ferrule/gw-test/status").await?;
    let m = late
        .next(Duration::from_secs(10), "retained status")
        .await?;
    assert!(m.retain, "status is retained");
    assert_eq!(m.text(), "offline");
    drop(broker);
    Ok(())
}

/// Collects data messages until one with `seq >= until` arrives; returns every seq seen.
async fn collect_until(
    sub: &mut Subscriber,
    until: u64,
    limit: Duration,
    ferrule: &ferrule_tests::Process,
) -> anyhow::Result<Vec<u64>> {
    let deadline = Instant::now() + limit;
    let mut seqs = Vec::new();
    while seqs.iter().all(|s| *s < until) {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = match sub.next(left, &format!("seq {until}")).await {
            Ok(m) => m,
            Err(e) => anyhow::bail!("{e}; got {seqs:?}; ferrule log:\n{}", ferrule.log_text()),
        };
        if m.topic.contains("/data/") {
            seqs.push(m.json()?["seq"].as_u64().unwrap_or_default());
        }
    }
    Ok(seqs)
}

#[tokio::test]
async fn readings_captured_while_the_broker_restarts_arrive_without_gap() -> anyhow::Result<()> {
    // Broker persistence keeps the subscriber's session (and the messages
    // queued for it) across the restart, so the test sees everything the
    // broker accepted.
    let (dir, pki, port, mut broker, mut sub) =
        ferrule_tests::Rig::persistent("ferrule/gw-test/data/#", "restart-sub")
            .await?
            .into_parts();
    let extra = persistence_config(dir.path())?;

    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        sim_scale_config(dir.path(), &pki, port, 50)?.render(),
    )?;
    let mut ferrule = start_ferrule(dir.path(), &["run", config.to_str().unwrap_or_default()])?;

    let mut seqs = collect_until(&mut sub, 10, Duration::from_secs(30), &ferrule).await?;
    broker.process.terminate(Duration::from_secs(10))?;
    // ferrule keeps capturing (every 50 ms) while the broker is away.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = ferrule.log_text();
    assert!(
        log.contains("mqtt connection lost"),
        "the outage was noticed:\n{log}"
    );
    broker = Mosquitto::start(dir.path(), &pki, port, &extra)?;
    let back = ferrule_tests::clock_now();
    let last_before = seqs.iter().copied().max().unwrap_or(0);
    seqs.extend(
        collect_until(
            &mut sub,
            last_before + 50,
            Duration::from_secs(60),
            &ferrule,
        )
        .await?,
    );
    ferrule.kill9();
    // Figures for the record (not asserted): the TLS + MQTT handshake, and
    // the time from the broker listening again to ferrule's CONNACK (backoff
    // capped at reconnect_max_ms = 1000 here).
    let connects = ferrule_tests::connects(&ferrule.log_text());
    if let (Some(first), Some(again)) = (connects.first(), connects.get(1)) {
        eprintln!(
            "handshake (TCP + TLS 1.2 + CONNACK): first {:.1} ms, after restart {:.1} ms; reconnect after the broker came back: {:.0} ms",
            first.1,
            again.1,
            (again.0 - back) * 1000.0
        );
    }

    let max = seqs.iter().copied().max().unwrap_or(0);
    let mut unique = seqs.clone();
    unique.sort_unstable();
    unique.dedup();
    let missing: Vec<u64> = (1..=max)
        .filter(|s| unique.binary_search(s).is_err())
        .collect();
    assert!(missing.is_empty(), "sequence gaps {missing:?} in {seqs:?}");
    eprintln!(
        "broker restart: {} messages up to seq {max}, {} duplicates re-sent after reconnect",
        seqs.len(),
        seqs.len() - unique.len()
    );
    drop(broker);
    Ok(())
}

#[tokio::test]
async fn sigterm_publishes_offline_and_exits_zero() -> anyhow::Result<()> {
    let (dir, pki, port, broker, mut sub) =
        Rig::start("", "ferrule/gw-test/status").await?.into_parts();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        sim_scale_config(dir.path(), &pki, port, 100)?.render(),
    )?;
    let mut ferrule = start_ferrule(dir.path(), &["run", config.to_str().unwrap_or_default()])?;
    let m = sub.next(Duration::from_secs(30), "online status").await?;
    assert_eq!(m.text(), "online");
    let status = ferrule.terminate(Duration::from_secs(10))?;
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        ferrule.log_text()
    );
    let m = sub.next(Duration::from_secs(10), "offline status").await?;
    assert_eq!(m.text(), "offline");
    assert!(ferrule.log_text().contains("shutting down"));
    // A clean MQTT DISCONNECT, so the offline above came from ferrule, not the will.
    let broker_log = broker.process.log_text();
    assert!(
        broker_log.contains("Received DISCONNECT from gw-test"),
        "{broker_log}"
    );
    Ok(())
}

/// `payload_format = "compact"`: the same scaled readings arrive with the
/// channels listed once per message and readings as arrays.
#[tokio::test]
async fn compact_payloads_list_channels_once_and_carry_the_same_readings() -> anyhow::Result<()> {
    let (dir, pki, port, _broker, mut sub) =
        Rig::start("", "ferrule/gw-test/data/#").await?.into_parts();
    let config = dir.path().join("gateway.toml");
    let text = sim_scale_config(dir.path(), &pki, port, 100)?
        .set("mqtt", "payload_format", "compact")
        .render();
    std::fs::write(&config, text)?;
    let mut ferrule = start_ferrule(dir.path(), &["run", config.to_str().unwrap_or_default()])?;
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        let m = sub
            .next(Duration::from_secs(30), "compact data messages")
            .await;
        let m = match m {
            Ok(m) => m,
            Err(e) => anyhow::bail!("{e}; ferrule log:\n{}", ferrule.log_text()),
        };
        let v = m.json()?;
        assert_eq!(v["format"], "compact", "{v}");
        assert_eq!(v["driver"], "sim-1");
        seqs.push(v["seq"].as_u64().unwrap_or_default());
        assert_eq!(
            v["channels"],
            serde_json::json!([
                {"channel": "count", "type": "float"},
                {"channel": "temperature_f", "unit": "degF", "type": "float"}
            ]),
            "{v}"
        );
        let readings = v["readings"].as_array().cloned().unwrap_or_default();
        assert_eq!(readings.len(), 2, "{v}");
        // One timestamp for the poll, good quality: [channel, value] only.
        assert_eq!(readings[0].as_array().map(Vec::len), Some(2), "{v}");
        assert_eq!(readings[0][0], 0);
        let count = readings[0][1].as_f64().unwrap_or(f64::NAN);
        assert_eq!(count, 2.0 * (seqs.len() - 1) as f64 + 1.0, "{v}");
        let f = readings[1][1].as_f64().unwrap_or(f64::NAN);
        assert!((58.9..=77.1).contains(&f), "temperature_f {f}");
        assert!(v["ts_ns"].as_u64().unwrap_or(0) > 0);
    }
    assert_eq!(seqs, (1..=5).collect::<Vec<u64>>());
    ferrule.kill9();
    Ok(())
}

/// An integrator's own driver file, tried with `ferrule demo --drivers`
/// from the file's directory: its relative plugin path is the file's,
/// and no shipped plugin is needed.
#[tokio::test]
async fn demo_runs_an_integrators_drivers_file_with_paths_relative_to_it() -> anyhow::Result<()> {
    let dir = ferrule_tests::tempdir()?;
    let project = dir.path().join("my-driver");
    std::fs::create_dir_all(project.join("build"))?;
    std::fs::copy(
        ferrule_tests::plugin("sim")?,
        project.join("build/my-sim.wasm"),
    )?;
    std::fs::write(
        project.join("drivers.toml"),
        "[[driver]]\nname = \"mine\"\nplugin = \"build/my-sim.wasm\"\ninterval_ms = 100\n[[driver.config.channels]]\nname = \"t\"\nsignal = \"counter\"\n",
    )?;
    let (ok, out, err) = ferrule_tests::run_ferrule(
        &project,
        &[
            "demo",
            "--duration",
            "4s",
            "--plugin-dir",
            "no-such-dir",
            "--drivers",
            "drivers.toml",
        ],
    )?;
    anyhow::ensure!(ok, "demo failed: {err}\n{out}");
    anyhow::ensure!(out.contains("mine"), "the driver's readings shown: {out}");
    Ok(())
}
