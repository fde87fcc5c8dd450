//! The queue against a failing disk, everywhere the unit tests run: a redb
//! storage backend over the real file that fails writes (disk full),
//! fails fsyncs (a failing device), or writes only part of a block and then
//! fails (a torn write), on demand. What the queue promises (captured
//! means durable, I/O errors lose nothing, sequence numbers never reused)
//! must hold through each.

use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

use super::*;
use crate::reading::Value;

/// Which faults are on; shared by every backend a queue opens.
#[derive(Debug, Default)]
struct Faults {
    /// `write` and `set_len` fail with "no space left on device".
    disk_full: AtomicBool,
    /// `sync_data` fails with an I/O error.
    sync_fails: AtomicBool,
    /// `write` writes the first half of the block, then fails.
    torn_writes: AtomicBool,
    /// Faults injected so far.
    injected: AtomicU64,
}

impl Faults {
    fn clear(&self) {
        self.disk_full.store(false, Ordering::SeqCst);
        self.sync_fails.store(false, Ordering::SeqCst);
        self.torn_writes.store(false, Ordering::SeqCst);
    }

    fn inject(&self, what: io::ErrorKind, message: &str) -> io::Error {
        self.injected.fetch_add(1, Ordering::SeqCst);
        io::Error::new(what, message.to_string())
    }
}

/// The queue file (redb's own file backend, locks included), through
/// [`Faults`].
#[derive(Debug)]
struct FaultyFile {
    file: FileBackend,
    faults: Arc<Faults>,
}

impl StorageBackend for FaultyFile {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        if self.faults.disk_full.load(Ordering::SeqCst) && len > self.len()? {
            return Err(self
                .faults
                .inject(io::ErrorKind::StorageFull, "injected: no space left"));
        }
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        if self.faults.sync_fails.load(Ordering::SeqCst) {
            return Err(self
                .faults
                .inject(io::ErrorKind::Other, "injected: fsync failed"));
        }
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        if self.faults.disk_full.load(Ordering::SeqCst) {
            return Err(self
                .faults
                .inject(io::ErrorKind::StorageFull, "injected: no space left"));
        }
        if self.faults.torn_writes.load(Ordering::SeqCst) {
            self.file.write(offset, &data[..data.len() / 2])?;
            return Err(self
                .faults
                .inject(io::ErrorKind::Other, "injected: torn write"));
        }
        self.file.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

/// A queue at `path` whose every open goes through `faults`.
fn faulty_queue(path: &Path, faults: &Arc<Faults>) -> Queue {
    let faults = faults.clone();
    let create: store::Create = Arc::new(move |path: &Path| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| redb::DatabaseError::Storage(redb::StorageError::Io(e)))?;
        store::with_backend(FaultyFile {
            file: FileBackend::new(file)?,
            faults: faults.clone(),
        })
    });
    Queue::open_with(path, QueueOptions::default(), create).unwrap()
}

fn batch(n: i64) -> Batch {
    super::tests::batch("d", n)
}

/// Appends `from..to` each in its own task; none may be answered while the
/// fault is on.
async fn appends_while_failing(
    queue: &Queue,
    from: i64,
    to: i64,
) -> Vec<tokio::task::JoinHandle<Result<u64, QueueError>>> {
    let tasks: Vec<_> = (from..to)
        .map(|n| {
            let q = queue.clone();
            tokio::spawn(async move { q.append(batch(n)).await })
        })
        .collect();
    // Long enough for several failed commits and retries.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for t in &tasks {
        assert!(!t.is_finished(), "an append was answered during the fault");
    }
    tasks
}

/// Every value `0..n` is in the queue exactly once, with sequences `1..=n`
/// in the order they were assigned.
fn assert_all_there(queue: &Queue, n: i64) {
    let read = queue.read_from(0, 1000).unwrap();
    let seqs: Vec<u64> = read.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>());
    let mut values: Vec<i64> = read
        .iter()
        .map(|(_, b)| match b.readings[0].value {
            Value::Int(v) => v,
            ref other => panic!("{other:?}"),
        })
        .collect();
    values.sort_unstable();
    assert_eq!(values, (0..n).collect::<Vec<_>>());
}

async fn answered(tasks: Vec<tokio::task::JoinHandle<Result<u64, QueueError>>>) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seqs = Vec::new();
    for t in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        let seq = tokio::time::timeout(left, t)
            .await
            .expect("an append still waits after the fault cleared")
            .unwrap()
            .unwrap();
        seqs.push(seq);
    }
    seqs.sort_unstable();
    seqs
}

/// One fault kind, start to end: five appends commit, the fault starts,
/// five more wait (reported in `health`, retried), the fault clears, they
/// commit after the first five, and the file reopened from disk holds all
/// ten.
async fn survives(turn_on: impl Fn(&Faults)) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let faults = Arc::new(Faults::default());
    {
        let queue = faulty_queue(&path, &faults);
        for n in 0..5 {
            assert_eq!(queue.append(batch(n)).await.unwrap(), n as u64 + 1);
        }
        turn_on(&faults);
        let waiting = appends_while_failing(&queue, 5, 10).await;
        let health = queue.health();
        assert!(health.io_error.is_some(), "{health:?}");
        assert!(health.commit_retries >= 1, "{health:?}");
        assert!(faults.injected.load(Ordering::SeqCst) > 0);
        faults.clear();
        assert_eq!(answered(waiting).await, (6..=10).collect::<Vec<_>>());
        assert!(queue.health().io_error.is_none());
        assert_all_there(&queue, 10);
    }
    // From the file, as the next start would see it.
    let queue = Queue::open(&path, QueueOptions::default()).unwrap();
    assert!(queue.health().quarantined.is_none());
    assert_all_there(&queue, 10);
    assert_eq!(queue.append(batch(10)).await.unwrap(), 11);
}

#[tokio::test]
async fn a_full_disk_holds_appends_until_space_returns_and_loses_none() {
    survives(|f| f.disk_full.store(true, Ordering::SeqCst)).await;
}

#[tokio::test]
async fn failing_fsyncs_hold_appends_until_they_succeed_and_lose_none() {
    survives(|f| f.sync_fails.store(true, Ordering::SeqCst)).await;
}

#[tokio::test]
async fn torn_writes_hold_appends_and_leave_committed_entries_intact() {
    survives(|f| f.torn_writes.store(true, Ordering::SeqCst)).await;
}

/// The process stops during a torn-write fault (the writer never got a
/// commit through): the next start opens the file without quarantining
/// it, and finds exactly what was committed before.
#[tokio::test]
async fn a_stop_during_torn_writes_keeps_what_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let faults = Arc::new(Faults::default());
    {
        let queue = faulty_queue(&path, &faults);
        for n in 0..5 {
            queue.append(batch(n)).await.unwrap();
        }
        faults.torn_writes.store(true, Ordering::SeqCst);
        let waiting = appends_while_failing(&queue, 5, 8).await;
        for t in waiting {
            t.abort();
        }
    }
    // Dropping the queue fails what it still holds (it was never captured);
    // the fault stays on for that last attempt.
    let queue = Queue::open(&path, QueueOptions::default()).unwrap();
    assert!(queue.health().quarantined.is_none());
    assert_all_there(&queue, 5);
    assert_eq!(queue.append(batch(5)).await.unwrap(), 6);
}
