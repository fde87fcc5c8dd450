use super::*;
use crate::reading::{Quality, Reading, Value};

/// A batch of `driver` with one integer reading `n` (shared with `faults`).
pub(super) fn batch(driver: &str, n: i64) -> Batch {
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
    let queue = Queue::open(&dir.path().join("q.redb"), QueueOptions::default()).unwrap();
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
        let queue = Queue::open(&path, QueueOptions::default()).unwrap();
        for n in 0..5 {
            queue.append(batch("d", n)).await.unwrap();
        }
        queue.remove(vec![1, 2, 3, 4, 5]).await.unwrap();
        assert_eq!(queue.stats().unwrap().depth, 0);
        assert_eq!(queue.append(batch("d", 5)).await.unwrap(), 6);
        queue.remove(vec![6]).await.unwrap();
    }
    let queue = Queue::open(&path, QueueOptions::default()).unwrap();
    assert_eq!(queue.append(batch("d", 6)).await.unwrap(), 7);
}

#[tokio::test]
async fn concurrent_appends_get_unique_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(&dir.path().join("q.redb"), QueueOptions::default()).unwrap();
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
    assert_eq!(
        (
            queue.stats().unwrap().depth,
            queue.stats().unwrap().oldest_seq
        ),
        (400, Some(1))
    );
}

