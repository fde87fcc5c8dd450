//! Modbus TCP frames. Requests are generated and responses parsed by
//! rmodbus (sans-I/O); this module adds the MBAP framing checks rmodbus
//! leaves to the caller (frame length up to the protocol's 260 bytes,
//! transaction id) and turns every failure into a [`ResponseError`].
//!
//! [`decode_read`] is the decoding path the fuzz target drives: any bytes
//! give a value or an error, never a panic.

use rmodbus::ErrorKind;
use rmodbus::client::ModbusRequest;

use crate::config::Table;
use crate::plan::ReadRequest;

/// The MBAP header: transaction id, protocol id, length.
pub const HEADER_LEN: usize = 6;
/// The longest Modbus TCP frame (MBAP header + unit id + 253-byte PDU).
pub const MAX_FRAME: usize = 260;

/// What a response can be instead of the data asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseError {
    /// The device answered with a Modbus exception.
    Exception(String),
    /// The answer belongs to another request (a late reply to one that
    /// timed out): the stream is out of step.
    TransactionMismatch { expected: u16, got: u16 },
    /// Not a well-formed answer to the request.
    Malformed(String),
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseError::Exception(e) => write!(f, "device exception: {e}"),
            ResponseError::TransactionMismatch { expected, got } => {
                write!(f, "transaction id {got} in the answer, expected {expected}")
            }
            ResponseError::Malformed(m) => write!(f, "malformed answer: {m}"),
        }
    }
}

fn rmodbus_error(e: ErrorKind) -> ResponseError {
    match e {
        ErrorKind::FrameBroken
        | ErrorKind::FrameCRCError
        | ErrorKind::OOB
        | ErrorKind::OOBContext
        | ErrorKind::Utf8Error
        | ErrorKind::ReadCallOnWriteFrame
        | ErrorKind::WriteCallOnReadFrame => ResponseError::Malformed(format!("{e:?}")),
        exception => ResponseError::Exception(format!("{exception:?}")),
    }
}

/// The data of a read response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// A request in flight: the frame to send and what parses its answer.
pub struct Pending {
    request: ModbusRequest,
    pub frame: Vec<u8>,
}

impl Pending {
    pub fn transaction(&self) -> u16 {
        self.request.tr_id
    }
}

fn pending(unit: u8, tr_id: u16) -> ModbusRequest {
    ModbusRequest::new_tcp_udp(unit, tr_id)
}

/// The frame for a read request.
pub fn encode_read(unit: u8, tr_id: u16, read: &ReadRequest) -> Result<Pending, ResponseError> {
    let mut request = pending(unit, tr_id);
    let mut frame = Vec::with_capacity(12);
    match read.table {
        Table::Holding => request.generate_get_holdings(read.start, read.count, &mut frame),
        Table::Input => request.generate_get_inputs(read.start, read.count, &mut frame),
        Table::Coil => request.generate_get_coils(read.start, read.count, &mut frame),
        Table::Discrete => request.generate_get_discretes(read.start, read.count, &mut frame),
    }
    .map_err(rmodbus_error)?;
    Ok(Pending { request, frame })
}

/// The frame writing `words` to holding registers from `start`.
pub fn encode_write_registers(
    unit: u8,
    tr_id: u16,
    start: u16,
    words: &[u16],
) -> Result<Pending, ResponseError> {
    let mut request = pending(unit, tr_id);
    let mut frame = Vec::with_capacity(12 + words.len() * 2);
    match words {
        [one] => request.generate_set_holding(start, *one, &mut frame),
        many => request.generate_set_holdings_bulk(start, many, &mut frame),
    }
    .map_err(rmodbus_error)?;
    Ok(Pending { request, frame })
}

/// The frame writing one coil.
pub fn encode_write_coil(
    unit: u8,
    tr_id: u16,
    address: u16,
    on: bool,
) -> Result<Pending, ResponseError> {
    let mut request = pending(unit, tr_id);
    let mut frame = Vec::with_capacity(12);
    request
        .generate_set_coil(address, on, &mut frame)
        .map_err(rmodbus_error)?;
    Ok(Pending { request, frame })
}

/// The length of the rest of a frame (after the MBAP header), checked.
pub fn remaining_len(header: &[u8; HEADER_LEN]) -> Result<usize, ResponseError> {
    let protocol = u16::from_be_bytes([header[2], header[3]]);
    if protocol != 0 {
        return Err(ResponseError::Malformed(format!(
            "protocol id {protocol}, expected 0"
        )));
    }
    let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    if !(2..=MAX_FRAME - HEADER_LEN).contains(&len) {
        return Err(ResponseError::Malformed(format!(
            "frame length {len} out of range 2..=254"
        )));
    }
    Ok(len)
}

/// Checks a whole frame's transaction id against `pending`'s.
fn check_transaction(pending: &Pending, frame: &[u8]) -> Result<(), ResponseError> {
    if frame.len() < HEADER_LEN + 2 {
        return Err(ResponseError::Malformed(format!(
            "{} bytes is too short for a response",
            frame.len()
        )));
    }
    let got = u16::from_be_bytes([frame[0], frame[1]]);
    if got != pending.transaction() {
        return Err(ResponseError::TransactionMismatch {
            expected: pending.transaction(),
            got,
        });
    }
    Ok(())
}

