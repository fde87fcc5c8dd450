//! The audit log: an append-only, hash-chained record of what happened to
//! the gateway and its data (`{data_dir}/audit.log`).
//!
//! Each line is one JSON record `{"n", "at_ms", "event", "detail",
//! "prev", "hash"}`: `n` counts from 1, `prev` is the previous record's
//! `hash` (64 zeros for the first), and `hash` is the SHA-256 of `prev`
//! and the record's JSON without `hash`. `{data_dir}/audit.head` holds the
//! last record's `n` and `hash`, so a log cut short is told from one that
//! ends there. A record is appended under an exclusive lock on the log
//! (the gateway and `ferrule` commands on the same data dir both write),
//! and synced before the head is updated. [`verify`] names the first
//! record that was changed, removed, reordered, or the point where the
//! tail was cut.

use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plugin::trust::sha256_hex;

/// The largest record read back (a line longer than this is damage).
const MAX_LINE: usize = 64 << 10;
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Its number, from 1.
    pub n: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened (`start`, `stop`, `config`, `plugin`, `command`,
    /// `deployment`, `data-access`, `key`, `quarantine`, …).
    pub event: String,
    /// Its particulars.
    pub detail: Value,
    /// The previous record's hash.
    pub prev: String,
    /// SHA-256 of `prev` and this record without `hash`.
    #[serde(default)]
    pub hash: String,
}

#[derive(Serialize)]
struct Unhashed<'a> {
    n: u64,
    at_ms: u64,
    event: &'a str,
    detail: &'a Value,
    prev: &'a str,
}

fn hash_of(r: &Record) -> String {
    let body = serde_json::to_vec(&Unhashed {
        n: r.n,
        at_ms: r.at_ms,
        event: &r.event,
        detail: &r.detail,
        prev: &r.prev,
    })
    .unwrap_or_default();
    let mut input = r.prev.as_bytes().to_vec();
    input.extend_from_slice(&body);
    sha256_hex(&input)
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Head {
    n: u64,
    hash: String,
    /// Set once retention removed the oldest records: the first record
    /// kept and the hash it chains to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first: Option<(u64, String)>,
    /// Records removed by retention, ever.
    #[serde(default)]
    dropped: u64,
    /// Records removed by `erase --all`, ever.
    #[serde(default)]
    erased: u64,
}

/// The audit log of one data dir.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
}

/// `{data_dir}/audit.log`.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join("audit.log")
}

fn head_path(log: &Path) -> PathBuf {
    log.with_extension("head")
}

impl AuditLog {
    /// The log in `data_dir` (created at the first record).
    pub fn in_dir(data_dir: &Path) -> AuditLog {
        AuditLog {
            path: path_in(data_dir),
        }
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a record; logs (never fails the caller) when it cannot.
    pub fn record(&self, event: &str, detail: Value) {
        if let Err(e) = self.append(event, detail) {
            tracing::error!(log = %self.path.display(), event, error = %e, "AUDIT RECORD NOT WRITTEN");
        }
    }

    /// Appends a record: under the log's lock, chained to the last one,
    /// synced, then the head updated.
    pub fn append(&self, event: &str, detail: Value) -> std::io::Result<Record> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_locked(&self.path)?;
        let _lock = Lock(&file);
        drop_torn_tail(&self.path, &file)?;
        let head = read_head(&self.path)?;
        let head_before = head.clone();
        let record = next_record(&head, event, detail);
        let mut line = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        (&file).write_all(&line)?;
        file.sync_data()?;
        let head = serde_json::to_vec(&Head {
            n: record.n,
            hash: record.hash.clone(),
            ..head_before
        })
        .map_err(std::io::Error::other)?;
        crate::plugin::trust::write_atomically(&head_path(&self.path), &head, None)?;
        Ok(record)
    }
}

