//! Every benchmark part runs for about a second (`FERRULE_BENCH_SMOKE`) so
//! the suite keeps working. Timings are never checked here: only that each
//! part ran, measured something, wrote its results, and, where a part
//! counts readings, that none went missing.

use std::path::Path;
use std::process::Command;

use ferrule_benches::{Figure, OUT_ENV, PartResult, SMOKE_ENV};

/// Runs one part's binary in smoke mode; returns its results.
fn smoke(part: &str, bin: &str) -> anyhow::Result<PartResult> {
    smoke_with(part, bin, &[])
}

/// [`smoke`] with more of the part's environment.
fn smoke_with(part: &str, bin: &str, env: &[(&str, &Path)]) -> anyhow::Result<PartResult> {
    let out = tempfile::tempdir()?;
    let output = Command::new(bin)
        .env(SMOKE_ENV, "1")
        .env(OUT_ENV, out.path())
        .env("FERRULE_LOG", "warn")
        .envs(env.iter().copied())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "bench {part} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    anyhow::ensure!(
        stdout.contains("| figure | value |"),
        "bench {part} printed no table:\n{stdout}"
    );
    let result: PartResult =
        serde_json::from_slice(&std::fs::read(out.path().join(format!("{part}.json")))?)?;
    anyhow::ensure!(result.smoke && result.part == part);
    anyhow::ensure!(!result.figures.is_empty(), "bench {part}: no figures");
    for f in &result.figures {
        plausible(f).map_err(|e| anyhow::anyhow!("bench {part}: {e}: {f:?}"))?;
    }
    Ok(result)
}

/// A figure within what its unit can mean on this machine: a time is
/// positive and under an hour, a CPU share under the machine's cores, a
/// count or rate not negative, a memory size under 4 GiB; its baseline and
/// ratio, if any, are finite.
fn plausible(f: &Figure) -> anyhow::Result<()> {
    let v = f.value;
    anyhow::ensure!(v.is_finite(), "not a finite value");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let (lo, hi) = match f.unit.as_str() {
        "ns" => (f64::MIN_POSITIVE, 3.6e12),
        "µs" => (f64::MIN_POSITIVE, 3.6e9),
        "ms" => (f64::MIN_POSITIVE, 3.6e6),
        "s" => (f64::MIN_POSITIVE, 3.6e3),
        "% of one core" => (0.0, 100.0 * cores + 5.0),
        // Growth figures may be negative by noise.
        "MiB" => (-4096.0, 4096.0),
        "KiB" => (-4.0 * 1024.0 * 1024.0, 4.0 * 1024.0 * 1024.0),
        // A file's size (a plugin component).
        "MB" => (f64::MIN_POSITIVE, 1024.0),
        "x" => (f64::MIN_POSITIVE, 1e4),
        unit if unit.ends_with("/s") => (0.0, 1e9),
        "readings" | "messages" => (0.0, 1e12),
        "faults" => (0.0, 1e6),
        "min" => (f64::MIN_POSITIVE, 1e4),
        "bytes" => (0.0, 1e9),
        "per message" => (0.0, 1e6),
        other => anyhow::bail!("unit {other:?} has no plausible range here; add one"),
    };
    anyhow::ensure!((lo..=hi).contains(&v), "{v} {} outside {lo}..={hi}", f.unit);
    if let Some(b) = f.baseline {
        anyhow::ensure!(b.is_finite(), "baseline not finite");
    }
    if let Some(r) = f.ratio {
        // A growth (MiB, KiB) against its baseline may be negative by noise.
        let growth = matches!(f.unit.as_str(), "MiB" | "KiB");
        anyhow::ensure!(r.is_finite() && (r >= 0.0 || growth), "ratio {r}");
    }
    Ok(())
}

/// The value of the figure named `name`.
fn value(result: &PartResult, name: &str) -> anyhow::Result<f64> {
    result
        .figures
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.value)
        .ok_or_else(|| anyhow::anyhow!("{}: no figure {name:?}", result.part))
}