/// Entries larger than a commit's byte budget waiting together: each gets
/// a commit of its own (or shares one within the budget), none is lost,
/// and small ones waiting beside them still commit.
#[tokio::test]
async fn entries_over_the_commit_budget_commit_in_order_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(&dir.path().join("q.redb"), QueueOptions::default()).unwrap();
    let big = |t: i64| {
        let mut b = batch("big", t);
        b.readings[0].value = Value::Text("x".repeat((MAX_GROUP_BYTES as usize) * 3 / 4));
        b
    };
    let mut tasks = Vec::new();
    for t in 0..6 {
        let q = queue.clone();
        tasks.push(tokio::spawn(async move {
            let entry = if t % 2 == 0 {
                big(t)
            } else {
                batch("small", t)
            };
            q.append(entry).await.unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    let read = queue.read_from(0, 100).unwrap();
    assert_eq!(read.len(), 6);
    let bigs = read.iter().filter(|(_, b)| b.driver == "big").count();
    assert_eq!(bigs, 3);
    for (_, b) in read.iter().filter(|(_, b)| b.driver == "big") {
        assert!(
            matches!(&b.readings[0].value, Value::Text(t) if t.len() == (MAX_GROUP_BYTES as usize) * 3 / 4)
        );
    }
}

#[tokio::test]
async fn read_from_starts_at_the_oldest_remaining_entry() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(&dir.path().join("q.redb"), QueueOptions::default()).unwrap();
    for n in 0..6 {
        queue.append(batch("d", n)).await.unwrap();
    }
    queue.remove(vec![1, 2, 4]).await.unwrap();
    let seqs = seqs_of(queue.read_from(0, 10).unwrap());
    assert_eq!(seqs, vec![3, 5, 6]);
    let seqs = seqs_of(queue.read_from(4, 1).unwrap());
    assert_eq!(seqs, vec![5]);
}

/// The sequence numbers of entries read.
fn seqs_of<T>(entries: Vec<(u64, T)>) -> Vec<u64> {
    entries.into_iter().map(|(s, _)| s).collect()
}

fn encoded_len(b: &Batch) -> u64 {
    store::encode_entry(Entry::Batch(b.clone())).unwrap().len() as u64
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_and_counts_exactly_what_it_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let one = encoded_len(&batch("d", 0));
    let options = QueueOptions {
        max_bytes: Some(one * 5 + one / 2),
        ..QueueOptions::default()
    };
    let queue = Queue::open(&dir.path().join("q.redb"), options).unwrap();
    for n in 0..20 {
        assert_eq!(queue.append(batch("d", n)).await.unwrap(), n as u64 + 1);
    }
    let stats = queue.stats().unwrap();
    assert_eq!(stats.depth, 5);
    assert_eq!(stats.dropped_cap, 15, "every dropped entry counted");
    assert!(stats.bytes <= one * 5 + one / 2);
    let seqs = seqs_of(queue.read_from(0, 100).unwrap());
    assert_eq!(seqs, vec![16, 17, 18, 19, 20], "the newest are all there");
    // The publisher, reading from memory or from the file, never gets a
    // dropped entry.
    for from in [1, 3, 16] {
        let sent = seqs_of(queue.read_for_send(from, 100).unwrap());
        assert_eq!(sent, vec![16, 17, 18, 19, 20], "reading from {from}");
    }
}

#[tokio::test]
async fn block_makes_appends_wait_for_space_and_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let one = encoded_len(&batch("d", 0));
    let options = QueueOptions {
        max_bytes: Some(one * 3),
        when_full: FullPolicy::Block,
        ..QueueOptions::default()
    };
    let queue = Queue::open(&dir.path().join("q.redb"), options).unwrap();
    for n in 0..3 {
        queue.append(batch("d", n)).await.unwrap();
    }
    let q = queue.clone();
    let waiting = tokio::spawn(async move { q.append(batch("d", 3)).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the fourth append waits at the cap");
    assert!(queue.health().blocked, "and the wait is reported");
    queue.remove(vec![1]).await.unwrap();
    let seq = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seq, 4);
    let stats = queue.stats().unwrap();
    assert_eq!((stats.depth, stats.dropped_cap), (3, 0));
    let health = queue.health();
    assert!(!health.blocked);
    assert!(health.blocked_ms_total >= 200, "{health:?}");
}

#[tokio::test]
async fn retention_drops_entries_older_than_max_age_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let options = QueueOptions {
        max_age: Some(std::time::Duration::from_secs(60)),
        ..QueueOptions::default()
    };
    let queue = Queue::open(&dir.path().join("q.redb"), options).unwrap();
    let hour_ago = crate::reading::now_ns() - 3_600_000_000_000;
    for n in 0..4 {
        let mut b = batch("d", n);
        b.captured_ns = hour_ago;
        queue.append(b).await.unwrap();
    }
    let mut fresh = batch("d", 4);
    fresh.captured_ns = crate::reading::now_ns();
    let fresh_len = encoded_len(&fresh);
    queue.append(fresh).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while queue.stats().unwrap().dropped_age < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let stats = queue.stats().unwrap();
    assert_eq!(
        (stats.depth, stats.dropped_age, stats.oldest_seq),
        (1, 4, Some(5))
    );
    assert_eq!(stats.bytes, fresh_len);
    let sent = seqs_of(queue.read_for_send(1, 10).unwrap());
    assert_eq!(sent, vec![5], "expired entries are not sent");
}

#[tokio::test]
async fn a_garbage_file_is_quarantined_and_numbering_continues_above_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    {
        let queue = Queue::open(&path, QueueOptions::default()).unwrap();
        for n in 0..3 {
            queue.append(batch("d", n)).await.unwrap();
        }
    }
    std::fs::write(&path, b"this is not a database, and was never one").unwrap();
    let queue = Queue::open(&path, QueueOptions::default()).unwrap();
    let aside = queue.health().quarantined.expect("quarantined");
    assert!(aside.is_file());
    assert!(
        aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("q.redb.corrupt-")
    );
    let seq = queue.append(batch("d", 9)).await.unwrap();
    assert!(
        seq > 3,
        "never reuses a number the old file handed out: {seq}"
    );
}

#[tokio::test]
async fn a_truncated_file_opens_repaired_or_quarantined_and_collection_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    {
        let queue = Queue::open(&path, QueueOptions::default()).unwrap();
        for n in 0..200 {
            queue.append(batch("d", n)).await.unwrap();
        }
    }
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len / 3).unwrap();
    drop(file);
    let queue = Queue::open(&path, QueueOptions::default()).unwrap();
    let seq = queue.append(batch("d", 1000)).await.unwrap();
    assert!(seq > 200, "{seq}");
    // Whatever survived reads back cleanly.
    for (s, b) in queue.read_from(0, 1000).unwrap() {
        assert!(s <= seq);
        assert_eq!(b.driver, "d");
    }
}

