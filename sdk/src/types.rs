//! The data types a plugin works with. `Value`, `Quality`, `ValueType`,
//! `DeviceStatus` and `Error` are the WIT's own types, generated once here
//! (every plugin's glue reuses them), with the conversions and
//! constructors that make them pleasant to use.

#[allow(missing_docs, clippy::all)]
mod wit {
    ferrule_sdk_macros::__sdk_types!();
}

pub use wit::ferrule::plugin::types::{DeviceStatus, Error, Quality, Value, ValueRange, ValueType};

/// The generated types module, for the glue `#[driver]` and `#[processor]` write.
#[doc(hidden)]
pub use wit::ferrule::plugin::types as generated;

impl Value {
    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    /// Which case it is.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::Float(_) => ValueType::Float,
            Value::Int(_) => ValueType::Int,
            Value::Boolean(_) => ValueType::Boolean,
            Value::Text(_) => ValueType::Text,
            Value::Bytes(_) => ValueType::Bytes,
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $case:ident),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::$case(v.into())
            }
        })*
    };
}

value_from! {
    f64 => Float,
    f32 => Float,
    i64 => Int,
    i32 => Int,
    i16 => Int,
    i8 => Int,
    u32 => Int,
    u16 => Int,
    u8 => Int,
    bool => Boolean,
    String => Text,
    &str => Text,
    Vec<u8> => Bytes,
}

#[allow(clippy::derivable_impls)]
impl Default for Quality {
    fn default() -> Self {
        Quality::Good
    }
}

impl Default for DeviceStatus {
    fn default() -> Self {
        DeviceStatus::disconnected()
    }
}

impl DeviceStatus {
    /// A device that answers, with nothing more to say.
    pub fn connected() -> Self {
        DeviceStatus {
            connected: true,
            ..DeviceStatus::disconnected()
        }
    }

    /// A device that does not answer.
    pub fn disconnected() -> Self {
        DeviceStatus {
            connected: false,
            firmware: None,
            battery_percent: None,
            signal_quality: None,
            extra: Vec::new(),
        }
    }
}

impl Error {
    /// The message, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidConfig(m)
            | Error::Unavailable(m)
            | Error::Timeout(m)
            | Error::Protocol(m)
            | Error::Unsupported(m)
            | Error::Other(m) => m,
        }
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::Other(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error::Other(message.to_string())
    }
}

/// A config that does not parse is the author's `InvalidConfig`.
impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::InvalidConfig(e.to_string())
    }
}

/// I/O errors map to what they most often mean for a device link.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::TimedOut | K::WouldBlock => Error::Timeout(e.to_string()),
            K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::AddrNotAvailable
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::UnexpectedEof => Error::Unavailable(e.to_string()),
            K::InvalidData => Error::Protocol(e.to_string()),
            _ => Error::Other(e.to_string()),
        }
    }
}

impl From<std::num::ParseIntError> for Error {
    fn from(e: std::num::ParseIntError) -> Self {
        Error::Protocol(e.to_string())
    }
}

impl From<std::num::ParseFloatError> for Error {
    fn from(e: std::num::ParseFloatError) -> Self {
        Error::Protocol(e.to_string())
    }
}

impl From<std::str::Utf8Error> for Error {
    fn from(e: std::str::Utf8Error) -> Self {
        Error::Protocol(e.to_string())
    }
}

impl From<std::string::FromUtf8Error> for Error {
    fn from(e: std::string::FromUtf8Error) -> Self {
        Error::Protocol(e.to_string())
    }
}
