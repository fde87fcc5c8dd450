//! Deployments over MQTT: the operator CLI (`ferrule fleet deploy`) on one
//! side, a gateway nobody logs into on the other, mosquitto with mutual TLS
//! and per-identity ACLs between them. A deployment adds, changes and
//! upgrades drivers without touching the others; every refusal changes
//! nothing and says why; a driver that fails its health window is rolled
//! back; a transfer resumes across a kill -9 and a broker restart; a kill
//! -9 in the health window restarts on the last confirmed state; a fresh
//! gateway with only its bootstrap config runs the fleet's state.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use ferrule_tests::{
    Mosquitto, Pki, Process, Received, Rig, SeqLog, Subscriber, plugin, run_ferrule, start_ferrule,
};

use crate::common::{ferrule_ok, keygen, sign_as};

/// What the gateway (certificate CN `test-gateway`) may do, and the
/// operator (`test-subscriber`, which also reads the data) may do.
const ACL: &str = "\
user test-gateway
topic write ferrule/gw-test/status
topic write ferrule/gw-test/data/#
topic write ferrule/gw-test/telemetry
topic write ferrule/gw-test/audit
topic read ferrule/gw-test/cmd/+/write
topic write ferrule/gw-test/cmd/+/result
topic read ferrule/gw-test/deploy/desired
topic read ferrule/group/line-3/deploy/desired
topic read ferrule/gw-test/deploy/chunk/#
topic write ferrule/gw-test/deploy/fetch
topic write ferrule/gw-test/deploy/reported

user test-subscriber
topic readwrite ferrule/#
";

/// A rig whose broker maps client certificates to users and enforces
/// [`ACL`].
async fn rig() -> anyhow::Result<Rig> {
    Rig::start_with(
        |dir, _| {
            let acl = dir.join("acl");
            std::fs::write(&acl, ACL)?;
            Ok(format!(
                "use_identity_as_username true\nacl_file {}\n",
                acl.display()
            ))
        },
        "ferrule/gw-test/#",
        None,
    )
    .await
}

/// Keys (operator, a rogue operator, publisher) and signed plugins in the
/// rig's directory.
fn prepare(dir: &Path, pki: &Pki, port: u16) -> anyhow::Result<()> {
    keygen(dir, "op.key")?;
    keygen(dir, "rogue.key")?;
    keygen(dir, "pub.key")?;
    sign_as(dir, "pub.key", &plugin("sim")?, "sim-1.0.0.wasm", "1.0.0")?;
    sign_as(dir, "pub.key", &plugin("sim")?, "sim-1.1.0.wasm", "1.1.0")?;
    sign_as(
        dir,
        "pub.key",
        &plugin("scale")?,
        "scale-1.0.0.wasm",
        "1.0.0",
    )?;
    sign_as(
        dir,
        "pub.key",
        &plugin("hostile")?,
        "hostile-1.0.0.wasm",
        "1.0.0",
    )?;
    let ca = pki.ca.cert.display();
    let (cert, key) = (pki.subscriber.cert.display(), pki.subscriber.key.display());
    std::fs::write(
        dir.join("operator.toml"),
        format!(
            "[operator]\nkey = \"op.key\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nca_file = \"{ca}\"\nclient_cert_file = \"{cert}\"\nclient_key_file = \"{key}\"\n"
        ),
    )?;
    Ok(())
}

/// The gateway's bootstrap config: identity, broker, keys, no drivers.
fn bootstrap(rig: &Rig, data_dir: &Path, deploy: &str) -> anyhow::Result<PathBuf> {
    let mut gateway = ferrule_tests::gateway_toml(data_dir, &rig.pki, rig.port)
        .set(
            "gateway",
            "groups",
            toml::Value::Array(vec!["line-3".into()]),
        )
        .set(
            "trust",
            "operator_keys",
            toml::Value::Array(vec!["op.key.pub".into()]),
        )
        .set(
            "trust",
            "publisher_keys",
            toml::Value::Array(vec!["pub.key.pub".into()]),
        );
    for (key, value) in toml::from_str::<toml::Table>(deploy)? {
        gateway = gateway.set("deploy", &key, value);
    }
    let path = rig.dir.path().join("gateway.toml");
    std::fs::write(&path, gateway.render())?;
    Ok(path)
}

