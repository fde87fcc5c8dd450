//! Who may command this gateway: signed commands, their time window and
//! the record of commands already taken (replays are refused, across
//! restarts).
//!
//! A signed command is an [`Envelope`](crate::deploy::Envelope) (the same
//! one deployments and erasure orders use) around a [`SignedCommand`]
//! document. The signature is Ed25519 over the document's bytes exactly
//! as they are in the envelope, so nothing has to be put in a canonical
//! form again: the gateway checks the signature first and reads the
//! document only then.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use redb::ReadableDatabase as _;
use serde::{Deserialize, Serialize};

use super::{Failure, refusal};

/// The `schema` of a signed command.
pub const SCHEMA: u32 = 1;

/// The `kind` of a signed command (a signed document of another kind is
/// never taken for a command).
pub const KIND: &str = "command";

/// The largest command message read, signed or not.
pub const MAX_COMMAND_BYTES: usize = 16 << 10;

/// The most command ids remembered at once; a command that would need
/// more is refused until older ones leave the window.
const MAX_REMEMBERED: usize = 20_000;

/// A command as an operator signs it (`ferrule fleet command`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCommand {
    /// [`SCHEMA`].
    pub schema: u32,
    /// [`KIND`].
    pub kind: String,
    /// The gateway it is for (`[gateway] id`).
    pub gateway: String,
    /// The driver it is for (also named in the topic it is sent on).
    pub driver: String,
    /// The channel to write.
    pub channel: String,
    /// The value to write: a number, boolean or string.
    pub value: serde_json::Value,
    /// Unique per gateway: a second command with this id is refused.
    pub id: String,
    /// When it was signed, ms since the Unix epoch.
    pub issued_ms: u64,
}

/// A command whose signature checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    /// What it says.
    pub command: SignedCommand,
    /// The operator key that signed it.
    pub key_id: String,
}

/// How this gateway authorizes commands (`[commands]`, `[trust]
/// operator_keys`).
pub struct Authority {
    gateway: String,
    keys: Vec<(String, ed25519_compact::PublicKey)>,
    require_signed: bool,
    window_ms: u64,
    skew_ms: u64,
    record: Mutex<Record>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("gateway", &self.gateway)
            .field("keys", &self.keys.len())
            .field("require_signed", &self.require_signed)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// The authority of a gateway's config; its record of commands taken
    /// lives in `{data_dir}/commands/taken.redb`.
    pub fn from_config(config: &crate::config::Config) -> Result<Authority, String> {
        let data_dir = config.resolve(&config.gateway.data_dir);
        Ok(Authority::new(
            config.gateway.id.get_ref(),
            config.operator_keys()?,
            config.commands_require_signed(),
            (
                config.commands.window_s.get_ref() * 1000,
                config.commands.clock_skew_s.get_ref() * 1000,
            ),
            &record_path(&data_dir),
        ))
    }

    /// An authority for `gateway` trusting `keys`; `(window_ms, skew_ms)`
    /// bound when a signed command may arrive.
    pub fn new(
        gateway: &str,
        keys: Vec<(String, ed25519_compact::PublicKey)>,
        require_signed: bool,
        (window_ms, skew_ms): (u64, u64),
        record: &Path,
    ) -> Authority {
        let now = crate::reading::now_ms();
        // Without keys, no command is ever signed: there is nothing to record.
        let record = if keys.is_empty() {
            Record::default()
        } else {
            Record::load(record, now + skew_ms)
        };
        Authority {
            gateway: gateway.to_string(),
            keys,
            require_signed,
            window_ms,
            skew_ms,
            record: Mutex::new(record),
        }
    }

    /// An authority that takes unsigned commands and has no keys.
    #[cfg(test)]
    pub fn open() -> Authority {
        Authority {
            gateway: String::new(),
            keys: Vec::new(),
            require_signed: false,
            window_ms: 0,
            skew_ms: 0,
            record: Mutex::new(Record::default()),
        }
    }

    /// Whether commands must be signed.
    pub fn require_signed(&self) -> bool {
        self.require_signed
    }

