//! `cargo xtask bench latency`: time from a reading's timestamp (taken by
//! the driver when it polls) to its arrival at an MQTT subscriber, at a
//! fixed 1,000 readings/s: one sim driver of 10 channels polled every
//! 10 ms, through a `scale` processor, the queue (an fsync per commit) and
//! mosquitto over mutual TLS, QoS 1. Baseline, same run: `bare-publisher`
//! sending 100 messages/s of 10 readings stamped when sent, straight to the
//! broker (the floor set by TLS, the broker and the subscriber). Prints
//! figures; asserts nothing.

use std::time::{Duration, Instant};

use ferrule::reading::now_ns;
use ferrule_benches::{self as bench, Report, Span};
use ferrule_tests::Subscriber;

const CHANNELS: usize = 10;
const INTERVAL_MS: u64 = 10;

/// Latencies (ms) of every reading received in `span.window` after `span.warmup`.
async fn collect(sub: &mut Subscriber, span: Span) -> anyhow::Result<Vec<f64>> {
    // The window starts with the first message (start-up is not latency).
    let first = tokio::time::timeout(Duration::from_secs(90), sub.messages.recv())
        .await
        .map_err(|_| anyhow::anyhow!("no message within 90 s"))?;
    anyhow::ensure!(first.is_some(), "subscriber closed");
    let start = Instant::now();
    let mut latencies = Vec::new();
    while start.elapsed() < span.total() {
        let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(200), sub.messages.recv()).await
        else {
            continue;
        };
        let arrived = now_ns();
        if start.elapsed() < span.warmup {
            continue;
        }
        let message = m.json()?;
        for reading in message["readings"].as_array().into_iter().flatten() {
            if let Some(ts) = reading["ts_ns"].as_u64() {
                latencies.push(arrived.saturating_sub(ts) as f64 / 1e6);
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::pinned(
        "latency",
        "latency from reading timestamp to subscriber at 1,000 readings/s",
    )?;
    let span = Span::secs(2, 20);
    report.method(format!(
        "ferrule: one sim driver, {CHANNELS} channels every {INTERVAL_MS} ms (1,000 readings/s), one scale processor, queue with an fsync per commit, QoS 1 over mutual TLS; every reading's arrival time at a subscriber minus its timestamp, over {span} of warm-up"
    ));
    report.method(
        "baseline: bare-publisher (rumqttc, same TLS settings) sending 100 messages/s of 10 readings stamped when sent, same broker and subscriber",
    );

    let (dir, pki, port, broker) = bench::broker("latency")?;

    let mut sub = Subscriber::connect(&pki, port, "ferrule/gw-test/data/#").await?;
    let config = bench::gateway_of(
        &dir.path().join("data"),
        &pki,
        port,
        32,
        [bench::sim_driver("sim-1", CHANNELS, INTERVAL_MS, 1)?],
    )
    .render();
    let config_path = dir.path().join("latency.toml");
    std::fs::write(&config_path, config)?;
    let mut ferrule = bench::start_ferrule(dir.path(), &config_path, "ferrule.log")?;
    bench::pin_gateway(ferrule.child.id())?;
    let ours = collect(&mut sub, span).await?;
    ferrule.terminate(Duration::from_secs(10))?;
    anyhow::ensure!(
        !ours.is_empty(),
        "no readings arrived; log:\n{}",
        ferrule.log_text()
    );

    let mut bare_sub = Subscriber::connect(&pki, port, "bench/bare").await?;
    let bare = bench::bare_publisher(
        &pki,
        port,
        "bench/bare",
        64,
        span.total() + Duration::from_millis(500),
    )?
    .args(["--rate", "100", "--readings", &CHANNELS.to_string()])
    .spawn()?;
    bench::pin_gateway(bare.id())?;
    let floor = collect(&mut bare_sub, span).await?;
    let output = tokio::task::spawn_blocking(move || bare.wait_with_output()).await??;
    anyhow::ensure!(
        output.status.success() && !floor.is_empty(),
        "bare-publisher failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let readings_per_s = ours.len() as f64 / span.window.as_secs_f64();
    report.figure("readings measured per second", readings_per_s, "readings/s");
    for (name, p) in [("p50", 50.0), ("p99", 99.0)] {
        let figure = report.compare(
            &format!("latency {name}"),
            bench::percentile(&ours, p),
            "ms",
            "bare rumqttc",
            bench::percentile(&floor, p),
        );
        if p == 99.0 {
            figure.at_most(10.0);
        }
    }
    report.compare(
        "latency max",
        ours.last().copied().unwrap_or(f64::NAN),
        "ms",
        "bare rumqttc",
        floor.last().copied().unwrap_or(f64::NAN),
    );
    report.finish()?;
    drop(broker);
    Ok(())
}
