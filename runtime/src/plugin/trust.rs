//! Who built a plugin, and which plugin and version it says it is.
//!
//! Signatures are Ed25519 in the WebAssembly tool-conventions format (the
//! `wasmsign2` crate): a `signature` custom section first in the file,
//! signing the SHA-256 of every byte after it. It works on components as on
//! core modules; wasmtime ignores custom sections, so a signed plugin loads
//! anywhere. A publisher signs the plugin's name and semver version into it
//! as a `ferrule:plugin-id` custom section (JSON), written before the
//! signature is made so the signature covers it.
//!
//! The gateway checks the very bytes it then compiles ([`TrustPolicy::admit`]),
//! so a file swapped between the check and the load is never run.
//!
//! Key files are PEM. A key's id is the first 12 bytes of
//! HMAC-SHA256("key_id", public key), written in hex (24 characters); a
//! signature names the id of the key that made it.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmsign2::{CustomSection, KeyPair, Module, PublicKey, SecretKey, Section, SectionLike};

/// The custom section holding a plugin's name and version.
pub const IDENTITY_SECTION: &str = "ferrule:plugin-id";

/// The largest identity section read; a larger one is refused.
const MAX_IDENTITY_BYTES: usize = 1024;

/// The longest plugin name.
const MAX_NAME_BYTES: usize = 128;

/// A plugin's name and version, as its publisher signed them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The plugin's name: letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// Its semver version.
    pub version: semver::Version,
}

impl Identity {
    /// An identity, if `name` is acceptable and `version` is semver.
    pub fn new(name: &str, version: &str) -> Result<Identity, String> {
        let identity = Identity {
            name: name.to_string(),
            version: semver::Version::parse(version)
                .map_err(|e| format!("version {version:?} is not semver: {e}"))?,
        };
        identity.check()?;
        Ok(identity)
    }

    fn check(&self) -> Result<(), String> {
        check_name(&self.name)
    }
}

/// Whether `name` may be a plugin's name: 1 to 128 letters, digits, `-`,
/// `_` or `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_NAME_BYTES || !name.chars().all(allowed) {
        return Err(format!(
            "plugin name {name:?}: expected 1 to {MAX_NAME_BYTES} letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.name, self.version)
    }
}

/// Where a loaded plugin came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Provenance {
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// The id of the trusted key whose signature verified; `None` when the
    /// plugin runs unverified (`require_signed = false`).
    pub signer: Option<String>,
    /// The signed name and version, if the plugin carries them.
    pub identity: Option<Identity>,
}

/// Why a plugin is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No signature, and one is required.
    #[error("not signed, and [trust] require_signed is on")]
    Unsigned,
    /// Signed only by keys this gateway does not trust.
    #[error("signed by a key this gateway does not trust (key id {})", key_ids(.0))]
    UnknownKey(Vec<Option<String>>),
    /// A trusted key signed it, but the bytes changed since.
    #[error("changed after it was signed: the signature by key id {0} does not match its content")]
    Tampered(String),
    /// The signature or identity section cannot be read.
    #[error("unreadable {0}")]
    Malformed(String),
    /// Not signed as the plugin the config names.
    #[error("signed as {}, but the config expects plugin_name = {expected:?}", found.as_deref().map_or("no plugin name".to_string(), |f| format!("{f:?}")))]
    WrongName {
        /// `plugin_name` in the config.
        expected: String,
        /// The signed name, if any.
        found: Option<String>,
    },
    /// Older than a version of the same plugin this gateway already ran.
    #[error(
        "{name} {version} is older than {name} {highest}, which this gateway already ran (set allow_downgrade = true for this plugin to run it anyway)"
    )]
    RolledBack {
        /// The plugin's signed name.
        name: String,
        /// Its signed version.
        version: semver::Version,
        /// The highest version run before.
        highest: semver::Version,
    },
}

fn key_ids(ids: &[Option<String>]) -> String {
    let ids: Vec<&str> = ids
        .iter()
        .map(|id| id.as_deref().unwrap_or("none given"))
        .collect();
    if ids.is_empty() {
        "none given".to_string()
    } else {
        ids.join(", ")
    }
}

