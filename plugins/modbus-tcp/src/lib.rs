//! `modbus-tcp`: a Modbus TCP driver. The device's address comes from the
//! driver's `device` key, which is also the only address the sandbox lets
//! it reach; the register map and timing from its config:
//!
//! ```toml
//! [[driver]]
//! name = "plc-1"
//! plugin = "modbus_tcp.wasm"
//! device = "192.168.1.20:502"
//! interval_ms = 1000
//!
//! [driver.config]
//! unit_id = 1
//! timeout_ms = 500
//! retries = 1
//! channels = [
//!   { name = "temperature", table = "holding", address = 0, type = "f32", word_order = "little", unit = "degC" },
//!   { name = "running", table = "coil", address = 0 },
//! ]
//! ```
//!
//! All the logic lives in the `ferrule-modbus` crate; this is the glue.

use ferrule_modbus::{Config, Modbus};
use ferrule_sdk::{Channel, DeviceStatus, Driver, Error, Reading, Value};

#[ferrule_sdk::driver]
struct ModbusTcp(Modbus);

impl Driver for ModbusTcp {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        Modbus::new(config).map(ModbusTcp)
    }

    fn channels(&self) -> Vec<Channel> {
        self.0.channels()
    }

    fn poll(&mut self) -> Result<Vec<Reading>, Error> {
        self.0.poll()
    }

    fn write(&mut self, channel: &str, value: Value) -> Result<(), Error> {
        self.0.write(channel, value)
    }

    fn status(&self) -> DeviceStatus {
        self.0.status()
    }
}
