//! Self-telemetry: what the gateway reports about itself and the devices it
//! talks to, as one [`Snapshot`] (schema in docs/telemetry.md).
//!
//! [`Collector`] builds snapshots from the runtime's own counters (drivers,
//! publisher, queue) and the operating system's figures (through sysinfo:
//! process CPU and memory, load, memory, free disk for the data directory,
//! CPU temperature where the OS exposes one).

pub mod history;
pub mod status;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::pipeline::DriverCounters;
use crate::publish::PublisherStats;
use crate::queue::{Entry, Queue, QueueStats};
use crate::reading::now_ms;

/// The schema version of [`Snapshot`]; grows when fields change meaning.
pub const SCHEMA: u32 = 1;

/// One telemetry sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The snapshot format's version ([`SCHEMA`]).
    pub schema: u32,
    /// The gateway's id.
    pub gateway: String,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The software that took it.
    pub software: Software,
    /// Seconds since the gateway started.
    pub uptime_s: u64,
    /// The gateway process's own use of the machine.
    pub process: ProcessFigures,
    /// The machine's figures.
    pub system: SystemFigures,
    /// One entry per driver, in config order.
    pub drivers: Vec<DriverFigures>,
    /// The broker link.
    pub publisher: PublisherFigures,
    /// The data queue.
    pub queue: QueueFigures,
    /// Drivers left out of this snapshot (the last ones) because even
    /// trimmed it was over `telemetry.max_snapshot_bytes`.
    #[serde(default)]
    pub drivers_omitted: u64,
    /// Telemetry's own bounds.
    #[serde(default)]
    pub telemetry: TelemetryFigures,
    /// The config the gateway runs.
    #[serde(default)]
    pub config: Option<ConfigFigures>,
    /// Commands from the cloud since start.
    #[serde(default)]
    pub commands: CommandFigures,
}

/// What came of the commands from the cloud since the gateway started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandFigures {
    /// Written to the device.
    pub accepted: u64,
    /// Refused by the gateway before the driver was asked.
    pub refused: u64,
    /// Failed in the driver or the device.
    pub failed: u64,
    /// The refused, by refusal code (`not-writable`, `replay`, …).
    #[serde(default)]
    pub refused_by: std::collections::BTreeMap<String, u64>,
}

/// Which config a gateway runs, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFigures {
    /// The config file.
    pub file: String,
    /// SHA-256 of its text, hex.
    pub sha256: String,
    /// When it was loaded, in milliseconds since the Unix epoch.
    pub loaded_ms: u64,
    /// Drivers of the config that do not run because their plugins could
    /// not be loaded (refused by `[trust]`, missing, not a plugin).
    #[serde(default)]
    pub not_started: Vec<NotStarted>,
    /// The last reload asked for since start, and what came of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadFigures>,
}

/// What one reload (SIGHUP or `ferrule reload`) did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadFigures {
    /// When it was asked for, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// How long validating and applying it took.
    pub took_ms: u64,
    /// Whether it was applied; when not, nothing changed.
    pub ok: bool,
    /// SHA-256 of the config text it read, hex (empty if unreadable).
    #[serde(default)]
    pub sha256: String,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Drivers it started.
    #[serde(default)]
    pub started: Vec<String>,
    /// Drivers it stopped (their last batches committed).
    #[serde(default)]
    pub stopped: Vec<String>,
    /// Drivers it replaced by a new instance.
    #[serde(default)]
    pub replaced: Vec<String>,
    /// Drivers it left running untouched.
    #[serde(default)]
    pub unchanged: Vec<String>,
    /// Sections that changed but take effect only at the next start.
    #[serde(default)]
    pub pending_restart: Vec<String>,
}

/// A configured driver that does not run, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotStarted {
    /// The driver's name in the config.
    pub name: String,
    /// Why, as logged.
    pub error: String,
}

/// What telemetry trimmed and dropped to stay within its budgets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetryFigures {
    /// Parts trimmed or left out of this snapshot to fit
    /// `max_snapshot_bytes` (0 when it fitted whole).
    pub trimmed: u64,
    /// Parts trimmed or left out since the gateway started.
    pub trimmed_total: u64,
    /// The local history's size and its drops under `max_history_bytes`.
    pub history: history::HistoryFigures,
}

