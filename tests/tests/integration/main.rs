//! ferrule's integration tests: one test binary, a module per area.
//! Every test starts its own peers on loopback and stops them.

mod abi;
mod bad_input;
mod cluster;
mod common;
mod compile_cache;
mod containment;
mod end_to_end;
mod erase;
mod fleet;
mod guest;
mod modbus;
mod mqtt_link;
mod new;
mod reload;
mod sandbox;
mod sparkplug;
mod storage;
mod store_forward;
mod telemetry;
mod tls_errors;
mod top;
mod trust;
