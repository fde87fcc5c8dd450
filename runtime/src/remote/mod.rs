//! Remote commands from the cloud: writes to devices.
//!
//! The publisher subscribes to `{prefix}/{gateway}/cmd/+/write` and hands
//! each message to the router here. A command is either plain JSON
//! `{"id": "…", "channel": "…", "value": …}` (`id` a string or number,
//! echoed back; `value` a number, boolean or string) or, signed by an
//! operator key, an envelope `{"document", "key_id", "signature"}` around
//! a [`SignedCommand`] (see [`authority`]). Once operator keys are
//! configured, only signed commands are taken (`[commands]
//! require_signed`).
//!
//! The router checks a command, passes it to the named driver's task,
//! which calls the plugin's `write` between polls and polls again at once,
//! and answers on `{prefix}/{gateway}/cmd/{driver}/result` with
//! `{"id": …, "ok": true, "read_back": {"value": …, "matches": …}}` or
//! `{"id": …, "ok": false, "error": "…"}`. Nothing a command says can stop
//! the gateway. Every command and its result are logged, counted for
//! telemetry and kept in the audit log.
//!
//! Writes are opt-in: the router refuses, before the driver is asked, a
//! write to a channel its driver's `[driver.commands]` does not list, a
//! value outside that channel's `min`/`max` or `allowed` values, and a
//! write beyond its `max_per_minute`; when signatures are required, an
//! unsigned command, a signature by an unknown key or one that does not
//! match, a command for another gateway or driver, one outside its time
//! window and one whose id was taken before. The result then says
//! `"refused": CODE` besides the error.

pub mod authority;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

pub use authority::{Authority, SignedCommand};

use crate::config::WritableChannel;
use crate::reading::Value;

/// How long a driver may take to carry out a write before the command is
/// answered with a timeout (its plugin call has its own, shorter deadline).
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// A message that arrived on a command topic.
#[derive(Debug)]
pub struct Incoming {
    /// The driver named in the topic.
    pub driver: String,
    /// The command's JSON, unchecked.
    pub payload: Vec<u8>,
}

/// A result to publish on `{prefix}/{gateway}/cmd/{driver}/result`.
#[derive(Debug)]
pub struct Answer {
    /// The driver the result is about.
    pub driver: String,
    /// The result's JSON.
    pub payload: Vec<u8>,
}

/// How long after a write the driver's next poll may take to read the
/// channel back; the result then says the write was done but not read.
const READ_BACK_WITHIN: Duration = Duration::from_secs(30);

/// A write handed to a driver's task.
#[derive(Debug)]
pub struct Write {
    /// The channel to write.
    pub channel: String,
    /// The value to write.
    pub value: Value,
    /// Where the driver's task answers: done (and where the value its
    /// next poll reads from the channel will come), or why not.
    pub reply: oneshot::Sender<Result<oneshot::Receiver<ReadBack>, String>>,
}

/// What the driver's poll after a write read from the written channel.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadBack {
    /// The channel's value, and when it was read (ns since the epoch).
    Read {
        /// The value the device holds.
        value: Value,
        /// When the driver read it.
        ts_ns: u64,
    },
    /// Why there is no value to show.
    Unread(String),
}

/// Commands taken, refused and failed since start, for telemetry.
#[derive(Debug, Default)]
pub struct CommandCounters {
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    refused_by: Mutex<BTreeMap<&'static str, u64>>,
}

impl CommandCounters {
    /// The counts as telemetry reports them.
    pub fn figures(&self) -> crate::telemetry::CommandFigures {
        crate::telemetry::CommandFigures {
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            refused_by: (self
                .refused_by
                .lock()
                .unwrap_or_else(PoisonError::into_inner))
            .iter()
            .map(|(code, n)| ((*code).to_string(), *n))
            .collect(),
        }
    }

