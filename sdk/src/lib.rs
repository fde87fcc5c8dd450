//! Write ferrule device drivers and data processors in plain Rust.
//!
//! A driver is a type that implements [`Driver`] and carries the
//! [`driver`] attribute; a processor implements [`Processor`] and carries
//! [`processor`]. The attribute generates the WebAssembly component glue
//! (the `ferrule:plugin` WIT world), so plugin authors never see
//! wit-bindgen. Build with `cargo build --release --target wasm32-wasip2`.
//!
//! ```ignore
//! use ferrule_sdk::{Driver, Error, Reading};
//!
//! #[derive(serde::Deserialize)]
//! struct Config { start: i64 }
//!
//! #[ferrule_sdk::driver]
//! struct Counter { next: i64 }
//!
//! impl Driver for Counter {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, Error> {
//!         Ok(Counter { next: config.start })
//!     }
//!     fn poll(&mut self) -> Result<Vec<Reading>, Error> {
//!         self.next += 1;
//!         Ok(vec![Reading::new("count", self.next)])
//!     }
//! }
//! ```

#![warn(missing_docs)]

mod types;

pub mod log;

pub use ferrule_sdk_macros::{driver, processor};
pub use types::{DeviceStatus, Error, Quality, Reading, Value};

/// The version of the `ferrule:plugin` WIT package this SDK builds against.
pub const WIT_VERSION: &str = "0.1.0";

/// A device driver: reads a device on the runtime's schedule.
pub trait Driver: Sized + 'static {
    /// The driver's `config` table from the gateway's TOML file.
    type Config: serde::de::DeserializeOwned;

    /// Builds the driver from its configuration. Validate here and return
    /// [`Error::InvalidConfig`] on a bad value; do not contact the device yet
    /// (`ferrule check` calls this without network access).
    fn new(config: Self::Config) -> Result<Self, Error>;

    /// Reads the device. Readings without a timestamp are stamped by the
    /// runtime with the time the poll returned.
    fn poll(&mut self) -> Result<Vec<Reading>, Error>;

    /// Writes a value to a channel (a command from the cloud).
    fn write(&mut self, channel: &str, value: Value) -> Result<(), Error> {
        let _ = value;
        Err(Error::Unsupported(format!(
            "channel {channel:?} is not writable"
        )))
    }

    /// Reports the device's health; by default, connected with nothing else known.
    fn status(&self) -> DeviceStatus {
        DeviceStatus::connected()
    }
}

/// A data processor: transforms each batch a driver produces.
pub trait Processor: Sized + 'static {
    /// The processor's `config` table from the gateway's TOML file.
    type Config: serde::de::DeserializeOwned;

    /// Builds the processor from its configuration.
    fn new(config: Self::Config) -> Result<Self, Error>;

    /// Transforms one batch. Return fewer readings to filter, more to derive.
    fn process(&mut self, batch: Vec<Reading>) -> Result<Vec<Reading>, Error>;
}

/// Parses the JSON form of a plugin's config table into its `Config` type,
/// with the serde path of a bad field in the message.
pub fn parse_config<C: serde::de::DeserializeOwned>(json: &str) -> Result<C, Error> {
    serde_json::from_str(json).map_err(|e| Error::InvalidConfig(e.to_string()))
}

/// Support code for the generated glue; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use std::cell::RefCell;

    pub use crate::log::install as install_logger;

    /// Holds the one plugin instance a component serves (kept in a
    /// `thread_local!` by the glue; a component has a single thread).
    pub struct Slot<T>(RefCell<Option<T>>);

    impl<T> Slot<T> {
        pub const fn new() -> Self {
            Slot(RefCell::new(None))
        }

        pub fn set(&self, value: T) {
            *self.0.borrow_mut() = Some(value);
        }

        pub fn with<R>(
            &self,
            f: impl FnOnce(&mut T) -> Result<R, crate::Error>,
        ) -> Result<R, crate::Error> {
            match self.0.borrow_mut().as_mut() {
                Some(value) => f(value),
                None => Err(crate::Error::Other(
                    "plugin called before a successful init".to_string(),
                )),
            }
        }
    }

    impl<T> Default for Slot<T> {
        fn default() -> Self {
            Self::new()
        }
    }

    pub fn new_driver<D: crate::Driver>(config: &str) -> Result<D, crate::Error> {
        D::new(crate::parse_config(config)?)
    }

    pub fn new_processor<P: crate::Processor>(config: &str) -> Result<P, crate::Error> {
        P::new(crate::parse_config(config)?)
    }
}