/// A state file `name` in the rig's directory.
fn state(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A sim driver `name` with one counter channel `n`, using `plugin`.
fn counter(name: &str, interval_ms: u64) -> String {
    format!(
        "[[driver]]\nname = \"{name}\"\nplugin = \"sim\"\ninterval_ms = {interval_ms}\n[[driver.config.channels]]\nname = \"n\"\nsignal = \"counter\"\n"
    )
}

/// `ferrule fleet deploy` of `state` to gw-test, off the test's runtime;
/// (success, stdout, stderr).
async fn deploy(dir: &Path, state: &Path) -> anyhow::Result<(bool, String, String)> {
    let (dir, state) = (dir.to_path_buf(), state.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let args = ferrule_tests::fleet_deploy_args(&state, "120s");
        run_ferrule(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await?
}

/// `ferrule fleet deploy` of `state` to gw-test, started in the background.
fn start_deploy(dir: &Path, state: &Path, wait: &str) -> anyhow::Result<Process> {
    let args = ferrule_tests::fleet_deploy_args(state, wait);
    start_ferrule(dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The gateway's retained report, through `ferrule fleet status`.
async fn reported(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let dir = dir.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        ferrule_ok(
            &dir,
            &[
                "fleet",
                "status",
                "--bootstrap",
                "operator.toml",
                "--gateway",
                "gw-test",
                "--json",
            ],
        )
    })
    .await??;
    Ok(serde_json::from_str(&out)?)
}

/// Messages seen: sequences, and each driver's counter values in order.
#[derive(Default)]
struct Seen {
    seqs: SeqLog,
    counters: std::collections::BTreeMap<String, Vec<i64>>,
    reports: Vec<serde_json::Value>,
}

impl Seen {
    fn push(&mut self, m: &Received) -> anyhow::Result<()> {
        if m.topic.ends_with("/deploy/reported") {
            self.reports.push(m.json()?);
        }
        if !m.topic.contains("/data/") {
            return Ok(());
        }
        self.seqs.push(m)?;
        let v = m.json()?;
        let driver = v["driver"].as_str().unwrap_or_default().to_string();
        for r in v["readings"].as_array().into_iter().flatten() {
            // Integral (a counter, doubled by a processor as a float).
            if r["channel"] == "n"
                && let Some(n) = r["value"].as_f64()
            {
                self.counters
                    .entry(driver.clone())
                    .or_default()
                    .push(n as i64);
            }
        }
        Ok(())
    }

    fn drain(&mut self, sub: &mut Subscriber) -> anyhow::Result<()> {
        while let Ok(m) = sub.messages.try_recv() {
            self.push(&m)?;
        }
        Ok(())
    }

    /// Takes messages until `done` holds, for at most `limit`.
    async fn until(
        &mut self,
        sub: &mut Subscriber,
        limit: Duration,
        what: &str,
        done: impl Fn(&Seen) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            self.drain(sub)?;
            if done(self) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{what}: not seen within {limit:?}");
            }
            if let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(200), sub.messages.recv()).await
            {
                self.push(&m)?;
            }
        }
    }

    fn count(&self, driver: &str) -> usize {
        self.counters.get(driver).map_or(0, Vec::len)
    }

    /// Every sequence from the first seen to the last arrived.
    fn no_gap(&self) -> anyhow::Result<()> {
        let unique = self.seqs.unique();
        let (Some(first), Some(last)) = (unique.first(), unique.last()) else {
            bail!("no data seen");
        };
        let missing = self.seqs.missing(*first, *last);
        ensure!(
            missing.is_empty(),
            "{} sequences missing in {first}..={last}: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        Ok(())
    }

    /// The driver's counter never went back: its instance was never
    /// restarted (duplicates from redelivery allowed).
    fn never_restarted(&self, driver: &str) -> anyhow::Result<()> {
        self.never_restarted_since(driver, 0)
    }

    /// Like [`Seen::never_restarted`], from its `from`-th value on.
    fn never_restarted_since(&self, driver: &str, from: usize) -> anyhow::Result<()> {
        let values = self.counters.get(driver).context("driver not seen")?;
        for pair in values[from.min(values.len())..].windows(2) {
            ensure!(
                pair[1] >= pair[0],
                "{driver}'s counter went from {} back to {}: its instance was restarted",
                pair[0],
                pair[1]
            );
        }
        Ok(())
    }
}

/// Waits for the gateway to report `last` about deployment `number`, with
/// `result`; returns that report.
async fn outcome(
    seen: &mut Seen,
    sub: &mut Subscriber,
    number: u64,
    result: &str,
) -> anyhow::Result<serde_json::Value> {
    let matches = |r: &serde_json::Value| {
        r["last"]["deployment"].as_u64() == Some(number) && r["last"]["result"] == result
    };
    seen.until(
        sub,
        Duration::from_secs(60),
        &format!("deployment {number} {result}"),
        |s| s.reports.iter().any(matches),
    )
    .await?;
    let report = seen.reports.iter().rev().find(|r| matches(r));
    Ok(report.cloned().unwrap_or_default())
}

/// Signs `state` with `key` (offline) and publishes it on gw-test's
/// desired topic, as a compromised or careless publisher would.
async fn publish_signed(
    dir: &Path,
    sub: &Subscriber,
    key: &str,
    state: &Path,
) -> anyhow::Result<()> {
    // For gw-test, unless the state file names its own target.
    let mut args = vec!["fleet", "sign", "--key", key];
    if !std::fs::read_to_string(state)?.contains("target =") {
        args.extend(["--gateway", "gw-test"]);
    }
    let file = state.to_string_lossy();
    args.push(&file);
    let out = ferrule_ok(dir, &args)?;
    sub.client
        .publish(
            "ferrule/gw-test/deploy/desired",
            rumqttc::QoS::AtLeastOnce,
            true,
            out.trim().as_bytes().to_vec(),
        )
        .await?;
    Ok(())
}

/// The test plugin `from` padded by `pad` bytes (a bigger plugin that
/// still loads), signed by the publisher as version `version` of the
/// plugin `name`, written to `to` in `dir`.
fn padded_plugin(
    dir: &Path,
    from: &str,
    name: &str,
    pad: usize,
    to: &str,
    version: &str,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(plugin(from)?)?;
    // Signed under the file's name: write it as `name.wasm` apart.
    let unsigned = dir.join("unsigned").join(format!("{name}.wasm"));
    std::fs::create_dir_all(dir.join("unsigned"))?;
    std::fs::write(
        &unsigned,
        ferrule_tests::with_custom_section(&bytes, "padding", pad),
    )?;
    sign_as(dir, "pub.key", &unsigned, to, version)
}

#[tokio::test]
async fn a_gateway_nobody_logs_into_takes_signed_deployments_refuses_bad_ones_and_rolls_back_a_failing_driver()
-> anyhow::Result<()> {
    let rig = rig().await?;
    let dir = rig.dir.path().to_path_buf();
    prepare(&dir, &rig.pki, rig.port)?;
    // A plugin over the gateway's size limit.
    padded_plugin(&dir, "sim", "big", 3 << 20, "big-1.0.0.wasm", "1.0.0")?;
    let config = bootstrap(
        &rig,
        &rig.data_dir(),
        "max_plugin_bytes = 2097152\nchunk_bytes = 65536",
    )?;
    let ferrule = start_ferrule(&dir, &["run", &config.to_string_lossy()])?;
    ferrule
        .wait_for_log("mqtt connected", Duration::from_secs(60))
        .await?;
    let (mut sub, mut seen) = (rig.sub, Seen::default());

    // 1. A driver deployed to a gateway that has none.
    let one = state(
        &dir,
        "one.toml",
        &format!(
            "deployment = 1\n[[plugin]]\nfile = \"sim-1.0.0.wasm\"\n{}",
            counter("a", 100)
        ),
    )?;
    let (ok, out, err) = deploy(&dir, &one).await?;
    ensure!(
        ok && out.contains("deployment 1: applied"),
        "deploy 1: {out}\n{err}\n{}",
        ferrule.log_text()
    );
    ensure!(
        err.contains("gw-test: deployment 1: APPLIED"),
        "progress shown: {err}"
    );
    seen.until(&mut sub, Duration::from_secs(30), "driver a's data", |s| {
        s.count("a") >= 5
    })
    .await?;

    // 2. A new driver with a processor beside it: a is never touched.
    let two = state(
        &dir,
        "two.toml",
        &format!(
            "deployment = 2\n[[plugin]]\nfile = \"sim-1.0.0.wasm\"\n[[plugin]]\nfile = \"scale-1.0.0.wasm\"\n{}{}[[driver.processor]]\nname = \"x2\"\nplugin = \"scale\"\n[driver.processor.config.channels.n]\ngain = 2.0\n",
            counter("a", 100),
            counter("b", 100)
        ),
    )?;
    let (ok, out, err) = deploy(&dir, &two).await?;
    ensure!(ok, "deploy 2: {out}\n{err}");
    seen.until(&mut sub, Duration::from_secs(30), "driver b's data", |s| {
        s.count("b") >= 5
    })
    .await?;
    seen.never_restarted("a")?;
    let b = &seen.counters["b"];
    ensure!(b.iter().all(|n| n % 2 == 0), "b's processor doubles: {b:?}");

    // 3. A plugin upgraded (both drivers get the new version) and a
    // processor's config changed.
    let three = state(
        &dir,
        "three.toml",
        &std::fs::read_to_string(&two)?
            .replace("deployment = 2", "deployment = 3")
            .replace("sim-1.0.0.wasm", "sim-1.1.0.wasm")
            .replace("gain = 2.0", "gain = 3.0"),
    )?;
    seen.drain(&mut sub)?;
    let b_before = seen.count("b");
    let (ok, out, err) = deploy(&dir, &three).await?;
    ensure!(ok, "deploy 3: {out}\n{err}");
    seen.until(
        &mut sub,
        Duration::from_secs(30),
        "b after deployment 3",
        |s| {
            // Tripled now (some odd, so not the doubled ones).
            let tail = &s.counters["b"][b_before..];
            tail.len() >= 5
                && tail[tail.len() - 5..].iter().all(|n| n % 3 == 0)
                && tail[tail.len() - 5..].iter().any(|n| n % 2 != 0)
        },
    )
    .await?;
    let report = reported(&dir).await?;
    ensure!(
        report["running"] == 3 && report["phase"] == "idle",
        "{report}"
    );
    let plugins = report["plugins"].as_array().context("plugins")?;
    let versions: Vec<(&str, &str)> = plugins
        .iter()
        .map(|p| {
            (
                p["instance"].as_str().unwrap_or(""),
                p["version"].as_str().unwrap_or(""),
            )
        })
        .collect();
    ensure!(
        versions.contains(&("a", "1.1.0"))
            && versions.contains(&("b", "1.1.0"))
            && versions.contains(&("b/x2", "1.0.0")),
        "running versions: {versions:?}"
    );
    ensure!(
        plugins
            .iter()
            .all(|p| p["signer"].is_string() && p["sha256"].as_str().map(str::len) == Some(64)),
        "{report}"
    );

    // 4. Refused, each with its reason; nothing changes.
    let refused = |n: u64| {
        let text = format!(
            "deployment = {n}\n[[plugin]]\nfile = \"sim-1.1.0.wasm\"\n{}",
            counter("a", 100)
        );
        state(&dir, &format!("refused-{n}.toml"), &text)
    };
    // A replay of deployment 1.
    publish_signed(&dir, &sub, "op.key", &one).await?;
    let r = outcome(&mut seen, &mut sub, 1, "refused").await?;
    ensure!(
        r["last"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("not newer"),
        "{r}"
    );
    // Signed by a key the gateway does not trust for deployments.
    publish_signed(&dir, &sub, "rogue.key", &refused(10)?).await?;
    let r = outcome(&mut seen, &mut sub, 10, "refused").await?;
    ensure!(
        r["last"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("does not trust"),
        "{r}"
    );
    // For another gateway.
    let other = state(
        &dir,
        "other.toml",
        &format!(
            "deployment = 11\ntarget = {{ gateway = \"gw-other\" }}\n[[plugin]]\nfile = \"sim-1.1.0.wasm\"\n{}",
            counter("a", 100)
        ),
    )?;
    publish_signed(&dir, &sub, "op.key", &other).await?;
    let r = outcome(&mut seen, &mut sub, 11, "refused").await?;
    ensure!(
        r["last"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("not for this gateway"),
        "{r}"
    );
    // A downgrade of a plugin this gateway has run.
    let down = state(
        &dir,
        "down.toml",
        &std::fs::read_to_string(&one)?.replace("deployment = 1", "deployment = 12"),
    )?;
    let (ok, out, err) = deploy(&dir, &down).await?;
    ensure!(
        !ok && err.contains("refused") && err.contains("1.1.0"),
        "downgrade: {out}\n{err}"
    );
    // A plugin over the size limit.
    let big = state(
        &dir,
        "big.toml",
        "deployment = 13\n[[plugin]]\nfile = \"big-1.0.0.wasm\"\n[[driver]]\nname = \"big\"\nplugin = \"big\"\ninterval_ms = 100\n",
    )?;
    let (ok, _, err) = deploy(&dir, &big).await?;
    ensure!(!ok && err.contains("max_plugin_bytes"), "size limit: {err}");
    // A chunk changed in transit: the test serves the plugin, one byte flipped.
    padded_plugin(&dir, "scale", "scale", 10, "scale-2.0.0.wasm", "2.0.0")?;
    let tampered = state(
        &dir,
        "tampered.toml",
        &format!(
            "deployment = 14\n[[plugin]]\nfile = \"sim-1.1.0.wasm\"\n[[plugin]]\nfile = \"scale-2.0.0.wasm\"\n{}[[driver.processor]]\nname = \"x2\"\nplugin = \"scale\"\n",
            counter("a", 100)
        ),
    )?;
    let serving = std::fs::read(dir.join("scale-2.0.0.wasm"))?;
    let served_sha = trust_sha(&dir.join("scale-2.0.0.wasm"))?;
    let mut fetches =
        Subscriber::connect(&rig.pki, rig.port, "ferrule/gw-test/deploy/fetch").await?;
    publish_signed(&dir, &sub, "op.key", &tampered).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        seen.drain(&mut sub)?;
        if seen.reports.iter().any(|r| r["last"]["deployment"] == 14) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no outcome for the tampered transfer"
        );
        let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(200), fetches.messages.recv()).await
        else {
            continue;
        };
        let ask = m.json()?;
        let (sha, offset, len) = (
            ask["sha256"].as_str().unwrap_or(""),
            ask["offset"].as_u64().unwrap_or(0) as usize,
            ask["len"].as_u64().unwrap_or(0) as usize,
        );
        let mut chunk = serving[offset..(offset + len).min(serving.len())].to_vec();
        if offset == 0 {
            chunk[100] ^= 0x01;
        }
        fetches
            .client
            .publish(
                format!("ferrule/gw-test/deploy/chunk/{sha}/{offset}"),
                rumqttc::QoS::AtLeastOnce,
                false,
                chunk,
            )
            .await?;
    }
    let r = outcome(&mut seen, &mut sub, 14, "refused").await?;
    ensure!(
        r["last"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("sha256"),
        "{r}"
    );
    ensure!(r["running"] == 3, "still running deployment 3: {r}");
    ensure!(
        !dir.join("data/deploy/plugins")
            .read_dir()?
            .any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with(&served_sha))),
        "the tampered plugin is not kept"
    );

    // 5. A driver that initialises but fails every poll: applied, then
    // rolled back within its health window; a and b run on untouched.
    let failing = state(
        &dir,
        "failing.toml",
        &format!(
            "deployment = 20\n[health]\nwindow_s = 3\ngood_polls = 3\n{}[[plugin]]\nfile = \"hostile-1.0.0.wasm\"\n[[driver]]\nname = \"c\"\nplugin = \"hostile\"\ninterval_ms = 100\n[driver.config]\nbehavior = \"fail-every\"\ncount = 1\n",
            std::fs::read_to_string(&three)?.replace("deployment = 3\n", "")
        ),
    )?;
    seen.drain(&mut sub)?;
    let (before, b_from) = (seen.count("a"), seen.count("b"));
    let (ok, out, err) = deploy(&dir, &failing).await?;
    ensure!(
        !ok && err.contains("ROLLED-BACK") && err.contains("driver c: 0 of 3 good polls"),
        "rollback: {out}\n{err}"
    );
    let report = reported(&dir).await?;
    ensure!(
        report["running"] == 3 && report["last"]["result"] == "rolled-back",
        "{report}"
    );
    ensure!(
        !report["plugins"]
            .as_array()
            .context("plugins")?
            .iter()
            .any(|p| p["instance"] == "c"),
        "c stopped: {report}"
    );
    seen.until(
        &mut sub,
        Duration::from_secs(30),
        "a after the rollback",
        |s| s.count("a") >= before + 20,
    )
    .await?;
    seen.never_restarted_since("a", before)?;
    seen.never_restarted_since("b", b_from)?;
    seen.no_gap()?;
    drop(ferrule);
    Ok(())
}