    fn count(&self, outcome: &Result<ReadBack, Failure>) {
        match outcome {
            Ok(_) => self.accepted.fetch_add(1, Ordering::Relaxed),
            Err(Failure {
                refused: Some(code),
                ..
            }) => {
                *(self
                    .refused_by
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner))
                .entry(code)
                .or_default() += 1;
                self.refused.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// The publisher's ends of the command path.
pub struct Commands {
    /// Commands from the broker, to the router.
    pub inbox: mpsc::Sender<Incoming>,
    /// Results from the router, to publish.
    pub answers: mpsc::Receiver<Answer>,
    /// The deployment path, on a gateway that takes deployments.
    pub deploy: Option<DeployLink>,
    /// The erasure-order path, on a gateway with operator keys.
    pub erase: Option<DeployLink>,
}

/// A message the gateway publishes for its deployments.
#[derive(Debug)]
pub struct Outgoing {
    /// Where.
    pub topic: String,
    /// What.
    pub payload: Vec<u8>,
    /// Kept by the broker for later subscribers.
    pub retain: bool,
}

/// The publisher's ends of the deployment path.
pub struct DeployLink {
    /// Subscribed to on every connect.
    pub filters: Vec<String>,
    /// Messages on those topics (topic, payload), to the deployment agent.
    pub inbox: mpsc::Sender<(String, Vec<u8>)>,
    /// Messages from the agent, to publish.
    pub outbox: mpsc::Receiver<Outgoing>,
}

impl DeployLink {
    /// Whether `topic` matches one of the filters (`#` at the end only).
    pub fn wants(&self, topic: &str) -> bool {
        self.filters.iter().any(|f| match f.strip_suffix('#') {
            Some(prefix) => topic.starts_with(prefix),
            None => f == topic,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteCommand {
    id: serde_json::Value,
    channel: String,
    value: serde_json::Value,
}

#[derive(serde::Serialize)]
struct Reply<'a> {
    id: &'a serde_json::Value,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    /// Why the gateway refused it without asking the driver.
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<&'static str>,
    /// The operator key that signed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    signed_by: Option<&'a str>,
    /// What the driver's next poll read from the channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    read_back: Option<serde_json::Value>,
}

/// Why a command failed: refused by the gateway's policy (with a code),
/// or failed on the way to or in the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    refused: Option<&'static str>,
    error: String,
}

impl From<String> for Failure {
    fn from(error: String) -> Failure {
        Failure {
            refused: None,
            error,
        }
    }
}

impl Failure {
    /// The refusal's code, when the gateway refused the command itself.
    pub fn code(&self) -> Option<&'static str> {
        self.refused
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.error
    }
}

fn refusal(code: &'static str, error: String) -> Failure {
    Failure {
        refused: Some(code),
        error,
    }
}

/// How long a write counts against a channel's `max_per_minute`.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// The channels of one driver that commands may write, with each one's
/// limits and its writes of the last minute.
#[derive(Debug, Default)]
pub struct Policy {
    channels: HashMap<String, (WritableChannel, Mutex<VecDeque<Instant>>)>,
}

impl Policy {
    /// The policy of a driver's `[driver.commands]` tables.
    pub fn new(rules: &BTreeMap<toml::Spanned<String>, WritableChannel>) -> Policy {
        Policy {
            channels: (rules.iter())
                .map(|(channel, rule)| {
                    (channel.get_ref().clone(), (rule.clone(), Mutex::default()))
                })
                .collect(),
        }
    }

    /// Whether `value` may be written to `channel` now; an admitted write
    /// counts against the channel's rate.
    fn admit(&self, driver: &str, channel: &str, value: &Value) -> Result<(), Failure> {
        let Some((rule, recent)) = self.channels.get(channel) else {
            return Err(refusal(
                "not-writable",
                format!(
                    "channel {channel:?} is not writable: driver {driver:?} lists no such channel in [driver.commands]"
                ),
            ));
        };
        if rule.min.is_some() || rule.max.is_some() {
            let number = match value {
                Value::Int(i) => *i as f64,
                Value::Float(f) if f.is_finite() => *f,
                other => {
                    return Err(refusal(
                        "wrong-type",
                        format!(
                            "channel {channel:?} takes a number (it has min/max), not {}",
                            shown(other)
                        ),
                    ));
                }
            };
            if let Some(min) = rule.min.filter(|min| number < *min) {
                return Err(refusal(
                    "out-of-range",
                    format!("value {number} is below min {min} of channel {channel:?}"),
                ));
            }
            if let Some(max) = rule.max.filter(|max| number > *max) {
                return Err(refusal(
                    "out-of-range",
                    format!("value {number} is above max {max} of channel {channel:?}"),
                ));
            }
        }
        if let Some(allowed) = &rule.allowed
            && !allowed.iter().any(|a| same(value, a))
        {
            let list: Vec<String> = allowed.iter().map(ToString::to_string).collect();
            return Err(refusal(
                "not-allowed",
                format!(
                    "value {} is not one of the allowed values [{}] of channel {channel:?}",
                    shown(value),
                    list.join(", ")
                ),
            ));
        }
        if let Some(limit) = rule.max_per_minute {
            let now = Instant::now();
            let mut recent = recent.lock().unwrap_or_else(PoisonError::into_inner);
            while recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW)
            {
                recent.pop_front();
            }
            if recent.len() >= limit as usize {
                let free_in = recent.front().map_or(RATE_WINDOW, |t| {
                    RATE_WINDOW.saturating_sub(now.duration_since(*t))
                });
                return Err(refusal(
                    "rate-limited",
                    format!(
                        "channel {channel:?} takes at most {limit} write(s) a minute; the next is allowed in {:.0} s",
                        free_in.as_secs_f64().ceil()
                    ),
                ));
            }
            recent.push_back(now);
        }
        Ok(())
    }
}

/// A value as a command's reader would write it.
fn shown(value: &Value) -> String {
    match value {
        Value::Text(s) => format!("{s:?}"),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// Whether a command's value is the config's allowed value `a` (numbers
/// compare by value: 1 and 1.0 are the same).
fn same(value: &Value, a: &toml::Value) -> bool {
    match (value, a) {
        (Value::Int(i), toml::Value::Integer(j)) => i == j,
        (Value::Int(i), toml::Value::Float(f)) => (*i as f64) == *f,
        (Value::Float(x), toml::Value::Float(f)) => x == f,
        (Value::Float(x), toml::Value::Integer(j)) => *x == *j as f64,
        (Value::Bool(x), toml::Value::Boolean(b)) => x == b,
        (Value::Text(x), toml::Value::String(t)) => x == t,
        _ => false,
    }
}

/// The value a command carries, in the runtime's terms.
fn value_of(v: &serde_json::Value) -> Result<Value, String> {
    match v {
        serde_json::Value::Bool(b) => Ok(Value::Bool(*b)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(Value::Int(i)),
            None => n
                .as_f64()
                .map(Value::Float)
                .ok_or_else(|| format!("value {n} is out of range")),
        },
        serde_json::Value::String(s) => Ok(Value::Text(s.clone())),
        other => Err(format!(
            "value must be a number, boolean or string, not {other}"
        )),
    }
}

/// The id a command message claims (a signed envelope's document's, or
/// the message's own), or `null` when it has none that can be echoed.
fn claimed_id(payload: &[u8]) -> serde_json::Value {
    claimed(payload)
        .and_then(|(v, _)| v.get("id").cloned())
        .filter(|id| id.is_string() || id.is_number())
        .unwrap_or_default()
}

/// A command as the audit log keeps it: its id and channel, who signed it
/// and when, and its value only as a SHA-256 (of its JSON) and a type;
/// the log holds who wrote what where, not the process values themselves.
/// A command that was not taken as asked (unsigned where signatures are
/// required, a signature that did not verify) is kept as what it claims,
/// marked `"verified": false`; a payload that is not a command, as its
/// size and SHA-256.
fn audited(payload: &[u8], asked: Option<&Asked>) -> serde_json::Value {
    let sha = crate::plugin::trust::sha256_hex;
    let described =
        |id: &serde_json::Value, channel: &serde_json::Value, value: &serde_json::Value| {
            serde_json::json!({
                "id": id,
                "channel": channel,
                "value_type": json_type(value),
                "value_sha256": sha(value.to_string().as_bytes()),
            })
        };
    if let Some(a) = asked {
        let mut d = described(&a.id, &a.channel.clone().into(), &a.value);
        d["signed_by"] = a.signed_by().into();
        d["issued_ms"] = a.signed.as_ref().map(|v| v.command.issued_ms).into();
        return d;
    }
    let claimed = claimed(payload);
    match claimed.as_ref().and_then(|(v, _)| v.as_object()) {
        Some(c) if c.contains_key("channel") => {
            let field = |k: &str| c.get(k).cloned().unwrap_or_default();
            let mut d = described(&field("id"), &field("channel"), &field("value"));
            d["verified"] = false.into();
            d["claimed_key_id"] = claimed.as_ref().and_then(|(_, k)| k.clone()).into();
            d["issued_ms"] = field("issued_ms");
            d
        }
        _ => serde_json::json!({
            "malformed": true,
            "bytes": payload.len(),
            "sha256": sha(payload),
        }),
    }
}

/// What a command message claims, unverified: its command (a signed
/// envelope's document, or the message itself) and the key id it names.
fn claimed(payload: &[u8]) -> Option<(serde_json::Value, Option<String>)> {
    if !authority::is_signed(payload) {
        return serde_json::from_slice(payload).ok().map(|v| (v, None));
    }
    let envelope = serde_json::from_slice::<crate::deploy::Envelope>(payload).ok()?;
    let document = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        &envelope.document,
    )
    .ok()?;
    let command = serde_json::from_slice(&document).ok()?;
    Some((command, Some(envelope.key_id)))
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Null => "none",
        _ => "other",
    }
}

/// A result as the audit log keeps it: the read-back value, like the
/// command's, as a type and a SHA-256.
fn audited_result(mut result: serde_json::Value) -> serde_json::Value {
    if let Some(read) = result.get_mut("read_back")
        && let Some(value) = read.get("value").cloned()
        && let Some(fields) = read.as_object_mut()
    {
        fields.remove("value");
        fields.insert("value_type".into(), json_type(&value).into());
        fields.insert(
            "value_sha256".into(),
            crate::plugin::trust::sha256_hex(value.to_string().as_bytes()).into(),
        );
    }
    result
}

/// A running driver's inbox and the policy its commands pass first.
type Target = (mpsc::Sender<Write>, Arc<Policy>);

/// Each running driver's inbox and command policy, by name. A reload
/// replaces those of a driver it restarts and removes those of one it
/// stops.
#[derive(Debug, Clone, Default)]
pub struct Inboxes(Arc<RwLock<HashMap<String, Target>>>);

impl Inboxes {
    /// Commands for `driver` pass `policy` and go to `inbox` from now on.
    pub fn insert(&self, driver: String, inbox: mpsc::Sender<Write>, policy: Arc<Policy>) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.insert(driver, (inbox, policy));
    }

    /// Commands for `driver` are answered "no driver" from now on.
    pub fn remove(&self, driver: &str) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.remove(driver);
    }

    fn get(&self, driver: &str) -> Option<Target> {
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        map.get(driver).cloned()
    }
}

/// Where the router sends what it did.
#[derive(Clone)]
pub struct Record {
    /// The audit log, where the gateway keeps one.
    pub audit: Option<crate::audit::AuditLog>,
    /// Counts for telemetry.
    pub counters: Arc<CommandCounters>,
}

/// Starts the router; `drivers` holds each driver's task inbox by name;
/// `authority` decides whose commands are taken; every command and its
/// result go into `record`.
pub fn start(drivers: Inboxes, authority: Arc<Authority>, record: Record) -> Commands {
    let (inbox, mut incoming) = mpsc::channel::<Incoming>(64);
    let (answer_tx, answers) = mpsc::channel::<Answer>(64);
    tokio::spawn(async move {
        while let Some(message) = incoming.recv().await {
            let target = drivers.get(&message.driver);
            let answer_tx = answer_tx.clone();
            let record = record.clone();
            let authority = authority.clone();
            // Each command in its own task: a slow device delays only its own answer.
            tokio::spawn(async move {
                let (answer, audit) = handle(&message, target, &authority, &record.counters).await;
                if let Some(log) = record.audit {
                    // Written off the runtime's workers: it syncs the file.
                    let _ = tokio::task::spawn_blocking(move || log.record("command", audit)).await;
                }
                let _ = answer_tx.send(answer).await;
            });
        }
    });
    Commands {
        inbox,
        answers,
        deploy: None,
        erase: None,
    }
}

/// A command as read from its message, before it is carried out.
struct Asked {
    id: serde_json::Value,
    channel: String,
    value: serde_json::Value,
    /// A signed command as verified (its id is to be recorded as taken).
    signed: Option<authority::Verified>,
}

impl Asked {
    /// The operator key that signed it, for a signed command.
    fn signed_by(&self) -> Option<&str> {
        self.signed.as_ref().map(|v| v.key_id.as_str())
    }
}

/// What `message` asks for, if it can be read and is authorized; else
/// the id to answer with and why not.
fn read(message: &Incoming, authority: &Authority) -> Result<Asked, (serde_json::Value, Failure)> {
    let payload = &message.payload;
    if payload.len() > authority::MAX_COMMAND_BYTES {
        return Err((
            serde_json::Value::Null,
            refusal(
                "malformed",
                format!(
                    "a command of {} bytes; at most {} are read",
                    payload.len(),
                    authority::MAX_COMMAND_BYTES
                ),
            ),
        ));
    }
    if authority::is_signed(payload) {
        // The id the (not yet verified) document gives is only echoed, so
        // that the sender can match the answer.
        let v = authority
            .verify(payload, &message.driver)
            .map_err(|f| (claimed_id(payload), f))?;
        let c = &v.command;
        return Ok(Asked {
            id: c.id.clone().into(),
            channel: c.channel.clone(),
            value: c.value.clone(),
            signed: Some(v),
        });
    }
    if authority.require_signed() {
        return Err((
            claimed_id(payload),
            refusal(
                "unsigned",
                "this gateway takes only commands signed by an operator key ([commands] require_signed)".to_string(),
            ),
        ));
    }
    match serde_json::from_slice::<WriteCommand>(payload) {
        Err(e) => Err((
            claimed_id(payload),
            refusal(
                "malformed",
                format!("malformed command: {e} (expected {{\"id\", \"channel\", \"value\"}})"),
            ),
        )),
        Ok(command) if !(command.id.is_string() || command.id.is_number()) => Err((
            serde_json::Value::Null,
            refusal(
                "malformed",
                "malformed command: id must be a string or a number".to_string(),
            ),
        )),
        Ok(command) => Ok(Asked {
            id: command.id,
            channel: command.channel,
            value: command.value,
            signed: None,
        }),
    }
}

/// Carries out `message`: the answer to publish and the audit record.
async fn handle(
    message: &Incoming,
    target: Option<Target>,
    authority: &Arc<Authority>,
    counters: &CommandCounters,
) -> (Answer, serde_json::Value) {
    let driver = &message.driver;
    let asked = read(message, authority);
    let (id, outcome) = match &asked {
        Err((id, failure)) => (id.clone(), Err(failure.clone())),
        Ok(a) => {
            tracing::info!(driver = %driver, id = %a.id, channel = %a.channel, value = %a.value, signed_by = a.signed_by().unwrap_or("-"), "command received");
            (a.id.clone(), carry_out(driver, a, target, authority).await)
        }
    };
    counters.count(&outcome);
    match &outcome {
        Ok(read) => {
            tracing::info!(driver = %driver, id = %id, read_back = ?read, "command done");
        }
        Err(Failure {
            refused: Some(code),
            error,
        }) => {
            tracing::warn!(driver = %driver, id = %id, refused = code, error = %error, "command refused");
        }
        Err(e) => tracing::warn!(driver = %driver, id = %id, error = %e.error, "command failed"),
    }
    let asked = asked.ok();
    let failure = outcome.as_ref().err();
    let read_back = match (&outcome, &asked) {
        (Ok(read), Some(a)) => Some(read_back_json(read, &a.value)),
        _ => None,
    };
    let reply = Reply {
        id: &id,
        ok: failure.is_none(),
        error: failure.map(|f| f.error.as_str()),
        refused: failure.and_then(|f| f.refused),
        signed_by: asked.as_ref().and_then(Asked::signed_by),
        read_back,
    };
    let payload = serde_json::to_vec(&reply).unwrap_or_default();
    let audit = serde_json::json!({
        "driver": driver,
        "command": audited(&message.payload, asked.as_ref()),
        "result": audited_result(serde_json::to_value(&reply).unwrap_or_default()),
    });
    let answer = Answer {
        driver: driver.clone(),
        payload,
    };
    (answer, audit)
}

/// An authorized command checked against the driver's policy, recorded
/// as taken (signed commands) and written.
async fn carry_out(
    driver: &str,
    asked: &Asked,
    target: Option<Target>,
    authority: &Arc<Authority>,
) -> Result<ReadBack, Failure> {
    let value = value_of(&asked.value).map_err(|e| refusal("wrong-type", e))?;
    let Some((inbox, policy)) = target else {
        return Err(refusal(
            "no-driver",
            format!("no driver {driver:?} on this gateway"),
        ));
    };
    if let Some(signed) = &asked.signed {
        // The record is synced to disk: off the runtime's workers.
        let (authority, signed) = (authority.clone(), signed.command.clone());
        tokio::task::spawn_blocking(move || authority.take(&signed))
            .await
            .map_err(|e| refusal("cannot-record", format!("recording the command: {e}")))??;
    }
    policy.admit(driver, &asked.channel, &value)?;
    write(&inbox, asked.channel.clone(), value).await
}

/// The read-back as a result shows it: the value, when it was read, and
/// whether it is the value written.
fn read_back_json(read: &ReadBack, written: &serde_json::Value) -> serde_json::Value {
    match read {
        ReadBack::Read { value, ts_ns } => {
            let shown = plain_json(value);
            serde_json::json!({
                "value": shown,
                "ts_ms": ts_ns / 1_000_000,
                "matches": same_json(&shown, written),
            })
        }
        ReadBack::Unread(why) => serde_json::json!({ "error": why }),
    }
}

/// A value as plain JSON (bytes as base64, a float that is not finite
/// as its name).
fn plain_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Int(i) => (*i).into(),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map_or_else(|| f.to_string().into(), serde_json::Value::Number),
        Value::Bool(b) => (*b).into(),
        Value::Text(s) => s.clone().into(),
        Value::Bytes(b) => {
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b).into()
        }
    }
}

