//! Sparkplug B (Eclipse Sparkplug 3.0): the gateway as an edge node, each
//! driver a device.
//!
//! What the queue holds does not change: every DDATA is made from one
//! durable queue entry (or a part of one) when it is sent, and the entry
//! is deleted only when every message made from it is acknowledged. What
//! Sparkplug adds lives here:
//! - the edge node's state across connections: metric aliases (stable for
//!   the life of the process), what each device declared, the last value
//!   of each metric (for births), and `bdSeq`, kept in the data dir so a
//!   restart does not reuse the one of the connection before;
//! - per connection: which devices are born, when the node was born (an
//!   entry captured before that is backfill and sent `is_historical`), and
//!   the primary host's STATE;
//! - births, deaths and data payloads, and decoding of NCMD and DCMD.
//!
//! The message `seq` (0–255) is added when a message is handed to the
//! client, not when it is made (see [`stamp`]), so births, data and deaths
//! made at different moments are numbered in the order they leave.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use prost::Message as _;

use crate::plugin::{Channel, ValueType};
use crate::reading::{Batch, Quality, Value};
use proto::payload::{Metric, PropertySet, PropertyValue, metric, property_value};

/// The first topic level of every Sparkplug B topic.
pub const NAMESPACE: &str = "spBv1.0";

/// The node metric a host sets to `true` to ask for new births.
pub const REBIRTH: &str = "Node Control/Rebirth";

/// The device metric carrying the queue entry's sequence number, so loss
/// stays provable end to end (with `part`/`parts` properties when the
/// entry was split over several DDATA).
pub const SEQ_METRIC: &str = "ferrule/seq";

/// The largest STATE message read (its JSON is a few dozen bytes).
const MAX_STATE_BYTES: usize = 4096;

/// Sparkplug datatypes ferrule uses (the schema's table).
mod datatype {
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT8: u32 = 5;
    pub const UINT16: u32 = 6;
    pub const UINT32: u32 = 7;
    pub const UINT64: u32 = 8;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
    pub const BYTES: u32 = 17;
}

/// Quality codes in a metric's `Quality` property (OPC DA's, as Sparkplug
/// hosts such as Ignition read them). Only readings that are not good
/// carry one.
fn quality_code(q: Quality) -> Option<u32> {
    match q {
        Quality::Good => None,
        Quality::Uncertain => Some(64),
        Quality::Bad => Some(0),
    }
}

/// The drivers a gateway runs, with their counters (declared channels and
/// availability), as telemetry sees them.
pub type Drivers = Arc<Mutex<crate::telemetry::Live>>;

/// How the gateway appears to Sparkplug hosts (`[mqtt.sparkplug]`).
#[derive(Clone)]
pub struct SparkplugSettings {
    /// The Sparkplug group id.
    pub group_id: String,
    /// The edge node id.
    pub edge_node_id: String,
    /// The primary host whose STATE gates births and data, if any.
    pub primary_host_id: Option<String>,
    /// Where `bdSeq` is kept between runs.
    pub bd_seq_file: PathBuf,
    /// The running drivers.
    pub drivers: Drivers,
}

impl std::fmt::Debug for SparkplugSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparkplugSettings")
            .field("group_id", &self.group_id)
            .field("edge_node_id", &self.edge_node_id)
            .field("primary_host_id", &self.primary_host_id)
            .finish_non_exhaustive()
    }
}

/// A message on one of the topics the edge node subscribes to.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'t> {
    /// NCMD: a command to the node.
    NodeCommand,
    /// DCMD: a command to the named device (driver).
    DeviceCommand(&'t str),
    /// The primary host's STATE.
    State,
}

impl SparkplugSettings {
    fn node_topic(&self, kind: &str) -> String {
        format!("{NAMESPACE}/{}/{kind}/{}", self.group_id, self.edge_node_id)
    }

    /// `spBv1.0/{group}/{kind}/{edge}/{device}`.
    pub fn device_topic(&self, kind: &str, device: &str) -> String {
        format!(
            "{NAMESPACE}/{}/{kind}/{}/{device}",
            self.group_id, self.edge_node_id
        )
    }

    /// NBIRTH.
    pub fn nbirth(&self) -> String {
        self.node_topic("NBIRTH")
    }

    /// NDEATH: the MQTT will of every connection, and the last word on a
    /// clean shutdown.
    pub fn ndeath(&self) -> String {
        self.node_topic("NDEATH")
    }

