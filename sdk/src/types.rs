//! The data types a plugin works with, free of any binding-generator types.

/// One measured value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A 64-bit float (NaN and the infinities are kept).
    Float(f64),
    /// A signed 64-bit integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// UTF-8 text, at most `max_value_bytes`.
    Text(String),
    /// Raw bytes, at most `max_value_bytes`.
    Bytes(Vec<u8>),
}

impl Value {
    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<f32> for Value {
    fn from(v: f32) -> Self {
        Value::Float(f64::from(v))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}

/// How far a reading can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quality {
    /// Measured and valid (the default).
    #[default]
    Good,
    /// Measured, but possibly off: stale, out of range, estimated.
    Uncertain,
    /// Not valid: the read failed or the value cannot be used.
    Bad,
}

/// One value of one channel at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The channel's name: not empty, no control characters, one reading
    /// per channel and timestamp in a batch.
    pub channel: String,
    /// The value.
    pub value: Value,
    /// Nanoseconds since the Unix epoch; `None` lets the runtime stamp the poll time.
    pub timestamp_ns: Option<u64>,
    /// How far it can be trusted.
    pub quality: Quality,
    /// Engineering unit (`degC`, `kW`), if any.
    pub unit: Option<String>,
}

impl Reading {
    /// A good-quality reading without unit or timestamp.
    pub fn new(channel: impl Into<String>, value: impl Into<Value>) -> Self {
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
}

/// What a driver knows about its device.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceStatus {
    /// Whether the driver reaches its device.
    pub connected: bool,
    /// The device's firmware version, if it reports one.
    pub firmware: Option<String>,
    /// Battery charge, 0 to 100.
    pub battery_percent: Option<u8>,
    /// Link or communication quality, 0 to 100.
    pub signal_quality: Option<u8>,
    /// Further device-specific pairs (at most `max_status_entries`).
    pub extra: Vec<(String, String)>,
}

impl DeviceStatus {
    /// A device that answers, with nothing more to say.
    pub fn connected() -> Self {
        DeviceStatus {
            connected: true,
            ..DeviceStatus::default()
        }
    }

    /// A device that does not answer.
    pub fn disconnected() -> Self {
        DeviceStatus::default()
    }
}

/// Why a plugin call failed; the runtime logs and counts each kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The configuration is wrong; say what and where.
    InvalidConfig(String),
    /// The device cannot be reached right now.
    Unavailable(String),
    /// The device did not answer in time.
    Timeout(String),
    /// The device answered something the plugin could not understand.
    Protocol(String),
    /// Not supported by this plugin or channel.
    Unsupported(String),
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            Error::Unavailable(m) => write!(f, "unavailable: {m}"),
            Error::Timeout(m) => write!(f, "timeout: {m}"),
            Error::Protocol(m) => write!(f, "protocol error: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported: {m}"),
            Error::Other(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}
