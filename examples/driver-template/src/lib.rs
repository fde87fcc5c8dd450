//! A minimal ferrule driver: reports one counter that grows every poll.
//!
//! Config (in the gateway's TOML):
//!
//! ```toml
//! [[driver]]
//! name = "my-device"
//! plugin = "my_driver.wasm"
//! interval_ms = 1000
//! [driver.config]
//! start = 100
//! ```
//!
//! The driver declares its one channel once; each reading then names it
//! by index (`COUNT`). Writing `Reading::new("count", …)` works too: the
//! SDK maps the name to its index.

use ferrule_sdk::{Channel, ChannelId, Driver, Error, Reading, ValueType};
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    start: i64,
}

#[ferrule_sdk::driver]
struct MyDriver {
    next: i64,
}

/// The first (and only) channel `channels` declares.
const COUNT: ChannelId = ChannelId::at(0);

impl Driver for MyDriver {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        if config.start < 0 {
            return Err(Error::InvalidConfig("start: expected 0 or more".into()));
        }
        Ok(MyDriver { next: config.start })
    }

    fn channels(&self) -> Vec<Channel> {
        vec![
            Channel::new("count", ValueType::Int)
                .unit("items")
                .description("polls since start, plus `start`"),
        ]
    }

    fn poll(&mut self) -> Result<Vec<Reading>, Error> {
        let reading = Reading::new(COUNT, self.next);
        self.next += 1;
        Ok(vec![reading])
    }
}