impl AuditLog {
    /// Replaces the log with one new record, chained to the last one (its
    /// `prev` is the old head's hash, and the head notes that the chain
    /// now starts there), counting the records removed. `erase --all`
    /// leaves the log holding only its own record this way.
    pub fn restart(&self, event: &str, detail: Value) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_locked(&self.path)?;
        let _lock = Lock(&file);
        let head = read_head(&self.path)?;
        let held = match (head.n, &head.first) {
            (0, _) => 0,
            (n, Some((first, _))) => n.saturating_sub(*first) + 1,
            (n, None) => n,
        };
        let record = next_record(&head, event, detail);
        let mut line = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let new_head = Head {
            n: record.n,
            hash: record.hash.clone(),
            first: Some((record.n, record.prev.clone())),
            dropped: head.dropped,
            erased: head.erased + held,
        };
        // The head first: a crash between the two leaves a head that names
        // a record the old log lacks, which `verify` reports, rather than
        // a new log whose start nothing vouches for.
        let json = serde_json::to_vec(&new_head).map_err(std::io::Error::other)?;
        crate::plugin::trust::write_atomically(&head_path(&self.path), &json, None)?;
        crate::plugin::trust::write_atomically(&self.path, &line, None)?;
        Ok(())
    }
}

/// Records removed from the log at `path`, ever: by retention, and by
/// `erase --all`.
pub fn removed(path: &Path) -> (u64, u64) {
    read_head(path).map_or((0, 0), |h| (h.dropped, h.erased))
}

/// The record after the one `head` names, hashed.
fn next_record(head: &Head, event: &str, detail: Value) -> Record {
    let mut record = Record {
        n: head.n + 1,
        at_ms: crate::reading::now_ms(),
        event: event.to_string(),
        detail,
        prev: if head.n == 0 {
            GENESIS.to_string()
        } else {
            head.hash.clone()
        },
        hash: String::new(),
    };
    record.hash = hash_of(&record);
    record
}

fn read_head(log: &Path) -> std::io::Result<Head> {
    match crate::plugin::trust::read_bounded(&head_path(log), 4096) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Head::default()),
        Err(e) => Err(e),
    }
}

/// The log file opened for appending and locked (the lock is released
/// when the file is closed). The log may be replaced (retention,
/// `erase --all`) between opening and locking: then the file now at the
/// path is opened again, so no record goes to a replaced file.
fn open_locked(path: &Path) -> std::io::Result<std::fs::File> {
    loop {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        std::mem::forget(Lock::exclusive(&file)?);
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let held = file.metadata()?;
            let current = std::fs::metadata(path);
            if current.is_ok_and(|c| c.ino() == held.ino() && c.dev() == held.dev()) {
                return Ok(file);
            }
        }
        #[cfg(not(unix))]
        return Ok(file);
    }
}

/// An exclusive `flock` held until dropped.
struct Lock<'a>(&'a std::fs::File);

impl<'a> Lock<'a> {
    fn exclusive(file: &'a std::fs::File) -> std::io::Result<Lock<'a>> {
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock on a descriptor this function borrows.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(Lock(file))
    }
}

impl Drop for Lock<'_> {
    fn drop(&mut self) {
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: as above.
            unsafe {
                libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
            }
        }
    }
}

/// What [`verify`] found wrong, at the first place it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Break {
    /// A line that is not a record.
    #[error("line {line}: not an audit record ({why})")]
    Unreadable {
        /// 1-based line.
        line: u64,
        /// Why.
        why: String,
    },
    /// A record whose content does not match its hash.
    #[error("record {n} (line {line}) was changed: its content does not match its hash")]
    Changed {
        /// Its number.
        n: u64,
        /// 1-based line.
        line: u64,
    },
    /// Records missing or out of order before this one.
    #[error(
        "line {line}: record {found} where record {expected} belongs (records removed or reordered)"
    )]
    Sequence {
        /// 1-based line.
        line: u64,
        /// The number expected there.
        expected: u64,
        /// The number found.
        found: u64,
    },
    /// A record not chained to the one before it.
    #[error(
        "record {n} (line {line}) does not follow the record before it (removed, reordered or replaced)"
    )]
    Chain {
        /// Its number.
        n: u64,
        /// 1-based line.
        line: u64,
    },
    /// The log ends before the last record written.
    #[error("the log ends at record {last}, but record {head} was written (the tail was cut)")]
    Truncated {
        /// The last record in the log.
        last: u64,
        /// The last record the head says was written.
        head: u64,
    },
    /// The last record is not the one the head names.
    #[error("record {n} is not the one last written (replaced)")]
    Head {
        /// Its number.
        n: u64,
    },
}

