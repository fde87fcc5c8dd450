//! Local trend history: every snapshot kept raw for `raw_retention`, and
//! hourly roll-ups (min, average, max) of every numeric figure kept for
//! `trend_retention`, both in `{data_dir}/telemetry-history.redb`, rotated
//! at each sample. `ferrule telemetry show` and `ferrule status` read it
//! alongside the running gateway.
//!
//! # Bounds
//!
//! - **Bytes.** Besides the two retentions, what the history holds (raw
//!   snapshots' JSON plus the roll-up rows' keys and values) is capped at
//!   `max_bytes`. At each sample, over the cap, the oldest raw snapshots go
//!   first (the newest one stays), then the oldest hours of roll-ups; each
//!   drop is counted (`dropped.raw`, `dropped.hourly` in the `meta` table,
//!   updated in the same transaction) and shown in telemetry.
//! - **File size.** redb reuses the pages freed by those deletions, so the
//!   file levels off near the cap; a file found larger than twice the cap
//!   (plus a margin) — for instance one grown by an older version — is
//!   compacted at open and when a sample finds it so.
//!
//! Tests: `tests::*` below (retention, roll-ups, the cap and its counters,
//! compaction of an oversized file, a file written before the cap).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use redb::{
    Builder, ConcurrencyMode, Database, Durability, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition,
};

use super::Snapshot;

/// Raw snapshots (JSON) by time, ms since the epoch.
const RAW: TableDefinition<u64, &[u8]> = TableDefinition::new("raw");
/// Roll-ups by (hour start in ms, figure): (min, max, sum, count).
const HOURLY: TableDefinition<(u64, &str), (f64, f64, f64, u64)> = TableDefinition::new("hourly");
/// Running totals kept with the data they describe.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Bytes of the raw snapshots' JSON.
const RAW_BYTES: &str = "raw.bytes";
/// Bytes of the roll-up rows (key and value).
const HOURLY_BYTES: &str = "hourly.bytes";
const DROPPED_RAW: &str = "dropped.raw";
const DROPPED_HOURLY: &str = "dropped.hourly";
/// Raw snapshots and roll-up rows removed by their retention, ever.
const AGED_RAW: &str = "aged.raw";
const AGED_HOURLY: &str = "aged.hourly";

/// Bytes one roll-up row counts for: the hour, the figure's name and the
/// four numbers.
fn hourly_row_bytes(figure: &str) -> u64 {
    8 + figure.len() as u64 + 32
}

/// Slack allowed over twice the cap before the file is compacted.
const COMPACT_MARGIN: u64 = 4 << 20;

/// The redb page cache of the history file: it is written once a minute
/// and read by hand, so a small cache keeps the gateway's memory flat.
const CACHE_BYTES: usize = 2 << 20;

const HOUR_MS: u64 = 3_600_000;

/// Why the history could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: telemetry history: {message}")]
pub struct HistoryError {
    path: String,
    message: String,
}

/// One figure's roll-up over one hour.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RollUp {
    /// Start of the hour, in milliseconds since the Unix epoch.
    pub hour_ms: u64,
    /// Smallest value sampled in the hour.
    pub min: f64,
    /// Mean of the values sampled.
    pub avg: f64,
    /// Largest value sampled.
    pub max: f64,
    /// Samples taken in the hour.
    pub samples: u64,
}

/// The numeric figures of a snapshot, flattened to dotted names; drivers
/// are named by their name (`drivers.plc.polls_ok`).
pub fn figures(snapshot: &Snapshot) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(value) = serde_json::to_value(snapshot) else {
        return out;
    };
    flatten("", &value, &mut out);
    out
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, f64>) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        serde_json::Value::Number(n) => {
            if let Some(v) = n.as_f64() {
                out.insert(prefix.to_string(), v);
            }
        }
        serde_json::Value::Bool(b) => {
            out.insert(prefix.to_string(), if *b { 1.0 } else { 0.0 });
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                // Times and versions are not trends.
                if matches!(k.as_str(), "ts_ms" | "schema" | "at_ms") {
                    continue;
                }
                flatten(&join(k), v, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let name = item["name"]
                    .as_str()
                    .map_or_else(|| i.to_string(), str::to_string);
                flatten(&join(&name), item, out);
            }
        }
        _ => {}
    }
}