    /// The filters subscribed to on every connect: NCMD, every device's
    /// DCMD, and the primary host's STATE.
    pub fn filters(&self) -> Vec<String> {
        let mut filters = vec![self.node_topic("NCMD"), self.device_topic("DCMD", "+")];
        filters.extend(self.state_topic());
        filters
    }

    /// `spBv1.0/STATE/{primary_host_id}`.
    pub fn state_topic(&self) -> Option<String> {
        self.primary_host_id
            .as_ref()
            .map(|host| format!("{NAMESPACE}/STATE/{host}"))
    }

    /// What a message on `topic` is, if it is one the node takes.
    pub fn incoming<'t>(&self, topic: &'t str) -> Option<Incoming<'t>> {
        if self.state_topic().as_deref() == Some(topic) {
            return Some(Incoming::State);
        }
        if topic == self.node_topic("NCMD") {
            return Some(Incoming::NodeCommand);
        }
        let prefix = self.device_topic("DCMD", "");
        topic
            .strip_prefix(prefix.as_str())
            .filter(|d| !d.is_empty() && !d.contains('/'))
            .map(Incoming::DeviceCommand)
    }
}

/// The `bdSeq` for the next connection: one more than the last one used
/// (kept in `path`), 255 wrapping to 0; 0 when there is none. The new
/// value is written before it is used, so a crash never makes two
/// connections share one.
pub fn next_bd_seq(path: &std::path::Path) -> u64 {
    // A number and a newline; more than that is not a bdSeq this wrote.
    let last = std::fs::File::open(path).ok().and_then(|f| {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(f, 32), &mut text).ok()?;
        text.trim().parse::<u64>().ok()
    });
    let next = match last {
        Some(n) if n < 255 => n + 1,
        _ => 0,
    };
    if let Err(e) = std::fs::write(path, format!("{next}\n")) {
        tracing::warn!(file = %path.display(), error = %e, "cannot keep the Sparkplug bdSeq; a restart may reuse it");
    }
    next
}

/// How a message's `seq` is set when it is handed to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqMark {
    /// Not a Sparkplug message, or one without a `seq` (NDEATH).
    None,
    /// NBIRTH: `seq` starts again at 0.
    Reset,
    /// DBIRTH, DDATA, DDEATH: the next `seq`.
    Next,
}

/// A message made by the node, not yet numbered.
#[derive(Debug)]
pub struct Message {
    /// Where it goes.
    pub topic: String,
    /// The payload without its `seq` (added by [`stamp`]).
    pub payload: Vec<u8>,
    /// How its `seq` is set.
    pub seq: SeqMark,
}

/// Adds the `seq` field (field 3, a varint) to an encoded payload:
/// protobuf fields may come in any order, so a payload is numbered when it
/// leaves without being encoded again. `next` is the node's counter.
pub fn stamp(payload: &mut Vec<u8>, mark: SeqMark, next: &mut u8) {
    let seq = match mark {
        SeqMark::None => return,
        SeqMark::Reset => 0,
        SeqMark::Next => *next,
    };
    payload.push(0x18);
    prost::encoding::encode_varint(u64::from(seq), payload);
    *next = seq.wrapping_add(1);
}

/// What a device metric is, as its birth declares it.
#[derive(Debug, Clone, PartialEq)]
struct Meta {
    alias: u64,
    datatype: u32,
    unit: Option<String>,
    range: Option<(f64, f64)>,
    description: Option<String>,
    writable: Option<bool>,
}

/// The datatype a value is sent as.
fn datatype_of(t: ValueType) -> u32 {
    match t {
        ValueType::Float => datatype::DOUBLE,
        ValueType::Int => datatype::INT64,
        ValueType::Bool => datatype::BOOLEAN,
        ValueType::Text => datatype::STRING,
        ValueType::Bytes => datatype::BYTES,
    }
}

fn metric_value(v: &Value) -> metric::Value {
    match v {
        Value::Float(f) => metric::Value::DoubleValue(*f),
        // Sparkplug carries Int64 in the uint64 field, two's complement.
        Value::Int(i) => metric::Value::LongValue(*i as u64),
        Value::Bool(b) => metric::Value::BooleanValue(*b),
        Value::Text(t) => metric::Value::StringValue(t.clone()),
        Value::Bytes(b) => metric::Value::BytesValue(b.clone()),
    }
}

