//! The queue's single writer. Each cycle takes every request waiting
//! (appends and removals), applies retention, removals and as many appends
//! as the size policy allows in one transaction, commits it with
//! `Durability::Immediate`, and only then answers. Deletions of delivered
//! entries alone do not start a commit at once: they wait up to
//! `REMOVE_LINGER` to share the next append's fsync. An append that finds
//! the writer idle may wait up to `commit_linger` for the batches still
//! expected (polls under way) to share its commit; appends that arrive
//! while a commit runs are taken together by the next one without waiting.
//! A failed commit keeps everything pending and is retried after reopening
//! the file.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

use redb::ReadableTable;
use tokio::sync::{OwnedSemaphorePermit, oneshot, watch};

use crate::backoff::Backoff;

use super::store::{
    self, BYTES, DROPPED_AGE, DROPPED_CAP, ENTRIES, KEY_COUNT, META, NEXT_SEQ, SET_ASIDE, storage,
};
use super::{FullPolicy, MAX_GROUP, MAX_GROUP_BYTES, QueueError, Shared, lock};
use crate::reading::now_ns;

pub(super) enum Request {
    Append(Append),
    Remove {
        seqs: Vec<u64>,
        done: Option<oneshot::Sender<Result<(), QueueError>>>,
    },
    /// The last expected batch was submitted, or will not come.
    Nudge,
    /// Entries the publisher could not read: moved to the set-aside table.
    SetAside(Vec<(u64, String)>),
    /// Erase entries and rewrite the file without them.
    Erase {
        selector: super::Selector,
        done: oneshot::Sender<Result<super::Erased, QueueError>>,
    },
}

pub(super) struct Append {
    pub encoded: Vec<u8>,
    pub reply: oneshot::Sender<Result<u64, QueueError>>,
    /// Released when the append is answered, letting another one in.
    pub _slot: OwnedSemaphorePermit,
}

/// How often retention runs, and how long an idle writer sleeps.
const TICK: Duration = Duration::from_secs(1);
/// Most entries one retention pass deletes (keeps its transaction small).
const RETENTION_BATCH: usize = 10_000;
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a writer blocked at the cap waits for removals before looking again.
const BLOCK_WAIT: Duration = Duration::from_millis(200);
/// Deletions of delivered entries wait this long for an append to share its
/// commit (and fsync) before being committed on their own. A deletion lost
/// to a crash only means the entry is sent again, which QoS 1 allows; a
/// removal someone waits for, a writer blocked at the cap, or shutdown
/// commits at once.
const REMOVE_LINGER: Duration = Duration::from_millis(500);
/// Pending deletions that are committed without waiting.
const REMOVE_BATCH: usize = 4096;
/// A repeated warning (I/O error, cap drops) is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(30);

pub(super) fn spawn(
    shared: Arc<Shared>,
    next_seq: u64,
    bytes_hint: u64,
    committed: watch::Sender<u64>,
) -> std::io::Result<(Sender<Request>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = Writer {
        shared,
        next_seq,
        noted_seq: next_seq,
        committed,
        last_retention: Instant::now(),
        last_warning: None,
        appends: VecDeque::new(),
        removes: Vec::new(),
        removes_since: None,
        remove_waiters: Vec::new(),
        erasures: Vec::new(),
        set_aside: Vec::new(),
        blocked_since: None,
        bytes_hint,
    };
    let handle = std::thread::Builder::new()
        .name("ferrule-queue".into())
        .spawn(move || writer.run(&rx))?;
    Ok((tx, handle))
}

struct Writer {
    shared: Arc<Shared>,
    next_seq: u64,
    /// `next_seq` when the high-water mark was last noted beside the file.
    noted_seq: u64,
    committed: watch::Sender<u64>,
    last_retention: Instant,
    last_warning: Option<Instant>,
    appends: VecDeque<Append>,
    removes: Vec<u64>,
    /// When the oldest pending deletion arrived.
    removes_since: Option<Instant>,
    remove_waiters: Vec<oneshot::Sender<Result<(), QueueError>>>,
    /// Unreadable entries to move to the set-aside table in the next commit.
    set_aside: Vec<(u64, String)>,
    /// Erasures asked for, done before the next commit.
    erasures: Vec<(
        super::Selector,
        oneshot::Sender<Result<super::Erased, QueueError>>,
    )>,
    /// Set while appends wait at the cap under [`FullPolicy::Block`].
    blocked_since: Option<Instant>,
    /// The stored size after the last commit (only this thread changes it).
    bytes_hint: u64,
}

