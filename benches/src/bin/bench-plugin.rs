//! `cargo xtask bench plugin`: the cost of one `poll()` of the wasm `sim`
//! driver against the same logic compiled natively (1, 10 and 100 readings
//! per poll; at 100, the 0.1.0-ABI build of the same driver beside it), the
//! time to start an instance with the pooling allocator, the start-up of a
//! 20-plugin config with a cold and a warm compile cache, and the same
//! driver written in Rust, Python and JavaScript side by side. (The signature
//! check's cost is in `bench reload`.)
//! Prints figures; asserts nothing.

use std::time::{Duration, Instant};

use ferrule::config::{Config, PluginLimits};
use ferrule::dev::config::{GatewayToml, PluginToml, table};
use ferrule::gateway;
use ferrule::plugin::{
    Capabilities, ChannelTable, ComponentNeeds, EngineSettings, LoadedDriver, PluginEngine, Sandbox,
};
use ferrule_benches::{self as bench, Report};
use ferrule_tests::{guest_plugin, old_plugin, plugin};

fn per_call(total: Duration, calls: u32) -> f64 {
    total.as_nanos() as f64 / f64::from(calls)
}

/// A channel table as a chain gets one, under the default limits.
fn channel_table() -> ChannelTable {
    let limits = PluginLimits::default();
    ChannelTable::new(limits.max_channels, limits.max_value_bytes)
}

/// Nanoseconds per `poll()` of `loaded` with `config`, after a warm-up.
async fn wasm_poll_ns(
    loaded: &LoadedDriver,
    sandbox: &Sandbox,
    config: &str,
    calls: u32,
) -> anyhow::Result<f64> {
    let mut table = channel_table();
    let mut wasm = loaded.start("bench", sandbox, config, &mut table).await?;
    for _ in 0..1_000 {
        wasm.poll(&mut table).await?;
    }
    let t = Instant::now();
    for _ in 0..calls {
        std::hint::black_box(wasm.poll(&mut table).await?);
    }
    Ok(per_call(t.elapsed(), calls))
}

async fn poll_costs(engine: &PluginEngine, report: &mut Report) -> anyhow::Result<()> {
    let current = engine.load_driver(&plugin("sim")?)?;
    let old = engine.load_driver(&old_plugin("0.1.0", "sim")?)?;
    let sandbox = Sandbox::unprivileged(gateway::plugin_limits(&PluginLimits::default()));
    for n in [1usize, 10, 100] {
        let config = bench::sim_config_json(n);
        let calls: u32 = bench::scaled(if n == 100 { 20_000 } else { 50_000 }, 200);
        let wasm_ns = wasm_poll_ns(&current, &sandbox, &config, calls).await?;

        let mut native = ferrule_sim_signals::Generator::new(serde_json::from_str(&config)?)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for _ in 0..1_000 {
            std::hint::black_box(native.poll().map_err(|e| anyhow::anyhow!("{e}"))?);
        }
        let t = Instant::now();
        for _ in 0..calls {
            std::hint::black_box(native.poll().map_err(|e| anyhow::anyhow!("{e}"))?);
        }
        let native_ns = per_call(t.elapsed(), calls);
        let figure = report.compare(
            &format!(
                "poll of {n} reading(s), wasm, ABI {}",
                current.abi().version()
            ),
            wasm_ns,
            "ns",
            "same logic native",
            native_ns,
        );
        if n == 100 {
            figure.ratio_at_most(2.0);
            // The same driver as the 0.1.0 SDK built it, side by side.
            let old_ns = wasm_poll_ns(&old, &sandbox, &config, calls).await?;
            report.compare(
                &format!("poll of {n} reading(s), wasm, ABI {}", old.abi().version()),
                old_ns,
                "ns",
                "same logic native",
                native_ns,
            );
        }
    }
    Ok(())
}

