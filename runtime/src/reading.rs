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
#[derive(Debug, Clone, PartialEq, Serialize)]
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

/// Read without `#[serde(flatten)]`, which would buffer every field of
/// every reading before looking at it: the value is taken as JSON and
/// read as its `type` by the same rules as [`Value`]'s (a float may be
/// `"NaN"`, `"inf"`, `"-inf"` or, as versions before 0.2 wrote it, `null`;
/// bytes are base64).
impl<'de> Deserialize<'de> for Reading {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Kind {
            Float,
            Int,
            Bool,
            Text,
            Bytes,
        }
        #[derive(Deserialize)]
        struct Repr {
            channel: String,
            #[serde(rename = "type")]
            kind: Kind,
            value: serde_json::Value,
            ts_ns: u64,
            quality: Quality,
            #[serde(default)]
            unit: Option<String>,
        }
        use serde::de::Error as _;
        let r = Repr::deserialize(d)?;
        // Each case read by the rules `Value`'s own derive uses.
        let v = &r.value;
        let value = match r.kind {
            Kind::Float => Value::Float(float_repr::deserialize(v).map_err(D::Error::custom)?),
            Kind::Int => Value::Int(i64::deserialize(v).map_err(D::Error::custom)?),
            Kind::Bool => Value::Bool(bool::deserialize(v).map_err(D::Error::custom)?),
            Kind::Text => Value::Text(String::deserialize(v).map_err(D::Error::custom)?),
            Kind::Bytes => Value::Bytes(base64_bytes::deserialize(v).map_err(D::Error::custom)?),
        };
        Ok(Reading {
            channel: r.channel,
            value,
            ts_ns: r.ts_ns,
            quality: r.quality,
            unit: r.unit,
        })
    }
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

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
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
    /// Its entry in a compact message's channel list, without the type and
    /// the closing brace: `{"channel":"t","unit":"degC"`.
    decl: Box<[u8]>,
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
        let mut decl = b"{\"channel\":".to_vec();
        json_string(&mut decl, name);
        if let Some(unit) = unit {
            decl.extend_from_slice(b",\"unit\":");
            json_string(&mut decl, unit);
        }
        ChannelJson {
            head: head.into(),
            tail: tail.into(),
            decl: decl.into(),
        }
    }
}

fn json_string(out: &mut Vec<u8>, text: &str) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// The `type` a value is written with.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Float(_) => "float",
        Value::Int(_) => "int",
        Value::Bool(_) => "bool",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytes",
    }
}

/// A value's JSON as [`Value`]'s `value` field holds it.
fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Float(v) => {
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
            let _ = serde_json::to_writer(&mut *out, v);
        }
        Value::Bool(v) => out.extend_from_slice(if *v { b"true" } else { b"false" }),
        Value::Text(v) => json_string(out, v),
        Value::Bytes(v) => {
            use base64::Engine as _;
            out.push(b'"');
            let start = out.len();
            out.resize(start + v.len().div_ceil(3) * 4, 0);
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(v, &mut out[start..])
                .unwrap_or(0);
            out.truncate(start + written);
            out.push(b'"');
        }
    }
}

/// `{"driver":…,"captured_ns":…` in a buffer of `capacity`: how every
/// stored batch begins (the publisher reads the driver from there).
fn batch_head(driver_json: &[u8], captured_ns: u64, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(b"{\"driver\":");
    out.extend_from_slice(driver_json);
    out.extend_from_slice(b",\"captured_ns\":");
    let _ = serde_json::to_writer(&mut out, &captured_ns);
    out
}

/// How a batch is written into the queue and published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayloadFormat {
    /// One object per reading, with its channel, unit, type, value,
    /// timestamp and quality (the default).
    #[default]
    Readings,
    /// The message's channels listed once, each reading an array
    /// `[channel, value, ts_ns?, quality?]` (see the README).
    Compact,
}

