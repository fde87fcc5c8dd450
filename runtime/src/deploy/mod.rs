//! Deployment documents: a fleet's desired state for one gateway or a
//! group, signed by an operator key ([docs/fleet.md](../../docs/fleet.md)).
//!
//! A document travels as an envelope `{"document", "key_id", "signature"}`:
//! the document's bytes in base64 and an Ed25519 signature over exactly
//! those bytes, so no canonical form of JSON is needed. [`verify`] takes the
//! envelope as it came from the broker, a trust boundary: it is bounded
//! before it is parsed, its signature is checked before the document is
//! read, and the document is refused unless it is for this gateway, newer
//! than the one applied, and names only plugins it pins. The [`agent`]
//! fetches its plugins, applies it through the hot reload path, watches
//! the changed drivers through a health window and confirms or rolls back;
//! the [`store`] keeps what runs across restarts.

pub mod agent;
pub mod compose;
pub mod store;

pub use store::Store;

use std::collections::HashSet;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::plugin::trust;

/// The document format this gateway reads.
pub const SCHEMA: u32 = 1;
/// The largest document, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// The largest envelope (a document in base64 and its signature).
pub const MAX_MESSAGE_BYTES: usize = MAX_DOCUMENT_BYTES / 3 * 4 + 4096;
/// The most drivers one document may set up.
pub const MAX_DRIVERS: usize = 10_000;

/// A fleet's desired state for a gateway (or a group of gateways).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// The format, [`SCHEMA`].
    pub schema: u32,
    /// Rises with every deployment; a gateway applies only a higher one.
    pub deployment: u64,
    /// Who it is for.
    pub target: Target,
    /// When the operator issued it, in milliseconds since the Unix epoch.
    pub issued_ms: u64,
    /// How long a changed driver has to prove itself before the
    /// deployment is confirmed.
    #[serde(default)]
    pub health: Health,
    /// Every plugin the drivers name, pinned to a version and its bytes.
    pub plugins: Vec<PluginRef>,
    /// `[[driver]]` tables as JSON; each names its plugin (and each
    /// processor's) by signed name.
    pub drivers: Vec<serde_json::Value>,
}

/// The gateway, or group of gateways, a deployment is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Target {
    /// One gateway, by `[gateway] id`.
    Gateway(String),
    /// Every gateway of a group.
    Group(String),
}

/// The health window after a deployment is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Seconds a changed driver has to poll well.
    pub window_s: u64,
    /// Successful polls of each changed driver that confirm it earlier.
    pub good_polls: u32,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            window_s: 30,
            good_polls: 3,
        }
    }
}

/// A plugin a deployment uses: its signed name and version, and the
/// SHA-256 and size of the exact file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    /// The name signed into the plugin.
    pub name: String,
    /// The version signed into the plugin.
    pub version: semver::Version,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// The file's size in bytes.
    pub size: u64,
}

/// A document as published: its bytes in base64, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The document's JSON bytes, base64.
    pub document: String,
    /// The id of the operator key that signed it.
    pub key_id: String,
    /// Ed25519 over the document's bytes, base64.
    pub signature: String,
}

/// Why a deployment is refused. Nothing changes on the gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Over [`MAX_MESSAGE_BYTES`] or [`MAX_DOCUMENT_BYTES`].
    #[error("{bytes} bytes, more than the {max} a deployment may have")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Not an envelope, or not a document of this schema.
    #[error("malformed: {0}")]
    Malformed(String),
    /// Signed by a key that is not in `[trust] operator_keys`.
    #[error("signed by a key this gateway does not trust for deployments (key id {0})")]
    UnknownKey(String),
    /// The signature does not match the document.
    #[error("the signature of key id {0} does not match the document (changed after signing?)")]
    BadSignature(String),
    /// A schema this gateway does not read.
    #[error("schema {0}; this gateway reads schema {SCHEMA}")]
    Schema(u32),
    /// Not above the deployment applied (a replay, or an old document).
    #[error("deployment {number} is not newer than deployment {applied}, already applied")]
    Replay {
        /// The document's number.
        number: u64,
        /// The number applied here.
        applied: u64,
    },
    /// For another gateway or a group this one is not in.
    #[error("for {0}, not for this gateway")]
    NotForUs(String),
    /// A driver or processor names a plugin the document does not pin.
    #[error("drivers[{index}] names plugin {plugin:?}, which is not in plugins")]
    UnknownPlugin {
        /// The driver's position in `drivers`.
        index: usize,
        /// The name it uses.
        plugin: String,
    },
    /// Anything else the document gets wrong.
    #[error("{0}")]
    Invalid(String),
}

