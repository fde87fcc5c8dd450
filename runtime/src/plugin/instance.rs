//! Live plugin instances and the guarded calls into them.

use std::future::Future;
use std::sync::Arc;

use wasmtime::{Store, Trap};

use super::PluginError;
use super::bindings::{v0_1, v0_2};
use super::channels::{ChannelTable, Sample};
use super::convert::{self, v1, v2};
use super::host::HostState;
use super::load::{Abi, DriverPre, LoadedDriver, LoadedProcessor, ProcessorPre};
use super::sandbox::Limits;
use super::sandbox::Sandbox;
use super::ticker::Ticker;
use super::validate::{self, Checked, Review};
use crate::reading::{Quality, Value, now_ns};

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

/// A driver's exports, per ABI version.
enum DriverExports {
    V1(v0_1::driver::DriverPlugin),
    V2(v0_2::driver::DriverPlugin),
}

/// A processor's exports, per ABI version.
enum ProcessorExports {
    V1(v0_1::processor::ProcessorPlugin),
    V2(v0_2::processor::ProcessorPlugin),
}

/// What every live instance has: its store, the ticker its calls hold,
/// its limits and what the output checks counted.
struct Running {
    store: Store<HostState>,
    ticker: Arc<Ticker>,
    limits: Limits,
    checked: Checked,
    /// The configured instance name, for errors.
    name: String,
}

/// A running driver: its own store, memory and budgets.
pub struct DriverInstance {
    run: Running,
    plugin: DriverExports,
}

