//! `cargo xtask bench backlog`: how fast a backlog drains when the broker
//! comes back. First the `ferrule` binary captures with no broker to reach
//! (8 sim drivers x 100 channels every millisecond, each through a `scale`
//! processor) until 1,000,000 readings are queued: that is the capture rate,
//! the baseline. Then mosquitto is up and a gateway on the same data
//! directory starts with a live load (10 drivers x 100 readings every
//! 100 ms, 10,000 readings/s, the side-by-side job's rate): the backlog's
//! readings/s, from its first message at the subscriber to its last, while
//! the live readings keep being captured and sent. Prints figures; asserts
//! nothing.

use std::time::{Duration, Instant};

use ferrule_benches::{self as bench, Report, Tally};
use ferrule_tests::{Mosquitto, Pki, PluginToml, Subscriber, free_port, queue_stats};

const FILL_DRIVERS: usize = 8;
const LIVE_DRIVERS: usize = 10;
const CHANNELS: usize = 100;

fn config(dir: &std::path::Path, pki: &Pki, port: u16, drivers: Vec<PluginToml>) -> String {
    bench::gateway_of(&dir.join("data"), pki, port, 64, drivers).render()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::pinned(
        "backlog",
        "backlog drain after an outage (1,000,000 readings queued) vs the capture rate",
    )?;
    let target_readings: u64 = bench::scaled(1_000_000, 20_000);
    report.method(format!(
        "capture (baseline): ferrule with no broker, {FILL_DRIVERS} sim drivers x {CHANNELS} channels every 1 ms, each through a scale processor, until {target_readings} readings are queued; rate from the queue depth read by `ferrule queue stats` while it runs"
    ));
    report.method(format!(
        "drain: mosquitto up (TLS, QoS 1, max_inflight 64), ferrule restarted on the same queue with a live load of {LIVE_DRIVERS} drivers x {CHANNELS} readings every 100 ms; backlog readings/s from the first to the last backlog message at a subscriber"
    ));
    let dir = bench::workdir("backlog")?;
    let pki = Pki::new(dir.path())?;
    let port = free_port()?;

    // Phase 1: capture with the broker away.
    let fill: Vec<PluginToml> = (0..FILL_DRIVERS)
        .map(|d| bench::sim_driver(&format!("backlog-{d}"), CHANNELS, 1, 1))
        .collect::<anyhow::Result<_>>()?;
    let fill_config = dir.path().join("fill.toml");
    std::fs::write(&fill_config, config(dir.path(), &pki, port, fill))?;
    let mut ferrule = bench::start_ferrule(dir.path(), &fill_config, "fill.log")?;
    bench::pin_gateway(ferrule.child.id())?;
    let depth = || -> anyhow::Result<u64> {
        Ok(queue_stats(dir.path(), &fill_config)?["depth"]
            .as_u64()
            .unwrap_or(0)
            * CHANNELS as u64)
    };
    // Wait for the first commits (plugins compiled, drivers polling).
    let limit = Instant::now() + Duration::from_secs(120);
    let (t0, r0) = loop {
        // The queue file appears with the first commit.
        let r = depth().unwrap_or(0);
        if r > 0 {
            break (Instant::now(), r);
        }
        anyhow::ensure!(
            Instant::now() < limit,
            "nothing captured; log:\n{}",
            ferrule.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (t1, r1) = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = depth()?;
        if r >= target_readings || Instant::now() > limit {
            break (Instant::now(), r);
        }
    };
    ferrule.terminate(Duration::from_secs(20))?;
    let capture = (r1 - r0) as f64 / (t1 - t0).as_secs_f64();
    let backlog = depth()?;

    // Phase 2: the broker is back; drain under a live load.
    let broker = Mosquitto::start(dir.path(), &pki, port, bench::BENCH_BROKER)?;
    bench::pin_peer(broker.process.child.id())?;
    let mut sub = Subscriber::connect(&pki, port, "ferrule/gw-test/data/#").await?;
    let backlog_tally = Tally::start(
        &mut sub,
        |topic| topic.contains("/data/backlog-"),
        bench::readings_in,
        0,
    );
    let mut live_sub = Subscriber::connect(&pki, port, "ferrule/gw-test/data/#").await?;
    let live_tally = Tally::start(
        &mut live_sub,
        |topic| topic.contains("/data/live-"),
        bench::readings_in,
        0,
    );
    let live: Vec<PluginToml> = (0..LIVE_DRIVERS)
        .map(|d| bench::sim_driver(&format!("live-{d}"), CHANNELS, 100, 1))
        .collect::<anyhow::Result<_>>()?;
    let live_config = dir.path().join("live.toml");
    std::fs::write(&live_config, config(dir.path(), &pki, port, live))?;
    let started = Instant::now();
    let mut ferrule = bench::start_ferrule(dir.path(), &live_config, "drain.log")?;
    bench::pin_gateway(ferrule.child.id())?;
    let limit = started + Duration::from_secs(300);
    let mut first = None;
    let mut last = started;
    let mut seen = 0;
    while seen < backlog && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (_, readings) = backlog_tally.now();
        if readings > seen {
            first.get_or_insert(Instant::now());
            last = Instant::now();
            seen = readings;
        }
    }
    let live_during = live_tally.now().1;
    ferrule.terminate(Duration::from_secs(20))?;
    anyhow::ensure!(
        seen >= backlog,
        "only {seen} of {backlog} backlog readings arrived within 300 s; log:\n{}",
        ferrule.log_text()
    );
    let first = first.unwrap_or(started);
    let drain_s = (last - first).as_secs_f64().max(1e-3);
    let drain = seen as f64 / drain_s;

    report.figure("backlog queued", backlog as f64, "readings");
    report.figure("capture rate, no broker", capture, "readings/s");
    report.compare(
        "backlog drain rate",
        drain,
        "readings/s",
        "capture rate",
        capture,
    );
    report.figure("backlog drained in", drain_s, "s");
    report.figure(
        "from restart to the first backlog message",
        (first - started).as_secs_f64(),
        "s",
    );
    report.figure(
        "live readings delivered during the drain (queued behind the backlog)",
        live_during as f64 / (last - started).as_secs_f64().max(1e-3),
        "readings/s",
    );
    report.note(format!(
        "every backlog reading arrived: {seen} of {backlog}"
    ));
    report.finish()?;
    drop(broker);
    Ok(())
}
