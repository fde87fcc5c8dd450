//! Local trend history: every snapshot kept raw for `raw_retention`, and
//! hourly roll-ups (min, average, max) of every numeric figure kept for
//! `trend_retention`, both in `{data_dir}/telemetry-history.redb`, rotated
//! at each sample. `ferrule telemetry show` and `ferrule status` read it
//! alongside the running gateway.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use redb::{
    Builder, ConcurrencyMode, Database, Durability, ReadableDatabase, ReadableTable,
    TableDefinition,
};

use super::Snapshot;

/// Raw snapshots (JSON) by time, ms since the epoch.
const RAW: TableDefinition<u64, &[u8]> = TableDefinition::new("raw");
/// Roll-ups by (hour start in ms, figure): (min, max, sum, count).
const HOURLY: TableDefinition<(u64, &str), (f64, f64, f64, u64)> = TableDefinition::new("hourly");

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
    pub hour_ms: u64,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
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

pub struct History {
    db: Database,
    path: String,
    raw_retention: Duration,
    trend_retention: Duration,
}

fn builder() -> Builder {
    let mut builder = Builder::new();
    builder.set_concurrency_mode(ConcurrencyMode::SingleWriter);
    builder
}

impl History {
    pub fn open(
        path: &Path,
        raw_retention: Duration,
        trend_retention: Duration,
    ) -> Result<History, HistoryError> {
        let name = path.display().to_string();
        let db = builder().create(path).map_err(|e| HistoryError {
            path: name.clone(),
            message: e.to_string(),
        })?;
        Ok(History {
            db,
            path: name,
            raw_retention,
            trend_retention,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> HistoryError {
        HistoryError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Stores a snapshot, adds it to its hour's roll-ups, and deletes what
    /// has aged out.
    pub fn record(&self, snapshot: &Snapshot) -> Result<(), HistoryError> {
        let json = serde_json::to_vec(snapshot).map_err(|e| self.err(e))?;
        let now = snapshot.ts_ms;
        let hour = now - now % HOUR_MS;
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| self.err(e))?;
        {
            let mut raw = txn.open_table(RAW).map_err(|e| self.err(e))?;
            raw.insert(now, json.as_slice()).map_err(|e| self.err(e))?;
            let raw_cut = now.saturating_sub(ms(self.raw_retention));
            raw.retain_in(..raw_cut, |_, _| false)
                .map_err(|e| self.err(e))?;

            let mut hourly = txn.open_table(HOURLY).map_err(|e| self.err(e))?;
            for (figure, v) in figures(snapshot) {
                let key = (hour, figure.as_str());
                let next = match hourly.get(key).map_err(|e| self.err(e))? {
                    Some(old) => {
                        let (min, max, sum, n) = old.value();
                        (min.min(v), max.max(v), sum + v, n + 1)
                    }
                    None => (v, v, v, 1),
                };
                hourly.insert(key, next).map_err(|e| self.err(e))?;
            }
            let trend_cut = now.saturating_sub(ms(self.trend_retention));
            let trend_cut_hour = trend_cut - trend_cut % HOUR_MS;
            hourly
                .retain_in(..(trend_cut_hour, ""), |_, _| false)
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
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
    };
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

    #[test]
    fn raw_samples_age_out_and_hourly_roll_ups_stay_correct() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.redb");
        let h = History::open(
            &path,
            Duration::from_secs(10),
            Duration::from_secs(3 * 3600),
        )
        .unwrap();
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
        let h = History::open(
            &path,
            Duration::from_secs(10),
            Duration::from_secs(3 * 3600),
        )
        .unwrap();
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
}
