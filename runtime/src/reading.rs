//! Readings as the runtime stores and publishes them.

use serde::{Deserialize, Serialize};

/// One measured value. In JSON: `"type": "float", "value": 21.5`; bytes are
/// base64. A float that is not a finite number is written as a string,
/// `"NaN"`, `"inf"` or `"-inf"`, with the type kept (JSON has no such
/// numbers; see `float_repr`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum Value {
    /// A 64-bit float; NaN and the infinities are written as strings.
    Float(#[serde(with = "float_repr")] f64),
    /// A signed 64-bit integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// UTF-8 text.
    Text(String),
    /// Raw bytes, base64 in JSON.
    Bytes(#[serde(with = "base64_bytes")] Vec<u8>),
}

/// How far a reading can be trusted (OPC UA's three levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// Measured and valid.
    Good,
    /// Measured, but possibly off (a stale or out-of-range value).
    Uncertain,
    /// Not valid (a failed read, an impossible timestamp).
    Bad,
}

/// One value of one channel at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The channel's name, unique in its batch at one timestamp.
    pub channel: String,
    /// The value with its type.
    #[serde(flatten)]
    pub value: Value,
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// How far it can be trusted.
    pub quality: Quality,
    /// Engineering unit, if the plugin gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// What one driver poll produced after its processor chain: the unit the
/// queue stores and the publisher sends as one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The driver that polled it.
    pub driver: String,
    /// When the runtime took the batch, nanoseconds since the Unix epoch.
    pub captured_ns: u64,
    /// The readings, in the order the chain returned them.
    pub readings: Vec<Reading>,
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Floats in JSON: finite values as numbers (exactly, `-0.0` included),
/// non-finite ones as the strings `"NaN"`, `"inf"` and `"-inf"`. Every NaN
/// is written as `"NaN"` (its sign and payload bits are not kept). Reading
/// also takes `null` as NaN: versions before 0.2 wrote every non-finite
/// float as `null`, and their queues must still be read and exported.
mod float_repr {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub const NAN: &str = "NaN";
    pub const INF: &str = "inf";
    pub const NEG_INF: &str = "-inf";

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str(NAN)
        } else if *v > 0.0 {
            s.serialize_str(INF)
        } else {
            s.serialize_str(NEG_INF)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        d.deserialize_any(FloatVisitor)
    }

    struct FloatVisitor;

    impl Visitor<'_> for FloatVisitor {
        type Value = f64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a number, or \"NaN\", \"inf\" or \"-inf\"")
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            match v {
                NAN => Ok(f64::NAN),
                INF => Ok(f64::INFINITY),
                NEG_INF => Ok(f64::NEG_INFINITY),
                other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
            }
        }

        fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
            Ok(f64::NAN)
        }

        fn visit_none<E: de::Error>(self) -> Result<f64, E> {
            Ok(f64::NAN)
        }
    }
}

/// The JSON of one channel's readings that does not change from reading to
/// reading, escaped once: what goes before the value (`{"channel":"t",`)
/// and after the quality (`,"unit":"degC"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelJson {
    head: Box<[u8]>,
    tail: Box<[u8]>,
}

impl ChannelJson {
    /// The fragments of channel `name` in `unit`.
    pub fn new(name: &str, unit: Option<&str>) -> ChannelJson {
        let mut head = b"{\"channel\":".to_vec();
        json_string(&mut head, name);
        head.push(b',');
        let mut tail = Vec::new();
        if let Some(unit) = unit {
            tail.extend_from_slice(b",\"unit\":");
            json_string(&mut tail, unit);
        }
        tail.push(b'}');
        ChannelJson {
            head: head.into(),
            tail: tail.into(),
        }
    }
}

fn json_string(out: &mut Vec<u8>, text: &str) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// A batch written as the JSON its [`Batch`] serializes to, byte for byte,
/// from readings by channel: the channel name and unit come as prepared
/// [`ChannelJson`], so nothing is escaped or allocated per reading but the
/// value itself.
#[derive(Debug)]
pub struct BatchJson {
    out: Vec<u8>,
    readings: usize,
    captured_ns: u64,
}

/// A batch as JSON, ready for the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedBatch {
    /// When the runtime took the batch.
    pub captured_ns: u64,
    /// How many readings it holds.
    pub readings: usize,
    /// `{"driver":…,"captured_ns":…,"readings":[…]}`.
    pub json: Vec<u8>,
}

