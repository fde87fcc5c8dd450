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
//! MQTT 3.1.1 and 5 differ only inside [`link`].

mod failure;
mod link;
mod message;
pub mod tls;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

pub use failure::{FailureKind, explain};
pub use link::LinkError;
pub use message::{Encoded, Topics, encode_data, encode_parts, splice_data};
pub use tls::{TlsError, TlsFiles};

use crate::config::MqttProtocol;
use crate::queue::{Queue, QueueError};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::remote::{Answer, Commands, Incoming};
use link::{Client, ClientError, Credentials, Events, LinkEvent};

/// How the publisher reaches the broker.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    pub gateway: String,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub topics: Topics,
    pub tls: TlsFiles,
    pub protocol: MqttProtocol,
    pub username: Option<String>,
    /// Read at each connect; its first line is the password.
    pub password_file: Option<std::path::PathBuf>,
    pub clean_session: bool,
    pub session_expiry_s: u32,
    /// Largest packet sent, in bytes (an MQTT 5 broker may lower it).
    pub max_packet_size: u32,
    pub keep_alive: Duration,
    pub max_inflight: u16,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

/// The last connection failure, for logs and telemetry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LastFailure {
    pub kind: &'static str,
    pub message: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Messages acknowledged by the broker and their payload bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub messages: u64,
    pub payload_bytes: u64,
    /// The same messages as whole MQTT PUBLISH packets (fixed header,
    /// topic, packet id, MQTT 5 properties, payload), before TLS.
    pub mqtt_bytes: u64,
}

/// The size of a QoS 1 PUBLISH packet carrying `payload` bytes on `topic`.
fn publish_packet_len(protocol: MqttProtocol, topic: &str, payload: usize) -> u64 {
    let properties = usize::from(protocol == MqttProtocol::V5);
    let remaining = 2 + topic.len() + 2 + properties + payload;
    // Remaining length is a varint of 7 bits per byte.
    let mut varint = 1;
    let mut rest = remaining >> 7;
    while rest > 0 {
        varint += 1;
        rest >>= 7;
    }
    (1 + varint + remaining) as u64
}

/// The publisher's counters, shared with telemetry.
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// True between CONNACK and the end of that connection.
    pub connected: AtomicBool,
    /// Connections that reached CONNACK.
    pub connects: AtomicU64,
    /// How long the last connection took from opening to CONNACK (TCP,
    /// TLS handshake, MQTT CONNECT), in microseconds.
    pub last_connect_us: AtomicU64,
    /// When this gateway's client certificate expires (seconds since the
    /// Unix epoch; 0 when there is none), as read at the last connect.
    pub client_cert_not_after: AtomicU64,
    /// Connection attempts that failed and connections that were lost.
    pub failures: AtomicU64,
    /// Messages (data entries or parts, and telemetry snapshots) the broker
    /// acknowledged, with their payload bytes; one lock so the two always
    /// agree.
    pub acked: Mutex<Acked>,
    /// Entries deleted from the queue after every part was acknowledged.
    pub entries_delivered: AtomicU64,
    /// Entries that had to be split into parts.
    pub entries_split: AtomicU64,
    /// Readings left out because they exceed the packet size limit alone.
    pub readings_too_large: AtomicU64,
    /// Messages an MQTT 5 broker acknowledged with a failure reason (kept
    /// in the queue and sent again).
    pub messages_refused: AtomicU64,
    pub last_failure: Mutex<Option<LastFailure>>,
}

