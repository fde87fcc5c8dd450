//! Encryption at rest of queue entries: AES-256-GCM (ring's AEAD).
//!
//! A **keyring** file holds one or more 256-bit keys, each with an id (the
//! first 8 bytes of its SHA-256, hex); the newest encrypts, every one
//! decrypts. It is JSON, written with mode 0600, and refused when group or
//! others may read it.
//!
//! An encrypted entry is stored as
//! `captured_ns (8, LE) | 0x01 | key id (8) | ciphertext | tag (16)`; a
//! plaintext one (encryption off, or written by an older version) as
//! `captured_ns | JSON`, whose first byte is `{`, so both read from one
//! file. Each queue file has a random 32-byte salt (`crypt` table), and
//! each key is used through a subkey derived for that file (HKDF-SHA-256,
//! salt, info = key id); the nonce is the entry's sequence number (4 zero
//! bytes, then the number, LE), which a file never reuses, so no nonce
//! repeats under one subkey. The associated data is the sequence number,
//! the capture time and the key id: an entry moved to another sequence, or
//! given another header, fails to decrypt. The capture time stays in clear
//! so retention and `queue stats` work without the key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// The version byte of an encrypted entry.
pub const ENCRYPTED: u8 = 0x01;
/// Bytes an encrypted entry adds to its plaintext form.
pub const OVERHEAD: usize = 1 + ID_BYTES + 16;
const ID_BYTES: usize = 8;
const HEADER: usize = 8;
/// The largest keyring file read.
const MAX_KEYRING_BYTES: u64 = 1 << 20;

/// Why the keyring cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Missing, unreadable or malformed.
    #[error("storage key {}: {message}", path.display())]
    File {
        /// The keyring file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Readable by group or others.
    #[error(
        "storage key {}: readable by group or others (mode {mode:o}); run chmod 600 on it",
        path.display()
    )]
    Exposed {
        /// The keyring file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

#[derive(Serialize, Deserialize)]
struct KeyringFile {
    format: u32,
    keys: Vec<KeyEntry>,
}

#[derive(Clone, Serialize, Deserialize)]
struct KeyEntry {
    id: String,
    key: String,
    created_ms: u64,
}

/// Subkeys derived so far, by (file salt, key id).
type Derived = HashMap<([u8; 32], String), std::sync::Arc<LessSafeKey>>;

/// The storage keys of a gateway.
pub struct Keyring {
    path: PathBuf,
    /// Oldest first; the last one encrypts. A running gateway adds and
    /// erases keys (an erasure rotates the key to shred the old one).
    keys: std::sync::RwLock<Vec<(String, [u8; 32], u64)>>,
    /// Subkeys by (file salt, key id).
    derived: Mutex<Derived>,
    /// Read from a source ferrule may not change (a systemd credential):
    /// keys are neither added nor erased.
    fixed: bool,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("path", &self.path)
            .field("ids", &self.ids())
            .finish()
    }
}

fn key_id(key: &[u8; 32]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    digest.as_ref()[..ID_BYTES]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random number generator failed".to_string())?;
    Ok(bytes)
}

/// A new random salt for a queue file.
pub fn new_salt() -> Result<[u8; 32], String> {
    random()
}

impl Keyring {
    /// Reads the keyring at `path`, refusing one that group or others may
    /// read.
    pub fn load(path: &Path) -> Result<Keyring, KeyError> {
        let file_err = |message: String| KeyError::File {
            path: path.to_path_buf(),
            message,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| file_err(e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(KeyError::Exposed {
                    path: path.to_path_buf(),
                    mode: mode & 0o777,
                });
            }
        }
        let bytes = crate::plugin::trust::read_bounded(path, MAX_KEYRING_BYTES)
            .map_err(|e| file_err(e.to_string()))?;
        let file: KeyringFile = serde_json::from_slice(&bytes)
            .map_err(|e| file_err(format!("not a ferrule storage key file: {e}")))?;
        if file.format != 1 {
            return Err(file_err(format!(
                "format {}; this ferrule reads format 1",
                file.format
            )));
        }
        let mut keys = Vec::with_capacity(file.keys.len());
        for k in file.keys {
            let raw = BASE64
                .decode(k.key.as_bytes())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                .ok_or_else(|| file_err(format!("key {}: not 32 bytes of base64", k.id)))?;
            if key_id(&raw) != k.id {
                return Err(file_err(format!(
                    "key {}: its bytes do not match its id (damaged?)",
                    k.id
                )));
            }
            keys.push((k.id, raw, k.created_ms));
        }
        if keys.is_empty() {
            return Err(file_err("holds no key".into()));
        }
        Ok(Keyring {
            path: path.to_path_buf(),
            keys: std::sync::RwLock::new(keys),
            derived: Mutex::new(HashMap::new()),
            fixed: false,
        })
    }

