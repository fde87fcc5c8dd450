//! Erasure on request: `ferrule data erase` on the gateway, or a signed
//! order on `{prefix}/{gateway}/data/erase` (docs/data-protection.md).
//!
//! A request names what to erase ([`Selector`]: a driver's batches,
//! everything captured before a time, or everything) and is first written
//! to `{data_dir}/erase/{id}.request.json`, so a request the gateway was
//! stopped (or killed) before finishing is carried out again at its next
//! start. Carrying it out:
//!
//! 1. with a storage key, a new key is added: it encrypts from now on;
//! 2. each queue file (data, telemetry, audit lane) is written again
//!    without the erased entries, every kept entry encrypted again under
//!    the new key (see [`crate::queue::Queue::erase`]);
//! 3. the telemetry history loses the rows before the time (or all rows);
//!    `all` also empties every plugin's private data folder;
//! 4. the older keys, which nothing stored needs any more, are erased from
//!    the key file: whatever copies of erased entries the filesystem still
//!    holds in freed blocks are ciphertext under a key that no longer
//!    exists (crypto-shredding);
//! 5. the erasure is recorded in the audit log with what and how much;
//!    after `all`, that record is the only one the log keeps (it chains to
//!    the erased log's last hash, kept in `audit.head`).
//!
//! The outcome goes to `{id}.outcome.json` (and, for an order, to
//! `{prefix}/{gateway}/data/erase/result`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::audit::AuditLog;
use crate::queue::crypt::Keyring;
use crate::queue::{Erased, Queue, Selector};
use crate::telemetry::history::History;

/// The schema of an erasure order.
pub const SCHEMA: u32 = 1;

/// An erasure order as an operator signs it (`ferrule fleet erase`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The order's number; each gateway takes only numbers above the last
    /// it carried out (a replayed order is refused).
    pub erase: u64,
    /// The gateway it is for.
    pub gateway: String,
    /// When it was signed, ms since the Unix epoch.
    pub issued_ms: u64,
    /// Erase this driver's batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Erase what was captured before this time, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_ms: Option<u64>,
    /// Erase everything (decommissioning).
    #[serde(default)]
    pub all: bool,
}

/// A request waiting to be carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Unique: `cli-{ms}-{pid}` or `order-{number}`.
    pub id: String,
    /// What to erase.
    pub selector: Selector,
    /// Who asked: an OS user, or an operator key id.
    pub by: String,
}

/// What an erasure did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The request's id.
    pub id: String,
    /// Every step succeeded.
    pub ok: bool,
    /// What failed, when something did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Who asked.
    pub by: String,
    /// What was asked for.
    pub selector: Selector,
    /// Per queue file (`data`, `telemetry`, `audit-lane`).
    pub queues: BTreeMap<String, Erased>,
    /// Telemetry history rows erased.
    pub history_rows: u64,
    /// Files removed from plugins' private data folders.
    pub plugin_files: u64,
    /// Storage keys erased from the key file.
    pub keys_erased: Vec<String>,
    /// The storage key that encrypts from now on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// How long it took.
    pub took_ms: u64,
}

/// Where requests and outcomes are kept.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("erase")
}

fn request_path(data_dir: &Path, id: &str) -> PathBuf {
    dir(data_dir).join(format!("{id}.request.json"))
}

/// Where the outcome of request `id` is written.
pub fn outcome_path(data_dir: &Path, id: &str) -> PathBuf {
    dir(data_dir).join(format!("{id}.outcome.json"))
}

/// An id is used in file names: letters, digits, `-` and `_`, 1–64.
fn check_id(id: &str) -> Result<(), String> {
    let fine = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if fine {
        Ok(())
    } else {
        Err(format!(
            "erasure id {id:?}: 1 to 64 letters, digits, - or _"
        ))
    }
}

/// Keeps `request` for the gateway (it is carried out at once by a
/// running gateway told with SIGUSR1, or at the next start).
pub fn submit(data_dir: &Path, request: &Request) -> Result<PathBuf, String> {
    check_id(&request.id)?;
    request.selector.check()?;
    let path = request_path(data_dir, &request.id);
    std::fs::create_dir_all(dir(data_dir)).map_err(|e| e.to_string())?;
    let json = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    #[cfg(unix)]
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        Some(std::fs::Permissions::from_mode(0o600))
    };
    #[cfg(not(unix))]
    let mode = None;
    crate::plugin::trust::write_atomically(&path, &json, mode)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// The outcome of request `id`, once written.
