//! `cargo xtask bench fleet`: deployments over MQTT. One gateway runs a
//! steady 100 ms sim driver from its bootstrap config; `ferrule fleet
//! deploy` then deploys a new driver whose plugin the gateway does not
//! have, three times with a 240 KiB plugin and three times with a 12 MiB
//! one (each a different file, so each is fetched). Figures: time from
//! starting `ferrule fleet deploy` to the new driver's first reading at a
//! subscriber, the transfer's throughput (first chunk asked for to the
//! plugin kept, from the gateway's reports), the whole deployment as the
//! operator sees it (until `fleet deploy` exits with the outcome), and the
//! steady driver's largest gap between polls during the deployments
//! against the same span without any, same run. Prints figures; asserts
//! nothing.

use std::process::Command;
use std::time::{Duration, Instant};

use ferrule::dev::config::{PluginToml, table};
use ferrule::plugin::trust;
use ferrule::reading::now_ns;
use ferrule_benches::{self as bench, Report};
use ferrule_tests::{Subscriber, plugin};

const INTERVAL_MS: i64 = 100;
const RUNS: u32 = 3;

/// A message: (topic, payload, arrived_ns).
type Seen = (String, serde_json::Value, u64);

async fn take(sub: &mut Subscriber, span: Duration, into: &mut Vec<Seen>) -> anyhow::Result<()> {
    let until = Instant::now() + span;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Ok(Some(m)) = tokio::time::timeout(left, sub.messages.recv()).await else {
            break;
        };
        into.push((m.topic.clone(), m.json().unwrap_or_default(), now_ns()));
    }
    Ok(())
}

/// The largest gap between consecutive polls of `driver` captured in
/// `[from_ns, to_ns]`, in ms.
fn largest_gap(seen: &[Seen], driver: &str, from_ns: u64, to_ns: u64) -> f64 {
    bench::largest_gap_ms(
        (seen.iter())
            .filter(|(t, v, _)| t.contains("/data/") && v["driver"] == driver)
            .filter_map(|(_, v, _)| v["captured_ns"].as_u64())
            .filter(|c| (from_ns..=to_ns).contains(c)),
    )
}

