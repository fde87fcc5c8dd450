//! `cargo xtask bench e2e`: the whole path at full speed. The `ferrule`
//! binary runs sim drivers (100 readings a poll, polled every millisecond),
//! each through a `scale` processor, into the queue (every batch committed
//! with an fsync before it is published) and on to mosquitto over mutual TLS
//! with QoS 1. A subscriber counts what arrives. Baseline, same run, same
//! broker: `bare-publisher`, a rumqttc client with the same TLS settings,
//! publishing the payloads ferrule sent as fast as mosquitto acknowledges.
//! Prints figures; asserts nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrule_benches::{self as bench, Report, Span, Tally};
use ferrule_tests::{Pki, Subscriber};

/// ferrule's voluntary context switches, from its telemetry snapshots.
struct ContextSwitches(Arc<Mutex<Vec<(u64, u64)>>>);

impl ContextSwitches {
    /// Collects (ts_ms, voluntary switches) from every snapshot published.
    async fn watch(pki: &Pki, port: u16) -> anyhow::Result<ContextSwitches> {
        let mut sub = Subscriber::connect(pki, port, "ferrule/gw-test/telemetry").await?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = seen.clone();
        tokio::spawn(async move {
            while let Ok(m) = sub.next(Duration::from_secs(3600), "telemetry").await {
                let Ok(v) = m.json() else { continue };
                let ts = v["ts_ms"].as_u64();
                let switches = v["process"]["voluntary_context_switches"].as_u64();
                if let (Some(ts), Some(switches)) = (ts, switches) {
                    keep.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((ts, switches));
                }
            }
        });
        Ok(ContextSwitches(seen))
    }

    /// Switches per second between the first and last snapshot taken
    /// within [from_ms, to_ms].
    fn rate_between(&self, from_ms: u64, to_ms: u64) -> Option<f64> {
        let seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let inside: Vec<&(u64, u64)> = seen
            .iter()
            .filter(|(ts, _)| (from_ms..=to_ms).contains(ts))
            .collect();
        let (first, last) = (inside.first()?, inside.last()?);
        let seconds = (last.0.checked_sub(first.0)? as f64) / 1000.0;
        (seconds > 0.0).then(|| last.1.saturating_sub(first.1) as f64 / seconds)
    }
}

const DRIVERS: usize = 8;
const CHANNELS: usize = 100;
const INFLIGHT: u16 = 64;

/// What one ferrule run delivered.
struct Run {
    msgs: f64,
    readings: f64,
    cpu_us: f64,
    usage: bench::Usage,
    switches_per_s: Option<f64>,
    /// Payloads it published, for the bare client to replay.
    kept: Vec<Vec<u8>>,
}