pub fn read_outcome(data_dir: &Path, id: &str) -> Option<Outcome> {
    let bytes = crate::plugin::trust::read_bounded(&outcome_path(data_dir, id), 1 << 20).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The requests waiting, oldest first (by file time, then name).
fn waiting(data_dir: &Path) -> Vec<(PathBuf, Result<Request, String>)> {
    let Ok(entries) = std::fs::read_dir(dir(data_dir)) else {
        return Vec::new();
    };
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".request.json"))
        .map(|p| {
            let at = std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (at, p)
        })
        .collect();
    found.sort();
    found
        .into_iter()
        .map(|(_, path)| {
            let request = crate::plugin::trust::read_bounded(&path, 64 << 10)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Request>(&b).map_err(|e| e.to_string()));
            (path, request)
        })
        .collect()
}

/// Everything an erasure reaches.
pub struct Stores {
    /// The data queue.
    pub data: Queue,
    /// The telemetry queue, when telemetry is on.
    pub telemetry: Option<Queue>,
    /// The audit log's lane to the broker.
    pub audit_lane: Option<Queue>,
    /// The telemetry history.
    pub history: Option<Arc<History>>,
    /// The storage keys, when there are any.
    pub keyring: Option<Arc<Keyring>>,
    /// The gateway's data dir (plugins' private folders are in `plugins/`).
    pub data_dir: PathBuf,
    /// The audit log.
    pub audit: AuditLog,
    /// The live status file, which holds each driver's last batch.
    pub status_file: PathBuf,
    /// Shared with the status writer, and the running drivers whose last
    /// batches it shows (absent when the gateway is not running).
    pub status: (
        Arc<crate::telemetry::status::Gate>,
        Option<Arc<std::sync::Mutex<crate::telemetry::Live>>>,
    ),
}

impl Stores {
    /// Carries out every request waiting in `{data_dir}/erase/`, oldest
    /// first: writes each outcome, then removes the request.
    pub async fn run_waiting(&self) -> Vec<Outcome> {
        let mut done = Vec::new();
        for (path, request) in waiting(&self.data_dir) {
            let outcome = match request {
                Ok(request) => self.carry_out(&request).await,
                Err(e) => {
                    let id = path
                        .file_name()
                        .map(|n| n.to_string_lossy().replace(".request.json", ""))
                        .unwrap_or_default();
                    tracing::error!(request = %path.display(), error = %e, "erasure request unreadable; not carried out");
                    self.audit.record(
                        "erase",
                        serde_json::json!({"id": id, "ok": false, "error": format!("unreadable request: {e}")}),
                    );
                    Outcome {
                        id,
                        error: Some(format!("unreadable request: {e}")),
                        ..Outcome::default()
                    }
                }
            };
            if let Ok(json) = serde_json::to_vec_pretty(&outcome) {
                let _ = crate::plugin::trust::write_atomically(
                    &outcome_path(&self.data_dir, &outcome.id),
                    &json,
                    None,
                );
            }
            let _ = std::fs::remove_file(&path);
            done.push(outcome);
        }
        done
    }

    /// Carries out one request (see the module's steps) and audits it.
    pub async fn carry_out(&self, request: &Request) -> Outcome {
        let started = Instant::now();
        let selector = &request.selector;
        let mut outcome = Outcome {
            id: request.id.clone(),
            by: request.by.clone(),
            selector: selector.clone(),
            ..Outcome::default()
        };
        let mut errors = Vec::new();
        if let Err(e) = selector.check() {
            errors.push(e);
        } else {
            self.erase(selector, &mut outcome, &mut errors).await;
        }
        outcome.ok = errors.is_empty();
        outcome.error = (!errors.is_empty()).then(|| errors.join("; "));
        outcome.took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let detail = serde_json::to_value(&outcome).unwrap_or_default();
        let audit = self.audit.clone();
        let all = selector.all && outcome.ok;
        let recorded = tokio::task::spawn_blocking(move || match all {
            true => audit.restart("erase", detail),
            false => audit.append("erase", detail).map(|_| ()),
        })
        .await;
        if !matches!(recorded, Ok(Ok(()))) {
            tracing::error!(id = %outcome.id, "AUDIT RECORD OF AN ERASURE NOT WRITTEN");
        }
        match &outcome.error {
            None => {
                tracing::info!(id = %outcome.id, by = %outcome.by, queues = ?outcome.queues, history_rows = outcome.history_rows, plugin_files = outcome.plugin_files, keys_erased = ?outcome.keys_erased, took_ms = outcome.took_ms, "erasure done")
            }
            Some(e) => tracing::error!(id = %outcome.id, error = %e, "erasure not complete"),
        }
        outcome
    }

