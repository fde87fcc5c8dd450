//! The pipeline: one task per driver instance polls it on its interval,
//! runs the batch through the driver's processor chain, writes it as the
//! queue stores it (names and units from the chain's channel table, escaped
//! once per channel), and hands it to the queue. The driver polls again
//! while its last batches are being committed (at most [`CAPTURE_WINDOW`]
//! of them and [`CAPTURE_WINDOW_BYTES`]); a full window waits for the
//! oldest commit, and batches commit in poll order.
//!
//! The supervisor: a plugin instance that traps, overruns its deadline or
//! returns output beyond its limits — or a chain that cannot be started
//! (`init` failing) — is dropped and rebuilt in fresh stores after a
//! backoff that doubles from `runtime.restart_min_ms` to
//! `runtime.restart_max_ms` and resets after a good poll. Each driver task
//! owns its own instances, so one plugin's failures never stop other
//! drivers or the publisher. A poll or process call that returns an error
//! is logged and counted, and the driver is polled again on the next tick.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::remote;
use crate::telemetry::PluginFigures;

use crate::plugin::{
    BudgetCounters, ChannelTable, DriverInstance, LoadedDriver, LoadedProcessor, OutputChecked,
    OutputReview, PluginError, ProcessorInstance, Sandbox, dedupe_names,
};
use crate::queue::{Entry, Queue, QueueError, Submitted};
use crate::reading::{BatchWriter, PayloadFormat, PreparedBatch, now_ns};

/// A plugin ready to instantiate, with its instance name, sandbox and config.
#[derive(Clone)]
pub struct PluginSpec<L> {
    /// The instance name: `driver` or `driver/processor`.
    pub name: String,
    /// The compiled component.
    pub loaded: L,
    /// What the instance may use.
    pub sandbox: Sandbox,
    /// Its `[config]` table as JSON, passed to `init`.
    pub config_json: String,
}

/// Everything one driver task needs.
#[derive(Clone)]
pub struct DriverSpec {
    /// The driver plugin.
    pub driver: PluginSpec<LoadedDriver>,
    /// Its processors, in chain order.
    pub processors: Vec<PluginSpec<LoadedProcessor>>,
    /// Time between polls.
    pub interval: Duration,
    /// Restart backoff: first delay and cap.
    pub restart_min: Duration,
    /// Longest delay between rebuilds.
    pub restart_max: Duration,
    /// How its batches are written.
    pub format: PayloadFormat,
    /// What commands may write (`[driver.commands]`).
    pub commands: Arc<crate::remote::Policy>,
}

/// Counters of one driver's pipeline, for logs and telemetry.
#[derive(Debug, Default)]
pub struct DriverCounters {
    /// Polls that returned.
    pub polls_ok: AtomicU64,
    /// Polls that failed.
    pub polls_failed: AtomicU64,
    /// Readings captured.
    pub readings: AtomicU64,
    /// Batches committed to the queue.
    pub batches_queued: AtomicU64,
    /// Times the instances were rebuilt.
    pub restarts: AtomicU64,
    /// The most recent failure, for logs and telemetry.
    pub last_error: std::sync::Mutex<Option<String>>,
    /// What the driver last reported about its device.
    pub device: std::sync::Mutex<Option<crate::plugin::DeviceStatus>>,
    /// One per processor of the chain, in order.
    pub processors: Vec<ProcessorCounters>,
    /// WASM linear memory held by the driver and its processors.
    pub memory_bytes: AtomicU64,
    /// Calls whose output went past a limit (refused; the instance rebuilt).
    pub outputs_refused: AtomicU64,
    /// Readings left out for a bad channel name or a same-instant duplicate.
    pub readings_rejected: AtomicU64,
    /// Readings kept with quality `bad` for a timestamp outside 2000–2200.
    pub timestamps_flagged: AtomicU64,
    /// Device status fields reported as absent for a value outside 0–100.
    pub status_fields_rejected: AtomicU64,
    /// Channel declarations refused.
    pub channels_refused: AtomicU64,
    /// Channels in the chain's table after the last poll.
    pub channels: AtomicU64,
    /// The channels readings may be taken of, as of the last poll that
    /// changed the table: what a Sparkplug DBIRTH declares.
    pub declared: std::sync::Mutex<Arc<[crate::plugin::Channel]>>,
    /// Whether the driver reaches its device: [`AVAILABLE`] after a poll
    /// that succeeded, [`UNAVAILABLE`] after one that failed (or while the
    /// instances are rebuilt), 0 before the first poll.
    pub availability: std::sync::atomic::AtomicU8,
    /// Descriptor and data dir budgets of the driver and its processors.
    pub budgets: Vec<Arc<BudgetCounters>>,
    /// The driver's plugin file and where it came from.
    pub plugin: Option<PluginFigures>,
    /// The last batch captured, as queued (for the live status `ferrule
    /// top` shows): None before the first, `Some(None)` when it was over
    /// [`crate::telemetry::status::MAX_BATCH_SHOWN`].
    pub last_batch: std::sync::Mutex<Option<Option<Arc<[u8]>>>>,
    /// Held while a poll's figures are applied and while telemetry reads
    /// them, so a snapshot always sees whole polls.
    whole: std::sync::Mutex<()>,
}

