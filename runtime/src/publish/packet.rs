//! MQTT packet arithmetic: how large a PUBLISH is, and how much payload
//! fits under a packet limit.

use super::Protocol;

/// The size of a QoS 1 PUBLISH packet carrying `payload` bytes on `topic`.
pub(super) fn publish_packet_len(protocol: Protocol, topic: &str, payload: usize) -> u64 {
    let properties = usize::from(protocol == Protocol::V5);
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

/// The payload bytes a PUBLISH on `topic` may carry under `packet_limit`:
/// what the limit leaves after the fixed header (5), topic length (2),
/// packet id (2) and MQTT 5 properties length (1).
pub(super) fn payload_budget(packet_limit: usize, topic: &str) -> usize {
    packet_limit.saturating_sub(10 + topic.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_packet_counts_header_topic_id_properties_and_payload() {
        // 1 fixed header + 1 varint + 2 topic length + 1 topic + 2 id + payload.
        assert_eq!(publish_packet_len(Protocol::V311, "t", 10), 17);
        // MQTT 5 adds the properties length.
        assert_eq!(publish_packet_len(Protocol::V5, "t", 10), 18);
        // A remaining length of 128 takes a two-byte varint.
        assert_eq!(publish_packet_len(Protocol::V311, "t", 123), 1 + 2 + 128);
    }

    #[test]
    fn the_payload_budget_never_exceeds_the_packet_limit() {
        for limit in [
            0usize,
            10,
            11,
            40,
            128,
            16_384,
            131_072,
            2_097_152,
            268_435_455,
        ] {
            let budget = payload_budget(limit, "ferrule/gw/data/d");
            if budget > 0 {
                assert!(
                    publish_packet_len(Protocol::V5, "ferrule/gw/data/d", budget) as usize <= limit,
                    "limit {limit}"
                );
            }
        }
    }
}