/// The software a snapshot was taken by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Software {
    /// `ferrule`.
    pub name: String,
    /// The release, from the package version.
    pub version: String,
    /// The commit it was built from.
    #[serde(default)]
    pub build: String,
    /// `{arch}-{os}`.
    pub target: String,
    /// `release` or `debug`.
    pub profile: String,
}

/// The gateway process's use of CPU and memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessFigures {
    /// CPU used by the gateway process since the previous sample, in
    /// percent of one core (0 in the first sample).
    pub cpu_percent: f32,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
    /// Times a thread of the process gave up the CPU to wait (a hand-over
    /// between threads, an fsync, an idle wait), since it started.
    #[serde(default)]
    pub voluntary_context_switches: u64,
    /// Times a thread of the process was preempted, since it started.
    #[serde(default)]
    pub involuntary_context_switches: u64,
}

/// The machine's load, memory, disk, temperature and network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemFigures {
    /// Load average over 1 minute.
    pub load_1: f64,
    /// Load average over 5 minutes.
    pub load_5: f64,
    /// Load average over 15 minutes.
    pub load_15: f64,
    /// Physical memory.
    pub memory_total_bytes: u64,
    /// Memory available to new work (free plus reclaimable).
    pub memory_available_bytes: u64,
    /// Free space on the file system holding the data directory.
    pub data_dir_free_bytes: Option<u64>,
    /// The hottest CPU sensor, where the OS exposes one.
    pub cpu_temperature_c: Option<f32>,
    /// Bytes received and sent by the machine's network interfaces
    /// (loopback excluded) since they came up: the real bandwidth used,
    /// TLS and TCP included, by the gateway and anything else on it.
    #[serde(default)]
    pub network_rx_bytes: u64,
    /// Bytes sent, counted like `network_rx_bytes`.
    #[serde(default)]
    pub network_tx_bytes: u64,
}

/// A driver's counters since the gateway started, and its device's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverFigures {
    /// The driver's name in the config.
    pub name: String,
    /// Polls that returned (with or without readings).
    pub polls_ok: u64,
    /// Polls that failed: an error returned, a trap, a timeout, refused output.
    pub polls_failed: u64,
    /// Readings captured into the queue.
    pub readings: u64,
    /// Batches committed to the queue.
    pub batches_queued: u64,
    /// Times the plugin instances were rebuilt.
    pub restarts: u64,
    /// WASM linear memory held by the driver and its processors.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Calls of the driver or its processors whose output went past a
    /// limit (refused, the instance rebuilt).
    #[serde(default)]
    pub outputs_refused: u64,
    /// Readings left out: empty channel name, control characters in it, or
    /// a second reading of a channel at the same timestamp in one batch.
    #[serde(default)]
    pub readings_rejected: u64,
    /// Readings kept with quality `bad` for a timestamp outside 2000–2200.
    #[serde(default)]
    pub timestamps_flagged: u64,
    /// Device status fields (battery, signal) reported as absent for a
    /// value outside 0–100.
    #[serde(default)]
    pub status_fields_rejected: u64,
    /// Channel declarations refused (an empty or control-character name,
    /// one declared twice by a stage, a string past `max_value_bytes`).
    #[serde(default)]
    pub channels_refused: u64,
    /// Channels in the driver's channel table (declared or learned).
    #[serde(default)]
    pub channels: u64,
    /// Files, directories and sockets the driver and its processors hold open.
    #[serde(default)]
    pub open_files: u64,
    /// Opens refused at `max_open_files`, ever.
    #[serde(default)]
    pub open_refused: u64,
    /// Bytes in the driver's and its processors' data dirs.
    #[serde(default)]
    pub data_dir_bytes: u64,
    /// Writes refused by the data dir quota, ever.
    #[serde(default)]
    pub quota_refused: u64,
    /// The last failure, as logged.
    pub last_error: Option<String>,
    /// What the driver last said about its device.
    pub device: Option<DeviceFigures>,
    /// The driver's processor chain, in order.
    #[serde(default)]
    pub processors: Vec<ProcessorFigures>,
    /// The driver's plugin: file, ABI, hash, signer, signed identity.
    #[serde(default)]
    pub plugin: Option<PluginFigures>,
}