fn property(value: property_value::Value, datatype: u32) -> PropertyValue {
    PropertyValue {
        r#type: Some(datatype),
        is_null: None,
        value: Some(value),
    }
}

fn properties(pairs: Vec<(&str, PropertyValue)>) -> Option<PropertySet> {
    if pairs.is_empty() {
        return None;
    }
    let (keys, values) = pairs.into_iter().map(|(k, v)| (k.to_string(), v)).unzip();
    Some(PropertySet { keys, values })
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

/// Why a device or node command could not be taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    /// Not a Sparkplug B payload.
    #[error("not a Sparkplug B payload: {0}")]
    Undecodable(String),
    /// A metric the device never declared.
    #[error("metric {0} is not one this device declared")]
    UnknownMetric(String),
    /// A metric the command names neither by name nor by alias.
    #[error("a metric with neither name nor alias")]
    Unnamed,
    /// A value a driver cannot be written with.
    #[error("metric {0}: {1}")]
    Value(String, String),
}

/// One write a DCMD asks for: a channel and the value as a command's JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceWrite {
    /// The channel (metric name).
    pub channel: String,
    /// The value, as the command router takes it.
    pub value: serde_json::Value,
}

/// The edge node: aliases and declarations that last for the process,
/// and the state of the current connection.
pub struct Node {
    settings: SparkplugSettings,
    /// Every metric ever declared, by device, with its alias.
    aliases: HashMap<String, HashMap<String, u64>>,
    next_alias: u64,
    /// What each device's metrics are, as last declared.
    known: HashMap<String, BTreeMap<String, Meta>>,
    /// The last value sent of each metric, by alias, with its time (ms).
    last: HashMap<u64, (Value, u64)>,
    /// This connection's bdSeq.
    bd_seq: u64,
    /// Devices born on this connection, with the metrics their birth named.
    born: HashMap<String, HashSet<String>>,
    /// When this connection's NBIRTH was made; 0 before.
    born_ns: u64,
    /// Whether births went out on this connection (the primary host, if
    /// any, is online).
    ready: bool,
    /// The newest STATE timestamp taken from the primary host.
    host_ts: u64,
    /// The next `seq`.
    pub next_seq: u8,
}