    /// The signed command in `envelope` for `driver`, if its signature is
    /// by a trusted key, it is for this gateway and driver, and it was
    /// issued within the window. Its id is not yet recorded: see
    /// [`Authority::take`].
    pub fn verify(&self, envelope: &[u8], driver: &str) -> Result<Verified, Failure> {
        if self.keys.is_empty() {
            return Err(refusal(
                "unknown-key",
                "a signed command, but this gateway trusts no operator key ([trust] operator_keys)"
                    .to_string(),
            ));
        }
        let document = crate::deploy::open_signed(envelope, &self.keys).map_err(|e| {
            let code = match e {
                crate::deploy::Refusal::UnknownKey(_) => "unknown-key",
                crate::deploy::Refusal::BadSignature(_) => "bad-signature",
                _ => "malformed",
            };
            refusal(code, format!("signed command: {e}"))
        })?;
        let key_id = serde_json::from_slice::<crate::deploy::Envelope>(envelope)
            .map(|e| e.key_id)
            .unwrap_or_default();
        let command: SignedCommand = serde_json::from_slice(&document).map_err(|e| {
            refusal(
                "malformed",
                format!("signed command (key id {key_id}): the document is not a command: {e}"),
            )
        })?;
        if command.schema != SCHEMA || command.kind != KIND {
            return Err(refusal(
                "malformed",
                format!(
                    "signed document of kind {:?} schema {}; this gateway takes kind {KIND:?} schema {SCHEMA} as a command",
                    command.kind, command.schema
                ),
            ));
        }
        if command.gateway != self.gateway {
            return Err(refusal(
                "wrong-target",
                format!("signed for gateway {:?}, not this one", command.gateway),
            ));
        }
        if command.driver != driver {
            return Err(refusal(
                "wrong-target",
                format!(
                    "signed for driver {:?} but sent to driver {driver:?}",
                    command.driver
                ),
            ));
        }
        if command.id.is_empty() || command.id.len() > 128 {
            return Err(refusal(
                "malformed",
                "id must be 1 to 128 bytes".to_string(),
            ));
        }
        self.check_time(command.issued_ms, crate::reading::now_ms())?;
        Ok(Verified { command, key_id })
    }

    /// Whether a command issued at `issued_ms` may be taken at `now`.
    fn check_time(&self, issued_ms: u64, now: u64) -> Result<(), Failure> {
        let earliest = now.saturating_sub(self.window_ms + self.skew_ms);
        let latest = now.saturating_add(self.skew_ms);
        if issued_ms < earliest {
            return Err(refusal(
                "outside-window",
                format!(
                    "issued {:.1} s ago; commands are taken within {} s of being signed (clock skew allowed: {} s)",
                    now.saturating_sub(issued_ms) as f64 / 1000.0,
                    self.window_ms / 1000,
                    self.skew_ms / 1000
                ),
            ));
        }
        if issued_ms > latest {
            return Err(refusal(
                "outside-window",
                format!(
                    "issued {:.1} s in the future by this gateway's clock (clock skew allowed: {} s)",
                    issued_ms.saturating_sub(now) as f64 / 1000.0,
                    self.skew_ms / 1000
                ),
            ));
        }
        Ok(())
    }

    /// Records `command`'s id as taken, on disk, before it is carried out:
    /// refused if it was taken before (a replay), or if the record cannot
    /// be kept (then nothing is written to the device).
    pub fn take(&self, command: &SignedCommand) -> Result<(), Failure> {
        let now = crate::reading::now_ms();
        let earliest = now.saturating_sub(self.window_ms + self.skew_ms);
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        record.take(&command.id, command.issued_ms, earliest)
    }
}

/// Where the record of commands taken lives.
pub fn record_path(data_dir: &Path) -> PathBuf {
    data_dir.join("commands").join("taken.redb")
}

/// Ids of the signed commands taken, with their `issued_ms`.
const TAKEN: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("taken");

/// `floor_ms` and the record's `version`.
const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");

/// The record's layout; a newer one is left alone.
const VERSION: u64 = 1;

