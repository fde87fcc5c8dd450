//! Runs plugins: the wasmtime engine, the sandbox each instance lives in,
//! and the typed calls into drivers and processors.
//!
//! This module owns everything about the plugin ABI; the rest of the
//! runtime sees [`PluginEngine`], [`DriverInstance`], [`ProcessorInstance`]
//! and the runtime's own reading types.
//!
//! Each configured driver or processor gets its own component instance in
//! its own `Store`, with a memory cap (`StoreLimits`), a per-call deadline
//! (epoch interruption, plus a tokio timeout around the call), and a WASI
//! context with no environment, no arguments, no stdio, no files and no
//! network.

mod bindings;
mod error;
mod host;
mod instance;
mod load;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config as EngineConfig, Engine};

pub use error::PluginError;
pub use instance::{DeviceStatus, DriverInstance, ProcessorInstance};
pub use load::{LoadedDriver, LoadedProcessor, PluginKind};

use host::HostState;

/// How often the engine's epoch advances; the granularity of call deadlines.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The WIT package version this runtime implements.
pub const WIT_PACKAGE: &str = "ferrule:plugin@0.1.0";

/// One wasmtime engine and linker shared by every plugin instance.
pub struct PluginEngine {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    ticker_stop: Arc<AtomicBool>,
}

impl PluginEngine {
    pub fn new() -> Result<PluginEngine, PluginError> {
        let mut config = EngineConfig::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(512 * 1024);
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(e.to_string()))?;
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        bindings::host::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )
        .map_err(|e| PluginError::Engine(e.to_string()))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop = ticker_stop.clone();
        std::thread::Builder::new()
            .name("ferrule-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| PluginError::Engine(format!("cannot start epoch thread: {e}")))?;
        Ok(PluginEngine {
            engine,
            linker: Arc::new(linker),
            ticker_stop,
        })
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}
