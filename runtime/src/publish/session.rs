//! One connection's state machine: lanes read from the queues, messages
//! handed to the client, packet ids learnt from the link's events, PUBACKs
//! settling entries, and a clean "offline" on shutdown.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::queue::{Queue, QueueError};
use crate::remote::Commands;

use super::link::{Client, ClientError, Events, LinkError, LinkEvent};
use super::packet::publish_packet_len;
use super::sparkplug::{self, Node, SeqMark};
use super::tls::TlsError;
use super::{FailureKind, PublisherSettings, PublisherStats, expiry, explain, relay};

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
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
    /// Sparkplug 3.0: when the primary host goes offline, the edge node
    /// disconnects (and, connected again, waits for it).
    #[error("the Sparkplug primary host {host} went offline")]
    HostOffline { host: String },
}

impl SessionError {
    /// The kind of failure and its one-line explanation.
    pub(super) fn explain(&self, host: &str) -> (FailureKind, String) {
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

/// A message of a queue entry handed to the client: where it came from
/// and its size, for the acknowledgement and the byte counters.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// Index of the lane in `Session::lanes`.
    lane: usize,
    /// The entry's sequence number in that lane's queue.
    seq: u64,
    /// Bytes of the payload.
    payload_bytes: usize,
    /// Bytes of the whole PUBLISH packet (before TLS).
    packet_bytes: u64,
}

/// A request handed to the client and not yet given a packet id.
enum Handed {
    /// A message (or part) of a queue entry.
    Entry(InFlight),
    /// A status message or a command result.
    Other,
}

/// What a lane carries, and so where its entries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LaneKind {
    /// Drivers' batches: `data/{driver}`.
    Data,
    /// Telemetry snapshots: `telemetry`.
    Telemetry,
    /// Audit records: `audit`.
    Audit,
}

/// A queue the session sends from. The telemetry and audit lanes, when
/// there are, are served first, so a backlog of data never holds them back.
pub(super) struct Lane<'a> {
    queue: &'a Queue,
    pub(super) kind: LaneKind,
    /// The next sequence to read.
    next_seq: u64,
    /// Encoded messages not yet handed over.
    pub(super) pending: VecDeque<Outbound>,
    /// Messages of each entry not yet acknowledged.
    pub(super) parts_left: HashMap<u64, usize>,
    /// Acknowledged but not yet deleted; deleted in one transaction per burst.
    pub(super) acked: Vec<u64>,
}

impl<'a> Lane<'a> {
    pub(super) fn new(queue: &'a Queue, kind: LaneKind) -> Self {
        Lane {
            queue,
            kind,
            next_seq: 0,
            pending: VecDeque::new(),
            parts_left: HashMap::new(),
            acked: Vec::new(),
        }
    }
}

/// A message ready to hand to the client.
pub(super) struct Outbound {
    pub(super) seq: u64,
    pub(super) topic: String,
    pub(super) payload: Vec<u8>,
    /// Whether it is a message of queue entry `seq` (else a Sparkplug
    /// birth or death, which settles nothing).
    pub(super) of_entry: bool,
    /// How its Sparkplug `seq` is set when it leaves.
    pub(super) mark: SeqMark,
}

