//! Plugins written in Python and JavaScript (sdk/python, sdk/js) run in
//! the same sandbox as Rust ones: a Python sim driver through a JavaScript
//! scale processor and the reverse reach mosquitto over mutual TLS with
//! correct values and contiguous sequences. (Each language's hostile
//! basics are contained: `sandbox::guest_language_*`, which runs alone.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferrule_tests::{GatewayToml, PluginToml, Rig, guest_plugin, shared_compile_cache};

use crate::common::sim_with_scale;
use crate::sandbox::assert_no_sequence_gap;

/// The `sim` of one kit polled every 200 ms (a counter and a sine in
/// degC) through the `scale` of another (count → count * 2 + 1, the sine
/// → temperature_f in degF).
fn line(name: &str, sim: &str, scale: &str) -> anyhow::Result<PluginToml> {
    Ok(sim_with_scale(
        name,
        &guest_plugin(sim)?,
        &guest_plugin(scale)?,
        200,
    ))
}

/// Every gateway here shares one compile cache, so each component is
/// compiled once per run.
pub(crate) fn shared_cache(g: GatewayToml) -> GatewayToml {
    g.set(
        "runtime",
        "compile_cache_dir",
        shared_compile_cache().display().to_string(),
    )
}

#[tokio::test]
async fn a_python_driver_through_a_javascript_processor_and_the_reverse_deliver_correct_values()
-> anyhow::Result<()> {
    let rig = Rig::start("", "ferrule/gw-test/data/#").await?;
    let gateway = shared_cache(rig.gateway())
        .set("limits", "timeout_ms", 2000)
        .driver(line("py-line", "py-sim", "js-scale")?)
        .driver(line("js-line", "js-sim", "py-scale")?);
    let (_, ferrule) = rig.run(&gateway, None)?;
    let mut sub = rig.sub;
    let mut all = Vec::new();
    // Each driver's counter, recovered from the scaled value.
    let mut counts: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    // The first start compiles four 12–19 MB components (once per run).
    let deadline = Instant::now() + Duration::from_secs(240);
    while counts.values().map(Vec::len).min().unwrap_or(0) < 15 || counts.len() < 2 {
        if Instant::now() > deadline {
            anyhow::bail!(
                "too few messages in 240 s ({:?}); ferrule log:\n{}",
                counts.iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>(),
                ferrule.log_text()
            );
        }
        let m = sub
            .next(Duration::from_secs(200), "data from both lines")
            .await?;
        let v = m.json()?;
        let driver = v["driver"].as_str().unwrap_or("?").to_string();
        let readings = v["readings"].as_array().cloned().unwrap_or_default();
        let by_name = |name: &str| readings.iter().find(|r| r["channel"] == name).cloned();
        // The processor renamed the sine: degC is gone, degF in range.
        assert!(by_name("temperature").is_none(), "{v}");
        let f = by_name("temperature_f").unwrap_or_else(|| panic!("no temperature_f in {v}"));
        assert_eq!(f["unit"], "degF", "{v}");
        let value = f["value"].as_f64().unwrap_or(f64::NAN);
        assert!(
            (15.0 * 1.8 + 32.0 - 1e-9..=25.0 * 1.8 + 32.0 + 1e-9).contains(&value),
            "{driver}: temperature_f {value} outside 59..=77 °F"
        );
        // count → count * 2 + 1, as a float channel the processor derives.
        let count = by_name("count").unwrap_or_else(|| panic!("no count in {v}"));
        assert_eq!(count["type"], "float", "{v}");
        let scaled = count["value"].as_f64().unwrap_or(f64::NAN);
        counts
            .entry(driver)
            .or_default()
            .push(((scaled - 1.0) / 2.0) as i64);
        all.push(v);
    }
    for (driver, seen) in &counts {
        let steps: Vec<i64> = seen.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            steps.iter().all(|&s| s == 1),
            "{driver}: the counter skipped or repeated: {seen:?}"
        );
        assert_eq!(seen[0], 0, "{driver}: the first poll was lost: {seen:?}");
    }
    let (first, last) = assert_no_sequence_gap(&all);
    eprintln!(
        "python → javascript and javascript → python: {} messages, seqs {first}..={last} contiguous, counters {:?}",
        all.len(),
        counts.iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>()
    );
    Ok(())
}

/// The instance pool is sized from each plugin's own needs: `plugin
/// inspect` reads them from the component, and a Python component's share
/// (its interpreter's modules) is several times a Rust one's.
#[test]
fn each_components_share_of_the_instance_pool_is_read_from_its_bytes() -> anyhow::Result<()> {
    let needs = |path: &std::path::Path| -> anyhow::Result<serde_json::Value> {
        let out = std::process::Command::new(ferrule_tests::ferrule_bin()?)
            .args(["plugin", "inspect", "--json"])
            .arg(path)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice::<serde_json::Value>(&out.stdout)?["instance_needs"].clone())
    };
    let rust = needs(&ferrule_tests::plugin("sim")?)?;
    let python = needs(&guest_plugin("py-sim")?)?;
    let js = needs(&guest_plugin("js-sim")?)?;
    eprintln!("core instances, memories, tables: rust {rust}, python {python}, javascript {js}");
    for n in [&rust, &python, &js] {
        assert!(n["core_instances"].as_u64() >= Some(2), "{n}");
        assert!(n["memories"].as_u64() >= Some(1), "{n}");
    }
    assert!(
        python["core_instances"].as_u64() > rust["core_instances"].as_u64().map(|r| r * 2),
        "python {python} against rust {rust}"
    );
    Ok(())
}