/// Runs ferrule with `[storage] encryption` set so, in its own data dir
/// `name`, and counts what arrives over `span`.
async fn ferrule_run(
    dir: &std::path::Path,
    pki: &Pki,
    port: u16,
    name: &str,
    encryption: &str,
    span: Span,
) -> anyhow::Result<Run> {
    let mut sub = Subscriber::connect(pki, port, "ferrule/gw-test/data/#").await?;
    let tally = Tally::start(&mut sub, |_| true, bench::readings_in, 1000);
    let drivers = (0..DRIVERS)
        .map(|d| bench::sim_driver(&format!("sim-{d}"), CHANNELS, 1, 1))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // A telemetry snapshot every second: the process's context switches.
    let config = bench::gateway_of(&dir.join(name), pki, port, INFLIGHT, drivers)
        .set("telemetry", "interval_s", 1)
        .set("storage", "encryption", encryption)
        .set("storage", "key_file", format!("{name}.key"))
        .render();
    let switches = ContextSwitches::watch(pki, port).await?;
    let config_path = dir.join(format!("{name}.toml"));
    std::fs::write(&config_path, config)?;
    let mut ferrule = bench::start_ferrule(dir, &config_path, &format!("{name}.log"))?;
    let pid = ferrule.child.id();
    bench::pin_gateway(pid)?;
    bench::first_arrival("ferrule", || tally.now().0 > 0, &ferrule).await?;
    tokio::time::sleep(span.warmup).await;
    let (m0, r0) = tally.now();
    let window_start = ferrule::reading::now_ns() / 1_000_000;
    let usage = bench::measure(&[pid], span.window).await?;
    let (m1, r1) = tally.now();
    let window_end = ferrule::reading::now_ns() / 1_000_000;
    ferrule.terminate(Duration::from_secs(20))?;
    let kept = tally.kept();
    anyhow::ensure!(
        !kept.is_empty(),
        "ferrule delivered nothing; log:\n{}",
        ferrule.log_text()
    );
    Ok(Run {
        msgs: (m1 - m0) as f64 / usage.wall_s,
        readings: (r1 - r0) as f64 / usage.wall_s,
        cpu_us: usage.cpu_s * 1e6 / (m1 - m0).max(1) as f64,
        switches_per_s: switches.rate_between(window_start, window_end),
        usage,
        kept,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::pinned(
        "e2e",
        "end-to-end throughput: sim driver → scale processor → queue (fsync) → mosquitto over TLS, QoS 1",
    )?;
    let span = Span::secs(3, 10);
    report.method(format!(
        "ferrule: {DRIVERS} sim drivers x {CHANNELS} channels polled every 1 ms, each through one scale processor (every channel), queue with an fsync per commit (group commit), max_inflight {INFLIGHT}; counted at a TLS subscriber for {span} of warm-up"
    ));
    report.method(format!(
        "encryption: the same ferrule run twice in a row, with [storage] encryption = \"aes-256-gcm\" (the default; queue entries and telemetry sealed) and = \"none\", each for {span}"
    ));
    report.method(format!(
        "baseline: bare-publisher (rumqttc, same TLS settings and TCP_NODELAY, in-flight {INFLIGHT}) replaying payloads ferrule sent, as fast as acknowledged, same window"
    ));

    let (dir, pki, port, broker) = bench::broker("e2e")?;

    let run = |name: &'static str, encryption: &'static str| {
        let (dir, pki) = (dir.path().to_path_buf(), &pki);
        async move { ferrule_run(&dir, pki, port, name, encryption, span).await }
    };
    // Encrypted at rest (the default), then the same in plaintext.
    let sealed = run("e2e", "aes-256-gcm").await?;
    let plain = run("e2e-plaintext", "none").await?;
    let Run {
        msgs: ferrule_msgs,
        readings: ferrule_readings,
        cpu_us: ferrule_cpu_us,
        usage,
        switches_per_s,
        kept,
    } = sealed;

    // Baseline: the same payloads from a bare client.
    let payloads = dir.path().join("payloads.txt");
    std::fs::write(&payloads, kept.join(&b'\n'))?;
    let mut bare_sub = Subscriber::connect(&pki, port, "bench/bare").await?;
    let bare_tally = Tally::start(&mut bare_sub, |_| true, bench::readings_in, 0);
    let bare = bench::bare_publisher(
        &pki,
        port,
        "bench/bare",
        INFLIGHT,
        span.total() + Duration::from_secs(1),
    )?
    .arg("--payloads")
    .arg(&payloads)
    .spawn()?;
    let bare_pid = bare.id();
    bench::pin_gateway(bare_pid)?;
    tokio::time::sleep(span.warmup).await;
    let (b0, br0) = bare_tally.now();
    let bare_usage = bench::measure(&[bare_pid], span.window).await?;
    let (b1, br1) = bare_tally.now();
    let output = tokio::task::spawn_blocking(move || bare.wait_with_output()).await??;
    anyhow::ensure!(
        output.status.success(),
        "bare-publisher failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bare_msgs = (b1 - b0) as f64 / bare_usage.wall_s;
    let bare_readings = (br1 - br0) as f64 / bare_usage.wall_s;
    let bare_cpu_us = bare_usage.cpu_s * 1e6 / (b1 - b0).max(1) as f64;

    report
        .compare(
            "messages delivered per second",
            ferrule_msgs,
            "msg/s",
            "bare rumqttc",
            bare_msgs,
        )
        .ratio_at_least(0.5);
    report.compare(
        "readings delivered per second",
        ferrule_readings,
        "readings/s",
        "bare rumqttc",
        bare_readings,
    );
    report.compare(
        "CPU time per message (the sender's process)",
        ferrule_cpu_us,
        "µs",
        "bare rumqttc",
        bare_cpu_us,
    );
    report
        .compare(
            "messages per second, encrypted at rest",
            ferrule_msgs,
            "msg/s",
            "plaintext at rest, same run",
            plain.msgs,
        )
        .ratio_at_least(0.9);
    report.compare(
        "CPU time per message, encrypted at rest",
        ferrule_cpu_us,
        "µs",
        "plaintext at rest, same run",
        plain.cpu_us,
    );
    report.figure("ferrule CPU use", usage.cpu_percent(), "% of one core");
    match switches_per_s {
        Some(rate) => {
            report.figure(
                "thread hand-overs per message (voluntary context switches)",
                rate / ferrule_msgs.max(f64::MIN_POSITIVE),
                "per message",
            );
        }
        None => {
            report.method("thread hand-overs: fewer than two telemetry snapshots in the window")
        }
    }
    report.figure(
        "ferrule RSS (mean over the window)",
        usage.rss_mean_kib / 1024.0,
        "MiB",
    );
    report.finish()?;
    drop(broker);
    Ok(())
}