    /// Creates a keyring with one new key at `path` (mode 0600); refuses
    /// to overwrite one.
    pub fn create(path: &Path) -> Result<Keyring, KeyError> {
        if path.exists() {
            return Err(KeyError::File {
                path: path.to_path_buf(),
                message: "already exists; `ferrule key rotate` adds a key to it".into(),
            });
        }
        let ring = Keyring {
            path: path.to_path_buf(),
            keys: std::sync::RwLock::new(Vec::new()),
            derived: Mutex::new(HashMap::new()),
            fixed: false,
        };
        ring.add_key()?;
        Ok(ring)
    }

    /// Adds a new key, which encrypts from now on (older ones still
    /// decrypt); its id.
    pub fn rotate(path: &Path) -> Result<String, KeyError> {
        Keyring::load(path)?.add_key()
    }

    /// This keyring as read from a source ferrule may not change (a
    /// systemd credential): [`Keyring::add_key`] refuses and
    /// [`Keyring::erase_unused`] erases nothing.
    pub fn fixed(mut self) -> Keyring {
        self.fixed = true;
        self
    }

    /// Whether keys can be neither added nor erased.
    pub fn is_fixed(&self) -> bool {
        self.fixed
    }

    /// Adds a new key to this keyring and its file; it encrypts from now
    /// on, the older ones still decrypt. Its id.
    pub fn add_key(&self) -> Result<String, KeyError> {
        if self.fixed {
            return Err(KeyError::File {
                path: self.path.clone(),
                message: "a systemd credential, which ferrule does not change; rotate the key by replacing the credential".into(),
            });
        }
        let raw = random::<32>().map_err(|message| KeyError::File {
            path: self.path.clone(),
            message,
        })?;
        let id = key_id(&raw);
        let mut keys = write(&self.keys);
        self.take_in_file_keys(&mut keys);
        keys.push((id.clone(), raw, crate::reading::now_ms()));
        if let Err(e) = self.save(&keys) {
            keys.pop();
            return Err(e);
        }
        Ok(id)
    }

    /// Adds the keys the file holds and `keys` lacks (one `ferrule key
    /// rotate` added while the gateway ran), oldest first, so writing the
    /// file never drops a key another process put there.
    fn take_in_file_keys(&self, keys: &mut Vec<(String, [u8; 32], u64)>) {
        let Ok(file) = Keyring::load(&self.path) else {
            return;
        };
        let theirs = file
            .keys
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        let mut added = false;
        for key in theirs {
            if !keys.iter().any(|(id, ..)| *id == key.0) {
                keys.push(key);
                added = true;
            }
        }
        if added {
            keys.sort_by_key(|(_, _, created_ms)| *created_ms);
        }
    }

