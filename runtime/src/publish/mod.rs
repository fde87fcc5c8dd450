//! The MQTT publisher: sends queue entries to the broker over TLS, QoS 1,
//! and deletes each entry once the broker's PUBACK for it arrives.
//!
//! The queue, not rumqttc, is the outbox. rumqttc's `publish()` gives no
//! packet id; the id appears later as an outgoing-publish event, in the
//! order requests were handed over. So every request handed to the client
//! is pushed on a FIFO, each such event pops one to learn its pkid, and a
//! PUBACK settles the message mapped to that pkid. Each connection gets a
//! fresh client and event loop (so nothing rumqttc kept from a dead
//! connection is re-sent twice) and starts again from the queue's oldest
//! entry. Delivery is at-least-once; consumers drop duplicates by `seq`
//! (and `part`).
//!
//! An entry whose message would exceed the packet size limit (the
//! configured `max_packet_size`, lowered by an MQTT 5 broker's own) is sent
//! in parts, and deleted only when every part is acknowledged. A single
//! reading too large for any packet cannot be delivered to this broker: it
//! is left out, logged and counted (`readings_too_large`).
//!
//! MQTT 3.1.1 and 5 differ only inside the `link` module.

mod edge;
mod expiry;
mod failure;
mod link;
mod message;
mod outbound;
mod packet;
mod relay;
mod session;
pub mod sparkplug;
mod stats;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use failure::{FailureKind, explain};
pub use link::LinkError;
pub use message::{Encoded, Topics, encode_data, encode_parts, splice_data};
pub use stats::{Acked, LastFailure, PublisherStats};
pub use tls::{TlsError, TlsFiles};

use crate::backoff::Backoff;
use crate::queue::Queue;
use crate::remote::Commands;
use link::Credentials;
use session::{Lane, LaneKind, Session, SessionError};

/// The MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1.
    #[default]
    V311,
    /// MQTT 5.
    V5,
}

impl Protocol {
    /// As configured and logged: "3.1.1" or "5".
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        }
    }
}

/// How the publisher reaches the broker.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    /// The gateway's id, written into every message.
    pub gateway: String,
    /// Broker host; also the name its certificate must carry.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Further brokers of the same cluster (host, port): a connection that
    /// fails or is lost is tried again, after the usual backoff, on the
    /// next broker of `host:port`, `failover…`, round and round.
    pub failover: Vec<(String, u16)>,
    /// The MQTT client id.
    pub client_id: String,
    /// Where data, status, telemetry and commands go.
    pub topics: Topics,
    /// CA bundle and client certificate.
    pub tls: TlsFiles,
    /// MQTT 3.1.1 or 5.
    pub protocol: Protocol,
    /// MQTT user name, if the broker wants one.
    pub username: Option<String>,
    /// Read at each connect; its first line is the password.
    pub password_file: Option<std::path::PathBuf>,
    /// Start each connection with a clean session.
    pub clean_session: bool,
    /// MQTT 5 session expiry.
    pub session_expiry_s: u32,
    /// Largest packet sent, in bytes (an MQTT 5 broker may lower it).
    pub max_packet_size: u32,
    /// Keep-alive period; two silent periods end the link.
    pub keep_alive: Duration,
    /// Messages published but not yet acknowledged, at most.
    pub max_inflight: u16,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// With `format = "sparkplug-b"`: the edge node's identity; data goes
    /// out as Sparkplug B instead of ferrule's JSON.
    pub sparkplug: Option<sparkplug::SparkplugSettings>,
    /// Where TLS and authorization failures are recorded (at most one
    /// record per kind a minute, with the number left out).
    pub audit: Option<crate::audit::AuditLog>,
}

/// Connections in a row closed before the broker answered the gateway's
/// subscriptions, after which the cause is spelled out.
const SUBSCRIBE_DROPS: u32 = 3;

/// What a broker that keeps closing the connection at the gateway's
/// subscriptions most likely means.
const SUBSCRIBE_DROPPED: &str = "the broker closes the connection before it acknowledges the gateway's subscriptions (commands, deployments), connection after connection; readings stay queued. On a RabbitMQ 3.10 cluster this is a clean session's subscription queue stranded on a node that is down: set clean_session = false on the gateway and mqtt.durable_queue_type = quorum on the broker (docs/brokers.md). Otherwise, check the broker's log and this gateway's subscribe permissions";