/// [`DriverCounters::availability`] after a poll that succeeded.
pub const AVAILABLE: u8 = 1;
/// [`DriverCounters::availability`] after a poll that failed.
pub const UNAVAILABLE: u8 = 2;

/// What one poll did to each processor of the chain.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessorDelta {
    /// Batches handed to the processor.
    pub batches_in: u64,
    /// Batches it returned with readings.
    pub batches_out: u64,
    /// Calls that failed.
    pub errors: u64,
}

/// Counters of one processor in a driver's chain.
#[derive(Debug, Default)]
pub struct ProcessorCounters {
    /// The processor's instance name, `{driver}/{processor}`.
    pub name: String,
    /// Batches handed to it.
    pub batches_in: AtomicU64,
    /// Batches it returned with readings in them.
    pub batches_out: AtomicU64,
    /// Calls that failed (returned an error, trapped, timed out, oversized).
    pub errors: AtomicU64,
    /// Its plugin file and where it came from.
    pub plugin: Option<PluginFigures>,
}

impl DriverCounters {
    /// Keeps polls from being counted while held (see `whole`).
    pub fn consistent(&self) -> std::sync::MutexGuard<'_, ()> {
        self.whole
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counters for a driver and each processor of its chain.
    pub fn for_spec(spec: &DriverSpec) -> DriverCounters {
        DriverCounters {
            processors: spec
                .processors
                .iter()
                .map(|p| ProcessorCounters {
                    name: p.name.clone(),
                    plugin: Some(PluginFigures::of(
                        p.loaded.path(),
                        p.loaded.abi(),
                        p.loaded.provenance(),
                    )),
                    ..ProcessorCounters::default()
                })
                .collect(),
            plugin: Some(PluginFigures::of(
                spec.driver.loaded.path(),
                spec.driver.loaded.abi(),
                spec.driver.loaded.provenance(),
            )),
            budgets: std::iter::once(&spec.driver.sandbox)
                .chain(spec.processors.iter().map(|p| &p.sandbox))
                .map(|s| s.budget_counters.clone())
                .collect(),
            ..DriverCounters::default()
        }
    }

    fn failed(&self, error: &PluginError) {
        if matches!(error, PluginError::Oversized { .. }) {
            self.outputs_refused.fetch_add(1, Ordering::Relaxed);
        }
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error.to_string());
    }

    fn checked(&self, c: OutputChecked) {
        self.readings_rejected
            .fetch_add(c.readings_rejected, Ordering::Relaxed);
        self.timestamps_flagged
            .fetch_add(c.timestamps_flagged, Ordering::Relaxed);
        self.status_fields_rejected
            .fetch_add(c.status_fields_rejected, Ordering::Relaxed);
        self.channels_refused
            .fetch_add(c.channels_refused, Ordering::Relaxed);
    }
}