/// How much the history holds and has dropped to stay under its cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryFigures {
    /// Bytes held (raw snapshots plus roll-up rows), at most the cap.
    pub bytes: u64,
    /// Size of the file on disk.
    pub file_bytes: u64,
    /// Raw snapshots deleted early to stay under the cap, ever.
    pub dropped_raw: u64,
    /// Roll-up rows deleted early to stay under the cap, ever.
    pub dropped_hourly: u64,
}

/// The local telemetry history file: raw samples for `raw_retention`, hourly
/// roll-ups of every figure for `trend_retention`, both within `max_bytes`.
pub struct History {
    db: std::sync::Mutex<Database>,
    path: std::path::PathBuf,
    name: String,
    raw_retention: Duration,
    trend_retention: Duration,
    max_bytes: u64,
    figures: std::sync::Mutex<HistoryFigures>,
}

fn builder() -> Builder {
    let mut builder = Builder::new();
    builder.set_concurrency_mode(ConcurrencyMode::SingleWriter);
    builder.set_cache_size(CACHE_BYTES);
    builder
}

impl History {
    /// Opens (or creates) the history at `path` with its retentions and byte
    /// cap; a file over twice the cap is compacted.
    pub fn open(
        path: &Path,
        raw_retention: Duration,
        trend_retention: Duration,
        max_bytes: u64,
    ) -> Result<History, HistoryError> {
        let name = path.display().to_string();
        let db = builder().create(path).map_err(|e| HistoryError {
            path: name.clone(),
            message: e.to_string(),
        })?;
        let history = History {
            db: std::sync::Mutex::new(db),
            path: path.to_path_buf(),
            name,
            raw_retention,
            trend_retention,
            max_bytes: max_bytes.max(1),
            figures: std::sync::Mutex::new(HistoryFigures::default()),
        };
        history.count_if_uncounted()?;
        history.compact_if_oversized();
        Ok(history)
    }