/// Whether a value read back is the one written: numbers by value, to
/// the precision of a 32-bit float (what most registers hold).
fn same_json(read: &serde_json::Value, written: &serde_json::Value) -> bool {
    match (read.as_f64(), written.as_f64()) {
        (Some(r), Some(w)) => r == w || (r - w).abs() <= w.abs().max(r.abs()) * 1e-6,
        _ => read == written,
    }
}

async fn write(
    target: &mpsc::Sender<Write>,
    channel: String,
    value: Value,
) -> Result<ReadBack, Failure> {
    let (reply, answer) = oneshot::channel();
    target
        .send(Write {
            channel,
            value,
            reply,
        })
        .await
        .map_err(|_| refusal("no-driver", "the driver has stopped".to_string()))?;
    let read_back = match tokio::time::timeout(ANSWER_WITHIN, answer).await {
        Ok(Ok(Ok(read_back))) => read_back,
        Ok(Ok(Err(e))) => return Err(e.into()),
        Ok(Err(_)) => return Err("the driver dropped the command".to_string().into()),
        Err(_) => {
            return Err(format!(
                "no answer from the driver within {} s",
                ANSWER_WITHIN.as_secs()
            )
            .into());
        }
    };
    // Written: whatever comes of the read-back, the command succeeded.
    Ok(
        match tokio::time::timeout(READ_BACK_WITHIN, read_back).await {
            Ok(Ok(read)) => read,
            Ok(Err(_)) => ReadBack::Unread("the driver stopped before it polled again".to_string()),
            Err(_) => ReadBack::Unread(format!(
                "the driver did not poll again within {} s",
                READ_BACK_WITHIN.as_secs()
            )),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[driver.commands]` of the test driver "plc": `sp` any value.
    const OPEN_SP: &str = "[sp]\n";

    /// The answer to `payload` sent to `driver`, where only "plc" exists
    /// and answers each write with `driver_answers`.
    async fn answer(
        driver: &str,
        payload: &str,
        driver_answers: Option<Result<(), String>>,
    ) -> serde_json::Value {
        let mut v = answers(OPEN_SP, driver, &[payload], driver_answers)
            .await
            .remove(0);
        v.as_object_mut().unwrap().remove("reached_driver");
        v
    }

    /// The answers to `payloads`, in order, with `rules` (TOML tables, as
    /// under `[driver.commands]`) as "plc"'s policy; also how many writes
    /// reached the driver.
    async fn answers(
        rules: &str,
        driver: &str,
        payloads: &[&str],
        driver_answers: Option<Result<(), String>>,
    ) -> Vec<serde_json::Value> {
        let (tx, mut rx) = mpsc::channel::<Write>(1);
        let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = reached.clone();
        tokio::spawn(async move {
            while let Some(w) = rx.recv().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let answer = driver_answers.clone().unwrap_or(Ok(())).map(|()| {
                    // The device holds what was written.
                    let (tx, rx) = oneshot::channel();
                    let _ = tx.send(ReadBack::Read {
                        value: w.value,
                        ts_ns: 1_000_000,
                    });
                    rx
                });
                let _ = w.reply.send(answer);
            }
        });
        let rules: BTreeMap<toml::Spanned<String>, WritableChannel> =
            toml::from_str(rules).unwrap();
        let drivers = Inboxes::default();
        drivers.insert("plc".to_string(), tx, Arc::new(Policy::new(&rules)));
        let record = Record {
            audit: None,
            counters: Arc::default(),
        };
        let mut commands = start(drivers, Arc::new(Authority::open()), record);
        let mut out = Vec::new();
        for payload in payloads {
            commands
                .inbox
                .send(Incoming {
                    driver: driver.into(),
                    payload: payload.as_bytes().to_vec(),
                })
                .await
                .unwrap();
            let a = commands.answers.recv().await.unwrap();
            assert_eq!(a.driver, driver);
            let mut v: serde_json::Value = serde_json::from_slice(&a.payload).unwrap();
            v["reached_driver"] = reached.load(std::sync::atomic::Ordering::Relaxed).into();
            out.push(v);
        }
        out
    }

    #[tokio::test]
    async fn the_policy_refuses_unlisted_channels_values_out_of_bounds_and_writes_over_the_rate() {
        let rules = r#"
            [sp]
            min = 10
            max = 80.5
            max_per_minute = 2
            [mode]
            allowed = ["auto", "manual", 3]
            [pump]
            allowed = [true]
        "#;
        let got = answers(
            rules,
            "plc",
            &[
                r#"{"id":1,"channel":"other","value":1}"#,
                r#"{"id":2,"channel":"sp","value":9.99}"#,
                r#"{"id":3,"channel":"sp","value":81}"#,
                r#"{"id":4,"channel":"sp","value":"20"}"#,
                r#"{"id":5,"channel":"mode","value":"off"}"#,
                r#"{"id":6,"channel":"mode","value":3.0}"#,
                r#"{"id":7,"channel":"pump","value":false}"#,
                r#"{"id":8,"channel":"sp","value":10}"#,
                r#"{"id":9,"channel":"sp","value":80.5}"#,
                r#"{"id":10,"channel":"sp","value":50}"#,
                r#"{"id":11,"channel":"mode","value":"manual"}"#,
            ],
            Some(Ok(())),
        )
        .await;
        let refused: Vec<(i64, Option<&str>)> = (got.iter())
            .map(|v| (v["id"].as_i64().unwrap(), v["refused"].as_str()))
            .collect();
        assert_eq!(
            refused,
            [
                (1, Some("not-writable")),
                (2, Some("out-of-range")),
                (3, Some("out-of-range")),
                (4, Some("wrong-type")),
                (5, Some("not-allowed")),
                (6, None),
                (7, Some("not-allowed")),
                (8, None),
                (9, None),
                (10, Some("rate-limited")),
                (11, None),
            ]
        );
        // A refused command never reached the driver.
        assert_eq!(got[6]["reached_driver"], 1, "{got:?}");
        assert_eq!(got[10]["reached_driver"], 4, "{got:?}");
        for v in &got {
            assert_eq!(
                v["ok"],
                v["refused"].is_null() && v["error"].is_null(),
                "{v}"
            );
        }
        let says = |i: usize| got[i]["error"].as_str().unwrap().to_string();
        assert!(
            says(0).contains("lists no such channel in [driver.commands]"),
            "{}",
            says(0)
        );
        assert!(says(1).contains("below min 10"), "{}", says(1));
        assert!(says(2).contains("above max 80.5"), "{}", says(2));
        assert!(says(4).contains(r#"["auto", "manual", 3]"#), "{}", says(4));
        assert!(
            says(9).contains("at most 2 write(s) a minute"),
            "{}",
            says(9)
        );
    }

    #[tokio::test]
    async fn signed_commands_are_taken_once_and_counted_with_their_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = (dir.path().join("op.key"), dir.path().join("op.pub"));
        let key_id = crate::plugin::trust::keygen(&secret, &public).unwrap();
        let keys = crate::plugin::trust::public_keys(&[public]).unwrap();
        let record = authority::record_path(dir.path());
        let authority = Authority::new("gw", keys, true, (60_000, 5_000), &record);
        let (tx, mut rx) = mpsc::channel::<Write>(1);
        tokio::spawn(async move {
            while let Some(w) = rx.recv().await {
                let (read_tx, read_rx) = oneshot::channel();
                let _ = read_tx.send(ReadBack::Unread("no poll in this test".into()));
                let _ = w.reply.send(Ok(read_rx));
            }
        });
        let drivers = Inboxes::default();
        let rules = toml::from_str(OPEN_SP).unwrap();
        drivers.insert("plc".to_string(), tx, Arc::new(Policy::new(&rules)));
        let counters = Arc::new(CommandCounters::default());
        let record = Record {
            audit: None,
            counters: counters.clone(),
        };
        let mut commands = start(drivers, Arc::new(authority), record);
        let document = SignedCommand {
            schema: authority::SCHEMA,
            kind: authority::KIND.into(),
            gateway: "gw".into(),
            driver: "plc".into(),
            channel: "sp".into(),
            value: 7.into(),
            id: "s-1".into(),
            issued_ms: crate::reading::now_ms(),
        };
        let envelope =
            crate::deploy::sign_document(serde_json::to_vec(&document).unwrap(), &secret).unwrap();
        let signed = serde_json::to_vec(&envelope).unwrap();
        let mut got = Vec::new();
        for payload in [
            signed.clone(),
            signed,
            br#"{"id":"p","channel":"sp","value":1}"#.to_vec(),
        ] {
            let driver = "plc".to_string();
            commands
                .inbox
                .send(Incoming { driver, payload })
                .await
                .unwrap();
            let a = commands.answers.recv().await.unwrap();
            got.push(serde_json::from_slice::<serde_json::Value>(&a.payload).unwrap());
        }
        assert_eq!(got[0]["ok"], true, "{}", got[0]);
        assert_eq!(got[0]["id"], "s-1");
        assert_eq!(got[0]["signed_by"], key_id.as_str());
        assert_eq!(got[0]["read_back"]["error"], "no poll in this test");
        assert_eq!(
            (&got[1]["id"], &got[1]["refused"]),
            (&"s-1".into(), &"replay".into())
        );
        assert_eq!(
            (&got[2]["id"], &got[2]["refused"]),
            (&"p".into(), &"unsigned".into())
        );
        let figures = counters.figures();
        assert_eq!(
            (figures.accepted, figures.refused, figures.failed),
            (1, 2, 0)
        );
        assert_eq!(figures.refused_by["replay"], 1);
        assert_eq!(figures.refused_by["unsigned"], 1);
    }

    #[tokio::test]
    async fn with_no_commands_table_nothing_is_writable() {
        let got = answers("", "plc", &[r#"{"id":"x","channel":"sp","value":1}"#], None).await;
        assert_eq!(got[0]["refused"], "not-writable");
        assert_eq!(got[0]["reached_driver"], 0);
    }

    #[tokio::test]
    async fn good_and_bad_commands_get_answers_with_their_id() {
        let ok = answer(
            "plc",
            r#"{"id":"a1","channel":"sp","value":21.5}"#,
            Some(Ok(())),
        )
        .await;
        assert_eq!(
            ok,
            serde_json::json!({"id": "a1", "ok": true, "read_back": {"value": 21.5, "ts_ms": 1, "matches": true}})
        );

        let refused = answer(
            "plc",
            r#"{"id":7,"channel":"sp","value":true}"#,
            Some(Err("read-only".into())),
        )
        .await;
        assert_eq!(
            refused,
            serde_json::json!({"id": 7, "ok": false, "error": "read-only"})
        );

        let garbage = answer("plc", "not json", None).await;
        assert_eq!(garbage["ok"], false);
        assert!(garbage["id"].is_null());
        assert!(
            garbage["error"]
                .as_str()
                .unwrap()
                .starts_with("malformed command")
        );

        let missing = answer("plc", r#"{"id":"m","value":1}"#, None).await;
        assert_eq!(missing["id"], "m");
        assert!(missing["error"].as_str().unwrap().contains("channel"));

        let object = answer("plc", r#"{"id":"o","channel":"sp","value":{"x":1}}"#, None).await;
        assert!(
            object["error"]
                .as_str()
                .unwrap()
                .contains("number, boolean or string")
        );

        let nowhere = answer("nowhere", r#"{"id":"n","channel":"x","value":1}"#, None).await;
        assert!(
            nowhere["error"]
                .as_str()
                .unwrap()
                .contains("no driver \"nowhere\"")
        );
    }
}