/// A driver instance with its processor chain and the channel table they
/// share.
pub struct Chain {
    driver: DriverInstance,
    processors: Vec<ProcessorInstance>,
    channels: ChannelTable,
    /// Readings the finished batch's checks rejected (two channels of one
    /// name at one instant).
    checked: OutputChecked,
    /// The driver's name as a JSON string, for every batch.
    driver_json: Vec<u8>,
    format: PayloadFormat,
}

impl DriverSpec {
    /// Instantiates the driver and its processors and runs each `init`.
    pub async fn start(&self) -> Result<Chain, PluginError> {
        let d = &self.driver;
        let limits = &d.sandbox.limits;
        let mut channels = ChannelTable::new(limits.max_channels, limits.max_value_bytes);
        let driver = d
            .loaded
            .start(&d.name, &d.sandbox, &d.config_json, &mut channels)
            .await?;
        let mut processors = Vec::with_capacity(self.processors.len());
        for (i, p) in self.processors.iter().enumerate() {
            let stage = i + 1;
            let started = p
                .loaded
                .start(&p.name, &p.sandbox, &p.config_json, &mut channels, stage);
            processors.push(started.await?);
        }
        Ok(Chain {
            driver,
            processors,
            channels,
            checked: OutputChecked::default(),
            driver_json: serde_json::to_vec(&d.name).unwrap_or_default(),
            format: self.format,
        })
    }
}

impl Chain {
    /// Writes a value to one of the driver's channels.
    pub async fn write(
        &mut self,
        channel: &str,
        value: crate::reading::Value,
    ) -> Result<(), PluginError> {
        self.driver.write(&self.channels, channel, value).await
    }

    /// The channel table the chain's stages share.
    pub fn channels(&self) -> &ChannelTable {
        &self.channels
    }

    /// Linear memory held by the chain's instances.
    pub fn memory_bytes(&self) -> u64 {
        let processors: usize = self
            .processors
            .iter()
            .map(ProcessorInstance::memory_bytes)
            .sum();
        (self.driver.memory_bytes() + processors) as u64
    }

    /// The driver's report on its device.
    pub async fn status(&mut self) -> Result<crate::plugin::DeviceStatus, PluginError> {
        self.driver.status().await
    }

    /// What the output checks did in the chain since the last call of this.
    pub fn take_checked(&mut self) -> OutputChecked {
        let mut all = std::mem::take(&mut self.checked);
        all.add(self.driver.take_checked());
        for p in &mut self.processors {
            all.add(p.take_checked());
        }
        all
    }

    /// Polls once and runs the chain; `Ok(None)` when the poll produced
    /// nothing. The batch comes written as the queue stores it: names and
    /// units from the channel table's prepared JSON.
    /// `deltas` (one per processor) records what the chain did.
    /// `read_back` gets, for each channel named in it, the value the
    /// driver read from that channel (before any processor).
    pub async fn poll_once(
        &mut self,
        driver: &str,
        deltas: &mut [ProcessorDelta],
        read_back: &mut [(String, Option<(crate::reading::Value, u64)>)],
    ) -> Result<Option<PreparedBatch>, PluginError> {
        let mut samples = self.driver.poll(&mut self.channels).await?;
        for (channel, got) in read_back.iter_mut() {
            if let Some((index, _)) = self.channels.driver_channel(channel) {
                *got = (samples.iter().rev())
                    .find(|s| s.channel == index)
                    .map(|s| (s.value.clone(), s.ts_ns));
            }
        }
        for (i, processor) in self.processors.iter_mut().enumerate() {
            if samples.is_empty() {
                break;
            }
            let mut unused = ProcessorDelta::default();
            let d = deltas.get_mut(i).unwrap_or(&mut unused);
            d.batches_in += 1;
            samples = match processor.process(&mut self.channels, samples).await {
                Ok(out) => out,
                Err(e) => {
                    d.errors += 1;
                    return Err(e);
                }
            };
            if !samples.is_empty() {
                d.batches_out += 1;
            }
        }
        if samples.is_empty() {
            return Ok(None);
        }
        let table = &self.channels;
        if table.has_shared_names() {
            let mut review = OutputReview::default();
            samples = dedupe_names(&mut review, table, samples);
            self.checked.add(review.finish(driver, "chain"));
        }
        let mut json = BatchWriter::new(self.format, &self.driver_json, now_ns(), samples.len());
        for s in &samples {
            if let Some(channel) = table.json(s.channel) {
                json.push(channel, s);
            }
        }
        Ok(Some(json.finish()))
    }
}

