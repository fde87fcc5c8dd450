//! The queue against a model: random appends, acknowledgements (including
//! of sequences already gone, and fire-and-forget ones as the publisher
//! sends them) and close/reopen cycles. After every step the queue holds
//! exactly the model's entries, its byte count matches them, and sequence
//! numbers only ever grow. A publisher reads along (`read_for_send`, from
//! memory or from the file), sometimes starting over as after a
//! reconnect, and always gets exactly the model's entries from its cursor.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::reading::{Quality, Reading, Value};

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    /// Acknowledge the outstanding entry at this index (modulo their count).
    Ack(usize),
    /// Acknowledge several entries at once, like a burst of PUBACKs.
    AckMany(usize, usize),
    /// Acknowledge a sequence that may never have existed.
    AckUnknown(u64),
    /// Acknowledge without waiting, as the publisher does.
    AckLater(usize),
    /// The publisher reads up to this many entries from its cursor.
    Send(usize),
    /// The publisher starts over from the oldest entry (a reconnect).
    Resend,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..6).prop_map(Op::Append),
        2 => any::<usize>().prop_map(Op::Ack),
        1 => (any::<usize>(), 1usize..5).prop_map(|(a, b)| Op::AckMany(a, b)),
        1 => (0u64..200).prop_map(Op::AckUnknown),
        1 => any::<usize>().prop_map(Op::AckLater),
        2 => (1usize..5).prop_map(Op::Send),
        1 => Just(Op::Resend),
        1 => Just(Op::Reopen),
    ]
}

fn batch_of(n: u8, tag: u64) -> Batch {
    Batch {
        driver: format!("d{}", tag % 3),
        captured_ns: tag,
        readings: (0..n)
            .map(|i| Reading {
                channel: format!("c{i}"),
                value: Value::Int(tag as i64 * 10 + i64::from(i)),
                ts_ns: tag,
                quality: Quality::Good,
                unit: None,
            })
            .collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn queue_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.redb");
        let mut queue = Some(Queue::open(&path, QueueOptions::default()).unwrap());
        let mut model: BTreeMap<u64, Batch> = BTreeMap::new();
        let mut highest = 0u64;
        let mut tag = 0u64;
        let mut cursor = 0u64;
        for op in ops {
            let q = queue.as_ref().unwrap();
            match op {
                Op::Append(n) => {
                    tag += 1;
                    let b = batch_of(n, tag);
                    let seq = rt.block_on(q.append(b.clone())).unwrap();
                    prop_assert!(seq > highest, "sequence {} after {}", seq, highest);
                    highest = seq;
                    model.insert(seq, b);
                }
                Op::Ack(i) | Op::AckMany(i, _) | Op::AckLater(i) if model.is_empty() => { let _ = i; }
                Op::Ack(i) => {
                    let seq = *model.keys().nth(i % model.len()).unwrap();
                    rt.block_on(q.remove(vec![seq])).unwrap();
                    model.remove(&seq);
                }
                Op::AckMany(i, k) => {
                    let seqs: Vec<u64> = model.keys().copied().skip(i % model.len()).take(k).collect();
                    rt.block_on(q.remove(seqs.clone())).unwrap();
                    for s in seqs {
                        model.remove(&s);
                    }
                }
                Op::AckLater(i) => {
                    let seq = *model.keys().nth(i % model.len()).unwrap();
                    q.remove_later(vec![seq]).unwrap();
                    model.remove(&seq);
                    // Anything handed over before a sync is committed after it.
                    rt.block_on(q.sync()).unwrap();
                }
                Op::AckUnknown(seq) => {
                    rt.block_on(q.remove(vec![seq + 1000])).unwrap();
                }
                Op::Send(max) => {
                    let sent: Vec<(u64, Batch)> = q
                        .read_for_send(cursor, max)
                        .unwrap()
                        .into_iter()
                        .map(|(seq, e)| (seq, e.batch().unwrap()))
                        .collect();
                    let expected: Vec<(u64, Batch)> =
                        model.range(cursor..).take(max).map(|(s, b)| (*s, b.clone())).collect();
                    prop_assert_eq!(&sent, &expected, "read for sending from {}", cursor);
                    if let Some((last, _)) = sent.last() {
                        cursor = last + 1;
                    }
                }
                Op::Resend => cursor = 0,
                Op::Reopen => {
                    // Close (joining the writer) before opening again; the
                    // publisher starts over too.
                    cursor = 0;
                    drop(queue.take());
                    queue = Some(Queue::open(&path, QueueOptions::default()).unwrap());
                    let actual: BTreeMap<u64, Batch> =
                        queue.as_ref().unwrap().read_from(0, usize::MAX).unwrap().into_iter().collect();
                    prop_assert_eq!(&actual, &model, "reopen changed the content");
                    continue;
                }
            }
            let q = queue.as_ref().unwrap();
            let actual: BTreeMap<u64, Batch> = q.read_from(0, usize::MAX).unwrap().into_iter().collect();
            prop_assert_eq!(&actual, &model);
            let stats = q.stats().unwrap();
            prop_assert_eq!(stats.depth, model.len() as u64);
            let bytes: u64 = model.values().map(|b| store::encode_entry(Entry::Batch(b.clone())).unwrap().len() as u64).sum();
            prop_assert_eq!(stats.bytes, bytes, "byte count follows the entries");
            prop_assert_eq!(stats.next_seq, highest + 1);
        }
    }
}
