//! Channels and readings as a plugin author writes them.
//!
//! On the wire (`ferrule:plugin@0.2.0`) a reading names its channel by its
//! index in the driver's channel table. Authors may do the same with a
//! [`ChannelId`] (the fast path: nothing but numbers cross to the
//! runtime), or keep writing names: the SDK maps a name to its index, and
//! declares a name it has not seen (with the reading's unit and value
//! type) in the batch that first uses it.

use std::collections::HashMap;

use crate::types::generated;
use crate::{Quality, Value, ValueType};

/// A channel declaration: what a reading's index stands for. The WIT's
/// own record; build one with [`Channel::new`] and the methods after it.
pub use generated::Channel;

impl Channel {
    /// A read-only channel called `name` whose readings carry `value_type`.
    pub fn new(name: impl Into<String>, value_type: ValueType) -> Channel {
        Channel {
            name: name.into(),
            unit: None,
            value_type,
            description: None,
            address: None,
            range: None,
            writable: false,
        }
    }

    /// With an engineering unit (`degC`, `kW`).
    pub fn unit(mut self, unit: impl Into<String>) -> Channel {
        self.unit = Some(unit.into());
        self
    }

    /// With a description for people and catalogues.
    pub fn description(mut self, text: impl Into<String>) -> Channel {
        self.description = Some(text.into());
        self
    }

    /// With where the device keeps it (`holding:40001`, `ns=2;s=Temp`).
    pub fn address(mut self, address: impl Into<String>) -> Channel {
        self.address = Some(address.into());
        self
    }

    /// With the range its values are expected in.
    pub fn range(mut self, min: f64, max: f64) -> Channel {
        self.range = Some(crate::ValueRange { min, max });
        self
    }

    /// Accepting writes (commands from the cloud).
    pub fn writable(mut self) -> Channel {
        self.writable = true;
        self
    }
}

/// A channel's index in the table: the `i`-th channel a driver declares is
/// `ChannelId::at(i)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(u32);

impl ChannelId {
    /// The channel at index `index`.
    pub const fn at(index: u32) -> ChannelId {
        ChannelId(index)
    }

    /// Its index.
    pub const fn index(self) -> u32 {
        self.0
    }
}

/// Which channel a reading belongs to: by index or by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChannelRef {
    /// An index in the table (what processors receive).
    Id(ChannelId),
    /// A name, mapped to its index by the SDK.
    Name(String),
}

impl From<ChannelId> for ChannelRef {
    fn from(id: ChannelId) -> Self {
        ChannelRef::Id(id)
    }
}

impl From<&str> for ChannelRef {
    fn from(name: &str) -> Self {
        ChannelRef::Name(name.to_string())
    }
}

impl From<String> for ChannelRef {
    fn from(name: String) -> Self {
        ChannelRef::Name(name)
    }
}

impl From<&String> for ChannelRef {
    fn from(name: &String) -> Self {
        ChannelRef::Name(name.clone())
    }
}

/// One value of one channel at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Its channel: not empty, no control characters, one reading per
    /// channel and timestamp in a batch.
    pub channel: ChannelRef,
    /// The value; of the type its channel declares.
    pub value: Value,
    /// Nanoseconds since the Unix epoch; `None` lets the runtime stamp the poll time.
    pub timestamp_ns: Option<u64>,
    /// How far it can be trusted.
    pub quality: Quality,
    /// Engineering unit. For a reading by name, used when the SDK declares
    /// the name; for one by index, a unit other than the channel's moves
    /// the reading to a channel of the same name with this unit.
    pub unit: Option<String>,
}

impl Reading {
    /// A good-quality reading without unit or timestamp.
    pub fn new(channel: impl Into<ChannelRef>, value: impl Into<Value>) -> Self {
        Reading {
            channel: channel.into(),
            value: value.into(),
            timestamp_ns: None,
            quality: Quality::Good,
            unit: None,
        }
    }

