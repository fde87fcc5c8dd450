//! The channel table a driver and its processors share, and the indexed
//! readings (`Sample`s) that pass between the stages of a chain.
//!
//! The table only grows and an index never changes meaning while the chain
//! lives (it is rebuilt with the chain). Entries come from three places:
//! a 0.2.0 driver's `init` and its batches' `added`, a 0.2.0 processor's
//! `init` and its batches' `added` (derived channels), and the names in
//! 0.1.0 plugins' readings, learned the first time a (name, unit) pair is
//! seen. A declared entry that breaks a rule keeps its index, so the ones
//! after it still line up, but is marked refused: its readings are
//! rejected and counted, the rest of the batch goes on.

use std::collections::HashMap;

pub use crate::reading::Sample;
use crate::reading::{ChannelJson, Value};

/// Which value case a channel's readings carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// `Value::Float`.
    Float,
    /// `Value::Int`.
    Int,
    /// `Value::Bool`.
    Bool,
    /// `Value::Text`.
    Text,
    /// `Value::Bytes`.
    Bytes,
}

impl ValueType {
    /// The case `value` is.
    pub fn of(value: &Value) -> ValueType {
        match value {
            Value::Float(_) => ValueType::Float,
            Value::Int(_) => ValueType::Int,
            Value::Bool(_) => ValueType::Bool,
            Value::Text(_) => ValueType::Text,
            Value::Bytes(_) => ValueType::Bytes,
        }
    }
}

/// One entry of a channel table.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    /// The name readings are published under.
    pub name: String,
    /// Engineering unit.
    pub unit: Option<String>,
    /// The value case its readings carry.
    pub value_type: ValueType,
    /// Whether a plugin declared it (its readings must then carry
    /// `value_type`); a channel learned from a 0.1.0 reading is not checked.
    pub declared: bool,
    /// What it is, for people and catalogues.
    pub description: Option<String>,
    /// Where the device keeps it, in the protocol's notation.
    pub address: Option<String>,
    /// Expected range, in its unit.
    pub range: Option<(f64, f64)>,
    /// Whether the driver accepts writes to it.
    pub writable: bool,
}

impl Channel {
    /// Bytes of its name, unit, description and address.
    fn text_len(&self) -> usize {
        [&self.unit, &self.description, &self.address]
            .iter()
            .map(|t| t.as_ref().map_or(0, String::len))
            .sum::<usize>()
            + self.name.len()
    }

    /// A channel learned from a 0.1.0 reading: its name, unit and the case
    /// of its first value.
    pub fn learned(name: &str, unit: Option<&str>, value: &Value) -> Channel {
        Channel {
            name: name.to_string(),
            unit: unit.map(str::to_string),
            value_type: ValueType::of(value),
            declared: false,
            description: None,
            address: None,
            range: None,
            writable: true,
        }
    }
}

/// A table entry and what the table knows about it.
#[derive(Debug, Clone)]
struct Entry {
    channel: Channel,
    /// Its readings' JSON around the value, escaped once.
    json: ChannelJson,
    /// 0 for the driver, 1.. for the processors in chain order.
    stage: usize,
    /// Why it cannot be used, if its declaration broke a rule.
    refused: Option<String>,
}

/// Why a declaration could not be taken at all (the call is refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFull {
    /// The table's limit, `max_channels`.
    pub max: usize,
}

impl std::fmt::Display for TableFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "more channels than max_channels = {}, or more than {} bytes of their names, units, descriptions and addresses",
            self.max,
            self.max.saturating_mul(TEXT_PER_CHANNEL)
        )
    }
}

/// Bytes of channel text (name, unit, description, address together) a
/// table holds per channel of `max_channels`, on average: one channel may
/// use more, but the table as a whole stays bounded however a plugin
/// spreads its declarations over its calls.
pub const TEXT_PER_CHANNEL: usize = 256;

/// One chain's channels, shared by its driver and processors.
#[derive(Debug, Clone)]
pub struct ChannelTable {
    entries: Vec<Entry>,
    /// Index by name, for learning 0.1.0 names and resolving writes.
    by_name: HashMap<String, Vec<u32>>,
    max: usize,
    max_text: usize,
    /// Bytes of channel text held, against `max * TEXT_PER_CHANNEL`.
    text_bytes: usize,
    /// Whether two entries share a name (a processor redeclared one), so
    /// the finished batch needs a by-name duplicate check.
    shared_names: bool,
}

impl ChannelTable {
    /// An empty table of at most `max` channels whose strings are at most
    /// `max_text` bytes each.
    pub fn new(max: usize, max_text: usize) -> ChannelTable {
        ChannelTable {
            entries: Vec::new(),
            by_name: HashMap::new(),
            max,
            max_text,
            text_bytes: 0,
            shared_names: false,
        }
    }

    /// Whether `channel` fits the table's limits: its count and its text.
    fn has_room(&self, channel: &Channel) -> bool {
        self.entries.len() < self.max
            && self.text_bytes.saturating_add(channel.text_len())
                <= self.max.saturating_mul(TEXT_PER_CHANNEL)
    }