/// Runs until `shutdown` turns true, reconnecting with exponential backoff
/// and jitter.
pub async fn run(
    settings: PublisherSettings,
    queue: Queue,
    stats: Arc<PublisherStats>,
    telemetry: Option<Queue>,
    audit: Option<Queue>,
    mut commands: Option<Commands>,
    shutdown: CancellationToken,
) {
    // Up to +25 %, so a fleet that lost the same broker doesn't return in lockstep.
    let mut backoff =
        Backoff::new(settings.reconnect_min, settings.reconnect_max).with_jitter(0.25);
    let brokers: Vec<(String, u16)> = std::iter::once((settings.host.clone(), settings.port))
        .chain(settings.failover.iter().cloned())
        .collect();
    let mut active = settings.clone();
    let mut next = 0;
    let mut audited = AuditedFailures::default();
    // Connections in a row the broker closed while ferrule's subscriptions
    // were still unanswered.
    let mut dropped_subscribing = 0u32;
    // Aliases and declarations outlive a connection; births do not.
    let mut node = settings.sparkplug.clone().map(sparkplug::Node::new);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        (active.host, active.port) = brokers[next % brokers.len()].clone();
        next += 1;
        let broker = format!("{}:{}", active.host, active.port);
        let mut reached = session::Reached::default();
        let result = session(
            &active,
            &queue,
            [telemetry.as_ref(), audit.as_ref()],
            &stats,
            (commands.as_mut(), node.as_mut()),
            &shutdown,
            &mut reached,
        )
        .await;
        let connected = reached.connected;
        stats.connected.store(false, Ordering::Relaxed);
        let Err(e) = result else {
            return;
        };
        // A session that got as far as CONNACK starts the backoff afresh,
        // unless the broker refused what it was sent (it will again).
        if connected && !matches!(e, SessionError::Refused { .. }) {
            backoff.reset();
        }
        let wait = backoff.next_delay();
        let (kind, mut why) = e.explain(&active.host);
        // A broker that refused the connection outright (a dead node of
        // the cluster, tried in turn) neither breaks nor extends the run.
        if connected {
            dropped_subscribing = if reached.subscribing {
                dropped_subscribing + 1
            } else {
                0
            };
        }
        if dropped_subscribing >= SUBSCRIBE_DROPS {
            why = format!("{why}; {SUBSCRIBE_DROPPED}");
            if dropped_subscribing == SUBSCRIBE_DROPS {
                tracing::error!(broker = %broker, times = dropped_subscribing, "{SUBSCRIBE_DROPPED}");
            }
        }
        stats.failed(kind, &why);
        if let Some(audit) = &settings.audit {
            audited.record(audit, kind, &broker, &why);
        }
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let (host, port) = &brokers[next % brokers.len()];
        let retry_on = format!("{host}:{port}");
        if connected {
            tracing::warn!(broker = %broker, kind = kind.as_str(), error = %why, retry_in_ms = wait_ms, retry_on = %retry_on, "mqtt connection lost");
        } else {
            tracing::warn!(broker = %broker, kind = kind.as_str(), error = %why, retry_in_ms = wait_ms, retry_on = %retry_on, "mqtt connection failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// TLS and authorization failures recorded in the audit log: the first
/// of each kind in a minute, then a count of those left out.
#[derive(Default)]
struct AuditedFailures {
    last: std::collections::HashMap<&'static str, (std::time::Instant, u64)>,
}

impl AuditedFailures {
    const EVERY: Duration = Duration::from_secs(60);

    fn record(
        &mut self,
        audit: &crate::audit::AuditLog,
        kind: FailureKind,
        broker: &str,
        why: &str,
    ) {
        if kind == FailureKind::Network {
            return;
        }
        let now = std::time::Instant::now();
        let entry = self.last.entry(kind.as_str());
        let left_out = match entry {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                let (at, skipped) = e.get_mut();
                if now.duration_since(*at) < Self::EVERY {
                    *skipped += 1;
                    return;
                }
                let left_out = *skipped;
                *at = now;
                *skipped = 0;
                left_out
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert((now, 0));
                0
            }
        };
        audit.record(
            "link-failure",
            serde_json::json!({"kind": kind.as_str(), "broker": broker, "error": why, "earlier_left_out": left_out}),
        );
    }
}

/// Reads the TLS files and the password as they are on disk now, so a
/// rotated certificate, key, CA bundle or password is used from the next
/// connection on.
fn credentials(settings: &PublisherSettings) -> Result<Credentials, SessionError> {
    let tls = tls::client_config(&settings.tls)?;
    let login = match &settings.password_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| SessionError::Password {
                path: path.clone(),
                source,
            })?;
            let password = text.lines().next().unwrap_or_default().to_string();
            Some((settings.username.clone().unwrap_or_default(), password))
        }
        None => settings
            .username
            .as_ref()
            .map(|user| (user.clone(), String::new())),
    };
    Ok(Credentials { tls, login })
}

async fn session(
    settings: &PublisherSettings,
    queue: &Queue,
    [telemetry, audit]: [Option<&Queue>; 2],
    stats: &PublisherStats,
    (commands, mut node): (Option<&mut Commands>, Option<&mut sparkplug::Node>),
    shutdown: &CancellationToken,
    reached: &mut session::Reached,
) -> Result<(), SessionError> {
    // Removals handed over in the last session are committed before this
    // one reads the queue, so acknowledged entries are not sent again.
    queue.sync().await?;
    for lane in [telemetry, audit].into_iter().flatten() {
        lane.sync().await?;
    }
    let credentials = credentials(settings)?;
    let will = match node.as_deref_mut() {
        // NDEATH with this connection's bdSeq, not retained (Sparkplug 3.0).
        Some(node) => {
            let (topic, payload) = node.connecting();
            link::Will {
                topic,
                payload,
                retain: false,
            }
        }
        None => link::Will {
            topic: settings.topics.status(),
            payload: b"offline".to_vec(),
            retain: true,
        },
    };
    let (client, mut events, driver) = link::open(settings, credentials, will);
    let mut lanes = Vec::with_capacity(3);
    if let Some(t) = telemetry {
        lanes.push(Lane::new(t, LaneKind::Telemetry));
    }
    if let Some(a) = audit {
        lanes.push(Lane::new(a, LaneKind::Audit));
    }
    lanes.push(Lane::new(queue, LaneKind::Data));
    let mut session = Session::new(settings, lanes, stats, &client, commands, node);
    let result = session.run(shutdown, &mut events, reached).await;
    driver.abort();
    result
}