    async fn erase(&self, selector: &Selector, outcome: &mut Outcome, errors: &mut Vec<String>) {
        if let Some(keyring) = self.keyring.as_ref().filter(|k| k.is_fixed()) {
            tracing::warn!(credential = %keyring.path().display(), "the storage key is a systemd credential: it is not rotated by this erasure, so the erased entries' key stays; replace the credential to shred it");
        } else if let Some(keyring) = &self.keyring {
            let keyring = keyring.clone();
            match tokio::task::spawn_blocking(move || keyring.add_key()).await {
                Ok(Ok(id)) => outcome.key = Some(id),
                Ok(Err(e)) => errors.push(format!("new storage key: {e}")),
                Err(e) => errors.push(format!("new storage key: {e}")),
            }
        }
        let queues = [
            ("data", Some(&self.data)),
            ("telemetry", self.telemetry.as_ref()),
            ("audit-lane", self.audit_lane.as_ref()),
        ];
        for (name, queue) in queues {
            let Some(queue) = queue else { continue };
            match queue.erase(selector.clone()).await {
                Ok(erased) => {
                    outcome.queues.insert(name.to_string(), erased);
                }
                Err(e) => errors.push(format!("{name} queue: {e}")),
            }
        }
        let history_cut = match (selector.all, selector.driver.as_ref(), selector.before_ns) {
            (true, ..) => Some(None),
            (false, None, Some(ns)) => Some(Some(ns / 1_000_000)),
            _ => None,
        };
        if let (Some(cut), Some(history)) = (history_cut, &self.history) {
            let history = history.clone();
            match tokio::task::spawn_blocking(move || history.erase(cut)).await {
                Ok(Ok(rows)) => outcome.history_rows = rows,
                Ok(Err(e)) => errors.push(e.to_string()),
                Err(e) => errors.push(format!("telemetry history: {e}")),
            }
        }
        // The status file shows each driver's last batch: forgotten, for
        // every driver (they refill at their next poll).
        let (gate, live) = &self.status;
        if let Err(e) = gate.forget(&self.status_file, live.as_deref()) {
            errors.push(format!("{}: {e}", self.status_file.display()));
        }
        if selector.all {
            let plugins = self.data_dir.join("plugins");
            match tokio::task::spawn_blocking(move || empty_folders(&plugins)).await {
                Ok(Ok(files)) => outcome.plugin_files = files,
                Ok(Err(e)) => errors.push(format!("plugin data: {e}")),
                Err(e) => errors.push(format!("plugin data: {e}")),
            }
        }
        if let Some(keyring) = &self.keyring {
            let mut in_use = Vec::new();
            for (name, queue) in queues {
                let Some(queue) = queue else { continue };
                match queue.keys_in_use() {
                    Ok(ids) => in_use.extend(ids),
                    Err(e) => {
                        errors.push(format!("{name} queue: older keys kept: {e}"));
                        return;
                    }
                }
            }
            if let Some(history) = &self.history {
                match history.keys_in_use() {
                    Ok(ids) => in_use.extend(ids),
                    Err(e) => {
                        errors.push(format!("older keys kept: {e}"));
                        return;
                    }
                }
            }
            let keyring = keyring.clone();
            match tokio::task::spawn_blocking(move || keyring.erase_unused(&in_use)).await {
                Ok(Ok(ids)) => outcome.keys_erased = ids,
                Ok(Err(e)) => errors.push(format!("older storage keys not erased: {e}")),
                Err(e) => errors.push(format!("older storage keys not erased: {e}")),
            }
        }
    }
}

/// Removes everything inside each folder under `root` (the folders stay,
/// so running plugins keep their `/data`); the number of files removed.
fn empty_folders(root: &Path) -> std::io::Result<u64> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut files = 0;
    for folder in entries {
        let folder = folder?.path();
        if !folder.is_dir() {
            continue;
        }
        for item in std::fs::read_dir(&folder)? {
            let path = item?.path();
            files += count_files(&path);
            if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(files)
}

fn count_files(path: &Path) -> u64 {
    if path.is_dir() && !path.is_symlink() {
        std::fs::read_dir(path)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| count_files(&e.path()))
                    .sum()
            })
            .unwrap_or(0)
    } else {
        1
    }
}

/// Where the highest order number carried out is kept.
fn highest_path(data_dir: &Path) -> PathBuf {
    dir(data_dir).join("highest-order")
}

fn highest_order(data_dir: &Path) -> u64 {
    crate::plugin::trust::read_bounded(&highest_path(data_dir), 64)
        .ok()
        .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok())
        .unwrap_or(0)
}

