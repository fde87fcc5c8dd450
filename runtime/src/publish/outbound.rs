//! Queue entries turned into MQTT payloads: a data entry as stored (or in
//! parts when it is larger than a packet), a telemetry snapshot as is.

use std::sync::atomic::Ordering;

use super::message::{encode_parts, splice_data};
use super::packet::payload_budget;
use super::session::{Session, SessionError};

impl Session<'_> {
    /// The payload bytes a message on `topic` may carry on this connection.
    fn budget(&self, topic: &str) -> usize {
        payload_budget(self.packet_limit, topic)
    }

    /// A data entry's topic and payloads (parts, if too large for one). An
    /// entry that fits one packet is sent as stored, with the gateway and
    /// sequence added; only one that must be split is decoded.
    pub(super) fn encode_data(
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
        self.left_out_and_split(
            &batch.driver,
            seq,
            &encoded.too_large,
            budget,
            encoded.payloads.len(),
        );
        Ok((topic, encoded.payloads))
    }

    /// Counts and logs the readings of entry `seq` left out as too large
    /// for a packet, and the entry as split when it takes several
    /// messages: the same for JSON and Sparkplug B.
    pub(super) fn left_out_and_split(
        &self,
        driver: &str,
        seq: u64,
        too_large: &[(String, usize)],
        budget: usize,
        messages: usize,
    ) {
        for (channel, size) in too_large {
            self.stats
                .readings_too_large
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                driver = %driver,
                seq,
                channel = %channel,
                reading_bytes = size,
                max_payload_bytes = budget,
                "reading larger than the broker's packet size limit; left out (counted as readings_too_large)"
            );
        }
        if messages > 1 {
            self.stats.entries_split.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(seq, parts = messages, "entry sent in parts");
        }
    }

    /// A telemetry entry's topic and payload: the snapshot's JSON as stored.
    pub(super) fn encode_telemetry(
        &self,
        seq: u64,
        entry: &crate::queue::StoredEntry,
    ) -> Result<(String, Vec<Vec<u8>>), SessionError> {
        let topic = self.settings.topics.telemetry();
        Ok(self.whole(seq, topic, "telemetry snapshot", entry.telemetry_snapshot()))
    }

    /// An audit entry's topic and payload: the record's JSON as stored.
    pub(super) fn encode_audit(
        &self,
        seq: u64,
        entry: &crate::queue::StoredEntry,
    ) -> Result<(String, Vec<Vec<u8>>), SessionError> {
        let topic = self.settings.topics.audit();
        Ok(self.whole(seq, topic, "audit record", entry.audit_record()))
    }

    /// One message of `payload` on `topic`; none (the entry is skipped,
    /// and logged) when it cannot be read or does not fit a packet.
    fn whole(
        &self,
        seq: u64,
        topic: String,
        what: &str,
        payload: Result<Vec<u8>, crate::queue::QueueError>,
    ) -> (String, Vec<Vec<u8>>) {
        let payload = match payload {
            Ok(payload) => payload,
            Err(e) => {
                tracing::error!(seq, error = %e, "{what} unreadable; skipped");
                return (topic, Vec::new());
            }
        };
        if payload.len() > self.budget(&topic) {
            tracing::error!(
                seq,
                bytes = payload.len(),
                max_payload_bytes = self.budget(&topic),
                "{what} larger than the broker's packet size limit; not sent"
            );
            return (topic, Vec::new());
        }
        (topic, vec![payload])
    }
}