impl Outbound {
    /// A Sparkplug birth or death, sent in its place among the entries.
    pub(super) fn control(m: sparkplug::Message) -> Outbound {
        Outbound {
            seq: 0,
            topic: m.topic,
            payload: m.payload,
            of_entry: false,
            mark: m.seq,
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

/// The state of one connection.
pub(super) struct Session<'a> {
    pub(super) settings: &'a PublisherSettings,
    /// In the order they are served: telemetry (if any), then data.
    pub(super) lanes: Vec<Lane<'a>>,
    pub(super) stats: &'a PublisherStats,
    client: &'a Client,
    /// Requests handed over, waiting for their packet id.
    handed: VecDeque<Handed>,
    /// Messages of queue entries by packet id, until acknowledged.
    inflight: HashMap<u16, InFlight>,
    window: usize,
    /// Largest packet to send, in bytes.
    pub(super) packet_limit: usize,
    /// When the connection was opened (TCP, TLS and CONNACK follow).
    opened: std::time::Instant,
    pub(super) commands: Option<&'a mut Commands>,
    /// The Sparkplug edge node, with `format = "sparkplug-b"`.
    pub(super) node: Option<&'a mut Node>,
    /// Subscriptions sent on this connection and not yet acknowledged.
    subscriptions_pending: usize,
}

/// How far a connection got before it ended.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Reached {
    /// The broker accepted the connection (CONNACK).
    pub(super) connected: bool,
    /// It ended with subscriptions the broker never acknowledged.
    pub(super) subscribing: bool,
}

impl<'a> Session<'a> {
    pub(super) fn new(
        settings: &'a PublisherSettings,
        lanes: Vec<Lane<'a>>,
        stats: &'a PublisherStats,
        client: &'a Client,
        commands: Option<&'a mut Commands>,
        node: Option<&'a mut Node>,
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
            subscriptions_pending: 0,
            commands,
            node,
        }
    }

    pub(super) async fn run(
        &mut self,
        shutdown: &CancellationToken,
        events: &mut Events,
        reached: &mut Reached,
    ) -> Result<(), SessionError> {
        let result = self.serve(shutdown, events, &mut reached.connected).await;
        reached.subscribing = self.subscriptions_pending > 0;
        result
    }