/// Which plugin file an instance runs, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginFigures {
    /// The plugin file, as configured (resolved).
    pub file: String,
    /// `ferrule:plugin@0.2.0` or `ferrule:plugin@0.1.0`.
    pub abi: String,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// The id of the trusted key that signed it; absent when unverified.
    pub signer: Option<String>,
    /// The signed plugin name, if the plugin carries one.
    pub name: Option<String>,
    /// The signed plugin version, if the plugin carries one.
    pub version: Option<String>,
}

impl PluginFigures {
    /// The figures of a plugin loaded from `file` with `abi`.
    pub fn of(
        file: &std::path::Path,
        abi: crate::plugin::Abi,
        provenance: &crate::plugin::trust::Provenance,
    ) -> PluginFigures {
        let identity = provenance.identity.as_ref();
        PluginFigures {
            file: file.display().to_string(),
            abi: abi.to_string(),
            sha256: provenance.sha256.clone(),
            signer: provenance.signer.clone(),
            name: identity.map(|i| i.name.clone()),
            version: identity.map(|i| i.version.to_string()),
        }
    }
}

/// A processor's counters since the gateway started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessorFigures {
    /// `{driver}/{processor}`.
    pub name: String,
    /// Batches handed to it.
    pub batches_in: u64,
    /// Batches it returned with readings in them.
    pub batches_out: u64,
    /// Calls that failed.
    pub errors: u64,
    /// The processor's plugin.
    #[serde(default)]
    pub plugin: Option<PluginFigures>,
}

/// What a driver last said about its device (its `status()`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceFigures {
    /// Whether the driver reaches its device.
    pub connected: bool,
    /// The device's firmware version, if it reports one.
    pub firmware: Option<String>,
    /// Battery charge, 0 to 100.
    pub battery_percent: Option<u8>,
    /// Link or communication quality, 0 to 100.
    pub signal_quality: Option<u8>,
    /// Further device-specific figures.
    pub extra: BTreeMap<String, String>,
    /// `extra` pairs left out of this snapshot to fit its size budget.
    #[serde(default)]
    pub extra_omitted: u64,
}

/// The publisher's last connection failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureFigures {
    /// `tls`, `authorization` or `network`.
    pub kind: String,
    /// What failed, as logged.
    pub message: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// The broker link's state and counters since the gateway started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublisherFigures {
    /// Whether the link is up now.
    pub connected: bool,
    /// Connections that reached CONNACK.
    pub connects: u64,
    /// Failed attempts and lost connections.
    pub failures: u64,
    /// The last of those failures.
    pub last_failure: Option<FailureFigures>,
    /// Messages the broker acknowledged.
    pub messages_acked: u64,
    /// Their payload bytes.
    pub payload_bytes_acked: u64,
    /// The same messages as MQTT packets (before TLS).
    #[serde(default)]
    pub mqtt_bytes_acked: u64,
    /// Queue entries deleted after every part was acknowledged.
    pub entries_delivered: u64,
    /// Entries sent in parts (larger than a packet).
    pub entries_split: u64,
    /// Readings left out, too large for any packet alone.
    pub readings_too_large: u64,
    /// Messages an MQTT 5 broker refused (kept and sent again).
    pub messages_refused: u64,
    /// How long the last connection took to CONNACK.
    pub last_connect_ms: f64,
    /// Days until this gateway's client certificate expires (negative once
    /// it has), when it has one.
    #[serde(default)]
    pub client_cert_days_left: Option<f64>,
}

/// The data queue's depth and drops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueFigures {
    /// Entries waiting to be delivered.
    pub depth: u64,
    /// Their stored size.
    pub bytes: u64,
    /// Age of the oldest entry still queued.
    pub oldest_age_s: Option<f64>,
    /// Entries dropped by `max_bytes` under `drop-oldest`.
    pub dropped_cap: u64,
    /// Entries dropped by `max_age_s`.
    pub dropped_age: u64,
}

/// What a reload changes: the drivers reported on and the config they
/// came from. The gateway updates it; each snapshot reads it.
#[derive(Default)]
pub struct Live {
    /// Every running driver's counters, by name, in config order.
    pub drivers: Vec<(String, Arc<DriverCounters>)>,
    /// The config running, and the last reload.
    pub config: Option<ConfigFigures>,
    /// The command router's counts.
    pub commands: Arc<crate::remote::CommandCounters>,
}

