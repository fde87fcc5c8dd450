//! `cargo xtask bench queue`: capture rate of the queue with group commit
//! against one commit per batch (both `Durability::Immediate`), the same
//! encrypted at rest (AES-256-GCM) against plaintext, drain rate from the
//! queue to a local mosquitto over TLS, QoS 1, export rate of an
//! encrypted queue of 1M readings, the rate of erasing one driver's
//! readings from it, and the cost of one audit record.
//! Prints figures; asserts nothing (timings are never test assertions).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrule::publish::Protocol as MqttProtocol;
use ferrule::publish::{self, PublisherSettings, TlsFiles, Topics};
use ferrule::queue::crypt::Keyring;
use ferrule::queue::{Queue, QueueOptions};
use ferrule::reading::{Batch, Quality, Reading, Value, now_ns};
use ferrule_benches::{self as bench, Report};
use ferrule_tests::{Mosquitto, Pki, free_port};

const READINGS_PER_BATCH: usize = 100;
const PRODUCERS: usize = 8;

fn batch(n: u64) -> Batch {
    let ts = now_ns();
    Batch {
        driver: format!("bench-{}", n % PRODUCERS as u64),
        captured_ns: ts,
        readings: (0..READINGS_PER_BATCH)
            .map(|i| Reading {
                channel: format!("c{i:02}"),
                value: Value::Float(n as f64 * 0.5 + i as f64),
                ts_ns: ts,
                quality: Quality::Good,
                unit: Some("degC".into()),
            })
            .collect(),
    }
}

/// A keyring in `dir`, for encrypted queues.
fn keyring(dir: &Path) -> anyhow::Result<Arc<Keyring>> {
    let path = dir.join("storage.key");
    Ok(Arc::new(match path.exists() {
        true => Keyring::load(&path)?,
        false => Keyring::create(&path)?,
    }))
}

