//! `deadband`: report by exception. A reading goes on only when its value
//! moved far enough from the last one reported for its channel, or its
//! quality changed, or the channel has not been reported for
//! `max_interval_s`; the rest are dropped here, on purpose, and counted
//! in the log every `summary_every` batches.
//!
//! - Numbers: a change larger than `absolute` (in the channel's unit) or
//!   larger than `percent` of the last reported value; with neither set,
//!   any change.
//! - Text, booleans and bytes: any change.
//! - Every channel is reported at least every `max_interval_s` (0: never
//!   forced), so a consumer can tell a steady value from a dead device.
//!
//! ```toml
//! [[driver.processor]]
//! name = "deadband"
//! plugin = "plugins/deadband.wasm"
//! [driver.processor.config]
//! absolute = 0.5           # default for numeric channels
//! max_interval_s = 60
//! [driver.processor.config.channels.pressure]
//! percent = 2.0            # this channel: 2 % of its last reported value
//! max_interval_s = 300
//! ```
//!
//! Its state is its memory: after a restart, each channel's first reading
//! is reported.

use std::collections::BTreeMap;

use ferrule_sdk::{Channels, Error, Processor, Quality, Reading, Value};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(flatten)]
    default: Rule,
    #[serde(default)]
    channels: BTreeMap<String, Rule>,
    /// Batches between two log lines saying how many readings were held
    /// back (0: no summary).
    #[serde(default = "summary_every")]
    summary_every: u64,
}

fn summary_every() -> u64 {
    600
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    absolute: Option<f64>,
    percent: Option<f64>,
    max_interval_s: Option<f64>,
}

impl Rule {
    /// This channel's rule over the default one: a channel that sets
    /// `absolute` or `percent` has that deadband alone; `max_interval_s`
    /// is taken from the default when the channel leaves it out.
    fn over(self, default: Rule) -> Rule {
        let own_band = self.absolute.is_some() || self.percent.is_some();
        Rule {
            absolute: if own_band {
                self.absolute
            } else {
                default.absolute
            },
            percent: if own_band {
                self.percent
            } else {
                default.percent
            },
            max_interval_s: self.max_interval_s.or(default.max_interval_s),
        }
    }

    fn check(&self, name: &str) -> Result<(), Error> {
        for (key, v) in [
            ("absolute", self.absolute),
            ("percent", self.percent),
            ("max_interval_s", self.max_interval_s),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(Error::InvalidConfig(format!(
                    "{name}{key} = {v}: expected a finite number, 0 or more"
                )));
            }
        }
        Ok(())
    }

    /// Whether `value` differs enough from `last` to be reported.
    fn moved(&self, last: &Value, value: &Value) -> bool {
        match (last.as_f64(), value.as_f64()) {
            (Some(a), Some(b)) => {
                if a.is_nan() || b.is_nan() {
                    return a.is_nan() != b.is_nan();
                }
                let delta = (b - a).abs();
                match (self.absolute, self.percent) {
                    (None, None) => delta > 0.0,
                    (absolute, percent) => {
                        absolute.is_some_and(|d| delta > d)
                            || percent.is_some_and(|p| delta > a.abs() * p / 100.0)
                    }
                }
            }
            _ => !same(last, value),
        }
    }
}

/// Whether two values are the same (numbers by value, NaN equal to NaN).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x == y || (x.is_nan() && y.is_nan()),
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Boolean(x), Value::Boolean(y)) => x == y,
        (Value::Text(x), Value::Text(y)) => x == y,
        (Value::Bytes(x), Value::Bytes(y)) => x == y,
        _ => false,
    }
}

/// What was last reported of a channel.
struct Reported {
    value: Value,
    quality: Quality,
    at_ns: u64,
}

#[ferrule_sdk::processor]
struct Deadband {
    config: Config,
    /// By channel name and unit (a reading by index is looked up by name).
    last: BTreeMap<(String, Option<String>), Reported>,
    batches: u64,
    held: u64,
    passed: u64,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Processor for Deadband {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        config.default.check("")?;
        for (name, rule) in &config.channels {
            rule.check(&format!("channels.{name}."))?;
        }
        Ok(Deadband {
            config,
            last: BTreeMap::new(),
            batches: 0,
            held: 0,
            passed: 0,
        })
    }

    fn process(&mut self, batch: Vec<Reading>, channels: &Channels) -> Result<Vec<Reading>, Error> {
        let now = now_ns();
        let mut out = Vec::with_capacity(batch.len());
        for reading in batch {
            let Some(name) = channels.name(&reading).map(str::to_string) else {
                out.push(reading);
                continue;
            };
            let unit = match reading.id().and_then(|id| channels.get(id)) {
                Some(channel) => channel.unit.clone(),
                None => reading.unit.clone(),
            };
            let rule = self
                .config
                .channels
                .get(&name)
                .copied()
                .unwrap_or_default()
                .over(self.config.default);
            let at = reading.timestamp_ns.unwrap_or(now);
            let key = (name, unit);
            let report = match self.last.get(&key) {
                None => true,
                Some(last) => {
                    last.quality != reading.quality
                        || rule.moved(&last.value, &reading.value)
                        || rule.max_interval_s.is_some_and(|s| {
                            s > 0.0 && at.saturating_sub(last.at_ns) as f64 >= s * 1e9
                        })
                }
            };
            if report {
                self.passed += 1;
                self.last.insert(
                    key,
                    Reported {
                        value: reading.value.clone(),
                        quality: reading.quality,
                        at_ns: at,
                    },
                );
                out.push(reading);
            } else {
                self.held += 1;
            }
        }
        self.batches += 1;
        let every = self.config.summary_every;
        if every > 0 && self.batches.is_multiple_of(every) {
            ferrule_sdk::info!(
                "{} readings reported, {} held back as unchanged in the last {every} batches",
                self.passed,
                self.held
            );
            self.passed = 0;
            self.held = 0;
        }
        Ok(out)
    }
}