#[tokio::test]
async fn stats_and_export_read_a_live_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let queue = Queue::open(&path, QueueOptions::default()).unwrap();
    for n in 0..4 {
        queue.append(batch("d", n)).await.unwrap();
    }
    queue.remove(vec![1]).await.unwrap();
    queue.append(batch("d", 4)).await.unwrap();
    let stats = read_stats(&path).unwrap();
    assert_eq!(
        (stats.depth, stats.oldest_seq, stats.next_seq),
        (4, Some(2), 6)
    );
    let mut out = Vec::new();
    let summary = export_jsonl(&path, None, &mut out).unwrap();
    assert_eq!((summary.exported, summary.unreadable.len()), (4, 0));
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["seq"], 2);
    assert_eq!(lines[0]["driver"], "d");
    assert_eq!(lines[3]["readings"][0]["value"], 4);
}

#[tokio::test]
async fn export_writes_every_value_the_gateway_stores_and_goes_on_past_an_unreadable_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let values = [
        Value::Float(f64::NAN),
        Value::Float(f64::INFINITY),
        Value::Float(f64::NEG_INFINITY),
        Value::Float(-0.0),
        Value::Text(String::new()),
        Value::Text("tab\tnul\u{0}bell\u{7}\"q\"\\".into()),
        Value::Bytes(vec![]),
        Value::Bytes(vec![0, 255]),
    ];
    {
        let queue = Queue::open(&path, QueueOptions::default()).unwrap();
        for v in &values {
            let mut b = batch("d", 0);
            b.readings[0].value = v.clone();
            queue.append(b).await.unwrap();
        }
    }
    // Beside them: an entry as a version before 0.2 wrote a NaN (null), and
    // one that rotted on disk.
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut entries = txn.open_table(store::ENTRIES).unwrap();
            let mut old = 1u64.to_le_bytes().to_vec();
            old.extend_from_slice(br#"{"driver":"d","captured_ns":1,"readings":[{"channel":"c","type":"float","value":null,"ts_ns":1,"quality":"good"}]}"#);
            entries.insert(100, old.as_slice()).unwrap();
            let mut rotten = 1u64.to_le_bytes().to_vec();
            rotten.extend_from_slice(b"{\"driver\":\"d\",\"capt\xffred");
            entries.insert(101, rotten.as_slice()).unwrap();
            let mut after = 1u64.to_le_bytes().to_vec();
            after.extend_from_slice(br#"{"driver":"d","captured_ns":1,"readings":[]}"#);
            entries.insert(102, after.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let mut out = Vec::new();
    let summary = export_jsonl(&path, None, &mut out).unwrap();
    assert_eq!(summary.exported, values.len() as u64 + 2);
    assert_eq!(summary.unreadable.len(), 1);
    assert_eq!(summary.unreadable[0].0, 101);
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| l["readings"][0]["value"].clone())
        .collect();
    assert_eq!(first[0], "NaN");
    assert_eq!(first[1], "inf");
    assert_eq!(first[2], "-inf");
    assert_eq!(lines[0]["readings"][0]["type"], "float");
    assert_eq!(first[8], "NaN", "an old null reads as NaN");
    assert_eq!(lines[9]["seq"], 102, "the entry after the rotten one");
    // And each exported line reads back as the value stored.
    for (line, v) in lines.iter().zip(&values) {
        let back: crate::reading::Reading =
            serde_json::from_value(line["readings"][0].clone()).unwrap();
        match (&back.value, v) {
            (Value::Float(a), Value::Float(b)) => {
                assert!((a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits())
            }
            (a, b) => assert_eq!(a, b),
        }
    }
}

/// Telemetry is its own kind of entry; what older versions stored (a
/// snapshot wrapped as the text reading of a `telemetry` batch) still
/// reads as telemetry, and a kind from a newer version is named, not
/// guessed at.
#[tokio::test]
async fn telemetry_entries_are_typed_and_old_wrapped_snapshots_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(&dir.path().join("t.redb"), QueueOptions::default()).unwrap();
    let snapshot = r#"{"gateway":"gw","seq":1,"nested":{"a":[1,2.5,"x"]}}"#;
    queue
        .append_entry(Entry::Telemetry(snapshot.to_string()))
        .await
        .unwrap();
    // As an older version wrote it.
    let mut old = batch("telemetry", 0);
    old.readings[0].channel = "snapshot".into();
    old.readings[0].value = Value::Text(snapshot.to_string());
    queue.append(old).await.unwrap();
    queue.append(batch("plc", 7)).await.unwrap();
    assert!(
        queue
            .append_entry(Entry::Telemetry("not json".into()))
            .await
            .is_err()
    );

    let entries = queue.read_for_send(0, 10).unwrap();
    assert_eq!(entries.len(), 3);
    for (_, e) in &entries[..2] {
        assert_eq!(e.kind().unwrap(), EntryKind::Telemetry);
        assert_eq!(e.telemetry_snapshot().unwrap(), snapshot.as_bytes());
        assert!(e.driver().is_err());
    }
    let (_, data) = &entries[2];
    assert_eq!(
        data.kind().unwrap(),
        EntryKind::Batch {
            driver: "plc".into()
        }
    );
    assert_eq!(data.driver().unwrap(), "plc");
    assert!(data.telemetry_snapshot().is_err());

    let audit = StoredEntry {
        seq: 8,
        json: br#"{"kind":"audit","record":{"n":1}}"#.to_vec(),
    };
    assert_eq!(audit.kind().unwrap(), EntryKind::Audit);
    assert_eq!(audit.audit_record().unwrap(), br#"{"n":1}"#);
    let unknown = StoredEntry {
        seq: 9,
        json: br#"{"kind":"future","record":{}}"#.to_vec(),
    };
    let err = unknown.kind().unwrap_err().to_string();
    assert!(err.contains("\"future\"") && err.contains('9'), "{err}");
}

#[tokio::test]
async fn batches_submitted_before_their_commits_commit_in_submission_order() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(&dir.path().join("q.redb"), QueueOptions::default()).unwrap();
    // Hand over six batches without waiting for any commit, as a driver
    // polling on does; dropping one handle does not withdraw its batch.
    let mut handles = Vec::new();
    for n in 0..6 {
        handles.push(queue.submit(batch("d", n)).await.unwrap());
    }
    let dropped = handles.remove(2);
    drop(dropped);
    let mut seqs = Vec::new();
    for h in handles {
        seqs.push(h.committed().await.unwrap());
    }
    assert_eq!(seqs, [1, 2, 4, 5, 6]);
    let read = queue.read_from(0, 100).unwrap();
    let values: Vec<Value> = read
        .iter()
        .map(|(_, b)| b.readings[0].value.clone())
        .collect();
    assert_eq!(values, (0..6).map(Value::Int).collect::<Vec<_>>());
}

#[tokio::test]
async fn an_append_that_finds_the_writer_idle_lingers_only_for_expected_batches() {
    let dir = tempfile::tempdir().unwrap();
    let linger = Duration::from_secs(5);
    let options = QueueOptions {
        commit_linger: linger,
        ..QueueOptions::default()
    };
    let queue = Queue::open(&dir.path().join("q.redb"), options).unwrap();
    let mut committed = queue.committed();

    // Two polls under way: the first batch waits for the second.
    let (one, two) = (queue.expect(), queue.expect());
    let first = queue.submit(batch("d", 0)).await.unwrap();
    drop(one);
    let second = queue.submit(batch("d", 1)).await.unwrap();
    let started = std::time::Instant::now();
    drop(two);
    committed.changed().await.unwrap();
    assert_eq!(*committed.borrow(), 2, "both batches shared one commit");
    assert_eq!(first.committed().await.unwrap(), 1);
    assert_eq!(second.committed().await.unwrap(), 2);
    assert!(
        started.elapsed() < linger,
        "the last expected batch ends the wait"
    );

    // Nothing expected: committed at once, not after the linger.
    let started = std::time::Instant::now();
    let third = queue.submit(batch("d", 2)).await.unwrap();
    assert_eq!(third.committed().await.unwrap(), 3);
    assert!(started.elapsed() < linger, "nothing to wait for");
}

#[tokio::test]
async fn a_queue_dropped_while_a_batch_is_expected_closes_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let queue = Queue::open(&path, QueueOptions::default()).unwrap();
    let pending = queue.expect();
    // The guard must not keep the writer alive: dropping the queue ends it
    // and releases the file (this returns), while the guard still lives.
    drop(queue);
    let reopened = Queue::open(&path, QueueOptions::default()).unwrap();
    drop(pending);
    assert_eq!(*reopened.committed().borrow(), 0);
}

