//! The store-and-forward queue: every batch is committed to a redb file on
//! the gateway before anything is sent, and deleted only after the broker
//! has acknowledged it.
//!
//! # Invariants
//!
//! - **Captured means durable.** [`Queue::append`] returns a sequence number
//!   only after the write transaction holding the batch has committed with
//!   `Durability::Immediate`. A batch whose append returned an error was not
//!   captured, and the caller is told so.
//! - **Sequence numbers are assigned at commit, per gateway, strictly
//!   increasing, never reused.** The next number is stored in the `meta`
//!   table in the same transaction as the entries, so deleting every entry
//!   or restarting cannot make a number come back. A quarantined file is
//!   replaced by one whose numbering starts above anything the old one can
//!   have held (see `store::open`). A gap seen by a subscriber therefore
//!   proves loss, and the only losses are the counted ones below.
//! - **Deleted only after PUBACK, or by a counted policy.** The publisher
//!   hands the writer the sequences the broker acknowledged
//!   ([`Queue::remove_later`]); they are deleted in the writer's next
//!   commit. A crash before that commit re-sends them (a duplicate, never a
//!   loss). The only other deletions are the `max_bytes` cap under
//!   [`FullPolicy::DropOldest`] (oldest never-sent entries first, counted in
//!   `dropped.cap`; entries already handed to the broker, at most the
//!   in-flight window, are kept because they may have arrived) and
//!   `max_age` retention (counted in `dropped.age`); both counters change in
//!   the same transaction as the deletion.
//! - **A damaged entry never stops delivery.** An entry the publisher
//!   cannot read (its bytes damaged on disk, so it fails to decrypt or
//!   parse) is moved, as it is, to the file's `set-aside` table in the
//!   writer's next commit and counted in `set_aside`; the entries after it
//!   are sent. Nothing readable is ever set aside.
//! - **Group commit.** One writer thread takes every request waiting when
//!   the previous commit finished — appends (up to [`MAX_GROUP`]) and
//!   removals — and commits them in one transaction with
//!   `Durability::Immediate`: the batching window is the previous fsync, so
//!   a burst from many drivers and its acknowledgements cost one fsync, and a
//!   lone append no added delay.
//! - **Back-pressure is bounded.** At most [`MAX_WAITING`] appends wait for
//!   the writer; further appends wait for a slot, which holds their drivers.
//! - **I/O errors lose nothing.** When a commit fails (disk full, read-only,
//!   a failing device), the writer keeps the group in memory, reports the
//!   condition ([`QueueHealth::io_error`]), reopens the file and retries with
//!   backoff; appends wait in the bounded channel and then block their
//!   drivers. Nothing is answered until it is committed.
//! - **Bytes are the entries' stored size** (header plus JSON), kept in
//!   `meta` with every change; the file itself is larger by redb's overhead.
//!
//! # Entries
//!
//! An entry is an 8-byte header (the capture time, ns, little endian) and
//! one JSON object, whose kind ([`Entry`]) its fields tell: a driver's
//! batch is the [`Batch`] itself (`driver`, `captured_ns`, `readings`), as
//! every version wrote it; any other kind names itself in a `kind` field
//! (`{"kind":"telemetry","snapshot":{…}}`). Telemetry written before kinds
//! existed (a batch of driver `telemetry` with the snapshot as one text
//! reading) still reads as a telemetry entry. An entry of a kind this
//! version does not know is reported as unreadable with its kind, not
//! guessed at.
//!
//! Tests: `queue::tests` (ordering, reuse, caps, retention, quarantine),
//! `queue::model_tests` (random append/ack/reopen sequences against an
//! in-memory model), and `tests/` (outage, kill -9, broker restarts, disk
//! full, corrupt file) against the real binary and mosquitto.

pub mod crypt;
mod rewrite;
mod store;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redb::{Database, ReadableDatabase};
use tokio::sync::{oneshot, watch};

pub use rewrite::{Erased, Selector};
pub use store::{
    ExportSummary, export_jsonl, for_each_entry, key_counts_of as key_counts, quarantined_files,
    read_stats,
};

