//! `cargo xtask bench modbus`: the `modbus-tcp` driver plugin polling a
//! 500-register map from pymodbus's server on loopback, as fast as it
//! answers: polls/s and readings/s, against a baseline of the same four
//! requests sent by a plain native client in the same run (how fast the
//! simulator itself answers), and the driver's memory. Prints figures;
//! asserts nothing.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ferrule::config::{Capabilities, PluginLimits};
use ferrule::plugin::{EngineSettings, PluginEngine, Sandbox};
use ferrule_tests::net::ModbusSim;
use ferrule_tests::plugin;

const REGISTERS: u16 = 500;
const RUN: Duration = Duration::from_secs(10);

/// Polls/s of a native client sending the same coalesced reads (4 x 125
/// registers) with hand-made frames, for `RUN`.
fn baseline(port: u16) -> anyhow::Result<f64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    let mut tr: u16 = 0;
    let mut buf = vec![0u8; 260];
    let started = Instant::now();
    let mut polls = 0u64;
    while started.elapsed() < RUN {
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
    let dir = ferrule_tests::tempdir()?;
    let values: Vec<u16> = (0..REGISTERS).map(|i| i * 3).collect();
    let sim = ModbusSim::start(dir.path(), &serde_json::json!({ "holding": values }))?;
    let device = format!("127.0.0.1:{}", sim.port);

    let engine = PluginEngine::with_settings(&EngineSettings {
        max_instances: 4,
        max_memory_mb: 64,
        cache_dir: None,
    })?;
    let loaded = engine.load_driver(&plugin("modbus_tcp")?)?;
    let sandbox = Sandbox::new(
        "bench",
        PluginLimits::default(),
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
    let rss_before = ferrule_tests::rss_kib(std::process::id());
    let mut driver = loaded
        .start("bench", &sandbox, &serde_json::to_string(&config)?)
        .await?;
    for _ in 0..20 {
        driver.poll().await?;
    }
    let started = Instant::now();
    let (mut polls, mut readings, mut bad) = (0u64, 0u64, 0u64);
    while started.elapsed() < RUN {
        let batch = driver.poll().await?;
        readings += batch.len() as u64;
        bad += batch
            .iter()
            .filter(|r| r.quality != ferrule::reading::Quality::Good)
            .count() as u64;
        polls += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let memory = driver.memory_bytes();
    let rss_after = ferrule_tests::rss_kib(std::process::id());
    let status = driver.status().await?;
    drop(driver);
    let native = baseline(sim.port)?;

    let ferrule_polls = polls as f64 / elapsed;
    println!("Modbus TCP benchmark (release build; pymodbus 3.8.6 server on loopback)\n");
    println!(
        "map: {REGISTERS} holding registers as u16 channels = 4 coalesced reads of 125 registers per poll\n"
    );
    println!("| client | polls/s | readings/s | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| native loop, hand-made frames (baseline: the simulator's own pace) | {native:.1} | {:.0} | 1.00 |",
        native * f64::from(REGISTERS)
    );
    println!(
        "| modbus-tcp plugin in the sandbox | {ferrule_polls:.1} | {:.0} | {:.2} |",
        readings as f64 / elapsed,
        ferrule_polls / native
    );
    println!("\nbad readings: {bad} of {readings}");
    println!(
        "driver memory: {} KiB of WASM linear memory; host RSS {} KiB before the instance, {} KiB after {polls} polls",
        memory / 1024,
        rss_before,
        rss_after
    );
    println!(
        "driver status: connected={} signal_quality={:?} {:?}",
        status.connected, status.signal_quality, status.extra
    );
    Ok(())
}