impl PublisherStats {
    fn failed(&self, kind: FailureKind, message: &str) {
        self.connected.store(false, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        *self
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(LastFailure {
            kind: kind.as_str(),
            message: message.to_string(),
            at_ms,
        });
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("{}: cannot read the MQTT password: {source}", path.display())]
    Password {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Logged through [`explain`], which says what failed and its kind.
    #[error("{0}")]
    Link(Box<LinkError>),
    #[error("{0}")]
    Queue(#[from] QueueError),
    #[error("cannot encode entry {seq}: {message}")]
    Encode { seq: u64, message: String },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the broker refused entry {seq}: {reason}")]
    Refused {
        seq: u64,
        reason: String,
        authorization: bool,
    },
    #[error("event loop stopped")]
    Closed,
}

impl SessionError {
    /// The kind of failure and its one-line explanation.
    fn explain(&self, host: &str) -> (FailureKind, String) {
        match self {
            SessionError::Link(e) => explain(e, host),
            SessionError::Refused {
                authorization: true,
                ..
            }
            | SessionError::Password { .. } => (FailureKind::Authorization, self.to_string()),
            SessionError::Tls(_) => (FailureKind::Tls, self.to_string()),
            other => (FailureKind::Network, other.to_string()),
        }
    }
}

/// A request handed to the client and not yet given a packet id.
enum Handed {
    /// A message (or part) of entry `seq` of lane `lane`, with its payload
    /// size and its size as an MQTT packet.
    Entry {
        lane: usize,
        seq: u64,
        bytes: usize,
        packet: u64,
    },
    /// A status message or a command result.
    Other,
}

/// A queue the session sends from. The telemetry lane, when there is one,
/// is served first, so a backlog of data never holds telemetry back.
struct Lane<'a> {
    queue: &'a Queue,
    telemetry: bool,
    /// The next sequence to read.
    next_seq: u64,
    /// Encoded messages not yet handed over.
    pending: VecDeque<Outbound>,
    /// Messages of each entry not yet acknowledged.
    parts_left: HashMap<u64, usize>,
    /// Acknowledged but not yet deleted; deleted in one transaction per burst.
    acked: Vec<u64>,
}

impl<'a> Lane<'a> {
    fn new(queue: &'a Queue, telemetry: bool) -> Self {
        Lane {
            queue,
            telemetry,
            next_seq: 0,
            pending: VecDeque::new(),
            parts_left: HashMap::new(),
            acked: Vec::new(),
        }
    }
}

/// A message ready to hand to the client.
struct Outbound {
    seq: u64,
    topic: String,
    payload: Vec<u8>,
}

/// Runs until `shutdown` turns true, reconnecting with exponential backoff
/// and jitter.
pub async fn run(
    settings: PublisherSettings,
    queue: Queue,
    stats: Arc<PublisherStats>,
    telemetry: Option<Queue>,
    mut commands: Option<Commands>,
    shutdown: CancellationToken,
) {
    // Up to +25 %, so a fleet that lost the same broker doesn't return in lockstep.
    let mut backoff =
        Backoff::new(settings.reconnect_min, settings.reconnect_max).with_jitter(0.25);
    let broker = format!("{}:{}", settings.host, settings.port);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let mut connected = false;
        let result = session(
            &settings,
            &queue,
            telemetry.as_ref(),
            &stats,
            commands.as_mut(),
            &shutdown,
            &mut connected,
        )
        .await;
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
        let (kind, why) = e.explain(&settings.host);
        stats.failed(kind, &why);
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        if connected {
            tracing::warn!(broker = %broker, kind = kind.as_str(), error = %why, retry_in_ms = wait_ms, "mqtt connection lost");
        } else {
            tracing::warn!(broker = %broker, kind = kind.as_str(), error = %why, retry_in_ms = wait_ms, "mqtt connection failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Resolves when any of the lanes' queues has committed something new.
async fn any_changed(
    committed: &mut [watch::Receiver<u64>],
) -> Result<(), watch::error::RecvError> {
    let mut changes: Vec<_> = committed
        .iter_mut()
        .map(|c| Box::pin(c.changed()))
        .collect();
    std::future::poll_fn(move |cx| {
        for change in changes.iter_mut() {
            if let std::task::Poll::Ready(out) = change.as_mut().poll(cx) {
                return std::task::Poll::Ready(out);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The next command result, or never when there is no command path.
async fn next_answer(commands: Option<&mut Commands>) -> Option<Answer> {
    match commands {
        Some(c) => c.answers.recv().await,
        None => std::future::pending().await,
    }
}

/// How long before its client certificate expires the gateway warns.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

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
    telemetry: Option<&Queue>,
    stats: &PublisherStats,
    commands: Option<&mut Commands>,
    shutdown: &CancellationToken,
    connected: &mut bool,
) -> Result<(), SessionError> {
    // Removals handed over in the last session are committed before this
    // one reads the queue, so acknowledged entries are not sent again.
    queue.sync().await?;
    if let Some(t) = telemetry {
        t.sync().await?;
    }
    let (client, mut events, driver) = link::open(settings, credentials(settings)?);
    let mut lanes = Vec::with_capacity(2);
    if let Some(t) = telemetry {
        lanes.push(Lane::new(t, true));
    }
    lanes.push(Lane::new(queue, false));
    let mut session = Session::new(settings, lanes, stats, &client, commands);
    let result = session.run(shutdown, &mut events, connected).await;
    driver.abort();
    result
}

/// The state of one connection.
struct Session<'a> {
    settings: &'a PublisherSettings,
    /// In the order they are served: telemetry (if any), then data.
    lanes: Vec<Lane<'a>>,
    stats: &'a PublisherStats,
    client: &'a Client,
    /// Requests handed over, waiting for their packet id.
    handed: VecDeque<Handed>,
    /// Packet id to (lane, entry, payload bytes, packet bytes).
    inflight: HashMap<u16, (usize, u64, usize, u64)>,
    window: usize,
    /// Largest packet to send, in bytes.
    packet_limit: usize,
    /// When the connection was opened (TCP, TLS and CONNACK follow).
    opened: std::time::Instant,
    commands: Option<&'a mut Commands>,
}

impl<'a> Session<'a> {
    fn new(
        settings: &'a PublisherSettings,
        lanes: Vec<Lane<'a>>,
        stats: &'a PublisherStats,
        client: &'a Client,
        commands: Option<&'a mut Commands>,
    ) -> Self {
        Session {
            settings,
            lanes,
            stats,
            client,
            handed: VecDeque::new(),
            inflight: HashMap::new(),
            window: usize::from(settings.max_inflight.max(1)),
            packet_limit: 0,
            opened: std::time::Instant::now(),
            commands,
        }
    }

    async fn run(
        &mut self,
        shutdown: &CancellationToken,
        events: &mut Events,
        connected_once: &mut bool,
    ) -> Result<(), SessionError> {
        let mut committed: Vec<watch::Receiver<u64>> =
            self.lanes.iter().map(|l| l.queue.committed()).collect();
        let mut connected = false;
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else {
                        return Err(SessionError::Closed);
                    };
                    let mut next = Some(event);
                    // Handle everything already waiting before touching the queue.
                    while let Some(event) = next.take() {
                        match event {
                            Err(e) => {
                                self.delete_acked();
                                return Err(SessionError::Link(Box::new(e)));
                            }
                            Ok(LinkEvent::Connected { max_packet_size }) => {
                                connected = true;
                                *connected_once = true;
                                self.connected(max_packet_size)?;
                            }
                            Ok(event) => {
                                if let Err(e) = self.on_event(event) {
                                    // What was acknowledged before stays delivered.
                                    self.delete_acked();
                                    return Err(e);
                                }
                            }
                        }
                        next = events.try_recv().ok();
                    }
                    self.delete_acked();
                }
                changed = any_changed(&mut committed) => {
                    if changed.is_err() {
                        return Err(SessionError::Closed);
                    }
                }
                // Taken only when it can be sent at once: results not yet
                // taken wait in the channel, across reconnects.
                Some(answer) = next_answer(self.commands.as_deref_mut()), if connected && self.handed.len() < 4 => {
                    let topic = self.settings.topics.command_result(&answer.driver);
                    self.client.publish(topic, false, answer.payload)?;
                    self.handed.push_back(Handed::Other);
                }
                _ = shutdown.cancelled() => {
                    self.delete_acked();
                    if connected {
                        self.say_offline(events).await;
                    }
                    return Ok(());
                }
            }
            if connected {
                self.fill_window()?;
            }
        }
    }

    /// A message on a command topic: to the router.
    fn on_message(&mut self, topic: &str, payload: Vec<u8>) {
        let Some(commands) = self.commands.as_deref_mut() else {
            return;
        };
        let Some(driver) = self.settings.topics.command_driver(topic) else {
            tracing::warn!(topic = %topic, "message on an unexpected topic ignored");
            return;
        };
        let incoming = Incoming {
            driver: driver.to_string(),
            payload,
        };
        if let Err(e) = commands.inbox.try_send(incoming) {
            tracing::warn!(topic = %topic, error = %e, "command dropped: too many commands waiting");
        }
    }

    fn connected(&mut self, broker_max: Option<u32>) -> Result<(), SessionError> {
        let s = self.settings;
        let limit = match broker_max {
            Some(max) => max.min(s.max_packet_size),
            None => s.max_packet_size,
        };
        self.packet_limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let took = self.opened.elapsed();
        self.stats.last_connect_us.store(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.stats.connected.store(true, Ordering::Relaxed);
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        self.check_certificate_expiry();
        tracing::info!(
            broker = %format!("{}:{}", s.host, s.port),
            protocol = s.protocol.as_str(),
            max_packet_size = limit,
            connect_ms = took.as_secs_f64() * 1000.0,
            "mqtt connected"
        );
        self.client
            .publish(s.topics.status(), true, b"online".to_vec())?;
        self.handed.push_back(Handed::Other);
        if self.commands.is_some() {
            self.client.subscribe(s.topics.commands())?;
        }
        Ok(())
    }

    /// Records when the client certificate expires, and warns once it has
    /// less than `EXPIRY_WARNING` left (renew it: files are re-read at
    /// each connect).
    fn check_certificate_expiry(&self) {
        let Some(path) = &self.settings.tls.client_cert else {
            return;
        };
        let Some(not_after) = tls::not_after(path) else {
            return;
        };
        self.stats
            .client_cert_not_after
            .store(u64::try_from(not_after).unwrap_or(0), Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let left = not_after - now;
        if left < EXPIRY_WARNING.as_secs() as i64 {
            tracing::warn!(
                certificate = %path.display(),
                days_left = left / 86_400,
                "this gateway's client certificate expires soon; install a renewed one (it is read at every connect)"
            );
        }
    }

    fn on_event(&mut self, event: LinkEvent) -> Result<(), SessionError> {
        match event {
            LinkEvent::Sent(pkid) => {
                if let Some(Handed::Entry {
                    lane,
                    seq,
                    bytes,
                    packet,
                }) = self.handed.pop_front()
                {
                    self.inflight.insert(pkid, (lane, seq, bytes, packet));
                }
            }
            LinkEvent::Acked(pkid) => {
                if let Some((lane, seq, bytes, packet)) = self.inflight.remove(&pkid) {
                    {
                        let mut acked = self
                            .stats
                            .acked
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        acked.messages += 1;
                        acked.payload_bytes += bytes as u64;
                        acked.mqtt_bytes += packet;
                    }
                    self.part_done(lane, seq);
                }
            }
            LinkEvent::Refused {
                pkid,
                reason,
                authorization,
            } => {
                if let Some((_, seq, _, _)) = self.inflight.remove(&pkid) {
                    self.stats.messages_refused.fetch_add(1, Ordering::Relaxed);
                    return Err(SessionError::Refused {
                        seq,
                        reason,
                        authorization,
                    });
                }
            }
            LinkEvent::Message { topic, payload } => self.on_message(&topic, payload),
            LinkEvent::Connected { .. } | LinkEvent::Other => {}
        }
        Ok(())
    }

    /// One more message of entry `seq` acknowledged.
    fn part_done(&mut self, lane: usize, seq: u64) {
        let Some(lane) = self.lanes.get_mut(lane) else {
            return;
        };
        let left = lane.parts_left.entry(seq).or_insert(1);
        *left = left.saturating_sub(1);
        if *left == 0 {
            lane.parts_left.remove(&seq);
            lane.acked.push(seq);
        }
    }

    /// Hands acknowledged entries to the queue's writer, which deletes them
    /// in its next commit (together with new appends: one fsync).
    fn delete_acked(&mut self) {
        for lane in &mut self.lanes {
            if lane.acked.is_empty() {
                continue;
            }
            let delivered = lane.acked.len() as u64;
            match lane.queue.remove_later(std::mem::take(&mut lane.acked)) {
                Ok(()) if !lane.telemetry => {
                    self.stats
                        .entries_delivered
                        .fetch_add(delivered, Ordering::Relaxed);
                }
                Ok(()) => {}
                // Only when the queue is closing; the entries stay and are re-sent.
                Err(e) => tracing::debug!(error = %e, "acknowledged entries not deleted"),
            }
        }
    }

    /// Hands messages to the client until `window` are outstanding, lane by
    /// lane (telemetry first), reading and encoding more entries as needed.
    fn fill_window(&mut self) -> Result<(), SessionError> {
        for i in 0..self.lanes.len() {
            loop {
                let outstanding = self.handed.len() + self.inflight.len();
                if outstanding >= self.window {
                    return Ok(());
                }
                if self.lanes[i].pending.is_empty()
                    && !self.read_more(i, self.window - outstanding)?
                {
                    break;
                }
                let Some(out) = self.lanes[i].pending.pop_front() else {
                    break;
                };
                let bytes = out.payload.len();
                let packet = publish_packet_len(self.settings.protocol, &out.topic, bytes);
                self.client.publish(out.topic, false, out.payload)?;
                self.handed.push_back(Handed::Entry {
                    lane: i,
                    seq: out.seq,
                    bytes,
                    packet,
                });
            }
        }
        Ok(())
    }

    /// Reads up to `n` entries of lane `i` after the last one read and
    /// encodes them into its `pending`; false when there is nothing more.
    fn read_more(&mut self, i: usize, n: usize) -> Result<bool, SessionError> {
        let lane = &self.lanes[i];
        let entries = lane.queue.read_for_send(lane.next_seq, n)?;
        if entries.is_empty() {
            return Ok(false);
        }
        let telemetry = lane.telemetry;
        for (seq, entry) in entries {
            self.lanes[i].next_seq = seq + 1;
            let (topic, encoded) = if telemetry {
                self.encode_telemetry(seq, &entry.batch()?)
            } else {
                self.encode_data(seq, &entry)?
            };
            let lane = &mut self.lanes[i];
            if encoded.is_empty() {
                // Nothing deliverable is left in it.
                lane.acked.push(seq);
                continue;
            }
            lane.parts_left.insert(seq, encoded.len());
            for payload in encoded {
                lane.pending.push_back(Outbound {
                    seq,
                    topic: topic.clone(),
                    payload,
                });
            }
        }
        Ok(true)
    }

    /// The payload may use what the packet limit leaves after the fixed
    /// header (5), topic length (2), packet id (2) and MQTT 5 properties
    /// length (1).
    fn budget(&self, topic: &str) -> usize {
        self.packet_limit.saturating_sub(10 + topic.len())
    }

    /// A data entry's topic and payloads (parts, if too large for one). An
    /// entry that fits one packet is sent as stored, with the gateway and
    /// sequence added; only one that must be split is decoded.
    fn encode_data(
        &self,
        seq: u64,
        entry: &crate::queue::StoredEntry,
    ) -> Result<(String, Vec<Vec<u8>>), SessionError> {
        let topic = self.settings.topics.data(&entry.driver()?);
        let budget = self.budget(&topic);
        let encode_error = |e: serde_json::Error| SessionError::Encode {
            seq,
            message: e.to_string(),
        };
        let whole = splice_data(&self.settings.gateway, seq, entry.json()).map_err(encode_error)?;
        if whole.len() <= budget {
            return Ok((topic, vec![whole]));
        }
        drop(whole);
        let batch = entry.batch()?;
        let encoded =
            encode_parts(&self.settings.gateway, seq, &batch, budget).map_err(encode_error)?;
        for (channel, size) in &encoded.too_large {
            self.stats
                .readings_too_large
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                driver = %batch.driver,
                seq,
                channel = %channel,
                reading_bytes = size,
                max_payload_bytes = budget,
                "reading larger than the broker's packet size limit; left out (counted as readings_too_large)"
            );
        }
        if encoded.payloads.len() > 1 {
            self.stats.entries_split.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(seq, parts = encoded.payloads.len(), "entry sent in parts");
        }
        Ok((topic, encoded.payloads))
    }

    /// A telemetry entry's topic and payload: the snapshot's JSON as stored.
    fn encode_telemetry(&self, seq: u64, batch: &crate::reading::Batch) -> (String, Vec<Vec<u8>>) {
        let topic = self.settings.topics.telemetry();
        let payload = match batch.readings.first().map(|r| &r.value) {
            Some(crate::reading::Value::Text(json)) => json.clone().into_bytes(),
            _ => {
                tracing::error!(seq, "telemetry entry without a snapshot; skipped");
                return (topic, Vec::new());
            }
        };
        if payload.len() > self.budget(&topic) {
            tracing::error!(
                seq,
                bytes = payload.len(),
                max_payload_bytes = self.budget(&topic),
                "telemetry snapshot larger than the broker's packet size limit; not sent"
            );
            return (topic, Vec::new());
        }
        (topic, vec![payload])
    }

    /// Publishes "offline" and disconnects cleanly; bounded so shutdown
    /// never hangs.
    async fn say_offline(&mut self, events: &mut Events) {
        let _ = self
            .client
            .publish(self.settings.topics.status(), true, b"offline".to_vec());
        let _ = self.client.disconnect();
        // Wait until the broker closes the connection after the DISCONNECT:
        // closing first, with its PUBACKs still unread, would reset the
        // connection and could discard the DISCONNECT at the broker (which
        // would then publish the will).
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = events.recv().await {}
        })
        .await;
    }
}