/// Checks the whole chain of the log at `path`; the number of records.
pub fn verify(path: &Path) -> Result<u64, Break> {
    let head = read_head(path).unwrap_or_default();
    // After retention the log starts at the first record kept.
    let (first_n, first_prev) = head.first.clone().unwrap_or((1, GENESIS.to_string()));
    let mut last: Option<Record> = None;
    let mut lines = 0u64;
    for_each(path, |line, record| {
        lines = line;
        let expected = last.as_ref().map_or(first_n, |r| r.n + 1);
        if record.n != expected {
            return Err(Break::Sequence {
                line,
                expected,
                found: record.n,
            });
        }
        if hash_of(&record) != record.hash {
            return Err(Break::Changed { n: record.n, line });
        }
        let prev = last
            .as_ref()
            .map_or(first_prev.as_str(), |r| r.hash.as_str());
        if record.prev != prev {
            return Err(Break::Chain { n: record.n, line });
        }
        last = Some(record);
        Ok(true)
    })?;
    let end = last.as_ref().map_or(0, |r| r.n);
    if head.n > end {
        return Err(Break::Truncated {
            last: end,
            head: head.n,
        });
    }
    if let Some(r) = &last
        && head.n == r.n
        && head.hash != r.hash
    {
        return Err(Break::Head { n: r.n });
    }
    let _ = lines;
    Ok(end.saturating_sub(first_n.saturating_sub(1)))
}

/// What [`AuditLog::retain`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    /// Records removed now.
    pub dropped: u64,
    /// Records removed by retention, ever.
    pub dropped_total: u64,
}

impl AuditLog {
    /// Removes the records older than `max_age`, then the oldest until the
    /// log is at most `max_bytes`; the records kept still verify (the head
    /// notes where the chain now starts). Removals are counted, and
    /// recorded in the log.
    pub fn retain(
        &self,
        max_age: std::time::Duration,
        max_bytes: u64,
    ) -> std::io::Result<Retained> {
        if !self.path.exists() {
            return Ok(Retained::default());
        }
        let file = open_locked(&self.path)?;
        let _lock = Lock(&file);
        let cutoff = crate::reading::now_ms()
            .saturating_sub(u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX));
        // Read line by line (the log may be hundreds of MiB): how many of
        // the oldest records go, and the first one kept.
        let len = file.metadata()?.len();
        let whole = whole_lines_end(&self.path, len)?;
        let mut reader = std::io::BufReader::new(std::fs::File::open(&self.path)?);
        let mut line = Vec::new();
        let (mut start, mut offset, mut kept_from) = (0u64, 0u64, 0u64);
        let first: Option<Record>;
        loop {
            line.clear();
            let read = (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)? as u64;
            // The newest whole record always stays: it anchors the chain.
            if read == 0 || !line.ends_with(b"\n") || offset + read >= whole {
                first = serde_json::from_slice(&line).ok();
                break;
            }
            let record = serde_json::from_slice::<Record>(&line).ok();
            let old = record.as_ref().is_some_and(|r| r.at_ms < cutoff);
            if !(old || len - offset > max_bytes) {
                first = record;
                break;
            }
            offset += read;
            start += 1;
            kept_from = offset;
        }
        let mut head = read_head(&self.path)?;
        if start == 0 {
            return Ok(Retained {
                dropped: 0,
                dropped_total: head.dropped,
            });
        }
        let first = first.ok_or_else(|| {
            std::io::Error::other("the record after the removed ones is unreadable")
        })?;
        copy_from(&self.path, kept_from)?;
        head.first = Some((first.n, first.prev.clone()));
        head.dropped += start;
        let json = serde_json::to_vec(&head).map_err(std::io::Error::other)?;
        crate::plugin::trust::write_atomically(&head_path(&self.path), &json, None)?;
        drop(_lock);
        let retained = Retained {
            dropped: start,
            dropped_total: head.dropped,
        };
        self.record(
            "retention",
            serde_json::json!({
                "dropped": retained.dropped,
                "dropped_total": retained.dropped_total,
                "first_kept": first.n,
                "max_age_days": max_age.as_secs() / 86_400,
                "max_bytes": max_bytes,
            }),
        );
        Ok(retained)
    }
}

