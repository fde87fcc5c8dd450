//! The skeleton's promise: a WASM driver's readings, through a WASM
//! processor and the redb queue, reach a real mosquitto over mutual TLS.

use std::time::{Duration, Instant};

use ferrule_tests::{Mosquitto, Pki, Subscriber, free_port, start_ferrule};

use crate::common::sim_scale_config;

#[tokio::test]
async fn scaled_readings_arrive_in_sequence_and_status_goes_offline_on_kill() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(&dir.path().join("certs"))?;
    let port = free_port()?;
    let broker = Mosquitto::start(dir.path(), &pki, port, "")?;
    let mut sub = Subscriber::connect(&pki, port, "ferrule/gw-test/#").await?;

    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, sim_scale_config(dir.path(), &pki, port, 100)?)?;
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