/// The request in a signed order received over MQTT, if it is signed by
/// one of the operator `keys`, for `gateway`, above the last order carried
/// out, and well-formed; the order's number is then kept as the highest.
pub fn accept_order(
    message: &[u8],
    gateway: &str,
    keys: &[(String, ed25519_compact::PublicKey)],
    data_dir: &Path,
) -> Result<(Order, Request), (Option<u64>, String)> {
    if keys.is_empty() {
        return Err((
            None,
            "this gateway takes no erasure orders: [trust] operator_keys is not set".into(),
        ));
    }
    let document = crate::deploy::open_signed(message, keys).map_err(|e| (None, e.to_string()))?;
    let order: Order = serde_json::from_slice(&document)
        .map_err(|e| (None, format!("malformed erasure order: {e}")))?;
    let number = Some(order.erase);
    if order.schema != SCHEMA {
        return Err((
            number,
            format!(
                "erasure order schema {}; this gateway reads schema {SCHEMA}",
                order.schema
            ),
        ));
    }
    if order.gateway != gateway {
        return Err((
            number,
            format!("for gateway {:?}, not this one", order.gateway),
        ));
    }
    let highest = highest_order(data_dir);
    if order.erase <= highest {
        return Err((
            number,
            format!(
                "erasure order {} is not above order {highest}, already carried out (a replay?)",
                order.erase
            ),
        ));
    }
    let key_id = serde_json::from_slice::<crate::deploy::Envelope>(message)
        .map(|e| e.key_id)
        .unwrap_or_default();
    let request = Request {
        id: format!("order-{}", order.erase),
        selector: Selector {
            driver: order.driver.clone(),
            before_ns: order.before_ms.map(|ms| ms.saturating_mul(1_000_000)),
            all: order.all,
            upto_ns: crate::reading::now_ns(),
        },
        by: format!("operator key {key_id}"),
    };
    request.selector.check().map_err(|e| (number, e))?;
    submit(data_dir, &request).map_err(|e| (number, e))?;
    crate::plugin::trust::write_atomically(
        &highest_path(data_dir),
        order.erase.to_string().as_bytes(),
        None,
    )
    .map_err(|e| (number, format!("cannot keep the order number: {e}")))?;
    Ok((order, request))
}

/// The gateway's end of erasure orders over MQTT.
pub struct Orders {
    gateway: String,
    keys: Vec<(String, ed25519_compact::PublicKey)>,
    inbox: tokio::sync::mpsc::Receiver<(String, Vec<u8>)>,
    outbox: tokio::sync::mpsc::Sender<crate::remote::Outgoing>,
    result_topic: String,
}

/// The erasure-order link for the publisher and its gateway end, when
/// the config trusts operator keys (orders are signed by one of them).
pub fn orders(
    config: &crate::config::Config,
) -> Result<Option<(crate::remote::DeployLink, Orders)>, String> {
    if config.trust.operator_keys.is_empty() {
        return Ok(None);
    }
    let topics =
        crate::publish::Topics::new(&config.mqtt.topic_prefix, config.gateway.id.get_ref());
    if config.drivers.iter().any(|d| d.name.get_ref() == "erase") {
        tracing::warn!(
            "a driver is named \"erase\": its data topic is the erasure-order topic, so this gateway takes no erasure orders over MQTT until it is renamed"
        );
        return Ok(None);
    }
    let (in_tx, inbox) = tokio::sync::mpsc::channel(8);
    let (outbox, out_rx) = tokio::sync::mpsc::channel(8);
    Ok(Some((
        crate::remote::DeployLink {
            filters: vec![topics.data_erase()],
            inbox: in_tx,
            outbox: out_rx,
        },
        Orders {
            gateway: config.gateway.id.get_ref().clone(),
            keys: config.operator_keys()?,
            inbox,
            outbox,
            result_topic: topics.data_erase_result(),
        },
    )))
}

/// Takes SIGUSR1 from now on (its default action ends the process): a
/// signal that arrives before the eraser listens is not lost either, as
/// the eraser carries out every request waiting when it starts.
pub fn catch_sigusr1() {
    #[cfg(unix)]
    if let Err(e) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) {
        tracing::warn!(error = %e, "SIGUSR1 not handled: it would end the process");
    }
}

