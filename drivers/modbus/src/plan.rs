//! Coalescing: the channels of a register map grouped into as few read
//! requests as the protocol allows (at most 125 registers or 2,000 bits
//! each), bridging gaps of up to `max_gap` unused addresses.

use crate::config::{Channel, Table};

/// One read request and the channels it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub table: Table,
    pub start: u16,
    /// Registers or bits.
    pub count: u16,
    /// Indices into the channel list.
    pub channels: Vec<usize>,
}

/// The read requests for `channels`, ordered by table and address.
pub fn plan(channels: &[Channel], max_gap: u16) -> Vec<ReadRequest> {
    let mut order: Vec<usize> = (0..channels.len()).collect();
    order.sort_by_key(|&i| (channels[i].table, channels[i].address));
    let mut requests: Vec<ReadRequest> = Vec::new();
    for i in order {
        let c = &channels[i];
        let (start, end) = (
            u32::from(c.address),
            u32::from(c.address) + u32::from(c.width()),
        );
        if let Some(last) = requests.last_mut() {
            let last_end = u32::from(last.start) + u32::from(last.count);
            let new_end = last_end.max(end);
            let fits = new_end - u32::from(last.start) <= u32::from(c.table.max_per_request());
            let near = start <= last_end + u32::from(max_gap);
            if last.table == c.table && near && fits {
                last.count = (new_end - u32::from(last.start)) as u16;
                last.channels.push(i);
                continue;
            }
        }
        requests.push(ReadRequest {
            table: c.table,
            start: c.address,
            count: (end - start) as u16,
            channels: vec![i],
        });
    }
    requests
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DataType, Order};

    fn channel(table: Table, address: u16, kind: DataType) -> Channel {
        Channel {
            name: format!("{}-{address}", table.as_str()),
            table,
            address,
            kind: Some(kind),
            byte_order: Order::Big,
            word_order: Order::Big,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            length: None,
        }
    }

    #[test]
    fn five_hundred_contiguous_registers_take_four_requests() {
        let channels: Vec<Channel> = (0..500)
            .map(|a| channel(Table::Holding, a, DataType::U16))
            .collect();
        let p = plan(&channels, 0);
        assert_eq!(
            p.iter().map(|r| (r.start, r.count)).collect::<Vec<_>>(),
            [(0, 125), (125, 125), (250, 125), (375, 125)]
        );
    }

    #[test]
    fn small_gaps_are_bridged_large_ones_split_and_tables_never_mix() {
        let channels = vec![
            channel(Table::Holding, 0, DataType::U32),
            channel(Table::Holding, 10, DataType::F32),
            channel(Table::Holding, 100, DataType::U16),
            channel(Table::Input, 0, DataType::U16),
            channel(Table::Coil, 0, DataType::Bool),
            channel(Table::Coil, 1999, DataType::Bool),
            channel(Table::Coil, 2000, DataType::Bool),
        ];
        let p = plan(&channels, 16);
        let shape: Vec<(Table, u16, u16, usize)> = p
            .iter()
            .map(|r| (r.table, r.start, r.count, r.channels.len()))
            .collect();
        assert_eq!(
            shape,
            [
                (Table::Holding, 0, 12, 2),
                (Table::Holding, 100, 1, 1),
                (Table::Input, 0, 1, 1),
                (Table::Coil, 0, 1, 1),
                (Table::Coil, 1999, 2, 2),
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn every_channel_is_read_once_within_protocol_limits(
            spec in proptest::collection::vec((0u16..3, 0u16..4000, 0u16..3), 1..200),
            gap in 0u16..40,
        ) {
            let kinds = [DataType::U16, DataType::U32, DataType::F64];
            let tables = [Table::Holding, Table::Input, Table::Coil];
            let channels: Vec<Channel> = spec.iter().map(|(t, a, k)| {
                let table = tables[usize::from(*t)];
                let kind = if table.is_bits() { DataType::Bool } else { kinds[usize::from(*k)] };
                channel(table, *a, kind)
            }).collect();
            let p = plan(&channels, gap);
            let mut seen = vec![0; channels.len()];
            for r in &p {
                proptest::prop_assert!(r.count >= 1 && r.count <= r.table.max_per_request());
                for &i in &r.channels {
                    seen[i] += 1;
                    let c = &channels[i];
                    proptest::prop_assert_eq!(c.table, r.table);
                    proptest::prop_assert!(c.address >= r.start);
                    proptest::prop_assert!(u32::from(c.address) + u32::from(c.width()) <= u32::from(r.start) + u32::from(r.count));
                }
            }
            proptest::prop_assert!(seen.iter().all(|n| *n == 1));
        }
    }
}
