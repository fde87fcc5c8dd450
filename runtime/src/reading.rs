//! Readings as the runtime stores and publishes them.

use serde::{Deserialize, Serialize};

/// One measured value. In JSON: `"type": "float", "value": 21.5`; bytes are base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum Value {
    Float(f64),
    Int(i64),
    Bool(bool),
    Text(String),
    Bytes(#[serde(with = "base64_bytes")] Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Good,
    Uncertain,
    Bad,
}

/// One value of one channel at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub channel: String,
    #[serde(flatten)]
    pub value: Value,
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub quality: Quality,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// What one driver poll produced after its processor chain: the unit the
/// queue stores and the publisher sends as one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub driver: String,
    /// When the runtime took the batch, nanoseconds since the Unix epoch.
    pub captured_ns: u64,
    pub readings: Vec<Reading>,
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
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
            any::<f64>()
                .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
                .prop_map(Value::Float),
            any::<i64>().prop_map(Value::Int),
            any::<bool>().prop_map(Value::Bool),
            ".{0,20}".prop_map(Value::Text),
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
        #[test]
        fn batches_round_trip_through_json(driver in "[a-z0-9-]{1,10}", captured_ns in any::<u64>(), readings in proptest::collection::vec(reading(), 0..8)) {
            let batch = Batch { driver, captured_ns, readings };
            let json = serde_json::to_vec(&batch).unwrap();
            let back: Batch = serde_json::from_slice(&json).unwrap();
            prop_assert_eq!(back, batch);
        }
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