/// Polls one driver until `shutdown` turns true. `chain` is the instance
/// started at startup, or `None` if that failed (the task then rebuilds it
/// with backoff, like after a crash). Once stopped (shutdown, or a reload
/// that removes or replaces the driver), it waits for the batches it
/// handed over to be committed, so its last batch is durable before it ends.
pub async fn run_driver(
    spec: DriverSpec,
    chain: Option<Chain>,
    queue: Queue,
    counters: Arc<DriverCounters>,
    mut commands: mpsc::Receiver<remote::Write>,
    shutdown: CancellationToken,
) {
    // Batches handed to the queue whose commit is not confirmed yet.
    let mut window = Window::default();
    let driver = (&spec, &queue, &*counters);
    poll_until_stopped(driver, chain, &mut commands, &shutdown, &mut window).await;
    window.drain(&spec.driver.name, &counters).await;
    tracing::debug!(driver = %spec.driver.name, "driver stopped");
}

async fn poll_until_stopped(
    (spec, queue, counters): (&DriverSpec, &Queue, &DriverCounters),
    chain: Option<Chain>,
    commands: &mut mpsc::Receiver<remote::Write>,
    shutdown: &CancellationToken,
    window: &mut Window,
) {
    let name = spec.driver.name.clone();
    let mut chain = chain;
    let mut restarts = Backoff::new(spec.restart_min, spec.restart_max);
    // Whether the last poll succeeded; the device's status is logged when it changes.
    let mut last_ok: Option<bool> = None;
    let mut last_status = tokio::time::Instant::now();
    // Drivers on one interval poll together, so their batches share a
    // commit (one fsync) instead of paying one each.
    let mut ticker = tokio::time::interval_at(aligned_start(spec.interval), spec.interval);
    // Keep the configured cadence: a late tick does not shift the ones after it.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Channels written since the last poll, whose value the next poll
    // (at once, between ticks) sends back to the command.
    let mut read_backs: Vec<(String, oneshot::Sender<remote::ReadBack>)> = Vec::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = std::future::ready(()), if !read_backs.is_empty() && chain.is_some() => {}
            outcome = window.oldest(), if !window.is_empty() => {
                window.pop();
                record_commit(&name, counters, outcome);
                window.settle_ready(&name, counters);
                continue;
            }
            Some(write) = commands.recv() => {
                let outcome = match chain.as_mut() {
                    None => Err("the driver is restarting; try again shortly".to_string()),
                    Some(live) => match live.write(&write.channel, write.value).await {
                        Ok(()) => {
                            let (tx, rx) = oneshot::channel();
                            read_backs.push((write.channel, tx));
                            Ok(rx)
                        }
                        Err(e) => {
                            if e.instance_lost() {
                                counters.restarts.fetch_add(1, Ordering::Relaxed);
                                counters.failed(&e);
                                tracing::error!(driver = %name, error = %e, "plugin instance lost in write; rebuilding");
                                chain = None;
                            }
                            Err(e.to_string())
                        }
                    },
                };
                let _ = write.reply.send(outcome);
                continue;
            }
            _ = shutdown.cancelled() => return,
        }
        if shutdown.is_cancelled() {
            return;
        }
        let Some(live) = chain.as_mut() else {
            match spec.start().await {
                Ok(fresh) => {
                    tracing::info!(driver = %name, "plugin instances rebuilt");
                    chain = Some(fresh);
                    // A new instance: ask it about its device after its first poll.
                    last_ok = None;
                }
                Err(e) => {
                    counters.restarts.fetch_add(1, Ordering::Relaxed);
                    counters.failed(&e);
                    counters.availability.store(UNAVAILABLE, Ordering::Relaxed);
                    let delay = restarts.next_delay();
                    tracing::error!(driver = %name, error = %e, retry_in_ms = delay.as_millis() as u64, restarts = counters.restarts.load(Ordering::Relaxed), "cannot start plugin instances; retrying after backoff");
                    if sleep_or_shutdown(delay, shutdown).await {
                        return;
                    }
                }
            }
            continue;
        };
        // Until this poll's batch is handed over, a commit the queue is
        // lingering over waits for it (drivers polled together, one fsync).
        let expected = queue.expect();
        let mut deltas = vec![ProcessorDelta::default(); counters.processors.len()];
        let mut watched: Vec<_> = (read_backs.iter())
            .map(|(channel, _)| (channel.clone(), None))
            .collect();
        let polled = live.poll_once(&name, &mut deltas, &mut watched).await;
        for ((channel, reply), (_, got)) in read_backs.drain(..).zip(watched) {
            let read = match (&polled, got) {
                (_, Some((value, ts_ns))) => remote::ReadBack::Read { value, ts_ns },
                (Err(e), None) => {
                    remote::ReadBack::Unread(format!("the poll after the write failed: {e}"))
                }
                (Ok(_), None) => remote::ReadBack::Unread(format!(
                    "the poll after the write returned no value for channel {channel:?}"
                )),
            };
            let _ = reply.send(read);
        }
        {
            // The whole poll at once, as telemetry will see it.
            let _whole = counters.consistent();
            for (c, d) in counters.processors.iter().zip(&deltas) {
                c.batches_in.fetch_add(d.batches_in, Ordering::Relaxed);
                c.batches_out.fetch_add(d.batches_out, Ordering::Relaxed);
                c.errors.fetch_add(d.errors, Ordering::Relaxed);
            }
            counters.checked(live.take_checked());
            let table = live.channels();
            if counters
                .channels
                .swap(table.len() as u64, Ordering::Relaxed)
                != table.len() as u64
            {
                *counters
                    .declared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    table.usable_channels().into();
            }
            counters.availability.store(
                if polled.is_ok() {
                    AVAILABLE
                } else {
                    UNAVAILABLE
                },
                Ordering::Relaxed,
            );
            match &polled {
                Ok(Some(batch)) => {
                    counters.polls_ok.fetch_add(1, Ordering::Relaxed);
                    counters
                        .readings
                        .fetch_add(batch.readings as u64, Ordering::Relaxed);
                }
                Ok(None) => {
                    counters.polls_ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    counters.polls_failed.fetch_add(1, Ordering::Relaxed);
                    counters.failed(e);
                }
            }
        }
        counters
            .memory_bytes
            .store(live.memory_bytes(), Ordering::Relaxed);
        let ok = polled.is_ok();
        let mut polled = polled;
        if !polled.as_ref().is_err_and(PluginError::instance_lost) {
            let changed = last_ok != Some(ok);
            if changed || last_status.elapsed() >= STATUS_EVERY {
                last_ok = Some(ok);
                last_status = tokio::time::Instant::now();
                if let Err(e) = device_status(&name, live, counters, changed).await {
                    // A status beyond its limits costs the instance like any
                    // other output; the poll's batch is still captured first.
                    counters.failed(&e);
                    if let Ok(Some(batch)) = polled
                        && !capture(&name, queue, counters, window, batch, shutdown).await
                    {
                        return;
                    }
                    polled = Err(e);
                }
            }
        }
        match polled {
            Ok(Some(batch)) => {
                let captured = capture(&name, queue, counters, window, batch, shutdown).await;
                drop(expected);
                if !captured {
                    return;
                }
                restarts.reset();
            }
            Ok(None) => drop(expected),
            Err(e) => {
                drop(expected);
                if e.instance_lost() {
                    counters.restarts.fetch_add(1, Ordering::Relaxed);
                    let delay = restarts.next_delay();
                    tracing::error!(driver = %name, error = %e, restart_in_ms = delay.as_millis() as u64, restarts = counters.restarts.load(Ordering::Relaxed), "plugin instance lost; rebuilding");
                    chain = None;
                    if sleep_or_shutdown(delay, shutdown).await {
                        return;
                    }
                } else {
                    tracing::warn!(driver = %name, error = %e, "poll failed");
                }
            }
        }
    }
}