/// Cuts a record left half-written by a crash off the end of the log (its
/// writer died before it was synced and the head moved to it, so it was
/// never recorded), so the next record starts on a line of its own.
fn drop_torn_tail(path: &Path, file: &std::fs::File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    let whole = whole_lines_end(path, len)?;
    if whole < len {
        tracing::warn!(log = %path.display(), bytes = len - whole, "audit log: a record cut short by a crash removed from its end");
        file.set_len(whole)?;
        file.sync_data()?;
    }
    Ok(())
}

/// Where the last whole line (ending in a newline) of the file at `path`,
/// `len` bytes long, ends: a record being written may follow it.
fn whole_lines_end(path: &Path, len: u64) -> std::io::Result<u64> {
    use std::io::Seek;
    let from = len.saturating_sub(MAX_LINE as u64 + 1);
    let mut file = std::fs::File::open(path)?;
    file.seek(std::io::SeekFrom::Start(from))?;
    let mut tail = Vec::new();
    file.take(len - from).read_to_end(&mut tail)?;
    Ok(tail
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| from + i as u64 + 1))
}

/// Replaces the file at `path` with its bytes from `offset` on, streamed
/// through a temporary file beside it (fsync, rename, fsync of the
/// directory).
fn copy_from(path: &Path, offset: u64) -> std::io::Result<()> {
    use std::io::Seek;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut source = std::fs::File::open(path)?;
    source.seek(std::io::SeekFrom::Start(offset))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::copy(&mut source, tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Calls `each` with every record in order (1-based line numbers) until it
/// returns `false`.
pub fn for_each(
    path: &Path,
    mut each: impl FnMut(u64, Record) -> Result<bool, Break>,
) -> Result<(), Break> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Break::Unreadable {
                line: 0,
                why: e.to_string(),
            });
        }
    };
    let mut reader = std::io::BufReader::new(file);
    let mut line = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| Break::Unreadable {
                line: line + 1,
                why: e.to_string(),
            })?;
        if read == 0 {
            return Ok(());
        }
        line += 1;
        if buf.len() > MAX_LINE {
            return Err(Break::Unreadable {
                line,
                why: format!("longer than {MAX_LINE} bytes"),
            });
        }
        let record: Record = serde_json::from_slice(&buf).map_err(|e| Break::Unreadable {
            line,
            why: e.to_string(),
        })?;
        if !each(line, record)? {
            return Ok(());
        }
    }
}

use std::io::Read as _;

