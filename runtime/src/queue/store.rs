//! The queue file's layout, opening it (with repair, or quarantine when it
//! cannot be opened), and reading it without a running writer.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Builder, ConcurrencyMode, Database, DatabaseError, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, StorageError, TableDefinition,
};

use super::{Entry, QueueError, QueueStats};
use crate::reading::{Batch, now_ns};

/// Entries by sequence number. Value: captured time (u64 little-endian
/// nanoseconds) followed by the batch as JSON.
pub(super) const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
/// Entries the publisher found it cannot read (damaged on disk), moved
/// here from `entries` so they no longer hold up delivery; kept as they
/// were, counted in `meta` `set_aside`.
pub(super) const SET_ASIDE_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("set-aside");
/// Counters, updated in the same transaction as the entries they describe.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The file's encryption salt (`salt`).
pub(super) const CRYPT: TableDefinition<&str, &[u8]> = TableDefinition::new("crypt");
/// `meta` keys `key.{id}`: entries encrypted with each storage key.
pub(super) const KEY_COUNT: &str = "key.";

pub(super) const NEXT_SEQ: &str = "next_seq";
pub(super) const BYTES: &str = "bytes";
pub(super) const DROPPED_CAP: &str = "dropped.cap";
pub(super) const DROPPED_AGE: &str = "dropped.age";
pub(super) const ERASED: &str = "erased";
pub(super) const SET_ASIDE: &str = "set_aside";

const HEADER: usize = 8;

pub(super) fn storage(e: impl std::fmt::Display) -> QueueError {
    QueueError::Storage(e.to_string())
}

/// The stored form of `entry`: its capture time, then its JSON. A prepared
/// batch's JSON buffer becomes the entry in place (the header is inserted
/// before it), so a large batch is never held twice.
pub(super) fn encode_entry(entry: Entry) -> Result<Vec<u8>, QueueError> {
    let mut out = match entry {
        Entry::Prepared(prepared) => {
            let mut out = prepared.json;
            out.reserve_exact(HEADER);
            out.splice(0..0, prepared.captured_ns.to_le_bytes());
            out
        }
        Entry::Batch(batch) => {
            let mut out = Vec::with_capacity(HEADER + 64 + batch.readings.len() * 96);
            out.extend_from_slice(&batch.captured_ns.to_le_bytes());
            serde_json::to_writer(&mut out, &batch).map_err(storage)?;
            out
        }
        Entry::Telemetry(json) => wrapped(b"{\"kind\":\"telemetry\",\"snapshot\":", &json)?,
        Entry::Audit(json) => wrapped(b"{\"kind\":\"audit\",\"record\":", &json)?,
    };
    // Growth may have left up to half of it spare while it waits for the writer.
    out.shrink_to_fit();
    Ok(out)
}

/// `json` (checked, so a stored entry is always one JSON object) after
/// `prefix`, closed, behind a header with the time now.
fn wrapped(prefix: &[u8], json: &str) -> Result<Vec<u8>, QueueError> {
    serde_json::from_str::<&serde_json::value::RawValue>(json).map_err(storage)?;
    let mut out = Vec::with_capacity(HEADER + prefix.len() + json.len() + 1);
    out.extend_from_slice(&now_ns().to_le_bytes());
    out.extend_from_slice(prefix);
    out.extend_from_slice(json.as_bytes());
    out.push(b'}');
    Ok(out)
}

pub(super) fn decode_entry(seq: u64, bytes: &[u8]) -> Result<Batch, QueueError> {
    let json = entry_json(seq, bytes)?;
    Batch::from_json(json).map_err(|e| QueueError::Corrupt {
        seq,
        message: e.to_string(),
    })
}

/// The batch's JSON in a stored entry (after the header).
pub(super) fn entry_json(seq: u64, bytes: &[u8]) -> Result<&[u8], QueueError> {
    bytes.get(HEADER..).ok_or_else(|| QueueError::Corrupt {
        seq,
        message: format!("entry of {} bytes has no header", bytes.len()),
    })
}

/// How many entries each storage key encrypts, by key id.
pub(super) fn key_counts(db: &Database) -> Result<Vec<(String, u64)>, QueueError> {
    let txn = db.begin_read().map_err(storage)?;
    key_counts_in(&txn)
}

fn key_counts_in(txn: &redb::ReadTransaction) -> Result<Vec<(String, u64)>, QueueError> {
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(storage(e)),
    };
    let mut out = Vec::new();
    for item in meta.range(KEY_COUNT..).map_err(storage)? {
        let (key, value) = item.map_err(storage)?;
        let Some(id) = key.value().strip_prefix(KEY_COUNT) else {
            break;
        };
        out.push((id.to_string(), value.value()));
    }
    Ok(out)
}

