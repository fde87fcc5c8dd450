//! `sim`: a simulated device for demos and tests.
//!
//! Each configured channel produces one signal: `sine`, `ramp` (sawtooth),
//! `random-walk` or `counter` (an integer that grows by `step` every poll,
//! handy for spotting lost or duplicated readings). Signals follow wall-clock
//! time, so the poll interval set by the runtime only decides how often they
//! are sampled.
//!
//! ```toml
//! [driver.config]
//! seed = 7
//! [[driver.config.channels]]
//! name = "temperature"
//! signal = "sine"
//! offset = 20.0
//! amplitude = 5.0
//! period_s = 60.0
//! unit = "degC"
//! ```

use ferrule_sdk::{Channel, DeviceStatus, Driver, Error, Reading};

pub use ferrule_sim_signals::{Config, Generator};

#[ferrule_sdk::driver]
struct Sim(Generator);

impl Driver for Sim {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        Generator::new(config).map(Sim)
    }

    fn channels(&self) -> Vec<Channel> {
        self.0.channels()
    }

    fn poll(&mut self) -> Result<Vec<Reading>, Error> {
        self.0.poll()
    }

    fn status(&self) -> DeviceStatus {
        self.0.status()
    }
}
