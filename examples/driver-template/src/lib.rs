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

use ferrule_sdk::{Driver, Error, Reading};
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

impl Driver for MyDriver {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        if config.start < 0 {
            return Err(Error::InvalidConfig("start: expected 0 or more".into()));
        }
        Ok(MyDriver { next: config.start })
    }

    fn poll(&mut self) -> Result<Vec<Reading>, Error> {
        let reading = Reading::new("count", self.next).with_unit("items");
        self.next += 1;
        Ok(vec![reading])
    }
}
