//! ferrule's Modbus TCP driver, without the plugin glue: the register map
//! ([`config`]), coalesced reads ([`plan`]), value conversion for every type
//! and byte/word order ([`convert`]), frames ([`codec`], built on rmodbus)
//! and the client with its health figures ([`client`]).
//!
//! `plugins/modbus-tcp` wraps [`client::Modbus`] as a WASM driver; keeping
//! the logic here lets it be tested, property-tested and fuzzed natively.

pub mod client;
pub mod codec;
pub mod config;
pub mod convert;
pub mod plan;

pub use client::Modbus;
pub use config::Config;