/// `deployment` signed with the operator's secret key in `key_file`.
pub fn sign(deployment: &Deployment, key_file: &Path) -> Result<Envelope, String> {
    let document = serde_json::to_vec(deployment).map_err(|e| e.to_string())?;
    sign_document(document, key_file)
}

/// A document's JSON bytes signed with the operator's secret key in
/// `key_file` (deployments, erasure requests).
pub fn sign_document(document: Vec<u8>, key_file: &Path) -> Result<Envelope, String> {
    if document.len() > MAX_DOCUMENT_BYTES {
        return Err(Refusal::TooLarge {
            bytes: document.len(),
            max: MAX_DOCUMENT_BYTES,
        }
        .to_string());
    }
    let (signature, key_id) = trust::sign_bytes(&document, key_file)?;
    Ok(Envelope {
        document: BASE64.encode(&document),
        key_id,
        signature: BASE64.encode(signature),
    })
}

/// An operator's state file (TOML): what a gateway or group should run.
///
/// ```toml
/// deployment = 42                   # optional: the time in ms when absent
/// target = { gateway = "gw-01" }    # or { group = "line-3" }; optional
///                                   # when given on the command line
/// [health]                          # optional
/// window_s = 30
/// good_polls = 3
/// [[plugin]]
/// file = "acme-meter.wasm"          # signed with a name and version
/// [[driver]]
/// name = "meter-1"
/// plugin = "acme-meter"             # the signed name
/// interval_ms = 1000
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    deployment: Option<u64>,
    target: Option<Target>,
    #[serde(default)]
    health: Health,
    #[serde(rename = "plugin", default)]
    plugins: Vec<PluginFile>,
    #[serde(rename = "driver", default)]
    drivers: Vec<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginFile {
    file: std::path::PathBuf,
}

/// The deployment a state file describes, each plugin pinned to the
/// name, version, SHA-256 and size of its signed file (relative paths
/// resolved against the state file's directory), and those files in the
/// order of its `plugins`. `target` replaces the file's own; a file
/// without a `deployment` number gets the time in milliseconds, which
/// rises from one deployment to the next.
pub fn from_state_file(
    path: &Path,
    target: Option<Target>,
) -> Result<(Deployment, Vec<std::path::PathBuf>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let state: StateFile =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut plugins = Vec::with_capacity(state.plugins.len());
    let mut files = Vec::with_capacity(state.plugins.len());
    for p in &state.plugins {
        let file = base.join(&p.file);
        files.push(file.clone());
        let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let seen = trust::inspect(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        let Some(identity) = seen.identity else {
            return Err(format!(
                "{}: no signed name and version (ferrule plugin sign --name N --version V)",
                file.display()
            ));
        };
        if seen.signatures.is_empty() {
            return Err(format!("{}: not signed by a publisher", file.display()));
        }
        plugins.push(PluginRef {
            name: identity.name,
            version: identity.version,
            sha256: seen.sha256,
            size: seen.size as u64,
        });
    }
    let drivers = (state.drivers.iter())
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let Some(target) = target.or(state.target) else {
        return Err(format!(
            "{}: no target: set target = {{ gateway = \"…\" }} or {{ group = \"…\" }}, or name one on the command line",
            path.display()
        ));
    };
    let issued_ms = crate::reading::now_ms();
    let deployment = Deployment {
        schema: SCHEMA,
        deployment: state.deployment.unwrap_or(issued_ms),
        target,
        issued_ms,
        health: state.health,
        plugins,
        drivers,
    };
    check_contents(&deployment).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((deployment, files))
}

/// Who this gateway is, for [`verify`].
pub struct Recipient<'a> {
    /// Its `[gateway] id`.
    pub gateway: &'a str,
    /// The groups it belongs to.
    pub groups: &'a [String],
    /// The deployment it has applied, if any.
    pub applied: Option<u64>,
    /// The operator keys it trusts, by key id.
    pub keys: &'a [(String, ed25519_compact::PublicKey)],
}

