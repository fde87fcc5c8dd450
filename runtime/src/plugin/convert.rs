//! Between the generated WIT types of each ABI version and the runtime's
//! own. The types both versions share (value, quality, device status,
//! error) have the same shape, so one macro writes their conversions for
//! each version; what differs (readings, channels) is written out below.

use super::bindings::{v0_1, v0_2};
use super::channels::{Channel, ValueType};
use super::instance::DeviceStatus;

macro_rules! shared_conversions {
    ($wt:path) => {
        use $wt as wt;

        use crate::reading::{Quality, Value};

        pub fn value(v: wt::Value) -> Value {
            match v {
                wt::Value::Float(v) => Value::Float(v),
                wt::Value::Int(v) => Value::Int(v),
                wt::Value::Boolean(v) => Value::Bool(v),
                wt::Value::Text(v) => Value::Text(v),
                wt::Value::Bytes(v) => Value::Bytes(v),
            }
        }

        pub fn to_value(v: Value) -> wt::Value {
            match v {
                Value::Float(v) => wt::Value::Float(v),
                Value::Int(v) => wt::Value::Int(v),
                Value::Bool(v) => wt::Value::Boolean(v),
                Value::Text(v) => wt::Value::Text(v),
                Value::Bytes(v) => wt::Value::Bytes(v),
            }
        }

        pub fn quality(q: wt::Quality) -> Quality {
            match q {
                wt::Quality::Good => Quality::Good,
                wt::Quality::Uncertain => Quality::Uncertain,
                wt::Quality::Bad => Quality::Bad,
            }
        }

        pub fn to_quality(q: Quality) -> wt::Quality {
            match q {
                Quality::Good => wt::Quality::Good,
                Quality::Uncertain => wt::Quality::Uncertain,
                Quality::Bad => wt::Quality::Bad,
            }
        }

        /// A plugin's error as the message the runtime logs.
        pub fn error_message(e: wt::Error) -> String {
            match e {
                wt::Error::InvalidConfig(m) => format!("invalid config: {m}"),
                wt::Error::Unavailable(m) => format!("device unavailable: {m}"),
                wt::Error::Timeout(m) => format!("device timeout: {m}"),
                wt::Error::Protocol(m) => format!("protocol error: {m}"),
                wt::Error::Unsupported(m) => format!("unsupported: {m}"),
                wt::Error::Other(m) => m,
            }
        }

        /// A device status as the plugin gave it (not yet checked).
        pub fn status(s: wt::DeviceStatus) -> super::DeviceStatus {
            super::DeviceStatus {
                connected: s.connected,
                firmware: s.firmware,
                battery_percent: s.battery_percent,
                signal_quality: s.signal_quality,
                extra: s.extra,
            }
        }
    };
}

/// `ferrule:plugin@0.1.0`.
pub mod v1 {
    shared_conversions!(super::v0_1::types);
}

/// `ferrule:plugin@0.2.0`.
pub mod v2 {
    shared_conversions!(super::v0_2::types);
}

/// A channel a 0.2.0 plugin declared.
pub fn channel(c: v0_2::types::Channel) -> Channel {
    use v0_2::types::ValueType as T;
    Channel {
        name: c.name,
        unit: c.unit,
        value_type: match c.value_type {
            T::Float => ValueType::Float,
            T::Int => ValueType::Int,
            T::Boolean => ValueType::Bool,
            T::Text => ValueType::Text,
            T::Bytes => ValueType::Bytes,
        },
        declared: true,
        description: c.description,
        address: c.address,
        range: c.range.map(|r| (r.min, r.max)),
        writable: c.writable,
    }
}

/// A table entry as a 0.2.0 processor sees it.
pub fn to_channel(c: &Channel) -> v0_2::types::Channel {
    use v0_2::types::ValueType as T;
    v0_2::types::Channel {
        name: c.name.clone(),
        unit: c.unit.clone(),
        value_type: match c.value_type {
            ValueType::Float => T::Float,
            ValueType::Int => T::Int,
            ValueType::Bool => T::Boolean,
            ValueType::Text => T::Text,
            ValueType::Bytes => T::Bytes,
        },
        description: c.description.clone(),
        address: c.address.clone(),
        range: c
            .range
            .map(|(min, max)| v0_2::types::ValueRange { min, max }),
        writable: c.writable,
    }
}
