//! Live plugin instances and the guarded calls into them.

use std::future::Future;

use wasmtime::{Store, Trap};

use super::PluginError;
use super::bindings::driver::DriverPlugin;
use super::bindings::processor::ProcessorPlugin;
use super::bindings::types as wt;
use super::host::HostState;
use super::load::{LoadedDriver, LoadedProcessor};
use super::sandbox::Limits;
use super::sandbox::Sandbox;
use super::validate::{self, Checked};
use crate::reading::{Quality, Reading, Value, now_ns};

/// What a driver reports about its device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceStatus {
    /// Whether the driver reaches its device.
    pub connected: bool,
    /// The device's firmware version.
    pub firmware: Option<String>,
    /// Battery charge, 0 to 100 (checked).
    pub battery_percent: Option<u8>,
    /// Link quality, 0 to 100 (checked).
    pub signal_quality: Option<u8>,
    /// Further device-specific pairs.
    pub extra: Vec<(String, String)>,
}

/// A running driver: its own store, memory and budgets.
pub struct DriverInstance {
    store: Store<HostState>,
    plugin: DriverPlugin,
    limits: Limits,
    checked: Checked,
}

/// A running processor: its own store, memory and budgets.
pub struct ProcessorInstance {
    store: Store<HostState>,
    plugin: ProcessorPlugin,
    limits: Limits,
    checked: Checked,
}

fn new_store(
    engine: &wasmtime::Engine,
    instance: &str,
    sandbox: &Sandbox,
) -> Result<Store<HostState>, PluginError> {
    let mut store = Store::new(engine, HostState::new(instance, sandbox)?);
    store.limiter(|state| &mut state.limits);
    // Bounds every copy out of the plugin (a call's result, the arguments
    // of each call it makes to the host) by the lengths in its memory,
    // before anything is copied.
    store.set_hostcall_fuel(sandbox.limits.max_result_bytes);
    // Guest code yields to the async runtime at every epoch tick, so a
    // plugin that spins cannot hold a worker thread (and starve the other
    // plugins and the publisher) until its deadline; the deadline itself is
    // the timeout around each call in `guarded`.
    store.epoch_deadline_async_yield_and_update(1);
    store.set_epoch_deadline(1);
    Ok(store)
}

/// Runs one call into a plugin under its deadline. Guest code yields every
/// epoch tick and host calls are async, so the timeout fires within a tick
/// of the deadline whether the plugin spins or waits; the call is then
/// dropped and the instance must be rebuilt.
async fn guarded<T>(
    store_instance: &str,
    limits: &Limits,
    call: &'static str,
    fut: impl Future<Output = wasmtime::Result<T>>,
) -> Result<T, PluginError> {
    let limit = limits.timeout;
    let timeout_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    let started = std::time::Instant::now();
    let elapsed_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match tokio::time::timeout(limit, fut).await {
        Err(_) => Err(PluginError::Timeout {
            instance: store_instance.to_string(),
            call,
            timeout_ms,
            elapsed_ms: elapsed_ms(),
        }),
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            let message = format!("{e:#}").replace('\n', " | ");
            if message.contains(FUEL_EXHAUSTED) {
                Err(PluginError::Oversized {
                    instance: store_instance.to_string(),
                    call,
                    message: format!(
                        "more than max_result_bytes = {} in one result or one call to the host (refused before copying)",
                        limits.max_result_bytes
                    ),
                })
            } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
                Err(PluginError::Timeout {
                    instance: store_instance.to_string(),
                    call,
                    timeout_ms,
                    elapsed_ms: elapsed_ms(),
                })
            } else {
                Err(PluginError::Trap {
                    instance: store_instance.to_string(),
                    call,
                    message,
                })
            }
        }
    }
}

/// What wasmtime says when a copy out of the guest would pass the store's
/// hostcall fuel (`max_result_bytes`); its error type is private.
const FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

