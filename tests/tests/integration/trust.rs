//! Signed plugins: with `[trust]` publisher keys, a gateway runs the
//! plugins those keys signed and refuses every other one with its own
//! reason (unsigned, changed after signing, signed by an unknown key),
//! while the drivers whose plugins it trusts run on rate. Once a version
//! has run, an older one is refused unless the config pins it.

use std::time::{Duration, Instant};

use sha2::Digest;

use ferrule_tests::{PluginToml, Rig, gateway_toml, plugin, run_ferrule, start_ferrule};

use crate::common::{ferrule_ok, keygen, sign, sign_as, sim_with_scale};

#[tokio::test]
async fn only_plugins_signed_by_a_trusted_key_run_and_each_refusal_says_why() -> anyhow::Result<()>
{
    let (dir, pki, port, _broker, mut sub) =
        Rig::start("", "ferrule/gw-test/data/#").await?.into_parts();
    let d = dir.path();
    let trusted = keygen(d, "trusted.key")?;
    let stranger = keygen(d, "stranger.key")?;
    assert_ne!(trusted, stranger);

    let (sim, scale) = (plugin("sim")?, plugin("scale")?);
    sign(d, "trusted.key", &sim, "sim-signed.wasm")?;
    sign(d, "trusted.key", &scale, "scale-signed.wasm")?;
    sign(d, "stranger.key", &sim, "sim-stranger.wasm")?;
    let mut tampered = std::fs::read(d.join("sim-signed.wasm"))?;
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    std::fs::write(d.join("sim-tampered.wasm"), tampered)?;

    // What the signed file says about itself.
    let seen: serde_json::Value = serde_json::from_str(&ferrule_ok(
        d,
        &["plugin", "inspect", "--json", "sim-signed.wasm"],
    )?)?;
    assert_eq!(seen["identity"]["name"], "sim", "{seen}");
    assert_eq!(seen["identity"]["version"], "0.2.0", "{seen}");
    assert_eq!(seen["signatures"][0], trusted.as_str(), "{seen}");
    assert_eq!(seen["world"]["kind"], "driver", "{seen}");
    assert_eq!(seen["world"]["abi"], "ferrule:plugin@0.2.0", "{seen}");
    let verified = ferrule_ok(
        d,
        &[
            "plugin",
            "verify",
            "--key",
            "trusted.key.pub",
            "sim-signed.wasm",
        ],
    )?;
    assert!(verified.contains(&trusted), "{verified}");

    let at = |file: &str| d.join(file);
    let signed_scale = at("scale-signed.wasm");
    let gateway = gateway_toml(&d.join("data"), &pki, port)
        .set(
            "trust",
            "publisher_keys",
            toml::Value::Array(vec!["trusted.key.pub".into()]),
        )
        .set("telemetry", "interval_s", 1)
        .driver(sim_with_scale(
            "good",
            &at("sim-signed.wasm"),
            &signed_scale,
            100,
        ))
        .driver(sim_with_scale("unsigned", &sim, &signed_scale, 100))
        .driver(sim_with_scale(
            "tampered",
            &at("sim-tampered.wasm"),
            &signed_scale,
            100,
        ))
        .driver(sim_with_scale(
            "stranger",
            &at("sim-stranger.wasm"),
            &signed_scale,
            100,
        ));
    std::fs::write(d.join("gateway.toml"), gateway.render())?;

    // `ferrule check` names each refused plugin with its reason.
    let (ok, out, err) = run_ferrule(d, &["check", "gateway.toml"])?;
    assert!(!ok, "check passed: {out}");
    let line = |driver: &str| {
        err.lines()
            .find(|l| l.contains(&format!("driver {driver}:")))
            .unwrap_or_default()
            .to_string()
    };
    let sim_path = sim.display().to_string();
    let refusals = [
        ("unsigned", [sim_path.as_str(), "not signed", ""]),
        (
            "tampered",
            ["sim-tampered.wasm", "changed after it was signed", &trusted],
        ),
        (
            "stranger",
            ["sim-stranger.wasm", "does not trust", &stranger],
        ),
    ];
    for (driver, needles) in refusals {
        let said = line(driver);
        for needle in needles {
            assert!(said.contains(needle), "{driver}: {needle:?} not in: {err}");
        }
    }
    assert!(line("good").is_empty(), "{err}");

    // The gateway runs the trusted driver on rate and says why the others
    // do not run.
    let mut ferrule = start_ferrule(d, &["run", "gateway.toml"])?;
    let mut first: Option<Instant> = None;
    let mut good = 0u32;
    let deadline = Instant::now() + Duration::from_secs(60);
    while good < 30 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{good} messages in 60 s; log:\n{}",
            ferrule.log_text()
        );
        let m = sub.next(Duration::from_secs(30), "data messages").await?;
        let driver = m.json()?["driver"].as_str().unwrap_or_default().to_string();
        assert_eq!(driver, "good", "a refused driver published");
        first.get_or_insert_with(Instant::now);
        good += 1;
    }
    let elapsed = first.map(|t| t.elapsed()).unwrap_or_default();
    // 29 intervals of 100 ms after the first message; generous for a
    // shared machine, but a stalled driver would take far longer.
    assert!(
        elapsed < Duration::from_secs(10),
        "30 messages took {elapsed:?}"
    );
    let log = ferrule.log_text();
    for driver in ["unsigned", "tampered", "stranger"] {
        assert!(
            log.lines()
                .any(|l| l.contains("driver NOT started") && l.contains(driver)),
            "{driver}: {log}"
        );
    }

    // Telemetry and `ferrule status` say which plugin runs, who signed it,
    // and which config is loaded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (_, out, _) = run_ferrule(d, &["status", "gateway.toml", "--json"])?;
        let status: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        if status["telemetry"]["drivers"][0]["plugin"].is_object() {
            break status;
        }
        anyhow::ensure!(Instant::now() < deadline, "no telemetry: {out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let t = &status["telemetry"];
    let driver = &t["drivers"][0];
    assert_eq!(driver["name"], "good", "{t}");
    let plugin = &driver["plugin"];
    assert_eq!(plugin["signer"], trusted.as_str(), "{plugin}");
    assert_eq!(plugin["name"], "sim", "{plugin}");
    assert_eq!(plugin["version"], "0.2.0", "{plugin}");
    assert_eq!(plugin["abi"], "ferrule:plugin@0.2.0", "{plugin}");
    assert_eq!(plugin["sha256"], seen["sha256"], "{plugin}");
    let processor = &driver["processors"][0]["plugin"];
    assert_eq!(processor["name"], "scale", "{processor}");
    assert_eq!(processor["signer"], trusted.as_str(), "{processor}");
    let config_text = std::fs::read(d.join("gateway.toml"))?;
    let config_sha: String = sha2::Sha256::digest(&config_text)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(t["config"]["sha256"], config_sha.as_str(), "{t}");
    let not_started: Vec<&str> = t["config"]["not_started"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(not_started, ["unsigned", "tampered", "stranger"], "{t}");
    let (_, text, _) = run_ferrule(d, &["status", "gateway.toml"])?;
    assert!(
        text.contains(&format!("signed by key id {trusted}"))
            && text.contains("sim 0.2.0")
            && text.contains("NOT STARTED  driver tampered: "),
        "{text}"
    );
    ferrule.kill9();

    // The gateway ran sim 0.2.0: sim 0.1.0 is refused from now on, unless
    // the driver pins it; a driver may insist on the signed name.
    sign_as(d, "trusted.key", &sim, "sim-old.wasm", "0.1.0")?;
    let one = |driver: PluginToml| {
        gateway_toml(&d.join("data"), &pki, port)
            .set(
                "trust",
                "publisher_keys",
                toml::Value::Array(vec!["trusted.key.pub".into()]),
            )
            .driver(driver)
            .render()
    };
    let old = || sim_with_scale("good", &at("sim-old.wasm"), &signed_scale, 100);
    std::fs::write(d.join("rollback.toml"), one(old()))?;
    let (ok, _, err) = run_ferrule(d, &["check", "rollback.toml"])?;
    assert!(
        !ok && err.contains("sim-old.wasm") && err.contains("sim 0.1.0 is older than sim 0.2.0"),
        "{err}"
    );
    // Running, the rolled-back driver is set aside with that reason while
    // a trusted one beside it runs on rate.
    let two = gateway_toml(&d.join("data"), &pki, port)
        .set(
            "trust",
            "publisher_keys",
            toml::Value::Array(vec!["trusted.key.pub".into()]),
        )
        .driver(sim_with_scale(
            "current",
            &at("sim-signed.wasm"),
            &signed_scale,
            100,
        ))
        .driver(old());
    std::fs::write(d.join("two.toml"), two.render())?;
    let started_ns = ferrule::reading::now_ns();
    let mut ferrule = start_ferrule(d, &["run", "two.toml"])?;
    let mut current = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while current < 20 {
        anyhow::ensure!(Instant::now() < deadline, "{}", ferrule.log_text());
        let m = sub.next(Duration::from_secs(30), "data messages").await?;
        let v = m.json()?;
        // The first run's backlog (driver "good", killed) is sent first.
        if v["captured_ns"].as_u64().unwrap_or(0) < started_ns {
            continue;
        }
        assert_eq!(v["driver"], "current", "the rolled-back driver published");
        current += 1;
    }
    let log = ferrule.log_text();
    assert!(
        log.lines().any(|l| l.contains("driver NOT started")
            && l.contains("good")
            && l.contains("sim 0.1.0 is older than sim 0.2.0")),
        "{log}"
    );
    ferrule.kill9();
    std::fs::write(
        d.join("pinned.toml"),
        one(old().set("allow_downgrade", true)),
    )?;
    let (ok, out, err) = run_ferrule(d, &["check", "pinned.toml"])?;
    assert!(ok, "{out}{err}");
    let named = sim_with_scale("good", &at("sim-signed.wasm"), &signed_scale, 100)
        .set("plugin_name", "meter");
    std::fs::write(d.join("named.toml"), one(named))?;
    let (ok, _, err) = run_ferrule(d, &["check", "named.toml"])?;
    assert!(
        !ok && err.contains(r#"signed as "sim", but the config expects plugin_name = "meter""#),
        "{err}"
    );
    Ok(())
}

/// `ferrule fleet sign` pins each plugin of a state file to its signed
/// file; `ferrule fleet verify` accepts the document as the gateway it is
/// for would, and refuses it for another gateway, after it was applied,
/// signed by a key not trusted for deployments, or changed after signing.
#[tokio::test]
async fn fleet_documents_are_signed_by_operators_and_verified_as_a_gateway_would()
-> anyhow::Result<()> {
    let dir = ferrule_tests::tempdir()?;
    let d = dir.path();
    keygen(d, "publisher.key")?;
    let operator = keygen(d, "operator.key")?;
    sign_as(d, "publisher.key", &plugin("sim")?, "sim.wasm", "1.2.0")?;
    std::fs::write(
        d.join("state.toml"),
        "deployment = 5\ntarget = { gateway = \"gw-01\" }\n[[plugin]]\nfile = \"sim.wasm\"\n[[driver]]\nname = \"a\"\nplugin = \"sim\"\ninterval_ms = 500\n",
    )?;
    let (ok, _, err) = run_ferrule(
        d,
        &[
            "fleet",
            "sign",
            "--key",
            "operator.key",
            "-o",
            "d5.json",
            "state.toml",
        ],
    )?;
    assert!(
        ok && err.contains(&format!("signed by key id {operator}")),
        "{err}"
    );
    let verify = |extra: &[&str], key: &str, file: &str| {
        let args = [&["fleet", "verify", "--key", key][..], extra, &[file]].concat();
        run_ferrule(d, &args)
    };
    let (ok, out, err) = verify(&["--gateway", "gw-01"], "operator.key.pub", "d5.json")?;
    let sha = serde_json::from_str::<serde_json::Value>(&ferrule_ok(
        d,
        &["plugin", "inspect", "--json", "sim.wasm"],
    )?)?["sha256"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        ok && out.contains("deployment 5 accepted")
            && out.contains(&format!("plugin sim 1.2.0 sha256 {sha}")),
        "{out}{err}"
    );
    let mut tampered = std::fs::read_to_string(d.join("d5.json"))?;
    // Change one character of the base64 document.
    let at = tampered.find("\"document\":\"").unwrap_or(0) + 20;
    let flipped = if &tampered[at..=at] == "A" { "B" } else { "A" };
    tampered.replace_range(at..=at, flipped);
    std::fs::write(d.join("tampered.json"), tampered)?;
    for (extra, key, file, reason) in [
        (
            &["--gateway", "gw-02"][..],
            "operator.key.pub",
            "d5.json",
            "not for this gateway",
        ),
        (
            &["--gateway", "gw-01", "--applied", "5"][..],
            "operator.key.pub",
            "d5.json",
            "not newer than deployment 5",
        ),
        (
            &["--gateway", "gw-01"][..],
            "publisher.key.pub",
            "d5.json",
            "does not trust for deployments",
        ),
        (
            &["--gateway", "gw-01"][..],
            "operator.key.pub",
            "tampered.json",
            "does not match the document",
        ),
    ] {
        let (ok, _, err) = verify(extra, key, file)?;
        assert!(!ok && err.contains(reason), "{reason}: {err}");
    }
    Ok(())
}
