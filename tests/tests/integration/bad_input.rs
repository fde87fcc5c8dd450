//! Bad input gets one clear line naming the file and what is wrong, and a
//! non-zero exit; `ferrule check` says so without connecting anywhere.

use std::path::Path;

use ferrule_tests::{GatewayToml, Pki, PluginToml, gateway_toml, plugin, run_ferrule};

use crate::common::sim_scale_config;

/// A valid config (pointing at an unused port: check never connects).
fn valid_config(dir: &Path) -> anyhow::Result<String> {
    let pki = Pki::new(&dir.join("certs"))?;
    Ok(sim_scale_config(dir, &pki, 1, 1000)?.render())
}

/// A valid gateway (as above) whose only driver is `driver`.
fn gateway_with(dir: &Path, driver: PluginToml) -> anyhow::Result<GatewayToml> {
    let pki = Pki::new(&dir.join("certs"))?;
    Ok(gateway_toml(&dir.join("data"), &pki, 1).driver(driver))
}

/// The `sim` driver with no channels, which its `init` refuses.
fn sim_without_channels() -> anyhow::Result<PluginToml> {
    Ok(PluginToml::new("sim-1", &plugin("sim")?).config("channels", toml::Value::Array(vec![])))
}

/// Runs `ferrule check` on `text`; returns the one-line error.
fn check_fails(dir: &Path, text: &str) -> anyhow::Result<String> {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text)?;
    let (ok, stdout, stderr) = run_ferrule(dir, &["check", "gateway.toml"])?;
    assert!(!ok, "check should fail; stdout: {stdout}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line of error, got: {stderr}");
    let line = lines[0].to_string();
    assert!(line.starts_with("error: "), "{line}");
    Ok(line)
}

/// 1-based line and column of the first occurrence of `needle`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let offset = text.find(needle).unwrap_or(0);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

#[test]
fn valid_config_passes_check() -> anyhow::Result<()> {
    let dir = ferrule_tests::tempdir()?;
    std::fs::write(dir.path().join("gateway.toml"), valid_config(dir.path())?)?;
    let (ok, stdout, stderr) = run_ferrule(dir.path(), &["check", "gateway.toml"])?;
    assert!(ok, "stderr: {stderr}");
    assert!(
        stdout.contains("gateway.toml: ok: 1 driver(s), 1 processor(s)"),
        "{stdout}"
    );
    Ok(())
}

#[test]
fn unknown_field_is_reported_with_line_and_column() -> anyhow::Result<()> {
    let dir = ferrule_tests::tempdir()?;
    let text = valid_config(dir.path())?.replace("interval_ms = 1000", "intervall = 1000");
    let line = check_fails(dir.path(), &text)?;
    let (l, c) = position(&text, "intervall");
    assert!(
        line.contains(&format!(
            "gateway.toml:{l}:{c}: unknown field `intervall`, expected one of"
        )),
        "{line}"
    );
    assert!(
        line.contains("`interval_ms`"),
        "lists the expected fields: {line}"
    );
    Ok(())
}

#[test]
fn missing_plugin_file_is_named() -> anyhow::Result<()> {
    let dir = ferrule_tests::tempdir()?;
    let sim = plugin("sim")?.display().to_string();
    let text = valid_config(dir.path())?.replace(&sim, "plugins/nowhere.wasm");
    let line = check_fails(dir.path(), &text)?;
    let (l, c) = position(&text, "\"plugins/nowhere.wasm\"");
    assert!(
        line.contains(&format!(
            "gateway.toml:{l}:{c}: plugin file \"plugins/nowhere.wasm\" not found"
        )),
        "{line}"
    );
    Ok(())
}

#[test]
fn a_file_that_is_not_wasm_is_refused() -> anyhow::Result<()> {
    let dir = ferrule_tests::tempdir()?;
    let bogus = dir.path().join("driver.wasm");
    std::fs::write(&bogus, b"#!/bin/sh\necho not a plugin\n")?;
    let sim = plugin("sim")?.display().to_string();
    let text = valid_config(dir.path())?.replace(&sim, &bogus.display().to_string());
    let line = check_fails(dir.path(), &text)?;
    assert!(
        line.contains("driver.wasm: not a WebAssembly file"),
        "{line}"
    );
    Ok(())
}

