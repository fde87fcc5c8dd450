//! `cargo xtask bench footprint`: resident memory and CPU of an idle
//! gateway with 1, 10 and 50 drivers (each a sim driver of 10 channels
//! polled every second through a `scale` processor, connected to mosquitto
//! over mutual TLS). Baseline, same run: `bare-publisher`, a bare rumqttc
//! TLS client sending one 10-reading message a second. Prints figures;
//! asserts nothing.

use std::time::Duration;

use ferrule_benches::{self as bench, Report, Span, Usage};

const CHANNELS: usize = 10;
const INTERVAL_MS: u64 = 1000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::pinned(
        "footprint",
        "idle footprint: RSS and CPU with 1, 10 and 50 drivers",
    )?;
    let span = Span::secs(5, 10);
    report.method(format!(
        "ferrule (release) with N sim drivers of {CHANNELS} channels every {INTERVAL_MS} ms, each with a scale processor (2N plugin instances), telemetry every 60 s, connected to mosquitto over mutual TLS; RSS sampled every second and CPU time over {span} of start-up"
    ));
    report.method(
        "the 10-driver gateway is then started again on the same data dir: its plugins come from the compile cache, as at every start after a gateway's first (the figure the 24 MiB goal is for)",
    );
    report.method(
        "baseline: bare-publisher (rumqttc + rustls, no plugins, no queue) sending one 10-reading message a second, same window",
    );
    let (dir, pki, port, broker) = bench::broker("footprint")?;

    let bare = bench::bare_publisher(
        &pki,
        port,
        "bench/bare",
        64,
        span.total() + Duration::from_secs(1),
    )?
    .args(["--rate", "1", "--readings", "10"])
    .spawn()?;
    bench::pin_gateway(bare.id())?;
    tokio::time::sleep(span.warmup).await;
    let base = bench::measure(&[bare.id()], span.window).await?;
    let output = tokio::task::spawn_blocking(move || bare.wait_with_output()).await??;
    anyhow::ensure!(
        output.status.success(),
        "bare-publisher failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut results: Vec<(usize, Usage)> = Vec::new();
    let mut warm: Option<Usage> = None;
    for drivers in [1usize, 10, 50] {
        let data = dir.path().join(format!("data-{drivers}"));
        let sims = (0..drivers)
            .map(|d| bench::sim_driver(&format!("sim-{d}"), CHANNELS, INTERVAL_MS, 1))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // The default in-flight window.
        let config = bench::gateway_of(&data, &pki, port, 32, sims).render();
        let path = dir.path().join(format!("footprint-{drivers}.toml"));
        std::fs::write(&path, config)?;
        let mut ferrule =
            bench::start_ferrule(dir.path(), &path, &format!("ferrule-{drivers}.log"))?;
        let pid = ferrule.child.id();
        bench::pin_gateway(pid)?;
        tokio::time::sleep(span.warmup).await;
        let usage = bench::measure(&[pid], span.window).await?;
        ferrule.terminate(Duration::from_secs(10))?;
        results.push((drivers, usage));
        if drivers == 10 {
            // The same gateway started again: its plugins come from the
            // compile cache, as at every start after a gateway's first, so
            // Cranelift never runs and its code is never paged in.
            let mut again =
                bench::start_ferrule(dir.path(), &path, &format!("ferrule-{drivers}-again.log"))?;
            let pid = again.child.id();
            bench::pin_gateway(pid)?;
            tokio::time::sleep(span.warmup).await;
            warm = Some(bench::measure(&[pid], span.window).await?);
            again.terminate(Duration::from_secs(10))?;
        }
    }

    let base_mib = base.rss_mean_kib / 1024.0;
    for (drivers, usage) in &results {
        let figure = report.compare(
            &format!("RSS with {drivers} driver(s)"),
            usage.rss_mean_kib / 1024.0,
            "MiB",
            "bare rumqttc client",
            base_mib,
        );
        if *drivers == 10 {
            figure.at_most(40.0);
        }
    }
    if let Some(warm) = &warm {
        report
            .compare(
                "RSS with 10 driver(s), restarted (compile cache warm)",
                warm.rss_mean_kib / 1024.0,
                "MiB",
                "bare rumqttc client",
                base_mib,
            )
            .at_most(24.0);
    }
    for (drivers, usage) in &results {
        report.compare(
            &format!("CPU with {drivers} driver(s)"),
            usage.cpu_percent(),
            "% of one core",
            "bare rumqttc client",
            base.cpu_percent(),
        );
    }
    if let (Some((_, one)), Some((_, fifty))) = (results.first(), results.last()) {
        report.figure(
            "RSS added per driver (1 → 50)",
            (fifty.rss_mean_kib - one.rss_mean_kib) / 49.0,
            "KiB",
        );
    }
    report.finish()?;
    drop(broker);
    Ok(())
}
