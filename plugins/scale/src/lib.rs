//! `scale`: linear scaling per channel, `value * gain + offset`, with an
//! optional new channel name and unit. Channels not listed pass unchanged;
//! a listed channel whose value is not numeric is passed on with `bad`
//! quality and logged, never silently dropped.
//!
//! ```toml
//! [driver.processor.config.channels.temperature]
//! gain = 1.8
//! offset = 32.0
//! rename = "temperature_f"
//! unit = "degF"
//! ```

use std::collections::BTreeMap;

use ferrule_sdk::{Error, Processor, Quality, Reading, Value};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    channels: BTreeMap<String, Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(default = "one")]
    gain: f64,
    #[serde(default)]
    offset: f64,
    rename: Option<String>,
    unit: Option<String>,
}

fn one() -> f64 {
    1.0
}

#[ferrule_sdk::processor]
struct Scale {
    rules: BTreeMap<String, Rule>,
}

impl Processor for Scale {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        for (name, rule) in &config.channels {
            if !rule.gain.is_finite() || !rule.offset.is_finite() {
                return Err(Error::InvalidConfig(format!(
                    "channels.{name}: gain and offset must be finite numbers"
                )));
            }
        }
        Ok(Scale {
            rules: config.channels,
        })
    }

    fn process(&mut self, batch: Vec<Reading>) -> Result<Vec<Reading>, Error> {
        Ok(batch.into_iter().map(|r| self.apply(r)).collect())
    }
}

impl Scale {
    fn apply(&self, mut reading: Reading) -> Reading {
        let Some(rule) = self.rules.get(&reading.channel) else {
            return reading;
        };
        match reading.value.as_f64() {
            Some(v) => reading.value = Value::Float(v * rule.gain + rule.offset),
            None => {
                ferrule_sdk::warn!(
                    "channel {:?}: value is not numeric, passed on unscaled with bad quality",
                    reading.channel
                );
                reading.quality = Quality::Bad;
            }
        }
        if let Some(name) = &rule.rename {
            reading.channel = name.clone();
        }
        if let Some(unit) = &rule.unit {
            reading.unit = Some(unit.clone());
        }
        reading
    }
}
