//! Hot reload: SIGHUP (or `ferrule reload`) re-reads the config and applies
//! only the difference. A driver left as it was keeps its instance and its
//! cadence; added, changed and removed drivers start, get a new instance,
//! stop; a config that fails any check changes nothing and says why; a
//! gateway killed in the middle of a reload restarts on one config, whole,
//! with no gap in the queue's sequence.

use std::path::Path;
use std::time::{Duration, Instant};

use ferrule::dev::config::table;
use ferrule::reading::now_ms;
use ferrule_tests::{
    GatewayToml, Jitter, Pki, PluginToml, Process, Received, Rig, SeqLog, plugin, run_ferrule,
    start_ferrule,
};

use crate::common::{ferrule_ok, keygen, sign_as};

/// A sim driver with one counter channel per name.
fn counter(name: &str, sim: &Path, interval_ms: i64, channels: &[&str]) -> PluginToml {
    let channels = channels
        .iter()
        .map(|c| table([("name", *c), ("signal", "counter")]))
        .collect();
    PluginToml::new(name, sim)
        .set("interval_ms", interval_ms)
        .config("channels", toml::Value::Array(channels))
}

fn write(dir: &Path, gateway: &GatewayToml) -> anyhow::Result<()> {
    // Written beside and renamed, as an operator's tooling would: the
    // gateway never reads half a file.
    let tmp = dir.join("gateway.toml.new");
    std::fs::write(&tmp, gateway.render())?;
    std::fs::rename(tmp, dir.join("gateway.toml"))?;
    Ok(())
}

fn sighup(ferrule: &Process) -> anyhow::Result<()> {
    let pid = ferrule.child.id().to_string();
    anyhow::ensure!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()?
            .success(),
        "kill -HUP {pid} failed"
    );
    Ok(())
}

/// One data message: (driver, seq, captured_ns, readings).
struct Batch {
    driver: String,
    captured_ns: u64,
    readings: Vec<serde_json::Value>,
}

/// Everything the subscriber saw, as batches and sequence numbers.
#[derive(Default)]
struct Seen {
    batches: Vec<Batch>,
    seqs: SeqLog,
}

impl Seen {
    fn push(&mut self, m: &Received) -> anyhow::Result<()> {
        if !m.topic.contains("/data/") {
            return Ok(());
        }
        self.seqs.push(m)?;
        let v = m.json()?;
        self.batches.push(Batch {
            driver: v["driver"].as_str().unwrap_or_default().to_string(),
            captured_ns: v["captured_ns"].as_u64().unwrap_or(0),
            readings: v["readings"].as_array().cloned().unwrap_or_default(),
        });
        Ok(())
    }

    /// Takes messages for `span`.
    async fn take(
        &mut self,
        sub: &mut ferrule_tests::Subscriber,
        span: Duration,
    ) -> anyhow::Result<()> {
        let until = Instant::now() + span;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match tokio::time::timeout(left, sub.messages.recv()).await {
                Ok(Some(m)) => self.push(&m)?,
                _ => break,
            }
        }
        Ok(())
    }

    fn of<'a>(&'a self, driver: &'a str) -> impl Iterator<Item = &'a Batch> + 'a {
        self.batches.iter().filter(move |b| b.driver == driver)
    }
}

/// The value of `channel` in a batch.
fn value(b: &Batch, channel: &str) -> Option<f64> {
    b.readings
        .iter()
        .find(|r| r["channel"] == channel)
        .and_then(|r| r["value"].as_f64())
}

/// Waits for the gateway's answer to a reload asked for at `asked_ms`,
/// taking messages meanwhile.
async fn outcome(
    dir: &Path,
    asked_ms: u64,
    seen: &mut Seen,
    sub: &mut ferrule_tests::Subscriber,
    ferrule: &Process,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(bytes) = std::fs::read(dir.join("data/reload.json"))
            && let Ok(o) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && o["at_ms"].as_u64().unwrap_or(0) >= asked_ms
        {
            return Ok(o);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no reload outcome in 120 s; log:\n{}",
            ferrule.log_text()
        );
        seen.take(sub, Duration::from_millis(100)).await?;
    }
}

