use std::path::Path;

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

/// The `[gateway]` and `[mqtt]` tables every test gateway shares: id
/// `gw-test`, mutual TLS with the test PKI, quick reconnects.
pub fn gateway_and_mqtt(data_dir: &Path, pki: &Pki, port: u16, mqtt_extra: &str) -> String {
    format!(
        r#"[gateway]
id = "gw-test"
data_dir = "{data}"

[mqtt]
host = "127.0.0.1"
port = {port}
ca_file = "{ca}"
client_cert_file = "{cert}"
client_key_file = "{key}"
keep_alive_s = 5
reconnect_min_ms = 100
reconnect_max_ms = 1000
{mqtt_extra}
"#,
        data = data_dir.display(),
        ca = pki.ca.cert.display(),
        cert = pki.gateway.cert.display(),
        key = pki.gateway.key.display(),
    )
}