    async fn serve(
        &mut self,
        shutdown: &CancellationToken,
        events: &mut Events,
        connected_once: &mut bool,
    ) -> Result<(), SessionError> {
        let mut committed: Vec<watch::Receiver<u64>> =
            self.lanes.iter().map(|l| l.queue.committed()).collect();
        let mut connected = false;
        // How often a Sparkplug node looks for devices that died.
        let mut deaths = tokio::time::interval(Duration::from_millis(500));
        deaths.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                out = relay::next_out(self.commands.as_deref_mut()), if connected && self.handed.len() < 4 => {
                    let (topic, retain, payload) = match out {
                        relay::Out::Answer(a) => (self.settings.topics.command_result(&a.driver), false, a.payload),
                        relay::Out::Deploy(d) => (d.topic, d.retain, d.payload),
                    };
                    self.client.publish(topic, retain, payload)?;
                    self.handed.push_back(Handed::Other);
                }
                _ = deaths.tick(), if connected && self.node.is_some() => {
                    self.device_deaths();
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
        expiry::check_certificate(self.settings, self.stats);
        tracing::info!(
            broker = %format!("{}:{}", s.host, s.port),
            protocol = s.protocol.as_str(),
            max_packet_size = limit,
            connect_ms = took.as_secs_f64() * 1000.0,
            "mqtt connected"
        );
        if self.node.is_none() {
            self.client
                .publish(s.topics.status(), true, b"online".to_vec())?;
            self.handed.push_back(Handed::Other);
        }
        if let Some(node) = self.node.as_deref() {
            for filter in node.settings().filters() {
                self.client.subscribe(filter)?;
                self.subscriptions_pending += 1;
            }
            if node.waits_for_host() {
                tracing::info!(
                    host = node
                        .settings()
                        .primary_host_id
                        .as_deref()
                        .unwrap_or_default(),
                    "waiting for the Sparkplug primary host to be online before births"
                );
            } else {
                self.births();
            }
        }
        if let Some(commands) = self.commands.as_deref() {
            self.client.subscribe(s.topics.commands())?;
            self.subscriptions_pending += 1;
            let links = commands.deploy.iter().chain(commands.erase.iter());
            for filter in links.flat_map(|l| &l.filters) {
                self.client.subscribe(filter.clone())?;
                self.subscriptions_pending += 1;
            }
        }
        Ok(())
    }

    fn on_event(&mut self, event: LinkEvent) -> Result<(), SessionError> {
        match event {
            LinkEvent::Sent(pkid) => {
                if let Some(Handed::Entry(message)) = self.handed.pop_front() {
                    self.inflight.insert(pkid, message);
                }
            }
            LinkEvent::Acked(pkid) => {
                if let Some(message) = self.inflight.remove(&pkid) {
                    {
                        let mut acked = self
                            .stats
                            .acked
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        acked.messages += 1;
                        acked.payload_bytes += message.payload_bytes as u64;
                        acked.mqtt_bytes += message.packet_bytes;
                    }
                    self.part_done(message.lane, message.seq);
                }
            }
            LinkEvent::Refused {
                pkid,
                reason,
                authorization,
            } => {
                if let Some(message) = self.inflight.remove(&pkid) {
                    self.stats.messages_refused.fetch_add(1, Ordering::Relaxed);
                    return Err(SessionError::Refused {
                        seq: message.seq,
                        reason,
                        authorization,
                    });
                }
            }
            LinkEvent::Subscribed => {
                if self.subscriptions_pending == 1 {
                    // Commands published from now on reach this gateway.
                    tracing::info!("mqtt subscribed");
                }
                self.subscriptions_pending = self.subscriptions_pending.saturating_sub(1);
            }
            LinkEvent::Message { topic, payload } => self.on_message(&topic, payload)?,
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
                Ok(()) if lane.kind == LaneKind::Data => {
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
                // A Sparkplug node sends data only once it is born.
                if self.lanes[i].kind == LaneKind::Data
                    && self.node.as_deref().is_some_and(|n| !n.ready())
                {
                    break;
                }
                if self.lanes[i].pending.is_empty()
                    && !self.read_more(i, self.window - outstanding)?
                {
                    break;
                }
                let Some(mut out) = self.lanes[i].pending.pop_front() else {
                    break;
                };
                if let Some(node) = self.node.as_deref_mut() {
                    sparkplug::stamp(&mut out.payload, out.mark, &mut node.next_seq);
                }
                let payload_bytes = out.payload.len();
                let packet_bytes =
                    publish_packet_len(self.settings.protocol, &out.topic, payload_bytes);
                self.client.publish(out.topic, false, out.payload)?;
                self.handed.push_back(if out.of_entry {
                    Handed::Entry(InFlight {
                        lane: i,
                        seq: out.seq,
                        payload_bytes,
                        packet_bytes,
                    })
                } else {
                    Handed::Other
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
        let kind = lane.kind;
        for (seq, entry) in entries {
            self.lanes[i].next_seq = seq + 1;
            if kind == LaneKind::Data && self.node.is_some() {
                self.encode_sparkplug(i, seq, &entry)?;
                continue;
            }
            let (topic, encoded) = match kind {
                LaneKind::Telemetry => self.encode_telemetry(seq, &entry)?,
                LaneKind::Audit => self.encode_audit(seq, &entry)?,
                LaneKind::Data => self.encode_data(seq, &entry)?,
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
                    of_entry: true,
                    mark: SeqMark::None,
                });
            }
        }
        Ok(true)
    }

    /// Publishes "offline" and disconnects cleanly; bounded so shutdown
    /// never hangs.
    async fn say_offline(&mut self, events: &mut Events) {
        // A Sparkplug node's last word is its NDEATH (the will is not sent
        // after a DISCONNECT).
        let (topic, retain, payload) = match self.node.as_deref() {
            Some(node) => (node.settings().ndeath(), false, node.ndeath_payload()),
            None => (self.settings.topics.status(), true, b"offline".to_vec()),
        };
        if self.client.publish(topic, retain, payload).is_ok() {
            self.handed.push_back(Handed::Other);
        }
        let _ = self.client.disconnect();
        // Wait until the broker closes the connection after the DISCONNECT:
        // closing first, with its PUBACKs still unread, would reset the
        // connection and could discard the DISCONNECT at the broker (which
        // would then publish the will). The PUBACKs that arrive meanwhile
        // settle their entries, so the next start does not send them again.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(event)) = events.recv().await {
                if matches!(event, LinkEvent::Sent(_) | LinkEvent::Acked(_)) {
                    let _ = self.on_event(event);
                }
            }
        })
        .await;
        self.delete_acked();
    }
}