/// The OS user running this process, for records of local access.
pub fn os_user() -> String {
    #[cfg(unix)]
    {
        // SAFETY: getuid has no preconditions; getpwuid's result is read
        // at once, before any other call could reuse its buffer.
        unsafe {
            let uid = libc::getuid();
            let pw = libc::getpwuid(uid);
            if !pw.is_null() && !(*pw).pw_name.is_null() {
                let name = std::ffi::CStr::from_ptr((*pw).pw_name);
                return format!("{} (uid {uid})", name.to_string_lossy());
            }
            format!("uid {uid}")
        }
    }
    #[cfg(not(unix))]
    "unknown".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(n: usize) -> (tempfile::TempDir, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::in_dir(dir.path());
        for i in 0..n {
            log.append("test", serde_json::json!({"i": i})).unwrap();
        }
        (dir, log)
    }

    fn lines(log: &AuditLog) -> Vec<String> {
        std::fs::read_to_string(log.path())
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn write(log: &AuditLog, lines: &[String]) {
        std::fs::write(log.path(), lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn an_intact_log_verifies_and_every_kind_of_tampering_is_named() {
        let (_dir, log) = log_with(5);
        assert_eq!(verify(log.path()), Ok(5));
        let original = lines(&log);

        // One changed byte (a digit of the detail).
        let mut changed = original.clone();
        changed[2] = changed[2].replace("\"i\":2", "\"i\":7");
        write(&log, &changed);
        assert_eq!(verify(log.path()), Err(Break::Changed { n: 3, line: 3 }));

        // One record removed.
        let mut removed = original.clone();
        removed.remove(1);
        write(&log, &removed);
        assert_eq!(
            verify(log.path()),
            Err(Break::Sequence {
                line: 2,
                expected: 2,
                found: 3
            })
        );

        // Two records swapped.
        let mut swapped = original.clone();
        swapped.swap(1, 2);
        write(&log, &swapped);
        assert!(matches!(
            verify(log.path()),
            Err(Break::Sequence { line: 2, .. })
        ));

        // The tail cut off.
        write(&log, &original[..3]);
        assert_eq!(
            verify(log.path()),
            Err(Break::Truncated { last: 3, head: 5 })
        );

        // A record renumbered and re-hashed to hide a removal still breaks the chain.
        let mut forged: Vec<Record> = original
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        forged.remove(1);
        for (i, r) in forged.iter_mut().enumerate() {
            r.n = i as u64 + 1;
            r.hash = hash_of(r);
        }
        write(
            &log,
            &forged
                .iter()
                .map(|r| serde_json::to_string(r).unwrap())
                .collect::<Vec<_>>(),
        );
        assert_eq!(verify(log.path()), Err(Break::Chain { n: 2, line: 2 }));

        // Restored, and appended to: intact again.
        write(&log, &original);
        log.append("after", Value::Null).unwrap();
        assert_eq!(verify(log.path()), Ok(6));
    }

    #[test]
    fn retention_removes_the_oldest_records_counts_them_and_the_rest_still_verifies() {
        let (_dir, log) = log_with(20);
        let size = std::fs::metadata(log.path()).unwrap().len();
        let retained = log
            .retain(std::time::Duration::from_secs(3600), size / 2)
            .unwrap();
        assert!(retained.dropped >= 10, "{retained:?}");
        // The kept records and the retention record verify from the new start.
        let kept = verify(log.path()).unwrap();
        assert_eq!(kept, 20 + 1 - retained.dropped);
        // Everything older than the age: all but the newest go.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let again = log
            .retain(std::time::Duration::from_millis(10), u64::MAX)
            .unwrap();
        assert_eq!(again.dropped_total, retained.dropped + again.dropped);
        assert!(verify(log.path()).is_ok());
        // Tampering after retention is still named.
        let mut lines = lines(&log);
        let last = lines.len() - 1;
        lines[last] = lines[last].replacen("\"n\":", "\"n\":9", 1);
        write(&log, &lines);
        assert!(verify(log.path()).is_err());
    }

    #[test]
    fn retention_keeps_the_newest_whole_record_when_a_torn_one_follows() {
        let (_dir, log) = log_with(5);
        std::thread::sleep(std::time::Duration::from_millis(20));
        // A record cut short by a crash mid-write.
        std::fs::OpenOptions::new()
            .append(true)
            .open(log.path())
            .unwrap()
            .write_all(b"{\"n\":6,\"at_ms\":1")
            .unwrap();
        let retained = log
            .retain(std::time::Duration::from_millis(10), u64::MAX)
            .unwrap();
        assert_eq!(retained.dropped, 4);
        let text = std::fs::read_to_string(log.path()).unwrap();
        let first: Record = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first.n, 5, "the newest whole record anchors the chain");
        // The retention record replaced the torn one, and the log verifies.
        assert!(!text.contains("{\"n\":6,\"at_ms\":1,"), "{text}");
        assert_eq!(verify(log.path()).unwrap(), 2);
    }
}

/// How far the audit log has been handed to the publisher's lane
/// (`{data_dir}/audit.shipped`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Shipped {
    n: u64,
    offset: u64,
}

/// Most records handed over per pass.
const SHIP_BATCH: usize = 1000;

/// Copies the records not yet shipped into `lane` (the durable queue the
/// publisher sends on `{prefix}/{gateway}/audit`), every second until
/// `shutdown`: records written while the broker is away, or by `ferrule`
/// commands, are backfilled. A record may be sent twice after a crash
/// (consumers keep one per `n`), never skipped.
pub async fn ship(
    log: AuditLog,
    lane: crate::queue::Queue,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mark = log.path.with_extension("shipped");
    loop {
        let path = log.path.clone();
        let from = crate::plugin::trust::read_bounded(&mark, 4096)
            .ok()
            .and_then(|b| serde_json::from_slice::<Shipped>(&b).ok())
            .unwrap_or_default();
        let read = tokio::task::spawn_blocking(move || unshipped(&path, &from)).await;
        let mut progressed = false;
        if let Ok(Ok((records, upto))) = read {
            let mut shipped = true;
            for json in &records {
                if let Err(e) = lane
                    .append_entry(crate::queue::Entry::Audit(json.clone()))
                    .await
                {
                    tracing::warn!(error = %e, "audit record not queued for publishing; trying again");
                    shipped = false;
                    break;
                }
            }
            if shipped && !records.is_empty() {
                progressed = records.len() == SHIP_BATCH;
                if let Ok(json) = serde_json::to_vec(&upto) {
                    let _ = crate::plugin::trust::write_atomically(&mark, &json, None);
                }
            }
        }
        if progressed {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// Whether the line at `offset` is record `n` (or the end of the file).
fn next_is(file: &mut std::fs::File, offset: u64, n: u64) -> std::io::Result<bool> {
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut reader = std::io::BufReader::new(&mut *file);
    let mut buf = Vec::new();
    let read = (&mut reader)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if read == 0 || buf.last() != Some(&b'\n') {
        return Ok(true);
    }
    Ok(serde_json::from_slice::<Record>(&buf).is_ok_and(|r| r.n == n))
}

/// Records after `from` (at most [`SHIP_BATCH`]) and the mark after them.
fn unshipped(path: &Path, from: &Shipped) -> std::io::Result<(Vec<String>, Shipped)> {
    use std::io::Seek;
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Vec::new(), Shipped::default()));
        }
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    // A log rewritten shorter (retention) is read from its start; the
    // record numbers say what was shipped.
    let mut offset = if from.offset <= len { from.offset } else { 0 };
    if offset > 0 && !next_is(&mut file, offset, from.n + 1)? {
        // Rewritten by retention since: read from the start, by number.
        offset = 0;
    }
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut reader = std::io::BufReader::new(file);
    let mut records = Vec::new();
    let mut at = offset;
    let mut last_n = from.n;
    let mut buf = Vec::new();
    while records.len() < SHIP_BATCH {
        buf.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        // A line still being written (no newline yet) waits for the next pass.
        if read == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        at += read as u64;
        let Ok(record) = serde_json::from_slice::<Record>(&buf) else {
            continue;
        };
        if record.n > last_n {
            last_n = record.n;
            let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
            records.push(line);
        }
    }
    Ok((
        records,
        Shipped {
            n: last_n,
            offset: at,
        },
    ))
}
