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
