//! The live status file: what `ferrule top` shows, written by the running
//! gateway every `[runtime] status_interval_ms` (1 s by default) and read
//! by anyone allowed to read the file. No socket is opened for it.
//!
//! The file is replaced whole (written beside it, then renamed), so a
//! reader never sees half of one. It holds a telemetry [`Snapshot`], the
//! queue's figures, and each driver's last captured batch — unless the
//! queue is encrypted at rest and the file is on a disk rather than in
//! RAM: then readings' values are left out and `values_withheld` says why
//! (the .deb puts it in /run/ferrule, a RAM file system).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Collector, Live, Snapshot};
use crate::publish::PublisherStats;
use crate::queue::Queue;

/// The largest status file a reader takes.
pub const MAX_STATUS_BYTES: u64 = 16 << 20;

/// A driver's last batch is kept for the status only up to this size
/// (encoded); a larger one shows as too large.
pub const MAX_BATCH_SHOWN: usize = 64 << 10;

/// The schema of [`LiveStatus`]; a reader refuses a newer one.
pub const STATUS_SCHEMA: u32 = 1;

/// One status file.
#[derive(Debug, Serialize, Deserialize)]
pub struct LiveStatus {
    /// [`STATUS_SCHEMA`].
    pub schema: u32,
    /// The gateway's process.
    pub pid: u32,
    /// How often the file is rewritten.
    pub interval_ms: u64,
    /// True in the last file a gateway wrote as it stopped.
    pub stopped: bool,
    /// Figures as telemetry reports them.
    pub snapshot: Snapshot,
    /// Each driver's last batch, in `snapshot.drivers` order.
    pub last: Vec<LastBatch>,
    /// Why readings' values are not in this file, when they are not.
    pub values_withheld: Option<String>,
}

/// A driver's last captured batch (after its processors).
#[derive(Debug, Serialize, Deserialize)]
pub struct LastBatch {
    /// The driver.
    pub driver: String,
    /// `{"driver":…,"captured_ns":…,"readings":[…]}` as queued; absent
    /// before the first batch, when it was over [`MAX_BATCH_SHOWN`], or
    /// when values are withheld.
    pub batch: Option<Box<RawValue>>,
    /// The batch was over [`MAX_BATCH_SHOWN`], or over what was left of
    /// the file's budget for batches (half of [`MAX_STATUS_BYTES`]).
    pub too_large: bool,
}

/// Why values may not be written to `path` for a gateway whose queue is
/// encrypted (`encrypted`): the file would keep them in plaintext on disk.
/// None when they may (no encryption, or the file is in RAM).
pub fn withhold_reason(path: &Path, encrypted: bool) -> Option<String> {
    if !encrypted || in_ram(path.parent().unwrap_or(Path::new("."))) {
        return None;
    }
    Some(format!(
        "the queue is encrypted at rest and {} is on disk: readings' values are left out of it; point [runtime] status_file at a RAM file system (e.g. /run/ferrule/status.json)",
        path.display()
    ))
}

/// Whether `dir` is on tmpfs or ramfs.
fn in_ram(dir: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        const RAMFS_MAGIC: i64 = 0x8584_58f6;
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: statfs writes only the zeroed plain-data struct it is
        // given; the path is a NUL-terminated string that outlives the call.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 {
            return false;
        }
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        let kind = i64::from(fs.f_type as i64);
        kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        false
    }
}

/// Shared by the status writer and erasure, so an erasure's data never
/// reaches the status file: erasure forgets every driver's last batch and
/// removes the file under the lock; a status collected before that is
/// written without its batches.
#[derive(Debug, Default)]
pub struct Gate {
    lock: std::sync::Mutex<()>,
    generation: std::sync::atomic::AtomicU64,
}

