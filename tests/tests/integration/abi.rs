//! Every plugin ABI ferrule ever shipped keeps loading: drivers and
//! processors built with the 0.1.0 SDK (kept as built in `tests/fixtures`)
//! run beside 0.2.0 ones, in every pairing, end to end over TLS MQTT.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferrule_tests::{Rig, gateway_toml, old_plugin, plugin, run_ferrule, start_ferrule};

use crate::common::sim_with_scale;

/// (driver name, sim ABI, scale ABI).
const PAIRINGS: [(&str, &str, &str); 4] = [
    ("old-old", "0.1.0", "0.1.0"),
    ("new-new", "0.2.0", "0.2.0"),
    ("new-old", "0.2.0", "0.1.0"),
    ("old-new", "0.1.0", "0.2.0"),
];

fn built(abi: &str, name: &str) -> anyhow::Result<std::path::PathBuf> {
    match abi {
        "0.2.0" => plugin(name),
        old => old_plugin(old, name),
    }
}

#[tokio::test]
async fn plugins_of_both_abis_in_every_pairing_deliver_the_same_scaled_readings()
-> anyhow::Result<()> {
    let (dir, pki, port, _broker, mut sub) =
        Rig::start("", "ferrule/gw-test/data/#").await?.into_parts();
    let mut gateway = gateway_toml(&dir.path().join("data"), &pki, port);
    for (name, sim_abi, scale_abi) in PAIRINGS {
        let sim = built(sim_abi, "sim")?;
        let scale = built(scale_abi, "scale")?;
        gateway = gateway.driver(sim_with_scale(name, &sim, &scale, 100));
    }
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, gateway.render())?;

    // `ferrule check` says which ABI each plugin was built against.
    let config_arg = config.to_str().unwrap_or_default();
    let (ok, out, err) = run_ferrule(dir.path(), &["check", config_arg])?;
    assert!(ok, "check failed: {err}");
    for (name, sim_abi, scale_abi) in PAIRINGS {
        let driver_line = out
            .lines()
            .find(|l| l.starts_with(&format!("driver {name} ")))
            .unwrap_or_default();
        assert!(
            driver_line.contains(&format!("ferrule:plugin@{sim_abi}")),
            "{name}: {out}"
        );
        let processor_line = out
            .lines()
            .find(|l| {
                l.trim_start()
                    .starts_with(&format!("processor {name}/scale "))
            })
            .unwrap_or_default();
        assert!(
            processor_line.contains(&format!("ferrule:plugin@{scale_abi}")),
            "{name}/scale: {out}"
        );
    }

    let mut ferrule = start_ferrule(dir.path(), &["run", config_arg])?;
    let mut counts: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while counts.len() < PAIRINGS.len() || counts.values().any(|c| c.len() < 5) {
        if Instant::now() > deadline {
            anyhow::bail!(
                "got {counts:?} in 60 s; ferrule log:\n{}",
                ferrule.log_text()
            );
        }
        let m = sub.next(Duration::from_secs(30), "data messages").await?;
        let v = m.json()?;
        let driver = v["driver"].as_str().unwrap_or_default().to_string();
        let readings = v["readings"].as_array().cloned().unwrap_or_default();
        let shape: Vec<(&str, &str, Option<&str>)> = readings
            .iter()
            .map(|r| {
                (
                    r["channel"].as_str().unwrap_or("?"),
                    r["type"].as_str().unwrap_or("?"),
                    r["unit"].as_str(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("count", "float", None),
                ("temperature_f", "float", Some("degF"))
            ],
            "{driver}: {v}"
        );
        for r in &readings {
            assert_eq!(r["quality"], "good", "{driver}: {r}");
        }
        let f = readings[1]["value"].as_f64().unwrap_or(f64::NAN);
        assert!((58.9..=77.1).contains(&f), "{driver}: temperature_f {f}");
        counts
            .entry(driver)
            .or_default()
            .push(readings[0]["value"].as_f64().unwrap_or(f64::NAN));
    }
    // Every pairing: the counter starts at 0 and steps by 1 per poll, and
    // scale maps n to 2n + 1, so no poll was lost or doubled.
    for (driver, values) in &counts {
        for (i, c) in values.iter().enumerate() {
            assert_eq!(*c, 2.0 * i as f64 + 1.0, "{driver}: count {i}: {values:?}");
        }
    }
    let log = ferrule.log_text();
    assert!(!log.contains("readings rejected"), "{log}");
    ferrule.kill9();
    Ok(())
}
