//! `{{name}}`: a ferrule processor. It multiplies every numeric reading by
//! `factor`; replace `process` with your own transformation.
//!
//! ```toml
//! [[driver.processor]]
//! name = "{{name}}"
//! plugin = "target/wasm32-wasip2/release/{{lib}}.wasm"
//! [driver.processor.config]
//! factor = 2.0
//! ```

use ferrule_sdk::{Channels, Error, Processor, Reading, Value};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    factor: f64,
}

#[ferrule_sdk::processor]
pub struct {{class}} {
    factor: f64,
}

impl Processor for {{class}} {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        if !config.factor.is_finite() {
            return Err(Error::InvalidConfig("factor: expected a finite number".into()));
        }
        Ok({{class}} { factor: config.factor })
    }

    fn process(&mut self, batch: Vec<Reading>, _channels: &Channels) -> Result<Vec<Reading>, Error> {
        Ok(batch
            .into_iter()
            .map(|mut r| {
                // Floats are scaled in place; integers keep their type.
                if let Value::Float(v) = r.value {
                    r.value = Value::Float(v * self.factor);
                }
                r
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_sdk::ChannelId;

    #[test]
    fn scales_floats_and_keeps_the_rest() {
        let mut p = {{class}}::new(Config { factor: 2.0 }).unwrap();
        let out = p
            .process(
                vec![
                    Reading::new(ChannelId::at(0), 1.5),
                    Reading::new(ChannelId::at(1), 3),
                ],
                &Channels::default(),
            )
            .unwrap();
        assert_eq!(out[0].value, Value::Float(3.0));
        assert_eq!(out[1].value, Value::Int(3));
    }
}
