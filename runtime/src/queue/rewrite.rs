//! Erasure: the queue file is written again without the erased entries.
//!
//! Deleting an entry from a redb table only frees its pages; its bytes
//! stay in the file until redb happens to reuse them. An erasure therefore
//! copies every entry it keeps into a new file beside the queue
//! (`{name}.rewrite`), with a new salt, so every kept entry is encrypted
//! again under a new subkey (with the current storage key when the queue
//! encrypts, or when the entry was encrypted), then replaces the queue
//! file with it (fsync, rename, fsync of the directory). The erased
//! entries are in no file the queue keeps, and the old file's blocks,
//! freed by the filesystem, hold them only as ciphertext under the old
//! file's subkey. Sequence numbers and the counters carry over; the
//! writer's pending appends and removals wait in memory meanwhile and go
//! to the new file. A crash before the rename leaves the old file whole
//! (the erasure did not happen; the leftover `.rewrite` file is deleted at
//! the next open); after it, the new one.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::store::{
    self, BYTES, CRYPT, DROPPED_AGE, DROPPED_CAP, ENTRIES, ERASED, KEY_COUNT, META, NEXT_SEQ,
    SET_ASIDE, SET_ASIDE_TABLE, storage,
};
use super::{EntryKind, QueueError, Shared, StoredEntry};

/// Which entries an erasure removes. Only entries captured at or before
/// `upto_ns` (when the erasure was asked for) are erased: what a driver
/// captures afterwards is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Batches of this driver (with `before_ns`: only those captured before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Entries captured before this time, ns since the Unix epoch: batches
    /// (of `driver`, if given) and, without a driver, telemetry snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_ns: Option<u64>,
    /// Every entry of every kind (decommissioning).
    #[serde(default)]
    pub all: bool,
    /// The time the erasure was asked for, ns since the Unix epoch.
    pub upto_ns: u64,
}

impl Selector {
    /// Whether the selector names anything; an empty one is refused
    /// rather than read as "everything".
    pub fn check(&self) -> Result<(), String> {
        if self.all && (self.driver.is_some() || self.before_ns.is_some()) {
            return Err("--all erases everything; it takes no --driver or --before".into());
        }
        if !self.all && self.driver.is_none() && self.before_ns.is_none() {
            return Err("say what to erase: --driver NAME, --before TIME, or --all".into());
        }
        if let Some(driver) = &self.driver
            && (driver.is_empty() || driver.len() > 256)
        {
            return Err("--driver: a driver name of 1 to 256 characters".into());
        }
        Ok(())
    }

    /// Whether an entry of `kind` captured at `captured_ns` is erased.
    fn erases(&self, kind: &EntryKind, captured_ns: u64) -> bool {
        if captured_ns > self.upto_ns {
            return false;
        }
        if self.all {
            return true;
        }
        let before = self.before_ns.is_none_or(|t| captured_ns < t);
        match kind {
            EntryKind::Batch { driver } => {
                before && self.driver.as_ref().is_none_or(|d| d == driver)
            }
            EntryKind::Telemetry => self.driver.is_none() && self.before_ns.is_some() && before,
            // Copies of audit records on their way to the cloud: the audit
            // log is the record of erasures, not their subject.
            EntryKind::Audit => false,
        }
    }
}

/// What an erasure did to one queue file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erased {
    /// Entries erased.
    pub erased: u64,
    /// Their stored bytes.
    pub erased_bytes: u64,
    /// Entries kept.
    pub kept: u64,
    /// Entries kept as they were because they cannot be read (corrupt);
    /// `all` erases them too.
    pub unreadable_kept: u64,
}

/// Entries copied per transaction into the new file.
const COPY_BATCH: usize = 10_000;
/// Bytes copied per transaction into the new file, at most.
const COPY_BYTES: usize = 8 << 20;

/// Where the new file is written before it replaces the queue file.
pub(super) fn rewrite_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".rewrite");
    path.with_file_name(name)
}