/// The deployment in `message` (an [`Envelope`] as received), if it is
/// signed by a trusted operator key, for `to`, newer than what `to` has
/// applied, and consistent.
pub fn verify(message: &[u8], to: &Recipient<'_>) -> Result<Deployment, Refusal> {
    let document = open_signed(message, to.keys)?;
    // Signed by an operator: now the document is read.
    let schema = serde_json::from_slice::<serde_json::Value>(&document)
        .map_err(|e| Refusal::Malformed(format!("document: {e}")))?
        .get("schema")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if schema != u64::from(SCHEMA) {
        return Err(Refusal::Schema(u32::try_from(schema).unwrap_or(u32::MAX)));
    }
    let deployment: Deployment = serde_json::from_slice(&document)
        .map_err(|e| Refusal::Malformed(format!("document: {e}")))?;
    match &deployment.target {
        Target::Gateway(id) if id == to.gateway => {}
        Target::Group(group) if to.groups.contains(group) => {}
        Target::Gateway(id) => return Err(Refusal::NotForUs(format!("gateway {id:?}"))),
        Target::Group(group) => return Err(Refusal::NotForUs(format!("group {group:?}"))),
    }
    if let Some(applied) = to.applied
        && deployment.deployment <= applied
    {
        return Err(Refusal::Replay {
            number: deployment.deployment,
            applied,
        });
    }
    check_contents(&deployment)?;
    Ok(deployment)
}