async fn start_cost(engine: &PluginEngine, report: &mut Report) -> anyhow::Result<()> {
    let loaded = engine.load_driver(&plugin("sim")?)?;
    let sandbox = Sandbox::new(
        "bench",
        gateway::plugin_limits(&PluginLimits::default()),
        &Capabilities::default(),
        &std::env::temp_dir(),
    )?;
    let config = bench::sim_config_json(1);
    for _ in 0..100 {
        drop(
            loaded
                .start("bench", &sandbox, &config, &mut channel_table())
                .await?,
        );
    }
    let runs: u32 = bench::scaled(2_000, 50);
    let t = Instant::now();
    for _ in 0..runs {
        drop(std::hint::black_box(
            loaded
                .start("bench", &sandbox, &config, &mut channel_table())
                .await?,
        ));
    }
    report
        .figure(
            "instance start (pooling; instantiate + init, new Store)",
            per_call(t.elapsed(), runs) / 1000.0,
            "µs",
        )
        .at_most(50.0);
    Ok(())
}

/// Resident memory of this process, in KiB.
fn own_rss_kib() -> anyhow::Result<u64> {
    ferrule_tests::rss_kib(std::process::id())
}

/// The same `sim` driver written in Rust, Python and JavaScript: component
/// size, cold compile, warm start from the compile cache, instance start,
/// poll of 100 readings (and ÷ Rust's), and memory per live instance.
async fn languages(dir: &std::path::Path, report: &mut Report) -> anyhow::Result<()> {
    let kits = [
        ("Rust", plugin("sim")?),
        ("Python", guest_plugin("py-sim")?),
        ("JavaScript", guest_plugin("js-sim")?),
    ];
    let sandbox = Sandbox::unprivileged(gateway::plugin_limits(&PluginLimits::default()));
    let config = bench::sim_config_json(100);
    let calls: u32 = bench::scaled(5_000, 100);
    let mut rust_poll = None;
    for (lang, path) in kits {
        let size = std::fs::metadata(&path)?.len() as f64 / 1e6;
        report.figure(&format!("{lang}: component size"), size, "MB");
        // Cold: a fresh cache; warm: the same file again, from that cache.
        let cache = dir.join(format!("cache-{lang}"));
        // The pool sized from the component's own needs, as a gateway does.
        let needs =
            ComponentNeeds::of(&std::fs::read(&path)?).map_err(|e| anyhow::anyhow!("{e}"))?;
        let settings = EngineSettings {
            max_instances: 16,
            pool_total: needs.times(16),
            pool_per_instance: needs,
            max_memory_mb: 64,
            cache_dir: Some(cache),
        };
        let engine = PluginEngine::with_settings(&settings)?;
        let t = Instant::now();
        drop(engine.load_driver(&path)?);
        report.figure(
            &format!("{lang}: cold compile"),
            t.elapsed().as_secs_f64() * 1000.0,
            "ms",
        );
        let engine = PluginEngine::with_settings(&settings)?;
        let t = Instant::now();
        let loaded = engine.load_driver(&path)?;
        report.figure(
            &format!("{lang}: warm start (read from the compile cache)"),
            t.elapsed().as_secs_f64() * 1000.0,
            "ms",
        );
        let runs: u32 = bench::scaled(200, 10);
        let t = Instant::now();
        for _ in 0..runs {
            drop(
                loaded
                    .start("bench", &sandbox, &config, &mut channel_table())
                    .await?,
            );
        }
        report.figure(
            &format!("{lang}: instance start (instantiate + init)"),
            per_call(t.elapsed(), runs) / 1000.0,
            "µs",
        );
        let poll = wasm_poll_ns(&loaded, &sandbox, &config, calls).await? / 1000.0;
        match rust_poll {
            None => {
                report.figure(&format!("{lang}: poll of 100 readings"), poll, "µs");
                rust_poll = Some(poll);
            }
            Some(rust) => {
                report.compare(
                    &format!("{lang}: poll of 100 readings"),
                    poll,
                    "µs",
                    "Rust",
                    rust,
                );
            }
        }
        // Memory: ten live instances, each polled once.
        let before = own_rss_kib()?;
        let mut live = Vec::new();
        for _ in 0..10 {
            let mut table = channel_table();
            let mut instance = loaded.start("bench", &sandbox, &config, &mut table).await?;
            instance.poll(&mut table).await?;
            live.push((instance, table));
        }
        let after = own_rss_kib()?;
        report.figure(
            &format!("{lang}: memory per live instance"),
            after.saturating_sub(before) as f64 / 10.0 / 1024.0,
            "MiB",
        );
        drop(live);
    }
    Ok(())
}