/// Erases what `selector` names from the queue of `shared`, whose next
/// sequence number is `next_seq`: writes the new file and puts it in place
/// of the old one. Runs on the writer thread.
pub(super) fn erase(
    shared: &Shared,
    next_seq: u64,
    selector: &Selector,
) -> Result<(Erased, u64), QueueError> {
    let path = &shared.path;
    let target = rewrite_path(path);
    let _ = std::fs::remove_file(&target);
    let written = shared.with_db(|old| copy(shared, old, &target, next_seq, selector));
    let (erased, bytes) = match written {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&target);
            return Err(e);
        }
    };
    // Readers wait on the lock while the file is swapped; none sees it missing.
    let mut slot = shared
        .db
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    slot.take();
    let renamed = std::fs::rename(&target, path).and_then(|()| sync_dir(path));
    let reopened = (shared.create)(path).map_err(storage);
    match (renamed, reopened) {
        (Ok(()), Ok(db)) => {
            let salt = {
                let txn = db.begin_read().map_err(storage)?;
                store::read_salt(&txn)?.unwrap_or_default()
            };
            *slot = Some(db);
            *shared
                .salt
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = salt;
            Ok((erased, bytes))
        }
        (Err(e), reopened) => {
            // The old file is still in place: nothing was erased.
            *slot = reopened.ok();
            let _ = std::fs::remove_file(&target);
            Err(storage(format!(
                "cannot put the rewritten queue in place: {e}"
            )))
        }
        // The new file is in place but cannot be opened now: the writer's
        // reopen loop takes it up like after any I/O error.
        (Ok(()), Err(e)) => Err(e),
    }
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Copies the entries `selector` keeps from `old` into a new file at
/// `target`, with a new salt and the counters carried over; fsynced.
fn copy(
    shared: &Shared,
    old: &Database,
    target: &Path,
    next_seq: u64,
    selector: &Selector,
) -> Result<(Erased, u64), QueueError> {
    let keyring = shared.options.keyring.clone();
    let salt = *shared
        .salt
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let new_salt = super::crypt::new_salt().map_err(QueueError::Storage)?;
    let new = (shared.create)(target).map_err(storage)?;
    let read = old.begin_read().map_err(storage)?;
    let entries = read.open_table(ENTRIES).map_err(storage)?;
    let meta = read.open_table(META).map_err(storage)?;
    let get = |key: &str| store::meta_counter(&meta, key);
    let mut done = Erased::default();
    let mut bytes = 0u64;
    let mut keys: std::collections::BTreeMap<String, u64> = Default::default();
    let mut iter = entries.iter().map_err(storage)?;
    loop {
        // Each part is committed durably (a queue file takes no other
        // kind); it costs one fsync per COPY_BATCH entries.
        let txn = new.begin_write().map_err(storage)?;
        let (mut count, mut size) = (0usize, 0usize);
        let mut more = false;
        {
            let mut table = txn.open_table(ENTRIES).map_err(storage)?;
            for item in iter.by_ref() {
                let (key, value) = item.map_err(storage)?;
                let (seq, stored) = (key.value(), value.value());
                let plain = super::plain(keyring.as_deref(), &salt, seq, stored);
                let kind = plain.as_ref().map_err(|e| e.to_string()).and_then(|p| {
                    let json = store::entry_json(seq, p).map_err(|e| e.to_string())?;
                    StoredEntry {
                        seq,
                        json: json.to_vec(),
                    }
                    .kind()
                    .map_err(|e| e.to_string())
                });
                let captured = store::captured_ns(stored).unwrap_or(0);
                let erase = match &kind {
                    Ok(kind) => selector.erases(kind, captured),
                    Err(_) => selector.all && captured <= selector.upto_ns,
                };
                if erase {
                    done.erased += 1;
                    done.erased_bytes += stored.len() as u64;
                    continue;
                }
                let sealed = match (&plain, &keyring) {
                    (Ok(plain), Some(keyring))
                        if shared.options.encrypt || super::crypt::is_encrypted(stored) =>
                    {
                        Some(
                            keyring
                                .seal(&new_salt, seq, plain)
                                .map_err(QueueError::Storage)?,
                        )
                    }
                    _ => None,
                };
                if plain.is_err() {
                    done.unreadable_kept += 1;
                }
                let out = sealed.as_deref().unwrap_or(match &plain {
                    // Plaintext stays plaintext when the queue does not encrypt.
                    Ok(plain) if !super::crypt::is_encrypted(stored) => plain,
                    _ => stored,
                });
                if let Some(id) = super::crypt::entry_key_id(out) {
                    *keys.entry(id).or_default() += 1;
                }
                table.insert(seq, out).map_err(storage)?;
                done.kept += 1;
                bytes += out.len() as u64;
                count += 1;
                size += out.len();
                if count >= COPY_BATCH || size >= COPY_BYTES {
                    more = true;
                    break;
                }
            }
        }
        if !more {
            {
                let mut m = txn.open_table(META).map_err(storage)?;
                m.insert(NEXT_SEQ, get(NEXT_SEQ)?.max(next_seq))
                    .map_err(storage)?;
                m.insert(BYTES, bytes).map_err(storage)?;
                m.insert(DROPPED_CAP, get(DROPPED_CAP)?).map_err(storage)?;
                m.insert(DROPPED_AGE, get(DROPPED_AGE)?).map_err(storage)?;
                m.insert(SET_ASIDE, get(SET_ASIDE)?).map_err(storage)?;
                // Entries set aside as unreadable stay as they were, but
                // for `all`, which takes them too.
                if let Ok(aside) = read.open_table(SET_ASIDE_TABLE) {
                    let mut kept = txn.open_table(SET_ASIDE_TABLE).map_err(storage)?;
                    for item in aside.iter().map_err(storage)? {
                        let (k, v) = item.map_err(storage)?;
                        if selector.all
                            && store::captured_ns(v.value()).unwrap_or(0) <= selector.upto_ns
                        {
                            done.erased += 1;
                            done.erased_bytes += v.value().len() as u64;
                        } else {
                            kept.insert(k.value(), v.value()).map_err(storage)?;
                        }
                    }
                }
                m.insert(ERASED, get(ERASED)? + done.erased)
                    .map_err(storage)?;
                for (id, n) in &keys {
                    m.insert(format!("{KEY_COUNT}{id}").as_str(), *n)
                        .map_err(storage)?;
                }
                txn.open_table(CRYPT)
                    .map_err(storage)?
                    .insert("salt", new_salt.as_slice())
                    .map_err(storage)?;
            }
            txn.commit().map_err(storage)?;
            return Ok((done, bytes));
        }
        txn.commit().map_err(storage)?;
    }
}