    fn err(&self, e: impl std::fmt::Display) -> HistoryError {
        HistoryError {
            path: self.name.clone(),
            message: e.to_string(),
        }
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Database> {
        self.db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the history holds now and has dropped, as of the last sample.
    pub fn figures(&self) -> HistoryFigures {
        *self
            .figures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Files written before the byte totals existed get them counted once.
    fn count_if_uncounted(&self) -> Result<(), HistoryError> {
        let db = self.db();
        let txn = db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            if meta.get(RAW_BYTES).map_err(|e| self.err(e))?.is_none() {
                let raw = txn.open_table(RAW).map_err(|e| self.err(e))?;
                let mut raw_bytes = 0u64;
                for entry in raw.iter().map_err(|e| self.err(e))? {
                    let (_, json) = entry.map_err(|e| self.err(e))?;
                    raw_bytes += json.value().len() as u64;
                }
                let hourly = txn.open_table(HOURLY).map_err(|e| self.err(e))?;
                let mut hourly_bytes = 0u64;
                for entry in hourly.iter().map_err(|e| self.err(e))? {
                    let (key, _) = entry.map_err(|e| self.err(e))?;
                    hourly_bytes += hourly_row_bytes(key.value().1);
                }
                meta.insert(RAW_BYTES, raw_bytes).map_err(|e| self.err(e))?;
                meta.insert(HOURLY_BYTES, hourly_bytes)
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Compacts the file when it is over twice the cap plus a margin.
    fn compact_if_oversized(&self) {
        let before = self.file_bytes();
        if before
            <= self
                .max_bytes
                .saturating_mul(2)
                .saturating_add(COMPACT_MARGIN)
        {
            return;
        }
        let compacted = self.db().compact();
        let after = self.file_bytes();
        match compacted {
            Ok(_) => tracing::info!(
                history = %self.name,
                before_bytes = before,
                after_bytes = after,
                "telemetry history compacted"
            ),
            Err(e) => {
                tracing::warn!(history = %self.name, error = %e, "telemetry history not compacted")
            }
        }
        self.figures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .file_bytes = after;
    }

    /// Stores a snapshot, adds it to its hour's roll-ups, and deletes what
    /// has aged out or is over the byte cap.
    pub fn record(&self, snapshot: &Snapshot) -> Result<(), HistoryError> {
        let json = serde_json::to_vec(snapshot).map_err(|e| self.err(e))?;
        let now = snapshot.ts_ms;
        let hour = now - now % HOUR_MS;
        let figures = {
            let db = self.db();
            let mut txn = db.begin_write().map_err(|e| self.err(e))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| self.err(e))?;
            let figures = self.record_in(&txn, now, hour, &json, snapshot)?;
            txn.commit().map_err(|e| self.err(e))?;
            figures
        };
        *self
            .figures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = HistoryFigures {
            file_bytes: self.file_bytes(),
            ..figures
        };
        self.compact_if_oversized();
        Ok(())
    }

    /// Erases the raw snapshots and hourly roll-ups from before `before_ms`
    /// (all of them when `None`) by writing the file again without them
    /// (`{name}.rewrite`, then renamed over it), so they are in no file
    /// the gateway keeps. The number of rows erased.
    pub fn erase(&self, before_ms: Option<u64>) -> Result<u64, HistoryError> {
        let cutoff = before_ms.unwrap_or(u64::MAX);
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".rewrite");
        let target = self.path.with_file_name(name);
        let _ = std::fs::remove_file(&target);
        let mut db = self.db();
        let erased = (|| -> Result<(Database, u64), HistoryError> {
            let new = builder().create(&target).map_err(|e| self.err(e))?;
            let read = db.begin_read().map_err(|e| self.err(e))?;
            let mut txn = new.begin_write().map_err(|e| self.err(e))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| self.err(e))?;
            let mut erased = 0u64;
            {
                let mut raw = txn.open_table(RAW).map_err(|e| self.err(e))?;
                let mut hourly = txn.open_table(HOURLY).map_err(|e| self.err(e))?;
                let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
                if let Ok(old) = read.open_table(RAW) {
                    for row in old.iter().map_err(|e| self.err(e))? {
                        let (k, v) = row.map_err(|e| self.err(e))?;
                        if k.value() < cutoff {
                            erased += 1;
                        } else {
                            raw.insert(k.value(), v.value()).map_err(|e| self.err(e))?;
                        }
                    }
                }
                if let Ok(old) = read.open_table(HOURLY) {
                    for row in old.iter().map_err(|e| self.err(e))? {
                        let (k, v) = row.map_err(|e| self.err(e))?;
                        if k.value().0.saturating_add(HOUR_MS) <= cutoff {
                            erased += 1;
                        } else {
                            hourly
                                .insert(k.value(), v.value())
                                .map_err(|e| self.err(e))?;
                        }
                    }
                }
                if let Ok(old) = read.open_table(META) {
                    for key in [DROPPED_RAW, DROPPED_HOURLY, AGED_RAW, AGED_HOURLY] {
                        if let Some(v) = old.get(key).map_err(|e| self.err(e))? {
                            meta.insert(key, v.value()).map_err(|e| self.err(e))?;
                        }
                    }
                }
            }
            txn.commit().map_err(|e| self.err(e))?;
            Ok((new, erased))
        })();
        let (new, erased) = match erased {
            Ok(done) => done,
            Err(e) => {
                let _ = std::fs::remove_file(&target);
                return Err(e);
            }
        };
        std::fs::rename(&target, &self.path).map_err(|e| self.err(e))?;
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        *db = new;
        drop(db);
        self.count_if_uncounted()?;
        Ok(erased)
    }

    fn record_in(
        &self,
        txn: &redb::WriteTransaction,
        now: u64,
        hour: u64,
        json: &[u8],
        snapshot: &Snapshot,
    ) -> Result<HistoryFigures, HistoryError> {
        let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
        let get = |meta: &redb::Table<&str, u64>, key: &str| -> Result<u64, HistoryError> {
            Ok(meta
                .get(key)
                .map_err(|e| self.err(e))?
                .map_or(0, |v| v.value()))
        };
        let mut raw_bytes = get(&meta, RAW_BYTES)?;
        let mut hourly_bytes = get(&meta, HOURLY_BYTES)?;
        let mut dropped_raw = get(&meta, DROPPED_RAW)?;
        let mut dropped_hourly = get(&meta, DROPPED_HOURLY)?;

        let mut raw = txn.open_table(RAW).map_err(|e| self.err(e))?;
        if let Some(old) = raw
            .insert(now, json)
            .map_err(|e| self.err(e))?
            .map(|v| v.value().len() as u64)
        {
            raw_bytes = raw_bytes.saturating_sub(old);
        }
        raw_bytes += json.len() as u64;
        let raw_cut = now.saturating_sub(ms(self.raw_retention));
        let (mut aged, mut aged_rows) = (0u64, 0u64);
        raw.retain_in(..raw_cut, |_, v| {
            aged += v.len() as u64;
            aged_rows += 1;
            false
        })
        .map_err(|e| self.err(e))?;
        raw_bytes = raw_bytes.saturating_sub(aged);
        if aged_rows > 0 {
            let total = get(&meta, AGED_RAW)? + aged_rows;
            meta.insert(AGED_RAW, total).map_err(|e| self.err(e))?;
        }

        let mut hourly = txn.open_table(HOURLY).map_err(|e| self.err(e))?;
        for (figure, v) in figures(snapshot) {
            let key = (hour, figure.as_str());
            let next = match hourly.get(key).map_err(|e| self.err(e))? {
                Some(old) => {
                    let (min, max, sum, n) = old.value();
                    (min.min(v), max.max(v), sum + v, n + 1)
                }
                None => {
                    hourly_bytes += hourly_row_bytes(&figure);
                    (v, v, v, 1)
                }
            };
            hourly.insert(key, next).map_err(|e| self.err(e))?;
        }
        let trend_cut = now.saturating_sub(ms(self.trend_retention));
        let trend_cut_hour = trend_cut - trend_cut % HOUR_MS;
        let (mut aged, mut aged_rows) = (0u64, 0u64);
        hourly
            .retain_in(..(trend_cut_hour, ""), |k, _| {
                aged += hourly_row_bytes(k.1);
                aged_rows += 1;
                false
            })
            .map_err(|e| self.err(e))?;
        hourly_bytes = hourly_bytes.saturating_sub(aged);
        if aged_rows > 0 {
            let total = get(&meta, AGED_HOURLY)? + aged_rows;
            meta.insert(AGED_HOURLY, total).map_err(|e| self.err(e))?;
        }

        // Over the cap: oldest raw snapshots first (keeping the newest),
        // then the oldest roll-ups.
        while raw_bytes + hourly_bytes > self.max_bytes && raw.len().map_err(|e| self.err(e))? > 1 {
            let Some((_, v)) = raw.pop_first().map_err(|e| self.err(e))? else {
                break;
            };
            raw_bytes = raw_bytes.saturating_sub(v.value().len() as u64);
            dropped_raw += 1;
        }
        while raw_bytes + hourly_bytes > self.max_bytes {
            let Some((k, _)) = hourly.pop_first().map_err(|e| self.err(e))? else {
                break;
            };
            hourly_bytes = hourly_bytes.saturating_sub(hourly_row_bytes(k.value().1));
            dropped_hourly += 1;
        }
        meta.insert(RAW_BYTES, raw_bytes).map_err(|e| self.err(e))?;
        meta.insert(HOURLY_BYTES, hourly_bytes)
            .map_err(|e| self.err(e))?;
        meta.insert(DROPPED_RAW, dropped_raw)
            .map_err(|e| self.err(e))?;
        meta.insert(DROPPED_HOURLY, dropped_hourly)
            .map_err(|e| self.err(e))?;
        Ok(HistoryFigures {
            bytes: raw_bytes + hourly_bytes,
            file_bytes: 0,
            dropped_raw,
            dropped_hourly,
        })
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What the history holds, read without taking it from a running gateway.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stored {
    /// Raw snapshots, oldest first.
    pub raw: Vec<Snapshot>,
    /// Roll-ups per figure, oldest hour first.
    pub hourly: BTreeMap<String, Vec<RollUp>>,
    /// Raw snapshots removed by `raw_retention`, ever.
    pub aged_raw: u64,
    /// Roll-up rows removed by `trend_retention`, ever.
    pub aged_hourly: u64,
}

/// Reads the history file at `path`.
pub fn read(path: &Path) -> Result<Stored, HistoryError> {
    let err = |e: &dyn std::fmt::Display| HistoryError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let db = builder().open_read_only(path).map_err(|e| err(&e))?;
    let txn = db.begin_read().map_err(|e| err(&e))?;
    let mut stored = Stored {
        raw: Vec::new(),
        hourly: BTreeMap::new(),
        aged_raw: 0,
        aged_hourly: 0,
    };
    match txn.open_table(META) {
        Ok(meta) => {
            let get = |key: &str| -> Result<u64, HistoryError> {
                Ok(meta.get(key).map_err(|e| err(&e))?.map_or(0, |v| v.value()))
            };
            stored.aged_raw = get(AGED_RAW)?;
            stored.aged_hourly = get(AGED_HOURLY)?;
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(err(&e)),
    }
    match txn.open_table(RAW) {
        Ok(raw) => {
            for entry in raw.iter().map_err(|e| err(&e))? {
                let (_, json) = entry.map_err(|e| err(&e))?;
                if let Ok(s) = serde_json::from_slice::<Snapshot>(json.value()) {
                    stored.raw.push(s);
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(err(&e)),
    }
    match txn.open_table(HOURLY) {
        Ok(hourly) => {
            for entry in hourly.iter().map_err(|e| err(&e))? {
                let (key, value) = entry.map_err(|e| err(&e))?;
                let (hour_ms, figure) = key.value();
                let (min, max, sum, samples) = value.value();
                stored
                    .hourly
                    .entry(figure.to_string())
                    .or_default()
                    .push(RollUp {
                        hour_ms,
                        min,
                        avg: sum / samples.max(1) as f64,
                        max,
                        samples,
                    });
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(err(&e)),
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(ts_ms: u64, depth: u64) -> Snapshot {
        let json = serde_json::json!({
            "schema": 1, "gateway": "gw", "ts_ms": ts_ms,
            "software": {"name": "ferrule", "version": "0", "target": "x", "profile": "debug"},
            "uptime_s": 1,
            "process": {"cpu_percent": 1.0, "rss_bytes": 100},
            "system": {"load_1": 0.0, "load_5": 0.0, "load_15": 0.0, "memory_total_bytes": 1,
                       "memory_available_bytes": 1, "data_dir_free_bytes": null, "cpu_temperature_c": null,
                       "network_rx_bytes": 0, "network_tx_bytes": 0},
            "drivers": [{"name": "plc", "polls_ok": depth, "polls_failed": 0, "readings": 0,
                         "batches_queued": 0, "restarts": 0, "last_error": null, "device": null}],
            "publisher": {"connected": true, "connects": 1, "failures": 0, "last_failure": null,
                          "messages_acked": 0, "payload_bytes_acked": 0, "entries_delivered": 0,
                          "entries_split": 0, "readings_too_large": 0, "messages_refused": 0,
                          "last_connect_ms": 1.0, "client_cert_days_left": null},
            "queue": {"depth": depth, "bytes": 0, "oldest_age_s": null, "dropped_cap": 0, "dropped_age": 0}
        });
        serde_json::from_value(json).unwrap()
    }

    /// A history keeping raw samples 10 s and roll-ups 3 h, uncapped.
    fn short_lived(path: &Path) -> History {
        History::open(
            path,
            Duration::from_secs(10),
            Duration::from_secs(3 * 3600),
            u64::MAX,
        )
        .unwrap()
    }

    #[test]
    fn raw_samples_age_out_and_hourly_roll_ups_stay_correct() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.redb");
        let h = short_lived(&path);
        let hour = 1_795_450_000_000 - 1_795_450_000_000 % HOUR_MS;
        // 30 samples a second apart in one hour, 5 in the next, 1 four hours on.
        for i in 0..30u64 {
            h.record(&snapshot(hour + i * 1000, i)).unwrap();
        }
        for i in 0..5u64 {
            h.record(&snapshot(hour + HOUR_MS + i * 1000, 100 + i))
                .unwrap();
        }
        drop(h);
        let stored = read(&path).unwrap();
        // Raw: only the last 10 s of the second hour.
        let raw_ts: Vec<u64> = stored.raw.iter().map(|s| s.ts_ms).collect();
        assert_eq!(
            raw_ts,
            (0..5)
                .map(|i| hour + HOUR_MS + i * 1000)
                .collect::<Vec<_>>()
        );
        let depth = &stored.hourly["queue.depth"];
        assert_eq!(depth.len(), 2);
        assert_eq!(
            (depth[0].min, depth[0].max, depth[0].samples),
            (0.0, 29.0, 30)
        );
        assert_eq!(depth[0].avg, 14.5);
        assert_eq!(
            (depth[1].min, depth[1].max, depth[1].avg),
            (100.0, 104.0, 102.0)
        );
        assert!(stored.hourly.contains_key("drivers.plc.polls_ok"));
        assert!(stored.hourly.contains_key("publisher.connected"));
        assert!(!stored.hourly.keys().any(|k| k.contains("ts_ms")));

        // Four hours on: the first hour's roll-ups (older than 3 h) go.
        let h = short_lived(&path);
        h.record(&snapshot(hour + 4 * HOUR_MS, 7)).unwrap();
        drop(h);
        let stored = read(&path).unwrap();
        let hours: Vec<u64> = stored.hourly["queue.depth"]
            .iter()
            .map(|r| r.hour_ms)
            .collect();
        assert_eq!(hours, [hour + HOUR_MS, hour + 4 * HOUR_MS]);
        assert_eq!(stored.raw.len(), 1);
    }

    /// A snapshot whose driver reports `extra` pairs of 1 KiB each (a
    /// churning status: new values every sample).
    fn big_snapshot(ts_ms: u64, pairs: usize) -> Snapshot {
        let mut s = snapshot(ts_ms, 1);
        s.drivers[0].device = Some(crate::telemetry::DeviceFigures {
            connected: true,
            firmware: None,
            battery_percent: None,
            signal_quality: None,
            extra: (0..pairs)
                .map(|i| (format!("k{i}"), format!("{ts_ms}").repeat(80)))
                .collect(),
            extra_omitted: 0,
        });
        s
    }

    #[test]
    fn the_byte_cap_drops_the_oldest_counted_and_the_file_levels_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.redb");
        let cap = 2 << 20;
        let week = Duration::from_secs(7 * 24 * 3600);
        let h = History::open(&path, week, week, cap).unwrap();
        let start = 1_795_450_000_000u64;
        let mut sizes = Vec::new();
        // 600 samples of ~64 KiB each: ~38 MiB offered to a 2 MiB cap.
        for i in 0..600u64 {
            h.record(&big_snapshot(start + i * 1000, 60)).unwrap();
            let f = h.figures();
            assert!(
                f.bytes <= cap,
                "sample {i}: {} bytes held over the cap",
                f.bytes
            );
            if i % 100 == 99 {
                sizes.push(f.file_bytes);
            }
        }
        let f = h.figures();
        assert!(f.dropped_raw > 500, "{f:?}");
        eprintln!("history file size every 100 samples: {sizes:?}; {f:?}");
        // The file stops growing once the cap is reached: the last sizes
        // stay within twice the cap plus the compaction margin.
        for size in &sizes {
            assert!(
                *size <= 2 * cap + COMPACT_MARGIN,
                "file grew to {size}: {sizes:?}"
            );
        }
        drop(h);
        let stored = read(&path).unwrap();
        assert_eq!(
            stored.raw.last().unwrap().ts_ms,
            start + 599_000,
            "the newest stays"
        );
        assert!(stored.raw.len() < 40, "{} raw kept", stored.raw.len());
    }

    #[test]
    fn a_file_written_before_the_cap_is_counted_then_capped_and_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.redb");
        let week = Duration::from_secs(7 * 24 * 3600);
        let start = 1_795_450_000_000u64;
        {
            // As an older version wrote it: no totals, no cap, ~20 MiB.
            let db = builder().create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut raw = txn.open_table(RAW).unwrap();
                for i in 0..300u64 {
                    let json = serde_json::to_vec(&big_snapshot(start + i, 60)).unwrap();
                    raw.insert(start + i, json.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let before = std::fs::metadata(&path).unwrap().len();
        let cap = 1 << 20;
        let h = History::open(&path, week, week, cap).unwrap();
        h.record(&big_snapshot(start + 1000, 1)).unwrap();
        let f = h.figures();
        assert!(f.bytes <= cap, "{f:?}");
        assert!(f.dropped_raw >= 280, "{f:?}");
        h.compact_if_oversized();
        let after = std::fs::metadata(&path).unwrap().len();
        eprintln!("old file {before} bytes, after the cap and compaction {after} bytes");
        assert!(after <= 2 * cap + COMPACT_MARGIN, "{before} -> {after}");
        drop(h);
        assert_eq!(read(&path).unwrap().raw.last().unwrap().ts_ms, start + 1000);
    }
}