/// Where a snapshot's figures come from.
pub struct Sources<'a> {
    /// Every driver's counters, by name.
    pub drivers: &'a [(String, Arc<DriverCounters>)],
    /// The config running.
    pub config: Option<&'a ConfigFigures>,
    /// The publisher's counters.
    pub publisher: &'a PublisherStats,
    /// The data queue's figures, when they could be read.
    pub queue: Option<QueueStats>,
}

/// Builds snapshots; keeps the OS handles between samples (CPU use is
/// measured from one sample to the next).
pub struct Collector {
    gateway: String,
    data_dir: PathBuf,
    started: Instant,
    system: sysinfo::System,
    pid: Option<sysinfo::Pid>,
}

impl Collector {
    /// A collector for `gateway`, reporting free space where `data_dir` lives.
    pub fn new(gateway: &str, data_dir: &Path) -> Collector {
        Collector {
            gateway: gateway.to_string(),
            data_dir: data_dir.to_path_buf(),
            started: Instant::now(),
            system: sysinfo::System::new(),
            pid: sysinfo::get_current_pid().ok(),
        }
    }

    /// A snapshot of everything now.
    pub fn collect(&mut self, sources: &Sources<'_>) -> Snapshot {
        let now = now_ms();
        Snapshot {
            schema: SCHEMA,
            gateway: self.gateway.clone(),
            ts_ms: now,
            software: Software {
                name: env!("CARGO_PKG_NAME").to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                build: env!("FERRULE_BUILD").to_string(),
                target: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
                profile: if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                }
                .to_string(),
            },
            uptime_s: self.started.elapsed().as_secs(),
            process: self.process(),
            system: self.system_figures(),
            drivers: sources.drivers.iter().map(driver_figures).collect(),
            publisher: publisher_figures(sources.publisher),
            queue: queue_figures(sources.queue.as_ref(), now),
            drivers_omitted: 0,
            telemetry: TelemetryFigures::default(),
            config: sources.config.cloned(),
            commands: CommandFigures::default(),
        }
    }

    fn process(&mut self) -> ProcessFigures {
        let (voluntary_context_switches, involuntary_context_switches) = context_switches();
        let Some(pid) = self.pid else {
            return ProcessFigures {
                cpu_percent: 0.0,
                rss_bytes: 0,
                voluntary_context_switches,
                involuntary_context_switches,
            };
        };
        self.system.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::Some(&[pid]),
            true,
            sysinfo::ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory(),
        );
        match self.system.process(pid) {
            Some(p) => ProcessFigures {
                cpu_percent: p.cpu_usage(),
                rss_bytes: p.memory(),
                voluntary_context_switches,
                involuntary_context_switches,
            },
            None => ProcessFigures {
                cpu_percent: 0.0,
                rss_bytes: 0,
                voluntary_context_switches,
                involuntary_context_switches,
            },
        }
    }

    fn system_figures(&mut self) -> SystemFigures {
        self.system
            .refresh_memory_specifics(sysinfo::MemoryRefreshKind::nothing().with_ram());
        let load = sysinfo::System::load_average();
        let (rx, tx) = network_totals();
        SystemFigures {
            load_1: load.one,
            load_5: load.five,
            load_15: load.fifteen,
            memory_total_bytes: self.system.total_memory(),
            memory_available_bytes: self.system.available_memory(),
            data_dir_free_bytes: free_space(&self.data_dir),
            cpu_temperature_c: cpu_temperature(),
            network_rx_bytes: rx,
            network_tx_bytes: tx,
        }
    }
}

/// Free bytes on the mounted file system that holds `dir` (the mount point
/// that is the longest prefix of its path).
fn free_space(dir: &Path) -> Option<u64> {
    let dir = dir.canonicalize().ok()?;
    let disks = sysinfo::Disks::new_with_refreshed_list();
    disks
        .list()
        .iter()
        .filter(|d| dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(sysinfo::Disk::available_space)
}

/// Voluntary and involuntary context switches of the whole process since
/// it started (`getrusage`); zeros where the OS does not say.
fn context_switches() -> (u64, u64) {
    #[cfg(unix)]
    {
        // SAFETY: getrusage writes only the struct it is given, which is
        // plain data and zeroed first.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
            let n = |v: libc::c_long| u64::try_from(v).unwrap_or(0);
            return (n(usage.ru_nvcsw), n(usage.ru_nivcsw));
        }
    }
    (0, 0)
}