impl BatchJson {
    /// A batch of `driver` taken at `captured_ns`; `driver_json` is the
    /// driver's name as a JSON string (quotes included), `readings` a
    /// capacity hint.
    pub fn new(driver_json: &[u8], captured_ns: u64, readings: usize) -> BatchJson {
        let mut out = Vec::with_capacity(64 + readings * 96);
        out.extend_from_slice(b"{\"driver\":");
        out.extend_from_slice(driver_json);
        out.extend_from_slice(b",\"captured_ns\":");
        let _ = serde_json::to_writer(&mut out, &captured_ns);
        out.extend_from_slice(b",\"readings\":[");
        BatchJson {
            out,
            readings: 0,
            captured_ns,
        }
    }

    /// Appends one reading of the channel `channel` describes.
    pub fn push(&mut self, channel: &ChannelJson, value: &Value, ts_ns: u64, quality: Quality) {
        let out = &mut self.out;
        if self.readings > 0 {
            out.push(b',');
        }
        self.readings += 1;
        out.extend_from_slice(&channel.head);
        match value {
            Value::Float(v) => {
                out.extend_from_slice(b"\"type\":\"float\",\"value\":");
                if v.is_finite() {
                    let _ = serde_json::to_writer(&mut *out, v);
                } else if v.is_nan() {
                    json_string(out, float_repr::NAN);
                } else if *v > 0.0 {
                    json_string(out, float_repr::INF);
                } else {
                    json_string(out, float_repr::NEG_INF);
                }
            }
            Value::Int(v) => {
                out.extend_from_slice(b"\"type\":\"int\",\"value\":");
                let _ = serde_json::to_writer(&mut *out, v);
            }
            Value::Bool(v) => {
                out.extend_from_slice(b"\"type\":\"bool\",\"value\":");
                out.extend_from_slice(if *v { b"true" } else { b"false" });
            }
            Value::Text(v) => {
                out.extend_from_slice(b"\"type\":\"text\",\"value\":");
                json_string(out, v);
            }
            Value::Bytes(v) => {
                use base64::Engine as _;
                out.extend_from_slice(b"\"type\":\"bytes\",\"value\":\"");
                let start = out.len();
                out.resize(start + v.len().div_ceil(3) * 4, 0);
                let written = base64::engine::general_purpose::STANDARD
                    .encode_slice(v, &mut out[start..])
                    .unwrap_or(0);
                out.truncate(start + written);
                out.push(b'"');
            }
        }
        out.extend_from_slice(b",\"ts_ns\":");
        let _ = serde_json::to_writer(&mut *out, &ts_ns);
        out.extend_from_slice(match quality {
            Quality::Good => b",\"quality\":\"good\"",
            Quality::Uncertain => b",\"quality\":\"uncertain\"",
            Quality::Bad => b",\"quality\":\"bad\"",
        });
        out.extend_from_slice(&channel.tail);
    }

    /// Readings pushed so far.
    pub fn len(&self) -> usize {
        self.readings
    }

    /// Whether none was pushed.
    pub fn is_empty(&self) -> bool {
        self.readings == 0
    }