/// 10 `sim` drivers, each with a `scale` processor: 20 plugin instances.
fn twenty_plugins(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, "unused: start-up does not connect")?;
    let (sim, scale) = (plugin("sim")?, plugin("scale")?);
    let mut gateway = GatewayToml::new("bench", &dir.join("data"))
        .set("mqtt", "host", "127.0.0.1")
        .set("mqtt", "ca_file", ca.display().to_string());
    for i in 0..10 {
        gateway = gateway.driver(
            PluginToml::new(&format!("sim-{i}"), &sim)
                .config(
                    "channels",
                    toml::Value::Array(vec![table([("name", "t"), ("signal", "sine")])]),
                )
                .processor(
                    PluginToml::new("scale", &scale)
                        .config("channels", table([("t", table([("gain", 2.0)]))])),
                ),
        );
    }
    let path = dir.join("twenty.toml");
    std::fs::write(&path, gateway.render())?;
    Ok(path)
}

async fn startup(dir: &std::path::Path, report: &mut Report) -> anyhow::Result<()> {
    let config = twenty_plugins(dir)?;
    let cache = dir.join("data/cache");
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..3 {
        let _ = std::fs::remove_dir_all(&cache);
        let t = Instant::now();
        let prepared = gateway::prepare(Config::load(&config)?).await?;
        cold.push(t.elapsed());
        drop(prepared);
        let t = Instant::now();
        let prepared = gateway::prepare(Config::load(&config)?).await?;
        warm.push(t.elapsed());
        drop(prepared);
    }
    cold.sort();
    warm.sort();
    report.figure(
        "start-up of a 20-plugin config, cold compile cache (median of 3)",
        cold[1].as_secs_f64() * 1000.0,
        "ms",
    );
    report
        .compare(
            "start-up of a 20-plugin config, warm compile cache (median of 3)",
            warm[1].as_secs_f64() * 1000.0,
            "ms",
            "cold cache",
            cold[1].as_secs_f64() * 1000.0,
        )
        .at_most(300.0);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("ferrule-bench-")
        .tempdir()?;
    let engine = PluginEngine::with_settings(&EngineSettings {
        max_instances: 64,
        max_memory_mb: 64,
        cache_dir: None,
        ..Default::default()
    })?;
    if let Ok(calls) = std::env::var("BENCH_PROFILE_POLLS") {
        // For profilers: only the wasm poll (of BENCH_PROFILE_CHANNELS
        // readings, default 100), this many times.
        let calls: u32 = calls.parse()?;
        let channels = std::env::var("BENCH_PROFILE_CHANNELS").map_or(Ok(100), |n| n.parse())?;
        let loaded = engine.load_driver(&plugin("sim")?)?;
        let sandbox = Sandbox::unprivileged(gateway::plugin_limits(&PluginLimits::default()));
        wasm_poll_ns(&loaded, &sandbox, &bench::sim_config_json(channels), calls).await?;
        return Ok(());
    }
    let mut report = Report::new(
        "plugin",
        "WASM driver poll vs native, instance start, start-up",
    );
    report.method("in-process: sim driver poll (1, 10, 100 sine channels) in the sandbox vs the same Rust logic compiled natively, after 1,000 warm-up polls, for the 0.2.0 build and (100 channels) the 0.1.0 build kept in tests/fixtures; instance start with the pooling allocator; start-up of 10 sim drivers + 10 scale processors (load, compile or read the cache, instantiate, init)");
    report.method("per language: the same sim driver built with the Rust, Python (sdk/python, componentize-py) and JavaScript (sdk/js, componentize-js) kits: .wasm size; cold compile (empty compile cache) and warm start (read from it); instance start; poll of 100 sine channels after 1,000 warm-up polls; this process's RSS growth for ten live instances, each polled once, divided by ten");
    poll_costs(&engine, &mut report).await?;
    start_cost(&engine, &mut report).await?;
    startup(dir.path(), &mut report).await?;
    languages(dir.path(), &mut report).await?;
    report.finish()?;
    Ok(())
}
