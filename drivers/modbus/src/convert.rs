//! Register words to values and back, for every type, byte order and word
//! order, with scale and offset.
//!
//! Words are the 16-bit registers as Modbus carries them. A value's bytes
//! are laid out most significant first after putting the words in value
//! order (`word_order`) and the bytes of each word in value order
//! (`byte_order`); "big" for both is the Modbus convention (AB CD), "little"
//! word order is the common CD AB, "little" byte order BA DC.

use ferrule_sdk::Value;

use crate::config::{Channel, DataType, Order};

/// The bytes of a value, most significant first, from its words.
fn to_bytes(words: &[u16], byte_order: Order, word_order: Order) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(words.len() * 2);
    let mut push = |w: u16| {
        let [hi, lo] = w.to_be_bytes();
        match byte_order {
            Order::Big => bytes.extend([hi, lo]),
            Order::Little => bytes.extend([lo, hi]),
        }
    };
    match word_order {
        Order::Big => words.iter().copied().for_each(&mut push),
        Order::Little => words.iter().rev().copied().for_each(&mut push),
    }
    bytes
}

/// The words of a value from its bytes, most significant first.
fn from_bytes(bytes: &[u8], byte_order: Order, word_order: Order) -> Vec<u16> {
    let mut words: Vec<u16> = bytes
        .chunks(2)
        .map(|pair| {
            let (hi, lo) = (pair[0], pair.get(1).copied().unwrap_or(0));
            match byte_order {
                Order::Big => u16::from_be_bytes([hi, lo]),
                Order::Little => u16::from_be_bytes([lo, hi]),
            }
        })
        .collect();
    if word_order == Order::Little {
        words.reverse();
    }
    words
}

fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], String> {
    bytes
        .try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", bytes.len()))
}

/// The raw value of `kind` in `words` (before scale and offset).
pub fn decode(
    kind: DataType,
    words: &[u16],
    byte_order: Order,
    word_order: Order,
) -> Result<Value, String> {
    let bytes = to_bytes(words, byte_order, word_order);
    Ok(match kind {
        DataType::Bool => Value::Boolean(words.first().is_some_and(|w| *w != 0)),
        DataType::U16 => Value::Int(i64::from(u16::from_be_bytes(array(&bytes)?))),
        DataType::I16 => Value::Int(i64::from(i16::from_be_bytes(array(&bytes)?))),
        DataType::U32 => Value::Int(i64::from(u32::from_be_bytes(array(&bytes)?))),
        DataType::I32 => Value::Int(i64::from(i32::from_be_bytes(array(&bytes)?))),
        DataType::U64 => {
            let v = u64::from_be_bytes(array(&bytes)?);
            Value::Int(i64::try_from(v).map_err(|_| format!("u64 value {v} is past i64::MAX"))?)
        }
        DataType::I64 => Value::Int(i64::from_be_bytes(array(&bytes)?)),
        DataType::F32 => Value::Float(f64::from(f32::from_be_bytes(array(&bytes)?))),
        DataType::F64 => Value::Float(f64::from_be_bytes(array(&bytes)?)),
        DataType::String => {
            let end = bytes
                .iter()
                .rposition(|b| *b != 0 && *b != b' ')
                .map_or(0, |i| i + 1);
            Value::Text(
                String::from_utf8(bytes[..end].to_vec())
                    .map_err(|_| "string registers are not valid UTF-8".to_string())?,
            )
        }
    })
}