/// Readings/s captured by `PRODUCERS` tasks appending for `seconds`.
async fn capture(
    dir: &Path,
    name: &str,
    max_group: Option<usize>,
    keys: Option<Arc<Keyring>>,
    seconds: u64,
) -> anyhow::Result<(f64, f64)> {
    let queue = Queue::open(
        &dir.join(format!("{name}.redb")),
        QueueOptions {
            max_group,
            encrypt: keys.is_some(),
            keyring: keys,
            ..QueueOptions::default()
        },
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let batches = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let (queue, stop, batches) = (queue.clone(), stop.clone(), batches.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = p as u64;
            while !stop.load(Ordering::Relaxed) {
                queue.append(batch(n)).await?;
                batches.fetch_add(1, Ordering::Relaxed);
                n += PRODUCERS as u64;
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let b = batches.load(Ordering::Relaxed) as f64;
    Ok((b * READINGS_PER_BATCH as f64 / elapsed, b / elapsed))
}

/// Appends `batches` batches from `PRODUCERS` tasks.
async fn fill(queue: &Queue, batches: u64) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS as u64 {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = p;
            while n < batches {
                queue.append(batch(n)).await?;
                n += PRODUCERS as u64;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Readings/s drained from a queue of `batches` entries to mosquitto over TLS.
async fn drain(dir: &Path, batches: u64) -> anyhow::Result<(f64, f64)> {
    let queue = Queue::open(&dir.join("drain.redb"), QueueOptions::default())?;
    fill(&queue, batches).await?;
    let pki = Pki::new(&dir.join("certs"))?;
    let port = free_port()?;
    let _broker = Mosquitto::start(dir, &pki, port, "max_queued_messages 0")?;
    let settings = PublisherSettings {
        gateway: "bench".into(),
        host: "127.0.0.1".into(),
        port,
        failover: Vec::new(),
        client_id: "bench".into(),
        topics: Topics::new("ferrule", "bench"),
        tls: TlsFiles {
            ca: pki.ca.cert.clone(),
            client_cert: Some(pki.gateway.cert.clone()),
            client_key: Some(pki.gateway.key.clone()),
        },
        protocol: MqttProtocol::V311,
        username: None,
        password_file: None,
        clean_session: true,
        session_expiry_s: 0,
        max_packet_size: 1 << 20,
        keep_alive: Duration::from_secs(30),
        max_inflight: 64,
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        audit: None,
        sparkplug: None,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let publisher = tokio::spawn(publish::run(
        settings,
        queue.clone(),
        Default::default(),
        None,
        None,
        None,
        stop.clone(),
    ));
    loop {
        if queue.stats()?.depth == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "drain took over 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = publisher.await;
    let b = batches as f64;
    Ok((b * READINGS_PER_BATCH as f64 / elapsed, b / elapsed))
}

/// Readings/s of `queue export` over an encrypted queue of `batches`.
async fn export(dir: &Path, keys: &Arc<Keyring>, batches: u64) -> anyhow::Result<f64> {
    let path = dir.join("export.redb");
    {
        let queue = Queue::open(
            &path,
            QueueOptions {
                keyring: Some(keys.clone()),
                encrypt: true,
                ..QueueOptions::default()
            },
        )?;
        fill(&queue, batches).await?;
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("export.jsonl"))?);
    let started = Instant::now();
    let summary = ferrule::queue::export_jsonl(&path, Some(keys), &mut out)?;
    std::io::Write::flush(&mut out)?;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(summary.exported == batches && summary.unreadable.is_empty());
    Ok(batches as f64 * READINGS_PER_BATCH as f64 / elapsed)
}

/// Erasure of one driver's batches (1 in [`PRODUCERS`]) from the encrypted
/// queue `export` filled, the file rewritten with the rest under a new
/// key: readings of the queue gone through per second, and seconds taken.
async fn erase(dir: &Path, keys: &Arc<Keyring>, batches: u64) -> anyhow::Result<(f64, f64)> {
    let queue = Queue::open(
        &dir.join("export.redb"),
        QueueOptions {
            keyring: Some(keys.clone()),
            encrypt: true,
            ..QueueOptions::default()
        },
    )?;
    keys.add_key()?;
    let started = Instant::now();
    let erased = queue
        .erase(ferrule::queue::Selector {
            driver: Some("bench-0".into()),
            upto_ns: now_ns(),
            ..ferrule::queue::Selector::default()
        })
        .await?;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        erased.erased + erased.kept == batches
            && erased.erased == batches.div_ceil(PRODUCERS as u64),
        "erased {erased:?} of {batches}"
    );
    Ok((
        batches as f64 * READINGS_PER_BATCH as f64 / elapsed,
        elapsed,
    ))
}

/// µs per audit record appended (each synced).
fn audit(dir: &Path, records: u32) -> anyhow::Result<f64> {
    let log = ferrule::audit::AuditLog::in_dir(&dir.join("audit"));
    let started = Instant::now();
    for i in 0..records {
        log.append("bench", serde_json::json!({"i": i, "user": "bench"}))?;
    }
    let us = started.elapsed().as_secs_f64() * 1e6 / f64::from(records);
    anyhow::ensure!(ferrule::audit::verify(log.path()) == Ok(u64::from(records)));
    Ok(us)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = bench::scaled(5, 1);
    let drain_batches: u64 = bench::scaled(5_000, 200);
    let mut report = Report::new(
        "queue",
        "queue capture (group commit) and drain to mosquitto",
    );
    report.method(format!(
        "in-process: {PRODUCERS} tasks appending batches of {READINGS_PER_BATCH} readings for {seconds} s, every commit fsynced (Durability::Immediate), on the project's disk; group commit vs one commit per batch"
    ));
    report.method(format!(
        "drain: {drain_batches} queued batches published by the real publisher to mosquitto over mutual TLS, QoS 1, 64 in flight, until the queue is empty"
    ));
    let export_batches: u64 = bench::scaled(10_000, 200);
    let audit_records: u32 = bench::scaled(1_000, 50);
    report.method(format!(
        "encrypted: the same group-commit capture with [storage] encryption (AES-256-GCM, ring; a subkey per file, sealed in the writer thread); export: `queue export` of an encrypted queue of {export_batches} batches ({} readings) to a file; erase: `data erase --driver` of 1 driver in {PRODUCERS} from that queue (every kept entry re-encrypted under a new key into a new file, fsynced, renamed over the old); audit: {audit_records} records appended, each synced",
        export_batches * READINGS_PER_BATCH as u64
    ));
    let dir = bench::workdir("queue")?;
    let keys = keyring(dir.path())?;
    let (group_r, _) = capture(dir.path(), "group", None, None, seconds).await?;
    let (single_r, _) = capture(dir.path(), "single", Some(1), None, seconds).await?;
    let (sealed_r, _) = capture(dir.path(), "sealed", None, Some(keys.clone()), seconds).await?;
    let (drain_r, _) = drain(dir.path(), drain_batches).await?;
    let export_r = export(dir.path(), &keys, export_batches).await?;
    let (erase_r, erase_s) = erase(dir.path(), &keys, export_batches).await?;
    let audit_us = audit(dir.path(), audit_records)?;
    report
        .compare(
            "capture, group commit",
            group_r,
            "readings/s",
            "one commit per batch",
            single_r,
        )
        .at_least(100_000.0);
    report
        .compare(
            "drain to mosquitto",
            drain_r,
            "readings/s",
            "group-commit capture",
            group_r,
        )
        .at_least(50_000.0);
    report
        .compare(
            "capture, group commit, encrypted at rest",
            sealed_r,
            "readings/s",
            "plaintext, same run",
            group_r,
        )
        .ratio_at_least(0.9);
    report.figure("export of an encrypted queue", export_r, "readings/s");
    report.figure(
        "erase one driver's batches from that queue (file rewritten, re-encrypted)",
        erase_r,
        "readings/s",
    );
    report.figure("that erasure took", erase_s, "s");
    report.figure("audit record appended (synced)", audit_us, "µs");
    report.finish()?;
    Ok(())
}