/// The document in `message` (an [`Envelope`] as received), if its size
/// is within bounds and it is signed by one of the operator `keys`.
pub fn open_signed(
    message: &[u8],
    keys: &[(String, ed25519_compact::PublicKey)],
) -> Result<Vec<u8>, Refusal> {
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(Refusal::TooLarge {
            bytes: message.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    let envelope: Envelope = serde_json::from_slice(message)
        .map_err(|e| Refusal::Malformed(format!("envelope: {e}")))?;
    let Some((_, key)) = keys.iter().find(|(id, _)| *id == envelope.key_id) else {
        return Err(Refusal::UnknownKey(envelope.key_id));
    };
    let document = BASE64
        .decode(envelope.document.as_bytes())
        .map_err(|e| Refusal::Malformed(format!("document: not base64: {e}")))?;
    if document.len() > MAX_DOCUMENT_BYTES {
        return Err(Refusal::TooLarge {
            bytes: document.len(),
            max: MAX_DOCUMENT_BYTES,
        });
    }
    let signature = BASE64
        .decode(envelope.signature.as_bytes())
        .ok()
        .and_then(|bytes| ed25519_compact::Signature::from_slice(&bytes).ok())
        .ok_or_else(|| Refusal::BadSignature(envelope.key_id.clone()))?;
    key.verify(&document, &signature)
        .map_err(|_| Refusal::BadSignature(envelope.key_id.clone()))?;
    Ok(document)
}

/// The deployment in a message this gateway verified and kept earlier
/// (its file's hash is checked by the [`Store`]); bounded, not re-verified.
pub fn open_unverified(message: &[u8]) -> Result<Deployment, Refusal> {
    let envelope: Envelope = serde_json::from_slice(message)
        .map_err(|e| Refusal::Malformed(format!("envelope: {e}")))?;
    let document = BASE64
        .decode(envelope.document.as_bytes())
        .map_err(|e| Refusal::Malformed(format!("document: not base64: {e}")))?;
    let deployment: Deployment = serde_json::from_slice(&document)
        .map_err(|e| Refusal::Malformed(format!("document: {e}")))?;
    check_contents(&deployment)?;
    Ok(deployment)
}

/// The plugin list pins each name once, to a well-formed hash; every
/// driver and processor names one of them.
fn check_contents(deployment: &Deployment) -> Result<(), Refusal> {
    if deployment.drivers.len() > MAX_DRIVERS {
        return Err(Refusal::Invalid(format!(
            "{} drivers, more than {MAX_DRIVERS}",
            deployment.drivers.len()
        )));
    }
    let mut names = HashSet::new();
    for p in &deployment.plugins {
        trust::check_name(&p.name).map_err(|e| Refusal::Invalid(format!("plugins: {e}")))?;
        if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Refusal::Invalid(format!(
                "plugins: {}: sha256 {:?} is not 64 hex digits",
                p.name, p.sha256
            )));
        }
        if !names.insert(p.name.as_str()) {
            return Err(Refusal::Invalid(format!(
                "plugins: {} is listed twice",
                p.name
            )));
        }
    }
    for (index, driver) in deployment.drivers.iter().enumerate() {
        let processors = driver
            .get("processor")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten();
        for table in std::iter::once(driver).chain(processors) {
            let plugin = table
                .get("plugin")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default();
            if !names.contains(plugin) {
                return Err(Refusal::UnknownPlugin {
                    index,
                    plugin: plugin.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Keys {
        _dir: tempfile::TempDir,
        secret: std::path::PathBuf,
        other: std::path::PathBuf,
        trusted: Vec<(String, ed25519_compact::PublicKey)>,
    }

    fn keys() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let (secret, other) = (dir.path().join("op.key"), dir.path().join("other.key"));
        trust::keygen(&secret, &dir.path().join("op.key.pub")).unwrap();
        trust::keygen(&other, &dir.path().join("other.key.pub")).unwrap();
        let trusted = trust::public_keys(&[dir.path().join("op.key.pub")]).unwrap();
        Keys {
            _dir: dir,
            secret,
            other,
            trusted,
        }
    }

    fn deployment(number: u64, target: Target) -> Deployment {
        Deployment {
            schema: SCHEMA,
            deployment: number,
            target,
            issued_ms: 1,
            health: Health::default(),
            plugins: vec![PluginRef {
                name: "acme-meter".into(),
                version: semver::Version::new(1, 4, 0),
                sha256: "ab".repeat(32),
                size: 1000,
            }],
            drivers: vec![serde_json::json!({
                "name": "meter-1", "plugin": "acme-meter", "interval_ms": 1000,
                "processor": [{"name": "p", "plugin": "acme-meter"}],
            })],
        }
    }

    #[test]
    fn a_state_file_pins_each_plugin_to_its_signed_file() {
        let k = keys();
        let dir = k.secret.parent().unwrap();
        // The smallest component, signed as acme-meter 1.4.0.
        let component = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        let identity = trust::Identity::new("acme-meter", "1.4.0").unwrap();
        let (signed, _) = trust::sign(&component, &k.secret, Some(&identity)).unwrap();
        std::fs::write(dir.join("meter.wasm"), &signed).unwrap();
        let state = dir.join("state.toml");
        let text = "deployment = 3\ntarget = { group = \"line-3\" }\n[[plugin]]\nfile = \"meter.wasm\"\n[[driver]]\nname = \"m\"\nplugin = \"acme-meter\"\ninterval_ms = 500\n[driver.config]\nunit = 7\n";
        std::fs::write(&state, text).unwrap();
        let (d, files) = from_state_file(&state, None).unwrap();
        assert_eq!(files, [dir.join("meter.wasm")]);
        assert_eq!(d.target, Target::Group("line-3".into()));
        assert_eq!(d.plugins[0].name, "acme-meter");
        assert_eq!(d.plugins[0].version, semver::Version::new(1, 4, 0));
        assert_eq!(d.plugins[0].sha256, trust::sha256_hex(&signed));
        assert_eq!(d.drivers[0]["config"]["unit"], 7);
        // A driver naming a plugin the file does not list.
        std::fs::write(
            &state,
            text.replace("plugin = \"acme-meter\"", "plugin = \"other\""),
        )
        .unwrap();
        let err = from_state_file(&state, None).unwrap_err();
        assert!(err.contains("names plugin \"other\""), "{err}");
        // An unsigned plugin.
        std::fs::write(dir.join("meter.wasm"), component).unwrap();
        std::fs::write(&state, text).unwrap();
        let err = from_state_file(&state, None).unwrap_err();
        assert!(err.contains("no signed name and version"), "{err}");
    }

    fn message(deployment: &Deployment, key: &Path) -> Vec<u8> {
        serde_json::to_vec(&sign(deployment, key).unwrap()).unwrap()
    }

    fn gw01<'a>(keys: &'a Keys, applied: Option<u64>, groups: &'a [String]) -> Recipient<'a> {
        Recipient {
            gateway: "gw-01",
            groups,
            applied,
            keys: &keys.trusted,
        }
    }

    #[test]
    fn a_signed_deployment_for_this_gateway_and_newer_than_the_applied_one_is_accepted() {
        let k = keys();
        let groups = ["line-3".to_string()];
        let d = deployment(7, Target::Gateway("gw-01".into()));
        assert_eq!(
            verify(&message(&d, &k.secret), &gw01(&k, Some(6), &groups)),
            Ok(d)
        );
        let g = deployment(8, Target::Group("line-3".into()));
        assert_eq!(
            verify(&message(&g, &k.secret), &gw01(&k, None, &groups)),
            Ok(g)
        );
    }

    #[test]
    fn every_other_deployment_is_refused_with_its_reason() {
        let k = keys();
        let none: [String; 0] = [];
        let to = gw01(&k, Some(7), &none);
        let ours = |n| deployment(n, Target::Gateway("gw-01".into()));
        let refused = |m: &[u8]| verify(m, &to).unwrap_err();

        // A replay, or an older one.
        assert_eq!(
            refused(&message(&ours(7), &k.secret)),
            Refusal::Replay {
                number: 7,
                applied: 7
            }
        );
        // Another gateway's, a group this one is not in.
        let theirs = deployment(9, Target::Gateway("gw-02".into()));
        assert!(matches!(
            refused(&message(&theirs, &k.secret)),
            Refusal::NotForUs(_)
        ));
        let group = deployment(9, Target::Group("line-4".into()));
        assert!(matches!(
            refused(&message(&group, &k.secret)),
            Refusal::NotForUs(_)
        ));
        // Signed by a key not trusted for deployments.
        assert!(matches!(
            refused(&message(&ours(9), &k.other)),
            Refusal::UnknownKey(_)
        ));
        // Changed after signing: any byte of the document.
        let mut envelope = sign(&ours(9), &k.secret).unwrap();
        let mut document = BASE64.decode(&envelope.document).unwrap();
        let at = document.len() / 2;
        document[at] ^= 0x01;
        envelope.document = BASE64.encode(&document);
        let tampered = serde_json::to_vec(&envelope).unwrap();
        assert!(matches!(refused(&tampered), Refusal::BadSignature(_)));
        // A driver naming a plugin the document does not pin.
        let mut stray = ours(9);
        stray.drivers[0]["processor"][0]["plugin"] = "other".into();
        assert_eq!(
            refused(&message(&stray, &k.secret)),
            Refusal::UnknownPlugin {
                index: 0,
                plugin: "other".into()
            }
        );
        // A malformed hash; a later schema.
        let mut hash = ours(9);
        hash.plugins[0].sha256 = "xyz".into();
        assert!(matches!(
            refused(&message(&hash, &k.secret)),
            Refusal::Invalid(_)
        ));
        let mut later = ours(9);
        later.schema = 2;
        assert_eq!(refused(&message(&later, &k.secret)), Refusal::Schema(2));
        // Garbage and oversized input, before anything is parsed.
        assert!(matches!(refused(b"not json"), Refusal::Malformed(_)));
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(refused(&huge), Refusal::TooLarge { .. }));
    }
}