/// The first tick of a driver polled every `interval`: the last multiple
/// of `interval` since the process's first driver started (now or a moment
/// ago, so the first poll is at once), so that drivers on one interval (or
/// on multiples of it) poll in the same instant from then on, whenever each
/// was started.
fn aligned_start(interval: Duration) -> tokio::time::Instant {
    static BASE: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(tokio::time::Instant::now);
    let now = tokio::time::Instant::now();
    let period = interval.as_nanos().max(1);
    let since = now.duration_since(base).as_nanos();
    let periods = since / period;
    let offset = u64::try_from(periods.saturating_mul(period)).unwrap_or(u64::MAX);
    base + Duration::from_nanos(offset)
}

/// How long a stopping driver waits for the queue to take and commit the
/// batches it polled before the stop.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// How often a driver's `status()` is asked for telemetry, besides when
/// its polls start or stop failing.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Batches one driver may have handed to the queue before their commit is
/// confirmed: it polls again while they are written (each is still durable
/// before the publisher sees it, and they commit in order). A full window
/// waits for the oldest commit before the next batch goes in.
pub const CAPTURE_WINDOW: usize = 16;

/// Bytes of uncommitted batches one driver may have handed over; a batch
/// that would pass it waits for room, unless the window is empty (so a
/// driver returning large batches keeps one or two in flight, not 16).
pub const CAPTURE_WINDOW_BYTES: usize = 1 << 20;

