//! Topic names and the JSON payload of a data message.

use serde::Serialize;

use crate::reading::{Batch, Reading};

/// Topic layout: `{prefix}/{gateway}/data/{driver}` and `{prefix}/{gateway}/status`.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
    base: String,
}

impl Topics {
    /// Topics under `{prefix}/{gateway}`.
    pub fn new(prefix: &str, gateway: &str) -> Topics {
        Topics {
            prefix: prefix.to_string(),
            base: format!("{prefix}/{gateway}"),
        }
    }

    /// Retained: the signed deployment for this gateway.
    pub fn deploy_desired(&self) -> String {
        format!("{}/deploy/desired", self.base)
    }

    /// Retained: the signed deployment for a group of gateways.
    pub fn group_desired(&self, group: &str) -> String {
        format!("{}/group/{group}/deploy/desired", self.prefix)
    }

    /// Retained: what the gateway runs and the last deployment's outcome.
    pub fn deploy_reported(&self) -> String {
        format!("{}/deploy/reported", self.base)
    }

    /// Where the gateway asks for a chunk of a plugin.
    pub fn deploy_fetch(&self) -> String {
        format!("{}/deploy/fetch", self.base)
    }

    /// Where a chunk of a plugin is sent: `…/deploy/chunk/{sha256}/{offset}`.
    pub fn deploy_chunk(&self, sha256: &str, offset: u64) -> String {
        format!("{}/deploy/chunk/{sha256}/{offset}", self.base)
    }

    /// The filter matching every chunk topic.
    pub fn deploy_chunks(&self) -> String {
        format!("{}/deploy/chunk/#", self.base)
    }

    /// The hash and offset a chunk topic names, if `topic` is one.
    pub fn chunk_of<'t>(&self, topic: &'t str) -> Option<(&'t str, u64)> {
        let rest = topic
            .strip_prefix(self.base.as_str())?
            .strip_prefix("/deploy/chunk/")?;
        let (sha, offset) = rest.split_once('/')?;
        Some((sha, offset.parse().ok()?))
    }

    /// Where a driver's data goes: `{prefix}/{gateway}/data/{driver}`.
    pub fn data(&self, driver: &str) -> String {
        format!("{}/data/{driver}", self.base)
    }

    /// Signed erasure orders for this gateway (`erase::Order`).
    pub fn data_erase(&self) -> String {
        format!("{}/data/erase", self.base)
    }

    /// The outcome of each erasure order.
    pub fn data_erase_result(&self) -> String {
        format!("{}/data/erase/result", self.base)
    }

    /// Retained; "online" while connected, "offline" by will or on shutdown.
    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }

    /// Telemetry snapshots.
    pub fn telemetry(&self) -> String {
        format!("{}/telemetry", self.base)
    }

    /// Audit records.
    pub fn audit(&self) -> String {
        format!("{}/audit", self.base)
    }

    /// The filter matching every driver's command topic.
    pub fn commands(&self) -> String {
        format!("{}/cmd/+/write", self.base)
    }

    /// The driver a command topic addresses, if `topic` is one.
    pub fn command_driver<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(self.base.as_str())?
            .strip_prefix("/cmd/")?
            .strip_suffix("/write")
            .filter(|d| !d.is_empty() && !d.contains('/'))
    }

    /// Where commands for `driver` are sent.
    pub fn command_write(&self, driver: &str) -> String {
        format!("{}/cmd/{driver}/write", self.base)
    }

    /// Where a driver's command results go.
    pub fn command_result(&self, driver: &str) -> String {
        format!("{}/cmd/{driver}/result", self.base)
    }
}

/// One data message: one queue entry, or one part of an entry too large
/// for a single MQTT packet.
#[derive(Debug, Serialize)]
struct DataMessage<'a, R: Serialize + ?Sized> {
    gateway: &'a str,
    driver: &'a str,
    /// The queue sequence number: per gateway, increasing, never reused.
    seq: u64,
    /// 1-based part number and part count, only when the entry was split;
    /// consumers drop duplicates by (seq, part).
    #[serde(skip_serializing_if = "Option::is_none")]
    part: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parts: Option<u32>,
    captured_ns: u64,
    readings: &'a R,
}