    /// How many channels it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The channel at `index`.
    pub fn get(&self, index: u32) -> Option<&Channel> {
        self.entries.get(index as usize).map(|e| &e.channel)
    }

    /// The channel at `index` if readings of it may be taken (it is in the
    /// table and was not refused); [`ChannelTable::refusal`] says why not.
    pub fn usable(&self, index: u32) -> Option<&Channel> {
        match self.entries.get(index as usize) {
            Some(e) if e.refused.is_none() => Some(&e.channel),
            _ => None,
        }
    }

    /// The channels from `from` on, for a stage that has seen those before.
    pub fn since(&self, from: usize) -> impl Iterator<Item = &Channel> {
        self.entries.iter().skip(from).map(|e| &e.channel)
    }

    /// Every channel readings may be taken of, in table order (the last
    /// of a name when a processor redeclared it).
    pub fn usable_channels(&self) -> Vec<Channel> {
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<Channel> = self
            .entries
            .iter()
            .rev()
            .filter(|e| e.refused.is_none() && seen.insert(e.channel.name.as_str()))
            .map(|e| e.channel.clone())
            .collect();
        out.reverse();
        out
    }

    /// Why readings of `index` are rejected, if they are.
    pub fn refusal(&self, index: u32) -> Option<String> {
        match self.entries.get(index as usize) {
            None => Some(format!(
                "channel index {index} is not in the table ({} channels)",
                self.entries.len()
            )),
            Some(e) => e.refused.clone(),
        }
    }

    /// Whether two channels share a name.
    pub fn has_shared_names(&self) -> bool {
        self.shared_names
    }

    /// Appends the channels `stage` declares. Each gets the next index; one
    /// that breaks a rule is kept as refused (its readings will be
    /// rejected) and its reason returned with the others'.
    pub fn declare(
        &mut self,
        stage: usize,
        channels: impl IntoIterator<Item = Channel>,
    ) -> Result<Vec<String>, TableFull> {
        let mut refusals = Vec::new();
        for channel in channels {
            if !self.has_room(&channel) {
                return Err(TableFull { max: self.max });
            }
            let refused = self.declaration_problem(stage, &channel);
            if let Some(why) = &refused {
                refusals.push(why.clone());
            }
            self.push(stage, channel, refused);
        }
        Ok(refusals)
    }

    fn declaration_problem(&self, stage: usize, c: &Channel) -> Option<String> {
        let shown = shown(&c.name);
        if let Some(why) = bad_name(&c.name) {
            return Some(format!("{why} (\"{shown}\")"));
        }
        let texts = [
            ("name", Some(&c.name)),
            ("unit", c.unit.as_ref()),
            ("description", c.description.as_ref()),
            ("address", c.address.as_ref()),
        ];
        for (what, text) in texts {
            let len = text.map_or(0, String::len);
            if len > self.max_text {
                return Some(format!(
                    "{what} of {len} bytes in channel \"{shown}\", more than max_value_bytes = {}",
                    self.max_text
                ));
            }
        }
        if let Some((min, max)) = c.range
            && !matches!(
                min.partial_cmp(&max),
                Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
            )
        {
            return Some(format!(
                "channel \"{shown}\": range {min}..{max} is empty or not a number"
            ));
        }
        let same_stage = self.by_name.get(&c.name).is_some_and(|indices| {
            indices.iter().any(|i| {
                self.entries
                    .get(*i as usize)
                    .is_some_and(|e| e.stage == stage)
            })
        });
        same_stage.then(|| format!("channel \"{shown}\" declared twice"))
    }

    fn push(&mut self, stage: usize, channel: Channel, refused: Option<String>) -> u32 {
        let index = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        self.text_bytes += channel.text_len();
        if refused.is_none() {
            let indices = self.by_name.entry(channel.name.clone()).or_default();
            self.shared_names |= !indices.is_empty();
            indices.push(index);
        }
        self.entries.push(Entry {
            json: ChannelJson::new(&channel.name, channel.unit.as_deref()),
            channel,
            stage,
            refused,
        });
        index
    }

    /// The index of a 0.1.0 reading's (name, unit), learning it on first
    /// sight. `Err` says why the reading cannot be taken: a bad name, or a
    /// full table.
    pub fn learn(
        &mut self,
        stage: usize,
        name: &str,
        unit: Option<&str>,
        value: &Value,
    ) -> Result<u32, String> {
        // A declared channel of another type is not this one: a 0.1.0
        // processor that turns a declared integer into a float gets a
        // channel of its own (same name and unit, learned, unchecked).
        let kind = ValueType::of(value);
        if let Some(indices) = self.by_name.get(name) {
            for &i in indices {
                if let Some(e) = self.entries.get(i as usize)
                    && e.channel.unit.as_deref() == unit
                    && (!e.channel.declared || e.channel.value_type == kind)
                {
                    return Ok(i);
                }
            }
        }
        if let Some(why) = bad_name(name) {
            return Err(why.to_string());
        }
        let channel = Channel::learned(name, unit, value);
        if !self.has_room(&channel) {
            return Err(format!(
                "channel \"{}\" is new and the table is full ({})",
                shown(name),
                TableFull { max: self.max }
            ));
        }
        Ok(self.push(stage, channel, None))
    }