/// A driver's batches handed to the queue whose commit is not confirmed yet.
#[derive(Debug, Default)]
struct Window {
    pending: VecDeque<(Submitted, usize)>,
    bytes: usize,
}

impl Window {
    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether a batch of `bytes` must wait for the oldest commit first.
    fn full_for(&self, bytes: usize) -> bool {
        !self.pending.is_empty()
            && (self.pending.len() >= CAPTURE_WINDOW
                || self.bytes.saturating_add(bytes) > CAPTURE_WINDOW_BYTES)
    }

    fn push(&mut self, submitted: Submitted, bytes: usize) {
        self.bytes += bytes;
        self.pending.push_back((submitted, bytes));
    }

    fn pop(&mut self) {
        if let Some((_, bytes)) = self.pending.pop_front() {
            self.bytes -= bytes;
        }
    }

    /// The commit outcome of the oldest batch (left in place: the caller
    /// pops it, so a cancelled wait loses nothing).
    async fn oldest(&mut self) -> Result<u64, QueueError> {
        match self.pending.front_mut() {
            Some((front, _)) => front.committed_mut().await,
            None => std::future::pending().await,
        }
    }

    /// Waits for every batch still in flight to be committed (at most
    /// [`STOP_GRACE`] each), counting each outcome.
    async fn drain(&mut self, driver: &str, counters: &DriverCounters) {
        while !self.is_empty() {
            match tokio::time::timeout(STOP_GRACE, self.oldest()).await {
                Ok(outcome) => {
                    self.pop();
                    record_commit(driver, counters, outcome);
                }
                Err(_) => {
                    // Handed over is not lost: the queue's writer commits
                    // them whatever happens to this task.
                    tracing::warn!(driver = %driver, batches = self.pending.len(), "stopped before the queue confirmed its last batches");
                    return;
                }
            }
        }
    }

    /// Counts the batches at the front whose commit is known.
    fn settle_ready(&mut self, driver: &str, counters: &DriverCounters) {
        while let Some(outcome) = self
            .pending
            .front_mut()
            .and_then(|(front, _)| front.try_committed())
        {
            self.pop();
            record_commit(driver, counters, outcome);
        }
    }
}