#[test]
fn a_core_module_is_refused_as_not_a_component() -> anyhow::Result<()> {
    let dir = ferrule_tests::tempdir()?;
    let module = dir.path().join("core.wasm");
    // The smallest valid core module: magic and version 1, no sections.
    std::fs::write(&module, b"\0asm\x01\0\0\0")?;
    let sim = plugin("sim")?.display().to_string();
    let text = valid_config(dir.path())?.replace(&sim, &module.display().to_string());
    let line = check_fails(dir.path(), &text)?;
    assert!(
        line.contains("core.wasm: a core WebAssembly module, not a component"),
        "{line}"
    );
    Ok(())
}

#[test]
fn a_component_exporting_the_wrong_world_is_refused() -> anyhow::Result<()> {
    let dir = ferrule_tests::tempdir()?;
    let sim = plugin("sim")?.display().to_string();
    let scale = plugin("scale")?.display().to_string();
    // The processor configured as the driver.
    let text = valid_config(dir.path())?.replacen(&sim, &scale, 1);
    let line = check_fails(dir.path(), &text)?;
    assert!(
        line.contains("scale.wasm: is a processor plugin, but it is configured as a driver"),
        "{line}"
    );
    Ok(())
}

#[test]
fn a_driver_whose_init_rejects_its_config_is_named() -> anyhow::Result<()> {
    let dir = ferrule_tests::tempdir()?;
    let text = gateway_with(dir.path(), sim_without_channels()?)?.render();
    let line = check_fails(dir.path(), &text)?;
    assert!(
        line.contains("driver sim-1: plugin sim-1: init failed: invalid config: channels: expected at least one channel"),
        "{line}"
    );
    assert!(
        line.contains("gateway.toml"),
        "names the config file: {line}"
    );

    Ok(())
}

/// `run` names the same error in its log, keeps retrying that driver with
/// backoff (no busy loop), and does not exit: other drivers keep running.
#[tokio::test]
async fn run_reports_a_rejected_init_and_retries_with_backoff() -> anyhow::Result<()> {
    let dir = ferrule_tests::tempdir()?;
    let text = gateway_with(dir.path(), sim_without_channels()?)?
        .set("runtime", "restart_min_ms", 200)
        .set("runtime", "restart_max_ms", 800)
        .render();
    std::fs::write(dir.path().join("gateway.toml"), text)?;
    let mut ferrule = ferrule_tests::start_ferrule(dir.path(), &["run", "gateway.toml"])?;
    ferrule
        .wait_for_log(
            "expected at least one channel",
            std::time::Duration::from_secs(20),
        )
        .await?;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(ferrule.child.try_wait()?.is_none(), "run keeps going");
    let log = ferrule.log_text();
    assert!(
        log.contains("gateway.toml: driver sim-1: plugin sim-1: init failed"),
        "{log}"
    );
    // Backoff 200 → 400 → 800 → 800 ms: a handful of attempts in 3 s, not a busy loop.
    let attempts = log.matches("expected at least one channel").count();
    assert!((2..=10).contains(&attempts), "{attempts} attempts:\n{log}");
    ferrule.kill9();
    Ok(())
}

#[test]
fn the_plugin_author_template_builds_into_a_driver_that_passes_check() -> anyhow::Result<()> {
    let dir = ferrule_tests::tempdir()?;
    // The template's config has a single optional field.
    let template = PluginToml::new("sim-1", &plugin("my_driver")?).config("start", 5);
    let text = gateway_with(dir.path(), template)?.render();
    std::fs::write(dir.path().join("gateway.toml"), text)?;
    let (ok, stdout, stderr) = run_ferrule(dir.path(), &["check", "gateway.toml"])?;
    assert!(ok, "stderr: {stderr}");
    assert!(stdout.contains("my_driver.wasm"), "{stdout}");
    Ok(())
}