use crate::reading::{Batch, Value};
use store::{ENTRIES, storage};

/// The batch in an entry's plaintext form (header, then JSON), as
/// [`for_each_entry`] hands it over.
pub fn decode_plain(seq: u64, plain: &[u8]) -> Result<Batch, QueueError> {
    store::decode_entry(seq, plain)
}

/// Bytes of entries the publisher reads ahead at once (at least one entry).
pub const SEND_READ_BYTES: usize = 1 << 20;

/// Most appends committed in one transaction.
pub const MAX_GROUP: usize = 512;

/// Bytes of appends committed in one transaction, at most (but always
/// at least one append): what the writer holds in memory for a commit.
pub const MAX_GROUP_BYTES: u64 = 4 << 20;

/// Appends that may wait for the writer before drivers block.
pub const MAX_WAITING: usize = MAX_GROUP * 4;

/// What happens when the queue reaches `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Delete the oldest entries to make room; counted in `dropped_cap`.
    #[default]
    DropOldest,
    /// Make drivers wait until the publisher frees space; nothing is dropped.
    Block,
}

/// Limits and policies of a queue.
#[derive(Debug, Clone, Default)]
pub struct QueueOptions {
    /// Cap on the entries' stored size; none when absent.
    pub max_bytes: Option<u64>,
    /// What happens at the cap.
    pub when_full: FullPolicy,
    /// Entries older than this are dropped (counted); kept forever when absent.
    pub max_age: Option<Duration>,
    /// Most appends per commit; `None` means [`MAX_GROUP`]. `Some(1)` gives
    /// one fsync per batch, which the queue benchmark compares against.
    pub max_group: Option<usize>,
    /// How long an append that finds the writer idle may wait for the
    /// batches still expected ([`Queue::expect`]) to share its commit (and
    /// fsync); zero commits at once. With none expected it commits at once.
    pub commit_linger: Duration,
    /// The storage keys: encrypted entries are read with them, and new
    /// entries encrypted with the newest when `encrypt` is set.
    pub keyring: Option<Arc<crypt::Keyring>>,
    /// Encrypt new entries (AES-256-GCM, see [`crypt`]).
    pub encrypt: bool,
}

/// An entry as stored, for the publisher: the batch's JSON, decoded only
/// as far as needed. A data message is this JSON with the gateway and the
/// sequence number added, so an entry that fits one packet is sent without
/// being decoded and encoded again.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    seq: u64,
    json: Vec<u8>,
}

/// What a queue entry carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A driver's batch of readings.
    Batch(Batch),
    /// A driver's batch, already written as the JSON a [`Batch`] becomes
    /// (by [`crate::reading::BatchJson`]).
    Prepared(crate::reading::PreparedBatch),
    /// A telemetry snapshot: its JSON object, as published.
    Telemetry(String),
    /// An audit record: its JSON object, as published.
    Audit(String),
}

/// The kind of a stored entry, from its first fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A batch.
    Batch {
        /// The driver that captured it.
        driver: String,
    },
    /// A telemetry snapshot.
    Telemetry,
    /// An audit record.
    Audit,
}

/// The fields that tell an entry's kind; the rest is checked to be
/// well-formed JSON and skipped.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    driver: Option<std::borrow::Cow<'a, str>>,
}

/// A telemetry entry's body.
#[derive(serde::Deserialize)]
struct TelemetryBody<'a> {
    #[serde(borrow)]
    snapshot: &'a serde_json::value::RawValue,
}

/// The driver name under which telemetry was stored before entries had kinds.
const OLD_TELEMETRY_DRIVER: &str = "telemetry";

impl StoredEntry {
    /// The batch's JSON object as stored.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// The whole batch.
    pub fn batch(&self) -> Result<Batch, QueueError> {
        Batch::from_json(&self.json).map_err(|e| self.corrupt(e))
    }

