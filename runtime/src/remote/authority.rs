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

/// The largest record file read.
const MAX_RECORD_BYTES: u64 = 8 << 20;

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
    /// lives in `{data_dir}/commands/taken.json`.
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
        Authority {
            gateway: gateway.to_string(),
            keys,
            require_signed,
            window_ms,
            skew_ms,
            record: Mutex::new(Record::load(record, now + skew_ms)),
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
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        record.forget_before(now.saturating_sub(self.window_ms + self.skew_ms));
        if record.taken.contains_key(&command.id) {
            return Err(refusal(
                "replay",
                format!(
                    "command id {:?} was taken before: a command is carried out once",
                    command.id
                ),
            ));
        }
        if command.issued_ms <= record.floor_ms {
            return Err(refusal(
                "replay",
                format!(
                    "command id {:?} was issued before {}, when this gateway's record of commands taken starts: it may have been taken already",
                    command.id,
                    humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(record.floor_ms)
                    )
                ),
            ));
        }
        if record.taken.len() >= MAX_REMEMBERED {
            return Err(refusal(
                "busy",
                format!(
                    "{MAX_REMEMBERED} commands taken within the window already; try again later"
                ),
            ));
        }
        record.taken.insert(command.id.clone(), command.issued_ms);
        if let Err(e) = record.save() {
            record.taken.remove(&command.id);
            return Err(refusal(
                "cannot-record",
                format!(
                    "cannot keep the record of commands taken ({}): {e}; nothing was written",
                    record.path.display()
                ),
            ));
        }
        Ok(())
    }
}

/// Where the record of commands taken lives.
pub fn record_path(data_dir: &Path) -> PathBuf {
    data_dir.join("commands").join("taken.json")
}

/// The ids of signed commands taken within the window, by issue time.
#[derive(Debug, Default)]
struct Record {
    path: PathBuf,
    taken: BTreeMap<String, u64>,
    /// Commands issued at or before this are refused: their ids were
    /// forgotten (out of the window) or the record was lost.
    floor_ms: u64,
}

/// The record's file.
#[derive(Serialize, Deserialize)]
struct RecordFile {
    version: u32,
    floor_ms: u64,
    taken: BTreeMap<String, u64>,
}

impl Record {
    /// The record at `path`: empty when there is none yet; when it cannot
    /// be read, empty with a floor of `lost_floor` (commands issued before
    /// then may have been taken, so they are refused).
    fn load(path: &Path, lost_floor: u64) -> Record {
        let empty = |floor_ms| Record {
            path: path.to_path_buf(),
            taken: BTreeMap::new(),
            floor_ms,
        };
        let bytes = match crate::plugin::trust::read_bounded(path, MAX_RECORD_BYTES) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return empty(0),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read the record of commands taken; signed commands issued before now are refused");
                return empty(lost_floor);
            }
        };
        match serde_json::from_slice::<RecordFile>(&bytes) {
            Ok(file) if file.version == 1 => Record {
                path: path.to_path_buf(),
                taken: file.taken,
                floor_ms: file.floor_ms,
            },
            Ok(file) => {
                tracing::error!(file = %path.display(), version = file.version, "a record of commands taken from a newer ferrule; signed commands issued before now are refused");
                empty(lost_floor)
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "the record of commands taken is damaged; signed commands issued before now are refused");
                empty(lost_floor)
            }
        }
    }

    /// Forgets ids issued before `earliest` (the window refuses them
    /// anyway); the floor rises to the latest forgotten, so a clock set
    /// back cannot bring them into the window again.
    fn forget_before(&mut self, earliest: u64) {
        let old: Vec<String> = (self.taken.iter())
            .filter(|(_, issued)| **issued < earliest)
            .map(|(id, _)| id.clone())
            .collect();
        for id in old {
            if let Some(issued) = self.taken.remove(&id) {
                self.floor_ms = self.floor_ms.max(issued);
            }
        }
    }

    fn save(&self) -> std::io::Result<()> {
        if self.path.as_os_str().is_empty() {
            return Ok(());
        }
        let file = RecordFile {
            version: 1,
            floor_ms: self.floor_ms,
            taken: self.taken.clone(),
        };
        let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        crate::plugin::trust::write_atomically(&self.path, &bytes, None)
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

        // A damaged record: nothing issued before the restart is taken.
        std::fs::write(&record, b"{garbage").unwrap();
        let lost = Authority::new("gw", keys, true, (60_000, 5_000), &record);
        assert_eq!(code(lost.take(&command("c9", now))), "replay");
        lost.take(&command("c10", crate::reading::now_ms() + 5_001))
            .unwrap();
    }

    #[test]
    fn ids_leave_the_record_with_the_window_and_the_floor_keeps_them_refused() {
        let dir = tempfile::tempdir().unwrap();
        let record = record_path(dir.path());
        let authority = Authority::new("gw", Vec::new(), false, (1_000, 0), &record);
        let now = crate::reading::now_ms();
        authority.take(&command("old", now - 5_000)).unwrap();
        authority.take(&command("new", now)).unwrap();
        let file: RecordFile = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        assert_eq!(file.taken.keys().collect::<Vec<_>>(), ["new"]);
        assert_eq!(file.floor_ms, now - 5_000);
        assert_eq!(
            code(authority.take(&command("older", now - 6_000))),
            "replay"
        );
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
