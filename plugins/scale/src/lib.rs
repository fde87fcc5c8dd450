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

use std::collections::{BTreeMap, HashSet};

use ferrule_sdk::{
    Channel, ChannelId, ChannelRef, Channels, Error, Processor, Quality, Reading, Value, ValueType,
};
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

/// What to do with readings of one input channel.
#[derive(Debug, Clone)]
struct Target {
    gain: f64,
    offset: f64,
    /// Where scaled values go: the same channel (a float one, neither
    /// renamed nor given a unit), or a float channel the processor derives.
    out: ChannelRef,
    /// The unit of `out` when it goes by name.
    unit: Option<String>,
}

#[ferrule_sdk::processor]
struct Scale {
    rules: BTreeMap<String, Rule>,
    /// By input channel index: `None` passes readings through unchanged.
    targets: Vec<Option<Target>>,
    /// The channels this processor derives, so it does not scale its own.
    own: HashSet<(String, Option<String>)>,
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
            targets: Vec::new(),
            own: HashSet::new(),
        })
    }

    fn channels(&mut self, input: &Channels) -> Result<Vec<Channel>, Error> {
        let mut derived = Vec::new();
        self.resolve(input, Some(&mut derived));
        Ok(derived)
    }

    fn process(&mut self, batch: Vec<Reading>, channels: &Channels) -> Result<Vec<Reading>, Error> {
        if self.targets.len() < channels.len() {
            // Channels added since (a driver that grew one): their derived
            // channels go by name, declared by the SDK on first use.
            self.resolve(channels, None);
        }
        Ok(batch.into_iter().map(|r| self.apply(r, channels)).collect())
    }
}

impl Scale {
    /// Works out the targets of the channels not seen yet. With `derived`,
    /// new float channels are declared there (at `channels()` time);
    /// without, they are written by name.
    fn resolve(&mut self, channels: &Channels, mut derived: Option<&mut Vec<Channel>>) {
        let next = channels.next_id().index();
        let mut pending = Vec::new();
        for (id, c) in channels.iter().skip(self.targets.len()) {
            let is_own = self.own.contains(&(c.name.clone(), c.unit.clone()));
            let rule = self.rules.get(&c.name).filter(|_| !is_own);
            let Some(rule) = rule else {
                pending.push(None);
                continue;
            };
            let name = rule.rename.clone().unwrap_or_else(|| c.name.clone());
            let unit = rule.unit.clone().or_else(|| c.unit.clone());
            let in_place =
                rule.rename.is_none() && rule.unit.is_none() && c.value_type == ValueType::Float;
            let out = if in_place {
                ChannelRef::Id(id)
            } else {
                self.own.insert((name.clone(), unit.clone()));
                match derived.as_deref_mut() {
                    Some(list) => {
                        let index = next + u32::try_from(list.len()).unwrap_or(u32::MAX);
                        let mut channel = Channel::new(name, ValueType::Float).description(
                            format!("{} scaled by {} plus {}", c.name, rule.gain, rule.offset),
                        );
                        channel.unit = unit.clone();
                        list.push(channel);
                        ChannelRef::Id(ChannelId::at(index))
                    }
                    None => ChannelRef::Name(name),
                }
            };
            pending.push(Some(Target {
                gain: rule.gain,
                offset: rule.offset,
                out,
                unit,
            }));
        }
        self.targets.extend(pending);
        // The channels derived here come after the input's; none has a rule.
        let derived_count = derived.map_or(0, |d| d.len());
        self.targets
            .extend(std::iter::repeat_n(None, derived_count));
    }

    fn apply(&self, mut reading: Reading, channels: &Channels) -> Reading {
        let target = reading
            .id()
            .and_then(|id| self.targets.get(id.index() as usize))
            .and_then(Option::as_ref);
        let Some(t) = target else {
            return reading;
        };
        match reading.value.as_f64() {
            Some(v) => {
                reading.value = Value::Float(v * t.gain + t.offset);
                reading.channel = t.out.clone();
                if let ChannelRef::Name(_) = t.out {
                    reading.unit = t.unit.clone();
                }
            }
            None => {
                ferrule_sdk::warn!(
                    "channel {:?}: value is not numeric, passed on unscaled with bad quality",
                    channels.name(&reading).unwrap_or("?")
                );
                reading.quality = Quality::Bad;
            }
        }
        reading
    }
}