/// The file's salt, made (random) the first time.
pub(super) fn salt(db: &Database) -> Result<[u8; 32], QueueError> {
    {
        let txn = db.begin_read().map_err(storage)?;
        if let Some(salt) = read_salt(&txn)? {
            return Ok(salt);
        }
    }
    let salt = super::crypt::new_salt().map_err(QueueError::Storage)?;
    let txn = db.begin_write().map_err(storage)?;
    txn.open_table(CRYPT)
        .map_err(storage)?
        .insert("salt", salt.as_slice())
        .map_err(storage)?;
    txn.commit().map_err(storage)?;
    Ok(salt)
}

pub(super) fn read_salt(txn: &redb::ReadTransaction) -> Result<Option<[u8; 32]>, QueueError> {
    let table = match txn.open_table(CRYPT) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(storage(e)),
    };
    let value = table.get("salt").map_err(storage)?;
    Ok(value.and_then(|v| <[u8; 32]>::try_from(v.value()).ok()))
}

/// The captured time stored in an entry's header.
pub(super) fn captured_ns(bytes: &[u8]) -> Option<u64> {
    let header: [u8; HEADER] = bytes.get(..HEADER)?.try_into().ok()?;
    Some(u64::from_le_bytes(header))
}

/// redb's page cache for a queue file. Its default (1 GiB) would let the
/// cache grow with a backlog; entries are written once and read back once,
/// so a small cache costs little and keeps the gateway's memory bounded.
const CACHE_BYTES: usize = 8 << 20;

/// How a queue's database is opened on its path: on the file itself, or
/// (in tests) through a storage backend that injects faults.
pub(super) type Create = Arc<dyn Fn(&Path) -> Result<Database, DatabaseError> + Send + Sync>;

/// Opens the file at the path, with the queue's settings.
pub(super) fn on_file() -> Create {
    Arc::new(|path: &Path| builder().create(path))
}

/// A database on `backend`, with the queue's settings.
#[cfg(test)]
pub(super) fn with_backend(backend: impl redb::StorageBackend) -> Result<Database, DatabaseError> {
    builder().create_with_backend(backend)
}

fn builder() -> Builder {
    let mut builder = Builder::new();
    // One writer (the runtime); `ferrule queue stats` may read alongside.
    builder.set_concurrency_mode(ConcurrencyMode::SingleWriter);
    builder.set_cache_size(CACHE_BYTES);
    builder
}

/// A database that opened, and what had to be done to open it.
pub(super) struct Opened {
    pub db: Database,
    pub quarantined: Option<PathBuf>,
}

/// Errors that say something else holds the file or we may not touch it;
/// the file itself is fine and must not be quarantined.
fn is_access_problem(e: &DatabaseError) -> bool {
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => true,
        DatabaseError::Storage(StorageError::Io(io)) => matches!(
            io.kind(),
            std::io::ErrorKind::PermissionDenied
                | std::io::ErrorKind::NotFound
                | std::io::ErrorKind::ReadOnlyFilesystem
                | std::io::ErrorKind::StorageFull
                | std::io::ErrorKind::QuotaExceeded
                | std::io::ErrorKind::WouldBlock
        ),
        _ => false,
    }
}

/// Opens the queue file, repairing it if the last run did not close it. A
/// file that cannot be opened or read is renamed to
/// `{name}.corrupt-{UTC timestamp}` and a fresh queue is started whose
/// sequence numbers start above anything the old file can have held.
pub(super) fn open(path: &Path, create: &Create) -> Result<Opened, QueueError> {
    let open_err = |message: String| QueueError::Open {
        path: path.to_path_buf(),
        message,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| open_err(e.to_string()))?;
    }
    // An erasure interrupted before its new file was put in place: the
    // queue file is whole, and the unfinished copy holds nothing it lacks.
    let unfinished = super::rewrite::rewrite_path(path);
    if unfinished.exists() {
        match std::fs::remove_file(&unfinished) {
            Ok(()) => {
                tracing::warn!(file = %unfinished.display(), "an interrupted erasure's unfinished copy deleted; the erasure was not done and is done again if it was asked for")
            }
            Err(e) => {
                return Err(open_err(format!(
                    "{}: cannot delete: {e}",
                    unfinished.display()
                )));
            }
        }
    }
    let problem = match try_open(path, create) {
        Ok(db) => {
            seq_floor_note(path, &db);
            return Ok(Opened {
                db,
                quarantined: None,
            });
        }
        Err(Attempt::Access(message)) => return Err(open_err(message)),
        Err(Attempt::Corrupt(message)) => message,
    };
    let floor = next_seq_floor(path);
    let aside = quarantine_name(path);
    std::fs::rename(path, &aside).map_err(|e| {
        open_err(format!(
            "file is unreadable ({problem}) and cannot be moved aside: {e}"
        ))
    })?;
    tracing::error!(
        queue = %path.display(),
        moved_to = %aside.display(),
        problem = %problem,
        next_seq = floor,
        "QUEUE FILE QUARANTINED: it could not be opened; a fresh queue is started and collection continues. Entries in the old file were not sent."
    );
    let db = create(path).map_err(|e| open_err(format!("fresh queue after quarantine: {e}")))?;
    {
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(NEXT_SEQ, floor).map_err(storage)?;
            txn.open_table(ENTRIES).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
    }
    seq_floor_note(path, &db);
    Ok(Opened {
        db,
        quarantined: Some(aside),
    })
}