impl Node {
    /// A node with nothing declared yet.
    pub fn new(settings: SparkplugSettings) -> Node {
        Node {
            settings,
            aliases: HashMap::new(),
            next_alias: 1,
            known: HashMap::new(),
            last: HashMap::new(),
            bd_seq: 0,
            born: HashMap::new(),
            born_ns: 0,
            ready: false,
            host_ts: 0,
            next_seq: 0,
        }
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &SparkplugSettings {
        &self.settings
    }

    /// A new connection: takes the next bdSeq and forgets what was born.
    /// Returns the will (NDEATH topic and payload) for its CONNECT.
    pub fn connecting(&mut self) -> (String, Vec<u8>) {
        self.bd_seq = next_bd_seq(&self.settings.bd_seq_file);
        self.born.clear();
        self.born_ns = 0;
        self.ready = false;
        self.host_ts = 0;
        (self.settings.ndeath(), self.ndeath_payload())
    }

    /// NDEATH: the bdSeq of this connection, no `seq`.
    pub fn ndeath_payload(&self) -> Vec<u8> {
        proto::Payload {
            timestamp: Some(crate::reading::now_ms()),
            metrics: vec![self.bd_seq_metric()],
            ..proto::Payload::default()
        }
        .encode_to_vec()
    }

    /// `bdSeq`, as NBIRTH and NDEATH carry it.
    fn bd_seq_metric(&self) -> Metric {
        Metric {
            name: Some("bdSeq".to_string()),
            datatype: Some(datatype::UINT64),
            value: Some(metric::Value::LongValue(self.bd_seq)),
            ..Metric::default()
        }
    }

    /// Whether births went out on this connection.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Whether births wait for a primary host's STATE.
    pub fn waits_for_host(&self) -> bool {
        self.settings.primary_host_id.is_some()
    }

    /// NBIRTH and a DBIRTH for each driver that is not known to be
    /// unavailable: on connect, when the primary host comes online, and
    /// on a rebirth request.
    pub fn births(&mut self) -> Vec<Message> {
        let now = crate::reading::now_ns();
        self.born.clear();
        self.born_ns = now;
        self.ready = true;
        let nbirth = proto::Payload {
            timestamp: Some(ms(now)),
            metrics: vec![
                self.bd_seq_metric(),
                Metric {
                    name: Some(REBIRTH.to_string()),
                    datatype: Some(datatype::BOOLEAN),
                    value: Some(metric::Value::BooleanValue(false)),
                    ..Metric::default()
                },
                Metric {
                    name: Some("Node Info/Software".to_string()),
                    datatype: Some(datatype::STRING),
                    value: Some(metric::Value::StringValue(format!(
                        "ferrule {}",
                        env!("CARGO_PKG_VERSION")
                    ))),
                    ..Metric::default()
                },
            ],
            ..proto::Payload::default()
        };
        let mut out = vec![Message {
            topic: self.settings.nbirth(),
            payload: nbirth.encode_to_vec(),
            seq: SeqMark::Reset,
        }];
        self.take_declarations(None);
        for (name, available) in self.drivers() {
            if available != Some(false) {
                out.push(self.dbirth(&name));
            }
        }
        out
    }

    /// Each running driver's name and whether its last poll succeeded
    /// (`None` before its first).
    fn drivers(&self) -> Vec<(String, Option<bool>)> {
        let live = self
            .settings
            .drivers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        live.drivers
            .iter()
            .map(|(name, counters)| {
                let available = match counters
                    .availability
                    .load(std::sync::atomic::Ordering::Relaxed)
                {
                    crate::pipeline::AVAILABLE => Some(true),
                    crate::pipeline::UNAVAILABLE => Some(false),
                    _ => None,
                };
                (name.clone(), available)
            })
            .collect()
    }

    /// Takes what the running drivers (or only `device`) declared of their
    /// channels, so the births to come carry their units and ranges.
    fn take_declarations(&mut self, device: Option<&str>) {
        let declared: Vec<_> = {
            let live = self
                .settings
                .drivers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            live.drivers
                .iter()
                .filter(|(name, _)| device.is_none_or(|d| d == name))
                .map(|(name, counters)| {
                    let channels = counters
                        .declared
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    (name.clone(), channels)
                })
                .collect()
        };
        for (name, channels) in declared {
            for channel in channels.iter() {
                self.declare(&name, channel);
            }
        }
    }

    fn alias(&mut self, device: &str, metric: &str) -> u64 {
        if let Some(a) = self.aliases.get(device).and_then(|m| m.get(metric)) {
            return *a;
        }
        let a = self.next_alias;
        self.next_alias += 1;
        self.aliases
            .entry(device.to_string())
            .or_default()
            .insert(metric.to_string(), a);
        a
    }

    /// Takes a driver's declaration of `channel`; true when it changes
    /// what the device's birth says.
    fn declare(&mut self, device: &str, channel: &Channel) -> bool {
        let alias = self.alias(device, &channel.name);
        let meta = Meta {
            alias,
            datatype: datatype_of(channel.value_type),
            unit: channel.unit.clone(),
            range: channel.range,
            description: channel.description.clone(),
            writable: channel.declared.then_some(channel.writable),
        };
        let metas = self.known.entry(device.to_string()).or_default();
        if metas.get(&channel.name) == Some(&meta) {
            return false;
        }
        metas.insert(channel.name.clone(), meta);
        true
    }

    /// Takes what a reading says of its channel (type and unit); true when
    /// that changes what the device's birth says.
    fn learn(&mut self, device: &str, channel: &str, value: &Value, unit: Option<&str>) -> bool {
        let datatype = datatype_of(ValueType::of(value));
        if let Some(meta) = self.known.get(device).and_then(|m| m.get(channel))
            && meta.datatype == datatype
            && meta.unit.as_deref() == unit.or(meta.unit.as_deref())
        {
            return false;
        }
        let alias = self.alias(device, channel);
        let metas = self.known.entry(device.to_string()).or_default();
        let meta = metas.entry(channel.to_string()).or_insert(Meta {
            alias,
            datatype,
            unit: None,
            range: None,
            description: None,
            writable: None,
        });
        meta.datatype = datatype;
        if unit.is_some() {
            meta.unit = unit.map(str::to_string);
        }
        true
    }

    /// DBIRTH for `device`: every metric it declared or reported, with its
    /// last value (or null), and the entry sequence metric.
    fn dbirth(&mut self, device: &str) -> Message {
        let seq_alias = self.alias(device, SEQ_METRIC);
        let now = crate::reading::now_ms();
        let mut metrics = Vec::new();
        for (name, meta) in self.known.get(device).into_iter().flatten() {
            let mut props = Vec::new();
            if let Some(unit) = &meta.unit {
                props.push((
                    "engUnit",
                    property(
                        property_value::Value::StringValue(unit.clone()),
                        datatype::STRING,
                    ),
                ));
            }
            if let Some((low, high)) = meta.range {
                props.push((
                    "engLow",
                    property(property_value::Value::DoubleValue(low), datatype::DOUBLE),
                ));
                props.push((
                    "engHigh",
                    property(property_value::Value::DoubleValue(high), datatype::DOUBLE),
                ));
            }
            if let Some(text) = &meta.description {
                props.push((
                    "description",
                    property(
                        property_value::Value::StringValue(text.clone()),
                        datatype::STRING,
                    ),
                ));
            }
            if let Some(writable) = meta.writable {
                props.push((
                    "readOnly",
                    property(
                        property_value::Value::BooleanValue(!writable),
                        datatype::BOOLEAN,
                    ),
                ));
            }
            let last = self.last.get(&meta.alias);
            metrics.push(Metric {
                name: Some(name.clone()),
                alias: Some(meta.alias),
                timestamp: Some(last.map_or(now, |(_, ts)| *ts)),
                datatype: Some(meta.datatype),
                is_null: last.is_none().then_some(true),
                properties: properties(props),
                value: last.map(|(v, _)| metric_value(v)),
                ..Metric::default()
            });
        }
        metrics.push(Metric {
            name: Some(SEQ_METRIC.to_string()),
            alias: Some(seq_alias),
            timestamp: Some(now),
            datatype: Some(datatype::UINT64),
            is_null: Some(true),
            ..Metric::default()
        });
        let named = self.known.get(device).into_iter().flatten();
        self.born
            .insert(device.to_string(), named.map(|(n, _)| n.clone()).collect());
        Message {
            topic: self.settings.device_topic("DBIRTH", device),
            payload: proto::Payload {
                timestamp: Some(now),
                metrics,
                ..proto::Payload::default()
            }
            .encode_to_vec(),
            seq: SeqMark::Next,
        }
    }

    /// DDEATH for each device born on this connection whose driver stopped
    /// or whose last poll failed.
    pub fn deaths(&mut self) -> Vec<Message> {
        let drivers = self.drivers();
        let dead: Vec<String> = self
            .born
            .keys()
            .filter(|device| {
                !drivers
                    .iter()
                    .any(|(name, available)| name == *device && *available != Some(false))
            })
            .cloned()
            .collect();
        dead.into_iter()
            .map(|device| {
                self.born.remove(&device);
                Message {
                    topic: self.settings.device_topic("DDEATH", &device),
                    payload: proto::Payload {
                        timestamp: Some(crate::reading::now_ms()),
                        ..proto::Payload::default()
                    }
                    .encode_to_vec(),
                    seq: SeqMark::Next,
                }
            })
            .collect()
    }

    /// The messages for queue entry `seq` holding `batch`: a DBIRTH first
    /// when the device is not born on this connection or the batch brings
    /// a metric (or a type or unit) its birth did not declare, then DDATA
    /// that fit a packet of `packet_limit` bytes. Readings captured before this
    /// connection's births are sent `is_historical`. A reading too large
    /// for any message is left out and returned with its size.
    pub fn data(&mut self, seq: u64, batch: &Batch, packet_limit: usize) -> Data {
        let device = batch.driver.as_str();
        let topic = self.settings.device_topic("DDATA", device);
        // Room for the `seq` added when it leaves.
        let budget = super::packet::payload_budget(packet_limit, &topic).saturating_sub(3);
        // Not born, or a metric its birth did not name (a channel declared
        // since, which the node may already know of).
        let mut changed = match self.born.get(device) {
            None => true,
            Some(named) => batch.readings.iter().any(|r| !named.contains(&r.channel)),
        };
        for r in &batch.readings {
            changed |= self.learn(device, &r.channel, &r.value, r.unit.as_deref());
        }
        let mut messages = Vec::new();
        if changed {
            // Its declarations over what readings taught, so the birth
            // carries units and ranges.
            self.take_declarations(Some(device));
            messages.push(self.dbirth(device));
        }
        let historical = batch.captured_ns < self.born_ns;
        let mut metrics = Vec::with_capacity(batch.readings.len());
        for r in &batch.readings {
            let alias = self.alias(device, &r.channel);
            let ts = ms(r.ts_ns);
            let props = quality_code(r.quality)
                .map(|q| {
                    vec![(
                        "Quality",
                        property(property_value::Value::IntValue(q), datatype::INT32),
                    )]
                })
                .unwrap_or_default();
            metrics.push(Metric {
                alias: Some(alias),
                timestamp: Some(ts),
                // Sparkplug 3.0 lets data messages leave it out (SHOULD
                // NOT); with it, stateless decoders such as Eclipse Tahu's
                // JavaScript codec read the value without the birth.
                datatype: Some(datatype_of(ValueType::of(&r.value))),
                is_historical: historical.then_some(true),
                properties: properties(props),
                value: Some(metric_value(&r.value)),
                ..Metric::default()
            });
            if !historical {
                self.last.insert(alias, (r.value.clone(), ts));
            }
        }
        let seq_alias = self.alias(device, SEQ_METRIC);
        let (parts, too_large) = pack(metrics, budget, &batch.readings);
        let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
        let entry_messages = parts.len();
        for (i, mut metrics) in parts.into_iter().enumerate() {
            let split = (count > 1).then(|| {
                let part = u32::try_from(i + 1).unwrap_or(u32::MAX);
                vec![
                    (
                        "part",
                        property(property_value::Value::IntValue(part), datatype::UINT32),
                    ),
                    (
                        "parts",
                        property(property_value::Value::IntValue(count), datatype::UINT32),
                    ),
                ]
            });
            metrics.push(Metric {
                alias: Some(seq_alias),
                timestamp: Some(ms(batch.captured_ns)),
                datatype: Some(datatype::UINT64),
                is_historical: historical.then_some(true),
                properties: split.and_then(properties),
                value: Some(metric::Value::LongValue(seq)),
                ..Metric::default()
            });
            messages.push(Message {
                topic: topic.clone(),
                payload: proto::Payload {
                    timestamp: Some(ms(batch.captured_ns)),
                    metrics,
                    ..proto::Payload::default()
                }
                .encode_to_vec(),
                seq: SeqMark::Next,
            });
        }
        Data {
            messages,
            entry_messages,
            too_large,
            budget,
        }
    }

    /// A STATE message from the primary host: `Some(true)` when it came
    /// online (births are due), `Some(false)` when it went offline after
    /// being online on this connection; `None` when nothing changes (an
    /// older or malformed message, or no change).
    pub fn state(&mut self, payload: &[u8]) -> Option<bool> {
        #[derive(serde::Deserialize)]
        struct State {
            online: bool,
            #[serde(default)]
            timestamp: u64,
        }
        if payload.len() > MAX_STATE_BYTES {
            tracing::warn!(
                bytes = payload.len(),
                "Sparkplug STATE message too large; ignored"
            );
            return None;
        }
        let state: State = match serde_json::from_slice(payload) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "malformed Sparkplug STATE message ignored");
                return None;
            }
        };
        if state.timestamp < self.host_ts {
            return None;
        }
        self.host_ts = state.timestamp;
        match (state.online, self.ready) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            _ => None,
        }
    }

    /// Whether an NCMD asks for a rebirth; its other metrics are logged
    /// as not honoured.
    pub fn node_command(&self, payload: &[u8]) -> Result<bool, CommandError> {
        let p = proto::Payload::decode(payload)
            .map_err(|e| CommandError::Undecodable(e.to_string()))?;
        let mut rebirth = false;
        for m in &p.metrics {
            match (m.name.as_deref(), &m.value) {
                (Some(REBIRTH), Some(metric::Value::BooleanValue(true))) => rebirth = true,
                (name, _) => tracing::warn!(
                    metric = name.unwrap_or("(no name)"),
                    alias = m.alias,
                    "Sparkplug NCMD metric not honoured: the node takes only {REBIRTH} = true"
                ),
            }
        }
        Ok(rebirth)
    }

    /// The writes a DCMD to `device` asks for, one per metric (by name or
    /// by the alias its birth declared).
    pub fn device_command(
        &self,
        device: &str,
        payload: &[u8],
    ) -> Result<Vec<Result<DeviceWrite, CommandError>>, CommandError> {
        let p = proto::Payload::decode(payload)
            .map_err(|e| CommandError::Undecodable(e.to_string()))?;
        let metas = self.known.get(device);
        Ok(p.metrics
            .iter()
            .map(|m| {
                let (name, meta) = match (&m.name, m.alias) {
                    (Some(name), _) => (name.clone(), metas.and_then(|metas| metas.get(name))),
                    (None, Some(alias)) => metas
                        .and_then(|metas| metas.iter().find(|(_, meta)| meta.alias == alias))
                        .map(|(name, meta)| (name.clone(), Some(meta)))
                        .ok_or(CommandError::UnknownMetric(format!("alias {alias}")))?,
                    (None, None) => return Err(CommandError::Unnamed),
                };
                if name == SEQ_METRIC {
                    return Err(CommandError::Value(
                        name,
                        "set by the gateway, not writable".to_string(),
                    ));
                }
                let datatype = m.datatype.or(meta.map(|meta| meta.datatype));
                let value = command_value(datatype, m.value.as_ref())
                    .map_err(|why| CommandError::Value(name.clone(), why))?;
                Ok(DeviceWrite {
                    channel: name,
                    value,
                })
            })
            .collect())
    }
}