/// Decodes the answer to a read: exactly `read.count` registers or bits.
pub fn decode_read(
    pending: &Pending,
    read: &ReadRequest,
    frame: &[u8],
) -> Result<Data, ResponseError> {
    check_transaction(pending, frame)?;
    // Exceptions, another unit or function, a frame rmodbus cannot read.
    pending.request.parse_ok(frame).map_err(rmodbus_error)?;
    let want = usize::from(read.count);
    let data_len = if read.table.is_bits() {
        want.div_ceil(8)
    } else {
        want * 2
    };
    // Byte count and frame length must match what was asked for exactly.
    let byte_count = frame.get(HEADER_LEN + 2).copied().map(usize::from);
    if byte_count != Some(data_len) || frame.len() != HEADER_LEN + 3 + data_len {
        return Err(ResponseError::Malformed(format!(
            "{} data bytes (byte count {byte_count:?}) for {want} {}",
            frame.len().saturating_sub(HEADER_LEN + 3),
            if read.table.is_bits() {
                "bits"
            } else {
                "registers"
            }
        )));
    }
    if read.table.is_bits() {
        let mut bits: Vec<bool> = Vec::with_capacity(want);
        pending
            .request
            .parse_bool(frame, &mut bits)
            .map_err(rmodbus_error)?;
        bits.truncate(want);
        if bits.len() != want {
            return Err(ResponseError::Malformed(format!(
                "{} bits, asked for {want}",
                bits.len()
            )));
        }
        Ok(Data::Bits(bits))
    } else {
        let mut words: Vec<u16> = Vec::with_capacity(want);
        pending
            .request
            .parse_u16(frame, &mut words)
            .map_err(rmodbus_error)?;
        if words.len() != want {
            return Err(ResponseError::Malformed(format!(
                "{} registers, asked for {want}",
                words.len()
            )));
        }
        Ok(Data::Words(words))
    }
}

/// Checks the answer to a write.
pub fn decode_write(pending: &Pending, frame: &[u8]) -> Result<(), ResponseError> {
    check_transaction(pending, frame)?;
    pending.request.parse_ok(frame).map_err(rmodbus_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(table: Table, start: u16, count: u16) -> ReadRequest {
        ReadRequest {
            table,
            start,
            count,
            channels: vec![],
        }
    }

    fn response(tr_id: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut f = tr_id.to_be_bytes().to_vec();
        f.extend([0, 0]);
        f.extend(((pdu.len() + 1) as u16).to_be_bytes());
        f.push(unit);
        f.extend(pdu);
        f
    }

    #[test]
    fn a_read_of_registers_round_trips() {
        let r = read(Table::Holding, 10, 2);
        let p = encode_read(1, 7, &r).unwrap();
        assert_eq!(p.frame, [0, 7, 0, 0, 0, 6, 1, 3, 0, 10, 0, 2]);
        let f = response(7, 1, &[3, 4, 0x12, 0x34, 0xAB, 0xCD]);
        assert_eq!(
            decode_read(&p, &r, &f).unwrap(),
            Data::Words(vec![0x1234, 0xABCD])
        );
    }

    #[test]
    fn exceptions_mismatches_and_short_answers_are_told_apart() {
        let r = read(Table::Holding, 0, 2);
        let p = encode_read(1, 9, &r).unwrap();
        let ex = response(9, 1, &[0x83, 0x02]);
        assert_eq!(
            decode_read(&p, &r, &ex),
            Err(ResponseError::Exception("IllegalDataAddress".into()))
        );
        let other = response(8, 1, &[3, 4, 0, 1, 0, 2]);
        assert_eq!(
            decode_read(&p, &r, &other),
            Err(ResponseError::TransactionMismatch {
                expected: 9,
                got: 8
            })
        );
        let short = response(9, 1, &[3, 2, 0, 1]);
        assert!(matches!(
            decode_read(&p, &r, &short),
            Err(ResponseError::Malformed(_))
        ));
    }

    #[test]
    fn a_read_of_bits_round_trips() {
        let r = read(Table::Coil, 0, 10);
        let p = encode_read(1, 1, &r).unwrap();
        let f = response(1, 1, &[1, 2, 0b0000_0101, 0b0000_0010]);
        let Data::Bits(bits) = decode_read(&p, &r, &f).unwrap() else {
            panic!("bits expected");
        };
        assert_eq!(
            bits,
            [
                true, false, true, false, false, false, false, false, false, true
            ]
        );
    }

    #[test]
    fn header_lengths_are_bounded() {
        assert_eq!(remaining_len(&[0, 1, 0, 0, 0, 6]), Ok(6));
        assert!(remaining_len(&[0, 1, 0, 0, 1, 0]).is_err());
        assert!(remaining_len(&[0, 1, 0, 1, 0, 6]).is_err());
        assert!(remaining_len(&[0, 1, 0, 0, 0, 1]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_to_data_or_an_error(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            table in 0usize..4,
            count in 1u16..130,
        ) {
            let tables = [Table::Holding, Table::Input, Table::Coil, Table::Discrete];
            let r = read(tables[table], 0, count);
            let p = encode_read(1, u16::from_be_bytes([bytes.first().copied().unwrap_or(0), bytes.get(1).copied().unwrap_or(0)]), &r).unwrap();
            let _ = decode_read(&p, &r, &bytes);
            let _ = decode_write(&p, &bytes);
        }
    }
}