    /// The driver's channel called `name`, for a write from the cloud.
    pub fn driver_channel(&self, name: &str) -> Option<(u32, &Channel)> {
        self.by_name.get(name)?.iter().find_map(|&i| {
            let e = self.entries.get(i as usize)?;
            (e.stage == 0).then_some((i, &e.channel))
        })
    }

    /// The prepared JSON of the channel at `index`.
    pub fn json(&self, index: u32) -> Option<&ChannelJson> {
        self.entries.get(index as usize).map(|e| &e.json)
    }
}

/// Why a channel name cannot be used, if it cannot.
pub fn bad_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty channel name")
    } else if name.chars().any(char::is_control) {
        Some("control character in channel name")
    } else {
        None
    }
}

/// A short, printable form of something a plugin named, for messages.
pub fn shown(name: &str) -> String {
    name.chars().take(40).flat_map(char::escape_debug).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(name: &str, value_type: ValueType) -> Channel {
        Channel {
            declared: true,
            ..Channel::learned(name, None, &Value::Int(0))
        }
        .with_type(value_type)
    }

    impl Channel {
        fn with_type(mut self, value_type: ValueType) -> Channel {
            self.value_type = value_type;
            self
        }
    }

    #[test]
    fn a_bad_declaration_keeps_its_index_so_later_ones_line_up() {
        let mut table = ChannelTable::new(8, 16);
        let refusals = table
            .declare(
                0,
                [
                    declared("a", ValueType::Float),
                    declared("", ValueType::Float),
                    declared("a", ValueType::Int),
                    declared(&"x".repeat(17), ValueType::Int),
                    declared("b", ValueType::Bool),
                ],
            )
            .unwrap();
        assert_eq!(refusals.len(), 3, "{refusals:?}");
        assert_eq!(table.len(), 5);
        assert_eq!(table.get(4).map(|c| c.name.as_str()), Some("b"));
        assert!(table.refusal(0).is_none() && table.refusal(4).is_none());
        for i in 1..=3 {
            assert!(table.refusal(i).is_some(), "index {i}");
        }
        assert!(table.refusal(5).unwrap().contains("not in the table"));
        assert!(!table.has_shared_names());
        // A processor may redeclare a driver's name (e.g. a new unit).
        table.declare(1, [declared("a", ValueType::Float)]).unwrap();
        assert!(table.has_shared_names());
        assert_eq!(table.driver_channel("a").map(|(i, _)| i), Some(0));
    }

    #[test]
    fn learned_names_are_found_again_by_name_and_unit_and_bounded() {
        let mut table = ChannelTable::new(3, 64);
        let v = Value::Float(1.0);
        let t = table.learn(0, "t", Some("degC"), &v).unwrap();
        assert_eq!(table.learn(0, "t", Some("degC"), &v), Ok(t));
        let f = table.learn(1, "t", Some("degF"), &v).unwrap();
        assert_ne!(t, f);
        assert!(table.learn(0, "", None, &v).is_err());
        // A declared integer "n" scaled to a float by a 0.1.0 processor.
        let mut typed = ChannelTable::new(4, 64);
        typed.declare(0, [declared("n", ValueType::Int)]).unwrap();
        assert_eq!(typed.learn(1, "n", None, &Value::Int(1)), Ok(0));
        let float = typed.learn(1, "n", None, &Value::Float(1.0)).unwrap();
        assert_eq!(float, 1);
        assert_eq!(typed.learn(1, "n", None, &Value::Float(2.0)), Ok(float));
        assert!(typed.has_shared_names());
        table.learn(0, "u", None, &v).unwrap();
        let full = table.learn(0, "w", None, &v).unwrap_err();
        assert!(full.contains("max_channels = 3"), "{full}");
        assert_eq!(
            table.declare(0, [declared("z", ValueType::Int)]),
            Err(TableFull { max: 3 })
        );
        // Room for channels, but not for their text: 2 x 256 bytes in all.
        let mut wordy = ChannelTable::new(2, 1024);
        let long = |name: &str| Channel {
            description: Some("d".repeat(300)),
            ..declared(name, ValueType::Int)
        };
        assert!(wordy.declare(0, [long("a")]).is_ok());
        assert_eq!(wordy.declare(0, [long("b")]), Err(TableFull { max: 2 }));
        assert!(
            wordy
                .learn(0, &"c".repeat(300), None, &v)
                .unwrap_err()
                .contains("bytes")
        );
        assert_eq!(
            wordy.learn(0, "c", None, &v),
            Ok(1),
            "a short name still fits"
        );
    }
}
