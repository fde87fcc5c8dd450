//! `cargo xtask bench stages`: what each extra WASM processor stage adds to
//! a poll. The `sim` driver yields 100 readings a poll; chains of 0, 1, 2
//! and 4 `scale` processors (each rescaling every channel) run on every
//! batch, in-process, the way a driver task does, for the `scale` of each
//! ABI (0.2.0, and the 0.1.0 build kept in `tests/fixtures`). Baseline,
//! same run: the poll alone (0 stages). Prints figures; asserts nothing.

use std::time::{Duration, Instant};

use ferrule::config::PluginLimits;
use ferrule::gateway;
use ferrule::plugin::{
    Abi, ChannelTable, EngineSettings, LoadedDriver, LoadedProcessor, PluginEngine, Sandbox,
};
use ferrule_benches::{self as bench, Report};
use ferrule_tests::{old_plugin, plugin};

const CHANNELS: usize = 100;

fn scale_config() -> String {
    let rules: Vec<String> = (0..CHANNELS)
        .map(|i| format!(r#""c{i}":{{"gain":1.8,"offset":32.0}}"#))
        .collect();
    format!(r#"{{"channels":{{{}}}}}"#, rules.join(","))
}

/// Microseconds per batch of a poll followed by `stages` `scale` stages
/// of `scale`, each chain with its own channel table as a driver task has.
async fn chain_us(
    driver: &LoadedDriver,
    scale: &LoadedProcessor,
    stages: usize,
    batches: u32,
) -> anyhow::Result<f64> {
    let sandbox = Sandbox::unprivileged(gateway::plugin_limits(&PluginLimits::default()));
    let limits = PluginLimits::default();
    let mut table = ChannelTable::new(limits.max_channels, limits.max_value_bytes);
    let config = bench::sim_config_json(CHANNELS);
    let mut poll = driver.start("bench", &sandbox, &config, &mut table).await?;
    let mut chain = Vec::new();
    for s in 0..stages {
        let name = format!("scale-{s}");
        chain.push(
            scale
                .start(&name, &sandbox, &scale_config(), &mut table, s + 1)
                .await?,
        );
    }
    let mut elapsed = Duration::ZERO;
    for round in 0..(batches + 200) {
        let t = Instant::now();
        let mut samples = poll.poll(&mut table).await?;
        for stage in &mut chain {
            samples = stage.process(&mut table, samples).await?;
        }
        anyhow::ensure!(samples.len() == CHANNELS, "the chain lost readings");
        std::hint::black_box(&samples);
        if round >= 200 {
            elapsed += t.elapsed();
        }
    }
    Ok(elapsed.as_secs_f64() * 1e6 / f64::from(batches))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::new(
        "stages",
        "cost of each extra WASM processor stage (100 readings a batch)",
    );
    let batches: u32 = bench::scaled(5_000, 100);
    report.method(format!(
        "in-process, one thread: sim driver (ABI 0.2.0) poll of {CHANNELS} readings, then a chain of 0/1/2/4 scale processors each rescaling every channel; {batches} batches per chain after 200 warm-up batches; per-stage cost = (4-stage time - 0-stage time) / 4; for the scale of ABI 0.2.0 and the 0.1.0 build kept in tests/fixtures"
    ));
    let engine = PluginEngine::with_settings(&EngineSettings {
        max_instances: 16,
        max_memory_mb: 64,
        cache_dir: None,
        ..Default::default()
    })?;
    let driver = engine.load_driver(&plugin("sim")?)?;
    let base = chain_us(
        &driver,
        &engine.load_processor(&plugin("scale")?)?,
        0,
        batches,
    )
    .await?;
    report.figure("poll alone (0 stages), per batch", base, "µs");
    for path in [plugin("scale")?, old_plugin("0.1.0", "scale")?] {
        let scale = engine.load_processor(&path)?;
        let abi = scale.abi();
        let mut four = base;
        for stages in [1usize, 2, 4] {
            let us = chain_us(&driver, &scale, stages, batches).await?;
            report.compare(
                &format!(
                    "poll + {stages} stage(s) of ABI {}, per batch",
                    abi.version()
                ),
                us,
                "µs",
                "poll alone",
                base,
            );
            four = us;
        }
        let stage = (four - base) / 4.0;
        let figure = report.figure(
            &format!(
                "added by one stage of ABI {}, per batch of {CHANNELS}",
                abi.version()
            ),
            stage,
            "µs",
        );
        if abi == Abi::V0_2 {
            figure.at_most(20.0);
        }
        report.figure(
            &format!("added by one stage of ABI {}, per reading", abi.version()),
            stage * 1000.0 / CHANNELS as f64,
            "ns",
        );
    }
    report.finish()?;
    Ok(())
}
