use std::path::Path;

pub use ferrule_tests::gateway_and_mqtt;
use ferrule_tests::{Pki, plugin};

/// A gateway config with one `sim` driver (a counter and a sine) scaled by
/// `scale`: count → count * 2 + 1, temperature → temperature_f.
pub fn sim_scale_config(
    dir: &Path,
    pki: &Pki,
    port: u16,
    interval_ms: u64,
) -> anyhow::Result<String> {
    Ok(format!(
        r#"{header}
[[driver]]
name = "sim-1"
plugin = "{sim}"
interval_ms = {interval_ms}

[driver.config]
channels = [
  {{ name = "count", signal = "counter" }},
  {{ name = "temperature", signal = "sine", offset = 20.0, amplitude = 5.0, period_s = 10.0, unit = "degC" }},
]

[[driver.processor]]
name = "scale"
plugin = "{scale}"

[driver.processor.config.channels.count]
gain = 2.0
offset = 1.0

[driver.processor.config.channels.temperature]
gain = 1.8
offset = 32.0
rename = "temperature_f"
unit = "degF"
"#,
        header = gateway_and_mqtt(&dir.join("data"), pki, port, ""),
        sim = plugin("sim")?.display(),
        scale = plugin("scale")?.display(),
    ))
}

/// A gateway with one `sim` driver of `channels` counter channels (so each
/// poll yields that many readings) and `queue` as its `[queue]` table body.
pub fn sim_config(
    data_dir: &Path,
    pki: &Pki,
    port: u16,
    interval_ms: u64,
    channels: usize,
    queue: &str,
) -> anyhow::Result<String> {
    let channels: Vec<String> = (0..channels)
        .map(|i| format!("{{ name = \"c{i}\", signal = \"counter\" }}"))
        .collect();
    Ok(format!(
        r#"{header}
[queue]
{queue}

[[driver]]
name = "sim-1"
plugin = "{sim}"
interval_ms = {interval_ms}

[driver.config]
channels = [{channels}]
"#,
        header = gateway_and_mqtt(data_dir, pki, port, "max_inflight = 64\n"),
        sim = plugin("sim")?.display(),
        channels = channels.join(", "),
    ))
}
