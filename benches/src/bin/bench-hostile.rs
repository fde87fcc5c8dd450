//! `cargo xtask bench hostile`: what hostile plugins cost the host at the
//! default limits.
//!
//! 1. Host memory: peak RSS of a gateway whose eight `hostile` drivers each
//!    return the largest output the default limits allow (a ~2 MiB poll
//!    result, a status at its entry and size limits, a log line at its
//!    length limit), against the same eight returning one small reading
//!    each (the baseline, same run). The target is at most 64 MiB above
//!    that baseline, plugins' own linear memory included.
//! 2. Telemetry files: a driver whose status is far over the limits (5,000
//!    pairs of 4 KiB: the case that once made every snapshot ~27 MB and the
//!    telemetry files grow by hundreds of MB in 30 s) beside four whose
//!    statuses churn at the limits, with a snapshot every second and the
//!    history capped at 4 MiB: the sizes of `telemetry.redb` and
//!    `telemetry-history.redb` afterwards, and the snapshots delivered.
//!
//! Prints figures; asserts nothing.

use std::path::Path;
use std::time::Duration;

use ferrule_benches::{self as bench, Report, Span};
use ferrule_tests::{GatewayToml, PluginToml, Subscriber, gateway_toml, hostile_driver, rss_peak};

/// The history cap of the telemetry phase.
const HISTORY_CAP: u64 = 4 << 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::pinned(
        "hostile",
        "hostile plugins: host memory and telemetry files at the default limits",
    )?;
    let span = Span::secs(5, 15);
    // Long enough for a few snapshots even in smoke mode.
    let churn = bench::scaled(Duration::from_secs(30), Duration::from_secs(3));
    report.method(format!(
        "ferrule (release), 8 hostile drivers polled every second, connected to mosquitto over mutual TLS; peak RSS sampled every 10 ms over {span} of start-up"
    ));
    report.method(
        "largest: each driver returns 31 text readings of 64 KiB (~2 MiB, under max_result_bytes), a status of 64 pairs of 1 KiB and a firmware of 1 KiB, and logs 4 KiB per poll; baseline: the same 8 drivers returning one integer reading",
    );
    report.method(format!(
        "telemetry files: one driver with a status of 5,000 pairs of 4 KiB (refused) and four with statuses of 64 pairs of 1 KiB whose values change each time they are asked; a snapshot every second, max_history_bytes = {} MiB; sizes after {:.0} s",
        HISTORY_CAP >> 20,
        churn.as_secs_f64()
    ));
    let (dir, pki, port, broker) = bench::broker("hostile")?;

    let eight = |config: &str| -> anyhow::Result<Vec<PluginToml>> {
        (0..8)
            .map(|i| Ok(hostile_driver(&format!("d{i}"), config, "")?.set("interval_ms", 1000)))
            .collect()
    };
    let small = eight("behavior = \"readings\"\ncount = 1")?;
    let largest = eight("behavior = \"largest\"\ncount = 31\nbytes = 65536\npairs = 64")?;
    let mut peaks = Vec::new();
    for (name, drivers) in [("small", small), ("largest", largest)] {
        let data = dir.path().join(format!("data-{name}"));
        let config = drivers
            .into_iter()
            .fold(gateway_toml(&data, &pki, port), GatewayToml::driver)
            .render();
        let path = dir.path().join(format!("hostile-{name}.toml"));
        std::fs::write(&path, config)?;
        let mut ferrule = bench::start_ferrule(dir.path(), &path, &format!("ferrule-{name}.log"))?;
        let pid = ferrule.child.id();
        bench::pin_gateway(pid)?;
        tokio::time::sleep(span.warmup).await;
        let peak = rss_peak(pid, span.window).await??;
        anyhow::ensure!(
            ferrule.child.try_wait()?.is_none(),
            "ferrule stopped with the {name} outputs:\n{}",
            ferrule.log_text()
        );
        ferrule.terminate(Duration::from_secs(10))?;
        peaks.push(peak as f64 / 1024.0);
    }
    let (idle, high) = (peaks[0], peaks[1]);
    report.figure("peak RSS, 8 drivers, one small reading each", idle, "MiB");
    report.figure("peak RSS, 8 drivers, largest allowed outputs", high, "MiB");
    report
        .compare(
            "peak RSS above the small-output gateway",
            high - idle,
            "MiB",
            "peak RSS, small outputs",
            idle,
        )
        .at_most(64.0);

    let files = telemetry_files(&dir.path().join("data-telemetry"), &pki, port, churn).await?;
    report.figure(
        "telemetry snapshots delivered per second",
        files.snapshots as f64 / churn.as_secs_f64(),
        "/s",
    );
    report
        .figure(
            "telemetry-history.redb after the run",
            files.history as f64 / 1_048_576.0,
            "MiB",
        )
        // The file's own bound: twice the cap plus the compaction margin.
        .at_most(2.0 * (HISTORY_CAP >> 20) as f64 + 4.0);
    report.figure(
        "telemetry.redb after the run",
        files.queue as f64 / 1_048_576.0,
        "MiB",
    );
    report.finish()?;
    drop(broker);
    Ok(())
}

struct TelemetryFiles {
    snapshots: u64,
    history: u64,
    queue: u64,
}

async fn telemetry_files(
    data: &Path,
    pki: &ferrule_tests::Pki,
    port: u16,
    churn: Duration,
) -> anyhow::Result<TelemetryFiles> {
    let mut gateway = gateway_toml(data, pki, port)
        .set("telemetry", "interval_s", 1)
        .set("telemetry", "max_history_bytes", HISTORY_CAP as i64)
        .driver(hostile_driver(
            "huge-status",
            "behavior = \"huge-status\"\ncount = 5000\nbytes = 4096",
            "limits = { memory_mb = 128, timeout_ms = 5000 }",
        )?);
    for i in 0..4 {
        gateway = gateway.driver(hostile_driver(
            &format!("churn-{i}"),
            "behavior = \"largest\"\ncount = 1\nbytes = 1024\npairs = 64",
            "",
        )?);
    }
    let dir = data.parent().unwrap_or(data);
    let config = gateway.render();
    let path = dir.join("hostile-telemetry.toml");
    std::fs::write(&path, config)?;
    let mut sub = Subscriber::connect(pki, port, "ferrule/gw-test/telemetry").await?;
    let tally = bench::Tally::start(&mut sub, |_| true, |_| 0, 0);
    let mut ferrule = bench::start_ferrule(dir, &path, "ferrule-telemetry.log")?;
    bench::pin_gateway(ferrule.child.id())?;
    tokio::time::sleep(churn).await;
    let (snapshots, _) = tally.now();
    ferrule.terminate(Duration::from_secs(10))?;
    let size = |name: &str| std::fs::metadata(data.join(name)).map_or(0, |m| m.len());
    Ok(TelemetryFiles {
        snapshots,
        history: size("telemetry-history.redb"),
        queue: size("telemetry.redb"),
    })
}