impl Gate {
    /// Forgets every driver's last batch (they refill at their next poll)
    /// and removes the status file at `path` (rewritten within one
    /// interval, without what was erased).
    pub fn forget(
        &self,
        path: &Path,
        live: Option<&std::sync::Mutex<Live>>,
    ) -> std::io::Result<()> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(live) = live {
            let live = live.lock().unwrap_or_else(|e| e.into_inner());
            for (_, counters) in &live.drivers {
                *counters
                    .last_batch
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What the status task needs.
pub struct StatusWriter {
    /// Takes the samples (a collector of its own: CPU use is measured
    /// between this task's samples).
    pub collector: Collector,
    /// The file.
    pub path: PathBuf,
    /// Time between files.
    pub interval: Duration,
    /// The running drivers and config.
    pub live: Arc<std::sync::Mutex<Live>>,
    /// The publisher's counters.
    pub publisher: Arc<PublisherStats>,
    /// The data queue.
    pub data: Queue,
    /// Set when values may not be written (see [`withhold_reason`]).
    pub withhold: Option<String>,
    /// The last write failed (logged once until one succeeds).
    pub failing: bool,
    /// Shared with erasure.
    pub gate: Arc<Gate>,
}

impl StatusWriter {
    fn status(&mut self, stopped: bool) -> LiveStatus {
        let (snapshot, drivers) =
            super::snapshot_of(&mut self.collector, &self.live, &self.publisher, &self.data);
        // The batches together stay under half the file's bound, so a
        // gateway with many drivers still writes a file readers take.
        let mut budget = MAX_STATUS_BYTES as usize / 2;
        let last = drivers
            .iter()
            .map(|(name, counters)| {
                let mut kept = counters
                    .last_batch
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if let Some(Some(json)) = &kept {
                    match budget.checked_sub(json.len()) {
                        Some(left) => budget = left,
                        None => kept = Some(None),
                    }
                }
                let too_large = kept.as_ref().is_some_and(|b| b.is_none());
                let batch = match (&self.withhold, kept.flatten()) {
                    (None, Some(json)) => std::str::from_utf8(&json)
                        .ok()
                        .and_then(|s| RawValue::from_string(s.to_string()).ok()),
                    _ => None,
                };
                LastBatch {
                    driver: name.clone(),
                    batch,
                    too_large,
                }
            })
            .collect();
        LiveStatus {
            schema: STATUS_SCHEMA,
            pid: std::process::id(),
            interval_ms: u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX),
            stopped,
            snapshot,
            last,
            values_withheld: self.withhold.clone(),
        }
    }

    async fn write(&mut self, stopped: bool) {
        let generation = self.gate.generation();
        let mut status = self.status(stopped);
        let path = self.path.clone();
        let gate = self.gate.clone();
        let written = tokio::task::spawn_blocking(move || {
            let _held = gate.lock.lock().unwrap_or_else(|e| e.into_inner());
            if gate.generation() != generation {
                // An erasure came between collecting and writing.
                for last in &mut status.last {
                    last.batch = None;
                }
            }
            write_file(&path, &status)
        })
        .await;
        match written.map_err(std::io::Error::other) {
            Ok(Err(e)) | Err(e) => {
                // Said once per run of failures, not every second.
                if !self.failing {
                    tracing::warn!(file = %self.path.display(), error = %e, "live status not written (`ferrule top` shows nothing new until it is)");
                }
                self.failing = true;
            }
            Ok(Ok(())) => {
                if self.failing {
                    tracing::info!(file = %self.path.display(), "live status written again");
                }
                self.failing = false;
            }
        }
    }
}

/// Replaces `path` with `status`, readable by the gateway's user and group
/// only.
fn write_file(path: &Path, status: &LiveStatus) -> std::io::Result<()> {
    let json = serde_json::to_vec(status).map_err(std::io::Error::other)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".status-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o640))
        .tempfile_in(dir)?;
    std::io::Write::write_all(&mut file, &json)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Reads a status file, bounded by [`MAX_STATUS_BYTES`].
pub fn read(path: &Path) -> Result<LiveStatus, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_STATUS_BYTES + 1),
        &mut text,
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_STATUS_BYTES {
        return Err(format!(
            "{}: larger than {MAX_STATUS_BYTES} bytes",
            path.display()
        ));
    }
    let status: LiveStatus =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if status.schema > STATUS_SCHEMA {
        return Err(format!(
            "{}: status schema {} is newer than this ferrule reads ({STATUS_SCHEMA})",
            path.display(),
            status.schema
        ));
    }
    Ok(status)
}

/// Writes the status every interval until shutdown, then a last one that
/// says the gateway stopped.
pub async fn run(mut writer: StatusWriter, shutdown: tokio_util::sync::CancellationToken) {
    let mut ticker = tokio::time::interval(writer.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => writer.write(false).await,
            _ = shutdown.cancelled() => {
                writer.write(true).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Sources;

    #[test]
    fn values_are_withheld_only_for_an_encrypted_queue_on_disk() {
        let disk = tempfile::tempdir().unwrap();
        let file = disk.path().join("status.json");
        assert_eq!(withhold_reason(&file, false), None);
        let on_disk = !in_ram(disk.path());
        assert_eq!(withhold_reason(&file, true).is_some(), on_disk);
        if Path::new("/dev/shm").is_dir() {
            assert!(in_ram(Path::new("/dev/shm")));
            assert_eq!(
                withhold_reason(Path::new("/dev/shm/status.json"), true),
                None
            );
        }
    }

    #[test]
    fn a_status_file_round_trips_and_a_huge_or_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let mut collector = Collector::new("gw-1", dir.path());
        let publisher = PublisherStats::default();
        let snapshot = collector.collect(&Sources {
            drivers: &[],
            config: None,
            publisher: &publisher,
            queue: None,
        });
        let status = LiveStatus {
            schema: STATUS_SCHEMA,
            pid: 7,
            interval_ms: 1000,
            stopped: false,
            snapshot,
            last: vec![LastBatch {
                driver: "sim".into(),
                batch: Some(
                    RawValue::from_string(
                        r#"{"driver":"sim","captured_ns":1,"readings":[]}"#.into(),
                    )
                    .unwrap(),
                ),
                too_large: false,
            }],
            values_withheld: None,
        };
        write_file(&path, &status).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.pid, 7);
        assert_eq!(back.snapshot.gateway, "gw-1");
        assert!(
            back.last[0]
                .batch
                .as_ref()
                .unwrap()
                .get()
                .contains("captured_ns")
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o640);

        let mut newer = serde_json::to_value(&back).unwrap();
        newer["schema"] = serde_json::json!(STATUS_SCHEMA + 1);
        std::fs::write(&path, serde_json::to_vec(&newer).unwrap()).unwrap();
        assert!(read(&path).unwrap_err().contains("newer"));

        let huge = std::fs::File::create(&path).unwrap();
        huge.set_len(MAX_STATUS_BYTES + 1).unwrap();
        assert!(read(&path).unwrap_err().contains("larger than"));
    }
}