/// A command metric's value as the command router's JSON.
fn command_value(
    datatype: Option<u32>,
    value: Option<&metric::Value>,
) -> Result<serde_json::Value, String> {
    use datatype::*;
    use metric::Value as V;
    let Some(value) = value else {
        return Err("no value".to_string());
    };
    Ok(match (value, datatype) {
        (V::IntValue(v), Some(INT8)) => serde_json::json!(*v as u8 as i8),
        (V::IntValue(v), Some(INT16)) => serde_json::json!(*v as u16 as i16),
        (V::IntValue(v), Some(INT32)) => serde_json::json!(*v as i32),
        (V::IntValue(v), Some(UINT8 | UINT16 | UINT32) | None) => serde_json::json!(*v),
        (V::LongValue(v), Some(UINT64)) => serde_json::json!(*v),
        (V::LongValue(v), _) => serde_json::json!(*v as i64),
        (V::FloatValue(v), _) => serde_json::json!(f64::from(*v)),
        (V::DoubleValue(v), _) => serde_json::json!(*v),
        (V::BooleanValue(v), _) => serde_json::json!(*v),
        (V::StringValue(v), _) => serde_json::json!(v),
        (V::IntValue(_), Some(other)) => return Err(format!("int value for datatype {other}")),
        (V::BytesValue(_) | V::DatasetValue(_) | V::TemplateValue(_) | V::ExtensionValue(_), _) => {
            return Err("only numbers, booleans and strings can be written".to_string());
        }
    })
}

