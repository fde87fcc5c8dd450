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
//!   (or restarting) cannot make a number come back. A gap seen by a
//!   subscriber therefore proves loss.
//! - **Deleted only after PUBACK.** The publisher calls [`Queue::remove`]
//!   with sequences the broker acknowledged. Removal commits with
//!   `Durability::None`: it becomes durable with the next append's commit,
//!   and a crash before that re-sends the entries (a duplicate, never a loss).
//! - **Group commit.** One writer thread takes every append waiting at that
//!   moment (up to [`MAX_GROUP`]) and commits them in one transaction, so the
//!   capture rate is not bounded by one fsync per batch.
//!
//! Tests: `queue::tests` (order, no reuse after delete and reopen, group
//! commit) and the end-to-end test in `tests/`.

mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use tokio::sync::{oneshot, watch};

use crate::reading::Batch;

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";

/// Most appends committed in one transaction.
pub const MAX_GROUP: usize = 512;

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    #[error("queue {}: cannot open: {message}", path.display())]
    Open { path: PathBuf, message: String },
    #[error("queue: storage error: {0}")]
    Storage(String),
    #[error("queue: entry {seq} is corrupt: {message}")]
    Corrupt { seq: u64, message: String },
    #[error("queue: writer has stopped")]
    Closed,
}

fn storage(e: impl std::fmt::Display) -> QueueError {
    QueueError::Storage(e.to_string())
}

/// A handle to the queue; cheap to clone. The file is closed (and the
/// writer thread joined) when the last handle is dropped.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    appends: Option<std::sync::mpsc::SyncSender<writer::Append>>,
    writer: Option<std::thread::JoinHandle<()>>,
    committed: watch::Receiver<u64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer after it commits what it holds.
        self.appends.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Queue {
    /// Opens (or creates) the queue file and starts its writer thread.
    pub fn open(path: &Path) -> Result<Queue, QueueError> {
        let open_err = |message: String| QueueError::Open {
            path: path.to_path_buf(),
            message,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| open_err(e.to_string()))?;
        }
        let db = Database::create(path).map_err(|e| open_err(e.to_string()))?;
        let next_seq = {
            let txn = db.begin_write().map_err(|e| open_err(e.to_string()))?;
            let next = {
                let meta = txn.open_table(META).map_err(|e| open_err(e.to_string()))?;
                let entries = txn
                    .open_table(ENTRIES)
                    .map_err(|e| open_err(e.to_string()))?;
                let stored = meta
                    .get(NEXT_SEQ)
                    .map_err(|e| open_err(e.to_string()))?
                    .map(|v| v.value())
                    .unwrap_or(1);
                let after_last = entries
                    .last()
                    .map_err(|e| open_err(e.to_string()))?
                    .map(|(k, _)| k.value() + 1)
                    .unwrap_or(1);
                stored.max(after_last)
            };
            txn.commit().map_err(|e| open_err(e.to_string()))?;
            next
        };
        let db = Arc::new(db);
        let (committed_tx, committed) = watch::channel(next_seq - 1);
        let (appends, writer) = writer::spawn(db.clone(), next_seq, committed_tx)
            .map_err(|e| open_err(format!("cannot start writer thread: {e}")))?;
        Ok(Queue {
            inner: Arc::new(Inner {
                db,
                appends: Some(appends),
                writer: Some(writer),
                committed,
            }),
        })
    }

    /// Commits a batch durably and returns its sequence number.
    pub async fn append(&self, batch: Batch) -> Result<u64, QueueError> {
        let encoded = serde_json::to_vec(&batch).map_err(storage)?;
        let (reply, answer) = oneshot::channel();
        let sender = self.inner.appends.as_ref().ok_or(QueueError::Closed)?;
        match sender.try_send(writer::Append { encoded, reply }) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(QueueError::Closed),
            // The writer is behind: wait for room off the async threads.
            Err(std::sync::mpsc::TrySendError::Full(append)) => {
                let sender = sender.clone();
                tokio::task::spawn_blocking(move || sender.send(append))
                    .await
                    .map_err(|_| QueueError::Closed)?
                    .map_err(|_| QueueError::Closed)?;
            }
        }
        answer.await.map_err(|_| QueueError::Closed)?
    }

    /// The highest sequence number committed so far; changes on every commit.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.inner.committed.clone()
    }

    /// Up to `max` entries with sequence `>= from`, in order.
    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<(u64, Batch)>, QueueError> {
        let txn = self.inner.db.begin_read().map_err(storage)?;
        let table = txn.open_table(ENTRIES).map_err(storage)?;
        let mut out = Vec::new();
        for item in table.range(from..).map_err(storage)?.take(max) {
            let (key, value) = item.map_err(storage)?;
            let seq = key.value();
            let batch = serde_json::from_slice(value.value()).map_err(|e| QueueError::Corrupt {
                seq,
                message: e.to_string(),
            })?;
            out.push((seq, batch));
        }
        Ok(out)
    }

    /// Deletes acknowledged entries (see the module's invariants).
    pub fn remove(&self, seqs: &[u64]) -> Result<(), QueueError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut txn = self.inner.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::None).map_err(storage)?;
        {
            let mut table = txn.open_table(ENTRIES).map_err(storage)?;
            for seq in seqs {
                table.remove(seq).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }

    /// Number of entries waiting and the oldest one's sequence.
    pub fn depth(&self) -> Result<(u64, Option<u64>), QueueError> {
        let txn = self.inner.db.begin_read().map_err(storage)?;
        let table = txn.open_table(ENTRIES).map_err(storage)?;
        let len = table.len().map_err(storage)?;
        let first = table.first().map_err(storage)?.map(|(k, _)| k.value());
        Ok((len, first))
    }
}

#[cfg(test)]
mod tests;