#[test]
fn e2e_delivers_through_ferrule_and_the_bare_client() -> anyhow::Result<()> {
    let r = smoke("e2e", env!("CARGO_BIN_EXE_bench-e2e"))?;
    let f = &r.figures[0];
    assert!(f.value > 0.0, "ferrule delivered nothing: {f:?}");
    assert!(
        f.baseline.unwrap_or(0.0) > 0.0,
        "the baseline delivered nothing: {f:?}"
    );
    assert!(f.ratio.is_some() && f.target.is_some() && f.met.is_some());
    Ok(())
}

#[test]
fn latency_measures_every_reading() -> anyhow::Result<()> {
    let r = smoke("latency", env!("CARGO_BIN_EXE_bench-latency"))?;
    assert!(value(&r, "readings measured per second")? > 0.0);
    let p99 = value(&r, "latency p99")?;
    assert!(p99 >= value(&r, "latency p50")?);
    // A reading crosses loopback in well under ten seconds, even in debug.
    assert!(p99 < 10_000.0, "p99 of {p99} ms");
    Ok(())
}

#[test]
fn stages_cost_is_measured_per_chain() -> anyhow::Result<()> {
    let r = smoke("stages", env!("CARGO_BIN_EXE_bench-stages"))?;
    assert!(value(&r, "poll alone (0 stages), per batch")? > 0.0);
    for abi in ["0.2.0", "0.1.0"] {
        let four = value(&r, &format!("poll + 4 stage(s) of ABI {abi}, per batch"))?;
        assert!(four > 0.0, "ABI {abi}: {r:?}");
    }
    Ok(())
}

#[test]
fn backlog_drains_every_queued_reading() -> anyhow::Result<()> {
    let r = smoke("backlog", env!("CARGO_BIN_EXE_bench-backlog"))?;
    let queued = value(&r, "backlog queued")?;
    assert!(queued >= 20_000.0, "backlog of {queued} readings");
    assert!(
        r.notes
            .iter()
            .any(|n| n == &format!("every backlog reading arrived: {queued} of {queued}")),
        "{:?}",
        r.notes
    );
    Ok(())
}

#[test]
fn footprint_samples_each_gateway_size() -> anyhow::Result<()> {
    let r = smoke("footprint", env!("CARGO_BIN_EXE_bench-footprint"))?;
    for n in [
        "1 driver(s)",
        "10 driver(s)",
        "50 driver(s)",
        "10 driver(s), restarted (compile cache warm)",
    ] {
        let rss = value(&r, &format!("RSS with {n}"))?;
        // A debug build's gateway with its plugins: more than the bare
        // binary, far less than a leak.
        assert!((4.0..1024.0).contains(&rss), "RSS with {n}: {rss} MiB");
    }
    Ok(())
}

