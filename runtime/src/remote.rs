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

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

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

/// Each running driver's inbox, by name. A reload replaces the inbox of a
/// driver it restarts and removes that of one it stops.
#[derive(Debug, Clone, Default)]
pub struct Inboxes(Arc<RwLock<HashMap<String, mpsc::Sender<Write>>>>);

impl Inboxes {
    /// Commands for `driver` go to `inbox` from now on.
    pub fn insert(&self, driver: String, inbox: mpsc::Sender<Write>) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.insert(driver, inbox);
    }

    /// Commands for `driver` are answered "no driver" from now on.
    pub fn remove(&self, driver: &str) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.remove(driver);
    }

    fn get(&self, driver: &str) -> Option<mpsc::Sender<Write>> {
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

async fn handle(message: &Incoming, target: Option<mpsc::Sender<Write>>) -> Answer {
    let driver = &message.driver;
    let (id, outcome) = match serde_json::from_slice::<WriteCommand>(&message.payload) {
        Err(e) => (
            id_of(&message.payload),
            Err(format!(
                "malformed command: {e} (expected {{\"id\", \"channel\", \"value\"}})"
            )),
        ),
        Ok(command) if !(command.id.is_string() || command.id.is_number()) => (
            serde_json::Value::Null,
            Err("malformed command: id must be a string or a number".to_string()),
        ),
        Ok(command) => {
            tracing::info!(driver = %driver, id = %command.id, channel = %command.channel, value = %command.value, "command received");
            let outcome = match (value_of(&command.value), target) {
                (Err(e), _) => Err(e),
                (_, None) => Err(format!("no driver {driver:?} on this gateway")),
                (Ok(value), Some(target)) => write(&target, command.channel, value).await,
            };
            (command.id, outcome)
        }
    };
    match &outcome {
        Ok(()) => tracing::info!(driver = %driver, id = %id, "command done"),
        Err(e) => tracing::warn!(driver = %driver, id = %id, error = %e, "command failed"),
    }
    let error = outcome.as_ref().err().map(String::as_str);
    let payload = serde_json::to_vec(&Reply {
        id: &id,
        ok: error.is_none(),
        error,
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

    /// The answer to `payload` sent to `driver`, where only "plc" exists
    /// and answers each write with `driver_answers`.
    async fn answer(
        driver: &str,
        payload: &str,
        driver_answers: Option<Result<(), String>>,
    ) -> serde_json::Value {
        let (tx, mut rx) = mpsc::channel::<Write>(1);
        tokio::spawn(async move {
            while let Some(w) = rx.recv().await {
                let _ = w.reply.send(driver_answers.clone().unwrap_or(Ok(())));
            }
        });
        let drivers = Inboxes::default();
        drivers.insert("plc".to_string(), tx);
        let mut commands = start(drivers, None);
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
        serde_json::from_slice(&a.payload).unwrap()
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