/// `bytes` in lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of `bytes`, in hex: a plugin's (and a config's) identity
/// in logs, telemetry and the compile cache.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Writes `bytes` to `path` through a temporary file beside it (fsync,
/// rename, fsync of the directory), so a reader sees the old file or the
/// new one, never half of one; the file gets `permissions` when given.
pub fn write_atomically(
    path: &Path,
    bytes: &[u8],
    permissions: Option<std::fs::Permissions>,
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    if let Some(permissions) = permissions {
        tmp.as_file().set_permissions(permissions)?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The largest key file read.
const MAX_KEY_FILE_BYTES: u64 = 64 << 10;

/// A key file's bytes, bounded.
fn read_key_file(path: &Path) -> Result<Vec<u8>, String> {
    read_bounded(path, MAX_KEY_FILE_BYTES).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => format!("{}: {e}, not a key file", path.display()),
        _ => format!("{}: {e}", path.display()),
    })
}

/// The bytes of the file at `path`, reading at most `max` of them: a
/// longer file is an `InvalidData` error ("over `max` bytes"), so a file
/// that grew past reason is never read whole.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, max + 1), &mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("over {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// SHA-256 of the file at `path`, hex, read in pieces (a plugin file may
/// be large).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// A public key with its id attached.
fn with_id(key: PublicKey) -> (PublicKey, String) {
    let key = key.attach_default_key_id();
    let id = key.key_id().map(|id| hex(id)).unwrap_or_default();
    (key, id)
}

/// The key id of a public key file's key.
pub fn key_id(public_key_file: &Path) -> Result<String, String> {
    Ok(read_public_key(public_key_file)?.1)
}

fn read_public_key(path: &Path) -> Result<(PublicKey, String), String> {
    let bytes = read_key_file(path)?;
    let key = PublicKey::from_any(&bytes).map_err(|e| {
        format!(
            "{}: not an Ed25519 public key (PEM, DER or raw): {e}",
            path.display()
        )
    })?;
    Ok(with_id(key))
}

fn read_secret_key(path: &Path) -> Result<SecretKey, String> {
    let bytes = read_key_file(path)?;
    SecretKey::from_any(&bytes).map_err(|e| {
        format!(
            "{}: not an Ed25519 secret key (PEM, DER or raw): {e}",
            path.display()
        )
    })
}

fn parse(bytes: &[u8]) -> Result<Module, Refusal> {
    Module::deserialize(&mut &bytes[..])
        .map_err(|e| Refusal::Malformed(format!("WebAssembly sections: {e}")))
}

fn identity_in(module: &Module) -> Result<Option<Identity>, Refusal> {
    let mut found = None;
    for section in &module.sections {
        if let Section::Custom(custom) = section
            && custom.name() == IDENTITY_SECTION
        {
            if found.is_some() {
                return Err(Refusal::Malformed(format!(
                    "identity: more than one {IDENTITY_SECTION} section"
                )));
            }
            let payload = custom.payload();
            if payload.len() > MAX_IDENTITY_BYTES {
                return Err(Refusal::Malformed(format!(
                    "identity: {IDENTITY_SECTION} section of {} bytes (at most {MAX_IDENTITY_BYTES})",
                    payload.len()
                )));
            }
            let identity: Identity = serde_json::from_slice(payload)
                .map_err(|e| Refusal::Malformed(format!("identity: {e}")))?;
            identity
                .check()
                .map_err(|e| Refusal::Malformed(format!("identity: {e}")))?;
            found = Some(identity);
        }
    }
    Ok(found)
}

/// The key ids the file's signatures name; `None` when it is not signed.
fn signature_key_ids(module: &Module) -> Result<Option<Vec<Option<String>>>, Refusal> {
    let Some(Section::Custom(header)) = module.sections.first() else {
        return Ok(None);
    };
    if !header.is_signature_header() {
        return Ok(None);
    }
    let data = header
        .signature_data()
        .map_err(|e| Refusal::Malformed(format!("signature section: {e}")))?;
    Ok(Some(
        data.signed_hashes_set
            .iter()
            .flat_map(|set| &set.signatures)
            .map(|s| s.key_id.as_deref().map(hex))
            .collect(),
    ))
}

/// Which plugins this gateway runs: `[trust]`.
#[derive(Clone)]
pub struct TrustPolicy {
    keys: Vec<(PublicKey, String)>,
    require_signed: bool,
}

impl std::fmt::Debug for TrustPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustPolicy")
            .field("keys", &self.key_ids())
            .field("require_signed", &self.require_signed)
            .finish()
    }
}

impl Default for TrustPolicy {
    /// No publisher keys: every plugin runs, unverified.
    fn default() -> Self {
        TrustPolicy {
            keys: Vec::new(),
            require_signed: false,
        }
    }
}