/// The words that hold raw value `value` as `kind`; `width` registers for strings.
pub fn encode(
    kind: DataType,
    value: &Value,
    width: u16,
    byte_order: Order,
    word_order: Order,
) -> Result<Vec<u16>, String> {
    let int = |min: i128, max: i128| -> Result<i128, String> {
        let v: i128 = match value {
            Value::Int(v) => i128::from(*v),
            Value::Float(f) if f.is_finite() && f.fract() == 0.0 => *f as i128,
            Value::Float(f) => return Err(format!("{f} is not a whole number")),
            other => return Err(format!("expected a number, got {other:?}")),
        };
        if v < min || v > max {
            return Err(format!("{v} is out of range {min}..={max} for {kind:?}"));
        }
        Ok(v)
    };
    let float = || -> Result<f64, String> {
        value
            .as_f64()
            .ok_or_else(|| format!("expected a number, got {value:?}"))
    };
    let bytes: Vec<u8> = match kind {
        DataType::Bool => match value {
            Value::Boolean(b) => return Ok(vec![u16::from(*b)]),
            Value::Int(v @ (0 | 1)) => return Ok(vec![*v as u16]),
            other => return Err(format!("expected true or false, got {other:?}")),
        },
        DataType::U16 => (int(0, 0xFFFF)? as u16).to_be_bytes().to_vec(),
        DataType::I16 => (int(-0x8000, 0x7FFF)? as i16).to_be_bytes().to_vec(),
        DataType::U32 => (int(0, i128::from(u32::MAX))? as u32)
            .to_be_bytes()
            .to_vec(),
        DataType::I32 => (int(i128::from(i32::MIN), i128::from(i32::MAX))? as i32)
            .to_be_bytes()
            .to_vec(),
        DataType::U64 => (int(0, i128::from(u64::MAX))? as u64)
            .to_be_bytes()
            .to_vec(),
        DataType::I64 => (int(i128::from(i64::MIN), i128::from(i64::MAX))? as i64)
            .to_be_bytes()
            .to_vec(),
        DataType::F32 => (float()? as f32).to_be_bytes().to_vec(),
        DataType::F64 => float()?.to_be_bytes().to_vec(),
        DataType::String => {
            let Value::Text(text) = value else {
                return Err(format!("expected text, got {value:?}"));
            };
            let room = usize::from(width) * 2;
            if text.len() > room {
                return Err(format!("{} bytes do not fit {width} registers", text.len()));
            }
            let mut bytes = text.as_bytes().to_vec();
            bytes.resize(room, 0);
            bytes
        }
    };
    Ok(from_bytes(&bytes, byte_order, word_order))
}

/// A channel's reported value from its raw value: `raw * scale + offset`.
/// Integers stay integers when scale is 1 and offset 0.
pub fn scaled(channel: &Channel, raw: Value) -> Value {
    if channel.scale == 1.0 && channel.offset == 0.0 {
        return raw;
    }
    match raw.as_f64() {
        Some(v) => Value::Float(v * channel.scale + channel.offset),
        None => raw,
    }
}

