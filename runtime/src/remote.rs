//! Remote commands from the cloud: writes to devices.
//!
//! The publisher subscribes to `{prefix}/{gateway}/cmd/+/write` and hands
//! each message to the router here. A command is JSON
//! `{"id": "…", "channel": "…", "value": …}` (`id` a string or number,
//! echoed back; `value` a number, boolean or string). The router checks
//! it, passes it to the named driver's task, which calls the plugin's
//! `write` between polls, and answers on `{prefix}/{gateway}/cmd/{driver}/result`
//! with `{"id": …, "ok": true}` or `{"id": …, "ok": false, "error": "…"}`.
//! Unknown drivers and channels, malformed JSON and wrong value types get
//! an error result; nothing a command says can stop the gateway. Every
//! command and its result are logged.
//!
//! Writes are opt-in: the router refuses, before the driver is asked, a
//! write to a channel its driver's `[driver.commands]` does not list, a
//! value outside that channel's `min`/`max` or `allowed` values, and a
//! write beyond its `max_per_minute`. The result then says
//! `"refused": CODE` besides the error.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

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

/// A write handed to a driver's task.
#[derive(Debug)]
pub struct Write {
    /// The channel to write.
    pub channel: String,
    /// The value to write.
    pub value: Value,
    /// Where the driver's task answers: done, or why not.
    pub reply: oneshot::Sender<Result<(), String>>,
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
}

/// Why a command failed: refused by the gateway's policy (with a code),
/// or failed on the way to or in the device.
#[derive(Debug, Clone, PartialEq)]
struct Failure {
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

/// The id of a command, or `null` when it has none that can be echoed.
fn id_of(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .filter(|id| id.is_string() || id.is_number())
        .unwrap_or(serde_json::Value::Null)
}

/// A command as the audit log keeps it: its id and channel, and its value
/// only as a SHA-256 (of its JSON) and a type; the log holds who wrote
/// what where, not the process values themselves. A payload that is not
/// a command is kept as its size and SHA-256.
fn audited(payload: &[u8]) -> serde_json::Value {
    let sha = crate::plugin::trust::sha256_hex;
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(v) if v.is_object() => {
            let value = &v["value"];
            serde_json::json!({
                "id": v["id"],
                "channel": v["channel"],
                "value_type": match value {
                    serde_json::Value::Bool(_) => "bool",
                    serde_json::Value::Number(_) => "number",
                    serde_json::Value::String(_) => "string",
                    serde_json::Value::Null => "none",
                    _ => "other",
                },
                "value_sha256": sha(value.to_string().as_bytes()),
            })
        }
        _ => serde_json::json!({
            "malformed": true,
            "bytes": payload.len(),
            "sha256": sha(payload),
        }),
    }
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

/// Starts the router; `drivers` holds each driver's task inbox by name;
/// every command and its result go into `audit`.
pub fn start(drivers: Inboxes, audit: Option<crate::audit::AuditLog>) -> Commands {
    let (inbox, mut incoming) = mpsc::channel::<Incoming>(64);
    let (answer_tx, answers) = mpsc::channel::<Answer>(64);
    tokio::spawn(async move {
        while let Some(message) = incoming.recv().await {
            let target = drivers.get(&message.driver);
            let answer_tx = answer_tx.clone();
            let audit = audit.clone();
            // Each command in its own task: a slow device delays only its own answer.
            tokio::spawn(async move {
                let answer = handle(&message, target).await;
                if let Some(audit) = audit {
                    let command = audited(&message.payload);
                    let result = serde_json::from_slice::<serde_json::Value>(&answer.payload)
                        .unwrap_or_default();
                    // Written off the runtime's workers: it syncs the file.
                    let driver = message.driver.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        audit.record("command", serde_json::json!({"driver": driver, "command": command, "result": result}));
                    })
                    .await;
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

async fn handle(message: &Incoming, target: Option<Target>) -> Answer {
    let driver = &message.driver;
    let (id, outcome): (_, Result<(), Failure>) = match serde_json::from_slice::<WriteCommand>(
        &message.payload,
    ) {
        Err(e) => (
            id_of(&message.payload),
            Err(
                format!("malformed command: {e} (expected {{\"id\", \"channel\", \"value\"}})")
                    .into(),
            ),
        ),
        Ok(command) if !(command.id.is_string() || command.id.is_number()) => (
            serde_json::Value::Null,
            Err("malformed command: id must be a string or a number"
                .to_string()
                .into()),
        ),
        Ok(command) => {
            tracing::info!(driver = %driver, id = %command.id, channel = %command.channel, value = %command.value, "command received");
            let outcome = match (value_of(&command.value), target) {
                (Err(e), _) => Err(e.into()),
                (_, None) => Err(format!("no driver {driver:?} on this gateway").into()),
                (Ok(value), Some((inbox, policy))) => {
                    match policy.admit(driver, &command.channel, &value) {
                        Err(refused) => Err(refused),
                        Ok(()) => write(&inbox, command.channel, value)
                            .await
                            .map_err(Failure::from),
                    }
                }
            };
            (command.id, outcome)
        }
    };
    match &outcome {
        Ok(()) => tracing::info!(driver = %driver, id = %id, "command done"),
        Err(Failure {
            refused: Some(code),
            error,
        }) => {
            tracing::warn!(driver = %driver, id = %id, refused = code, error = %error, "command refused");
        }
        Err(e) => tracing::warn!(driver = %driver, id = %id, error = %e.error, "command failed"),
    }
    let failure = outcome.as_ref().err();
    let payload = serde_json::to_vec(&Reply {
        id: &id,
        ok: failure.is_none(),
        error: failure.map(|f| f.error.as_str()),
        refused: failure.and_then(|f| f.refused),
    })
    .unwrap_or_default();
    Answer {
        driver: driver.clone(),
        payload,
    }
}

async fn write(target: &mpsc::Sender<Write>, channel: String, value: Value) -> Result<(), String> {
    let (reply, answer) = oneshot::channel();
    target
        .send(Write {
            channel,
            value,
            reply,
        })
        .await
        .map_err(|_| "the driver has stopped".to_string())?;
    match tokio::time::timeout(ANSWER_WITHIN, answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err("the driver dropped the command".to_string()),
        Err(_) => Err(format!(
            "no answer from the driver within {} s",
            ANSWER_WITHIN.as_secs()
        )),
    }
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
                let _ = w.reply.send(driver_answers.clone().unwrap_or(Ok(())));
            }
        });
        let rules: BTreeMap<toml::Spanned<String>, WritableChannel> =
            toml::from_str(rules).unwrap();
        let drivers = Inboxes::default();
        drivers.insert("plc".to_string(), tx, Arc::new(Policy::new(&rules)));
        let mut commands = start(drivers, None);
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
        assert_eq!(ok, serde_json::json!({"id": "a1", "ok": true}));

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
