use super::*;
use crate::reading::{Quality, Reading, Value};

fn batch(driver: &str, n: i64) -> Batch {
    Batch {
        driver: driver.to_string(),
        captured_ns: 1,
        readings: vec![Reading {
            channel: "c".into(),
            value: Value::Int(n),
            ts_ns: 1,
            quality: Quality::Good,
            unit: None,
        }],
    }
}

#[tokio::test]
async fn sequences_are_contiguous_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(&dir.path().join("q.redb")).unwrap();
    let mut seqs = Vec::new();
    for n in 0..10 {
        seqs.push(queue.append(batch("d", n)).await.unwrap());
    }
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    let read = queue.read_from(0, 100).unwrap();
    assert_eq!(read.len(), 10);
    for (i, (seq, b)) in read.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(b.readings[0].value, Value::Int(i as i64));
    }
    assert_eq!(*queue.committed().borrow(), 10);
}

#[tokio::test]
async fn sequence_numbers_are_never_reused_after_delete_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    {
        let queue = Queue::open(&path).unwrap();
        for n in 0..5 {
            queue.append(batch("d", n)).await.unwrap();
        }
        queue.remove(&[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(queue.depth().unwrap(), (0, None));
        // A durable append after the non-durable delete makes both durable.
        assert_eq!(queue.append(batch("d", 5)).await.unwrap(), 6);
        queue.remove(&[6]).unwrap();
    }
    let queue = Queue::open(&path).unwrap();
    assert_eq!(queue.append(batch("d", 6)).await.unwrap(), 7);
}

#[tokio::test]
async fn concurrent_appends_get_unique_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(&dir.path().join("q.redb")).unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let q = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for n in 0..50 {
                got.push(q.append(batch(&format!("d{t}"), n)).await.unwrap());
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let got = t.await.unwrap();
        // Each producer's own batches keep their order.
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        all.extend(got);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<_>>());
    assert_eq!(queue.depth().unwrap(), (400, Some(1)));
}

#[tokio::test]
async fn read_from_starts_at_the_oldest_remaining_entry() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(&dir.path().join("q.redb")).unwrap();
    for n in 0..6 {
        queue.append(batch("d", n)).await.unwrap();
    }
    queue.remove(&[1, 2, 4]).unwrap();
    let seqs: Vec<u64> = queue
        .read_from(0, 10)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(seqs, vec![3, 5, 6]);
    let seqs: Vec<u64> = queue
        .read_from(4, 1)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(seqs, vec![5]);
}