/// `bytes` padded with a custom section to about `size` bytes in all.
fn padded(bytes: &[u8], size: usize) -> Vec<u8> {
    let pad = size.saturating_sub(bytes.len() + 16).max(1);
    ferrule_tests::with_custom_section(bytes, "padding", pad)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::pinned("fleet", "deployments over MQTT")?;
    report.method(format!(
        "one gateway (mosquitto, mutual TLS, loopback) with a steady sim driver every {INTERVAL_MS} ms from its bootstrap config; `ferrule fleet deploy` deploys a new driver whose signed plugin the gateway does not have yet, {RUNS} times with the 240 KiB sim plugin and {RUNS} times padded to 12 MiB (each file different, so each is fetched, in 256 KiB chunks, the default). Time from starting `fleet deploy` to the new driver's first reading at a subscriber; transfer throughput from the gateway's first `fetching` report to its `applying` report; the operator's whole wait (until `fleet deploy` exits with the confirmed outcome: 3 good polls); the steady driver's largest gap over the deployments against the same span without any, same run"
    ));
    let (dir, pki, port, broker) = bench::broker("fleet")?;
    let d = dir.path();
    let (op, op_pub) = (d.join("op.key"), d.join("op.key.pub"));
    let (publisher, publisher_pub) = (d.join("pub.key"), d.join("pub.key.pub"));
    trust::keygen(&op, &op_pub).map_err(anyhow::Error::msg)?;
    trust::keygen(&publisher, &publisher_pub).map_err(anyhow::Error::msg)?;
    let sim = std::fs::read(plugin("sim")?)?;
    let steady = PluginToml::new("steady", &plugin("sim")?)
        .set("interval_ms", INTERVAL_MS)
        .config(
            "channels",
            toml::Value::Array(vec![table([("name", "count"), ("signal", "counter")])]),
        );
    let gateway = bench::gateway_of(&d.join("data"), &pki, port, 32, [steady])
        .set(
            "trust",
            "operator_keys",
            toml::Value::Array(vec![op_pub.display().to_string().into()]),
        )
        .set(
            "trust",
            "publisher_keys",
            toml::Value::Array(vec![publisher_pub.display().to_string().into()]),
        )
        .set("trust", "require_signed", false);
    let config = d.join("gateway.toml");
    std::fs::write(&config, gateway.render())?;
    std::fs::write(
        d.join("operator.toml"),
        format!(
            "[operator]\nkey = \"op.key\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            pki.ca.cert.display(),
            pki.subscriber.cert.display(),
            pki.subscriber.key.display()
        ),
    )?;
    let mut sub = Subscriber::connect(&pki, port, "ferrule/gw-test/#").await?;
    let mut ferrule = bench::start_ferrule(d, &config, "ferrule.log")?;
    bench::pin_gateway(ferrule.child.id())?;
    let mut seen: Vec<Seen> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !seen.iter().any(|(t, ..)| t.contains("/data/")) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "nothing published: {}",
            ferrule.log_text()
        );
        take(&mut sub, Duration::from_millis(200), &mut seen).await?;
    }
    let pause = Duration::from_secs(2);
    let runs = bench::scaled(RUNS, 1);
    let mut results = Vec::new();
    let mut spans = Vec::new();
    let mut number = 0;
    // In smoke mode the large plugin is 2 MiB.
    let large: usize = bench::scaled(12 << 20, 2 << 20);
    for (size, label) in [
        (0usize, format!("{} KiB", sim.len() >> 10)),
        (large, format!("{} MiB", large >> 20)),
    ] {
        let (mut first, mut throughput, mut whole) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..runs {
            number += 1;
            // Each run's file differs, so the gateway fetches it.
            let bytes = padded(&sim, size.max(sim.len() + 64 + k as usize));
            let identity = trust::Identity::new("sim", &format!("1.{number}.0"))
                .map_err(anyhow::Error::msg)?;
            let (signed, _) =
                trust::sign(&bytes, &publisher, Some(&identity)).map_err(anyhow::Error::msg)?;
            let file = d.join(format!("sim-{number}.wasm"));
            std::fs::write(&file, &signed)?;
            let driver = format!("new-{number}");
            let state = d.join(format!("state-{number}.toml"));
            std::fs::write(
                &state,
                format!(
                    "deployment = {number}\n[[plugin]]\nfile = \"{}\"\n[[driver]]\nname = \"{driver}\"\nplugin = \"sim\"\ninterval_ms = {INTERVAL_MS}\n[[driver.config.channels]]\nname = \"n\"\nsignal = \"counter\"\n",
                    file.display()
                ),
            )?;
            let from = now_ns();
            let started = Instant::now();
            let mut operator = Command::new(ferrule_tests::ferrule_bin()?)
                .args(ferrule_tests::fleet_deploy_args(&state, "300s"))
                .current_dir(d)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            let mut done = None;
            let deadline = Instant::now() + Duration::from_secs(300);
            while done.is_none() {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "deployment {number} did not finish: {}",
                    ferrule.log_text()
                );
                take(&mut sub, Duration::from_millis(20), &mut seen).await?;
                if let Some(status) = operator.try_wait()? {
                    anyhow::ensure!(
                        status.success(),
                        "deployment {number} failed: {}",
                        ferrule.log_text()
                    );
                    done = Some(started.elapsed());
                }
            }
            // Its first reading, if not in yet.
            let deadline = Instant::now() + Duration::from_secs(30);
            let first_reading = loop {
                let at = (seen.iter())
                    .filter(|(t, v, _)| t.contains("/data/") && v["driver"] == driver.as_str())
                    .map(|(.., arrived)| *arrived)
                    .min();
                if let Some(at) = at {
                    break at;
                }
                anyhow::ensure!(Instant::now() < deadline, "no reading of {driver}");
                take(&mut sub, Duration::from_millis(20), &mut seen).await?;
            };
            let reports = (seen.iter())
                .filter(|(t, v, _)| t.ends_with("/deploy/reported") && v["trial"] == number)
                .map(|(_, v, at)| (v["phase"].as_str().unwrap_or_default().to_string(), *at));
            let (mut fetching, mut applying) = (None, None);
            for (phase, at) in reports {
                match phase.as_str() {
                    "fetching" => fetching = Some(fetching.map_or(at, |f: u64| f.min(at))),
                    "applying" => applying = Some(applying.map_or(at, |a: u64| a.min(at))),
                    _ => {}
                }
            }
            if let (Some(f), Some(a)) = (fetching, applying) {
                let secs = a.saturating_sub(f) as f64 / 1e9;
                throughput.push(signed.len() as f64 / (1 << 20) as f64 / secs);
            }
            first.push(first_reading.saturating_sub(from) as f64 / 1e6);
            whole.push(done.unwrap_or_default().as_secs_f64() * 1e3);
            spans.push((from, now_ns()));
            take(&mut sub, pause, &mut seen).await?;
        }
        results.push((label.clone(), first, throughput, whole));
    }
    // Baseline: as long again, nothing deployed.
    let deployed: u64 = spans.iter().map(|(a, b)| b - a).sum();
    let quiet_from = now_ns();
    take(&mut sub, Duration::from_nanos(deployed), &mut seen).await?;
    let quiet_to = now_ns();
    ferrule.terminate(Duration::from_secs(10))?;
    drop(broker);

    let deploy_gap = (spans.iter())
        .map(|(a, b)| largest_gap(&seen, "steady", *a, *b))
        .fold(0.0, f64::max);
    let quiet_gap = largest_gap(&seen, "steady", quiet_from, quiet_to);
    report
        .compare(
            &format!(
                "untouched {INTERVAL_MS} ms driver: largest gap during {} deployments",
                spans.len()
            ),
            deploy_gap,
            "ms",
            "same span without deployments",
            quiet_gap,
        )
        .at_most(2.0 * INTERVAL_MS as f64);
    for (label, first, throughput, whole) in results {
        report.figure(
            &format!("{label} plugin: fleet deploy to the new driver's first reading, median"),
            bench::median(first),
            "ms",
        );
        if !throughput.is_empty() {
            report.figure(
                &format!("{label} plugin: transfer throughput, median"),
                bench::median(throughput),
                "MiB/s",
            );
        }
        report.figure(
            &format!(
                "{label} plugin: fleet deploy until it exits with the confirmed outcome, median"
            ),
            bench::median(whole),
            "ms",
        );
    }
    report.finish()?;
    Ok(())
}