    /// What the entry is; fails unless it is one well-formed JSON object
    /// of a known kind.
    pub fn kind(&self) -> Result<EntryKind, QueueError> {
        if self.json.first() != Some(&b'{') {
            return Err(self.corrupt("not a JSON object"));
        }
        // A batch is stored with its driver first: read just that name,
        // not the whole entry.
        if let Some(rest) = self.json.strip_prefix(br#"{"driver":"#)
            && let Some(Ok(driver)) = serde_json::Deserializer::from_slice(rest)
                .into_iter::<String>()
                .next()
            && driver != OLD_TELEMETRY_DRIVER
        {
            return Ok(EntryKind::Batch { driver });
        }
        let head: Head<'_> = serde_json::from_slice(&self.json).map_err(|e| self.corrupt(e))?;
        match (head.kind.as_deref(), head.driver) {
            (Some("telemetry"), _) => Ok(EntryKind::Telemetry),
            (Some("audit"), _) => Ok(EntryKind::Audit),
            (Some(other), _) => Err(self.corrupt(format!(
                "an entry of kind {other:?}, which this version does not know"
            ))),
            (None, Some(driver)) if driver == OLD_TELEMETRY_DRIVER => Ok(EntryKind::Telemetry),
            (None, Some(driver)) => Ok(EntryKind::Batch {
                driver: driver.into_owned(),
            }),
            (None, None) => Err(self.corrupt("neither a kind nor a driver")),
        }
    }

    /// The driver that captured this batch; an error for any other kind.
    pub fn driver(&self) -> Result<String, QueueError> {
        match self.kind()? {
            EntryKind::Batch { driver } => Ok(driver),
            EntryKind::Telemetry => Err(self.corrupt("a telemetry entry, not a batch")),
            EntryKind::Audit => Err(self.corrupt("an audit entry, not a batch")),
        }
    }

    /// A telemetry entry's snapshot JSON, as it was captured (also from an
    /// entry written before entries had kinds).
    pub fn telemetry_snapshot(&self) -> Result<Vec<u8>, QueueError> {
        if let Ok(body) = serde_json::from_slice::<TelemetryBody<'_>>(&self.json) {
            return Ok(body.snapshot.get().as_bytes().to_vec());
        }
        let batch = self.batch()?;
        match batch.readings.into_iter().next().map(|r| r.value) {
            Some(Value::Text(json)) if batch.driver == OLD_TELEMETRY_DRIVER => {
                Ok(json.into_bytes())
            }
            _ => Err(self.corrupt("a telemetry entry without a snapshot")),
        }
    }

    /// An audit entry's record JSON, as it was appended.
    pub fn audit_record(&self) -> Result<Vec<u8>, QueueError> {
        #[derive(serde::Deserialize)]
        struct AuditBody<'a> {
            #[serde(borrow)]
            record: &'a serde_json::value::RawValue,
        }
        serde_json::from_slice::<AuditBody<'_>>(&self.json)
            .map(|body| body.record.get().as_bytes().to_vec())
            .map_err(|e| self.corrupt(format!("an audit entry without a record: {e}")))
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> QueueError {
        QueueError::Corrupt {
            seq: self.seq,
            message: e.to_string(),
        }
    }
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The file could not be opened (or created, or quarantined).
    #[error("queue {}: cannot open: {message}", path.display())]
    Open {
        /// The queue file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// redb failed: an I/O error, a full disk, a failed commit.
    #[error("queue: storage error: {0}")]
    Storage(String),
    /// A stored entry cannot be read.
    #[error("queue: entry {seq} is corrupt: {message}")]
    Corrupt {
        /// Its sequence number.
        seq: u64,
        /// What is wrong with it.
        message: String,
    },
    /// The writer is reopening the file after an I/O error; try again.
    #[error("queue: file is being reopened after an I/O error")]
    Unavailable,
    /// The queue is shutting down.
    #[error("queue: closed")]
    Closed,
    /// Entries are encrypted with a key the gateway does not have. The
    /// file is left as it is: nothing in it is lost for want of a key.
    #[error("queue {}: {message}", path.display())]
    Key {
        /// The queue file.
        path: PathBuf,
        /// Which key is missing and where it was looked for.
        message: String,
    },
}

/// Figures about the queue's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Entries stored.
    pub depth: u64,
    /// Their stored size (header plus JSON).
    pub bytes: u64,
    /// The sequence number the next append gets.
    pub next_seq: u64,
    /// The oldest entry's sequence number.
    pub oldest_seq: Option<u64>,
    /// When the oldest entry was captured, ns since the Unix epoch.
    pub oldest_captured_ns: Option<u64>,
    /// Entries dropped at the `max_bytes` cap, ever.
    pub dropped_cap: u64,
    /// Entries dropped by `max_age`, ever.
    pub dropped_age: u64,
    /// Entries erased on request ([`Queue::erase`]), ever.
    pub erased: u64,
    /// Entries found unreadable when being sent (damaged on disk) and set
    /// aside in the file's `set-aside` table, ever: delivery goes on past
    /// them, nothing is deleted.
    pub set_aside: u64,
}

