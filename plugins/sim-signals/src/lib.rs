//! The `sim` driver's signal logic, free of component glue, so the plugin
//! benchmark can run the very same code natively.

use std::time::{SystemTime, UNIX_EPOCH};

use ferrule_sdk::{Channel as Declared, ChannelId, DeviceStatus, Error, Reading, Value, ValueType};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    channels: Vec<ChannelConfig>,
    /// Seed for the random walks, so runs can be reproduced.
    #[serde(default = "default_seed")]
    seed: u64,
}

fn default_seed() -> u64 {
    0x5eed
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelConfig {
    name: String,
    signal: Signal,
    /// Centre (sine), start (ramp, random walk, counter).
    #[serde(default)]
    offset: f64,
    /// Peak deviation (sine), span (ramp), bound on the distance from offset (random walk).
    #[serde(default = "default_amplitude")]
    amplitude: f64,
    #[serde(default = "default_period")]
    period_s: f64,
    /// Largest change per poll (random walk) or increment (counter).
    #[serde(default = "default_step")]
    step: f64,
    unit: Option<String>,
}

fn default_amplitude() -> f64 {
    1.0
}

fn default_period() -> f64 {
    60.0
}

fn default_step() -> f64 {
    1.0
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Signal {
    Sine,
    Ramp,
    RandomWalk,
    Counter,
}

struct Channel {
    config: ChannelConfig,
    /// Current position of a random walk, or the counter's next value.
    state: f64,
}

/// The simulated device: its channels and their state.
pub struct Generator {
    channels: Vec<Channel>,
    rng: XorShift,
    polls: u64,
}

impl Generator {
    pub fn new(config: Config) -> Result<Self, Error> {
        if config.channels.is_empty() {
            return Err(Error::InvalidConfig(
                "channels: expected at least one channel".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for c in &config.channels {
            if !names.insert(c.name.as_str()) {
                return Err(Error::InvalidConfig(format!(
                    "channels: duplicate channel name {:?}",
                    c.name
                )));
            }
            if !c.period_s.is_finite() || c.period_s <= 0.0 {
                return Err(Error::InvalidConfig(format!(
                    "channels.{}.period_s: expected a positive number of seconds, got {}",
                    c.name, c.period_s
                )));
            }
        }
        let channels = config
            .channels
            .into_iter()
            .map(|c| Channel {
                state: c.offset,
                config: c,
            })
            .collect();
        Ok(Generator {
            channels,
            rng: XorShift(config.seed.max(1)),
            polls: 0,
        })
    }

    /// The channel table, in config order: counters are integers, the
    /// other signals floats.
    pub fn channels(&self) -> Vec<Declared> {
        self.channels
            .iter()
            .map(|ch| {
                let c = &ch.config;
                let kind = match c.signal {
                    Signal::Counter => ValueType::Int,
                    _ => ValueType::Float,
                };
                let declared = Declared::new(c.name.clone(), kind);
                match &c.unit {
                    Some(unit) => declared.unit(unit.clone()),
                    None => declared,
                }
            })
            .collect()
    }

    /// One reading per channel, by index, all at the poll's time.
    pub fn poll(&mut self) -> Result<Vec<Reading>, Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| Error::Other(format!("clock before the epoch: {e}")))?;
        let t = now.as_secs_f64();
        let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        self.polls += 1;
        let mut readings = Vec::with_capacity(self.channels.len());
        for (i, ch) in self.channels.iter_mut().enumerate() {
            let c = &ch.config;
            let value = match c.signal {
                // Reduce the phase before sin(): epoch seconds times 2π would
                // lose precision and take libm's slow large-argument path.
                Signal::Sine => Value::Float(
                    c.offset + c.amplitude * (std::f64::consts::TAU * cycle(t, c.period_s)).sin(),
                ),
                Signal::Ramp => Value::Float(c.offset + c.amplitude * cycle(t, c.period_s)),
                Signal::RandomWalk => {
                    let step = (self.rng.next_unit() * 2.0 - 1.0) * c.step;
                    ch.state =
                        (ch.state + step).clamp(c.offset - c.amplitude, c.offset + c.amplitude);
                    Value::Float(ch.state)
                }
                Signal::Counter => {
                    let v = ch.state as i64;
                    ch.state += c.step;
                    Value::Int(v)
                }
            };
            let id = ChannelId::at(u32::try_from(i).unwrap_or(u32::MAX));
            readings.push(Reading::new(id, value).at(now_ns));
        }
        Ok(readings)
    }

    pub fn status(&self) -> DeviceStatus {
        DeviceStatus {
            firmware: Some(concat!("sim-", env!("CARGO_PKG_VERSION")).to_string()),
            signal_quality: Some(100),
            extra: vec![("polls".into(), self.polls.to_string())],
            ..DeviceStatus::connected()
        }
    }
}

/// xorshift64: enough randomness for a simulated signal, reproducible by seed.
struct XorShift(u64);

impl XorShift {
    fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How far `t` is into its current period, from 0 up to (not including) 1.
///
/// By floor rather than `%` (fmod): WebAssembly has no remainder
/// instruction for floats, and libm's fmod takes one step per bit of
/// `t / period` (about 25 for epoch seconds). The subtraction is exact;
/// the division rounds by well under a microsecond's worth of phase.
fn cycle(t: f64, period: f64) -> f64 {
    let x = t / period;
    x - x.floor()
}