impl TrustPolicy {
    /// The publisher keys in `files`; `require_signed` defaults to on once
    /// there is a key.
    pub fn from_files(files: &[PathBuf], require_signed: Option<bool>) -> Result<Self, String> {
        let keys = files
            .iter()
            .map(|f| read_public_key(f))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustPolicy {
            require_signed: require_signed.unwrap_or(!keys.is_empty()),
            keys,
        })
    }

    /// The trusted keys' ids.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(_, id)| id.as_str()).collect()
    }

    /// Whether unsigned plugins are refused.
    pub fn require_signed(&self) -> bool {
        self.require_signed
    }

    /// Checks a plugin's bytes. A signature by a trusted key that does not
    /// match the content is refused whatever `require_signed` says; an
    /// unsigned plugin, or one signed by unknown keys, runs unverified only
    /// when signatures are not required. Without publisher keys, a file
    /// whose signature or identity section cannot be read runs as it did
    /// before gateways checked them (unverified, without identity; logged):
    /// an upgrade never stops a plugin that loaded before.
    pub fn admit(&self, bytes: &[u8]) -> Result<Provenance, Refusal> {
        match self.admit_checked(bytes) {
            Err(Refusal::Malformed(why)) if self.keys.is_empty() && !self.require_signed => {
                tracing::warn!(problem = %why, "plugin's signature or identity section unreadable; running it unverified, without identity");
                Ok(Provenance {
                    sha256: sha256_hex(bytes),
                    signer: None,
                    identity: None,
                })
            }
            checked => checked,
        }
    }

    fn admit_checked(&self, bytes: &[u8]) -> Result<Provenance, Refusal> {
        let module = parse(bytes)?;
        let identity = identity_in(&module)?;
        let provenance = |signer| Provenance {
            sha256: sha256_hex(bytes),
            signer,
            identity: identity.clone(),
        };
        let Some(ids) = signature_key_ids(&module)? else {
            return if self.require_signed {
                Err(Refusal::Unsigned)
            } else {
                Ok(provenance(None))
            };
        };
        for (key, id) in &self.keys {
            if key.verify(&mut &bytes[..], None).is_ok() {
                return Ok(provenance(Some(id.clone())));
            }
        }
        if let Some((_, id)) = self
            .keys
            .iter()
            .find(|(_, id)| ids.iter().any(|s| s.as_deref() == Some(id.as_str())))
        {
            return Err(Refusal::Tampered(id.clone()));
        }
        if self.require_signed {
            Err(Refusal::UnknownKey(ids))
        } else {
            Ok(provenance(None))
        }
    }
}

/// The highest version of each plugin name this gateway has run, kept in
/// a small JSON file beside the queue (`{"plugins": {"name": "1.2.0"}}`),
/// replaced atomically. It only ever grows.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    path: PathBuf,
    highest: std::collections::BTreeMap<String, semver::Version>,
    /// The file was there but could not be read; kept aside on save.
    unreadable: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct VersionsFile {
    plugins: std::collections::BTreeMap<String, semver::Version>,
}

/// The largest versions file read.
const MAX_VERSIONS_BYTES: u64 = 1 << 20;

