//! Store-and-forward loses nothing: outages, kill -9, broker restarts, size
//! caps, corrupt files and a full disk, against real mosquitto and the real
//! binary. Criterion everywhere: the subscriber sees every sequence number
//! up to the last committed one, except exactly those a counted policy
//! dropped. Duplicates (at-least-once) are allowed and printed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferrule_tests::{
    Jitter, Mosquitto, Pki, SeqLog, Subscriber, persistence_config, queue_stats, start_ferrule,
};

use crate::common::sim_config;

/// A broker (with persistence), a persistent subscriber and a config file.
struct Rig {
    dir: tempfile::TempDir,
    pki: Pki,
    port: u16,
    broker_extra: String,
    broker: Option<Mosquitto>,
    sub: Subscriber,
    config: PathBuf,
    seqs: SeqLog,
}

impl Rig {
    async fn new(interval_ms: u64, channels: usize, queue: &str) -> anyhow::Result<Rig> {
        let (dir, pki, port, broker, sub) =
            ferrule_tests::Rig::persistent("ferrule/gw-test/data/#", "sf-sub")
                .await?
                .into_parts();
        let broker_extra = persistence_config(dir.path())?;
        let config = dir.path().join("gateway.toml");
        let data = dir.path().join("data");
        std::fs::write(
            &config,
            sim_config(&data, &pki, port, interval_ms, channels, queue)?.render(),
        )?;
        Ok(Rig {
            dir,
            pki,
            port,
            broker_extra,
            broker: Some(broker),
            sub,
            config,
            seqs: SeqLog::default(),
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn start_ferrule(&self) -> anyhow::Result<ferrule_tests::Process> {
        start_ferrule(self.path(), &["run", &self.config.to_string_lossy()])
    }

    fn stop_broker(&mut self) -> anyhow::Result<()> {
        if let Some(mut broker) = self.broker.take() {
            broker.process.terminate(Duration::from_secs(10))?;
        }
        Ok(())
    }

    fn start_broker(&mut self) -> anyhow::Result<()> {
        self.broker = Some(Mosquitto::start(
            self.path(),
            &self.pki,
            self.port,
            &self.broker_extra,
        )?);
        Ok(())
    }

    fn stats(&self) -> anyhow::Result<serde_json::Value> {
        queue_stats(self.path(), &self.config)
    }

    /// Runs ferrule with a driver that polls once (the interval is an hour)
    /// until the queue is empty, then stops it: afterwards everything ever
    /// committed was acknowledged by the broker. Returns the last committed sequence.
    /// [`Rig::drain`], then the criterion of these tests: every sequence
    /// from 1 to the last committed one has arrived. Returns that last one.
    async fn drain_and_expect_all(&mut self) -> anyhow::Result<u64> {
        let last = self.drain().await?;
        self.seqs
            .wait_for_all(&mut self.sub, 1, last, Duration::from_secs(60))
            .await?;
        Ok(last)
    }

    async fn drain(&mut self) -> anyhow::Result<u64> {
        let text = std::fs::read_to_string(&self.config)?;
        let drain_config = self.path().join("drain.toml");
        let mut drain = String::new();
        for line in text.lines() {
            if line.starts_with("interval_ms = ") {
                drain.push_str("interval_ms = 3600000\n");
            } else {
                drain.push_str(line);
                drain.push('\n');
            }
        }
        std::fs::write(&drain_config, drain)?;
        let mut ferrule = start_ferrule(self.path(), &["run", &drain_config.to_string_lossy()])?;
        let deadline = Instant::now() + Duration::from_secs(120);
        // The one poll happens at start; wait until it and everything before it is acknowledged.
        tokio::time::sleep(Duration::from_secs(1)).await;
        loop {
            self.seqs.drain(&mut self.sub)?;
            let stats = queue_stats(self.path(), &drain_config)?;
            if stats["depth"] == 0 {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "queue not drained in 120 s: {stats}; log:\n{}",
                    ferrule.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let status = ferrule.terminate(Duration::from_secs(10))?;
        anyhow::ensure!(status.success(), "drain run exited with {status}");
        let stats = queue_stats(self.path(), &drain_config)?;
        Ok(stats["next_seq"].as_u64().unwrap_or(1) - 1)
    }
}

#[tokio::test]
async fn outage_of_60_s_at_200_readings_per_s_is_backfilled_without_gap() -> anyhow::Result<()> {
    // 10 channels every 50 ms: 200 readings/s, 20 batches/s.
    let mut rig = Rig::new(50, 10, "").await?;
    let mut ferrule = rig.start_ferrule()?;
    rig.seqs
        .wait_for_all(&mut rig.sub, 1, 20, Duration::from_secs(30))
        .await?;
    rig.stop_broker()?;
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let queued = rig.stats()?;
    rig.start_broker()?;
    let depth = queued["depth"].as_u64().unwrap_or(0);
    assert!(depth >= 1000, "60 s at 20 batches/s queued: {queued}");
    let last_during_outage = queued["next_seq"].as_u64().unwrap_or(1) - 1;
    rig.seqs
        .wait_for_all(
            &mut rig.sub,
            1,
            last_during_outage,
            Duration::from_secs(120),
        )
        .await?;
    let backfill = outage.elapsed();
    ferrule.terminate(Duration::from_secs(10))?;
    let last = rig.drain_and_expect_all().await?;
    eprintln!(
        "outage: {depth} batches ({} readings) queued in 60 s, all delivered {:.1} s after the outage began; {} messages up to seq {last}, {} duplicates",
        depth * 10,
        backfill.as_secs_f64(),
        rig.seqs.all.len(),
        rig.seqs.duplicates()
    );
    Ok(())
}

/// 20 cycles; `cargo xtask soak` runs it with `FERRULE_KILL_CYCLES=50`.
#[tokio::test]
async fn kill9_twenty_times_loses_no_committed_reading() -> anyhow::Result<()> {
    let cycles = std::env::var("FERRULE_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    kill9_cycles(cycles).await
}

async fn kill9_cycles(cycles: usize) -> anyhow::Result<()> {
    let mut rig = Rig::new(20, 5, "").await?;
    let mut jitter = Jitter::from_time();
    eprintln!("kill -9 cycles: {cycles}, jitter seed {}", jitter.seed());
    for _ in 0..cycles {
        let mut ferrule = rig.start_ferrule()?;
        tokio::time::sleep(jitter.between(Duration::from_millis(200), Duration::from_millis(1500)))
            .await;
        ferrule.kill9();
        rig.seqs.drain(&mut rig.sub)?;
    }
    let last = rig.drain_and_expect_all().await?;
    eprintln!(
        "kill -9 x{cycles}: {} committed, {} messages received, {} duplicates",
        last,
        rig.seqs.all.len(),
        rig.seqs.duplicates()
    );
    Ok(())
}

#[tokio::test]
async fn broker_restarted_twenty_times_loses_nothing() -> anyhow::Result<()> {
    let mut rig = Rig::new(20, 5, "").await?;
    let mut jitter = Jitter::from_time();
    eprintln!("broker restarts: jitter seed {}", jitter.seed());
    let mut ferrule = rig.start_ferrule()?;
    for _ in 0..20 {
        tokio::time::sleep(jitter.between(Duration::from_millis(300), Duration::from_millis(1200)))
            .await;
        rig.stop_broker()?;
        tokio::time::sleep(jitter.between(Duration::from_millis(50), Duration::from_millis(500)))
            .await;
        rig.start_broker()?;
        rig.seqs.drain(&mut rig.sub)?;
    }
    let log = ferrule.log_text();
    let reconnects = log.matches("mqtt connected").count();
    ferrule.terminate(Duration::from_secs(10))?;
    let last = rig.drain_and_expect_all().await?;
    assert!(
        reconnects >= 10,
        "ferrule reconnected after the restarts ({reconnects} connects)"
    );
    eprintln!(
        "broker restarts x20: {} connects, {last} committed, {} messages, {} duplicates",
        reconnects,
        rig.seqs.all.len(),
        rig.seqs.duplicates()
    );
    Ok(())
}

/// An outage longer than the cap holds, under `when_full`; returns
/// (last committed, dropped_cap, missing sequences).
async fn outage_over_the_cap(when_full: &str) -> anyhow::Result<(u64, u64, Vec<u64>, SeqLog)> {
    // About 60 entries of ~300 bytes fit in 20 KB; the outage queues ~150.
    let queue = format!("max_bytes = 20000\nwhen_full = \"{when_full}\"");
    let mut rig = Rig::new(20, 2, &queue).await?;
    let mut ferrule = rig.start_ferrule()?;
    rig.seqs
        .wait_for_all(&mut rig.sub, 1, 10, Duration::from_secs(30))
        .await?;
    rig.stop_broker()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.start_broker()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ferrule.terminate(Duration::from_secs(10))?;
    let last = rig.drain().await?;
    let stats = rig.stats()?;
    // Everything still held has been delivered; give stragglers a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    rig.seqs.drain(&mut rig.sub)?;
    let missing = rig.seqs.missing(1, last);
    Ok((
        last,
        stats["dropped_cap"].as_u64().unwrap_or(0),
        missing,
        std::mem::take(&mut rig.seqs),
    ))
}

#[tokio::test]
async fn cap_with_drop_oldest_drops_exactly_the_counted_oldest_entries() -> anyhow::Result<()> {
    let (last, dropped, missing, seqs) = outage_over_the_cap("drop-oldest").await?;
    assert!(dropped > 0, "the outage outgrew the cap");
    assert_eq!(
        missing.len() as u64,
        dropped,
        "drop counter equals the missing sequence numbers: {missing:?}"
    );
    let newest_missing = missing.iter().copied().max().unwrap_or(0);
    let after: Vec<u64> = (newest_missing + 1..=last).collect();
    let unique = seqs.unique();
    assert!(
        after.iter().all(|s| unique.binary_search(s).is_ok()),
        "the newest data is all there"
    );
    eprintln!(
        "drop-oldest: {dropped} dropped of {last}, missing {}..={newest_missing}",
        missing[0]
    );
    Ok(())
}

#[tokio::test]
async fn cap_with_block_drops_nothing() -> anyhow::Result<()> {
    let (last, dropped, missing, _) = outage_over_the_cap("block").await?;
    assert_eq!(dropped, 0);
    assert!(missing.is_empty(), "missing {missing:?} of {last}");
    Ok(())
}

#[tokio::test]
async fn a_corrupt_queue_file_is_quarantined_and_collection_continues() -> anyhow::Result<()> {
    let mut rig = Rig::new(50, 2, "").await?;
    let data = rig.path().join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("queue.redb"), vec![0xA5u8; 64 * 1024])?;
    let mut ferrule = rig.start_ferrule()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while rig.seqs.all.len() < 10 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no readings after quarantine; log:\n{}",
            ferrule.log_text()
        );
        let m = rig.sub.next(Duration::from_secs(30), "readings").await?;
        rig.seqs.push(&m)?;
    }
    let log = ferrule.log_text();
    assert!(log.contains("QUEUE FILE QUARANTINED"), "{log}");
    let aside: Vec<_> = std::fs::read_dir(&data)?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("queue.redb.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the bad file is kept aside for inspection");
    let stats = rig.stats()?;
    assert_eq!(
        stats["quarantined"].as_array().map(Vec::len),
        Some(1),
        "{stats}"
    );
    // Numbering restarts above anything the old file can have held.
    assert!(rig.seqs.unique()[0] > 1_000_000);
    assert!(ferrule.child.try_wait()?.is_none(), "still running");
    ferrule.terminate(Duration::from_secs(10))?;
    // The next start opens the fresh queue normally: no crash loop, no second quarantine.
    let mut again = rig.start_ferrule()?;
    let before = rig.seqs.max();
    let deadline = Instant::now() + Duration::from_secs(30);
    while rig.seqs.max() <= before {
        anyhow::ensure!(Instant::now() < deadline, "no readings after restart");
        let m = rig
            .sub
            .next(Duration::from_secs(30), "readings after restart")
            .await?;
        rig.seqs.push(&m)?;
    }
    assert!(!again.log_text().contains("QUARANTINED"));
    again.terminate(Duration::from_secs(10))?;
    Ok(())
}

/// A tmpfs mounted by the test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> anyhow::Result<Option<SmallDisk>> {
        std::fs::create_dir_all(path)?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(std::process::Stdio::piped())
            .output()?;
        if !status.status.success() {
            let why = String::from_utf8_lossy(&status.stderr).trim().to_string();
            // `cargo xtask test` (CI's command) and CI itself must run this
            // test; elsewhere (a developer's unprivileged shell) it is
            // skipped, saying why. The same faults run everywhere as the
            // `queue::faults` unit tests.
            anyhow::ensure!(
                std::env::var_os("CI").is_none()
                    && std::env::var_os("FERRULE_FULL_SUITE").is_none(),
                "cannot mount a tmpfs, so the disk-full test cannot run (it may be skipped only outside `cargo xtask test` and CI): {why}"
            );
            eprintln!("skipped outside CI: cannot mount a tmpfs here ({why})");
            return Ok(None);
        }
        Ok(Some(SmallDisk(path.to_path_buf())))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_pauses_capture_without_crash_or_loss_and_resumes() -> anyhow::Result<()> {
    let mut rig = Rig::new(20, 5, "").await?;
    let data = rig.path().join("data");
    let Some(_disk) = SmallDisk::mount(&data, "16m")? else {
        return Ok(());
    };
    let mut ferrule = rig.start_ferrule()?;
    rig.seqs
        .wait_for_all(&mut rig.sub, 1, 10, Duration::from_secs(30))
        .await?;
    // Broker away, so the queue must grow; then fill the disk.
    rig.stop_broker()?;
    let filler = data.join("filler");
    let _ = std::process::Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", filler.display()),
            "bs=64k",
        ])
        .output()?;
    ferrule
        .wait_for_log("queue commit failed", Duration::from_secs(60))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        ferrule.child.try_wait()?.is_none(),
        "no crash on a full disk"
    );
    std::fs::remove_file(&filler)?;
    rig.start_broker()?;
    ferrule
        .wait_for_log("queue writes resumed", Duration::from_secs(60))
        .await?;
    // Capture and publishing carry on normally afterwards.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ferrule.terminate(Duration::from_secs(10))?;
    // The file is intact: it opens and drains.
    let last = rig.drain_and_expect_all().await?;
    eprintln!(
        "disk full: {last} committed, none lost, {} duplicates",
        rig.seqs.duplicates()
    );
    Ok(())
}
