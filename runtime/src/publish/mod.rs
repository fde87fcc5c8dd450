//! The MQTT publisher: sends queue entries to the broker over TLS, QoS 1,
//! and deletes each entry once the broker's PUBACK for it arrives.
//!
//! The queue, not rumqttc, is the outbox. rumqttc's `publish()` gives no
//! packet id; the id appears later as `Event::Outgoing(Publish(pkid))`, in
//! the order requests were handed over. So every request handed to the
//! client is pushed on a FIFO, each Outgoing event pops one to learn its
//! pkid, and a PUBACK settles the entry mapped to that pkid. Each connection
//! gets a fresh client and event loop (so nothing rumqttc kept from a dead
//! connection is re-sent twice) and starts again from the queue's oldest
//! entry. Delivery is at-least-once; consumers drop duplicates by `seq`.
//!
//! `EventLoop::poll` is never raced in a `select!`: dropping it while it
//! connects abandons the half-made connection (the broker then fires the
//! will). A separate task drives the event loop and forwards its events.

mod failure;
mod message;
pub mod tls;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};

pub use failure::{FailureKind, explain};
pub use message::{Topics, encode_data};
pub use tls::{TlsError, TlsFiles};

use crate::queue::{Queue, QueueError};

/// How the publisher reaches the broker.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    pub gateway: String,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub topics: Topics,
    pub tls: TlsFiles,
    pub keep_alive: Duration,
    pub max_inflight: u16,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// Logged through [`explain`], which says what failed and its kind.
    #[error("{0}")]
    Connection(Box<ConnectionError>),
    #[error("{0}")]
    Queue(#[from] QueueError),
    #[error("cannot encode entry {seq}: {message}")]
    Encode { seq: u64, message: String },
    #[error("client request rejected: {0}")]
    Client(#[from] rumqttc::ClientError),
    #[error("event loop stopped")]
    Closed,
}

impl From<ConnectionError> for SessionError {
    fn from(e: ConnectionError) -> Self {
        SessionError::Connection(Box::new(e))
    }
}

/// A request handed to rumqttc and not yet given a packet id.
enum Handed {
    Entry(u64),
    Status,
}

/// Runs until `shutdown` turns true, reconnecting with exponential backoff.
pub async fn run(settings: PublisherSettings, queue: Queue, mut shutdown: watch::Receiver<bool>) {
    let mut delay = settings.reconnect_min;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut connected = false;
        match session(&settings, &queue, &mut shutdown, &mut connected).await {
            Ok(()) => return,
            Err(SessionError::Connection(e)) => {
                let (kind, why) = explain(&e, &settings.host);
                tracing::warn!(
                    broker = %format!("{}:{}", settings.host, settings.port),
                    kind = kind.as_str(),
                    error = %why,
                    "mqtt connection lost"
                );
            }
            Err(e) => {
                tracing::warn!(broker = %format!("{}:{}", settings.host, settings.port), error = %e, "mqtt connection lost");
            }
        }
        // A session that got as far as CONNACK starts the backoff afresh.
        if connected {
            delay = settings.reconnect_min;
        }
        let wait = with_jitter(delay);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
        delay = (delay * 2).min(settings.reconnect_max);
    }
}