fn trust_sha(file: &Path) -> anyhow::Result<String> {
    Ok(ferrule::plugin::trust::sha256_file(file)?)
}

/// Waits until the staged transfer of `sha256` is over `over` bytes.
async fn wait_staged(data_dir: &Path, sha256: &str, over: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while staged(data_dir, sha256) <= over {
        ensure!(
            Instant::now() < deadline,
            "transfer did not pass {over} bytes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The staged size of the transfer of `sha256` under `data_dir`.
fn staged(data_dir: &Path, sha256: &str) -> u64 {
    std::fs::metadata(
        data_dir
            .join("deploy/staging")
            .join(format!("{sha256}.part")),
    )
    .map_or(0, |m| m.len())
}

#[tokio::test]
async fn transfers_resume_across_kill_9_and_broker_restarts_a_kill_in_the_health_window_rolls_back_and_a_fresh_gateway_runs_the_fleet_state()
-> anyhow::Result<()> {
    let rig = rig().await?;
    let dir = rig.dir.path().to_path_buf();
    prepare(&dir, &rig.pki, rig.port)?;
    // 4 MiB in 16 KiB chunks: long enough to interrupt twice.
    padded_plugin(&dir, "sim", "sim", 4 << 20, "sim-big.wasm", "1.0.0")?;
    let sha = trust_sha(&dir.join("sim-big.wasm"))?;
    let config = bootstrap(
        &rig,
        &rig.data_dir(),
        "chunk_bytes = 16384\nchunk_timeout_s = 2",
    )?;
    let run = ["run", &*config.to_string_lossy()].map(str::to_string);
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let mut ferrule = start_ferrule(&dir, &run)?;
    ferrule
        .wait_for_log("mqtt connected", Duration::from_secs(60))
        .await?;
    let mut seen = Seen::default();
    let mut broker = rig.broker;

    let one = state(
        &dir,
        "one.toml",
        &format!(
            "deployment = 1\n[[plugin]]\nfile = \"sim-big.wasm\"\n{}",
            counter("a", 100)
        ),
    )?;
    let operator = start_deploy(&dir, &one, "300s")?;
    let data = rig_data(&dir);
    // Killed mid-transfer: it resumes where the staged file ends.
    wait_staged(&data, &sha, 1 << 20).await?;
    ferrule.kill9();
    let at_kill = staged(&data, &sha);
    ensure!(
        at_kill < 3 << 20,
        "the transfer got too far before the kill"
    );
    ferrule = start_ferrule(&dir, &run)?;
    ferrule
        .wait_for_log("fetching plugin", Duration::from_secs(60))
        .await?;
    ensure!(
        ferrule.log_text().contains(&format!("from={at_kill}")),
        "resumed at {at_kill}: {}",
        ferrule.log_text()
    );
    // The broker restarted mid-transfer: both sides reconnect, it goes on.
    wait_staged(&data, &sha, at_kill + (1 << 20)).await?;
    let port = broker.port;
    broker.process.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acl = dir.join("acl");
    broker = Mosquitto::start(
        &dir,
        &rig.pki,
        port,
        &format!(
            "use_identity_as_username true\nacl_file {}\n",
            acl.display()
        ),
    )?;
    let mut sub = Subscriber::connect(&rig.pki, port, "ferrule/gw-test/#").await?;
    let outcome_one = wait_exit(operator, Duration::from_secs(240)).await?;
    ensure!(
        outcome_one.0,
        "deploy 1 after the interruptions: {}",
        outcome_one.1
    );
    seen.until(&mut sub, Duration::from_secs(30), "a's data", |s| {
        s.count("a") >= 5
    })
    .await?;

    // Killed in the health window: restarts on deployment 1, reports why.
    let two = state(
        &dir,
        "two.toml",
        &format!(
            "deployment = 2\n[health]\nwindow_s = 600\ngood_polls = 1000000\n[[plugin]]\nfile = \"sim-big.wasm\"\n{}{}",
            counter("a", 100),
            counter("b", 100)
        ),
    )?;
    let operator = start_deploy(&dir, &two, "120s")?;
    seen.until(
        &mut sub,
        Duration::from_secs(60),
        "deployment 2 in its health window",
        |s| {
            s.reports
                .iter()
                .any(|r| r["phase"] == "health" && r["trial"] == 2)
        },
    )
    .await?;
    seen.until(&mut sub, Duration::from_secs(30), "b's data", |s| {
        s.count("b") >= 3
    })
    .await?;
    ferrule.kill9();
    ferrule = start_ferrule(&dir, &run)?;
    let r = outcome(&mut seen, &mut sub, 2, "rolled-back").await?;
    ensure!(
        r["running"] == 1
            && r["last"]["reason"]
                .as_str()
                .unwrap_or("")
                .contains("interrupted"),
        "{r}"
    );
    let (ok, log) = wait_exit(operator, Duration::from_secs(60)).await?;
    ensure!(
        !ok && log.contains("ROLLED-BACK"),
        "the operator is told: {log}"
    );
    let a_before = seen.count("a");
    seen.until(
        &mut sub,
        Duration::from_secs(30),
        "a after the restart",
        |s| s.count("a") >= a_before + 10,
    )
    .await?;
    ensure!(
        !ferrule.log_text().contains("driver b"),
        "b is not running after the rollback"
    );

    // A good deployment 3, then the gateway is replaced by a fresh one:
    // same identity and bootstrap, empty data dir.
    let three = state(
        &dir,
        "three.toml",
        &format!(
            "deployment = 3\n[[plugin]]\nfile = \"sim-big.wasm\"\n{}",
            counter("c", 100)
        ),
    )?;
    let (ok, out, err) = deploy(&dir, &three).await?;
    ensure!(ok, "deploy 3: {out}\n{err}");
    ferrule.terminate(Duration::from_secs(30))?;
    // The operator's plugin store serves whoever asks.
    std::fs::create_dir_all(dir.join("store"))?;
    std::fs::copy(dir.join("sim-big.wasm"), dir.join("store/sim-big.wasm"))?;
    let _server = start_ferrule(
        &dir,
        &[
            "fleet",
            "serve",
            "--bootstrap",
            "operator.toml",
            "--plugins",
            "store",
        ],
    )?;
    let fresh = dir.join("fresh-data");
    let config = bootstrap_at(
        &dir,
        &std::fs::read_to_string(&config)?,
        &rig_data(&dir),
        &fresh,
    )?;
    let _ferrule = start_ferrule(&dir, &["run", &config.to_string_lossy()])?;
    // Only what the fresh gateway says from here on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    seen.drain(&mut sub)?;
    seen.reports.clear();
    let c_before = seen.count("c");
    seen.until(
        &mut sub,
        Duration::from_secs(120),
        "the fresh gateway's data",
        |s| s.count("c") >= c_before + 5,
    )
    .await?;
    outcome(&mut seen, &mut sub, 3, "applied").await?;
    ensure!(
        seen.reports.iter().any(|r| r["phase"] == "fetching"),
        "the fresh gateway fetched its plugin"
    );
    let r = reported(&dir).await?;
    ensure!(r["running"] == 3 && r["last"]["result"] == "applied", "{r}");
    ensure!(
        fresh
            .join("deploy/plugins")
            .join(format!("{sha}.wasm"))
            .is_file(),
        "fetched into the fresh data dir"
    );
    seen.no_gap()?;
    drop(broker);
    Ok(())
}

fn rig_data(dir: &Path) -> PathBuf {
    dir.join("data")
}

/// The bootstrap text with its data dir moved, written beside it.
fn bootstrap_at(dir: &Path, text: &str, old: &Path, new: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("replacement.toml");
    std::fs::write(
        &path,
        text.replace(&*old.to_string_lossy(), &new.to_string_lossy()),
    )?;
    Ok(path)
}

/// Waits for a process to exit; (success, its log).
async fn wait_exit(mut process: Process, limit: Duration) -> anyhow::Result<(bool, String)> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = process.child.try_wait()? {
            return Ok((status.success(), process.log_text()));
        }
        ensure!(
            Instant::now() < deadline,
            "did not exit within {limit:?}: {}",
            process.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
