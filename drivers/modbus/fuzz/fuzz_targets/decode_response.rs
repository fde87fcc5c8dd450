//! Arbitrary bytes as the answer to a read: the first four bytes pick the
//! request (table, count, start, transaction id), the rest is the frame.
//! Whatever arrives must decode to data or an error, never panic or hang;
//! decoded registers then go through every type and byte/word order.

#![no_main]

use ferrule_modbus::codec::{self, Data};
use ferrule_modbus::config::{DataType, Order, Table};
use ferrule_modbus::convert;
use ferrule_modbus::plan::ReadRequest;
use libfuzzer_sys::fuzz_target;

const TABLES: [Table; 4] = [Table::Holding, Table::Input, Table::Coil, Table::Discrete];
const TYPES: [DataType; 10] = [
    DataType::Bool,
    DataType::U16,
    DataType::I16,
    DataType::U32,
    DataType::I32,
    DataType::U64,
    DataType::I64,
    DataType::F32,
    DataType::F64,
    DataType::String,
];
const ORDERS: [Order; 2] = [Order::Big, Order::Little];

fuzz_target!(|data: &[u8]| {
    let [t, c, s, tr, frame @ ..] = data else {
        return;
    };
    let read = ReadRequest {
        table: TABLES[usize::from(*t % 4)],
        start: u16::from(*s),
        // 1..=255: valid counts and some the protocol does not allow.
        count: u16::from(*c).max(1),
        channels: vec![],
    };
    if let Some(header) = frame.get(..codec::HEADER_LEN) {
        let _ = codec::remaining_len(header.try_into().unwrap_or(&[0; 6]));
    }
    let Ok(pending) = codec::encode_read(1, u16::from(*tr), &read) else {
        return;
    };
    let _ = codec::decode_write(&pending, frame);
    if let Ok(Data::Words(words)) = codec::decode_read(&pending, &read, frame) {
        assert_eq!(words.len(), usize::from(read.count));
        for kind in TYPES {
            let width = usize::from(kind.words(Some(4)));
            for chunk in words.chunks(width) {
                for bo in ORDERS {
                    for wo in ORDERS {
                        let _ = convert::decode(kind, chunk, bo, wo);
                    }
                }
            }
        }
    }
});
