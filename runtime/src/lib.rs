//! ferrule: a WebAssembly plugin-based edge runtime for industrial gateways.
//!
//! Drivers and processors run as sandboxed WASM components
//! ([`plugin`]); the pipeline polls drivers and runs processor chains;
//! every batch is committed to the durable [`queue`] before the
//! [`publish`]er sends it over MQTT with TLS and deletes it on PUBACK.
//! Writes to devices arrive as remote commands over the same connection.

#![warn(missing_docs)]

// The public modules are what the `ferrule` binary, the integration tests
// and the benchmarks use; the rest is internal. `dev` (test PKI, config
// builders) exists only with the `demo` feature.

pub mod audit;
pub(crate) mod backoff;
pub mod config;
pub mod data;
pub mod deploy;
#[cfg(any(feature = "demo", test))]
pub mod dev;
pub mod erase;
pub mod gateway;
pub(crate) mod pipeline;
pub mod plugin;
pub mod publish;
pub mod queue;
pub mod reading;
pub mod remote;
pub mod retention;
pub mod telemetry;