/// What one queue entry becomes.
#[derive(Debug)]
pub struct Data {
    /// A DBIRTH (when due), then the DDATA parts.
    pub messages: Vec<Message>,
    /// How many of `messages` are DDATA of the entry (acknowledged before
    /// it is deleted).
    pub entry_messages: usize,
    /// Readings left out: too large for any message (channel, bytes).
    pub too_large: Vec<(String, usize)>,
    /// The payload bytes a DDATA on its topic may take.
    pub budget: usize,
}

/// Bytes a DDATA needs besides its reading metrics: the payload's
/// timestamp and seq, and the sequence metric with part properties.
const DDATA_OVERHEAD: usize = 96;

/// Splits `metrics` into groups whose payloads fit `budget`, in order.
fn pack(
    metrics: Vec<Metric>,
    budget: usize,
    readings: &[crate::reading::Reading],
) -> (Vec<Vec<Metric>>, Vec<(String, usize)>) {
    let room = budget.saturating_sub(DDATA_OVERHEAD);
    let mut parts: Vec<Vec<Metric>> = vec![Vec::new()];
    let mut used = 0;
    let mut too_large = Vec::new();
    for (m, r) in metrics.into_iter().zip(readings) {
        let len = m.encoded_len();
        let size = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        if size > room {
            too_large.push((r.channel.clone(), size));
            continue;
        }
        if used + size > room {
            parts.push(Vec::new());
            used = 0;
        }
        used += size;
        if let Some(last) = parts.last_mut() {
            last.push(m);
        }
    }
    if parts.len() > 1 && parts.last().is_some_and(Vec::is_empty) {
        parts.pop();
    }
    (parts, too_large)
}

#[cfg(test)]
mod tests;