    fn save(&self, keys: &[(String, [u8; 32], u64)]) -> Result<(), KeyError> {
        let file = KeyringFile {
            format: 1,
            keys: (keys.iter())
                .map(|(id, raw, created_ms)| KeyEntry {
                    id: id.clone(),
                    key: BASE64.encode(raw),
                    created_ms: *created_ms,
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| KeyError::File {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        #[cfg(unix)]
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            Some(std::fs::Permissions::from_mode(0o600))
        };
        #[cfg(not(unix))]
        let mode = None;
        crate::plugin::trust::write_atomically(&self.path, &json, mode).map_err(|e| {
            KeyError::File {
                path: self.path.clone(),
                message: e.to_string(),
            }
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every key id, oldest first.
    pub fn ids(&self) -> Vec<String> {
        read(&self.keys).iter().map(|(id, ..)| id.clone()).collect()
    }

    /// The id of the key that encrypts.
    pub fn current(&self) -> String {
        read(&self.keys)
            .last()
            .map_or_else(String::new, |(id, ..)| id.clone())
    }

    /// Removes every key but the current one not in `in_use` from this
    /// keyring and its file: nothing stored needs it any more. Returns the
    /// ids erased.
    pub fn erase_unused(&self, in_use: &[String]) -> Result<Vec<String>, KeyError> {
        if self.fixed {
            return Ok(Vec::new());
        }
        let mut keys = write(&self.keys);
        self.take_in_file_keys(&mut keys);
        let current = keys.last().map(|(id, ..)| id.clone());
        let (keep, erase): (Vec<_>, Vec<_>) = keys
            .iter()
            .cloned()
            .partition(|(id, ..)| Some(id) == current.as_ref() || in_use.contains(id));
        let erased: Vec<String> = erase.iter().map(|(id, ..)| id.clone()).collect();
        if !erased.is_empty() {
            self.save(&keep)?;
            *keys = keep;
            lock(&self.derived).retain(|(_, id), _| !erased.contains(id));
        }
        Ok(erased)
    }

    fn subkey(&self, salt: &[u8; 32], id: &str) -> Option<std::sync::Arc<LessSafeKey>> {
        let mut derived = lock(&self.derived);
        if let Some(k) = derived.get(&(*salt, id.to_string())) {
            return Some(k.clone());
        }
        let raw = read(&self.keys).iter().find(|(k, ..)| k == id)?.1;
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&raw);
        let info = [id.as_bytes()];
        let okm = prk.expand(&info, &AES_256_GCM).ok()?;
        let key = std::sync::Arc::new(LessSafeKey::new(UnboundKey::from(okm)));
        derived.insert((*salt, id.to_string()), key.clone());
        Some(key)
    }

    /// `plain` (a stored entry: header, then JSON) encrypted for sequence
    /// `seq` of the file with `salt`, with the current key.
    pub fn seal(&self, salt: &[u8; 32], seq: u64, plain: &[u8]) -> Result<Vec<u8>, String> {
        let id = self.current();
        let key = self
            .subkey(salt, &id)
            .ok_or("no storage key to encrypt with")?;
        let header = plain.get(..HEADER).ok_or("entry without a header")?;
        let id_bytes = id_bytes(&id)?;
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.extend_from_slice(header);
        out.push(ENCRYPTED);
        out.extend_from_slice(&id_bytes);
        let body_at = out.len();
        out.extend_from_slice(&plain[HEADER..]);
        let mut body = out.split_off(body_at);
        let tag = key
            .seal_in_place_separate_tag(nonce(seq), aad(seq, header, &id_bytes), &mut body)
            .map_err(|_| "encryption failed".to_string())?;
        out.extend_from_slice(&body);
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// The plaintext form (header, then JSON) of the encrypted entry
    /// `stored` at sequence `seq` of the file with `salt`.
    pub fn open(&self, salt: &[u8; 32], seq: u64, stored: &[u8]) -> Result<Vec<u8>, String> {
        let id = entry_key_id(stored).ok_or("not an encrypted entry")?;
        let key = self.subkey(salt, &id).ok_or_else(|| {
            format!(
                "encrypted with storage key {id}, which is not in {}",
                self.path.display()
            )
        })?;
        let header = &stored[..HEADER];
        let id_bytes = &stored[HEADER + 1..HEADER + 1 + ID_BYTES];
        let mut body = stored[HEADER + 1 + ID_BYTES..].to_vec();
        let plain = key
            .open_in_place(nonce(seq), aad(seq, header, id_bytes), &mut body)
            .map_err(|_| {
                format!("does not decrypt with storage key {id} (changed, or moved from another sequence)")
            })?;
        let mut out = Vec::with_capacity(HEADER + plain.len());
        out.extend_from_slice(header);
        out.extend_from_slice(plain);
        Ok(out)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(PoisonError::into_inner)
}

fn id_bytes(id: &str) -> Result<[u8; ID_BYTES], String> {
    let mut out = [0u8; ID_BYTES];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = id
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("key id {id:?} is not 16 hex digits"))?;
    }
    Ok(out)
}

fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aad(seq: u64, header: &[u8], id: &[u8]) -> Aad<Vec<u8>> {
    let mut a = Vec::with_capacity(8 + HEADER + 1 + ID_BYTES);
    a.extend_from_slice(&seq.to_le_bytes());
    a.extend_from_slice(header);
    a.push(ENCRYPTED);
    a.extend_from_slice(id);
    Aad::from(a)
}

/// Whether a stored entry is encrypted.
pub fn is_encrypted(stored: &[u8]) -> bool {
    stored.get(HEADER) == Some(&ENCRYPTED)
}

/// The key id an encrypted entry names.
pub fn entry_key_id(stored: &[u8]) -> Option<String> {
    if !is_encrypted(stored) || stored.len() < HEADER + OVERHEAD {
        return None;
    }
    Some(
        stored[HEADER + 1..HEADER + 1 + ID_BYTES]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(json: &str) -> Vec<u8> {
        let mut e = 1234u64.to_le_bytes().to_vec();
        e.extend_from_slice(json.as_bytes());
        e
    }

    #[test]
    fn entries_round_trip_and_cannot_be_moved_changed_or_read_with_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("storage.key");
        let ring = Keyring::create(&path).unwrap();
        let salt = new_salt().unwrap();
        let plain = entry("{\"driver\":\"secret-meter\",\"readings\":[]}");
        let sealed = ring.seal(&salt, 7, &plain).unwrap();
        assert!(is_encrypted(&sealed));
        assert_eq!(sealed.len(), plain.len() + OVERHEAD);
        assert!(!sealed.windows(12).any(|w| w == b"secret-meter"));
        assert_eq!(ring.open(&salt, 7, &sealed).unwrap(), plain);
        // Another sequence, another file's salt, a flipped byte, a changed header.
        assert!(ring.open(&salt, 8, &sealed).is_err());
        assert!(ring.open(&new_salt().unwrap(), 7, &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(ring.open(&salt, 7, &flipped).is_err());
        let mut header = sealed.clone();
        header[0] ^= 1;
        assert!(ring.open(&salt, 7, &header).is_err());
        // A rotated key encrypts; the old one still decrypts until erased.
        let old = ring.current().to_string();
        let new = Keyring::rotate(&path).unwrap();
        let ring = Keyring::load(&path).unwrap();
        assert_eq!(ring.current(), new);
        assert_eq!(ring.open(&salt, 7, &sealed).unwrap(), plain);
        assert_eq!(
            ring.erase_unused(std::slice::from_ref(&old)).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(ring.erase_unused(&[]).unwrap(), vec![old]);
        let err = Keyring::load(&path)
            .unwrap()
            .open(&salt, 7, &sealed)
            .unwrap_err();
        assert!(err.contains("not in"), "{err}");
    }

    #[test]
    fn a_running_gateways_keyring_keeps_a_key_another_process_added() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("storage.key");
        let running = Keyring::create(&path).unwrap();
        let first = running.current();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let rotated = Keyring::rotate(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let added = running.add_key().unwrap();
        assert_eq!(
            running.ids(),
            [first.clone(), rotated.clone(), added.clone()]
        );
        assert_eq!(Keyring::load(&path).unwrap().ids(), running.ids());
        // Erasing what nothing needs keeps the newest, and a fixed keyring
        // changes nothing.
        assert_eq!(running.erase_unused(&[]).unwrap(), [first, rotated]);
        let fixed = Keyring::load(&path).unwrap().fixed();
        assert!(fixed.add_key().is_err());
        assert!(fixed.erase_unused(&[]).unwrap().is_empty());
        assert_eq!(Keyring::load(&path).unwrap().ids(), [added]);
    }

    #[cfg(unix)]
    #[test]
    fn a_keyring_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("storage.key");
        Keyring::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            Keyring::load(&path),
            Err(KeyError::Exposed { .. })
        ));
    }
}