/// What one commit did.
#[derive(Default)]
struct Cycle {
    /// Appends committed (from the front of the pending queue), and the first's sequence.
    appended: usize,
    first: u64,
    dropped_cap: u64,
    expired: u64,
    /// Appends are left waiting at the cap.
    blocked: bool,
    /// The entries' stored size after this cycle.
    bytes_after: u64,
}

impl Writer {
    fn run(mut self, rx: &Receiver<Request>) {
        let mut open = true;
        let mut retry = Backoff::new(RETRY_MIN, RETRY_MAX);
        loop {
            let progress_possible = self.removes_due(open)
                || !self.remove_waiters.is_empty()
                || !self.set_aside.is_empty()
                || (!self.appends.is_empty() && self.blocked_since.is_none());
            if !progress_possible {
                if !open {
                    self.fail_pending(&QueueError::Closed);
                    return;
                }
                let mut wait = if self.blocked_since.is_some() {
                    BLOCK_WAIT
                } else {
                    TICK
                };
                if let Some(since) = self.removes_since {
                    wait = wait.min(REMOVE_LINGER.saturating_sub(since.elapsed()));
                }
                match rx.recv_timeout(wait) {
                    Ok(request) => {
                        self.take(request);
                        // The writer was idle: an append may wait a little
                        // for others to share its commit.
                        if !self.appends.is_empty() && !self.linger(rx) {
                            open = false;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(request) => self.take(request),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            for (selector, done) in std::mem::take(&mut self.erasures) {
                let result = super::rewrite::erase(&self.shared, self.next_seq, &selector);
                match &result {
                    Ok((erased, bytes)) => {
                        self.bytes_hint = *bytes;
                        tracing::info!(erased = erased.erased, kept = erased.kept, queue = %self.shared.path.display(), "queue entries erased; the file was rewritten without them");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, queue = %self.shared.path.display(), "erasure failed");
                        let lost = (self.shared.db.read())
                            .map(|db| db.is_none())
                            .unwrap_or(true);
                        if lost {
                            self.reopen();
                        }
                    }
                }
                let _ = done.send(result.map(|(erased, _)| erased));
            }
            let retention_due = self.last_retention.elapsed() >= TICK;
            if !retention_due
                && !self.removes_due(open)
                && self.remove_waiters.is_empty()
                && self.set_aside.is_empty()
                && self.appends.is_empty()
            {
                continue;
            }
            match self.commit(retention_due) {
                Ok(cycle) => {
                    retry.reset();
                    self.finish(cycle);
                }
                Err(e) => {
                    if self.shared.closing.load(Ordering::SeqCst) {
                        // Shutting down with a failing disk: what is still
                        // pending was never captured, and its callers are told.
                        self.fail_pending(&e);
                        return;
                    }
                    self.io_failed(&e);
                    std::thread::sleep(retry.next_delay());
                    self.reopen();
                }
            }
        }
    }

    /// Gathers the batches still expected ([`super::Queue::expect`]) for
    /// up to the configured linger, or until a commit's worth of appends
    /// waits; false if the queue was closed.
    fn linger(&mut self, rx: &Receiver<Request>) -> bool {
        let linger = self.shared.options.commit_linger;
        if linger.is_zero() {
            return true;
        }
        let deadline = Instant::now() + linger;
        let max_group = self.shared.options.max_group.unwrap_or(MAX_GROUP);
        // Before `coming` is read: see `Expected`'s drop.
        self.shared.gate.lingering.store(true, Ordering::SeqCst);
        let open = loop {
            if self.appends.len() >= max_group
                || self.shared.gate.coming.load(Ordering::SeqCst) == 0
            {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break true;
            }
            match rx.recv_timeout(left) {
                Ok(request) => self.take(request),
                Err(RecvTimeoutError::Timeout) => break true,
                Err(RecvTimeoutError::Disconnected) => break false,
            }
        };
        self.shared.gate.lingering.store(false, Ordering::SeqCst);
        open
    }

    /// Whether pending deletions should be committed without waiting for
    /// an append to share the commit.
    fn removes_due(&self, open: bool) -> bool {
        !self.removes.is_empty()
            && (!open
                || self.blocked_since.is_some()
                || self.removes.len() >= REMOVE_BATCH
                || self
                    .removes_since
                    .is_some_and(|since| since.elapsed() >= REMOVE_LINGER))
    }

    fn take(&mut self, request: Request) {
        match request {
            Request::Append(append) => self.appends.push_back(append),
            Request::Remove { seqs, done } => {
                if self.removes.is_empty() && !seqs.is_empty() {
                    self.removes_since = Some(Instant::now());
                }
                self.removes.extend(seqs);
                if let Some(done) = done {
                    self.remove_waiters.push(done);
                }
            }
            Request::Nudge => {}
            Request::Erase { selector, done } => self.erasures.push((selector, done)),
            Request::SetAside(bad) => {
                for (seq, why) in &bad {
                    if !self.set_aside.iter().any(|(s, _)| s == seq) {
                        tracing::error!(seq, error = %why, queue = %self.shared.path.display(), "QUEUE ENTRY UNREADABLE (damaged on disk): set aside in the file's set-aside table, kept, not sent; delivery goes on");
                    }
                }
                self.set_aside.extend(bad);
            }
        }
    }

    fn fail_pending(&mut self, e: &QueueError) {
        for append in self.appends.drain(..) {
            let _ = append.reply.send(Err(QueueError::Storage(e.to_string())));
        }
        for done in self.remove_waiters.drain(..) {
            let _ = done.send(Err(QueueError::Storage(e.to_string())));
        }
    }

    /// Answers everyone the commit served and updates the reported state.
    fn finish(&mut self, cycle: Cycle) {
        self.last_retention = Instant::now();
        // Health first: whoever hears back must not see a stale condition.
        let mut health = lock(&self.shared.health);
        if let Some(error) = health.io_error.take() {
            tracing::info!(previous_error = %error, retries = health.commit_retries, "queue writes resumed");
        }
        match (cycle.blocked, self.blocked_since) {
            (true, None) => {
                tracing::warn!(
                    max_bytes = self.shared.options.max_bytes.unwrap_or(0),
                    "queue full: drivers wait until the publisher frees space (when_full = block)"
                );
                self.blocked_since = Some(Instant::now());
                health.blocked = true;
            }
            (false, Some(since)) => {
                let waited = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
                health.blocked_ms_total = health.blocked_ms_total.saturating_add(waited);
                health.blocked = false;
                self.blocked_since = None;
                tracing::info!(waited_ms = waited, "queue has space again; drivers resume");
            }
            _ => {}
        }
        drop(health);
        self.set_aside.clear();
        self.removes.clear();
        self.removes_since = None;
        for done in self.remove_waiters.drain(..) {
            let _ = done.send(Ok(()));
        }
        if cycle.appended > 0 {
            // Publish the new high-water mark before anyone hears back, so a
            // caller never sees its own sequence ahead of `committed`.
            self.committed.send_replace(self.next_seq - 1);
            for (offset, append) in self.appends.drain(..cycle.appended).enumerate() {
                let _ = append.reply.send(Ok(cycle.first + offset as u64));
            }
        }
        if self.next_seq >= self.noted_seq + store::SEQ_NOTE_STRIDE {
            store::note_next_seq(&self.shared.path, self.next_seq);
            self.noted_seq = self.next_seq;
        }
        if cycle.dropped_cap > 0 {
            self.warn_dropped(cycle.dropped_cap);
        }
        if cycle.expired > 0 {
            tracing::info!(
                expired = cycle.expired,
                max_age_s = self
                    .shared
                    .options
                    .max_age
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                "queue retention dropped entries older than max_age"
            );
        }
    }

    fn io_failed(&mut self, e: &QueueError) {
        let mut health = lock(&self.shared.health);
        health.commit_retries += 1;
        let first = health.io_error.is_none();
        health.io_error = Some(e.to_string());
        drop(health);
        if first {
            tracing::error!(error = %e, waiting = self.appends.len(), "queue commit failed; readings wait in memory and the commit is retried");
            self.last_warning = Some(Instant::now());
        } else if self.last_warning.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::warn!(error = %e, waiting = self.appends.len(), "queue commit still failing; readings wait in memory");
            self.last_warning = Some(Instant::now());
        }
    }

    /// Drops the database handle and opens the file again: after an I/O
    /// error redb refuses further writes on the old handle.
    fn reopen(&mut self) {
        let mut slot = self
            .shared
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = None;
        match store::reopen(&self.shared.path, &self.shared.create) {
            Ok((db, next_seq)) => {
                self.next_seq = self.next_seq.max(next_seq);
                *slot = Some(db);
            }
            Err(e) => tracing::debug!(error = %e, "queue reopen failed; will retry"),
        }
    }

    fn warn_dropped(&mut self, dropped: u64) {
        if self.last_warning.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::warn!(
                dropped,
                max_bytes = self.shared.options.max_bytes.unwrap_or(0),
                "queue at its size cap: oldest entries dropped (when_full = drop-oldest; counted in dropped_cap)"
            );
            self.last_warning = Some(Instant::now());
        }
    }

    /// One transaction: retention (when due), removals, then appends as the
    /// size policy allows. Commits only if something changed.
    fn commit(&mut self, retention_due: bool) -> Result<Cycle, QueueError> {
        let options = self.shared.options.clone();
        let first = self.next_seq;
        let appends = &self.appends;
        let removes = &self.removes;
        let set_aside = &self.set_aside;
        let shared = &self.shared;
        // A cycle that may drop at the cap holds the hand-over lock from
        // reading the sent mark until its commit (see `Queue::read_for_send`).
        // Encrypted entries are stored with a fixed overhead.
        let keyring = (shared.options.encrypt)
            .then(|| shared.options.keyring.clone())
            .flatten();
        let overhead = if keyring.is_some() {
            super::crypt::OVERHEAD as u64
        } else {
            0
        };
        let incoming: u64 = appends
            .iter()
            .take(MAX_GROUP)
            .map(|a| a.encoded.len() as u64 + overhead)
            .sum();
        let may_drop = options.when_full == FullPolicy::DropOldest
            && options
                .max_bytes
                .is_some_and(|max| self.bytes_hint.saturating_add(incoming) > max);
        let _handover = may_drop.then(|| lock(&shared.handover));
        let sent_below = shared.sent_below.load(Ordering::SeqCst);
        let cycle = self.shared.with_db(|db| {
            let salt = *shared
                .salt
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let txn = db.begin_write().map_err(storage)?;
            let mut cycle = Cycle {
                first,
                ..Cycle::default()
            };
            let mut changed = false;
            // Entries each storage key encrypts, as this cycle changes them.
            let mut keys: std::collections::BTreeMap<String, i64> = Default::default();
            let forget = |keys: &mut std::collections::BTreeMap<String, i64>, stored: &[u8]| {
                if let Some(id) = super::crypt::entry_key_id(stored) {
                    *keys.entry(id).or_default() -= 1;
                }
            };
            {
                let mut entries = txn.open_table(ENTRIES).map_err(storage)?;
                let mut meta = txn.open_table(META).map_err(storage)?;
                let counter =
                    |meta: &redb::Table<&str, u64>, key: &str| -> Result<u64, QueueError> {
                        Ok(meta
                            .get(key)
                            .map_err(storage)?
                            .map(|v| v.value())
                            .unwrap_or(0))
                    };
                let mut bytes = counter(&meta, BYTES)?;

                if let (true, Some(max_age)) = (retention_due, options.max_age) {
                    let cutoff = now_ns()
                        .saturating_sub(u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX));
                    while (cycle.expired as usize) < RETENTION_BATCH {
                        let expired = match entries.first().map_err(storage)? {
                            Some((_, v)) => {
                                store::captured_ns(v.value()).is_some_and(|ns| ns < cutoff)
                            }
                            None => false,
                        };
                        if !expired {
                            break;
                        }
                        if let Some((_, v)) = entries.pop_first().map_err(storage)? {
                            bytes = bytes.saturating_sub(v.value().len() as u64);
                            forget(&mut keys, v.value());
                            cycle.expired += 1;
                        }
                    }
                    if cycle.expired > 0 {
                        meta.insert(DROPPED_AGE, counter(&meta, DROPPED_AGE)? + cycle.expired)
                            .map_err(storage)?;
                        changed = true;
                    }
                }

                if !set_aside.is_empty() {
                    let mut aside = txn.open_table(store::SET_ASIDE_TABLE).map_err(storage)?;
                    let mut moved = 0;
                    for (seq, _) in set_aside {
                        if let Some(old) = entries.remove(seq).map_err(storage)? {
                            bytes = bytes.saturating_sub(old.value().len() as u64);
                            forget(&mut keys, old.value());
                            aside.insert(seq, old.value()).map_err(storage)?;
                            moved += 1;
                        }
                    }
                    if moved > 0 {
                        meta.insert(SET_ASIDE, counter(&meta, SET_ASIDE)? + moved)
                            .map_err(storage)?;
                        changed = true;
                    }
                }

                for seq in removes {
                    if let Some(old) = entries.remove(seq).map_err(storage)? {
                        bytes = bytes.saturating_sub(old.value().len() as u64);
                        forget(&mut keys, old.value());
                        changed = true;
                    }
                }

                let mut seq = first;
                let group = options.max_group.unwrap_or(MAX_GROUP).clamp(1, MAX_GROUP);
                let mut group_bytes = 0u64;
                for append in appends.iter().take(group) {
                    let size = append.encoded.len() as u64 + overhead;
                    // redb holds a transaction's new pages in memory until
                    // it commits: large entries get commits of their own.
                    if cycle.appended > 0 && group_bytes + size > MAX_GROUP_BYTES {
                        break;
                    }
                    group_bytes += size;
                    if let Some(max) = options.max_bytes
                        && bytes + size > max
                    {
                        match options.when_full {
                            // An empty queue takes an entry even if it alone is over the cap.
                            FullPolicy::Block if bytes > 0 => {
                                cycle.blocked = true;
                                break;
                            }
                            FullPolicy::Block => {}
                            FullPolicy::DropOldest => {
                                while bytes + size > max {
                                    // The oldest entry not yet handed to the broker;
                                    // only when there is none, the oldest of all.
                                    let victim = match entries
                                        .range(sent_below..)
                                        .map_err(storage)?
                                        .next()
                                    {
                                        Some(item) => Some(item.map_err(storage)?.0.value()),
                                        None => entries
                                            .first()
                                            .map_err(storage)?
                                            .map(|(k, _)| k.value()),
                                    };
                                    let Some(victim) = victim else {
                                        break;
                                    };
                                    let Some(old) = entries.remove(victim).map_err(storage)? else {
                                        break;
                                    };
                                    bytes = bytes.saturating_sub(old.value().len() as u64);
                                    forget(&mut keys, old.value());
                                    cycle.dropped_cap += 1;
                                }
                            }
                        }
                    }
                    match &keyring {
                        Some(keyring) => {
                            let sealed = keyring
                                .seal(&salt, seq, &append.encoded)
                                .map_err(QueueError::Storage)?;
                            entries.insert(seq, sealed.as_slice()).map_err(storage)?;
                            if let Some(id) = super::crypt::entry_key_id(&sealed) {
                                *keys.entry(id).or_default() += 1;
                            }
                        }
                        None => {
                            entries
                                .insert(seq, append.encoded.as_slice())
                                .map_err(storage)?;
                        }
                    }
                    bytes += size;
                    seq += 1;
                    cycle.appended += 1;
                }
                if cycle.appended > 0 {
                    meta.insert(NEXT_SEQ, seq).map_err(storage)?;
                    changed = true;
                }
                if cycle.dropped_cap > 0 {
                    meta.insert(
                        DROPPED_CAP,
                        counter(&meta, DROPPED_CAP)? + cycle.dropped_cap,
                    )
                    .map_err(storage)?;
                }
                if changed {
                    meta.insert(BYTES, bytes).map_err(storage)?;
                }
                for (id, delta) in keys {
                    let name = format!("{KEY_COUNT}{id}");
                    let count = counter(&meta, &name)?.saturating_add_signed(delta);
                    meta.insert(name.as_str(), count).map_err(storage)?;
                }
                cycle.bytes_after = bytes;
            }
            if changed {
                txn.commit().map_err(storage)?;
            } else {
                txn.abort().map_err(storage)?;
            }
            Ok(cycle)
        })?;
        self.next_seq = first + cycle.appended as u64;
        self.bytes_hint = cycle.bytes_after;
        Ok(cycle)
    }
}