/// A reading by channel index, as it passes between a chain's stages.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Index into the chain's channel table.
    pub channel: u32,
    /// The value.
    pub value: Value,
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// How far it can be trusted.
    pub quality: Quality,
}

/// A batch written in either [`PayloadFormat`].
#[derive(Debug)]
pub enum BatchWriter {
    /// The readings format.
    Readings(BatchJson),
    /// The compact format.
    Compact(CompactJson),
}

impl BatchWriter {
    /// A batch of the driver whose name is `driver_json` (a JSON string).
    pub fn new(
        format: PayloadFormat,
        driver_json: &[u8],
        captured_ns: u64,
        readings: usize,
    ) -> Self {
        match format {
            PayloadFormat::Readings => {
                BatchWriter::Readings(BatchJson::new(driver_json, captured_ns, readings))
            }
            PayloadFormat::Compact => {
                BatchWriter::Compact(CompactJson::new(driver_json, captured_ns, readings))
            }
        }
    }

    /// Appends `sample`, a reading of the channel `channel` describes.
    pub fn push(&mut self, channel: &ChannelJson, sample: &Sample) {
        match self {
            BatchWriter::Readings(w) => w.push(channel, sample),
            BatchWriter::Compact(w) => w.push(channel, sample),
        }
    }

    /// The finished batch.
    pub fn finish(self) -> PreparedBatch {
        match self {
            BatchWriter::Readings(w) => w.finish(),
            BatchWriter::Compact(w) => w.finish(),
        }
    }
}

/// A batch in the compact format: `{"driver":…,"captured_ns":…,
/// "format":"compact","ts_ns":…,"channels":[…],"readings":[[…],…]}`.
#[derive(Debug)]
pub struct CompactJson {
    head: Vec<u8>,
    channels: Vec<u8>,
    readings: Vec<u8>,
    count: usize,
    captured_ns: u64,
    /// The message's timestamp: the first reading's.
    ts_ns: Option<u64>,
    /// By channel table index: its position in this message's list, and
    /// the type it was listed with.
    local: Vec<Option<(u32, &'static str)>>,
    listed: u32,
}

impl CompactJson {
    fn new(driver_json: &[u8], captured_ns: u64, readings: usize) -> CompactJson {
        let mut head = batch_head(driver_json, captured_ns, 64);
        head.extend_from_slice(b",\"format\":\"compact\"");
        CompactJson {
            head,
            channels: Vec::with_capacity(readings * 32),
            readings: Vec::with_capacity(readings * 24),
            count: 0,
            captured_ns,
            ts_ns: None,
            local: Vec::new(),
            listed: 0,
        }
    }

    fn push(&mut self, channel: &ChannelJson, sample: &Sample) {
        let Sample {
            channel: index,
            ref value,
            ts_ns,
            quality,
        } = *sample;
        let i = index as usize;
        if self.local.len() <= i {
            self.local.resize(i + 1, None);
        }
        let (position, listed_type) = match self.local[i] {
            Some(known) => known,
            None => {
                let kind = type_name(value);
                if self.listed > 0 {
                    self.channels.push(b',');
                }
                self.channels.extend_from_slice(&channel.decl);
                self.channels.extend_from_slice(b",\"type\":\"");
                self.channels.extend_from_slice(kind.as_bytes());
                self.channels.extend_from_slice(b"\"}");
                let known = (self.listed, kind);
                self.local[i] = Some(known);
                self.listed += 1;
                known
            }
        };
        let message_ts = *self.ts_ns.get_or_insert(ts_ns);
        let out = &mut self.readings;
        if self.count > 0 {
            out.push(b',');
        }
        self.count += 1;
        out.push(b'[');
        let _ = serde_json::to_writer(&mut *out, &position);
        out.push(b',');
        if type_name(value) == listed_type {
            write_value(out, value);
        } else {
            out.extend_from_slice(b"{\"type\":\"");
            out.extend_from_slice(type_name(value).as_bytes());
            out.extend_from_slice(b"\",\"value\":");
            write_value(out, value);
            out.push(b'}');
        }
        if ts_ns != message_ts || quality != Quality::Good {
            out.push(b',');
            let _ = serde_json::to_writer(&mut *out, &ts_ns);
        }
        match quality {
            Quality::Good => {}
            Quality::Uncertain => out.extend_from_slice(b",\"uncertain\""),
            Quality::Bad => out.extend_from_slice(b",\"bad\""),
        }
        out.push(b']');
    }