enum Attempt {
    Access(String),
    Corrupt(String),
}

fn try_open(path: &Path, create: &Create) -> Result<Database, Attempt> {
    // redb's debug builds assert on some kinds of corruption; treat such a
    // panic like a corruption error so a bad file never stops the gateway.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
        || -> Result<Database, Attempt> {
            let db = create(path).map_err(|e| {
                if is_access_problem(&e) {
                    Attempt::Access(e.to_string())
                } else {
                    Attempt::Corrupt(e.to_string())
                }
            })?;
            // Prove the tables are readable before trusting the file.
            check_tables(&db).map_err(|e| Attempt::Corrupt(e.to_string()))?;
            Ok(db)
        },
    ));
    match opened {
        Ok(result) => result,
        Err(_) => Err(Attempt::Corrupt("storage engine rejected the file".into())),
    }
}

fn check_tables(db: &Database) -> Result<(), QueueError> {
    let txn = db.begin_write().map_err(storage)?;
    {
        let meta = txn.open_table(META).map_err(storage)?;
        let entries = txn.open_table(ENTRIES).map_err(storage)?;
        meta.get(NEXT_SEQ).map_err(storage)?;
        entries.first().map_err(storage)?;
        entries.last().map_err(storage)?;
    }
    txn.commit().map_err(storage)
}

/// Queue files moved aside next to `queue` because they could not be
/// opened (at start, by the queue), sorted by name (oldest first).
pub fn quarantined_files(queue: &Path) -> Vec<String> {
    let (Some(dir), Some(name)) = (queue.parent(), queue.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}{QUARANTINE_MARK}", name.to_string_lossy());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// What follows a queue file's name when it is moved aside.
const QUARANTINE_MARK: &str = ".corrupt-";

fn quarantine_name(path: &Path) -> PathBuf {
    let stamp = time::OffsetDateTime::now_utc();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "queue".to_string());
    path.with_file_name(format!(
        "{name}{QUARANTINE_MARK}{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        stamp.year(),
        u8::from(stamp.month()),
        stamp.day(),
        stamp.hour(),
        stamp.minute(),
        stamp.second()
    ))
}

/// Where the last known sequence high-water mark is noted, outside the queue
/// file, so a quarantine never restarts numbering below it.
fn seq_note_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".seq");
    path.with_file_name(name)
}

/// Sequence numbers handed out between two notes, at most.
pub(super) const SEQ_NOTE_STRIDE: u64 = 1 << 16;

/// The first sequence number of a queue that replaces a quarantined one:
/// above the last note (plus the stride it may have run ahead) and above the
/// current time in microseconds (a counter that started at 1 cannot have
/// passed it), whichever is larger.
fn next_seq_floor(path: &Path) -> u64 {
    let noted = std::fs::read_to_string(seq_note_path(path))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    noted.saturating_add(2 * SEQ_NOTE_STRIDE).max(micros).max(1)
}

fn seq_floor_note(path: &Path, db: &Database) {
    let next = db
        .begin_read()
        .ok()
        .and_then(|txn| txn.open_table(META).ok())
        .and_then(|meta| meta.get(NEXT_SEQ).ok().flatten().map(|v| v.value()))
        .unwrap_or(1);
    note_next_seq(path, next);
}

/// Records `next_seq` beside the queue file (write, fsync, rename).
pub(super) fn note_next_seq(path: &Path, next_seq: u64) {
    let note = seq_note_path(path);
    let tmp = note.with_extension("seq.tmp");
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        writeln!(file, "{next_seq}")?;
        file.sync_all()?;
        std::fs::rename(&tmp, &note)
    })();
    if let Err(e) = result {
        tracing::warn!(note = %note.display(), error = %e, "cannot note the queue's sequence high-water mark");
    }
}

