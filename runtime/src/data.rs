//! Everything a gateway holds about its customer, exported in a
//! structured, machine-readable form (`ferrule data export`).
//!
//! The export is a directory of JSON Lines files and a `manifest.json`:
//!
//! | file | one line per |
//! | --- | --- |
//! | `queue.jsonl` | queued batch: `{"seq", "driver", "captured_ns", "readings"}` (as `ferrule queue export`) |
//! | `telemetry-queue.jsonl` | telemetry snapshot not yet sent: `{"seq", "captured_ns", "entry"}` |
//! | `telemetry-raw.jsonl` | snapshot kept in the local history |
//! | `telemetry-hourly.jsonl` | hourly roll-up: `{"figure", "hour_ms", "min", "avg", "max", "samples"}` |
//! | `audit.jsonl` | audit record (`ferrule audit show`) |
//!
//! The manifest says which gateway, when, by whom, the format version,
//! and for each file its line count, size, SHA-256 and time range. Entries
//! that cannot be read are listed there, not silently left out. Every
//! export is itself recorded in the audit log.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::audit::AuditLog;
use crate::config::Config;

/// The export format written.
pub const FORMAT: u32 = 1;

/// One exported file in the manifest.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FileFigures {
    /// Lines written.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
    /// SHA-256 of the file.
    pub sha256: String,
    /// The earliest time in it (ms since the Unix epoch), if any.
    pub first_ms: Option<u64>,
    /// The latest.
    pub last_ms: Option<u64>,
}

/// `manifest.json`.
#[derive(Debug, Serialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The gateway's id.
    pub gateway: String,
    /// The ferrule version that wrote it.
    pub ferrule: String,
    /// When.
    pub exported_at_ms: u64,
    /// The OS user who ran it.
    pub user: String,
    /// Each file.
    pub files: BTreeMap<String, FileFigures>,
    /// Entries stored but unreadable: (file, sequence, why).
    pub unreadable: Vec<(String, u64, String)>,
}

/// A file being written, with its figures.
struct Out {
    name: &'static str,
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    figures: FileFigures,
}

impl Out {
    fn create(dir: &Path, name: &'static str) -> std::io::Result<Out> {
        let path = dir.join(name);
        Ok(Out {
            name,
            file: std::io::BufWriter::new(std::fs::File::create(&path)?),
            path,
            figures: FileFigures::default(),
        })
    }

    fn line(&mut self, value: &impl Serialize, at_ms: Option<u64>) -> std::io::Result<()> {
        let mut json = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        json.push(b'\n');
        self.file.write_all(&json)?;
        let f = &mut self.figures;
        f.records += 1;
        f.bytes += json.len() as u64;
        if let Some(at) = at_ms {
            f.first_ms = Some(f.first_ms.map_or(at, |x| x.min(at)));
            f.last_ms = Some(f.last_ms.map_or(at, |x| x.max(at)));
        }
        Ok(())
    }

    fn finish(mut self, files: &mut BTreeMap<String, FileFigures>) -> std::io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        self.figures.sha256 = crate::plugin::trust::sha256_file(&self.path)?;
        files.insert(self.name.to_string(), self.figures);
        Ok(())
    }
}

#[derive(Serialize)]
struct TelemetryLine<'a> {
    seq: u64,
    captured_ns: u64,
    entry: &'a serde_json::value::RawValue,
}

#[derive(Serialize)]
struct HourlyLine<'a> {
    figure: &'a str,
    #[serde(flatten)]
    roll_up: &'a crate::telemetry::history::RollUp,
}