    fn finish(self) -> PreparedBatch {
        let mut json = self.head;
        json.reserve(self.channels.len() + self.readings.len() + 64);
        json.extend_from_slice(b",\"ts_ns\":");
        let _ = serde_json::to_writer(&mut json, &self.ts_ns.unwrap_or(self.captured_ns));
        json.extend_from_slice(b",\"channels\":[");
        json.extend_from_slice(&self.channels);
        json.extend_from_slice(b"],\"readings\":[");
        json.extend_from_slice(&self.readings);
        json.extend_from_slice(b"]}");
        PreparedBatch {
            captured_ns: self.captured_ns,
            readings: self.count,
            json,
        }
    }
}

/// A compact batch as stored, read back into a [`Batch`] (to split it
/// into parts or export it).
#[derive(Debug, Deserialize)]
struct CompactBody {
    driver: String,
    captured_ns: u64,
    ts_ns: u64,
    channels: Vec<CompactChannel>,
    readings: Vec<CompactReading>,
}

#[derive(Debug, Deserialize)]
struct CompactChannel {
    channel: String,
    #[serde(default)]
    unit: Option<String>,
    #[serde(rename = "type")]
    kind: String,
}

/// `[position, value]`, `[position, value, ts_ns]` or
/// `[position, value, ts_ns, quality]`.
#[derive(Debug, Deserialize)]
struct CompactReading(
    usize,
    serde_json::Value,
    #[serde(default)] Option<u64>,
    #[serde(default)] Option<Quality>,
);

impl Batch {
    /// Reads a batch in either payload format.
    pub fn from_json(json: &[u8]) -> Result<Batch, serde_json::Error> {
        match serde_json::from_slice::<Batch>(json) {
            Ok(batch) => Ok(batch),
            Err(first) => match serde_json::from_slice::<CompactBody>(json) {
                Ok(compact) => compact.into_batch().map_err(serde::de::Error::custom),
                Err(_) => Err(first),
            },
        }
    }
}

impl CompactBody {
    fn into_batch(self) -> Result<Batch, String> {
        let mut readings = Vec::with_capacity(self.readings.len());
        for CompactReading(position, value, ts_ns, quality) in self.readings {
            let channel = self.channels.get(position).ok_or_else(|| {
                format!(
                    "reading of channel {position}, but the message lists {}",
                    self.channels.len()
                )
            })?;
            // A value of another type than its channel's is written typed.
            let typed = match value {
                serde_json::Value::Object(_) => value,
                bare => serde_json::json!({ "type": channel.kind, "value": bare }),
            };
            let value: Value = serde_json::from_value(typed).map_err(|e| e.to_string())?;
            readings.push(Reading {
                channel: channel.channel.clone(),
                value,
                ts_ns: ts_ns.unwrap_or(self.ts_ns),
                quality: quality.unwrap_or(Quality::Good),
                unit: channel.unit.clone(),
            });
        }
        Ok(Batch {
            driver: self.driver,
            captured_ns: self.captured_ns,
            readings,
        })
    }
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
        let mut out = batch_head(driver_json, captured_ns, 64 + readings * 96);
        out.extend_from_slice(b",\"readings\":[");
        BatchJson {
            out,
            readings: 0,
            captured_ns,
        }
    }