    /// The finished batch.
    pub fn finish(mut self) -> PreparedBatch {
        self.out.extend_from_slice(b"]}");
        PreparedBatch {
            captured_ns: self.captured_ns,
            readings: self.readings,
            json: self.out,
        }
    }
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            proptest::num::f64::ANY.prop_map(Value::Float),
            any::<i64>().prop_map(Value::Int),
            any::<bool>().prop_map(Value::Bool),
            ".{0,20}".prop_map(Value::Text),
            "[\\x00-\\x1f\\x7f\"\\\\]{0,8}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
        ]
    }

    fn reading() -> impl Strategy<Value = Reading> {
        (
            ".{1,12}",
            value(),
            any::<u64>(),
            0..3u8,
            proptest::option::of("[a-zA-Z%]{1,5}"),
        )
            .prop_map(|(channel, value, ts_ns, q, unit)| Reading {
                channel,
                value,
                ts_ns,
                quality: [Quality::Good, Quality::Uncertain, Quality::Bad][usize::from(q)],
                unit,
            })
    }

    proptest! {
        /// The prepared writer and serde agree byte for byte, so stored
        /// entries read the same whichever wrote them.
        #[test]
        fn prepared_batch_json_is_what_serde_writes(driver in ".{1,10}", captured_ns in any::<u64>(), readings in proptest::collection::vec(reading(), 0..8)) {
            let batch = Batch { driver, captured_ns, readings };
            let mut driver_json = Vec::new();
            json_string(&mut driver_json, &batch.driver);
            let mut prepared = BatchJson::new(&driver_json, captured_ns, batch.readings.len());
            for r in &batch.readings {
                let channel = ChannelJson::new(&r.channel, r.unit.as_deref());
                prepared.push(&channel, &r.value, r.ts_ns, r.quality);
            }
            let prepared = prepared.finish();
            prop_assert_eq!(prepared.readings, batch.readings.len());
            let serde = serde_json::to_vec(&batch).unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&prepared.json), String::from_utf8_lossy(&serde));
        }

        #[test]
        fn batches_round_trip_through_json(driver in "[a-z0-9-]{1,10}", captured_ns in any::<u64>(), readings in proptest::collection::vec(reading(), 0..8)) {
            let batch = Batch { driver, captured_ns, readings };
            let json = serde_json::to_vec(&batch).unwrap();
            let back: Batch = serde_json::from_slice(&json).unwrap();
            prop_assert!(same_batch(&back, &batch), "{:?} != {:?}", back, batch);
        }

        /// Every f64 — finite, subnormal, signed zero, infinite, any NaN —
        /// comes back as itself (NaN as a NaN).
        #[test]
        fn every_float_round_trips_through_json(bits in any::<u64>(), pick in 0..4u8) {
            let v = match pick {
                0 => f64::from_bits(bits),
                1 => f64::from_bits(bits | 0x7ff0_0000_0000_0000), // NaN or infinite
                2 => [f64::INFINITY, f64::NEG_INFINITY, -0.0, f64::MIN_POSITIVE][(bits % 4) as usize],
                _ => f64::from_bits(bits & 0x800f_ffff_ffff_ffff), // subnormal or zero
            };
            let r = Reading { channel: "f".into(), value: Value::Float(v), ts_ns: 1, quality: Quality::Good, unit: None };
            let json = serde_json::to_string(&r).unwrap();
            let back: Reading = serde_json::from_str(&json).unwrap();
            let Value::Float(b) = back.value else { panic!("type lost: {json}") };
            prop_assert!(same_float(b, v), "{} -> {} -> {}", v, json, b);
        }
    }

    /// Equality that holds a NaN equal to a NaN and tells 0.0 from -0.0.
    fn same_float(a: f64, b: f64) -> bool {
        (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
    }

    fn same_batch(a: &Batch, b: &Batch) -> bool {
        a.driver == b.driver
            && a.captured_ns == b.captured_ns
            && a.readings.len() == b.readings.len()
            && a.readings.iter().zip(&b.readings).all(|(x, y)| {
                let values = match (&x.value, &y.value) {
                    (Value::Float(p), Value::Float(q)) => same_float(*p, *q),
                    (p, q) => p == q,
                };
                values
                    && x.channel == y.channel
                    && x.ts_ns == y.ts_ns
                    && x.quality == y.quality
                    && x.unit == y.unit
            })
    }

    #[test]
    fn non_finite_floats_are_strings_with_their_type_and_old_nulls_read_as_nan() {
        for (v, text) in [
            (f64::NAN, r#""NaN""#),
            (f64::INFINITY, r#""inf""#),
            (f64::NEG_INFINITY, r#""-inf""#),
        ] {
            let r = Reading {
                channel: "t".into(),
                value: Value::Float(v),
                ts_ns: 7,
                quality: Quality::Good,
                unit: None,
            };
            let json = serde_json::to_string(&r).unwrap();
            assert!(
                json.contains(&format!(r#""type":"float","value":{text}"#)),
                "{json}"
            );
        }
        // What versions before 0.2 wrote for any non-finite float.
        let old: Reading = serde_json::from_str(
            r#"{"channel":"t","type":"float","value":null,"ts_ns":7,"quality":"good"}"#,
        )
        .unwrap();
        assert!(matches!(old.value, Value::Float(v) if v.is_nan()));
        // An integer-looking float written by another tool is still a float.
        let int: Reading = serde_json::from_str(
            r#"{"channel":"t","type":"float","value":3,"ts_ns":7,"quality":"good"}"#,
        )
        .unwrap();
        assert_eq!(int.value, Value::Float(3.0));
        assert!(
            serde_json::from_str::<Reading>(
                r#"{"channel":"t","type":"float","value":"nan?","ts_ns":7,"quality":"good"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn reading_json_is_flat_and_typed() {
        let r = Reading {
            channel: "t".into(),
            value: Value::Float(21.5),
            ts_ns: 7,
            quality: Quality::Good,
            unit: Some("degC".into()),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"channel":"t","type":"float","value":21.5,"ts_ns":7,"quality":"good","unit":"degC"}"#
        );
        let b = Reading {
            value: Value::Bytes(vec![1, 2, 255]),
            unit: None,
            ..r
        };
        assert!(
            serde_json::to_string(&b)
                .unwrap()
                .contains(r#""type":"bytes","value":"AQL/""#)
        );
    }
}
