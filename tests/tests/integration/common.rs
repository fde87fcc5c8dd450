use std::path::Path;

use ferrule::dev::config::{fahrenheit_rule, table};
use ferrule_tests::{GatewayToml, Pki, PluginToml, gateway_toml, plugin, run_ferrule};

/// A gateway config with one `sim` driver (a counter and a sine) scaled by
/// `scale`: count → count * 2 + 1, temperature → temperature_f.
pub fn sim_scale_config(
    dir: &Path,
    pki: &Pki,
    port: u16,
    interval_ms: u64,
) -> anyhow::Result<GatewayToml> {
    let sim = sim_with_scale("sim-1", &plugin("sim")?, &plugin("scale")?, interval_ms);
    Ok(gateway_toml(&dir.join("data"), pki, port).driver(sim))
}

/// A `sim` driver called `name` (built from `sim`) with a counter "count"
/// and a sine "temperature" in degC, 20 ± 5, scaled by the `scale` built
/// from `scale`: count → count * 2 + 1, temperature → temperature_f in degF.
pub fn sim_with_scale(name: &str, sim: &Path, scale: &Path, interval_ms: u64) -> PluginToml {
    let scale = PluginToml::new("scale", scale).config(
        "channels",
        table([
            ("count", table([("gain", 2.0), ("offset", 1.0)])),
            ("temperature", fahrenheit_rule("temperature_f")),
        ]),
    );
    PluginToml::new(name, sim)
        .set("interval_ms", interval_ms as i64)
        .config(
            "channels",
            toml::Value::Array(vec![
                table([("name", "count"), ("signal", "counter")]),
                table([
                    ("name", toml::Value::from("temperature")),
                    ("signal", "sine".into()),
                    ("offset", 20.0.into()),
                    ("amplitude", 5.0.into()),
                    ("period_s", 10.0.into()),
                    ("unit", "degC".into()),
                ]),
            ]),
        )
        .processor(scale)
}

/// A gateway with one `sim` driver of `channels` counter channels (so each
/// poll yields that many readings) and `queue` (a TOML document) as its
/// `[queue]` table.
pub fn sim_config(
    data_dir: &Path,
    pki: &Pki,
    port: u16,
    interval_ms: u64,
    channels: usize,
    queue: &str,
) -> anyhow::Result<GatewayToml> {
    let channels = (0..channels)
        .map(|i| table([("name", format!("c{i}")), ("signal", "counter".into())]))
        .collect();
    let sim = PluginToml::new("sim-1", &plugin("sim")?)
        .set("interval_ms", interval_ms as i64)
        .config("channels", toml::Value::Array(channels));
    let mut gateway = gateway_toml(data_dir, pki, port).set("mqtt", "max_inflight", 64);
    for (key, value) in toml::from_str::<toml::Table>(queue)? {
        gateway = gateway.set("queue", &key, value);
    }
    Ok(gateway.driver(sim))
}

/// Runs `ferrule ARGS` in `dir`; its stdout, or an error with its stderr.
pub fn ferrule_ok(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let (ok, out, err) = run_ferrule(dir, args)?;
    anyhow::ensure!(ok, "ferrule {args:?} failed: {err}");
    Ok(out)
}

/// The key id `ferrule plugin keygen` printed.
pub fn keygen(dir: &Path, out: &str) -> anyhow::Result<String> {
    let printed = ferrule_ok(dir, &["plugin", "keygen", "--out", out])?;
    printed
        .lines()
        .find_map(|l| l.strip_prefix("key id"))
        .map(|id| id.trim().to_string())
        .ok_or_else(|| anyhow::anyhow!("no key id in {printed}"))
}

/// Signs `from` as version 0.2.0 of the plugin its file is named after.
pub fn sign(dir: &Path, key: &str, from: &Path, to: &str) -> anyhow::Result<()> {
    sign_as(dir, key, from, to, "0.2.0")
}

/// Signs `from` as `version` of the plugin its file is named after.
pub fn sign_as(dir: &Path, key: &str, from: &Path, to: &str, version: &str) -> anyhow::Result<()> {
    let name = from
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let from = from.to_str().unwrap_or_default();
    let args = [
        "plugin",
        "sign",
        "--key",
        key,
        "--name",
        name,
        "--version",
        version,
    ];
    ferrule_ok(dir, &[&args[..], &["-o", to, from]].concat())?;
    Ok(())
}

/// A driver's `[driver.commands]` making `channels` writable, with no limits.
pub fn writable(channels: &[&str]) -> toml::Value {
    toml::Value::Table(
        (channels.iter())
            .map(|c| (c.to_string(), toml::Value::Table(toml::Table::new())))
            .collect(),
    )
}
