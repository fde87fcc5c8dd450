//! One MQTT connection in either protocol version (3.1.1 or 5), behind one
//! small interface: a client that publishes and disconnects, and a stream
//! of the few events the publisher acts on.
//!
//! rumqttc has a separate client, event loop, packet and error type per
//! protocol version; everything version-specific lives here.

use std::sync::Arc;

use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as V5Code, LastWill as V5Will, Packet as V5Packet, PubAckReason,
};
use rumqttc::{ConnectReturnCode as V4Code, Outgoing, TlsConfiguration, Transport};
use tokio::sync::mpsc;

use super::Protocol;
use super::PublisherSettings;

/// An event of the connection that the publisher acts on.
#[derive(Debug)]
pub(super) enum LinkEvent {
    /// CONNACK received; an MQTT 5 broker may state its packet size limit.
    Connected {
        max_packet_size: Option<u32>,
    },
    /// A QoS 1 publish left with this packet id (in hand-over order).
    Sent(u16),
    /// The broker accepted the publish with this packet id.
    Acked(u16),
    /// The broker acknowledged the publish but refused it (MQTT 5 PUBACK
    /// with a failure reason): it was not delivered.
    Refused {
        pkid: u16,
        reason: String,
        authorization: bool,
    },
    /// The broker acknowledged a subscription (SUBACK).
    Subscribed,
    /// A message on a subscribed topic (a command).
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    Other,
}

/// Why a connection ended, as rumqttc reported it.
#[derive(Debug)]
pub enum LinkError {
    /// From an MQTT 3.1.1 connection.
    V311(rumqttc::ConnectionError),
    /// From an MQTT 5 connection.
    V5(rumqttc::v5::ConnectionError),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::V311(e) => e.fmt(f),
            LinkError::V5(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LinkError::V311(e) => Some(e),
            LinkError::V5(e) => Some(e),
        }
    }
}

/// What the broker said when it refused the connection, if it did.
pub(super) enum Refusal {
    /// Bad credentials, not authorized, banned.
    Authorization(String),
    Other(String),
}

impl LinkError {
    /// The broker's CONNACK refusal inside this error, if that is what it is.
    pub(super) fn refusal(&self) -> Option<Refusal> {
        match self {
            LinkError::V311(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                let text = format!("{code:?}");
                Some(match code {
                    V4Code::BadUserNamePassword | V4Code::NotAuthorized => {
                        Refusal::Authorization(text)
                    }
                    _ => Refusal::Other(text),
                })
            }
            LinkError::V5(rumqttc::v5::ConnectionError::ConnectionRefused(code))
            | LinkError::V5(rumqttc::v5::ConnectionError::MqttState(
                rumqttc::v5::StateError::ConnFail { reason: code },
            )) => {
                let text = format!("{code:?}");
                Some(match code {
                    V5Code::BadUserNamePassword
                    | V5Code::NotAuthorized
                    | V5Code::Banned
                    | V5Code::BadAuthenticationMethod => Refusal::Authorization(text),
                    _ => Refusal::Other(text),
                })
            }
            _ => None,
        }
    }
}

impl LinkError {
    /// True when the link went silent: a keep-alive ping went unanswered, or
    /// writes stopped draining.
    pub(super) fn went_silent(&self) -> bool {
        use rumqttc::v5::{ConnectionError as E5, StateError as S5};
        use rumqttc::{ConnectionError as E4, StateError as S4};
        matches!(
            self,
            LinkError::V311(E4::MqttState(S4::AwaitPingResp) | E4::FlushTimeout)
                | LinkError::V5(E5::MqttState(S5::AwaitPingResp))
        )
    }
}

/// The largest packet the gateway accepts: a deployment document
/// (`deploy::MAX_MESSAGE_BYTES`) with its topic.
pub const INCOMING_LIMIT: usize = 2 << 20;

/// Why a request could not be handed to the client.
#[derive(Debug, thiserror::Error)]
#[error("client request rejected: {0}")]
pub(super) struct ClientError(String);

/// The sending half of a connection.
pub(super) enum Client {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    /// Hands a QoS 1 publish to the event loop without waiting.
    pub(super) fn publish(
        &self,
        topic: String,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), ClientError> {
        match self {
            Client::V311(c) => c
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
                .map_err(|e| ClientError(e.to_string())),
            Client::V5(c) => c
                .try_publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    retain,
                    payload,
                )
                .map_err(|e| ClientError(e.to_string())),
        }
    }

    /// Subscribes to `filter` at QoS 1, without waiting.
    pub(super) fn subscribe(&self, filter: String) -> Result<(), ClientError> {
        match self {
            Client::V311(c) => c
                .try_subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .map_err(|e| ClientError(e.to_string())),
            Client::V5(c) => c
                .try_subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .map_err(|e| ClientError(e.to_string())),
        }
    }

    pub(super) fn disconnect(&self) -> Result<(), ClientError> {
        match self {
            Client::V311(c) => c.try_disconnect().map_err(|e| ClientError(e.to_string())),
            Client::V5(c) => c.try_disconnect().map_err(|e| ClientError(e.to_string())),
        }
    }
}

/// Per-connection inputs read from disk at connect time.
pub(super) struct Credentials {
    pub tls: Arc<rustls::ClientConfig>,
    pub login: Option<(String, String)>,
}

/// Events of one connection; the channel ends after the first error.
pub(super) type Events = mpsc::Receiver<Result<LinkEvent, LinkError>>;

