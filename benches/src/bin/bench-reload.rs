//! `cargo xtask bench reload`: what a hot reload costs the drivers it
//! does not touch, and how soon a changed driver reads with its new config.
//! One gateway runs a steady 100 ms sim driver beside a 100 ms driver that
//! 20 reloads (SIGHUP) change in turn: even ones only its config (a new
//! channel name), odd ones its plugin too (a newer signed version, so a
//! compile). Figures: time from SIGHUP to the changed driver's first
//! reading under the new config (captured, and arrived at a subscriber),
//! the reload itself (check + apply, as the gateway reports it), and the
//! steady driver's largest gap between polls during the reloads against the
//! same span without reloads in the same run. Also the `[trust]` signature
//! check of a signed plugin of 200 KiB and of 12 MiB.
//! Prints figures; asserts nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use ferrule::dev::config::{GatewayToml, PluginToml, table};
use ferrule::plugin::trust;
use ferrule::reading::now_ns;
use ferrule_benches::{self as bench, Report};
use ferrule_tests::{Subscriber, plugin};

const INTERVAL_MS: i64 = 100;
const RELOADS: u32 = 20;

/// A sim driver with one counter channel named `channel`.
fn driver(name: &str, sim: &Path, channel: &str) -> PluginToml {
    PluginToml::new(name, sim)
        .set("interval_ms", INTERVAL_MS)
        .config(
            "channels",
            toml::Value::Array(vec![table([("name", channel), ("signal", "counter")])]),
        )
}

/// A data message: (driver, captured_ns, first channel, arrived_ns).
type Seen = (String, u64, String, u64);

/// Every data message that arrives within `span`.
async fn take(sub: &mut Subscriber, span: Duration, into: &mut Vec<Seen>) -> anyhow::Result<()> {
    let until = Instant::now() + span;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Ok(Some(m)) = tokio::time::timeout(left, sub.messages.recv()).await else {
            break;
        };
        let arrived = now_ns();
        let v = m.json()?;
        into.push((
            v["driver"].as_str().unwrap_or_default().to_string(),
            v["captured_ns"].as_u64().unwrap_or(0),
            v["readings"][0]["channel"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            arrived,
        ));
    }
    Ok(())
}