/// A message each time the process gets SIGUSR1 (`ferrule data erase`
/// announcing a request).
fn on_sigusr1() -> Option<tokio::sync::mpsc::Receiver<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut signals = match signal(SignalKind::user_defined1()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "SIGUSR1 not handled: erasure requests are carried out at the next start");
                return None;
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            while signals.recv().await.is_some() {
                let _ = tx.try_send(());
            }
        });
        Some(rx)
    }
    #[cfg(not(unix))]
    None
}

/// The gateway's eraser: carries out the requests left waiting (by a
/// stop or a crash), then those `ferrule data erase` announces and the
/// orders that arrive, one at a time, until `shutdown`.
pub async fn serve(
    stores: Stores,
    mut orders: Option<Orders>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    // Listening first: a request announced while the waiting ones are
    // carried out is taken up next.
    let mut signals = on_sigusr1();
    stores.run_waiting().await;
    loop {
        let order = async {
            match orders.as_mut() {
                Some(o) => o.inbox.recv().await,
                None => std::future::pending().await,
            }
        };
        let signal = async {
            match signals.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = signal => {
                stores.run_waiting().await;
            }
            Some((_, payload)) = order => {
                if let Some(orders) = &orders {
                    take_order(&stores, orders, &payload).await;
                }
            }
        }
    }
}

/// Checks an order, carries it out (with any other request waiting) and
/// answers on the result topic; a refusal is answered and audited.
async fn take_order(stores: &Stores, orders: &Orders, payload: &[u8]) {
    let answer = match accept_order(payload, &orders.gateway, &orders.keys, &stores.data_dir) {
        Ok((order, request)) => {
            let outcome = stores
                .run_waiting()
                .await
                .into_iter()
                .find(|o| o.id == request.id)
                .unwrap_or_else(|| Outcome {
                    id: request.id.clone(),
                    error: Some("the request was not found when carried out".into()),
                    ..Outcome::default()
                });
            let mut json = serde_json::to_value(&outcome).unwrap_or_default();
            json["erase"] = order.erase.into();
            json
        }
        Err((number, why)) => {
            tracing::warn!(order = ?number, error = %why, "erasure order refused");
            let audit = stores.audit.clone();
            let detail = serde_json::json!({"order": number, "refused": why});
            let _ =
                tokio::task::spawn_blocking(move || audit.record("erase-refused", detail)).await;
            serde_json::json!({"erase": number, "ok": false, "error": why})
        }
    };
    let _ = orders
        .outbox
        .send(crate::remote::Outgoing {
            topic: orders.result_topic.clone(),
            payload: serde_json::to_vec(&answer).unwrap_or_default(),
            retain: false,
        })
        .await;
}

/// The stores of a gateway that is not running, opened for
/// `ferrule data erase` to carry a request out itself. Fails while a
/// gateway holds the queue files.
pub fn offline_stores(config: &crate::config::Config) -> Result<Stores, String> {
    use crate::gateway;
    use crate::queue::QueueOptions;
    let data_dir = config.resolve(&config.gateway.data_dir);
    let keyring = gateway::existing_keys(config)
        .map_err(|e| e.to_string())?
        .map(Arc::new);
    let encrypt =
        keyring.is_some() && config.storage.encryption == crate::config::Encryption::Aes256Gcm;
    let options = || QueueOptions {
        keyring: keyring.clone(),
        encrypt,
        ..QueueOptions::default()
    };
    let open = |path: PathBuf| -> Result<Option<Queue>, String> {
        match path.exists() {
            true => Queue::open(&path, options())
                .map(Some)
                .map_err(|e| e.to_string()),
            false => Ok(None),
        }
    };
    let data = Queue::open(
        &gateway::queue_path(config),
        QueueOptions {
            keyring: keyring.clone(),
            encrypt,
            ..gateway::queue_options(config)
        },
    )
    .map_err(|e| e.to_string())?;
    let history_path = gateway::history_path(config);
    let history = match history_path.exists() {
        true => Some(Arc::new(
            History::open(
                &history_path,
                std::time::Duration::from_secs(config.telemetry.raw_retention_s),
                std::time::Duration::from_secs(config.telemetry.trend_retention_s),
                config.telemetry.max_history_bytes,
            )
            .map_err(|e| e.to_string())?
            .with_keys(keyring.clone(), encrypt)
            .map_err(|e| e.to_string())?,
        )),
        false => None,
    };
    Ok(Stores {
        data,
        telemetry: open(data_dir.join("telemetry.redb"))?,
        audit_lane: open(data_dir.join("audit-lane.redb"))?,
        history,
        keyring,
        audit: AuditLog::in_dir(&data_dir),
        status_file: gateway::status_path(config),
        status: (Arc::default(), None),
        data_dir,
    })
}