/// Every batch's channel name, for the encryption tests.
fn secret_batch(n: i64) -> Batch {
    let mut b = batch("meter-xq7", n);
    b.readings[0].channel = "zebra-secret-channel".into();
    b.readings[0].value = Value::Text(format!("distinctive-value-{n}"));
    b
}

fn raw_contains(path: &std::path::Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn encrypted_entries_read_back_leave_no_plaintext_and_need_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let key_file = dir.path().join("storage.key");
    // An older plaintext entry first: it stays readable beside encrypted ones.
    {
        let queue = Queue::open(&path, QueueOptions::default()).unwrap();
        queue.append(batch("old", 1)).await.unwrap();
    }
    let keyring = Arc::new(crypt::Keyring::create(&key_file).unwrap());
    let encrypted = || QueueOptions {
        keyring: Some(keyring.clone()),
        encrypt: true,
        ..QueueOptions::default()
    };
    {
        let queue = Queue::open(&path, encrypted()).unwrap();
        for n in 0..50 {
            queue.append(secret_batch(n)).await.unwrap();
        }
        let read = queue.read_from(0, 100).unwrap();
        assert_eq!(read.len(), 51);
        assert_eq!(read[0].1.driver, "old");
        assert_eq!(
            read[50].1.readings[0].value,
            Value::Text("distinctive-value-49".into())
        );
        assert_eq!(
            queue.keys_in_use().unwrap(),
            [keyring.current().to_string()]
        );
        // Delivered entries no longer count against their key.
        queue.remove((2..=11).collect()).await.unwrap();
        assert_eq!(
            store::key_counts(queue.inner.shared.db.read().unwrap().as_ref().unwrap()).unwrap(),
            [(keyring.current().to_string(), 40)]
        );
    }
    for needle in ["zebra-secret-channel", "distinctive-value-", "meter-xq7"] {
        assert!(!raw_contains(&path, needle), "{needle} in the queue file");
    }
    // Without the key, or with another one: a refusal naming the key, the file kept.
    let err = Queue::open(&path, QueueOptions::default()).err().unwrap();
    assert!(matches!(err, QueueError::Key { .. }), "{err}");
    let other = Arc::new(crypt::Keyring::create(&dir.path().join("other.key")).unwrap());
    let err = Queue::open(
        &path,
        QueueOptions {
            keyring: Some(other),
            encrypt: true,
            ..QueueOptions::default()
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains(&keyring.current()), "{err}");
    assert!(quarantined_files(&path).is_empty());
    // With it again, everything is there; an export decrypts too.
    let queue = Queue::open(&path, encrypted()).unwrap();
    assert_eq!(queue.read_from(0, 100).unwrap().len(), 41);
    drop(queue);
    let mut out = Vec::new();
    let summary = export_jsonl(&path, Some(&keyring), &mut out).unwrap();
    assert_eq!(summary.exported, 41);
    assert!(
        String::from_utf8(out)
            .unwrap()
            .contains("distinctive-value-49")
    );
}

/// A temporary directory with a storage key in it, the queue path there,
/// and the keyring.
fn encrypted_dir() -> (tempfile::TempDir, std::path::PathBuf, Arc<crypt::Keyring>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let keyring = Arc::new(crypt::Keyring::create(&dir.path().join("storage.key")).unwrap());
    (dir, path, keyring)
}

/// Options of a queue that encrypts with `keyring`.
fn sealed_with(keyring: &Arc<crypt::Keyring>) -> QueueOptions {
    QueueOptions {
        keyring: Some(keyring.clone()),
        encrypt: true,
        ..QueueOptions::default()
    }
}

/// A batch of `driver` captured at `captured_ns` with a distinctive text.
fn marked(driver: &str, captured_ns: u64, mark: &str) -> Batch {
    let mut b = batch(driver, 0);
    b.captured_ns = captured_ns;
    b.readings[0].value = Value::Text(mark.to_string());
    b
}

#[tokio::test]
async fn an_erasure_leaves_the_erased_entries_in_no_file_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let queue = Queue::open(&path, QueueOptions::default()).unwrap();
    for n in 0..30u64 {
        let driver = if n % 3 == 0 { "victim" } else { "keeper" };
        queue
            .append(marked(
                driver,
                1_000 + n,
                &format!("plainmark-{driver}-{n:03}"),
            ))
            .await
            .unwrap();
    }
    queue.remove(vec![2, 3]).await.unwrap();
    // An append waiting in the writer while the file is rewritten survives.
    let pending = queue
        .submit(marked("victim", 2_000, "plainmark-late"))
        .await;
    let erased = queue
        .erase(Selector {
            driver: Some("victim".into()),
            upto_ns: 1_500,
            ..Selector::default()
        })
        .await
        .unwrap();
    pending.unwrap().committed().await.unwrap();
    // The late append is kept whether it was committed before the rewrite or after.
    assert_eq!(erased.erased, 10);
    let stats = queue.stats().unwrap();
    assert_eq!((stats.depth, stats.erased, stats.next_seq), (19, 10, 32));
    let left: Vec<(u64, Batch)> = queue.read_from(0, 100).unwrap();
    assert!(
        left.iter()
            .all(|(_, b)| b.driver == "keeper" || b.captured_ns == 2_000)
    );
    // Before a time: only older entries go.
    let erased = queue
        .erase(Selector {
            before_ns: Some(1_020),
            upto_ns: u64::MAX,
            ..Selector::default()
        })
        .await
        .unwrap();
    assert_eq!(erased.erased, 11);
    assert_eq!(queue.append(batch("keeper", 0)).await.unwrap(), 32);
    drop(queue);
    for n in 0..30 {
        let gone = n % 3 == 0 || n < 20;
        let mark = format!(
            "plainmark-{}-{n:03}",
            if n % 3 == 0 { "victim" } else { "keeper" }
        );
        assert_eq!(
            raw_contains(&path, &mark),
            !gone && n != 1 && n != 2,
            "{mark}"
        );
    }
    assert!(raw_contains(&path, "plainmark-late"));
    assert!(!super::rewrite::rewrite_path(&path).exists());
    // An empty selector is refused, not read as "everything".
    let queue = Queue::open(&path, QueueOptions::default()).unwrap();
    assert!(queue.erase(Selector::default()).await.is_err());
    assert_eq!(queue.stats().unwrap().depth, 9);
}