/// Conditions worth an operator's attention.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueHealth {
    /// The file found at startup could not be opened and was moved here.
    pub quarantined: Option<PathBuf>,
    /// The last commit failed with this error and is being retried.
    pub io_error: Option<String>,
    /// Appends are waiting for space under [`FullPolicy::Block`].
    pub blocked: bool,
    /// Total time appends have waited for space, in milliseconds.
    pub blocked_ms_total: u64,
    /// Commits that failed and were retried.
    pub commit_retries: u64,
}

/// An entry handed to the writer, not yet known to be durable.
#[derive(Debug)]
pub struct Submitted(oneshot::Receiver<Result<u64, QueueError>>);

impl Submitted {
    /// Its sequence number once it is committed (fsynced), or why it was
    /// not. Dropping a `Submitted` does not withdraw the entry: the writer
    /// commits it all the same.
    pub async fn committed(self) -> Result<u64, QueueError> {
        self.0.await.map_err(|_| QueueError::Closed)?
    }

    /// Like [`Submitted::committed`], by reference: a wait that is
    /// cancelled can be taken up again.
    pub async fn committed_mut(&mut self) -> Result<u64, QueueError> {
        (&mut self.0).await.map_err(|_| QueueError::Closed)?
    }

    /// The outcome if the commit has happened, without waiting.
    pub fn try_committed(&mut self) -> Option<Result<u64, QueueError>> {
        match self.0.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(QueueError::Closed)),
        }
    }
}

/// A handle to the queue; cheap to clone. The file is closed (and the
/// writer thread joined) when the last handle is dropped.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

/// State shared by the handles and the writer thread.
struct Shared {
    path: PathBuf,
    /// How the database is opened (and opened again after an I/O error).
    create: store::Create,
    options: QueueOptions,
    /// `None` while the writer reopens the file after an I/O error.
    db: RwLock<Option<Database>>,
    health: Mutex<QueueHealth>,
    closing: std::sync::atomic::AtomicBool,
    /// One past the highest sequence handed to the broker by this process.
    sent_below: std::sync::atomic::AtomicU64,
    /// Held while the publisher reads entries and marks them sent, and while
    /// the writer drops entries at the cap, so an entry is never both handed
    /// over and counted as dropped.
    handover: Mutex<()>,
    /// Batches on their way, for the writer's linger.
    gate: Arc<Gate>,
    /// The file's salt for its encryption subkeys; an erasure's new file
    /// has a new one (changed under the `db` write lock).
    salt: RwLock<[u8; 32]>,
}

impl Shared {
    /// The plaintext form of a stored entry (decrypted if encrypted).
    fn plain<'a>(
        &self,
        seq: u64,
        stored: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, QueueError> {
        let salt = *self
            .salt
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        plain(self.options.keyring.as_deref(), &salt, seq, stored)
    }
}

/// The plaintext form of `stored`, entry `seq` of the file with `salt`.
fn plain<'a>(
    keyring: Option<&crypt::Keyring>,
    salt: &[u8; 32],
    seq: u64,
    stored: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, QueueError> {
    if !crypt::is_encrypted(stored) {
        return Ok(std::borrow::Cow::Borrowed(stored));
    }
    let corrupt = |message: String| QueueError::Corrupt { seq, message };
    let keyring =
        keyring.ok_or_else(|| corrupt("encrypted, and no storage key is configured".into()))?;
    keyring
        .open(salt, seq, stored)
        .map(std::borrow::Cow::Owned)
        .map_err(corrupt)
}

