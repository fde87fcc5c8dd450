//! Gateway configs built in code, for the demo and the tests: tables and
//! keys set one by one, not text with placeholders, written out as the TOML
//! `ferrule run` reads (so a test exercises the same parser a user does).

use std::path::Path;

use toml::{Table, Value};

/// A whole config file: `[gateway]`, `[mqtt]`, any other table, and the
/// drivers in order.
#[derive(Debug, Clone)]
pub struct GatewayToml {
    root: Table,
    drivers: Vec<Value>,
}

impl GatewayToml {
    /// A gateway named `id` keeping its data in `data_dir`.
    pub fn new(id: &str, data_dir: &Path) -> GatewayToml {
        let mut root = Table::new();
        let mut gateway = Table::new();
        gateway.insert("id".into(), id.into());
        gateway.insert("data_dir".into(), path(data_dir));
        root.insert("gateway".into(), gateway.into());
        GatewayToml {
            root,
            drivers: Vec::new(),
        }
    }

    /// `[mqtt]`: the broker at `host:port`, checked against `ca`, with this
    /// gateway's client certificate and key.
    pub fn mqtt_tls(self, host: &str, port: u16, ca: &Path, cert: &Path, key: &Path) -> Self {
        self.set("mqtt", "host", host)
            .set("mqtt", "port", i64::from(port))
            .set("mqtt", "ca_file", path(ca))
            .set("mqtt", "client_cert_file", path(cert))
            .set("mqtt", "client_key_file", path(key))
    }

    /// Sets `key` in `[table]` (created when missing).
    pub fn set(mut self, table: &str, key: &str, value: impl Into<Value>) -> Self {
        let entry = self
            .root
            .entry(table.to_string())
            .or_insert_with(|| Table::new().into());
        if let Value::Table(t) = entry {
            t.insert(key.to_string(), value.into());
        }
        self
    }

    /// Removes `key` from `[table]`.
    pub fn unset(mut self, table: &str, key: &str) -> Self {
        if let Some(Value::Table(t)) = self.root.get_mut(table) {
            t.remove(key);
        }
        self
    }

    /// Adds a `[[driver]]`.
    pub fn driver(mut self, driver: PluginToml) -> Self {
        self.drivers.push(driver.into_value());
        self
    }

    /// The same config without its drivers.
    pub fn without_drivers(mut self) -> Self {
        self.drivers.clear();
        self
    }

    /// Adds a `[[driver]]` table as read from another config file.
    pub fn driver_table(mut self, driver: Table) -> Self {
        self.drivers.push(driver.into());
        self
    }

    /// The config as TOML text.
    pub fn render(&self) -> String {
        let mut root = self.root.clone();
        if !self.drivers.is_empty() {
            root.insert("driver".into(), Value::Array(self.drivers.clone()));
        }
        // A table of strings, numbers, booleans, arrays and tables always
        // serialises.
        toml::to_string(&root).unwrap_or_default()
    }
}

/// One `[[driver]]` or `[[driver.processor]]`.
#[derive(Debug, Clone)]
pub struct PluginToml {
    table: Table,
    config: Table,
    limits: Table,
    processors: Vec<Value>,
}

impl PluginToml {
    /// A plugin instance `name` running the component at `plugin`.
    pub fn new(name: &str, plugin: &Path) -> PluginToml {
        let mut table = Table::new();
        table.insert("name".into(), name.into());
        table.insert("plugin".into(), path(plugin));
        PluginToml {
            table,
            config: Table::new(),
            limits: Table::new(),
            processors: Vec::new(),
        }
    }

    /// A plugin as read from a config file's table; keys set afterwards
    /// replace its own.
    pub fn from_table(table: Table) -> PluginToml {
        PluginToml {
            table,
            config: Table::new(),
            limits: Table::new(),
            processors: Vec::new(),
        }
    }

    /// Sets a key of the plugin's own table (`interval_ms`, `device`,
    /// `allow_net`, `data_dir`, ...).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.table.insert(key.to_string(), value.into());
        self
    }

    /// Sets a key of its `limits` override.
    pub fn limit(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.limits.insert(key.to_string(), value.into());
        self
    }

    /// Sets a key of its `[config]`, passed to the plugin's `init`.
    pub fn config(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.config.insert(key.to_string(), value.into());
        self
    }

    /// Adds a processor to a driver's chain.
    pub fn processor(mut self, processor: PluginToml) -> Self {
        self.processors.push(processor.into_value());
        self
    }

    fn into_value(mut self) -> Value {
        if !self.limits.is_empty() {
            self.table.insert("limits".into(), self.limits.into());
        }
        if !self.config.is_empty() {
            self.table.insert("config".into(), self.config.into());
        }
        if !self.processors.is_empty() {
            self.table
                .insert("processor".into(), Value::Array(self.processors));
        }
        self.table.into()
    }
}

/// A table of `pairs`, for nested config values.
pub fn table<K: Into<String>, V: Into<Value>>(pairs: impl IntoIterator<Item = (K, V)>) -> Value {
    Value::Table(
        pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
    )
}

/// The `scale` processor's rule that turns a channel in degC into the
/// channel `rename` in degF (gain 1.8, offset 32).
pub fn fahrenheit_rule(rename: &str) -> Value {
    table([
        ("gain", Value::from(1.8)),
        ("offset", 32.0.into()),
        ("rename", rename.into()),
        ("unit", "degF".into()),
    ])
}

fn path(p: &Path) -> Value {
    p.display().to_string().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_built_config_parses_into_what_was_set() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, "").unwrap();
            p
        };
        let (ca, cert, key) = (file("ca.pem"), file("gw.pem"), file("gw.key"));
        let (sim, scale) = (file("sim.wasm"), file("scale.wasm"));
        let text = GatewayToml::new("gw-1", &dir.path().join("data"))
            .mqtt_tls("127.0.0.1", 8883, &ca, &cert, &key)
            .set("mqtt", "protocol", "5")
            .set("telemetry", "interval_s", 1)
            .driver(
                PluginToml::new("sim-1", &sim)
                    .set("interval_ms", 250)
                    .limit("timeout_ms", 500)
                    .config(
                        "channels",
                        Value::Array(vec![table([("name", "count"), ("signal", "counter")])]),
                    )
                    .processor(
                        PluginToml::new("scale", &scale)
                            .config("channels", table([("count", table([("gain", 2.0)]))])),
                    ),
            )
            .driver(PluginToml::new("sim-2", &sim))
            .render();
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, &text).unwrap();
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.gateway.id.get_ref(), "gw-1");
        assert_eq!(c.mqtt.port, 8883);
        assert_eq!(c.mqtt.protocol, crate::config::MqttProtocol::V5);
        assert_eq!(c.telemetry.interval_s, 1);
        assert_eq!(c.drivers.len(), 2);
        let d = &c.drivers[0];
        assert_eq!(*d.interval_ms.get_ref(), 250);
        assert_eq!(d.limits.and_then(|l| l.timeout_ms), Some(500));
        assert_eq!(d.processors.len(), 1);
        assert_eq!(d.processors[0].name.get_ref(), "scale");
        assert_eq!(
            d.config["channels"][0]["signal"].as_str(),
            Some("counter"),
            "{text}"
        );
    }
}