/// Exports everything the gateway of `config` holds into `dir` (created;
/// refused if it exists and is not empty), reading alongside a running
/// gateway; records the export in the audit log.
pub fn export(config: &Config, dir: &Path) -> anyhow::Result<Manifest> {
    use anyhow::Context;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!("{}: not empty; export into a new directory", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let data_dir = config.resolve(&config.gateway.data_dir);
    let keyring = crate::gateway::existing_keys(config)?;
    let mut files = BTreeMap::new();
    let mut unreadable = Vec::new();
    let ms = |ns: u64| ns / 1_000_000;

    // The data queue.
    let mut out = Out::create(dir, "queue.jsonl")?;
    let queue = crate::gateway::queue_path(config);
    if queue.exists() {
        crate::queue::for_each_entry(&queue, keyring.as_ref(), |seq, plain| {
            let storage = |e: std::io::Error| crate::queue::QueueError::Storage(e.to_string());
            match plain.and_then(|p| crate::queue::decode_plain(seq, &p)) {
                Ok(batch) => {
                    #[derive(Serialize)]
                    struct Line<'a> {
                        seq: u64,
                        #[serde(flatten)]
                        batch: &'a crate::reading::Batch,
                    }
                    out.line(&Line { seq, batch: &batch }, Some(ms(batch.captured_ns)))
                        .map_err(storage)
                }
                Err(e) => {
                    unreadable.push((out.name.to_string(), seq, e.to_string()));
                    Ok(())
                }
            }
        })?;
    }
    out.finish(&mut files)?;

    // Telemetry not yet sent.
    let mut out = Out::create(dir, "telemetry-queue.jsonl")?;
    let telemetry = data_dir.join("telemetry.redb");
    if telemetry.exists() {
        crate::queue::for_each_entry(&telemetry, keyring.as_ref(), |seq, plain| {
            let storage = |e: std::io::Error| crate::queue::QueueError::Storage(e.to_string());
            let parsed = plain.and_then(|p| {
                let captured_ns = u64::from_le_bytes(p[..8].try_into().unwrap_or_default());
                let raw: Box<serde_json::value::RawValue> = serde_json::from_slice(&p[8..])
                    .map_err(|e| crate::queue::QueueError::Corrupt {
                        seq,
                        message: e.to_string(),
                    })?;
                Ok((captured_ns, raw))
            });
            match parsed {
                Ok((captured_ns, entry)) => out
                    .line(
                        &TelemetryLine {
                            seq,
                            captured_ns,
                            entry: &entry,
                        },
                        Some(ms(captured_ns)),
                    )
                    .map_err(storage),
                Err(e) => {
                    unreadable.push((out.name.to_string(), seq, e.to_string()));
                    Ok(())
                }
            }
        })?;
    }
    out.finish(&mut files)?;

    // The local telemetry history.
    let mut raw = Out::create(dir, "telemetry-raw.jsonl")?;
    let mut hourly = Out::create(dir, "telemetry-hourly.jsonl")?;
    let history = crate::gateway::history_path(config);
    if history.exists() {
        let stored = crate::telemetry::history::read(&history, keyring.as_ref())?;
        if stored.unreadable > 0 {
            unreadable.push((
                "telemetry-raw.jsonl".to_string(),
                0,
                format!(
                    "{} snapshots sealed with a storage key not in the key file",
                    stored.unreadable
                ),
            ));
        }
        for snapshot in &stored.raw {
            raw.line(snapshot, Some(snapshot.ts_ms))?;
        }
        for (figure, roll_ups) in &stored.hourly {
            for roll_up in roll_ups {
                hourly.line(&HourlyLine { figure, roll_up }, Some(roll_up.hour_ms))?;
            }
        }
    }
    raw.finish(&mut files)?;
    hourly.finish(&mut files)?;

    // The audit log.
    let audit = AuditLog::in_dir(&data_dir);
    let mut out = Out::create(dir, "audit.jsonl")?;
    let mut failed = None;
    let walked = crate::audit::for_each(audit.path(), |_, record| {
        if let Err(e) = out.line(&record, Some(record.at_ms)) {
            failed = Some(e);
            return Ok(false);
        }
        Ok(true)
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    if let Err(e) = walked {
        unreadable.push(("audit.jsonl".to_string(), 0, e.to_string()));
    }
    out.finish(&mut files)?;

    let manifest = Manifest {
        format: FORMAT,
        gateway: config.gateway.id.get_ref().clone(),
        ferrule: env!("CARGO_PKG_VERSION").to_string(),
        exported_at_ms: crate::reading::now_ms(),
        user: crate::audit::os_user(),
        files,
        unreadable,
    };
    crate::plugin::trust::write_atomically(
        &dir.join("manifest.json"),
        &serde_json::to_vec_pretty(&manifest)?,
        None,
    )?;
    audit.record(
        "data-access",
        serde_json::json!({
            "command": "data export",
            "user": manifest.user,
            "out": dir.display().to_string(),
            "records": manifest.files.iter().map(|(name, f)| (name.clone(), f.records)).collect::<BTreeMap<_, _>>(),
        }),
    );
    Ok(manifest)
}