/// What the writer's linger and the [`Expected`] guards share.
#[derive(Default)]
struct Gate {
    /// Batches on their way: polls under way, each holding an [`Expected`].
    coming: std::sync::atomic::AtomicUsize,
    /// The writer is lingering for them; the last [`Expected`] to go wakes it.
    lingering: std::sync::atomic::AtomicBool,
}

struct Inner {
    shared: Arc<Shared>,
    requests: Option<std::sync::mpsc::Sender<writer::Request>>,
    /// One permit per append waiting for the writer.
    slots: Arc<tokio::sync::Semaphore>,
    writer: Option<std::thread::JoinHandle<()>>,
    committed: watch::Receiver<u64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Closing the channel ends the writer after it commits what it holds.
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// A batch on its way to the queue; see [`Queue::expect`].
pub struct Expected {
    gate: Arc<Gate>,
    /// Weak, so a guard keeps neither the writer's channel (closing it is
    /// what ends the writer when the queue is dropped) nor the file open.
    inner: std::sync::Weak<Inner>,
}

impl Drop for Expected {
    fn drop(&mut self) {
        // Sequentially consistent with the writer's `lingering` then
        // `coming`: either it sees none coming, or this sees it lingering.
        let last = self.gate.coming.fetch_sub(1, Ordering::SeqCst) == 1;
        if last
            && self.gate.lingering.load(Ordering::SeqCst)
            && let Some(inner) = self.inner.upgrade()
            && let Some(requests) = &inner.requests
        {
            let _ = requests.send(writer::Request::Nudge);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn with_db<R>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, QueueError>,
    ) -> Result<R, QueueError> {
        let guard = self
            .db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(QueueError::Unavailable),
        }
    }
}

impl Queue {
    /// Opens (or creates) the queue file and starts its writer thread. A file
    /// that cannot be opened is quarantined (see [`QueueHealth::quarantined`]).
    pub fn open(path: &Path, options: QueueOptions) -> Result<Queue, QueueError> {
        Queue::open_with(path, options, store::on_file())
    }