/// The ids of signed commands taken within the window, by issue time: in
/// memory, and in a redb file each take is committed to (synced) before
/// the device is written.
#[derive(Default)]
struct Record {
    db: Option<redb::Database>,
    path: PathBuf,
    taken: BTreeMap<String, u64>,
    /// Commands issued at or before this are refused: their ids were
    /// forgotten (out of the window) or the record was lost.
    floor_ms: u64,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("path", &self.path)
            .field("taken", &self.taken.len())
            .field("floor_ms", &self.floor_ms)
            .finish_non_exhaustive()
    }
}

impl Record {
    /// The record at `path`, created when there is none yet. One that
    /// cannot be read is moved aside (`.damaged-{ms}`) and a new one
    /// starts at a floor of `lost_floor`: commands issued before then may
    /// have been taken, so they are refused.
    fn load(path: &Path, lost_floor: u64) -> Record {
        let mut record = Record {
            db: None,
            path: path.to_path_buf(),
            taken: BTreeMap::new(),
            floor_ms: 0,
        };
        match Record::read(path) {
            Ok((db, taken, floor_ms)) => {
                record.db = Some(db);
                record.taken = taken;
                record.floor_ms = floor_ms;
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "the record of commands taken cannot be read; signed commands issued before now are refused");
                record.floor_ms = lost_floor;
                if path.exists() {
                    let aside =
                        path.with_extension(format!("redb.damaged-{}", crate::reading::now_ms()));
                    if let Err(e) = std::fs::rename(path, &aside) {
                        tracing::error!(file = %path.display(), error = %e, "cannot move the damaged record of commands aside; signed commands are refused");
                        return record;
                    }
                }
                match Record::read(path) {
                    Ok((db, _, _)) => record.db = Some(db),
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "cannot start a record of commands taken; signed commands are refused");
                    }
                }
                if let Err(e) = record.commit(None, &[]) {
                    tracing::error!(file = %path.display(), error = %e, "cannot keep the record's floor");
                }
            }
        }
        record
    }

    /// The database at `path` (created if absent), its ids and floor.
    fn read(path: &Path) -> Result<(redb::Database, BTreeMap<String, u64>, u64), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        let db = redb::Database::create(path).map_err(|e| e.to_string())?;
        let read = db.begin_read().map_err(|e| e.to_string())?;
        let mut taken = BTreeMap::new();
        let mut floor_ms = 0;
        match read.open_table(META) {
            Ok(meta) => {
                let get = |key| meta.get(key).map(|v| v.map(|v| v.value()));
                let version = get("version")
                    .map_err(|e| e.to_string())?
                    .unwrap_or(VERSION);
                if version > VERSION {
                    return Err(format!(
                        "a record of version {version}, from a newer ferrule (this one reads {VERSION})"
                    ));
                }
                floor_ms = get("floor_ms").map_err(|e| e.to_string())?.unwrap_or(0);
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
        match read.open_table(TAKEN) {
            Ok(table) => {
                // Never more than the window's ids were written: a file that
                // holds more is not this gateway's record.
                let rows = redb::ReadableTableMetadata::len(&table).map_err(|e| e.to_string())?;
                if rows > MAX_REMEMBERED as u64 {
                    return Err(format!(
                        "{rows} ids, more than the {MAX_REMEMBERED} a record holds"
                    ));
                }
                for row in redb::ReadableTable::iter(&table).map_err(|e| e.to_string())? {
                    let (id, issued) = row.map_err(|e| e.to_string())?;
                    taken.insert(id.value().to_string(), issued.value());
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
        drop(read);
        Ok((db, taken, floor_ms))
    }

    /// Records `id` (issued at `issued_ms`) as taken, forgetting ids issued
    /// before `earliest`; refused when it was taken before or may have
    /// been, or when the record cannot be written.
    fn take(&mut self, id: &str, issued_ms: u64, earliest: u64) -> Result<(), Failure> {
        if self.taken.contains_key(id) {
            return Err(refusal(
                "replay",
                format!("command id {id:?} was taken before: a command is carried out once"),
            ));
        }
        if issued_ms <= self.floor_ms {
            return Err(refusal(
                "replay",
                format!(
                    "command id {id:?} was issued before {}, where this gateway's record of commands taken starts: it may have been taken already",
                    humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.floor_ms)
                    )
                ),
            ));
        }
        // The window refuses these anyway; the floor keeps them refused
        // should the clock be set back.
        let old: Vec<String> = (self.taken.iter())
            .filter(|(_, issued)| **issued < earliest)
            .map(|(id, _)| id.clone())
            .collect();
        if self.taken.len() - old.len() >= MAX_REMEMBERED {
            return Err(refusal(
                "busy",
                format!(
                    "{MAX_REMEMBERED} commands taken within the window already; try again later"
                ),
            ));
        }
        let floor = (old.iter())
            .filter_map(|id| self.taken.get(id))
            .fold(self.floor_ms, |floor, issued| floor.max(*issued));
        let before = self.floor_ms;
        self.floor_ms = floor;
        if let Err(e) = self.commit(Some((id, issued_ms)), &old) {
            self.floor_ms = before;
            return Err(refusal(
                "cannot-record",
                format!(
                    "cannot keep the record of commands taken ({}): {e}; nothing was written",
                    self.path.display()
                ),
            ));
        }
        for id in &old {
            self.taken.remove(id);
        }
        self.taken.insert(id.to_string(), issued_ms);
        Ok(())
    }

    /// One synced transaction: `add` recorded, `forget` removed, the
    /// floor and version written.
    fn commit(&self, add: Option<(&str, u64)>, forget: &[String]) -> Result<(), String> {
        let db = self.db.as_ref().ok_or("the record could not be opened")?;
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let txn = db.begin_write().map_err(|e| err(&e))?;
        {
            let mut taken = txn.open_table(TAKEN).map_err(|e| err(&e))?;
            for id in forget {
                taken.remove(id.as_str()).map_err(|e| err(&e))?;
            }
            if let Some((id, issued)) = add {
                taken.insert(id, issued).map_err(|e| err(&e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| err(&e))?;
            meta.insert("version", VERSION).map_err(|e| err(&e))?;
            meta.insert("floor_ms", self.floor_ms)
                .map_err(|e| err(&e))?;
        }
        txn.commit().map_err(|e| err(&e))
    }
}

/// Whether a command message is a signed envelope (a JSON object with a
/// `document`), as opposed to a plain `{id, channel, value}`.
pub fn is_signed(payload: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(payload)
        .is_ok_and(|m| m.contains_key("document"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair(dir: &Path) -> (PathBuf, Vec<(String, ed25519_compact::PublicKey)>) {
        let (secret, public) = (dir.join("op.key"), dir.join("op.pub"));
        std::fs::create_dir_all(dir).unwrap();
        crate::plugin::trust::keygen(&secret, &public).unwrap();
        let keys = crate::plugin::trust::public_keys(&[public]).unwrap();
        (secret, keys)
    }

    fn command(id: &str, issued_ms: u64) -> SignedCommand {
        SignedCommand {
            schema: SCHEMA,
            kind: KIND.into(),
            gateway: "gw".into(),
            driver: "plc".into(),
            channel: "sp".into(),
            value: 5.into(),
            id: id.into(),
            issued_ms,
        }
    }

    fn sealed(command: &SignedCommand, key: &Path) -> Vec<u8> {
        let envelope =
            crate::deploy::sign_document(serde_json::to_vec(command).unwrap(), key).unwrap();
        serde_json::to_vec(&envelope).unwrap()
    }

    fn code(r: Result<impl std::fmt::Debug, Failure>) -> &'static str {
        r.unwrap_err().refused.unwrap()
    }

    #[test]
    fn signatures_targets_and_times_are_checked_and_ids_are_taken_once_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, keys) = keypair(dir.path());
        let (other, _) = keypair(&dir.path().join("other"));
        let record = record_path(dir.path());
        let authority = Authority::new("gw", keys.clone(), true, (60_000, 5_000), &record);
        let now = crate::reading::now_ms();

        let good = sealed(&command("c1", now), &secret);
        let verified = authority.verify(&good, "plc").unwrap();
        assert_eq!(verified.key_id, keys[0].0);
        authority.take(&verified.command).unwrap();
        assert_eq!(code(authority.take(&verified.command)), "replay");

        assert_eq!(code(authority.verify(&good, "other")), "wrong-target");
        let mut elsewhere = command("c2", now);
        elsewhere.gateway = "gw-2".into();
        assert_eq!(
            code(authority.verify(&sealed(&elsewhere, &secret), "plc")),
            "wrong-target"
        );
        assert_eq!(
            code(authority.verify(&sealed(&command("c3", now), &other), "plc")),
            "unknown-key"
        );
        let mut tampered: crate::deploy::Envelope = serde_json::from_slice(&good).unwrap();
        let mut doc = command("c1", now);
        doc.value = 1500.into();
        tampered.document = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            serde_json::to_vec(&doc).unwrap(),
        );
        assert_eq!(
            code(authority.verify(&serde_json::to_vec(&tampered).unwrap(), "plc")),
            "bad-signature"
        );
        let stale = sealed(&command("c4", now - 66_000), &secret);
        assert_eq!(code(authority.verify(&stale, "plc")), "outside-window");
        let ahead = sealed(&command("c5", now + 6_000), &secret);
        assert_eq!(code(authority.verify(&ahead, "plc")), "outside-window");
        // Within the skew on either side.
        authority
            .verify(&sealed(&command("c6", now - 64_000), &secret), "plc")
            .unwrap();
        authority
            .verify(&sealed(&command("c7", now + 4_000), &secret), "plc")
            .unwrap();

        // A restart remembers what was taken.
        drop(authority);
        let again = Authority::new("gw", keys.clone(), true, (60_000, 5_000), &record);
        assert_eq!(code(again.take(&command("c1", now))), "replay");
        again.take(&command("c8", now)).unwrap();

        // A damaged record: set aside, and nothing issued before the
        // restart is taken, then or after the next.
        drop(again);
        std::fs::write(
            &record,
            b"not a database at all, but long enough to be read as one",
        )
        .unwrap();
        let lost = Authority::new("gw", keys.clone(), true, (60_000, 5_000), &record);
        assert_eq!(code(lost.take(&command("c9", now))), "replay");
        lost.take(&command("c10", crate::reading::now_ms() + 5_001))
            .unwrap();
        drop(lost);
        let after = Authority::new("gw", keys, true, (60_000, 5_000), &record);
        assert_eq!(code(after.take(&command("c11", now))), "replay");
        assert_eq!(code(after.take(&command("c10", now))), "replay");
        let aside = std::fs::read_dir(record.parent().unwrap())
            .unwrap()
            .filter(|e| (e.as_ref().unwrap().file_name().to_string_lossy()).contains(".damaged-"))
            .count();
        assert_eq!(aside, 1);
    }

    #[test]
    fn ids_leave_the_record_with_the_window_and_the_floor_keeps_them_refused() {
        let dir = tempfile::tempdir().unwrap();
        let record = record_path(dir.path());
        let (_, keys) = keypair(dir.path());
        let authority = Authority::new("gw", keys, false, (1_000, 0), &record);
        let now = crate::reading::now_ms();
        authority.take(&command("old", now - 5_000)).unwrap();
        authority.take(&command("new", now)).unwrap();
        assert_eq!(
            code(authority.take(&command("older", now - 6_000))),
            "replay"
        );
        drop(authority);
        let (_, taken, floor_ms) = Record::read(&record).unwrap();
        assert_eq!(taken.keys().collect::<Vec<_>>(), ["new"]);
        assert_eq!(floor_ms, now - 5_000);
    }

    #[test]
    fn only_envelopes_are_signed_commands() {
        assert!(is_signed(
            br#"{"document":"e30=","key_id":"k","signature":""}"#
        ));
        assert!(!is_signed(br#"{"id":1,"channel":"sp","value":1}"#));
        assert!(!is_signed(b"not json"));
    }
}
