//! Write ferrule device drivers and data processors in plain Rust.
//!
//! A driver is a type that implements [`Driver`] and carries the
//! [`driver`] attribute; a processor implements [`Processor`] and carries
//! [`processor`]. The attribute generates the WebAssembly component glue
//! (the `ferrule:plugin@0.2.0` WIT world), so plugin authors never see
//! wit-bindgen. Build with `cargo build --release --target wasm32-wasip2`.
//!
//! A driver may declare its channels once ([`Driver::channels`]) and
//! write readings by [`ChannelId`], or just write readings by name: the
//! SDK maps each name to its index in the channel table.
//!
//! ```ignore
//! use ferrule_sdk::{Channel, ChannelId, Driver, Error, Reading, ValueType};
//!
//! #[derive(serde::Deserialize)]
//! struct Config { start: i64 }
//!
//! #[ferrule_sdk::driver]
//! struct Counter { next: i64 }
//!
//! const COUNT: ChannelId = ChannelId::at(0);
//!
//! impl Driver for Counter {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, Error> {
//!         Ok(Counter { next: config.start })
//!     }
//!     fn channels(&self) -> Vec<Channel> {
//!         vec![Channel::new("count", ValueType::Int)]
//!     }
//!     fn poll(&mut self) -> Result<Vec<Reading>, Error> {
//!         self.next += 1;
//!         Ok(vec![Reading::new(COUNT, self.next)])
//!     }
//! }
//! ```

#![warn(missing_docs)]

mod channels;
mod glue;
mod types;

pub mod log;

pub use channels::{Channel, ChannelId, ChannelRef, Channels, Reading};
pub use ferrule_sdk_macros::{driver, processor};
pub use types::{DeviceStatus, Error, Quality, Value, ValueRange, ValueType};

/// The version of the `ferrule:plugin` WIT package this SDK builds against.
pub const WIT_VERSION: &str = "0.2.0";

/// A device driver: reads a device on the runtime's schedule.
pub trait Driver: Sized + 'static {
    /// The driver's `config` table from the gateway's TOML file.
    type Config: serde::de::DeserializeOwned;

    /// Builds the driver from its configuration. Validate here and return
    /// [`Error::InvalidConfig`] on a bad value; do not contact the device yet
    /// (`ferrule check` calls this without network access).
    fn new(config: Self::Config) -> Result<Self, Error>;

    /// The channels the driver declares, once, after [`Driver::new`]: the
    /// `i`-th is `ChannelId::at(i)`. By default none; a name a reading
    /// uses is then declared the first time it appears, with the reading's
    /// unit and value type, writable.
    fn channels(&self) -> Vec<Channel> {
        Vec::new()
    }

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

    /// The channels it derives, once, after [`Processor::new`], given the
    /// table so far: the `i`-th gets the id `input.next_id()` plus `i`.
    /// By default none (an output reading by a new name is declared the
    /// first time it appears).
    fn channels(&mut self, input: &Channels) -> Result<Vec<Channel>, Error> {
        let _ = input;
        Ok(Vec::new())
    }

    /// Transforms one batch. Its readings come by index (look names up in
    /// `channels`); return fewer to filter, more to derive, by index or
    /// by name.
    fn process(&mut self, batch: Vec<Reading>, channels: &Channels) -> Result<Vec<Reading>, Error>;
}

/// Parses the JSON form of a plugin's config table into its `Config` type,
/// with the serde path of a bad field in the message. A plugin that takes
/// no configuration uses `()`, which accepts an absent or empty table.
pub fn parse_config<C: serde::de::DeserializeOwned>(json: &str) -> Result<C, Error> {
    serde_json::from_str(json).or_else(|first| {
        let empty = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json)
            .is_ok_and(|m| m.is_empty());
        // `()` reads from `null` only; an empty table means the same.
        match empty {
            true => serde_json::from_str("null").map_err(|_| Error::from(first)),
            false => Err(Error::from(first)),
        }
    })
}

/// Support code for the generated glue; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use std::cell::RefCell;

    pub use crate::glue::{DriverState, ProcessorState};
    pub use crate::log::install as install_logger;
    pub use crate::types::generated as types;

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
}
