//! The publisher's counters, shared with telemetry.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::FailureKind;

/// The last connection failure, for logs and telemetry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LastFailure {
    /// `tls`, `authorization` or `network`.
    pub kind: &'static str,
    /// What failed.
    pub message: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Messages acknowledged by the broker and their payload bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// Messages acknowledged.
    pub messages: u64,
    /// Their payload bytes.
    pub payload_bytes: u64,
    /// The same messages as whole MQTT PUBLISH packets (fixed header,
    /// topic, packet id, MQTT 5 properties, payload), before TLS.
    pub mqtt_bytes: u64,
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
    /// The last connection failure.
    pub last_failure: Mutex<Option<LastFailure>>,
}

impl PublisherStats {
    pub(super) fn failed(&self, kind: FailureKind, message: &str) {
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