/// Total bytes (received, sent) of the non-loopback interfaces.
fn network_totals() -> (u64, u64) {
    let networks = sysinfo::Networks::new_with_refreshed_list();
    networks
        .list()
        .iter()
        .filter(|(name, _)| !name.starts_with("lo"))
        .fold((0, 0), |(rx, tx), (_, n)| {
            (
                rx.saturating_add(n.total_received()),
                tx.saturating_add(n.total_transmitted()),
            )
        })
}

/// The hottest sensor that looks like a CPU's, if the OS exposes any.
fn cpu_temperature() -> Option<f32> {
    let components = sysinfo::Components::new_with_refreshed_list();
    components
        .list()
        .iter()
        .filter(|c| {
            let label = c.label().to_ascii_lowercase();
            ["cpu", "core", "package", "k10temp", "coretemp", "soc"]
                .iter()
                .any(|k| label.contains(k))
        })
        .filter_map(sysinfo::Component::temperature)
        .filter(|t| t.is_finite())
        .reduce(f32::max)
}

fn driver_figures((name, c): &(String, Arc<DriverCounters>)) -> DriverFigures {
    fn lock<T: Clone>(m: &std::sync::Mutex<T>) -> T {
        m.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
    // Whole polls only: no poll is being counted while these are read.
    let _whole = c.consistent();
    let sum = |field: fn(&crate::plugin::BudgetCounters) -> &std::sync::atomic::AtomicU64| -> u64 {
        c.budgets
            .iter()
            .map(|b| field(b).load(Ordering::Relaxed))
            .sum()
    };
    let device: Option<crate::plugin::DeviceStatus> = lock(&c.device);
    DriverFigures {
        name: name.clone(),
        polls_ok: c.polls_ok.load(Ordering::Relaxed),
        polls_failed: c.polls_failed.load(Ordering::Relaxed),
        readings: c.readings.load(Ordering::Relaxed),
        batches_queued: c.batches_queued.load(Ordering::Relaxed),
        restarts: c.restarts.load(Ordering::Relaxed),
        memory_bytes: c.memory_bytes.load(Ordering::Relaxed),
        outputs_refused: c.outputs_refused.load(Ordering::Relaxed),
        readings_rejected: c.readings_rejected.load(Ordering::Relaxed),
        timestamps_flagged: c.timestamps_flagged.load(Ordering::Relaxed),
        status_fields_rejected: c.status_fields_rejected.load(Ordering::Relaxed),
        channels_refused: c.channels_refused.load(Ordering::Relaxed),
        channels: c.channels.load(Ordering::Relaxed),
        open_files: sum(|b| &b.open_files),
        open_refused: sum(|b| &b.open_refused),
        data_dir_bytes: sum(|b| &b.data_dir_bytes),
        quota_refused: sum(|b| &b.quota_refused),
        last_error: lock(&c.last_error),
        processors: c
            .processors
            .iter()
            .map(|p| ProcessorFigures {
                name: p.name.clone(),
                batches_in: p.batches_in.load(Ordering::Relaxed),
                batches_out: p.batches_out.load(Ordering::Relaxed),
                errors: p.errors.load(Ordering::Relaxed),
                plugin: p.plugin.clone(),
            })
            .collect(),
        plugin: c.plugin.clone(),
        device: device.map(|d| DeviceFigures {
            connected: d.connected,
            firmware: d.firmware,
            battery_percent: d.battery_percent,
            signal_quality: d.signal_quality,
            extra: d.extra.into_iter().collect(),
            extra_omitted: 0,
        }),
    }
}

fn publisher_figures(s: &PublisherStats) -> PublisherFigures {
    let last_failure = s
        .last_failure
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .map(|f| FailureFigures {
            kind: f.kind.to_string(),
            message: f.message,
            at_ms: f.at_ms,
        });
    let acked = *s
        .acked
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    PublisherFigures {
        connected: s.connected.load(Ordering::Relaxed),
        connects: s.connects.load(Ordering::Relaxed),
        failures: s.failures.load(Ordering::Relaxed),
        last_failure,
        messages_acked: acked.messages,
        payload_bytes_acked: acked.payload_bytes,
        mqtt_bytes_acked: acked.mqtt_bytes,
        entries_delivered: s.entries_delivered.load(Ordering::Relaxed),
        entries_split: s.entries_split.load(Ordering::Relaxed),
        readings_too_large: s.readings_too_large.load(Ordering::Relaxed),
        messages_refused: s.messages_refused.load(Ordering::Relaxed),
        last_connect_ms: s.last_connect_us.load(Ordering::Relaxed) as f64 / 1000.0,
        client_cert_days_left: match s.client_cert_not_after.load(Ordering::Relaxed) {
            0 => None,
            not_after => Some((not_after as f64 - now_ms() as f64 / 1000.0) / 86_400.0),
        },
    }
}

fn queue_figures(stats: Option<&QueueStats>, now_ms: u64) -> QueueFigures {
    let Some(q) = stats else {
        return QueueFigures {
            depth: 0,
            bytes: 0,
            oldest_age_s: None,
            dropped_cap: 0,
            dropped_age: 0,
        };
    };
    QueueFigures {
        depth: q.depth,
        bytes: q.bytes,
        oldest_age_s: q
            .oldest_captured_ns
            .map(|ns| (now_ms as f64 / 1e3 - ns as f64 / 1e9).max(0.0)),
        dropped_cap: q.dropped_cap,
        dropped_age: q.dropped_age,
    }
}

/// What the telemetry task needs: where the figures come from and the
/// queue lane snapshots go to.
pub struct Reporter {
    /// Takes the samples.
    pub collector: Collector,
    /// Time between snapshots.
    pub interval: std::time::Duration,
    /// The running drivers and config, as the last reload left them.
    pub live: Arc<std::sync::Mutex<Live>>,
    /// The publisher's counters.
    pub publisher: Arc<PublisherStats>,
    /// The data queue (its depth, age and drops are reported).
    pub data: Queue,
    /// The telemetry queue the publisher sends from.
    pub lane: Queue,
    /// Where snapshots and their hourly roll-ups are kept locally.
    pub history: Option<Arc<history::History>>,
    /// A snapshot's size budget, encoded.
    pub max_snapshot_bytes: usize,
    /// Parts trimmed since start.
    pub trimmed: u64,
}

/// Longest `last_error` or firmware string kept in a trimmed snapshot.
const TRIMMED_TEXT: usize = 256;

fn encoded_len<T: Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

/// Makes `snapshot` fit `max_bytes` when encoded, and says how many parts
/// it trimmed. The biggest drivers go first: their device status's
/// `extra` pairs are left out (`extra_omitted` says how many) and long
/// texts cut; if that is not enough, the last drivers are left out
/// (`drivers_omitted`). Everything else — the gateway's own figures, the
/// publisher and queue — is always kept.
pub fn fit(snapshot: &mut Snapshot, max_bytes: usize) -> u64 {
    let mut total = encoded_len(snapshot);
    if total <= max_bytes {
        return 0;
    }
    let mut trimmed = 0;
    let mut order: Vec<(usize, usize)> = snapshot
        .drivers
        .iter()
        .enumerate()
        .map(|(i, d)| (encoded_len(d), i))
        .collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    for (before, i) in order {
        let Some(d) = snapshot.drivers.get_mut(i) else {
            continue;
        };
        let mut changed = false;
        if let Some(device) = &mut d.device {
            if !device.extra.is_empty() {
                device.extra_omitted += device.extra.len() as u64;
                device.extra.clear();
                changed = true;
            }
            if let Some(f) = &mut device.firmware
                && f.len() > TRIMMED_TEXT
            {
                *f = crate::plugin::cut_text(std::mem::take(f), TRIMMED_TEXT);
                changed = true;
            }
        }
        if let Some(e) = &mut d.last_error
            && e.len() > TRIMMED_TEXT
        {
            *e = crate::plugin::cut_text(std::mem::take(e), TRIMMED_TEXT);
            changed = true;
        }
        if changed {
            trimmed += 1;
            total = total.saturating_sub(before) + encoded_len(&*d);
            if total <= max_bytes {
                return trimmed;
            }
        }
    }
    while total > max_bytes {
        let Some(d) = snapshot.drivers.pop() else {
            break;
        };
        // The driver and the comma before it.
        total = total.saturating_sub(encoded_len(&d) + 1);
        snapshot.drivers_omitted += 1;
        trimmed += 1;
    }
    trimmed
}

/// A snapshot of the running gateway now, and the drivers it was taken of
/// (as the last reload left them): what the reporter and the live status
/// both sample.
fn snapshot_of(
    collector: &mut Collector,
    live: &std::sync::Mutex<Live>,
    publisher: &PublisherStats,
    data: &Queue,
) -> (Snapshot, Vec<(String, Arc<DriverCounters>)>) {
    let queue = data.stats().ok();
    let (drivers, config, commands) = {
        let live = live.lock().unwrap_or_else(|e| e.into_inner());
        (
            live.drivers.clone(),
            live.config.clone(),
            live.commands.clone(),
        )
    };
    let mut snapshot = collector.collect(&Sources {
        drivers: &drivers,
        config: config.as_ref(),
        publisher,
        queue,
    });
    snapshot.commands = commands.figures();
    (snapshot, drivers)
}

impl Reporter {
    fn snapshot(&mut self) -> Snapshot {
        snapshot_of(&mut self.collector, &self.live, &self.publisher, &self.data).0
    }

    /// Captures a snapshot into the telemetry lane: durable, sent in order,
    /// backfilled after an outage like data.
    async fn capture(&mut self) {
        let mut snapshot = self.snapshot();
        let trimmed = fit(&mut snapshot, self.max_snapshot_bytes);
        if trimmed > 0 {
            self.trimmed += trimmed;
            tracing::warn!(
                trimmed,
                max_snapshot_bytes = self.max_snapshot_bytes,
                "telemetry snapshot over its size budget: parts trimmed"
            );
        }
        snapshot.telemetry = TelemetryFigures {
            trimmed,
            trimmed_total: self.trimmed,
            history: self
                .history
                .as_ref()
                .map(|h| h.figures())
                .unwrap_or_default(),
        };
        let json = match serde_json::to_string(&snapshot) {
            Ok(json) => json,
            Err(e) => {
                tracing::error!(error = %e, "telemetry snapshot not encoded");
                return;
            }
        };
        if let Some(h) = self.history.clone() {
            let sample = snapshot.clone();
            let stored = tokio::task::spawn_blocking(move || h.record(&sample)).await;
            match stored {
                Ok(Err(e)) => tracing::warn!(error = %e, "telemetry sample not kept"),
                Err(e) => tracing::warn!(error = %e, "telemetry sample not kept"),
                Ok(Ok(())) => {}
            }
        }
        if let Err(e) = self.lane.append_entry(Entry::Telemetry(json)).await {
            tracing::warn!(error = %e, "telemetry snapshot not captured");
        }
    }
}

/// Captures a snapshot every `interval` until shutdown, and a last one then
/// (sent at the next start if the link is already closing).
pub async fn run(mut reporter: Reporter, shutdown: tokio_util::sync::CancellationToken) {
    let mut ticker = tokio::time::interval(reporter.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the first snapshot comes one interval in.
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => reporter.capture().await,
            _ = shutdown.cancelled() => {
                reporter.capture().await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_carries_the_counters_and_the_systems_figures() {
        let sim = Arc::new(DriverCounters::default());
        sim.polls_ok.store(7, Ordering::Relaxed);
        sim.readings.store(28, Ordering::Relaxed);
        let plc = Arc::new(DriverCounters::default());
        plc.polls_failed.store(3, Ordering::Relaxed);
        *plc.last_error.lock().unwrap() = Some("timeout".into());
        *plc.device.lock().unwrap() = Some(crate::plugin::DeviceStatus {
            connected: false,
            firmware: Some("1.2".into()),
            battery_percent: None,
            signal_quality: Some(40),
            extra: vec![("requests_ok".into(), "6".into())],
        });
        let publisher = PublisherStats::default();
        publisher.acked.lock().unwrap().messages = 5;
        publisher.last_connect_us.store(2_500, Ordering::Relaxed);
        let drivers = vec![("sim".to_string(), sim), ("plc".to_string(), plc)];
        let dir = tempfile::tempdir().unwrap();
        let mut collector = Collector::new("gw-1", dir.path());
        let queue = QueueStats {
            depth: 4,
            bytes: 400,
            next_seq: 9,
            oldest_seq: Some(5),
            oldest_captured_ns: Some(1),
            dropped_cap: 1,
            dropped_age: 2,
            erased: 0,
            set_aside: 0,
        };
        let s = collector.collect(&Sources {
            drivers: &drivers,
            config: None,
            publisher: &publisher,
            queue: Some(queue),
        });
        assert_eq!(s.schema, SCHEMA);
        assert_eq!(s.gateway, "gw-1");
        assert_eq!(s.software.name, "ferrule");
        assert_eq!((s.drivers[0].polls_ok, s.drivers[0].readings), (7, 28));
        assert_eq!(s.drivers[1].polls_failed, 3);
        assert_eq!(s.drivers[1].last_error.as_deref(), Some("timeout"));
        let device = s.drivers[1].device.as_ref().unwrap();
        assert_eq!(device.signal_quality, Some(40));
        assert_eq!(device.extra["requests_ok"], "6");
        assert_eq!(s.publisher.messages_acked, 5);
        assert_eq!(s.publisher.last_connect_ms, 2.5);
        assert_eq!(
            (s.queue.depth, s.queue.dropped_cap, s.queue.dropped_age),
            (4, 1, 2)
        );
        assert!(s.queue.oldest_age_s.unwrap() > 1e9, "captured at the epoch");
        assert!(s.process.rss_bytes > 0, "this process's memory");
        assert!(s.system.memory_total_bytes > 0);
        assert!(
            s.system.data_dir_free_bytes.unwrap() > 0,
            "free space of the temp dir"
        );
        let json = serde_json::to_string(&s).unwrap();
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    fn snapshot_with(drivers: Vec<DriverFigures>) -> Snapshot {
        let mut collector = Collector::new("gw", std::path::Path::new("."));
        let publisher = PublisherStats::default();
        let mut s = collector.collect(&Sources {
            drivers: &[],
            config: None,
            publisher: &publisher,
            queue: None,
        });
        s.drivers = drivers;
        s
    }

    fn driver(name: &str, pairs: usize, value_len: usize) -> DriverFigures {
        let counters = Arc::new(DriverCounters::default());
        *counters.device.lock().unwrap() = Some(crate::plugin::DeviceStatus {
            connected: true,
            firmware: Some("f".repeat(value_len)),
            battery_percent: Some(90),
            signal_quality: None,
            extra: (0..pairs)
                .map(|i| (format!("k{i}"), "v".repeat(value_len)))
                .collect(),
        });
        *counters.last_error.lock().unwrap() = Some("e".repeat(value_len));
        driver_figures(&(name.to_string(), counters))
    }

    #[test]
    fn an_oversized_status_is_trimmed_with_markers_and_the_rest_still_fits() {
        let budget = 64 << 10;
        let mut s = snapshot_with(vec![
            driver("small", 2, 10),
            driver("huge", 64, 1024),
            driver("other", 2, 10),
        ]);
        assert!(encoded_len(&s) > budget);
        let trimmed = fit(&mut s, budget);
        assert_eq!(trimmed, 1);
        assert!(encoded_len(&s) <= budget);
        let names: Vec<&str> = s.drivers.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["small", "huge", "other"]);
        let huge = s.drivers[1].device.as_ref().unwrap();
        assert_eq!((huge.extra.len(), huge.extra_omitted), (0, 64));
        assert_eq!(huge.battery_percent, Some(90), "the small fields stay");
        assert!(s.drivers[1].last_error.as_ref().unwrap().len() < 300);
        assert_eq!(
            s.drivers[0].device.as_ref().unwrap().extra.len(),
            2,
            "untouched"
        );
        assert_eq!(s.drivers_omitted, 0);
        let back: Snapshot = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn too_many_drivers_for_the_budget_are_left_out_last_first_and_counted() {
        let budget = 8 << 10;
        let drivers = (0..100)
            .map(|i| driver(&format!("d{i:03}"), 1, 8))
            .collect();
        let mut s = snapshot_with(drivers);
        let trimmed = fit(&mut s, budget);
        assert!(encoded_len(&s) <= budget, "{}", encoded_len(&s));
        assert!(s.drivers_omitted > 50, "{}", s.drivers_omitted);
        assert_eq!(s.drivers.len() as u64 + s.drivers_omitted, 100);
        assert_eq!(s.drivers[0].name, "d000", "the first drivers stay");
        assert!(trimmed >= s.drivers_omitted);
    }
}