/// Hands a batch to the queue, first waiting for room in the window; false
/// when shutdown came first. Under `when_full = block` the hand-over waits
/// for space, and shutdown must still be able to stop the driver. Batches
/// already handed over are committed whatever happens to the driver.
async fn capture(
    driver: &str,
    queue: &Queue,
    counters: &DriverCounters,
    window: &mut Window,
    batch: PreparedBatch,
    shutdown: &CancellationToken,
) -> bool {
    let bytes = batch.json.len();
    // A batch polled before the stop is still handed over; only a hand-over
    // that waits longer than STOP_GRACE past the stop (a full queue under
    // `when_full = block`) gives up, logged with the readings it held.
    let readings = batch.readings;
    let gave_up = || {
        tracing::error!(driver = %driver, readings, "driver stopped while the full queue could not take its last batch: batch not captured");
        false
    };
    let give_up = async {
        shutdown.cancelled().await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::pin!(give_up);
    while window.full_for(bytes) {
        let outcome = tokio::select! {
            outcome = window.oldest() => outcome,
            _ = &mut give_up => return gave_up(),
        };
        window.pop();
        record_commit(driver, counters, outcome);
    }
    let shown = (batch.json.len() <= crate::telemetry::status::MAX_BATCH_SHOWN)
        .then(|| Arc::<[u8]>::from(batch.json.as_slice()));
    *counters
        .last_batch
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(shown);
    let submitted = tokio::select! {
        result = queue.submit_entry(Entry::Prepared(batch)) => result,
        _ = &mut give_up => return gave_up(),
    };
    match submitted {
        Ok(s) => window.push(s, bytes),
        Err(e) => tracing::error!(driver = %driver, error = %e, "batch not captured"),
    }
    window.settle_ready(driver, counters);
    true
}

fn record_commit(driver: &str, counters: &DriverCounters, outcome: Result<u64, QueueError>) {
    match outcome {
        Ok(seq) => {
            counters.batches_queued.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(driver = %driver, seq, "batch captured");
        }
        Err(e) => tracing::error!(driver = %driver, error = %e, "batch not captured"),
    }
}

/// Asks the driver about its device and stores the answer for telemetry;
/// logs it when `changed` (its polls started or stopped failing). An error
/// that costs the instance is returned; any other is logged.
async fn device_status(
    driver: &str,
    chain: &mut Chain,
    counters: &DriverCounters,
    changed: bool,
) -> Result<(), PluginError> {
    let status = chain.status().await;
    counters.checked(chain.take_checked());
    match status {
        Ok(s) => {
            if changed {
                let last_error = s
                    .extra
                    .iter()
                    .find(|(k, _)| k == "last_error")
                    .map_or("", |(_, v)| v.as_str());
                tracing::info!(
                    driver = %driver,
                    connected = s.connected,
                    signal_quality = ?s.signal_quality,
                    last_error = %last_error,
                    "device status"
                );
            }
            *counters
                .device
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(s);
            Ok(())
        }
        Err(e) if e.instance_lost() => Err(e),
        Err(e) if changed => {
            tracing::warn!(driver = %driver, error = %e, "device status unavailable");
            Ok(())
        }
        Err(e) => {
            tracing::debug!(driver = %driver, error = %e, "device status unavailable");
            Ok(())
        }
    }
}

/// Sleeps; true when shutdown was requested meanwhile.
async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => shutdown.is_cancelled(),
        _ = shutdown.cancelled() => true,
    }
}

#[cfg(test)]
mod tick_tests {
    use super::*;

    #[tokio::test]
    async fn drivers_started_apart_poll_at_once_and_then_together() {
        let hour = Duration::from_secs(3600);
        let first = aligned_start(hour);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let later = aligned_start(hour);
        let now = tokio::time::Instant::now();
        assert!(
            first <= now && later <= now,
            "the first poll is due at once"
        );
        assert_eq!(first, later, "then they tick on the same instants");
    }
}
