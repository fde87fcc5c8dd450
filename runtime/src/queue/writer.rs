//! The queue's single writer: group commit of appends.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};

use redb::Database;
use tokio::sync::{oneshot, watch};

use super::{ENTRIES, MAX_GROUP, META, NEXT_SEQ, QueueError, storage};

pub(super) struct Append {
    pub encoded: Vec<u8>,
    pub reply: oneshot::Sender<Result<u64, QueueError>>,
}

pub(super) fn spawn(
    db: Arc<Database>,
    next_seq: u64,
    committed: watch::Sender<u64>,
) -> std::io::Result<(SyncSender<Append>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(MAX_GROUP * 4);
    let handle = std::thread::Builder::new()
        .name("ferrule-queue".into())
        .spawn(move || run(&db, next_seq, &rx, &committed))?;
    Ok((tx, handle))
}

fn run(db: &Database, mut next_seq: u64, rx: &Receiver<Append>, committed: &watch::Sender<u64>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    // Blocks for the first append of a group, then takes whatever else is waiting.
    while let Ok(first) = rx.recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        match commit(db, next_seq, &group) {
            Ok(()) => {
                let first = next_seq;
                next_seq += group.len() as u64;
                // Publish the new high-water mark before anyone hears back, so
                // a caller never sees its own sequence ahead of `committed`.
                committed.send_replace(next_seq - 1);
                for (offset, append) in group.drain(..).enumerate() {
                    let _ = append.reply.send(Ok(first + offset as u64));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batches = group.len(), "queue commit failed; batches not captured");
                for append in group.drain(..) {
                    let _ = append.reply.send(Err(QueueError::Storage(e.to_string())));
                }
            }
        }
    }
}

fn commit(db: &Database, next_seq: u64, group: &[Append]) -> Result<(), QueueError> {
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut entries = txn.open_table(ENTRIES).map_err(storage)?;
        for (offset, append) in group.iter().enumerate() {
            entries
                .insert(next_seq + offset as u64, append.encoded.as_slice())
                .map_err(storage)?;
        }
        let mut meta = txn.open_table(META).map_err(storage)?;
        meta.insert(NEXT_SEQ, next_seq + group.len() as u64)
            .map_err(storage)?;
    }
    txn.commit().map_err(storage)
}