#[tokio::test]
async fn an_encrypted_queue_is_rewritten_with_a_new_salt_and_all_erases_every_kind() {
    let (_dir, path, keyring) = encrypted_dir();
    let options = || sealed_with(&keyring);
    let queue = Queue::open(&path, options()).unwrap();
    for n in 0..20 {
        queue.append(secret_batch(n)).await.unwrap();
    }
    queue
        .append_entry(Entry::Telemetry("{\"ts_ms\":1}".into()))
        .await
        .unwrap();
    let old_salt = *queue.inner.shared.salt.read().unwrap();
    let old_key = keyring.current();
    // The key is rotated first, as `data erase` does: kept entries move to the new key.
    let new_key = keyring.add_key().unwrap();
    let erased = queue
        .erase(Selector {
            driver: Some("nobody".into()),
            upto_ns: u64::MAX,
            ..Selector::default()
        })
        .await
        .unwrap();
    assert_eq!((erased.erased, erased.kept), (0, 21));
    assert_ne!(*queue.inner.shared.salt.read().unwrap(), old_salt);
    assert_eq!(queue.keys_in_use().unwrap(), [new_key]);
    assert_eq!(
        keyring.erase_unused(&queue.keys_in_use().unwrap()).unwrap(),
        [old_key]
    );
    assert_eq!(queue.read_from(0, 20).unwrap().len(), 20);
    let erased = queue
        .erase(Selector {
            all: true,
            upto_ns: u64::MAX,
            ..Selector::default()
        })
        .await
        .unwrap();
    assert_eq!((erased.erased, erased.kept), (21, 0));
    assert_eq!(queue.append(batch("d", 1)).await.unwrap(), 22);
    drop(queue);
    let queue = Queue::open(&path, options()).unwrap();
    assert_eq!(queue.read_from(0, 100).unwrap().len(), 1);
    assert_eq!(queue.stats().unwrap().erased, 21);
}