/// The raw value to write for a reported value: `(value - offset) / scale`.
pub fn unscaled(channel: &Channel, value: Value) -> Value {
    if channel.scale == 1.0 && channel.offset == 0.0 {
        return value;
    }
    match value.as_f64() {
        Some(v) => {
            let raw = (v - channel.offset) / channel.scale;
            let kind = channel.data_type();
            if matches!(kind, DataType::F32 | DataType::F64) {
                Value::Float(raw)
            } else {
                Value::Float(raw.round())
            }
        }
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ORDERS: [Order; 2] = [Order::Big, Order::Little];

    #[test]
    fn known_layouts() {
        // 0x12345678 as AB CD (big/big), CD AB (word little), BA DC (byte little).
        let v = Value::Int(0x1234_5678);
        let be = encode(DataType::U32, &v, 2, Order::Big, Order::Big).unwrap();
        assert_eq!(be, [0x1234, 0x5678]);
        let cdab = encode(DataType::U32, &v, 2, Order::Big, Order::Little).unwrap();
        assert_eq!(cdab, [0x5678, 0x1234]);
        let badc = encode(DataType::U32, &v, 2, Order::Little, Order::Big).unwrap();
        assert_eq!(badc, [0x3412, 0x7856]);
        assert_eq!(
            decode(DataType::F32, &[0x4120, 0x0000], Order::Big, Order::Big).unwrap(),
            Value::Float(10.0)
        );
        assert_eq!(
            decode(DataType::I16, &[0xFFFE], Order::Big, Order::Big).unwrap(),
            Value::Int(-2)
        );
        assert_eq!(
            decode(DataType::String, &[0x4142, 0x4300], Order::Big, Order::Big).unwrap(),
            Value::Text("ABC".into())
        );
    }

    #[test]
    fn out_of_range_and_wrong_types_are_refused() {
        let e = encode(DataType::U16, &Value::Int(70000), 1, Order::Big, Order::Big);
        assert!(e.unwrap_err().contains("out of range"));
        let e = encode(
            DataType::I16,
            &Value::Text("x".into()),
            1,
            Order::Big,
            Order::Big,
        );
        assert!(e.unwrap_err().contains("expected a number"));
        let e = encode(
            DataType::Bool,
            &Value::Float(0.5),
            1,
            Order::Big,
            Order::Big,
        );
        assert!(e.unwrap_err().contains("true or false"));
        let e = encode(
            DataType::String,
            &Value::Text("toolong".into()),
            2,
            Order::Big,
            Order::Big,
        );
        assert!(e.unwrap_err().contains("do not fit"));
    }

    fn round_trip(kind: DataType, value: Value, width: u16) -> Result<(), TestCaseError> {
        for bo in ORDERS {
            for wo in ORDERS {
                let words = encode(kind, &value, width, bo, wo)
                    .map_err(|e| TestCaseError::fail(format!("{kind:?}: {e}")))?;
                prop_assert_eq!(words.len(), usize::from(kind.words(Some(width))));
                let back = decode(kind, &words, bo, wo)
                    .map_err(|e| TestCaseError::fail(format!("{kind:?}: {e}")))?;
                prop_assert_eq!(
                    &back,
                    &value,
                    "{:?} {:?} {:?} words {:?}",
                    kind,
                    bo,
                    wo,
                    words
                );
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn integers_round_trip(v in any::<i64>(), u in any::<u64>()) {
            round_trip(DataType::U16, Value::Int(i64::from(v as u16)), 1)?;
            round_trip(DataType::I16, Value::Int(i64::from(v as i16)), 1)?;
            round_trip(DataType::U32, Value::Int(i64::from(v as u32)), 2)?;
            round_trip(DataType::I32, Value::Int(i64::from(v as i32)), 2)?;
            round_trip(DataType::I64, Value::Int(v), 4)?;
            let expected = i64::try_from(u).map_or(Value::Float(u as f64), Value::Int);
            if let Value::Int(_) = expected {
                round_trip(DataType::U64, expected, 4)?;
            }
        }

        #[test]
        fn floats_round_trip(f in any::<f32>().prop_filter("finite", |f| f.is_finite()), d in any::<f64>().prop_filter("finite", |d| d.is_finite())) {
            round_trip(DataType::F32, Value::Float(f64::from(f)), 2)?;
            round_trip(DataType::F64, Value::Float(d), 4)?;
        }

        #[test]
        fn bools_and_strings_round_trip(b in any::<bool>(), s in "[ -~]{0,20}", extra in 0u16..4) {
            round_trip(DataType::Bool, Value::Boolean(b), 1)?;
            // Trailing spaces and NULs are padding, so they do not survive.
            let s = s.trim_end().to_string();
            let width = (s.len() as u16).div_ceil(2) + extra;
            if width > 0 {
                round_trip(DataType::String, Value::Text(s), width)?;
            }
        }

        #[test]
        fn decoding_any_words_never_panics(words in proptest::collection::vec(any::<u16>(), 0..6)) {
            for kind in [DataType::Bool, DataType::U16, DataType::I16, DataType::U32, DataType::I32, DataType::U64, DataType::I64, DataType::F32, DataType::F64, DataType::String] {
                for bo in ORDERS {
                    for wo in ORDERS {
                        let _ = decode(kind, &words, bo, wo);
                    }
                }
            }
        }
    }
}