fn names(o: &serde_json::Value, key: &str) -> Vec<String> {
    o[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The steady driver's counter went up by one each poll (one instance,
/// never restarted) and its largest gap between polls; both over every
/// batch it captured.
fn steady_cadence(seen: &Seen) -> anyhow::Result<(usize, Duration)> {
    let mut batches: Vec<&Batch> = seen.of("steady").collect();
    batches.sort_by_key(|b| b.captured_ns);
    let counts: Vec<f64> = batches.iter().filter_map(|b| value(b, "count")).collect();
    anyhow::ensure!(
        counts.len() == batches.len(),
        "a steady batch without its count"
    );
    for pair in counts.windows(2) {
        anyhow::ensure!(
            pair[1] == pair[0] + 1.0,
            "the steady driver's counter went from {} to {}: its instance was replaced or a poll lost",
            pair[0],
            pair[1]
        );
    }
    let gap = batches
        .windows(2)
        .map(|w| Duration::from_nanos(w[1].captured_ns - w[0].captured_ns))
        .max()
        .unwrap_or_default();
    Ok((batches.len(), gap))
}

/// A gateway trusting `publisher.key.pub`, with telemetry every second,
/// running the 100 ms driver "steady" on `plugin`.
fn steady_gateway(dir: &Path, pki: &Pki, port: u16, plugin: &Path) -> GatewayToml {
    ferrule_tests::gateway_toml(&dir.join("data"), pki, port)
        .set(
            "trust",
            "publisher_keys",
            toml::Value::Array(vec!["publisher.key.pub".into()]),
        )
        .set("telemetry", "interval_s", 1)
        .driver(counter("steady", plugin, 100, &["count"]))
}

#[tokio::test]
async fn reload_adds_changes_and_removes_a_driver_while_the_others_keep_their_cadence()
-> anyhow::Result<()> {
    let (dir, pki, port, _broker, mut sub) =
        Rig::start("", "ferrule/gw-test/data/#").await?.into_parts();
    let d = dir.path();
    keygen(d, "publisher.key")?;
    let sim = plugin("sim")?;
    sign_as(d, "publisher.key", &sim, "sim-2.wasm", "0.2.0")?;
    sign_as(d, "publisher.key", &sim, "sim-3.wasm", "0.3.0")?;
    let (v2, v3) = (d.join("sim-2.wasm"), d.join("sim-3.wasm"));
    let base = || steady_gateway(d, &pki, port, &v2);
    write(d, &base())?;
    let mut ferrule = start_ferrule(d, &["run", "gateway.toml"])?;
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.of("steady").count() < 10 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "steady never ran: {}",
            ferrule.log_text()
        );
        seen.take(&mut sub, Duration::from_millis(200)).await?;
    }

    // 1. Add a driver (SIGHUP).
    write(d, &base().driver(counter("other", &v2, 200, &["count"])))?;
    let asked = now_ms();
    sighup(&ferrule)?;
    let added = outcome(d, asked, &mut seen, &mut sub, &ferrule).await?;
    assert_eq!(added["ok"], true, "{added}");
    assert_eq!(names(&added, "started"), ["other"], "{added}");
    assert_eq!(names(&added, "unchanged"), ["steady"], "{added}");
    seen.take(&mut sub, Duration::from_secs(2)).await?;
    assert!(
        seen.of("other").count() >= 3,
        "the added driver does not run"
    );

    // 2. Change it: a newer signed version and a new config, through
    // `ferrule reload`, which prints what the gateway did.
    write(d, &base().driver(counter("other", &v3, 200, &["pressure"])))?;
    let asked_ns = now_ms() * 1_000_000;
    let printed = ferrule_ok(d, &["reload", "gateway.toml"])?;
    assert!(
        printed.contains("replaced   other") && printed.contains("unchanged  steady"),
        "{printed}"
    );
    seen.take(&mut sub, Duration::from_secs(2)).await?;
    let after: Vec<&Batch> = seen
        .of("other")
        .filter(|b| b.captured_ns > asked_ns)
        .collect();
    assert!(!after.is_empty(), "the changed driver stopped");
    let fresh = after
        .iter()
        .filter(|b| value(b, "pressure").is_some())
        .count();
    assert!(
        fresh >= 3,
        "the changed driver does not read with its new config"
    );
    // Once the new instance publishes, the old one never does again.
    let first_new = after
        .iter()
        .filter(|b| value(b, "pressure").is_some())
        .map(|b| b.captured_ns)
        .min()
        .unwrap_or(0);
    assert!(
        after
            .iter()
            .all(|b| value(b, "count").is_none() || b.captured_ns < first_new),
        "old and new instances of the changed driver both ran"
    );

    // 3. Remove it (SIGHUP).
    write(d, &base())?;
    let asked = now_ms();
    sighup(&ferrule)?;
    let removed = outcome(d, asked, &mut seen, &mut sub, &ferrule).await?;
    assert_eq!(removed["ok"], true, "{removed}");
    assert_eq!(names(&removed, "stopped"), ["other"], "{removed}");
    let done_ns = (removed["at_ms"].as_u64().unwrap_or(0)
        + removed["took_ms"].as_u64().unwrap_or(0))
        * 1_000_000;
    seen.take(&mut sub, Duration::from_secs(2)).await?;
    assert!(
        seen.of("other").all(|b| b.captured_ns <= done_ns),
        "the removed driver captured after its reload finished"
    );

    // The sequence has no gap from the first message to the last captured.
    let stats = ferrule_tests::queue_stats(d, &d.join("gateway.toml"))?;
    let last = stats["next_seq"].as_u64().unwrap_or(1) - 1;
    let first = seen.seqs.unique().first().copied().unwrap_or(1);
    seen.seqs
        .wait_for_all(&mut sub, first, last, Duration::from_secs(30))
        .await?;

    // The untouched driver: one instance throughout, never late by a
    // whole interval.
    let (polls, gap) = steady_cadence(&seen)?;
    println!("steady: {polls} polls across three reloads, largest gap {gap:?}");
    assert!(
        gap < Duration::from_millis(200),
        "the untouched 100 ms driver paused for {gap:?}"
    );

    // Status says what the last reload did.
    let (_, text, _) = run_ferrule(d, &["status", "gateway.toml"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = text;
    while !text.contains("stopped    other") {
        anyhow::ensure!(Instant::now() < deadline, "status: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        text = run_ferrule(d, &["status", "gateway.toml"])?.1;
    }
    assert!(text.contains("last reload"), "{text}");
    ferrule.terminate(Duration::from_secs(30))?;
    Ok(())
}

#[tokio::test]
async fn a_reload_that_fails_any_check_changes_nothing_and_says_why() -> anyhow::Result<()> {
    let (dir, pki, port, _broker, mut sub) =
        Rig::start("", "ferrule/gw-test/data/#").await?.into_parts();
    let d = dir.path();
    keygen(d, "publisher.key")?;
    sign_as(d, "publisher.key", &plugin("sim")?, "sim.wasm", "0.2.0")?;
    let sim = d.join("sim.wasm");
    let mut tampered = std::fs::read(&sim)?;
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    std::fs::write(d.join("sim-tampered.wasm"), tampered)?;
    let base = || steady_gateway(d, &pki, port, &sim);
    write(d, &base())?;
    let mut ferrule = start_ferrule(d, &["run", "gateway.toml"])?;
    let mut seen = Seen::default();
    seen.take(&mut sub, Duration::from_secs(3)).await?;
    anyhow::ensure!(
        seen.of("steady").count() > 5,
        "steady never ran: {}",
        ferrule.log_text()
    );

    let broken_toml = format!("{}\n[[driver]\nname = \"x\"\n", base().render());
    let lines = broken_toml.lines().count();
    let bad_init = base().driver(
        PluginToml::new("picky", &sim)
            .set("interval_ms", 100)
            .config(
                "channels",
                toml::Value::Array(vec![table([("name", "c"), ("signal", "nonsense")])]),
            ),
    );
    let bad_plugin = base().driver(counter("forged", &d.join("sim-tampered.wasm"), 100, &["c"]));
    let cases: [(&str, String, Vec<String>); 3] = [
        (
            "bad TOML",
            broken_toml,
            vec![format!("gateway.toml:{}:", lines - 1)],
        ),
        (
            "init rejects its config",
            bad_init.render(),
            vec!["driver picky".into(), "nonsense".into()],
        ),
        (
            "tampered plugin",
            bad_plugin.render(),
            vec![
                "driver forged".into(),
                "sim-tampered.wasm".into(),
                "changed after it was signed".into(),
            ],
        ),
    ];
    for (case, text, needles) in cases {
        std::fs::write(d.join("gateway.toml"), text)?;
        let asked = now_ms();
        sighup(&ferrule)?;
        let o = outcome(d, asked, &mut seen, &mut sub, &ferrule).await?;
        assert_eq!(o["ok"], false, "{case}: {o}");
        let error = o["error"].as_str().unwrap_or_default();
        for needle in &needles {
            assert!(
                error.contains(needle.as_str()),
                "{case}: {needle:?} not in {error}"
            );
        }
        let log = ferrule.log_text();
        assert!(
            log.lines()
                .any(|l| l.contains("config reload REFUSED") && l.contains(&needles[0])),
            "{case}: {log}"
        );
        // `ferrule reload` says the same, without signalling, when the file
        // does not parse; otherwise it asks the gateway and prints its answer.
        let (ok, _, err) = run_ferrule(d, &["reload", "gateway.toml"])?;
        assert!(!ok && err.contains(needles[0].as_str()), "{case}: {err}");
        seen.take(&mut sub, Duration::from_millis(500)).await?;
    }
    seen.take(&mut sub, Duration::from_secs(1)).await?;
    let drivers: std::collections::BTreeSet<&str> =
        seen.batches.iter().map(|b| b.driver.as_str()).collect();
    assert_eq!(drivers.into_iter().collect::<Vec<_>>(), ["steady"]);
    let (polls, gap) = steady_cadence(&seen)?;
    println!("steady: {polls} polls across five refused reloads, largest gap {gap:?}");
    assert!(
        gap < Duration::from_millis(200),
        "steady paused for {gap:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text, _) = run_ferrule(d, &["status", "gateway.toml"])?;
        if text.contains("REFUSED, nothing changed") && text.contains("changed after it was signed")
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "status: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ferrule.terminate(Duration::from_secs(30))?;
    Ok(())
}

#[tokio::test]
async fn killed_during_a_reload_the_gateway_restarts_on_one_whole_config_without_a_gap()
-> anyhow::Result<()> {
    let (dir, pki, port, _broker, mut sub) =
        Rig::start("", "ferrule/gw-test/data/#").await?.into_parts();
    let d = dir.path();
    let sim = plugin("sim")?;
    let config_a = || {
        ferrule_tests::gateway_toml(&d.join("data"), &pki, port)
            .driver(counter("a", &sim, 50, &["count"]))
            .driver(counter("b", &sim, 50, &["count"]))
    };
    let config_b = || {
        ferrule_tests::gateway_toml(&d.join("data"), &pki, port)
            .driver(counter("a", &sim, 50, &["count", "extra"]))
            .driver(counter("c", &sim, 50, &["count"]))
    };
    let mut jitter = Jitter::from_time();
    println!("jitter seed {}", jitter.seed());
    let mut seen = Seen::default();
    write(d, &config_a())?;
    let mut ferrule = start_ferrule(d, &["run", "gateway.toml"])?;
    for round in 0..4 {
        let (next, expected): (GatewayToml, [&str; 2]) = if round % 2 == 0 {
            (config_b(), ["a", "c"])
        } else {
            (config_a(), ["a", "b"])
        };
        seen.take(&mut sub, Duration::from_secs(1)).await?;
        write(d, &next)?;
        sighup(&ferrule)?;
        tokio::time::sleep(jitter.between(Duration::ZERO, Duration::from_millis(400))).await;
        ferrule.kill9();
        if round == 0 {
            // The pid file the killed gateway left names no gateway now.
            let (ok, _, err) = run_ferrule(d, &["reload", "gateway.toml"])?;
            assert!(!ok && err.contains("is not a running ferrule"), "{err}");
        }
        let restarted_ns = now_ms() * 1_000_000;
        ferrule = start_ferrule(d, &["run", "gateway.toml"])?;
        seen.take(&mut sub, Duration::from_secs(3)).await?;
        let after: Vec<&Batch> = (seen.batches.iter())
            .filter(|b| b.captured_ns > restarted_ns)
            .collect();
        let mut running: Vec<&str> = after.iter().map(|b| b.driver.as_str()).collect();
        running.sort_unstable();
        running.dedup();
        assert_eq!(running, expected, "round {round}: {}", ferrule.log_text());
        // Driver a's channels are those of the config now in force.
        let extra = after
            .iter()
            .filter(|b| b.driver == "a")
            .all(|b| value(b, "extra").is_some() == (round % 2 == 0));
        assert!(extra, "round {round}: driver a runs a mix of configs");
    }
    let stats = ferrule_tests::queue_stats(d, &d.join("gateway.toml"))?;
    let last = stats["next_seq"].as_u64().unwrap_or(1) - 1;
    seen.seqs
        .wait_for_all(&mut sub, 1, last, Duration::from_secs(60))
        .await?;
    println!(
        "4 reloads killed at random: seq 1..={last} all delivered, {} duplicates",
        seen.seqs.duplicates()
    );
    // A second gateway on the same data_dir is turned away at once.
    let mut second = start_ferrule(d, &["run", "gateway.toml"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.child.try_wait()?.is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "a second gateway started: {}",
            second.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = second.log_text();
    assert!(log.contains("another gateway (pid"), "{log}");
    ferrule.terminate(Duration::from_secs(30))?;
    Ok(())
}