/// The whole entry as one message.
pub fn encode_data(gateway: &str, seq: u64, batch: &Batch) -> Result<Vec<u8>, serde_json::Error> {
    encode(gateway, seq, batch, None, &batch.readings)
}

fn encode<R: Serialize + ?Sized>(
    gateway: &str,
    seq: u64,
    batch: &Batch,
    part: Option<(u32, u32)>,
    readings: &R,
) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&DataMessage {
        gateway,
        driver: &batch.driver,
        seq,
        part: part.map(|(i, _)| i),
        parts: part.map(|(_, n)| n),
        captured_ns: batch.captured_ns,
        readings,
    })
}

/// The whole entry as one message, built from the batch's JSON object as the
/// queue stores it (`{"driver":..,"captured_ns":..,"readings":[..]}`) by
/// adding the gateway and the sequence number in front: the same message
/// as [`encode_data`] (fields in another order) without decoding the
/// readings. `batch_json` must be a JSON object with at least one field.
pub fn splice_data(
    gateway: &str,
    seq: u64,
    batch_json: &[u8],
) -> Result<Vec<u8>, serde_json::Error> {
    let rest = batch_json.get(1..).unwrap_or_default();
    let mut out = Vec::with_capacity(batch_json.len() + gateway.len() + 48);
    out.extend_from_slice(b"{\"gateway\":");
    serde_json::to_writer(&mut out, gateway)?;
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.push(b',');
    out.extend_from_slice(rest);
    Ok(out)
}

/// Bytes of `value`'s JSON, counted without building it.
fn json_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, serde_json::Error> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value)?;
    Ok(count.0)
}

/// A queue entry encoded for a broker that takes payloads of at most a
/// given size.
#[derive(Debug, Default)]
pub struct Encoded {
    /// One payload, or the parts in order.
    pub payloads: Vec<Vec<u8>>,
    /// Readings that do not fit in a payload even alone: (channel, size of
    /// the reading's JSON). They cannot be delivered to this broker.
    pub too_large: Vec<(String, usize)>,
}