/// A running processor: its own store, memory and budgets.
pub struct ProcessorInstance {
    run: Running,
    plugin: ProcessorExports,
    /// Its place in the chain: 1 for the first processor.
    stage: usize,
    /// How much of the channel table it has been told about (0.2.0).
    seen: usize,
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
    ticker: &Arc<Ticker>,
    store_instance: &str,
    limits: &Limits,
    call: &'static str,
    fut: impl Future<Output = wasmtime::Result<T>>,
) -> Result<T, PluginError> {
    // The epoch advances only while some call holds a guard.
    let _running = ticker.call();
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

impl Running {
    /// Instantiates a component in a fresh store under the instantiate
    /// deadline.
    async fn start<T>(
        ticker: &Arc<Ticker>,
        instance: &str,
        sandbox: &Sandbox,
        engine: &wasmtime::Engine,
        make: impl AsyncFnOnce(&mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<(Running, T), PluginError> {
        let mut store = new_store(engine, instance, sandbox)?;
        let call = make(&mut store);
        let exports = guarded(ticker, instance, &sandbox.limits, "instantiate", call)
            .await
            .map_err(|e| PluginError::Instantiate {
                instance: instance.to_string(),
                message: e.to_string(),
            })?;
        let run = Running {
            store,
            ticker: ticker.clone(),
            limits: sandbox.limits,
            checked: Checked::default(),
            name: instance.to_string(),
        };
        Ok((run, exports))
    }

    /// Runs one export under the deadline; an error the plugin returns is
    /// worded by `message` and cut to `max_error_bytes`.
    async fn call<T, E>(
        &mut self,
        call: &'static str,
        make: impl AsyncFnOnce(&mut Store<HostState>) -> wasmtime::Result<Result<T, E>>,
        message: impl FnOnce(E) -> String,
    ) -> Result<T, PluginError> {
        self.infallible(call, make)
            .await?
            .map_err(|e| PluginError::Returned {
                instance: self.name.clone(),
                call,
                error: validate::cut(message(e), self.limits.max_error_bytes),
            })
    }

    /// Runs one export that cannot return an error of its own.
    async fn infallible<T>(
        &mut self,
        call: &'static str,
        make: impl AsyncFnOnce(&mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, PluginError> {
        self.store.set_epoch_deadline(1);
        let fut = make(&mut self.store);
        guarded(&self.ticker, &self.name, &self.limits, call, fut).await
    }

    /// Appends declared channels to `table`, counting the refused ones.
    fn declare(
        &self,
        call: &'static str,
        review: &mut Review,
        table: &mut ChannelTable,
        stage: usize,
        channels: Vec<v0_2::types::Channel>,
    ) -> Result<(), PluginError> {
        if channels.is_empty() {
            return Ok(());
        }
        let refused = table
            .declare(stage, channels.into_iter().map(convert::channel))
            .map_err(|full| PluginError::Oversized {
                instance: self.name.clone(),
                call,
                message: full.to_string(),
            })?;
        review.refused_channels(refused);
        Ok(())
    }

    /// Samples from a 0.2.0 batch, after appending its `added` channels.
    fn declared(
        &self,
        call: &'static str,
        review: &mut Review,
        table: &mut ChannelTable,
        stage: usize,
        batch: v0_2::types::Batch,
    ) -> Result<Vec<Sample>, PluginError> {
        self.declare(call, review, table, stage, batch.added)?;
        let ts = batch.timestamp_ns.unwrap_or_else(now_ns);
        let (floats, ints) = (batch.floats, batch.ints);
        let mut samples =
            Vec::with_capacity(batch.readings.len() + floats.values.len() + ints.values.len());
        samples.extend(batch.readings.into_iter().map(|r| Sample {
            channel: r.channel,
            value: v2::value(r.value),
            ts_ns: r.timestamp_ns.unwrap_or(ts),
            quality: v2::quality(r.quality),
        }));
        let good = |channel, value| Sample {
            channel,
            value,
            ts_ns: ts,
            quality: Quality::Good,
        };
        let floats = floats.channels.into_iter().zip(floats.values);
        samples.extend(floats.map(|(c, v)| good(c, Value::Float(v))));
        let ints = ints.channels.into_iter().zip(ints.values);
        samples.extend(ints.map(|(c, v)| good(c, Value::Int(v))));
        Ok(samples)
    }

    /// Checks `samples` against `table` (what the checks did is counted)
    /// and puts them in channel-table order, then oldest first, whatever
    /// order the plugin returned them in (a 0.2.0 batch's numbers cross in
    /// columns apart from the rest).
    fn accept(
        &mut self,
        call: &'static str,
        mut review: Review,
        table: &ChannelTable,
        samples: Vec<Sample>,
    ) -> Vec<Sample> {
        let mut samples = validate::accept_samples(&mut review, table, samples);
        samples.sort_unstable_by_key(|s| (s.channel, s.ts_ns));
        self.checked.add(review.finish(&self.name, call));
        samples
    }

    fn memory_bytes(&self) -> usize {
        self.store.data().limits.memory_bytes
    }
}

/// Samples from 0.1.0 readings, learning their names into `table`.
fn learned(
    review: &mut Review,
    table: &mut ChannelTable,
    stage: usize,
    readings: Vec<v0_1::types::Reading>,
    now: u64,
) -> Vec<Sample> {
    let mut samples = Vec::with_capacity(readings.len());
    for r in readings {
        let value = v1::value(r.value);
        match table.learn(stage, &r.channel, r.unit.as_deref(), &value) {
            Ok(channel) => samples.push(Sample {
                channel,
                value,
                ts_ns: r.timestamp_ns.unwrap_or(now),
                quality: v1::quality(r.quality),
            }),
            Err(why) => review.reject(|| why),
        }
    }
    samples
}

/// Instantiates any ABI version's pre-instance `$pre` in a fresh store
/// and wraps its exports in `$variant`.
macro_rules! start_as {
    ($ticker:expr, $instance:expr, $sandbox:expr, $pre:expr, $variant:path) => {{
        let make = async |s: &mut Store<HostState>| $pre.instantiate_async(s).await;
        let (run, p) = Running::start($ticker, $instance, $sandbox, $pre.engine(), make).await?;
        (run, $variant(p))
    }};
}

impl LoadedDriver {
    /// Builds a fresh instance in its own store and calls its `init`; a
    /// 0.2.0 driver's channels start `table`.
    pub async fn start(
        &self,
        instance: &str,
        sandbox: &Sandbox,
        config_json: &str,
        table: &mut ChannelTable,
    ) -> Result<DriverInstance, PluginError> {
        let t = &self.ticker;
        let (run, plugin) = match &self.pre {
            DriverPre::V1(pre) => start_as!(t, instance, sandbox, pre, DriverExports::V1),
            DriverPre::V2(pre) => start_as!(t, instance, sandbox, pre, DriverExports::V2),
        };
        let mut driver = DriverInstance { run, plugin };
        driver.init(config_json, table).await?;
        Ok(driver)
    }
}

impl DriverInstance {
    /// The ABI the driver was built against.
    pub fn abi(&self) -> Abi {
        match self.plugin {
            DriverExports::V1(_) => Abi::V0_1,
            DriverExports::V2(_) => Abi::V0_2,
        }
    }

    async fn init(&mut self, config: &str, table: &mut ChannelTable) -> Result<(), PluginError> {
        let run = &mut self.run;
        match &self.plugin {
            DriverExports::V1(p) => {
                let i = p.ferrule_plugin_driver();
                let make = async |s: &mut Store<HostState>| i.call_init(s, config).await;
                run.call("init", make, v1::error_message).await
            }
            DriverExports::V2(p) => {
                let i = p.ferrule_plugin_driver();
                let make = async |s: &mut Store<HostState>| i.call_init(s, config).await;
                let channels = run.call("init", make, v2::error_message).await?;
                let mut review = Review::default();
                run.declare("init", &mut review, table, 0, channels)?;
                run.checked.add(review.finish(&run.name, "init"));
                Ok(())
            }
        }
    }

    /// Polls the device. Readings without a timestamp get the batch's, or
    /// the current time; names of a 0.1.0 driver's readings are learned
    /// into `table`.
    pub async fn poll(&mut self, table: &mut ChannelTable) -> Result<Vec<Sample>, PluginError> {
        let run = &mut self.run;
        let mut review = Review::default();
        let samples = match &self.plugin {
            DriverExports::V1(p) => {
                let i = p.ferrule_plugin_driver();
                let make = async |s: &mut Store<HostState>| i.call_poll(s).await;
                let readings = run.call("poll", make, v1::error_message).await?;
                validate::check_sizes_v1(&run.name, "poll", &run.limits, &readings)?;
                learned(&mut review, table, 0, readings, now_ns())
            }
            DriverExports::V2(p) => {
                let i = p.ferrule_plugin_driver();
                let make = async |s: &mut Store<HostState>| i.call_poll(s).await;
                let batch = run.call("poll", make, v2::error_message).await?;
                validate::check_sizes_v2(&run.name, "poll", &run.limits, &batch)?;
                run.declared("poll", &mut review, table, 0, batch)?
            }
        };
        Ok(run.accept("poll", review, table, samples))
    }

    /// What the output checks did since the last call of this.
    pub fn take_checked(&mut self) -> Checked {
        std::mem::take(&mut self.run.checked)
    }

    /// Bytes of linear memory the instance holds now.
    pub fn memory_bytes(&self) -> usize {
        self.run.memory_bytes()
    }

    /// Writes `value` to the device's `channel` (a command from the cloud).
    /// A 0.2.0 driver is called only for a channel it declared writable.
    pub async fn write(
        &mut self,
        table: &ChannelTable,
        channel: &str,
        value: Value,
    ) -> Result<(), PluginError> {
        let run = &mut self.run;
        match &self.plugin {
            DriverExports::V1(p) => {
                let i = p.ferrule_plugin_driver();
                let value = v1::to_value(value);
                let make = async |s: &mut Store<HostState>| i.call_write(s, channel, &value).await;
                run.call("write", make, v1::error_message).await
            }
            DriverExports::V2(p) => {
                let refused = |read_only| PluginError::NotWritable {
                    instance: run.name.clone(),
                    channel: channel.to_string(),
                    read_only,
                };
                let index = match table.driver_channel(channel) {
                    None => return Err(refused(false)),
                    Some((_, c)) if !c.writable => return Err(refused(true)),
                    Some((index, _)) => index,
                };
                let i = p.ferrule_plugin_driver();
                let value = v2::to_value(value);
                let make = async |s: &mut Store<HostState>| i.call_write(s, index, &value).await;
                run.call("write", make, v2::error_message).await
            }
        }
    }

    /// Asks the driver about its device; the answer is checked against the
    /// status limits.
    pub async fn status(&mut self) -> Result<DeviceStatus, PluginError> {
        let run = &mut self.run;
        let s = match &self.plugin {
            DriverExports::V1(p) => {
                let i = p.ferrule_plugin_driver();
                let make = async |s: &mut Store<HostState>| i.call_status(s).await;
                v1::status(run.infallible("status", make).await?)
            }
            DriverExports::V2(p) => {
                let i = p.ferrule_plugin_driver();
                let make = async |s: &mut Store<HostState>| i.call_status(s).await;
                v2::status(run.infallible("status", make).await?)
            }
        };
        let (status, checked) = validate::accept_status(&run.name, &run.limits, s)?;
        run.checked.add(checked);
        Ok(status)
    }
}

impl LoadedProcessor {
    /// Builds a fresh instance in its own store and calls its `init`; a
    /// 0.2.0 processor sees `table` and appends the channels it derives.
    /// `stage` is its place in the chain, 1 for the first.
    pub async fn start(
        &self,
        instance: &str,
        sandbox: &Sandbox,
        config_json: &str,
        table: &mut ChannelTable,
        stage: usize,
    ) -> Result<ProcessorInstance, PluginError> {
        let t = &self.ticker;
        let (run, plugin) = match &self.pre {
            ProcessorPre::V1(pre) => start_as!(t, instance, sandbox, pre, ProcessorExports::V1),
            ProcessorPre::V2(pre) => start_as!(t, instance, sandbox, pre, ProcessorExports::V2),
        };
        let mut processor = ProcessorInstance {
            run,
            plugin,
            stage,
            seen: 0,
        };
        processor.init(config_json, table).await?;
        Ok(processor)
    }
}

impl ProcessorInstance {
    /// Bytes of linear memory the instance holds now.
    pub fn memory_bytes(&self) -> usize {
        self.run.memory_bytes()
    }

    /// The ABI the processor was built against.
    pub fn abi(&self) -> Abi {
        match self.plugin {
            ProcessorExports::V1(_) => Abi::V0_1,
            ProcessorExports::V2(_) => Abi::V0_2,
        }
    }

    async fn init(&mut self, config: &str, table: &mut ChannelTable) -> Result<(), PluginError> {
        let run = &mut self.run;
        match &self.plugin {
            ProcessorExports::V1(p) => {
                let i = p.ferrule_plugin_processor();
                let make = async |s: &mut Store<HostState>| i.call_init(s, config).await;
                run.call("init", make, v1::error_message).await
            }
            ProcessorExports::V2(p) => {
                let i = p.ferrule_plugin_processor();
                let known: Vec<_> = table.since(0).map(convert::to_channel).collect();
                let make = async |s: &mut Store<HostState>| i.call_init(s, config, &known).await;
                let derived = run.call("init", make, v2::error_message).await?;
                let mut review = Review::default();
                run.declare("init", &mut review, table, self.stage, derived)?;
                self.seen = table.len();
                run.checked.add(review.finish(&run.name, "init"));
                Ok(())
            }
        }
    }

    /// Runs the processor on a batch; what it returns is checked like a
    /// poll's.
    pub async fn process(
        &mut self,
        table: &mut ChannelTable,
        batch: Vec<Sample>,
    ) -> Result<Vec<Sample>, PluginError> {
        let run = &mut self.run;
        let stage = self.stage;
        let mut review = Review::default();
        let samples = match &self.plugin {
            ProcessorExports::V1(p) => {
                let i = p.ferrule_plugin_processor();
                let input: Vec<v0_1::types::Reading> =
                    batch.into_iter().filter_map(|s| to_v1(table, s)).collect();
                let make = async |s: &mut Store<HostState>| i.call_process(s, &input).await;
                let output = run.call("process", make, v1::error_message).await?;
                validate::check_sizes_v1(&run.name, "process", &run.limits, &output)?;
                learned(&mut review, table, stage, output, now_ns())
            }
            ProcessorExports::V2(p) => {
                let i = p.ferrule_plugin_processor();
                let input = to_v2(table, self.seen, batch);
                self.seen = table.len();
                let make = async |s: &mut Store<HostState>| i.call_process(s, &input).await;
                let output = run.call("process", make, v2::error_message).await?;
                validate::check_sizes_v2(&run.name, "process", &run.limits, &output)?;
                let samples = run.declared("process", &mut review, table, stage, output)?;
                self.seen = table.len();
                samples
            }
        };
        Ok(run.accept("process", review, table, samples))
    }

    /// What the output checks did since the last call of this.
    pub fn take_checked(&mut self) -> Checked {
        std::mem::take(&mut self.run.checked)
    }
}

/// A sample as a 0.1.0 processor takes it: by name, with its timestamp.
fn to_v1(table: &ChannelTable, s: Sample) -> Option<v0_1::types::Reading> {
    let c = table.get(s.channel)?;
    Some(v0_1::types::Reading {
        channel: c.name.clone(),
        value: v1::to_value(s.value),
        timestamp_ns: Some(s.ts_ns),
        quality: v1::to_quality(s.quality),
        unit: c.unit.clone(),
    })
}

/// A batch as a 0.2.0 processor takes it: the channels added since it last
/// looked, and one timestamp for the batch when every sample shares it; good
/// floats and integers at that time go in its columns.
fn to_v2(table: &ChannelTable, seen: usize, samples: Vec<Sample>) -> v0_2::types::Batch {
    use v0_2::types::{FloatColumns, IntColumns, Reading};
    let shared = samples
        .first()
        .map(|s| s.ts_ns)
        .filter(|ts| samples.iter().all(|s| s.ts_ns == *ts));
    let mut batch = v0_2::types::Batch {
        added: table.since(seen).map(convert::to_channel).collect(),
        timestamp_ns: shared,
        readings: Vec::new(),
        floats: FloatColumns {
            channels: Vec::new(),
            values: Vec::new(),
        },
        ints: IntColumns {
            channels: Vec::new(),
            values: Vec::new(),
        },
    };
    for s in samples {
        match (s.value, shared.is_some() && s.quality == Quality::Good) {
            (Value::Float(v), true) => {
                batch.floats.channels.push(s.channel);
                batch.floats.values.push(v);
            }
            (Value::Int(v), true) => {
                batch.ints.channels.push(s.channel);
                batch.ints.values.push(v);
            }
            (value, _) => batch.readings.push(Reading {
                channel: s.channel,
                timestamp_ns: if shared.is_some() {
                    None
                } else {
                    Some(s.ts_ns)
                },
                value: v2::to_value(value),
                quality: v2::to_quality(s.quality),
            }),
        }
    }
    batch
}