/// A read transaction on a queue file, alongside a running gateway if any.
fn read_only(path: &Path) -> Result<redb::ReadTransaction, QueueError> {
    let db = builder()
        .open_read_only(path)
        .map_err(|e| QueueError::Open {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    db.begin_read().map_err(storage)
}

/// How many entries each storage key encrypts in the queue file at
/// `path`, read without taking it from a running gateway.
pub fn key_counts_of(path: &Path) -> Result<Vec<(String, u64)>, QueueError> {
    key_counts_in(&read_only(path)?)
}

/// Figures of a queue file, read without taking it from a running gateway.
pub fn read_stats(path: &Path) -> Result<QueueStats, QueueError> {
    stats_in(&read_only(path)?)
}

/// The `meta` counter `key` (0 when never set).
pub(super) fn meta_counter(
    meta: &impl ReadableTable<&'static str, u64>,
    key: &str,
) -> Result<u64, QueueError> {
    Ok(meta
        .get(key)
        .map_err(storage)?
        .map(|v| v.value())
        .unwrap_or(0))
}

pub(super) fn stats_in(txn: &redb::ReadTransaction) -> Result<QueueStats, QueueError> {
    let meta = txn.open_table(META).map_err(storage)?;
    let entries = txn.open_table(ENTRIES).map_err(storage)?;
    let get = |key: &str| meta_counter(&meta, key);
    let first = entries.first().map_err(storage)?;
    Ok(QueueStats {
        depth: entries.len().map_err(storage)?,
        bytes: get(BYTES)?,
        next_seq: get(NEXT_SEQ)?.max(1),
        oldest_seq: first.as_ref().map(|(k, _)| k.value()),
        oldest_captured_ns: first.as_ref().and_then(|(_, v)| captured_ns(v.value())),
        dropped_cap: get(DROPPED_CAP)?,
        dropped_age: get(DROPPED_AGE)?,
        erased: get(ERASED)?,
        set_aside: get(SET_ASIDE)?,
    })
}

/// What an export wrote, and the entries it could not read.
#[derive(Debug, Default)]
pub struct ExportSummary {
    /// Batches written.
    pub exported: u64,
    /// Entries that are stored but cannot be decoded (bit rot, a foreign
    /// writer): their sequence number and why. The export goes on past them.
    pub unreadable: Vec<(u64, String)>,
}

/// Writes every queued batch as one JSON line
/// (`{"seq", "driver", "captured_ns", "readings"}`), oldest first. An entry
/// that cannot be decoded is skipped and listed in the summary, so one bad
/// entry never stops a customer's export; only a queue file that cannot be
/// read at all, or output that cannot be written, is an error.
pub fn export_jsonl(
    path: &Path,
    keyring: Option<&super::crypt::Keyring>,
    out: &mut dyn Write,
) -> Result<ExportSummary, QueueError> {
    let mut summary = ExportSummary::default();
    for_each_entry(path, keyring, |seq, plain| {
        let batch = match plain.and_then(|plain| decode_entry(seq, &plain)) {
            Ok(batch) => batch,
            Err(e) => {
                summary.unreadable.push((seq, e.to_string()));
                return Ok(());
            }
        };
        serde_json::to_writer(&mut *out, &ExportLine { seq, batch: &batch }).map_err(storage)?;
        out.write_all(b"\n").map_err(storage)?;
        summary.exported += 1;
        Ok(())
    })?;
    Ok(summary)
}

/// Calls `each` with every entry of the queue file at `path` in order:
/// its sequence number and its plaintext form (header, then JSON; or why
/// it cannot be read), without taking the file from a running gateway.
pub fn for_each_entry(
    path: &Path,
    keyring: Option<&super::crypt::Keyring>,
    mut each: impl FnMut(u64, Result<Vec<u8>, QueueError>) -> Result<(), QueueError>,
) -> Result<(), QueueError> {
    let txn = read_only(path)?;
    let salt = read_salt(&txn)?.unwrap_or_default();
    let entries = txn.open_table(ENTRIES).map_err(storage)?;
    for item in entries.iter().map_err(storage)? {
        let (key, value) = item.map_err(storage)?;
        let seq = key.value();
        let plain = super::plain(keyring, &salt, seq, value.value()).map(|p| p.into_owned());
        each(seq, plain)?;
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct ExportLine<'a> {
    seq: u64,
    #[serde(flatten)]
    batch: &'a Batch,
}

/// Opens the file again after an I/O error (repairing it if needed), without
/// quarantining: the file was good a moment ago. Returns its `next_seq`.
pub(super) fn reopen(path: &Path, create: &Create) -> Result<(Database, u64), QueueError> {
    let db = create(path).map_err(|e| QueueError::Open {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let next = {
        let txn = db.begin_read().map_err(storage)?;
        stats_in(&txn)?.next_seq
    };
    Ok((db, next))
}