/// The largest gap between consecutive polls of `driver` captured in
/// `[from_ns, to_ns]`, in ms.
fn largest_gap(seen: &[Seen], driver: &str, from_ns: u64, to_ns: u64) -> f64 {
    bench::largest_gap_ms(
        (seen.iter())
            .filter(|(d, c, ..)| d == driver && (from_ns..=to_ns).contains(c))
            .map(|(_, c, ..)| *c),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::pinned("reload", "hot reload: changed driver and untouched driver")?;
    report.method(format!(
        "one gateway, two sim drivers every {INTERVAL_MS} ms; {RELOADS} reloads by SIGHUP, 2 s apart, each changing the second driver: even ones its config only, odd ones also its plugin (a newer signed version: signature check and compile). Time from SIGHUP to the first batch of the new config (its capture time, and its arrival at a subscriber over mutual TLS); the reload as the gateway reports it (took_ms); the untouched driver's largest gap between polls over the reloads against the same span without reloads, same run"
    ));
    report.method("signature check: [trust] admitting signed bytes (parse, SHA-256, Ed25519) of the sim driver and of the same driver padded to 12 MiB with a custom section");
    let (dir, pki, port, broker) = bench::broker("reload")?;
    let d = dir.path();
    let (secret, public) = (d.join("publisher.key"), d.join("publisher.key.pub"));
    trust::keygen(&secret, &public).map_err(anyhow::Error::msg)?;
    let sim_bytes = std::fs::read(plugin("sim")?)?;
    let versions = RELOADS / 2 + 1;
    for v in 0..versions {
        let identity =
            trust::Identity::new("sim", &format!("1.{v}.0")).map_err(anyhow::Error::msg)?;
        let (signed, _) =
            trust::sign(&sim_bytes, &secret, Some(&identity)).map_err(anyhow::Error::msg)?;
        std::fs::write(d.join(format!("sim-{v}.wasm")), signed)?;
    }
    let gateway = |version: u32, channel: &str| -> GatewayToml {
        bench::gateway_of(
            &d.join("data"),
            &pki,
            port,
            32,
            [
                driver("steady", &d.join("sim-0.wasm"), "count"),
                driver("changing", &d.join(format!("sim-{version}.wasm")), channel),
            ],
        )
        .set(
            "trust",
            "publisher_keys",
            toml::Value::Array(vec![public.display().to_string().into()]),
        )
    };
    let config = d.join("reload.toml");
    std::fs::write(&config, gateway(0, "r0").render())?;
    let mut sub = Subscriber::connect(&pki, port, "ferrule/gw-test/data/#").await?;
    let mut ferrule = bench::start_ferrule(d, &config, "ferrule.log")?;
    bench::pin_gateway(ferrule.child.id())?;
    let pid = ferrule.child.id();
    let mut seen: Vec<Seen> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !seen.iter().any(|(d, ..)| d == "changing") {
        anyhow::ensure!(
            Instant::now() < deadline,
            "nothing published in 90 s: {}",
            ferrule.log_text()
        );
        take(&mut sub, Duration::from_millis(200), &mut seen).await?;
    }
    // Baseline: the same span as the reloads, nothing reloaded.
    let pause = Duration::from_secs(2);
    let quiet_from = now_ns();
    take(&mut sub, pause * RELOADS, &mut seen).await?;
    let quiet_to = now_ns();

    let (mut config_only, mut new_plugin) = (Vec::new(), Vec::new());
    let (mut config_arrived, mut plugin_arrived) = (Vec::new(), Vec::new());
    let (mut took_config, mut took_plugin) = (Vec::new(), Vec::new());
    let reloads_from = now_ns();
    for k in 1..=RELOADS {
        let channel = format!("r{k}");
        let version = k.div_ceil(2);
        let tmp = d.join("reload.toml.new");
        std::fs::write(&tmp, gateway(version, &channel).render())?;
        std::fs::rename(&tmp, &config)?;
        let sent = now_ns();
        // SAFETY: kill(2) only sends a signal to the gateway this run started.
        anyhow::ensure!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) } == 0);
        let mut first: Option<(u64, u64)> = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while first.is_none() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "reload {k}: no reading of {channel}: {}",
                ferrule.log_text()
            );
            take(&mut sub, Duration::from_millis(50), &mut seen).await?;
            first = (seen.iter())
                .filter(|(d, _, c, _)| d == "changing" && *c == channel)
                .map(|(_, captured, _, arrived)| (*captured, *arrived))
                .min();
        }
        let (captured, arrived) = first.unwrap_or_default();
        let outcome: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("data/reload.json"))?)?;
        anyhow::ensure!(outcome["ok"] == true, "reload {k} refused: {outcome}");
        let took = outcome["took_ms"].as_f64().unwrap_or(f64::NAN);
        let to_capture = captured.saturating_sub(sent) as f64 / 1e6;
        let to_arrival = arrived.saturating_sub(sent) as f64 / 1e6;
        if k % 2 == 0 {
            config_only.push(to_capture);
            config_arrived.push(to_arrival);
            took_config.push(took);
        } else {
            new_plugin.push(to_capture);
            plugin_arrived.push(to_arrival);
            took_plugin.push(took);
        }
        take(
            &mut sub,
            pause.saturating_sub(Duration::from_nanos(now_ns() - sent)),
            &mut seen,
        )
        .await?;
    }
    let reloads_to = now_ns();
    ferrule.terminate(Duration::from_secs(10))?;
    drop(broker);

    let quiet_gap = largest_gap(&seen, "steady", quiet_from, quiet_to);
    let reload_gap = largest_gap(&seen, "steady", reloads_from, reloads_to);
    report
        .compare(
            &format!("untouched {INTERVAL_MS} ms driver: largest gap during {RELOADS} reloads"),
            reload_gap,
            "ms",
            "same span without reloads",
            quiet_gap,
        )
        .at_most(2.0 * INTERVAL_MS as f64);
    for (what, capture, arrival, took) in [
        ("config change", config_only, config_arrived, took_config),
        (
            "new plugin version",
            new_plugin,
            plugin_arrived,
            took_plugin,
        ),
    ] {
        let worst = capture.iter().copied().fold(0.0, f64::max);
        report.figure(
            &format!("{what}: SIGHUP to first new reading captured, median"),
            bench::median(capture),
            "ms",
        );
        report.figure(
            &format!("{what}: SIGHUP to first new reading captured, max"),
            worst,
            "ms",
        );
        report.figure(
            &format!("{what}: SIGHUP to first new reading at subscriber, median"),
            bench::median(arrival),
            "ms",
        );
        report.figure(
            &format!("{what}: reload check and apply (took_ms), median"),
            bench::median(took),
            "ms",
        );
    }
    verify_cost(d, &mut report)?;
    report.finish()?;
    Ok(())
}

/// `[trust]` checking a signed plugin's bytes (what every load does when
/// publisher keys are configured): the sim driver, and the same plugin
/// padded to 12 MB, the size of a Python plugin.
fn verify_cost(dir: &std::path::Path, report: &mut Report) -> anyhow::Result<()> {
    let (secret, public) = (dir.join("bench.key"), dir.join("bench.key.pub"));
    trust::keygen(&secret, &public).map_err(anyhow::Error::msg)?;
    let policy = trust::TrustPolicy::from_files(&[public], None).map_err(anyhow::Error::msg)?;
    let small = std::fs::read(plugin("sim")?)?;
    let large =
        ferrule_tests::with_custom_section(&small, "padding", (12 << 20) - small.len() - 16);
    for (bytes, runs) in [(small, 200), (large, 10)] {
        let (signed, _) = trust::sign(&bytes, &secret, None).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(policy.admit(&signed).is_ok(), "signed plugin refused");
        let runs: u32 = bench::scaled(runs, 2);
        let t = Instant::now();
        for _ in 0..runs {
            std::hint::black_box(policy.admit(&signed).is_ok());
        }
        let kb = signed.len() as f64 / 1024.0;
        report.figure(
            &format!("signature check of a {kb:.0} KiB plugin"),
            t.elapsed().as_secs_f64() * 1e3 / f64::from(runs),
            "ms",
        );
    }
    Ok(())
}