/// A plugin's returned error, its message cut to `max_error_bytes`.
fn returned(instance: &str, call: &'static str, limits: &Limits, error: wt::Error) -> PluginError {
    let error = match error {
        wt::Error::InvalidConfig(m) => format!("invalid config: {m}"),
        wt::Error::Unavailable(m) => format!("device unavailable: {m}"),
        wt::Error::Timeout(m) => format!("device timeout: {m}"),
        wt::Error::Protocol(m) => format!("protocol error: {m}"),
        wt::Error::Unsupported(m) => format!("unsupported: {m}"),
        wt::Error::Other(m) => m,
    };
    PluginError::Returned {
        instance: instance.to_string(),
        call,
        error: validate::cut(error, limits.max_error_bytes),
    }
}

impl LoadedDriver {
    /// Builds a fresh instance in its own store and calls its `init`.
    pub async fn start(
        &self,
        instance: &str,
        sandbox: &Sandbox,
        config_json: &str,
    ) -> Result<DriverInstance, PluginError> {
        let mut store = new_store(self.pre.engine(), instance, sandbox)?;
        let plugin = guarded(
            instance,
            &sandbox.limits,
            "instantiate",
            self.pre.instantiate_async(&mut store),
        )
        .await
        .map_err(|e| PluginError::Instantiate {
            instance: instance.to_string(),
            message: e.to_string(),
        })?;
        let mut driver = DriverInstance {
            store,
            plugin,
            limits: sandbox.limits,
            checked: Checked::default(),
        };
        driver.init(config_json).await?;
        Ok(driver)
    }
}

impl DriverInstance {
    fn arm(&mut self) -> String {
        self.store.set_epoch_deadline(1);
        self.store.data().instance.clone()
    }

    async fn init(&mut self, config_json: &str) -> Result<(), PluginError> {
        let name = self.arm();
        let iface = self.plugin.ferrule_plugin_driver();
        guarded(
            &name,
            &self.limits,
            "init",
            iface.call_init(&mut self.store, config_json),
        )
        .await?
        .map_err(|e| returned(&name, "init", &self.limits, e))
    }

    /// Polls the device; readings without a timestamp get the current time.
    pub async fn poll(&mut self) -> Result<Vec<Reading>, PluginError> {
        let name = self.arm();
        let iface = self.plugin.ferrule_plugin_driver();
        let readings = guarded(
            &name,
            &self.limits,
            "poll",
            iface.call_poll(&mut self.store),
        )
        .await?
        .map_err(|e| returned(&name, "poll", &self.limits, e))?;
        validate::check_sizes(&name, "poll", &self.limits, &readings)?;
        let now = now_ns();
        let stamped = readings.into_iter().map(|r| from_wit(r, now)).collect();
        let (readings, checked) = validate::accept_readings(&name, "poll", stamped);
        self.checked.add(checked);
        Ok(readings)
    }

    /// What the output checks did since the last call of this.
    pub fn take_checked(&mut self) -> Checked {
        std::mem::take(&mut self.checked)
    }

    /// Bytes of linear memory the instance holds now.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().limits.memory_bytes
    }

    /// Writes `value` to the device's `channel` (a command from the cloud).
    pub async fn write(&mut self, channel: &str, value: Value) -> Result<(), PluginError> {
        let name = self.arm();
        let iface = self.plugin.ferrule_plugin_driver();
        guarded(
            &name,
            &self.limits,
            "write",
            iface.call_write(&mut self.store, channel, &to_wit_value(value)),
        )
        .await?
        .map_err(|e| returned(&name, "write", &self.limits, e))
    }

    /// Asks the driver about its device; the answer is checked against the
    /// status limits.
    pub async fn status(&mut self) -> Result<DeviceStatus, PluginError> {
        let name = self.arm();
        let iface = self.plugin.ferrule_plugin_driver();
        let s = guarded(
            &name,
            &self.limits,
            "status",
            iface.call_status(&mut self.store),
        )
        .await?;
        let (status, checked) = validate::accept_status(&name, &self.limits, s)?;
        self.checked.add(checked);
        Ok(status)
    }
}

