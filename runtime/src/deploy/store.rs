//! What a gateway keeps of its deployments, under `{data_dir}/deploy/`:
//!
//! ```text
//! state.json            which deployment runs, which is on trial, the last outcome
//! docs/<number>.json    each deployment's signed message as received
//! plugins/<sha256>.wasm every plugin a kept deployment names, by content
//! staging/<sha256>.part transfers in progress (resumed at their length)
//! ```
//!
//! `state.json` alone says what runs: it is replaced whole (written, synced,
//! renamed), and names each document with its SHA-256, so after a crash at
//! any point the gateway starts exactly one complete, verified state.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Deployment, MAX_MESSAGE_BYTES, PluginRef};
use crate::plugin::trust;

/// The largest `state.json` read back.
const MAX_STATE_BYTES: u64 = 1 << 20;

/// A kept document: its number and the SHA-256 of its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The deployment number.
    pub deployment: u64,
    /// SHA-256 of `docs/<number>.json`.
    pub sha256: String,
}

/// Where a deployment on trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Being applied.
    Applying,
    /// Applied; its changed drivers are in their health window.
    Health,
}

/// A deployment applied but not yet confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// Which one.
    #[serde(flatten)]
    pub record: Record,
    /// How far it got.
    pub phase: Phase,
    /// When it entered that phase, in milliseconds since the Unix epoch.
    pub since_ms: u64,
}

/// What became of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Result {
    /// Running, confirmed healthy.
    Applied,
    /// Refused before anything changed.
    Refused,
    /// Applied, then undone: the previous state runs again.
    RolledBack,
}

/// The last deployment outcome, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The deployment it is about (0 when a message could not be read).
    pub deployment: u64,
    /// Applied, refused or rolled back.
    pub result: Result,
    /// Why, when not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The confirmed deployment, if any: what runs.
    #[serde(default)]
    pub running: Option<Record>,
    /// A deployment applied and not yet confirmed.
    #[serde(default)]
    pub trial: Option<Trial>,
    /// The highest deployment number acted on (applied, refused or rolled
    /// back): only a higher one is taken.
    #[serde(default)]
    pub highest: u64,
    /// The last outcome.
    #[serde(default)]
    pub last: Option<Outcome>,
}

/// The deployment files of one gateway.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store under `{data_dir}/deploy`, created when missing.
    pub fn open(data_dir: &Path) -> std::io::Result<Store> {
        let dir = data_dir.join("deploy");
        for sub in ["docs", "plugins", "staging"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        Ok(Store { dir })
    }

    /// The directory, for messages.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The state on disk; the default one when there is none yet.
    pub fn state(&self) -> std::result::Result<State, String> {
        let path = self.state_path();
        match trust::read_bounded(&path, MAX_STATE_BYTES) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not a deployment state: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Replaces the state on disk (synced before it counts).
    pub fn save(&self, state: &State) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
        trust::write_atomically(&self.state_path(), &json, None)
    }

    fn doc_path(&self, deployment: u64) -> PathBuf {
        self.dir.join("docs").join(format!("{deployment}.json"))
    }

    /// Keeps a verified message; its record.
    pub fn keep_document(&self, deployment: u64, message: &[u8]) -> std::io::Result<Record> {
        trust::write_atomically(&self.doc_path(deployment), message, None)?;
        Ok(Record {
            deployment,
            sha256: trust::sha256_hex(message),
        })
    }

    /// The deployment a record names, read back and checked against its
    /// hash (the signature was checked when it arrived).
    pub fn document(&self, record: &Record) -> std::result::Result<Deployment, String> {
        let path = self.doc_path(record.deployment);
        let bytes = trust::read_bounded(&path, MAX_MESSAGE_BYTES as u64)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if trust::sha256_hex(&bytes) != record.sha256 {
            return Err(format!(
                "{}: changed on disk since it was verified (sha256 differs)",
                path.display()
            ));
        }
        super::open_unverified(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Where the plugin with this hash is kept.
    pub fn plugin_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("plugins").join(format!("{sha256}.wasm"))
    }

    /// Whether the plugin is kept, whole.
    pub fn has_plugin(&self, plugin: &PluginRef) -> bool {
        std::fs::metadata(self.plugin_path(&plugin.sha256)).is_ok_and(|m| m.len() == plugin.size)
    }

    /// Where a transfer of this hash is staged.
    pub fn staging_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("staging").join(format!("{sha256}.part"))
    }

    /// Deletes every document but those of `keep`, and every plugin and
    /// staged transfer none of `keep` names.
    pub fn collect_garbage(&self, keep: &[(&Record, &Deployment)]) {
        let docs: Vec<String> = (keep.iter())
            .map(|(r, _)| format!("{}.json", r.deployment))
            .collect();
        let plugins: Vec<String> = (keep.iter())
            .flat_map(|(_, d)| d.plugins.iter())
            .map(|p| p.sha256.clone())
            .collect();
        let keep_file = |dir: &str, name: &str| match dir {
            "docs" => docs.iter().any(|d| d == name),
            _ => plugins.iter().any(|sha| name.starts_with(sha.as_str())),
        };
        for dir in ["docs", "plugins", "staging"] {
            let Ok(entries) = std::fs::read_dir(self.dir.join(dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !keep_file(dir, &name) {
                    match std::fs::remove_file(entry.path()) {
                        Ok(()) => {
                            tracing::debug!(file = %entry.path().display(), "deployment file no longer needed, deleted")
                        }
                        Err(e) => {
                            tracing::warn!(file = %entry.path().display(), error = %e, "cannot delete a deployment file no longer needed")
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_missing_file_is_the_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.state().unwrap(), State::default());
        let state = State {
            running: Some(Record {
                deployment: 3,
                sha256: "a".repeat(64),
            }),
            trial: Some(Trial {
                record: Record {
                    deployment: 4,
                    sha256: "b".repeat(64),
                },
                phase: Phase::Health,
                since_ms: 9,
            }),
            highest: 4,
            last: None,
        };
        store.save(&state).unwrap();
        assert_eq!(store.state().unwrap(), state);
        std::fs::write(store.state_path(), b"{garbage").unwrap();
        assert!(store.state().unwrap_err().contains("state.json"));
    }

    #[test]
    fn a_document_changed_on_disk_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let record = store.keep_document(5, b"{}").unwrap();
        std::fs::write(store.doc_path(5), b"{ }").unwrap();
        assert!(
            store
                .document(&record)
                .unwrap_err()
                .contains("changed on disk")
        );
    }
}