#[tokio::test]
async fn an_unfinished_rewrite_left_by_a_crash_is_deleted_and_the_queue_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    {
        let queue = Queue::open(&path, QueueOptions::default()).unwrap();
        queue.append(batch("d", 1)).await.unwrap();
    }
    std::fs::write(super::rewrite::rewrite_path(&path), b"half a copy").unwrap();
    let queue = Queue::open(&path, QueueOptions::default()).unwrap();
    assert_eq!(queue.stats().unwrap().depth, 1);
    assert!(!super::rewrite::rewrite_path(&path).exists());
    assert!(quarantined_files(&path).is_empty());
}

#[tokio::test]
async fn an_entry_damaged_on_disk_is_set_aside_and_delivery_goes_on_past_it() {
    use redb::{ReadableDatabase, ReadableTable};
    let (_dir, path, keyring) = encrypted_dir();
    let options = || sealed_with(&keyring);
    {
        let queue = Queue::open(&path, options()).unwrap();
        for n in 0..5 {
            queue.append(secret_batch(n)).await.unwrap();
        }
    }
    // Bit rot in entry 3's ciphertext.
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut entries = txn.open_table(ENTRIES).unwrap();
            let mut bytes = entries.get(3).unwrap().unwrap().value().to_vec();
            let last = bytes.len() - 20;
            bytes[last] ^= 0x40;
            entries.insert(3, bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let queue = Queue::open(&path, options()).unwrap();
    let sent: Vec<u64> = queue
        .read_for_send(0, 10)
        .unwrap()
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(sent, [1, 2, 4, 5], "the damaged entry is left out");
    queue.sync().await.unwrap();
    let stats = queue.stats().unwrap();
    assert_eq!((stats.depth, stats.set_aside), (4, 1));
    // Kept as it was, outside the entries, and counted only once.
    drop(queue);
    let db = redb::Database::create(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let aside = txn.open_table(store::SET_ASIDE_TABLE).unwrap();
    assert!(aside.get(3).unwrap().is_some());
    drop((aside, txn, db));
    let queue = Queue::open(&path, options()).unwrap();
    assert_eq!(queue.read_for_send(0, 10).unwrap().len(), 4);
    queue.sync().await.unwrap();
    assert_eq!(queue.stats().unwrap().set_aside, 1);
}