/// Opens a connection (lazily: the event loop connects when first polled)
/// and drives its event loop on its own task. `EventLoop::poll` is never
/// raced in a `select!`: dropping it while it connects abandons the
/// half-made connection (the broker then fires the will).
/// The message the broker publishes for the gateway when the connection
/// dies without a DISCONNECT.
pub(super) struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

pub(super) fn open(
    settings: &PublisherSettings,
    credentials: Credentials,
    will: Will,
) -> (Client, Events, tokio::task::JoinHandle<()>) {
    // Room for a full window plus the status messages, so a publish never
    // finds the request channel full.
    let capacity = usize::from(settings.max_inflight) + 8;
    // rumqttc's own in-flight cap: the window plus the two status messages.
    let inflight = settings.max_inflight.max(1).saturating_add(2);
    let transport = Transport::tls_with_config(TlsConfiguration::Rustls(credentials.tls));
    let (tx, rx) = mpsc::channel(64);
    match settings.protocol {
        Protocol::V311 => {
            let mut options =
                rumqttc::MqttOptions::new(&settings.client_id, &settings.host, settings.port);
            options
                .set_keep_alive(settings.keep_alive)
                .set_clean_session(settings.clean_session)
                .set_inflight(inflight)
                // Incoming limit (commands, deployment documents and plugin
                // chunks); outgoing packets are kept under
                // `max_packet_size` by the publisher.
                .set_max_packet_size(INCOMING_LIMIT, settings.max_packet_size as usize)
                .set_last_will(rumqttc::LastWill::new(
                    will.topic,
                    will.payload,
                    rumqttc::QoS::AtLeastOnce,
                    will.retain,
                ))
                .set_transport(transport);
            if let Some((user, password)) = credentials.login {
                options.set_credentials(user, password);
            }
            let (client, mut eventloop) = rumqttc::AsyncClient::new(options, capacity);
            eventloop.set_network_options(network_options());
            let task = tokio::spawn(async move {
                loop {
                    let event = eventloop.poll().await;
                    let failed = event.is_err();
                    let event = event.map(v311_event).map_err(LinkError::V311);
                    if tx.send(event).await.is_err() || failed {
                        return;
                    }
                }
            });
            (Client::V311(client), rx, task)
        }
        Protocol::V5 => {
            let mut options =
                rumqttc::v5::MqttOptions::new(&settings.client_id, &settings.host, settings.port);
            options
                .set_keep_alive(settings.keep_alive)
                .set_clean_start(settings.clean_session)
                .set_outgoing_inflight_upper_limit(inflight)
                .set_max_packet_size(Some(INCOMING_LIMIT as u32))
                .set_last_will(V5Will::new(
                    will.topic,
                    will.payload,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    will.retain,
                    None,
                ))
                .set_transport(transport);
            if !settings.clean_session {
                options.set_session_expiry_interval(Some(settings.session_expiry_s));
            }
            if let Some((user, password)) = credentials.login {
                options.set_credentials(user, password);
            }
            options.set_network_options(network_options());
            let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, capacity);
            let task = tokio::spawn(async move {
                loop {
                    let event = eventloop.poll().await;
                    let failed = event.is_err();
                    let event = event.map(v5_event).map_err(LinkError::V5);
                    if tx.send(event).await.is_err() || failed {
                        return;
                    }
                }
            });
            (Client::V5(client), rx, task)
        }
    }
}

/// TCP settings: small MQTT packets (acknowledgements, pings, one reading)
/// go out at once instead of waiting for Nagle's algorithm, which on an
/// idle link holds a write until the peer's delayed ACK (about 40 ms).
fn network_options() -> rumqttc::NetworkOptions {
    let mut options = rumqttc::NetworkOptions::new();
    options.set_tcp_nodelay(true);
    options
}

fn outgoing(o: Outgoing) -> LinkEvent {
    match o {
        Outgoing::Publish(pkid) => LinkEvent::Sent(pkid),
        _ => LinkEvent::Other,
    }
}

fn v311_event(event: rumqttc::Event) -> LinkEvent {
    use rumqttc::{Event, Packet};
    match event {
        Event::Incoming(Packet::ConnAck(_)) => LinkEvent::Connected {
            max_packet_size: None,
        },
        Event::Incoming(Packet::PubAck(ack)) => LinkEvent::Acked(ack.pkid),
        Event::Incoming(Packet::SubAck(_)) => LinkEvent::Subscribed,
        Event::Incoming(Packet::Publish(p)) => LinkEvent::Message {
            topic: p.topic,
            payload: p.payload.to_vec(),
        },
        Event::Outgoing(o) => outgoing(o),
        Event::Incoming(_) => LinkEvent::Other,
    }
}

fn v5_event(event: rumqttc::v5::Event) -> LinkEvent {
    use rumqttc::v5::Event;
    match event {
        Event::Incoming(V5Packet::ConnAck(ack)) => LinkEvent::Connected {
            max_packet_size: ack.properties.and_then(|p| p.max_packet_size),
        },
        Event::Incoming(V5Packet::PubAck(ack)) => match ack.reason {
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                LinkEvent::Acked(ack.pkid)
            }
            reason => LinkEvent::Refused {
                pkid: ack.pkid,
                reason: format!("{reason:?}"),
                authorization: matches!(
                    reason,
                    PubAckReason::NotAuthorized | PubAckReason::TopicNameInvalid
                ),
            },
        },
        Event::Incoming(V5Packet::SubAck(_)) => LinkEvent::Subscribed,
        Event::Incoming(V5Packet::Publish(p)) => LinkEvent::Message {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
        },
        Event::Outgoing(o) => outgoing(o),
        Event::Incoming(_) => LinkEvent::Other,
    }
}
