//! `cargo xtask bench modbus`: the `modbus-tcp` driver plugin polling a
//! 500-register map from pymodbus's server on loopback, as fast as it
//! answers: polls/s and readings/s, against a baseline of the same four
//! requests sent by a plain native client in the same run (how fast the
//! simulator itself answers), and the driver's memory. Prints figures;
//! asserts nothing.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ferrule::config::PluginLimits;
use ferrule::gateway;
use ferrule::plugin::{Capabilities, EngineSettings, PluginEngine, Sandbox};
use ferrule_benches::{self as bench, Report};
use ferrule_tests::net::ModbusSim;
use ferrule_tests::plugin;

const REGISTERS: u16 = 500;
fn run() -> Duration {
    bench::run_for(Duration::from_secs(10))
}

/// Polls/s of a native client sending the same coalesced reads (4 x 125
/// registers) with hand-made frames, for `RUN`.
fn baseline(port: u16) -> anyhow::Result<f64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    let mut tr: u16 = 0;
    let mut buf = vec![0u8; 260];
    let started = Instant::now();
    let mut polls = 0u64;
    while started.elapsed() < run() {
        for start in (0..REGISTERS).step_by(125) {
            tr = tr.wrapping_add(1);
            let [th, tl] = tr.to_be_bytes();
            let [sh, sl] = start.to_be_bytes();
            s.write_all(&[th, tl, 0, 0, 0, 6, 1, 3, sh, sl, 0, 125])?;
            s.read_exact(&mut buf[..6])?;
            let len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
            s.read_exact(&mut buf[..len])?;
        }
        polls += 1;
    }
    Ok(polls as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = bench::workdir("modbus")?;
    let values: Vec<u16> = (0..REGISTERS).map(|i| i * 3).collect();
    let sim = ModbusSim::start(dir.path(), &serde_json::json!({ "holding": values }))?;
    let device = format!("127.0.0.1:{}", sim.port);

    let engine = PluginEngine::with_settings(&EngineSettings {
        max_instances: 4,
        max_memory_mb: 64,
        cache_dir: None,
        ..Default::default()
    })?;
    let loaded = engine.load_driver(&plugin("modbus_tcp")?)?;
    let sandbox = Sandbox::new(
        "bench",
        gateway::plugin_limits(&PluginLimits::default()),
        &Capabilities {
            allow_net: vec![device.clone()],
            ..Capabilities::default()
        },
        dir.path(),
    )?;
    let channels: Vec<serde_json::Value> = (0..REGISTERS)
        .map(|a| serde_json::json!({ "name": format!("r{a}"), "table": "holding", "address": a }))
        .collect();
    let config = serde_json::json!({ "device": device, "timeout_ms": 2000, "channels": channels });
    let rss_before = ferrule_tests::rss_kib(std::process::id())?;
    let limits = PluginLimits::default();
    let mut table = ferrule::plugin::ChannelTable::new(limits.max_channels, limits.max_value_bytes);
    let mut driver = loaded
        .start(
            "bench",
            &sandbox,
            &serde_json::to_string(&config)?,
            &mut table,
        )
        .await?;
    for _ in 0..20 {
        driver.poll(&mut table).await?;
    }
    let started = Instant::now();
    let (mut polls, mut readings, mut bad) = (0u64, 0u64, 0u64);
    while started.elapsed() < run() {
        let batch = driver.poll(&mut table).await?;
        readings += batch.len() as u64;
        bad += batch
            .iter()
            .filter(|r| r.quality != ferrule::reading::Quality::Good)
            .count() as u64;
        polls += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let memory = driver.memory_bytes();
    let rss_after = ferrule_tests::rss_kib(std::process::id())?;
    let status = driver.status().await?;
    drop(driver);
    let native = baseline(sim.port)?;

    let ferrule_polls = polls as f64 / elapsed;
    let mut report = Report::new("modbus", "Modbus TCP driver plugin vs a native client");
    report.method(format!(
        "pymodbus 3.8.6 server on loopback, {REGISTERS} holding registers as u16 channels = 4 coalesced reads of 125 registers per poll, polled back to back for {:.0} s; baseline: a native loop sending the same 4 requests with hand-made frames (the simulator's own pace)",
        run().as_secs_f64()
    ));
    report.compare(
        "modbus-tcp plugin, polls per second",
        ferrule_polls,
        "polls/s",
        "native loop",
        native,
    );
    report.figure(
        "modbus-tcp plugin, readings per second",
        readings as f64 / elapsed,
        "readings/s",
    );
    report.figure("bad readings", bad as f64, "readings");
    report.figure("driver's WASM linear memory", memory as f64 / 1024.0, "KiB");
    report.figure(
        "host RSS growth over the run",
        rss_after.saturating_sub(rss_before) as f64,
        "KiB",
    );
    report.note(format!(
        "driver status after {polls} polls: connected={} signal_quality={:?}",
        status.connected, status.signal_quality
    ));
    report.finish()?;
    Ok(())
}
