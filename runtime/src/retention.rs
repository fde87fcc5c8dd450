//! Retention of every data class on the gateway, configured in one
//! `[retention]` table, and the figures `ferrule status` shows for it.
//!
//! | class | setting | enforced by | counted in |
//! | --- | --- | --- | --- |
//! | queued readings | `queue_max_age_s` | the queue's writer, every second | queue `dropped_age` |
//! | telemetry snapshots | `telemetry_raw_s` | the history, at each sample | history `aged.raw` |
//! | telemetry roll-ups | `telemetry_trend_s` | the history, at each sample | history `aged.hourly` |
//! | audit log | `audit_days`, `audit_max_mb` | the gateway, at start and hourly | `audit.head` |
//! | plugins' private data | `plugin_data_days` | the gateway, at start and hourly ([`prune_plugin_data`]) | `{data_dir}/retention.json` |

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Counters kept across restarts in `{data_dir}/retention.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Counters {
    #[serde(default)]
    plugin_files_removed: u64,
}

fn counters_path(data_dir: &Path) -> PathBuf {
    data_dir.join("retention.json")
}

fn read_counters(data_dir: &Path) -> Counters {
    crate::plugin::trust::read_bounded(&counters_path(data_dir), 4096)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// What one pass of [`prune_plugin_data`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Files removed now.
    pub removed: u64,
    /// Files removed, ever.
    pub removed_total: u64,
}

/// Removes every file under `{data_dir}/plugins/*/` not modified for
/// `max_age`, and folders left empty below each plugin's own; counts them.
/// Symbolic links are removed as links, never followed.
pub fn prune_plugin_data(data_dir: &Path, max_age: Duration) -> std::io::Result<Pruned> {
    let cutoff = SystemTime::now()
        .checked_sub(max_age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let root = data_dir.join("plugins");
    let mut removed = 0;
    let plugins = match std::fs::read_dir(&root) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Pruned::default()),
        Err(e) => return Err(e),
    };
    for plugin in plugins {
        let plugin = plugin?.path();
        if std::fs::symlink_metadata(&plugin)?.is_dir() {
            removed += prune(&plugin, cutoff, false)?;
        }
    }
    let mut counters = read_counters(data_dir);
    if removed > 0 {
        counters.plugin_files_removed += removed;
        let json = serde_json::to_vec(&counters).map_err(std::io::Error::other)?;
        crate::plugin::trust::write_atomically(&counters_path(data_dir), &json, None)?;
    }
    Ok(Pruned {
        removed,
        removed_total: counters.plugin_files_removed,
    })
}

/// Files removed under `dir`; `dir` itself too when `remove_empty` and
/// nothing is left in it.
fn prune(dir: &Path, cutoff: SystemTime, remove_empty: bool) -> std::io::Result<u64> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            removed += prune(&path, cutoff, true)?;
        } else if meta.modified().is_ok_and(|m| m < cutoff) {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    if remove_empty && std::fs::read_dir(dir)?.next().is_none() {
        std::fs::remove_dir(dir)?;
    }
    Ok(removed)
}

/// One data class's retention, for `ferrule status`.
#[derive(Debug, Clone, Serialize)]
pub struct Class {
    /// What is kept.
    pub class: &'static str,
    /// For how long (or how much), as configured.
    pub keep: String,
    /// Removed by that retention, ever (`None` when it cannot be read now).
    pub removed: Option<u64>,
}

fn seconds(s: Option<u64>) -> String {
    match s {
        None => "forever".to_string(),
        Some(s) => humantime::format_duration(Duration::from_secs(s)).to_string(),
    }
}

/// Every class's retention as configured, and what each removed,
/// read from the files without taking them from a running gateway.
pub fn figures(config: &Config) -> Vec<Class> {
    let data_dir = config.resolve(&config.gateway.data_dir);
    let queue = crate::queue::read_stats(&crate::gateway::queue_path(config)).ok();
    let history = crate::telemetry::history::read(&crate::gateway::history_path(config), None).ok();
    let r = &config.retention;
    let t = &config.telemetry;
    let (audit_dropped, _) = crate::audit::removed(&crate::audit::path_in(&data_dir));
    vec![
        Class {
            class: "queued readings",
            keep: seconds(config.queue.max_age_s),
            removed: queue.map(|q| q.dropped_age),
        },
        Class {
            class: "telemetry snapshots",
            keep: seconds(Some(t.raw_retention_s)),
            removed: history.as_ref().map(|h| h.aged_raw),
        },
        Class {
            class: "telemetry roll-ups",
            keep: seconds(Some(t.trend_retention_s)),
            removed: history.as_ref().map(|h| h.aged_hourly),
        },
        Class {
            class: "audit log",
            keep: format!(
                "{}, at most {} MiB",
                seconds(Some(r.audit_days.saturating_mul(86_400))),
                r.audit_max_mb
            ),
            removed: Some(audit_dropped),
        },
        Class {
            class: "plugin data",
            keep: seconds(r.plugin_data_days.map(|d| d.saturating_mul(86_400))),
            removed: Some(read_counters(&data_dir).plugin_files_removed),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_plugin_files_go_new_ones_stay_and_the_count_adds_up() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("plugins/meter");
        std::fs::create_dir_all(plugin.join("cache/deep")).unwrap();
        let old = |p: &Path| {
            std::fs::write(p, b"x").unwrap();
            let f = std::fs::File::options().write(true).open(p).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(10 * 86_400))
                .unwrap();
        };
        old(&plugin.join("old.bin"));
        old(&plugin.join("cache/deep/old.bin"));
        std::fs::write(plugin.join("new.bin"), b"y").unwrap();
        let week = Duration::from_secs(7 * 86_400);
        let pruned = prune_plugin_data(dir.path(), week).unwrap();
        assert_eq!(
            pruned,
            Pruned {
                removed: 2,
                removed_total: 2
            }
        );
        assert!(plugin.join("new.bin").exists());
        assert!(!plugin.join("cache").exists(), "emptied folders go too");
        assert!(plugin.exists(), "the plugin's own folder stays");
        old(&plugin.join("later.bin"));
        let pruned = prune_plugin_data(dir.path(), week).unwrap();
        assert_eq!(
            pruned,
            Pruned {
                removed: 1,
                removed_total: 3
            }
        );
        assert_eq!(read_counters(dir.path()).plugin_files_removed, 3);
    }
}