impl LoadedProcessor {
    /// Builds a fresh instance in its own store and calls its `init`.
    pub async fn start(
        &self,
        instance: &str,
        sandbox: &Sandbox,
        config_json: &str,
    ) -> Result<ProcessorInstance, PluginError> {
        let mut store = new_store(self.pre.engine(), instance, sandbox)?;
        let plugin = guarded(
            instance,
            &sandbox.limits,
            "instantiate",
            self.pre.instantiate_async(&mut store),
        )
        .await
        .map_err(|e| PluginError::Instantiate {
            instance: instance.to_string(),
            message: e.to_string(),
        })?;
        let mut processor = ProcessorInstance {
            store,
            plugin,
            limits: sandbox.limits,
            checked: Checked::default(),
        };
        processor.init(config_json).await?;
        Ok(processor)
    }
}

impl ProcessorInstance {
    /// Bytes of linear memory the instance holds now.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().limits.memory_bytes
    }

    fn arm(&mut self) -> String {
        self.store.set_epoch_deadline(1);
        self.store.data().instance.clone()
    }

    async fn init(&mut self, config_json: &str) -> Result<(), PluginError> {
        let name = self.arm();
        let iface = self.plugin.ferrule_plugin_processor();
        guarded(
            &name,
            &self.limits,
            "init",
            iface.call_init(&mut self.store, config_json),
        )
        .await?
        .map_err(|e| returned(&name, "init", &self.limits, e))
    }

    /// Runs the processor on a batch; what it returns is checked like a poll's.
    pub async fn process(&mut self, batch: Vec<Reading>) -> Result<Vec<Reading>, PluginError> {
        let name = self.arm();
        let iface = self.plugin.ferrule_plugin_processor();
        let input: Vec<wt::Reading> = batch.into_iter().map(to_wit).collect();
        let output = guarded(
            &name,
            &self.limits,
            "process",
            iface.call_process(&mut self.store, &input),
        )
        .await?
        .map_err(|e| returned(&name, "process", &self.limits, e))?;
        validate::check_sizes(&name, "process", &self.limits, &output)?;
        let now = now_ns();
        let stamped = output.into_iter().map(|r| from_wit(r, now)).collect();
        let (readings, checked) = validate::accept_readings(&name, "process", stamped);
        self.checked.add(checked);
        Ok(readings)
    }

    /// What the output checks did since the last call of this.
    pub fn take_checked(&mut self) -> Checked {
        std::mem::take(&mut self.checked)
    }
}

fn from_wit(r: wt::Reading, default_ts_ns: u64) -> Reading {
    Reading {
        channel: r.channel,
        value: match r.value {
            wt::Value::Float(v) => Value::Float(v),
            wt::Value::Int(v) => Value::Int(v),
            wt::Value::Boolean(v) => Value::Bool(v),
            wt::Value::Text(v) => Value::Text(v),
            wt::Value::Bytes(v) => Value::Bytes(v),
        },
        ts_ns: r.timestamp_ns.unwrap_or(default_ts_ns),
        quality: match r.quality {
            wt::Quality::Good => Quality::Good,
            wt::Quality::Uncertain => Quality::Uncertain,
            wt::Quality::Bad => Quality::Bad,
        },
        unit: r.unit,
    }
}

fn to_wit_value(value: Value) -> wt::Value {
    match value {
        Value::Float(v) => wt::Value::Float(v),
        Value::Int(v) => wt::Value::Int(v),
        Value::Bool(v) => wt::Value::Boolean(v),
        Value::Text(v) => wt::Value::Text(v),
        Value::Bytes(v) => wt::Value::Bytes(v),
    }
}

fn to_wit(r: Reading) -> wt::Reading {
    wt::Reading {
        channel: r.channel,
        value: to_wit_value(r.value),
        timestamp_ns: Some(r.ts_ns),
        quality: match r.quality {
            Quality::Good => wt::Quality::Good,
            Quality::Uncertain => wt::Quality::Uncertain,
            Quality::Bad => wt::Quality::Bad,
        },
        unit: r.unit,
    }
}
