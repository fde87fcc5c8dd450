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
use crate::queue::crypt::Keyring;

/// Raw snapshots (JSON) by time, ms since the epoch.
const RAW: TableDefinition<u64, &[u8]> = TableDefinition::new("raw");
/// Roll-ups by (hour start in ms, figure): (min, max, sum, count).
const HOURLY: TableDefinition<(u64, &str), (f64, f64, f64, u64)> = TableDefinition::new("hourly");
/// Roll-ups sealed by hour: the hour's start (ms) → its figures as JSON
/// (`{"figure": [min, max, sum, count]}`), stored sealed like a raw
/// snapshot, so figure names (which name drivers) are not in clear
/// either. Written instead of [`HOURLY`] when the history encrypts.
const HOURLY_SEALED: TableDefinition<u64, &[u8]> = TableDefinition::new("hourly.sealed");
/// Running totals kept with the data they describe.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The file's encryption salt (`salt`).
const CRYPT: TableDefinition<&str, &[u8]> = TableDefinition::new("crypt");
/// The nonce counter of the raw snapshots sealed in this file.
const SEALED: &str = "sealed";
/// A raw snapshot stored encrypted: this byte, the nonce counter (8, LE),
/// then the entry the storage keyring sealed (the time, then the JSON).
/// A plaintext snapshot is its JSON, whose first byte is `{`.
const SEALED_ROW: u8 = 0x01;

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
    /// The storage keys, and whether new snapshots are sealed with them.
    keyring: Option<std::sync::Arc<Keyring>>,
    encrypt: bool,
    /// This file's salt; an erasure's new file has a new one.
    salt: std::sync::Mutex<[u8; 32]>,
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
            keyring: None,
            encrypt: false,
            salt: std::sync::Mutex::new([0; 32]),
        };
        history.count_if_uncounted()?;
        history.compact_if_oversized();
        Ok(history)
    }

    /// Raw snapshots are read with `keyring` and, when `encrypt`, sealed
    /// with its newest key (AES-256-GCM, a subkey for this file's salt);
    /// older plaintext ones stay readable.
    pub fn with_keys(
        mut self,
        keyring: Option<std::sync::Arc<Keyring>>,
        encrypt: bool,
    ) -> Result<History, HistoryError> {
        let salt = self.file_salt()?;
        *self
            .salt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = salt;
        self.encrypt = encrypt && keyring.is_some();
        self.keyring = keyring;
        Ok(self)
    }

    /// The file's salt, made (random) the first time.
    fn file_salt(&self) -> Result<[u8; 32], HistoryError> {
        let db = self.db();
        let read = db.begin_read().map_err(|e| self.err(e))?;
        if let Ok(table) = read.open_table(CRYPT)
            && let Some(v) = table.get("salt").map_err(|e| self.err(e))?
            && let Ok(salt) = <[u8; 32]>::try_from(v.value())
        {
            return Ok(salt);
        }
        drop(read);
        let salt = crate::queue::crypt::new_salt().map_err(|e| self.err(e))?;
        let txn = db.begin_write().map_err(|e| self.err(e))?;
        txn.open_table(CRYPT)
            .map_err(|e| self.err(e))?
            .insert("salt", salt.as_slice())
            .map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))?;
        Ok(salt)
    }

    /// `json` as stored at `ts`: sealed with nonce `counter` under `salt`
    /// when this history encrypts.
    fn stored_form(
        &self,
        salt: &[u8; 32],
        counter: u64,
        ts: u64,
        json: &[u8],
    ) -> Result<Vec<u8>, HistoryError> {
        match (&self.keyring, self.encrypt) {
            (Some(keyring), true) => {
                seal_row(keyring, salt, counter, ts, json).map_err(|e| self.err(e))
            }
            _ => Ok(json.to_vec()),
        }
    }

    /// Seals every snapshot and roll-up again under the newest storage key
    /// (a new file, as [`History::erase`] writes it) when some are sealed
    /// with an older one, so that key can be erased; whether it did.
    pub fn rekey(&self) -> Result<bool, HistoryError> {
        let Some(keyring) = self.keyring.as_ref().filter(|_| self.encrypt) else {
            return Ok(false);
        };
        let current = keyring.current();
        if self.keys_in_use()?.iter().all(|id| *id == current) {
            return Ok(false);
        }
        self.erase(Some(0))?;
        Ok(true)
    }

    /// The storage keys raw snapshots are sealed with now.
    pub fn keys_in_use(&self) -> Result<Vec<String>, HistoryError> {
        let db = self.db();
        let read = db.begin_read().map_err(|e| self.err(e))?;
        let mut ids = std::collections::BTreeSet::new();
        let mut note = |v: &[u8]| {
            if let Some(id) = v.get(9..).and_then(crate::queue::crypt::entry_key_id) {
                ids.insert(id);
            }
        };
        if let Ok(raw) = read.open_table(RAW) {
            for row in raw.iter().map_err(|e| self.err(e))? {
                note(row.map_err(|e| self.err(e))?.1.value());
            }
        }
        if let Ok(sealed) = read.open_table(HOURLY_SEALED) {
            for row in sealed.iter().map_err(|e| self.err(e))? {
                note(row.map_err(|e| self.err(e))?.1.value());
            }
        }
        Ok(ids.into_iter().collect())
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
                let sealed = txn.open_table(HOURLY_SEALED).map_err(|e| self.err(e))?;
                for entry in sealed.iter().map_err(|e| self.err(e))? {
                    let (_, v) = entry.map_err(|e| self.err(e))?;
                    hourly_bytes += v.value().len() as u64;
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
        let old_salt = *self
            .salt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let new_salt = crate::queue::crypt::new_salt().map_err(|e| self.err(e))?;
        let erased = (|| -> Result<(Database, u64), HistoryError> {
            let new = builder().create(&target).map_err(|e| self.err(e))?;
            let read = db.begin_read().map_err(|e| self.err(e))?;
            let mut sealed = 0u64;
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
                            continue;
                        }
                        // Kept rows move to the new salt (and the newest
                        // key); a row that cannot be read stays as it is.
                        let was_sealed = v.value().first() == Some(&SEALED_ROW);
                        let stored = match (
                            &self.keyring,
                            open_row(self.keyring.as_deref(), &old_salt, k.value(), v.value()),
                        ) {
                            (Some(keyring), Ok(json)) if self.encrypt || was_sealed => {
                                sealed += 1;
                                seal_row(keyring, &new_salt, sealed, k.value(), &json)
                                    .map_err(|e| self.err(e))?
                            }
                            _ => v.value().to_vec(),
                        };
                        raw.insert(k.value(), stored.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                }
                let mut hours = txn.open_table(HOURLY_SEALED).map_err(|e| self.err(e))?;
                if let Ok(old) = read.open_table(HOURLY_SEALED) {
                    for row in old.iter().map_err(|e| self.err(e))? {
                        let (k, v) = row.map_err(|e| self.err(e))?;
                        if k.value().saturating_add(HOUR_MS) <= cutoff {
                            erased += 1;
                            continue;
                        }
                        let stored = match (
                            &self.keyring,
                            open_row(self.keyring.as_deref(), &old_salt, k.value(), v.value()),
                        ) {
                            (Some(keyring), Ok(json)) => {
                                sealed += 1;
                                seal_row(keyring, &new_salt, sealed, k.value(), &json)
                                    .map_err(|e| self.err(e))?
                            }
                            _ => v.value().to_vec(),
                        };
                        hours
                            .insert(k.value(), stored.as_slice())
                            .map_err(|e| self.err(e))?;
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
                meta.insert(SEALED, sealed).map_err(|e| self.err(e))?;
                txn.open_table(CRYPT)
                    .map_err(|e| self.err(e))?
                    .insert("salt", new_salt.as_slice())
                    .map_err(|e| self.err(e))?;
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
        *self
            .salt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = new_salt;
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
        let mut nonce = get(&meta, SEALED)? + 1;
        let salt = *self
            .salt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stored = self.stored_form(&salt, nonce, now, json)?;
        if self.encrypt {
            meta.insert(SEALED, nonce).map_err(|e| self.err(e))?;
        }
        let json = stored.as_slice();
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
        let mut sealed = txn.open_table(HOURLY_SEALED).map_err(|e| self.err(e))?;
        match (&self.keyring, self.encrypt) {
            (Some(keyring), true) => {
                let mut block: HourBlock = match sealed.get(hour).map_err(|e| self.err(e))? {
                    Some(old) => {
                        hourly_bytes = hourly_bytes.saturating_sub(old.value().len() as u64);
                        open_row(Some(keyring), &salt, hour, old.value())
                            .ok()
                            .and_then(|json| serde_json::from_slice(&json).ok())
                            .unwrap_or_default()
                    }
                    None => HourBlock::new(),
                };
                for (figure, v) in figures(snapshot) {
                    if !v.is_finite() {
                        continue;
                    }
                    let next = match block.get(&figure) {
                        Some(&(min, max, sum, n)) => (min.min(v), max.max(v), sum + v, n + 1),
                        None => (v, v, v, 1),
                    };
                    block.insert(figure, next);
                }
                nonce += 1;
                let json = serde_json::to_vec(&block).map_err(|e| self.err(e))?;
                let stored =
                    seal_row(keyring, &salt, nonce, hour, &json).map_err(|e| self.err(e))?;
                hourly_bytes += stored.len() as u64;
                sealed
                    .insert(hour, stored.as_slice())
                    .map_err(|e| self.err(e))?;
                meta.insert(SEALED, nonce).map_err(|e| self.err(e))?;
            }
            _ => {
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
            }
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
        sealed
            .retain_in(..trend_cut_hour, |_, v| {
                aged += v.len() as u64;
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
            // Plaintext rows are the older ones (written before encryption).
            if let Some((k, _)) = hourly.pop_first().map_err(|e| self.err(e))? {
                hourly_bytes = hourly_bytes.saturating_sub(hourly_row_bytes(k.value().1));
            } else if let Some((_, v)) = sealed.pop_first().map_err(|e| self.err(e))? {
                hourly_bytes = hourly_bytes.saturating_sub(v.value().len() as u64);
            } else {
                break;
            }
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

/// A raw snapshot's stored form, sealed: [`SEALED_ROW`], the nonce
/// counter, then the time and the JSON as the keyring seals an entry.
fn seal_row(
    keyring: &Keyring,
    salt: &[u8; 32],
    counter: u64,
    ts: u64,
    json: &[u8],
) -> Result<Vec<u8>, String> {
    let mut plain = Vec::with_capacity(8 + json.len());
    plain.extend_from_slice(&ts.to_le_bytes());
    plain.extend_from_slice(json);
    let sealed = keyring.seal(salt, counter, &plain)?;
    let mut out = Vec::with_capacity(9 + sealed.len());
    out.push(SEALED_ROW);
    out.extend_from_slice(&counter.to_le_bytes());
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// A raw snapshot's JSON from its stored form (decrypted if sealed).
fn open_row<'a>(
    keyring: Option<&Keyring>,
    salt: &[u8; 32],
    ts: u64,
    stored: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, String> {
    if stored.first() != Some(&SEALED_ROW) {
        return Ok(std::borrow::Cow::Borrowed(stored));
    }
    let keyring = keyring.ok_or("sealed, and no storage key is at hand")?;
    let counter = stored
        .get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or("a sealed row too short")?;
    let plain = keyring.open(salt, counter, &stored[9..])?;
    if plain.get(..8) != Some(&ts.to_le_bytes()[..]) {
        return Err("a sealed row moved to another time".into());
    }
    Ok(std::borrow::Cow::Owned(plain[8..].to_vec()))
}

/// One hour's roll-ups as sealed: figure → (min, max, sum, count).
type HourBlock = BTreeMap<String, (f64, f64, f64, u64)>;

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
    /// Raw snapshots that could not be read (sealed with a key not at hand).
    pub unreadable: u64,
}

/// Reads the history file at `path` (sealed snapshots with `keyring`;
/// those it cannot read are counted in [`Stored::unreadable`]).
pub fn read(path: &Path, keyring: Option<&Keyring>) -> Result<Stored, HistoryError> {
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
        unreadable: 0,
    };
    let salt = match txn.open_table(CRYPT) {
        Ok(t) => t
            .get("salt")
            .map_err(|e| err(&e))?
            .and_then(|v| <[u8; 32]>::try_from(v.value()).ok())
            .unwrap_or_default(),
        Err(_) => [0; 32],
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
                let (ts, value) = entry.map_err(|e| err(&e))?;
                let snapshot = open_row(keyring, &salt, ts.value(), value.value())
                    .ok()
                    .and_then(|json| serde_json::from_slice::<Snapshot>(&json).ok());
                match snapshot {
                    Some(s) => stored.raw.push(s),
                    None => stored.unreadable += 1,
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(err(&e)),
    }
    match txn.open_table(HOURLY_SEALED) {
        Ok(sealed) => {
            for entry in sealed.iter().map_err(|e| err(&e))? {
                let (hour, value) = entry.map_err(|e| err(&e))?;
                let block = open_row(keyring, &salt, hour.value(), value.value())
                    .ok()
                    .and_then(|json| serde_json::from_slice::<HourBlock>(&json).ok());
                let Some(block) = block else {
                    stored.unreadable += 1;
                    continue;
                };
                for (figure, (min, max, sum, samples)) in block {
                    stored.hourly.entry(figure).or_default().push(RollUp {
                        hour_ms: hour.value(),
                        min,
                        avg: sum / samples.max(1) as f64,
                        max,
                        samples,
                    });
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
    // Plaintext rows from before encryption and sealed hours after it;
    // the hour encryption began has both, merged here.
    for roll_ups in stored.hourly.values_mut() {
        roll_ups.sort_by_key(|r| r.hour_ms);
        roll_ups.dedup_by(|later, kept| {
            if later.hour_ms != kept.hour_ms {
                return false;
            }
            let samples = kept.samples + later.samples;
            kept.avg = (kept.avg * kept.samples as f64 + later.avg * later.samples as f64)
                / samples.max(1) as f64;
            kept.min = kept.min.min(later.min);
            kept.max = kept.max.max(later.max);
            kept.samples = samples;
            true
        });
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
        let stored = read(&path, None).unwrap();
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
        let stored = read(&path, None).unwrap();
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
        let stored = read(&path, None).unwrap();
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
        assert_eq!(
            read(&path, None).unwrap().raw.last().unwrap().ts_ms,
            start + 1000
        );
    }

    #[test]
    fn sealed_snapshots_leave_no_plaintext_read_back_with_the_key_and_move_to_a_new_key_when_erased()
     {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.redb");
        // A plaintext snapshot from before encryption stays readable.
        short_lived(&path).record(&snapshot(1_000, 7)).unwrap();
        let keyring = std::sync::Arc::new(Keyring::create(&dir.path().join("k")).unwrap());
        let h = short_lived(&path)
            .with_keys(Some(keyring.clone()), true)
            .unwrap();
        let mut s = snapshot(2_000, 8);
        s.drivers[0].name = "zq-history-driver-41".into();
        h.record(&s).unwrap();
        h.record(&snapshot(3_000, 9)).unwrap();
        let raw_file = || std::fs::read(&path).unwrap();
        let holds = |needle: &[u8]| raw_file().windows(needle.len()).any(|w| w == needle);
        assert!(!holds(b"zq-history-driver-41"), "sealed on disk");
        assert_eq!(h.keys_in_use().unwrap(), [keyring.current()]);
        let stored = read(&path, Some(&keyring)).unwrap();
        assert_eq!((stored.raw.len(), stored.unreadable), (3, 0));
        assert_eq!(stored.raw[1].drivers[0].name, "zq-history-driver-41");
        // The hour's roll-ups, sealed too, merge with the older plaintext rows.
        assert!(
            stored
                .hourly
                .contains_key("drivers.zq-history-driver-41.polls_ok")
        );
        let depth = &stored.hourly["queue.depth"];
        assert_eq!(
            (depth.len(), depth[0].samples, depth[0].min, depth[0].max),
            (1, 3, 7.0, 9.0)
        );
        assert_eq!(depth[0].avg, 8.0);
        // Without the key: counted (two snapshots, one hour), not guessed at.
        let stored = read(&path, None).unwrap();
        assert_eq!((stored.raw.len(), stored.unreadable), (1, 3));
        // An erasure after a new key: the kept rows move to it.
        let old = keyring.current();
        let new = keyring.add_key().unwrap();
        assert_eq!(h.erase(Some(2_500)).unwrap(), 2);
        assert_eq!(h.keys_in_use().unwrap(), [new]);
        assert_eq!(
            keyring.erase_unused(&h.keys_in_use().unwrap()).unwrap(),
            [old]
        );
        let stored = read(&path, Some(&keyring)).unwrap();
        assert_eq!(stored.raw.len(), 1);
        assert_eq!(stored.raw[0].ts_ms, 3_000);
        // Sealing goes on in the new file.
        h.record(&snapshot(4_000, 10)).unwrap();
        assert_eq!(read(&path, Some(&keyring)).unwrap().raw.len(), 2);
        // After a rotation, re-sealing moves everything to the newest key.
        let newest = keyring.add_key().unwrap();
        assert!(h.rekey().unwrap());
        assert_eq!(h.keys_in_use().unwrap(), [newest]);
        assert!(!h.rekey().unwrap());
        assert_eq!(read(&path, Some(&keyring)).unwrap().raw.len(), 2);
    }
}
