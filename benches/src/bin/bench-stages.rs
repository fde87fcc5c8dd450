//! `cargo xtask bench stages`: what each extra WASM processor stage adds to
//! a poll. The `sim` driver yields 100 readings a poll; chains of 0, 1, 2
//! and 4 `scale` processors (each rescaling every channel) run on every
//! batch, in-process, the way a driver task does. Baseline, same run: the
//! poll alone (0 stages). Prints figures; asserts nothing.

use std::time::{Duration, Instant};

use ferrule::config::PluginLimits;
use ferrule::gateway;
use ferrule::plugin::{EngineSettings, PluginEngine, Sandbox};
use ferrule_benches::{self as bench, Report};
use ferrule_tests::plugin;

const CHANNELS: usize = 100;

fn scale_config() -> String {
    let rules: Vec<String> = (0..CHANNELS)
        .map(|i| format!(r#""c{i}":{{"gain":1.8,"offset":32.0}}"#))
        .collect();
    format!(r#"{{"channels":{{{}}}}}"#, rules.join(","))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::new(
        "stages",
        "cost of each extra WASM processor stage (100 readings a batch)",
    );
    let batches: u32 = bench::scaled(5_000, 100);
    report.method(format!(
        "in-process, one thread: sim driver poll of {CHANNELS} readings, then a chain of 0/1/2/4 scale processors each rescaling every channel; {batches} batches per chain after 200 warm-up batches; per-stage cost = (4-stage time - 0-stage time) / 4"
    ));
    let engine = PluginEngine::with_settings(&EngineSettings {
        max_instances: 16,
        max_memory_mb: 64,
        cache_dir: None,
    })?;
    let driver = engine.load_driver(&plugin("sim")?)?;
    let scale = engine.load_processor(&plugin("scale")?)?;
    let sandbox = Sandbox::unprivileged(gateway::plugin_limits(&PluginLimits::default()));
    let mut poll = driver
        .start("bench", &sandbox, &bench::sim_config_json(CHANNELS))
        .await?;
    let mut per_batch = Vec::new();
    for stages in [0usize, 1, 2, 4] {
        let mut chain = Vec::new();
        for s in 0..stages {
            chain.push(
                scale
                    .start(&format!("scale-{s}"), &sandbox, &scale_config())
                    .await?,
            );
        }
        let mut elapsed = Duration::ZERO;
        for round in 0..(batches + 200) {
            let t = Instant::now();
            let mut readings = poll.poll().await?;
            for stage in &mut chain {
                readings = stage.process(readings).await?;
            }
            std::hint::black_box(&readings);
            if round >= 200 {
                elapsed += t.elapsed();
            }
        }
        let us = elapsed.as_secs_f64() * 1e6 / f64::from(batches);
        per_batch.push((stages, us));
    }
    let base = per_batch[0].1;
    for &(stages, us) in &per_batch {
        if stages == 0 {
            report.figure("poll alone (0 stages), per batch", us, "µs");
        } else {
            report.compare(
                &format!("poll + {stages} stage(s), per batch"),
                us,
                "µs",
                "poll alone",
                base,
            );
        }
    }
    let four = per_batch.last().map_or(base, |&(_, us)| us);
    let stage = (four - base) / 4.0;
    report.compare(
        "added by one stage, per batch",
        stage,
        "µs",
        "poll alone",
        base,
    );
    report.figure(
        "added by one stage, per reading",
        stage * 1000.0 / CHANNELS as f64,
        "ns",
    );
    report.finish()?;
    Ok(())
}
