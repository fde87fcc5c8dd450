//! `{{name}}`: a ferrule driver. It reports one counter that grows every
//! poll; replace `poll` with your device's protocol.
//!
//! ```toml
//! [[driver]]
//! name = "{{name}}"
//! plugin = "target/wasm32-wasip2/release/{{lib}}.wasm"
//! interval_ms = 1000
//! [driver.config]
//! start = 100
//! ```

use ferrule_sdk::{Channel, ChannelId, Driver, Error, Reading, ValueType};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    start: i64,
}

#[ferrule_sdk::driver]
pub struct {{class}} {
    next: i64,
}

/// The first channel `channels` declares.
const COUNT: ChannelId = ChannelId::at(0);

impl Driver for {{class}} {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        if config.start < 0 {
            return Err(Error::InvalidConfig("start: expected 0 or more".into()));
        }
        Ok({{class}} { next: config.start })
    }

    fn channels(&self) -> Vec<Channel> {
        vec![Channel::new("count", ValueType::Int).description("polls since start, plus `start`")]
    }

    fn poll(&mut self) -> Result<Vec<Reading>, Error> {
        let reading = Reading::new(COUNT, self.next);
        self.next += 1;
        Ok(vec![reading])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_sdk::Value;

    #[test]
    fn counts_up_from_start() {
        let mut driver = {{class}}::new(Config { start: 5 }).unwrap();
        assert_eq!(driver.channels()[0].name, "count");
        let values: Vec<Value> = (0..3).map(|_| driver.poll().unwrap()[0].value.clone()).collect();
        assert_eq!(values, [Value::Int(5), Value::Int(6), Value::Int(7)]);
        assert!({{class}}::new(Config { start: -1 }).is_err());
    }
}