    /// Appends `sample`, a reading of the channel `channel` describes.
    pub fn push(&mut self, channel: &ChannelJson, sample: &Sample) {
        let Sample {
            ref value,
            ts_ns,
            quality,
            ..
        } = *sample;
        let out = &mut self.out;
        if self.readings > 0 {
            out.push(b',');
        }
        self.readings += 1;
        out.extend_from_slice(&channel.head);
        out.extend_from_slice(b"\"type\":\"");
        out.extend_from_slice(type_name(value).as_bytes());
        out.extend_from_slice(b"\",\"value\":");
        write_value(out, value);
        out.extend_from_slice(b",\"ts_ns\":");
        let _ = serde_json::to_writer(&mut *out, &ts_ns);
        out.extend_from_slice(match quality {
            Quality::Good => b",\"quality\":\"good\"",
            Quality::Uncertain => b",\"quality\":\"uncertain\"",
            Quality::Bad => b",\"quality\":\"bad\"",
        });
        out.extend_from_slice(&channel.tail);
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
                prepared.push(&channel, &sample(0, r.value.clone(), r.ts_ns, r.quality));
            }
            let prepared = prepared.finish();
            prop_assert_eq!(prepared.readings, batch.readings.len());
            let serde = serde_json::to_vec(&batch).unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&prepared.json), String::from_utf8_lossy(&serde));
        }

        /// A compact batch reads back as the batch it was written from,
        /// whatever mix of channels, types, timestamps and qualities.
        #[test]
        fn compact_batches_read_back_as_written(driver in ".{1,10}", captured_ns in any::<u64>(), readings in proptest::collection::vec(reading(), 0..12)) {
            let batch = Batch { driver, captured_ns, readings };
            let mut driver_json = Vec::new();
            json_string(&mut driver_json, &batch.driver);
            let mut writer = BatchWriter::new(PayloadFormat::Compact, &driver_json, captured_ns, batch.readings.len());
            let mut table: Vec<(String, Option<String>)> = Vec::new();
            for r in &batch.readings {
                let key = (r.channel.clone(), r.unit.clone());
                let index = match table.iter().position(|k| *k == key) {
                    Some(i) => i,
                    None => {
                        table.push(key);
                        table.len() - 1
                    }
                };
                let channel = ChannelJson::new(&r.channel, r.unit.as_deref());
                writer.push(&channel, &sample(index as u32, r.value.clone(), r.ts_ns, r.quality));
            }
            let prepared = writer.finish();
            let back = Batch::from_json(&prepared.json).unwrap();
            prop_assert!(same_batch(&back, &batch), "{} -> {:?} != {:?}", String::from_utf8_lossy(&prepared.json), back, batch);
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

    fn sample(channel: u32, value: Value, ts_ns: u64, quality: Quality) -> Sample {
        Sample {
            channel,
            value,
            ts_ns,
            quality,
        }
    }

    #[test]
    fn a_compact_batch_lists_each_channel_once_and_omits_what_is_shared() {
        let mut writer = BatchWriter::new(PayloadFormat::Compact, br#""plc""#, 5, 4);
        let t = ChannelJson::new("t", Some("degC"));
        let on = ChannelJson::new("on", None);
        writer.push(&t, &sample(7, Value::Float(21.5), 100, Quality::Good));
        writer.push(&on, &sample(2, Value::Bool(true), 100, Quality::Good));
        writer.push(&t, &sample(7, Value::Float(21.6), 200, Quality::Good));
        writer.push(
            &t,
            &sample(7, Value::Text("sensor open".into()), 100, Quality::Bad),
        );
        let json = String::from_utf8(writer.finish().json).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"driver":"plc","captured_ns":5,"format":"compact","ts_ns":100,"#,
                r#""channels":[{"channel":"t","unit":"degC","type":"float"},{"channel":"on","type":"bool"}],"#,
                r#""readings":[[0,21.5],[1,true],[0,21.6,200],[0,{"type":"text","value":"sensor open"},100,"bad"]]}"#
            )
        );
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