impl Versions {
    /// The record at `path`; empty when there is none. A file that cannot
    /// be read is reported and treated as empty (the gateway keeps
    /// capturing, rollback protection starting over from the versions it
    /// runs now); [`Versions::save`] moves it aside (`.unreadable-{ns}`)
    /// before writing, so reading has no side effects (`ferrule check`).
    pub fn load(path: &Path) -> Versions {
        let mut versions = Versions {
            path: path.to_path_buf(),
            ..Versions::default()
        };
        let read = || -> Result<Option<VersionsFile>, String> {
            let bytes = match read_bounded(path, MAX_VERSIONS_BYTES) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.to_string()),
            };
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| e.to_string())
        };
        match read() {
            Ok(Some(file)) => versions.highest = file.plugins,
            Ok(None) => {}
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "plugin version record unreadable: rollback protection starts over from the versions running now");
                versions.unreadable = true;
            }
        }
        versions
    }

    /// Whether the file was there but could not be read.
    pub fn unreadable(&self) -> bool {
        self.unreadable
    }

    /// The highest version of `name` run so far.
    pub fn highest(&self, name: &str) -> Option<&semver::Version> {
        self.highest.get(name)
    }

    /// Refuses a plugin that is not signed as `expected` (when given), or
    /// that is older than a version of it already run (unless
    /// `allow_downgrade`).
    pub fn check(
        &self,
        provenance: &Provenance,
        expected: Option<&str>,
        allow_downgrade: bool,
    ) -> Result<(), Refusal> {
        let identity = provenance.identity.as_ref();
        if let Some(expected) = expected
            && identity.map(|i| i.name.as_str()) != Some(expected)
        {
            return Err(Refusal::WrongName {
                expected: expected.to_string(),
                found: identity.map(|i| i.name.clone()),
            });
        }
        let Some(identity) = identity else {
            return Ok(());
        };
        match self.highest(&identity.name) {
            Some(highest) if identity.version < *highest && !allow_downgrade => {
                Err(Refusal::RolledBack {
                    name: identity.name.clone(),
                    version: identity.version.clone(),
                    highest: highest.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Notes that `identity` runs; true if that raised its highest version.
    pub fn record(&mut self, identity: &Identity) -> bool {
        match self.highest.get(&identity.name) {
            Some(highest) if *highest >= identity.version => false,
            _ => {
                (self.highest).insert(identity.name.clone(), identity.version.clone());
                true
            }
        }
    }

    /// Writes the record (temporary file, fsync, rename), first moving an
    /// unreadable one aside.
    pub fn save(&mut self) -> std::io::Result<()> {
        if self.unreadable {
            let aside =
                (self.path).with_extension(format!("json.unreadable-{}", crate::reading::now_ns()));
            std::fs::rename(&self.path, &aside)?;
            tracing::warn!(file = %self.path.display(), moved_to = %aside.display(), "unreadable plugin version record kept aside");
            self.unreadable = false;
        }
        let file = VersionsFile {
            plugins: self.highest.clone(),
        };
        write_atomically(&self.path, &serde_json::to_vec_pretty(&file)?, None)
    }
}

/// Writes a new key pair: the secret key to `secret` (mode 0600; an
/// existing file is never overwritten) and the public key to `public`.
/// Returns the key id.
pub fn keygen(secret: &Path, public: &Path) -> Result<String, String> {
    let pair = KeyPair::generate();
    let (public_key, id) = with_id(pair.pk);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let write = |path: &Path, text: &str, options: &std::fs::OpenOptions| {
        options
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    write(secret, &pair.sk.to_pem(), &options)?;
    let mut public_options = std::fs::OpenOptions::new();
    public_options.write(true).create_new(true);
    write(public, &public_key.to_pem(), &public_options)?;
    Ok(id)
}

/// The plugin in `bytes` signed with the secret key in `key_file`, with
/// `identity` written into it first (replacing any it had). Returns the
/// signed bytes and the key id.
pub fn sign(
    bytes: &[u8],
    key_file: &Path,
    identity: Option<&Identity>,
) -> Result<(Vec<u8>, String), String> {
    let key = read_secret_key(key_file)?;
    let mut module = parse(bytes).map_err(|e| e.to_string())?;
    if let Some(identity) = identity {
        module
            .sections
            .retain(|s| !matches!(s, Section::Custom(c) if c.name() == IDENTITY_SECTION));
        let payload = serde_json::to_vec(identity).map_err(|e| e.to_string())?;
        module.sections.push(Section::Custom(CustomSection::new(
            IDENTITY_SECTION.to_string(),
            payload,
        )));
    }
    let public = PublicKey::from_der(&key.sk.public_key().to_der())
        .map_err(|e| format!("public key of {}: {e}", key_file.display()))?;
    let (public, id) = with_id(public);
    let signed = key
        .sign(module, public.key_id())
        .map_err(|e| format!("signing: {e}"))?;
    let mut out = Vec::with_capacity(bytes.len() + 256);
    signed
        .serialize(&mut out)
        .map_err(|e| format!("writing the signed plugin: {e}"))?;
    Ok((out, id))
}

/// Signs `message` (any bytes, not a plugin) with the secret key in
/// `key_file`: the Ed25519 signature and the key's id.
pub fn sign_bytes(message: &[u8], key_file: &Path) -> Result<(Vec<u8>, String), String> {
    let key = read_secret_key(key_file)?;
    let public = PublicKey::from_der(&key.sk.public_key().to_der())
        .map_err(|e| format!("public key of {}: {e}", key_file.display()))?;
    let (_, id) = with_id(public);
    Ok((key.sk.sign(message, None).to_vec(), id))
}

/// The public key in each of `files`, with its id.
pub fn public_keys(files: &[PathBuf]) -> Result<Vec<(String, ed25519_compact::PublicKey)>, String> {
    files
        .iter()
        .map(|f| read_public_key(f).map(|(key, id)| (id, key.pk)))
        .collect()
}

/// What a plugin file says about itself, without trusting anything.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    /// Size in bytes.
    pub size: usize,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// The key ids its signatures name (`None`: a signature without an
    /// id); empty when unsigned.
    pub signatures: Vec<Option<String>>,
    /// The signed name and version, if any.
    pub identity: Option<Identity>,
}

/// Reads a plugin's signatures and identity.
pub fn inspect(bytes: &[u8]) -> Result<Inspection, String> {
    let module = parse(bytes).map_err(|e| e.to_string())?;
    Ok(Inspection {
        size: bytes.len(),
        sha256: sha256_hex(bytes),
        signatures: signature_key_ids(&module)
            .map_err(|e| e.to_string())?
            .unwrap_or_default(),
        identity: identity_in(&module).map_err(|e| e.to_string())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component: its header alone, plus a custom section so
    /// there is content to change.
    fn component() -> Vec<u8> {
        let mut bytes = vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        let name = b"note";
        let payload = b"sensor driver";
        bytes.push(0);
        bytes.push((1 + name.len() + payload.len()) as u8);
        bytes.push(name.len() as u8);
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(payload);
        bytes
    }

    struct Keys {
        _dir: tempfile::TempDir,
        secret: PathBuf,
        public: PathBuf,
        id: String,
    }

    fn keys() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("publisher.key");
        let public = dir.path().join("publisher.pub");
        let id = keygen(&secret, &public).unwrap();
        Keys {
            _dir: dir,
            secret,
            public,
            id,
        }
    }

    fn policy(keys: &[&Keys], require: Option<bool>) -> TrustPolicy {
        let files: Vec<PathBuf> = keys.iter().map(|k| k.public.clone()).collect();
        TrustPolicy::from_files(&files, require).unwrap()
    }

    #[test]
    fn a_signed_plugin_is_admitted_with_its_signer_and_identity() {
        let k = keys();
        assert_eq!(k.id.len(), 24);
        assert_eq!(key_id(&k.public).unwrap(), k.id);
        let identity = Identity::new("sim", "1.2.3").unwrap();
        let (signed, id) = sign(&component(), &k.secret, Some(&identity)).unwrap();
        assert_eq!(id, k.id);
        let admitted = policy(&[&k], None).admit(&signed).unwrap();
        assert_eq!(admitted.signer.as_deref(), Some(k.id.as_str()));
        assert_eq!(admitted.identity, Some(identity.clone()));
        assert_eq!(admitted.sha256, sha256_hex(&signed));
        let seen = inspect(&signed).unwrap();
        assert_eq!(seen.signatures, vec![Some(k.id.clone())]);
        assert_eq!(seen.identity, Some(identity));
        // Signing again replaces the signature and the identity.
        let newer = Identity::new("sim", "1.3.0").unwrap();
        let (again, _) = sign(&signed, &k.secret, Some(&newer)).unwrap();
        let seen = inspect(&again).unwrap();
        assert_eq!((seen.signatures.len(), seen.identity), (1, Some(newer)));
        assert!(policy(&[&k], None).admit(&again).is_ok());
    }

    #[test]
    fn any_changed_byte_is_refused_as_tampered() {
        let k = keys();
        let (signed, _) = sign(&component(), &k.secret, None).unwrap();
        let policy = policy(&[&k], Some(false));
        let content_start = signed.len() - b"sensor driver".len();
        for at in content_start..signed.len() {
            let mut changed = signed.clone();
            changed[at] ^= 0x01;
            assert_eq!(
                policy.admit(&changed),
                Err(Refusal::Tampered(k.id.clone())),
                "byte {at} changed"
            );
        }
    }

    #[test]
    fn unsigned_and_unknown_keys_are_refused_when_signatures_are_required() {
        let (trusted, stranger) = (keys(), keys());
        let (by_stranger, _) = sign(&component(), &stranger.secret, None).unwrap();
        let strict = policy(&[&trusted], None);
        assert!(strict.require_signed());
        assert_eq!(strict.admit(&component()), Err(Refusal::Unsigned));
        let refused = strict.admit(&by_stranger).unwrap_err();
        assert_eq!(
            refused,
            Refusal::UnknownKey(vec![Some(stranger.id.clone())])
        );
        assert!(refused.to_string().contains(&stranger.id), "{refused}");
        // Not required: they run, unverified.
        let lenient = policy(&[&trusted], Some(false));
        assert_eq!(lenient.admit(&component()).unwrap().signer, None);
        assert_eq!(lenient.admit(&by_stranger).unwrap().signer, None);
        // No keys at all: nothing is required.
        assert_eq!(
            TrustPolicy::default().admit(&component()).unwrap().signer,
            None
        );
        // Either of two trusted keys will do.
        let both = policy(&[&trusted, &stranger], None);
        assert_eq!(
            both.admit(&by_stranger).unwrap().signer.as_deref(),
            Some(stranger.id.as_str())
        );
    }

    fn provenance(name: &str, version: &str) -> Provenance {
        Provenance {
            sha256: String::new(),
            signer: None,
            identity: Some(Identity::new(name, version).unwrap()),
        }
    }

    #[test]
    fn older_versions_and_wrong_names_are_refused_and_the_record_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin-versions.json");
        let mut versions = Versions::load(&path);
        assert!(
            versions
                .check(&provenance("sim", "0.1.0"), None, false)
                .is_ok()
        );
        assert!(versions.record(&Identity::new("sim", "0.2.0").unwrap()));
        assert!(!versions.record(&Identity::new("sim", "0.1.5").unwrap()));
        versions.save().unwrap();

        let versions = Versions::load(&path);
        let old = provenance("sim", "0.1.9");
        let refused = versions.check(&old, None, false).unwrap_err();
        assert!(
            matches!(&refused, Refusal::RolledBack { highest, .. } if highest.to_string() == "0.2.0"),
            "{refused}"
        );
        assert!(refused.to_string().contains("allow_downgrade"), "{refused}");
        assert!(versions.check(&old, None, true).is_ok(), "pinned");
        // The same version, newer ones, other plugins, and the name the
        // config expects all pass.
        for (name, version, expected) in [
            ("sim", "0.2.0", None),
            ("sim", "0.3.0-rc.1", None),
            ("other", "0.0.1", None),
            ("sim", "0.2.0", Some("sim")),
        ] {
            let checked = versions.check(&provenance(name, version), expected, false);
            assert!(checked.is_ok(), "{name} {version}: {checked:?}");
        }
        let wrong = versions
            .check(&provenance("sim", "0.2.0"), Some("meter"), false)
            .unwrap_err();
        assert!(wrong.to_string().contains("\"meter\""), "{wrong}");
        let unnamed = Provenance {
            identity: None,
            ..provenance("x", "1.0.0")
        };
        assert!(versions.check(&unnamed, None, false).is_ok());
        assert!(versions.check(&unnamed, Some("sim"), false).is_err());

        // An unreadable record reads as empty, untouched until the next
        // save keeps it aside.
        std::fs::write(&path, b"{not json").unwrap();
        let mut versions = Versions::load(&path);
        assert!(versions.highest("sim").is_none());
        assert_eq!(std::fs::read(&path).unwrap(), b"{not json");
        versions.record(&Identity::new("sim", "0.3.0").unwrap());
        versions.save().unwrap();
        assert_eq!(
            Versions::load(&path).highest("sim").map(|v| v.to_string()),
            Some("0.3.0".to_string())
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn bad_identities_and_key_files_are_refused_clearly() {
        assert!(Identity::new("sim", "1.x").is_err());
        assert!(Identity::new("a/b", "1.0.0").is_err());
        assert!(Identity::new("", "1.0.0").is_err());
        let k = keys();
        // keygen never overwrites a key.
        assert!(keygen(&k.secret, &k.public).is_err());
        let err = TrustPolicy::from_files(&[k.secret.with_extension("none")], None).unwrap_err();
        assert!(err.contains("publisher.none"), "{err}");
        // A key file is read only up to its bound.
        let huge = k.secret.with_extension("huge");
        std::fs::write(&huge, vec![b'A'; 100 << 10]).unwrap();
        let err = TrustPolicy::from_files(std::slice::from_ref(&huge), None).unwrap_err();
        assert!(err.contains("not a key file"), "{err}");
        // A secret key is not a public key.
        assert!(TrustPolicy::from_files(std::slice::from_ref(&k.secret), None).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&k.secret).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "secret key readable by others: {mode:o}");
        }
        // Unreadable sections are refused once keys are configured; without
        // them the plugin runs as before, unverified and without identity.
        let garbled = b"\0asm\x0d\0\x01\0\0\x7f";
        assert!(matches!(
            policy(&[&k], Some(false)).admit(garbled),
            Err(Refusal::Malformed(_))
        ));
        let admitted = TrustPolicy::default().admit(garbled).unwrap();
        assert_eq!((admitted.signer, admitted.identity), (None, None));
    }
}