/// Encodes an entry in as few payloads of at most `budget` bytes as its
/// readings allow, keeping their order. A reading that cannot fit even
/// alone is left out and listed in `too_large`.
pub fn encode_parts(
    gateway: &str,
    seq: u64,
    batch: &Batch,
    budget: usize,
) -> Result<Encoded, serde_json::Error> {
    // Sizes are counted, not encoded: an entry may be as large as a
    // plugin's largest result, and only its parts are built.
    let whole = DataMessage {
        gateway,
        driver: &batch.driver,
        seq,
        part: None,
        parts: None,
        captured_ns: batch.captured_ns,
        readings: &batch.readings[..],
    };
    if json_len(&whole)? <= budget {
        return Ok(Encoded {
            payloads: vec![encode_data(gateway, seq, batch)?],
            too_large: Vec::new(),
        });
    }
    // The envelope with the widest part numbers, and no readings.
    let no_readings: &[Reading] = &[];
    let envelope = encode(gateway, seq, batch, Some((u32::MAX, u32::MAX)), no_readings)?.len();
    let mut too_large = Vec::new();
    // Ranges of `batch.readings` per part; readings too large are skipped.
    let mut groups: Vec<Vec<&Reading>> = Vec::new();
    let mut current: Vec<&Reading> = Vec::new();
    let mut used = envelope;
    for reading in &batch.readings {
        let size = json_len(reading)?;
        if envelope + size > budget {
            too_large.push((reading.channel.clone(), size));
            continue;
        }
        // A comma separates it from the previous reading.
        let added = size + usize::from(!current.is_empty());
        if used + added > budget {
            groups.push(std::mem::take(&mut current));
            used = envelope;
            current.push(reading);
            used += size;
        } else {
            current.push(reading);
            used += added;
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    let count = u32::try_from(groups.len()).unwrap_or(u32::MAX);
    let mut payloads = Vec::with_capacity(groups.len());
    for (i, group) in groups.iter().enumerate() {
        let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
        payloads.push(encode(
            gateway,
            seq,
            batch,
            Some((number, count)),
            &group[..],
        )?);
    }
    Ok(Encoded {
        payloads,
        too_large,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Quality, Value};

    fn batch(sizes: &[usize]) -> Batch {
        Batch {
            driver: "d".to_string(),
            captured_ns: 7,
            readings: sizes
                .iter()
                .enumerate()
                .map(|(i, n)| Reading {
                    channel: format!("c{i}"),
                    value: Value::Text("x".repeat(*n)),
                    ts_ns: 1,
                    quality: Quality::Good,
                    unit: None,
                })
                .collect(),
        }
    }

    fn readings_of(payload: &[u8]) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        v["readings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["channel"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_small_entry_is_one_message_without_part_fields() {
        let b = batch(&[10, 10]);
        let e = encode_parts("gw", 3, &b, 4096).unwrap();
        assert_eq!(e.payloads.len(), 1);
        assert_eq!(e.payloads[0], encode_data("gw", 3, &b).unwrap());
        let v: serde_json::Value = serde_json::from_slice(&e.payloads[0]).unwrap();
        assert!(v.get("part").is_none() && v.get("parts").is_none());
    }

    #[test]
    fn a_large_entry_is_split_in_order_within_the_budget() {
        let b = batch(&[300; 40]);
        let budget = 2000;
        let e = encode_parts("gw", 9, &b, budget).unwrap();
        assert!(e.payloads.len() > 1);
        assert!(e.too_large.is_empty());
        let mut channels = Vec::new();
        for (i, p) in e.payloads.iter().enumerate() {
            assert!(p.len() <= budget, "part {i} is {} bytes", p.len());
            let v: serde_json::Value = serde_json::from_slice(p).unwrap();
            assert_eq!(v["seq"], 9);
            assert_eq!(v["part"], i + 1);
            assert_eq!(v["parts"], e.payloads.len());
            channels.extend(readings_of(p));
        }
        let expected: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        assert_eq!(channels, expected);
    }

    #[test]
    fn a_reading_too_large_for_any_message_is_listed_not_sent() {
        let b = batch(&[10, 5000, 10]);
        let e = encode_parts("gw", 1, &b, 1500).unwrap();
        assert_eq!(e.too_large.len(), 1);
        assert_eq!(e.too_large[0].0, "c1");
        let sent: Vec<String> = e.payloads.iter().flat_map(|p| readings_of(p)).collect();
        assert_eq!(sent, ["c0", "c2"]);
    }

    proptest::proptest! {
        #[test]
        fn parts_fit_and_carry_every_reading_once(
            sizes in proptest::collection::vec(0usize..900, 0..60),
            budget in 600usize..5000,
        ) {
            let b = batch(&sizes);
            let e = encode_parts("gw", 1, &b, budget).unwrap();
            let mut sent = Vec::new();
            for p in &e.payloads {
                proptest::prop_assert!(p.len() <= budget);
                sent.extend(readings_of(p));
            }
            let dropped: Vec<String> = e.too_large.iter().map(|(c, _)| c.clone()).collect();
            let mut all: Vec<String> = sent.iter().chain(&dropped).cloned().collect();
            all.sort();
            let mut expected: Vec<String> = (0..sizes.len()).map(|i| format!("c{i}")).collect();
            expected.sort();
            proptest::prop_assert_eq!(all, expected);
            // Only readings that cannot fit alone are left out.
            for (_, size) in &e.too_large {
                proptest::prop_assert!(*size + 150 > budget);
            }
        }
    }

    #[test]
    fn a_spliced_message_equals_the_encoded_one() {
        let batch = Batch {
            driver: "line \"7\" plc".into(),
            captured_ns: 42,
            readings: vec![
                Reading {
                    channel: "t\u{e9}mp\n".into(),
                    value: Value::Float(21.5),
                    ts_ns: 41,
                    quality: Quality::Good,
                    unit: Some("degC".into()),
                },
                Reading {
                    channel: "raw".into(),
                    value: Value::Bytes(vec![0, 255]),
                    ts_ns: 41,
                    quality: Quality::Bad,
                    unit: None,
                },
            ],
        };
        let stored = serde_json::to_vec(&batch).unwrap();
        let spliced = splice_data("gw \"a\"", u64::MAX, &stored).unwrap();
        let encoded = encode_data("gw \"a\"", u64::MAX, &batch).unwrap();
        assert_eq!(spliced.len(), encoded.len());
        let a: serde_json::Value = serde_json::from_slice(&spliced).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&encoded).unwrap();
        assert_eq!(a, b);
    }
}