/// Up to +25 % of `delay`, so a fleet that lost the same broker doesn't return in lockstep.
fn with_jitter(delay: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    delay + delay.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

fn connect(settings: &PublisherSettings) -> Result<(AsyncClient, EventLoop), SessionError> {
    let tls = tls::client_config(&settings.tls)?;
    let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options
        .set_keep_alive(settings.keep_alive)
        .set_clean_session(true)
        // The window plus the two status messages.
        .set_inflight(settings.max_inflight.max(1).saturating_add(2))
        .set_max_packet_size(1 << 20, 16 << 20)
        .set_last_will(LastWill::new(
            settings.topics.status(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    // Room for a full window plus the status messages, so try_publish never finds it full.
    Ok(AsyncClient::new(
        options,
        usize::from(settings.max_inflight) + 8,
    ))
}

async fn session(
    settings: &PublisherSettings,
    queue: &Queue,
    shutdown: &mut watch::Receiver<bool>,
    connected: &mut bool,
) -> Result<(), SessionError> {
    // Removals handed over in the last session are committed before this
    // one reads the queue, so acknowledged entries are not sent again.
    queue.sync().await?;
    let (client, eventloop) = connect(settings)?;
    let (mut events, driver) = drive(eventloop);
    let result = session_loop(settings, queue, shutdown, &client, &mut events, connected).await;
    driver.abort();
    result
}

/// Polls the event loop on its own task; the channel ends after the first error.
fn drive(
    mut eventloop: EventLoop,
) -> (
    mpsc::Receiver<Result<Event, ConnectionError>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        loop {
            let event = eventloop.poll().await;
            let failed = event.is_err();
            if tx.send(event).await.is_err() || failed {
                return;
            }
        }
    });
    (rx, task)
}

async fn session_loop(
    settings: &PublisherSettings,
    queue: &Queue,
    shutdown: &mut watch::Receiver<bool>,
    client: &AsyncClient,
    events: &mut mpsc::Receiver<Result<Event, ConnectionError>>,
    connected_once: &mut bool,
) -> Result<(), SessionError> {
    let mut committed = queue.committed();
    let mut handed: VecDeque<Handed> = VecDeque::new();
    let mut inflight: HashMap<u16, u64> = HashMap::new();
    let mut next_seq = 0u64;
    let mut connected = false;
    let window = usize::from(settings.max_inflight.max(1));
    // Acknowledged but not yet deleted; deleted in one transaction per burst.
    let mut acked: Vec<u64> = Vec::new();
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else {
                    return Err(SessionError::Closed);
                };
                let mut next = Some(event);
                // Handle everything already waiting before touching the queue.
                while let Some(event) = next.take() {
                    match event? {
                        Event::Incoming(Packet::ConnAck(_)) => {
                            connected = true;
                            *connected_once = true;
                            tracing::info!(broker = %format!("{}:{}", settings.host, settings.port), "mqtt connected");
                            client.try_publish(settings.topics.status(), QoS::AtLeastOnce, true, "online")?;
                            handed.push_back(Handed::Status);
                        }
                        Event::Outgoing(Outgoing::Publish(pkid)) => {
                            if let Some(Handed::Entry(seq)) = handed.pop_front() {
                                inflight.insert(pkid, seq);
                            }
                        }
                        Event::Incoming(Packet::PubAck(ack)) => {
                            if let Some(seq) = inflight.remove(&ack.pkid) {
                                acked.push(seq);
                            }
                        }
                        _ => {}
                    }
                    next = events.try_recv().ok();
                }
                delete_acked(queue, &mut acked);
            }
            changed = committed.changed() => {
                if changed.is_err() {
                    return Err(SessionError::Closed);
                }
            }
            _ = shutdown.changed() => {
                delete_acked(queue, &mut acked);
                if connected {
                    let _ = client.try_publish(settings.topics.status(), QoS::AtLeastOnce, true, "offline");
                    let _ = client.try_disconnect();
                    // Let the event loop send both; bounded so shutdown never hangs.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Some(Ok(event)) = events.recv().await {
                            if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                                break;
                            }
                        }
                    }).await;
                }
                return Ok(());
            }
        }
        if connected {
            fill_window(
                settings,
                queue,
                client,
                &mut handed,
                &inflight,
                &mut next_seq,
                window,
            )?;
        }
    }
}

/// Hands acknowledged entries to the queue's writer, which deletes them
/// in its next commit (together with new appends: one fsync).
fn delete_acked(queue: &Queue, acked: &mut Vec<u64>) {
    if acked.is_empty() {
        return;
    }
    if let Err(e) = queue.remove_later(std::mem::take(acked)) {
        // Only when the queue is closing; the entries stay and are re-sent.
        tracing::debug!(error = %e, "acknowledged entries not deleted");
    }
}

/// Hands queue entries to the client until `window` are outstanding.
fn fill_window(
    settings: &PublisherSettings,
    queue: &Queue,
    client: &AsyncClient,
    handed: &mut VecDeque<Handed>,
    inflight: &HashMap<u16, u64>,
    next_seq: &mut u64,
    window: usize,
) -> Result<(), SessionError> {
    let outstanding = handed.len() + inflight.len();
    if outstanding >= window {
        return Ok(());
    }
    for (seq, batch) in queue.read_for_send(*next_seq, window - outstanding)? {
        let payload =
            encode_data(&settings.gateway, seq, &batch).map_err(|e| SessionError::Encode {
                seq,
                message: e.to_string(),
            })?;
        client.try_publish(
            settings.topics.data(&batch.driver),
            QoS::AtLeastOnce,
            false,
            payload,
        )?;
        handed.push_back(Handed::Entry(seq));
        *next_seq = seq + 1;
    }
    Ok(())
}