#[test]
fn gateways_job_loses_no_reading_on_ferrule() -> anyhow::Result<()> {
    let r = smoke("gateways", env!("CARGO_BIN_EXE_bench-gateways"))?;
    let f = r
        .figures
        .iter()
        .find(|f| {
            f.name
                .starts_with("ferrule readings delivered of those captured")
        })
        .ok_or_else(|| anyhow::anyhow!("no delivered/captured figure"))?;
    assert!(f.value > 0.0);
    // Every captured reading arrived or is still queued: nothing lost (a
    // count, not a time). Delivery is at least once, so an entry whose
    // PUBACK had not come back when the gateway stopped is both.
    let queued: f64 = r
        .notes
        .iter()
        .find_map(|n| n.split(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    let captured = f.baseline.unwrap_or(f64::NAN);
    assert!(f.value + queued >= captured, "{r:?}");
    // The same job with Sparkplug B: it ran, delivered, and its messages
    // are smaller per reading than JSON's.
    let sparkplug = r
        .figures
        .iter()
        .find(|f| f.name.starts_with("ferrule Sparkplug B readings delivered"))
        .ok_or_else(|| anyhow::anyhow!("no Sparkplug B run: {:?}", r.notes))?;
    assert!(sparkplug.value > 0.0, "{sparkplug:?}");
    let bytes = r
        .figures
        .iter()
        .find(|f| f.name == "bytes per delivered reading: Sparkplug B vs JSON")
        .ok_or_else(|| anyhow::anyhow!("no bytes figure"))?;
    assert!(bytes.ratio.is_some_and(|r| r < 1.0), "{bytes:?}");
    // Node-RED and ThingsBoard gateway are installed by `cargo xtask bench`
    // only; without them the part says so instead of inventing figures.
    let peers = ferrule_tests::target_dir().join("bench-peers");
    if !Path::new(&peers).join("node-red").is_dir() {
        assert!(
            r.notes
                .iter()
                .any(|n| n.starts_with("Node-RED not measured"))
        );
    }
    Ok(())
}

#[test]
fn queue_link_plugin_and_modbus_parts_run() -> anyhow::Result<()> {
    for (part, bin) in [
        ("queue", env!("CARGO_BIN_EXE_bench-queue")),
        ("link", env!("CARGO_BIN_EXE_bench-link")),
        ("plugin", env!("CARGO_BIN_EXE_bench-plugin")),
        ("modbus", env!("CARGO_BIN_EXE_bench-modbus")),
    ] {
        let r = smoke(part, bin)?;
        assert!(r.figures.iter().all(|f| f.value.is_finite()), "{r:?}");
    }
    Ok(())
}

#[test]
fn reload_and_fleet_parts_measure_the_untouched_driver() -> anyhow::Result<()> {
    for (part, bin) in [
        ("reload", env!("CARGO_BIN_EXE_bench-reload")),
        ("fleet", env!("CARGO_BIN_EXE_bench-fleet")),
    ] {
        let r = smoke(part, bin)?;
        anyhow::ensure!(
            r.figures.iter().any(|f| f.name.starts_with("untouched")),
            "{part}: no untouched-driver figure: {r:?}"
        );
    }
    Ok(())
}

#[test]
fn hostile_measures_both_gateways_and_the_telemetry_files() -> anyhow::Result<()> {
    let r = smoke("hostile", env!("CARGO_BIN_EXE_bench-hostile"))?;
    for name in [
        "peak RSS, 8 drivers, one small reading each",
        "peak RSS, 8 drivers, largest allowed outputs",
    ] {
        assert!(value(&r, name)? > 1.0, "{name}: {r:?}");
    }
    assert!(
        value(&r, "telemetry-history.redb after the run")? > 0.0,
        "{r:?}"
    );
    Ok(())
}

#[test]
fn soak_survives_its_faults_and_draws_its_plot() -> anyhow::Result<()> {
    let plots = tempfile::tempdir()?;
    let r = smoke_with(
        "soak",
        env!("CARGO_BIN_EXE_bench-soak"),
        &[("FERRULE_SOAK_OUT", plots.path())],
    )?;
    assert_eq!(value(&r, "queue sequences missing")?, 0.0, "{r:?}");
    assert!(value(&r, "messages delivered (unique)")? > 0.0, "{r:?}");
    assert!(value(&r, "kill -9")? >= 1.0, "{r:?}");
    assert!(value(&r, "broker restarts")? >= 1.0, "{r:?}");
    let png = std::fs::read(plots.path().join("soak.png"))?;
    assert!(png.starts_with(b"\x89PNG"), "soak.png is a PNG");
    let csv = std::fs::read_to_string(plots.path().join("soak.csv"))?;
    assert!(csv.starts_with("t_s,rss_mib,cpu_percent,queue_depth,delivered,event\n"));
    assert!(csv.lines().count() > 3, "samples in the CSV:\n{csv}");
    Ok(())
}