    /// Like [`Queue::open`], with the database opened by `create`.
    fn open_with(
        path: &Path,
        options: QueueOptions,
        create: store::Create,
    ) -> Result<Queue, QueueError> {
        let opened = store::open(path, &create)?;
        let (next_seq, bytes) = {
            let txn = opened.db.begin_read().map_err(storage)?;
            let stats = store::stats_in(&txn)?;
            (stats.next_seq, stats.bytes)
        };
        // Every key the file's entries need must be at hand; a missing one
        // is a refusal, never a quarantine.
        let key_err = |message: String| QueueError::Key {
            path: path.to_path_buf(),
            message,
        };
        for (id, count) in store::key_counts(&opened.db)? {
            let known = (options.keyring.as_ref()).is_some_and(|k| k.ids().contains(&id));
            if count > 0 && !known {
                return Err(key_err(match &options.keyring {
                    Some(k) => format!(
                        "{count} entries are encrypted with storage key {id}, which is not in {} (keys there: {}); restore the key file that holds it",
                        k.path().display(),
                        k.ids().join(", ")
                    ),
                    None => format!(
                        "{count} entries are encrypted with storage key {id}, and no storage key file was found; restore it ([storage] key_file)"
                    ),
                }));
            }
        }
        let salt = store::salt(&opened.db)?;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            create,
            options,
            db: RwLock::new(Some(opened.db)),
            health: Mutex::new(QueueHealth {
                quarantined: opened.quarantined,
                ..QueueHealth::default()
            }),
            closing: std::sync::atomic::AtomicBool::new(false),
            sent_below: std::sync::atomic::AtomicU64::new(0),
            handover: Mutex::new(()),
            gate: Arc::default(),
            salt: RwLock::new(salt),
        });
        let (committed_tx, committed) = watch::channel(next_seq - 1);
        let (requests, writer) = writer::spawn(shared.clone(), next_seq, bytes, committed_tx)
            .map_err(|e| QueueError::Open {
                path: path.to_path_buf(),
                message: format!("cannot start writer thread: {e}"),
            })?;
        Ok(Queue {
            inner: Arc::new(Inner {
                shared,
                requests: Some(requests),
                slots: Arc::new(tokio::sync::Semaphore::new(MAX_WAITING)),
                writer: Some(writer),
                committed,
            }),
        })
    }

    /// Commits a batch durably and returns its sequence number.
    pub async fn append(&self, batch: Batch) -> Result<u64, QueueError> {
        self.append_entry(Entry::Batch(batch)).await
    }

    /// Commits an entry of any kind durably and returns its sequence number.
    pub async fn append_entry(&self, entry: Entry) -> Result<u64, QueueError> {
        self.submit_entry(entry).await?.committed().await
    }

    /// Hands a batch to the writer and returns once it is queued for the
    /// next commit, not once it is durable: [`Submitted::committed`] says
    /// that. Batches submitted in order are committed in order (their
    /// sequence numbers increase), so a driver may poll again while its
    /// previous batches are being written. Waits while `MAX_WAITING`
    /// appends are already waiting for the writer.
    pub async fn submit(&self, batch: Batch) -> Result<Submitted, QueueError> {
        self.submit_entry(Entry::Batch(batch)).await
    }

    /// [`Queue::submit`] for an entry of any kind.
    pub async fn submit_entry(&self, entry: Entry) -> Result<Submitted, QueueError> {
        // The entry is in `encoded` now; waiting for the writer holds one
        // copy of it, not two.
        let encoded = store::encode_entry(entry)?;
        let slot = self
            .inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| QueueError::Closed)?;
        let (reply, answer) = oneshot::channel();
        self.send(writer::Request::Append(writer::Append {
            encoded,
            reply,
            _slot: slot,
        }))?;
        Ok(Submitted(answer))
    }

    /// The highest sequence number committed so far; changes on every commit.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.inner.committed.clone()
    }

    /// Up to `max` entries with sequence `>= from`, in order.
    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<(u64, Batch)>, QueueError> {
        self.read_entries(from, max, usize::MAX, store::decode_entry, None)
    }

    /// Up to `max` stored entries from `from` on, each mapped by `entry`.
    /// Up to `max` entries from `from` on, stopping early once `max_bytes`
    /// of them are read (always at least one).
    /// With `unreadable`, an entry that cannot be read is listed there
    /// (its sequence number and why) instead of failing the read.
    fn read_entries<T>(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
        entry: impl Fn(u64, &[u8]) -> Result<T, QueueError>,
        mut unreadable: Option<&mut Vec<(u64, String)>>,
    ) -> Result<Vec<(u64, T)>, QueueError> {
        self.inner.shared.with_db(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(ENTRIES).map_err(storage)?;
            let mut out = Vec::new();
            let mut bytes = 0usize;
            for item in table.range(from..).map_err(storage)?.take(max) {
                if bytes >= max_bytes {
                    break;
                }
                let (key, value) = item.map_err(storage)?;
                let seq = key.value();
                bytes = bytes.saturating_add(value.value().len());
                let read = (self.inner.shared.plain(seq, value.value()))
                    .and_then(|plain| entry(seq, &plain));
                match (read, unreadable.as_deref_mut()) {
                    (Ok(item), _) => out.push((seq, item)),
                    (Err(QueueError::Corrupt { message, .. }), Some(bad)) => {
                        bad.push((seq, message));
                    }
                    (Err(e), _) => return Err(e),
                }
            }
            Ok(out)
        })
    }

    /// Says a batch is on its way (a driver's poll has started). Until the
    /// guard drops, an append that finds the writer idle waits for it (up
    /// to `commit_linger`), so batches polled together share one commit;
    /// with nothing expected, an append is committed at once. Drop the
    /// guard once the batch is submitted or the poll gave none.
    pub fn expect(&self) -> Expected {
        let gate = self.inner.shared.gate.clone();
        gate.coming.fetch_add(1, Ordering::SeqCst);
        Expected {
            gate,
            inner: Arc::downgrade(&self.inner),
        }
    }

    fn send(&self, request: writer::Request) -> Result<(), QueueError> {
        self.inner
            .requests
            .as_ref()
            .ok_or(QueueError::Closed)?
            .send(request)
            .map_err(|_| QueueError::Closed)
    }

    /// Hands acknowledged sequences to the writer, which deletes them in its
    /// next commit; returns at once. Sequences no longer present are ignored.
    pub fn remove_later(&self, seqs: Vec<u64>) -> Result<(), QueueError> {
        self.send(writer::Request::Remove { seqs, done: None })
    }

    /// Deletes sequences and returns once the deletion is committed.
    pub async fn remove(&self, seqs: Vec<u64>) -> Result<(), QueueError> {
        let (done, answer) = oneshot::channel();
        self.send(writer::Request::Remove {
            seqs,
            done: Some(done),
        })?;
        answer.await.map_err(|_| QueueError::Closed)?
    }

    /// Erases the entries `selector` names and rewrites the file without
    /// them (see [`rewrite`](self)): they are in no file afterwards.
    /// Appends wait meanwhile; returns once the new file is in place.
    pub async fn erase(&self, selector: Selector) -> Result<Erased, QueueError> {
        selector.check().map_err(QueueError::Storage)?;
        let (done, answer) = oneshot::channel();
        self.send(writer::Request::Erase { selector, done })?;
        answer.await.map_err(|_| QueueError::Closed)?
    }

    /// Returns once every request handed over before it is committed.
    pub async fn sync(&self) -> Result<(), QueueError> {
        self.remove(Vec::new()).await
    }

    /// Up to `max` entries from `from` on, for the publisher, marked as sent
    /// in the same step. An entry that cannot be read (damaged on disk) is
    /// left out and moved to the file's `set-aside` table by the writer,
    /// counted in [`QueueStats::set_aside`]: one bad entry never stops
    /// delivery of the others. The same: the size cap then drops only never-sent entries, so
    /// a dropped entry is one that surely never arrived and `dropped_cap`
    /// counts real losses exactly.
    pub fn read_for_send(
        &self,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, StoredEntry)>, QueueError> {
        let shared = &self.inner.shared;
        let _guard = lock(&shared.handover);
        // A few large entries (a plugin's ~2 MiB results) must not pull
        // the whole in-flight window into memory at once.
        let mut unreadable = Vec::new();
        let entries = self.read_entries(
            from,
            max,
            SEND_READ_BYTES,
            |seq, bytes| {
                Ok(StoredEntry {
                    seq,
                    json: store::entry_json(seq, bytes)?.to_vec(),
                })
            },
            Some(&mut unreadable),
        )?;
        if !unreadable.is_empty() {
            // Delivery goes on past them; the writer moves them aside.
            self.send(writer::Request::SetAside(unreadable))?;
        }
        if let Some((last, _)) = entries.last() {
            shared
                .sent_below
                .fetch_max(last + 1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(entries)
    }

    /// Current figures.
    pub fn stats(&self) -> Result<QueueStats, QueueError> {
        self.inner.shared.with_db(|db| {
            let txn = db.begin_read().map_err(storage)?;
            store::stats_in(&txn)
        })
    }

    /// Conditions worth reporting (quarantine, I/O errors, back-pressure).
    /// Conditions worth an operator's attention, now.
    pub fn health(&self) -> QueueHealth {
        lock(&self.inner.shared.health).clone()
    }

    /// The queue file.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// The storage keys entries are encrypted with now.
    pub fn keys_in_use(&self) -> Result<Vec<String>, QueueError> {
        let counts = self.inner.shared.with_db(store::key_counts)?;
        Ok(counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(id, _)| id)
            .collect())
    }
}

#[cfg(test)]
mod faults;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