    /// The same reading with an engineering unit.
    pub fn with_unit(mut self, unit: impl Into<String>) -> Self {
        self.unit = Some(unit.into());
        self
    }

    /// The same reading with another quality.
    pub fn with_quality(mut self, quality: Quality) -> Self {
        self.quality = quality;
        self
    }

    /// The same reading taken at `timestamp_ns` (nanoseconds since the Unix
    /// epoch), e.g. a sample the device buffered.
    pub fn at(mut self, timestamp_ns: u64) -> Self {
        self.timestamp_ns = Some(timestamp_ns);
        self
    }

    /// The index, if the reading is by index.
    pub fn id(&self) -> Option<ChannelId> {
        match self.channel {
            ChannelRef::Id(id) => Some(id),
            ChannelRef::Name(_) => None,
        }
    }
}

/// The channel table as the plugin knows it: every channel of the driver
/// and of the processors before (and including) this one.
#[derive(Debug, Clone, Default)]
pub struct Channels {
    table: Vec<Channel>,
    by_name: HashMap<String, Vec<u32>>,
}

impl Channels {
    /// How many channels it holds.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The id the next channel appended will get.
    pub fn next_id(&self) -> ChannelId {
        ChannelId(u32::try_from(self.table.len()).unwrap_or(u32::MAX))
    }

    /// The channel `id` stands for.
    pub fn get(&self, id: ChannelId) -> Option<&Channel> {
        self.table.get(id.0 as usize)
    }

    /// Every channel with its id, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (ChannelId, &Channel)> {
        self.table
            .iter()
            .enumerate()
            .map(|(i, c)| (ChannelId(i as u32), c))
    }

    /// The first channel called `name`.
    pub fn id(&self, name: &str) -> Option<ChannelId> {
        self.by_name.get(name)?.first().map(|i| ChannelId(*i))
    }

    /// The channel called `name` with `unit`.
    pub fn find(&self, name: &str, unit: Option<&str>) -> Option<ChannelId> {
        self.by_name.get(name)?.iter().find_map(|&i| {
            let c = self.table.get(i as usize)?;
            (c.unit.as_deref() == unit).then_some(ChannelId(i))
        })
    }

    /// A reading's channel name.
    pub fn name<'a>(&'a self, reading: &'a Reading) -> Option<&'a str> {
        match &reading.channel {
            ChannelRef::Id(id) => self.get(*id).map(|c| c.name.as_str()),
            ChannelRef::Name(name) => Some(name),
        }
    }

    pub(crate) fn push(&mut self, channel: Channel) -> ChannelId {
        let id = self.next_id();
        self.by_name
            .entry(channel.name.clone())
            .or_default()
            .push(id.0);
        self.table.push(channel);
        id
    }

    /// The index of `reading`'s channel, declaring it into `added` when the
    /// reading names one not yet in the table.
    pub(crate) fn resolve(&mut self, reading: &Reading, added: &mut Vec<Channel>) -> u32 {
        let unit = reading.unit.as_deref();
        let name = match &reading.channel {
            ChannelRef::Id(id) => match self.get(*id) {
                Some(c) if unit.is_some() && c.unit.as_deref() != unit => c.name.clone(),
                // An index the table does not hold goes to the runtime as
                // it is; the runtime rejects and counts the reading.
                _ => return id.0,
            },
            ChannelRef::Name(name) => name.clone(),
        };
        if let Some(id) = self.find(&name, unit) {
            return id.0;
        }
        let mut channel = Channel::new(name, reading.value.value_type()).writable();
        channel.unit = reading.unit.clone();
        added.push(channel.clone());
        self.push(channel).0
    }
}

impl FromIterator<Channel> for Channels {
    fn from_iter<I: IntoIterator<Item = Channel>>(iter: I) -> Self {
        let mut channels = Channels::default();
        for c in iter {
            channels.push(c);
        }
        channels
    }
}

impl Extend<Channel> for Channels {
    fn extend<I: IntoIterator<Item = Channel>>(&mut self, iter: I) {
        for c in iter {
            self.push(c);
        }
    }
}
