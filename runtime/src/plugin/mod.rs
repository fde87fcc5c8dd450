//! Runs plugins: the wasmtime engine, the sandbox each instance lives in,
//! and the typed calls into drivers and processors.
//!
//! This module owns everything about the plugin ABI; the rest of the
//! runtime sees [`PluginEngine`], [`DriverInstance`], [`ProcessorInstance`]
//! and the runtime's own reading types.
//!
//! Each configured driver or processor gets its own component instance in
//! its own `Store`, with a memory cap (`StoreLimits`), a per-call deadline
//! (epoch yields plus a tokio timeout around the call), and a bound on every
//! copy out of it (hostcall fuel: `max_result_bytes`). Its WASI context has
//! no environment, arguments or stdin; stdout and stderr go to the log. It
//! reaches only what its config grants ([`Capabilities`], checked in
//! [`Sandbox`]): TCP to its `allow_net` addresses (and its driver's
//! `device`), name lookup if `allow_dns`, and a private `/data` directory
//! if `data_dir`, under an open-file cap and a byte quota (`budget`).
//! Listening sockets and UDP are refused.

mod bindings;
mod budget;
mod cache;
mod channels;
mod convert;
mod error;
mod host;
mod instance;
mod load;
mod needs;
mod output;
mod sandbox;
mod ticker;
pub mod trust;
mod validate;

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{
    Config as EngineConfig, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
};

pub use budget::BudgetCounters;
pub use cache::Source as CompiledFrom;
pub use channels::{Channel, ChannelTable, Sample, ValueType};
pub use error::PluginError;
pub use instance::{DeviceStatus, DriverInstance, ProcessorInstance};
pub use load::{Abi, Description, LoadedDriver, LoadedProcessor, PluginKind};
pub use needs::ComponentNeeds;
pub use sandbox::{Capabilities, Limits, Sandbox};
pub use validate::{
    Checked as OutputChecked, MAX_TIMESTAMP_NS, MIN_TIMESTAMP_NS, Review as OutputReview,
    cut as cut_text, dedupe_names,
};

use host::HostState;

/// How often the engine's epoch advances while a plugin call runs; the
/// granularity of call deadlines.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The newest WIT package version this runtime implements; it also loads
/// every older one ([`Abi::ALL`]).
pub const WIT_PACKAGE: &str = "ferrule:plugin@0.2.0";

/// How the engine is set up.
#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    /// Instances the pooling allocator has room for; 0 disables pooling.
    pub max_instances: u32,
    /// What the pool must hold in all: the configured plugins' own needs
    /// (each instance twice, as a rebuild overlaps the instance it
    /// replaces) and, for the slots beyond them, the largest plugin's.
    /// Zero: a fixed allowance per instance.
    pub pool_total: ComponentNeeds,
    /// The largest single instance's needs.
    pub pool_per_instance: ComponentNeeds,
    /// The largest `memory_mb` of any plugin (sizes the pool's memory slots).
    pub max_memory_mb: u64,
    /// Where compiled components are cached; no cache when `None`.
    pub cache_dir: Option<std::path::PathBuf>,
}

/// One wasmtime engine and linker shared by every plugin instance.
pub struct PluginEngine {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    ticker: Arc<ticker::Ticker>,
    cache: Option<cache::CompileCache>,
    /// Which plugins may load; every file's bytes are checked before they
    /// are compiled.
    trust: trust::TrustPolicy,
}

fn engine_config(settings: &EngineSettings, pooling: bool) -> EngineConfig {
    let mut config = EngineConfig::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(512 * 1024);
    // For plugin authors profiling with `perf`: names compiled plugin
    // functions in /tmp/perf-<pid>.map.
    if std::env::var_os("FERRULE_WASM_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if pooling && settings.max_instances > 0 {
        let n = settings.max_instances;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n).total_stacks(n);
        match settings.pool_total.core_instances {
            // Without measured needs: a fixed allowance per slot and
            // wasmtime's own cap per component.
            0 => pool
                .total_core_instances(n.saturating_mul(ComponentNeeds::UNMEASURED.core_instances))
                .total_memories(n.saturating_mul(ComponentNeeds::UNMEASURED.memories))
                .total_tables(n.saturating_mul(ComponentNeeds::UNMEASURED.tables))
                .max_memories_per_component(4)
                .max_tables_per_component(8),
            _ => {
                let (total, each) = (settings.pool_total, settings.pool_per_instance);
                pool.total_core_instances(total.core_instances.max(1))
                    .total_memories(total.memories.max(1))
                    .total_tables(total.tables.max(1))
                    .max_core_instances_per_component(each.core_instances.max(1))
                    .max_memories_per_component(each.memories.max(1))
                    .max_tables_per_component(each.tables.max(1))
            }
        };
        pool.max_memory_size(
            usize::try_from(settings.max_memory_mb.max(1).saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
        );
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

impl PluginEngine {
    /// An engine with default settings (no pooling, no cache).
    pub fn new() -> Result<PluginEngine, PluginError> {
        Self::with_settings(&EngineSettings::default())
    }

    /// An engine sized by `settings` (pool slots, memory, compile cache).
    pub fn with_settings(settings: &EngineSettings) -> Result<PluginEngine, PluginError> {
        let engine = match Engine::new(&engine_config(settings, true)) {
            Ok(engine) => engine,
            Err(e) if settings.max_instances > 0 => {
                tracing::warn!(error = %e, "pooling allocator unavailable here; allocating instances on demand");
                Engine::new(&engine_config(settings, false))
                    .map_err(|e| PluginError::Engine(e.to_string()))?
            }
            Err(e) => return Err(PluginError::Engine(e.to_string())),
        };
        let cache = match &settings.cache_dir {
            Some(dir) => match cache::CompileCache::new(dir.clone(), &engine) {
                Ok(cache) => Some(cache),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "compile cache disabled");
                    None
                }
            },
            None => None,
        };
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        type Data = wasmtime::component::HasSelf<HostState>;
        bindings::v0_1::host::add_to_linker::<HostState, Data>(&mut linker, |state| state)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        bindings::v0_2::host::add_to_linker::<HostState, Data>(&mut linker, |state| state)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        budget::add_to_linker(&mut linker).map_err(|e| PluginError::Engine(format!("{e:#}")))?;

        let ticker = ticker::Ticker::start(&engine)
            .map_err(|e| PluginError::Engine(format!("cannot start epoch thread: {e}")))?;
        Ok(PluginEngine {
            engine,
            linker: Arc::new(linker),
            ticker,
            cache,
            trust: trust::TrustPolicy::default(),
        })
    }

    /// Loads only plugins `policy` admits from now on.
    pub fn with_trust(mut self, policy: trust::TrustPolicy) -> PluginEngine {
        self.trust = policy;
        self
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}
