//! Containment of what plugins return and hold: oversized returns are
//! refused before they are copied, every value the WIT can carry is
//! published and exported faithfully, output that breaks the WIT's
//! promises is rejected or flagged and counted, descriptors and disk are
//! budgeted per plugin — each with the healthy `sim` driver beside the
//! hostile ones keeping its rate with no sequence gap.

use std::time::Duration;

use ferrule_tests::{Mosquitto, Subscriber, run_ferrule};

use crate::sandbox::{
    Run, assert_healthy, assert_no_sequence_gap, backoff, hostile, observe, rss_peak,
    start_with_open_files,
};
use ferrule_tests::{GatewayToml, PluginToml};

/// Restarts that back off quickly, and a telemetry snapshot every second.
fn runtime_and_telemetry(g: GatewayToml) -> GatewayToml {
    backoff(300, 2000)(g).set("telemetry", "interval_s", 1)
}

async fn telemetry_subscriber(run: &Run) -> anyhow::Result<Subscriber> {
    Subscriber::connect(&run.pki, run.broker.port, "ferrule/gw-test/telemetry").await
}

/// Every telemetry snapshot received so far, as JSON, with its size.
fn snapshots(sub: &mut Subscriber) -> anyhow::Result<Vec<(usize, serde_json::Value)>> {
    let mut out = Vec::new();
    while let Ok(m) = sub.messages.try_recv() {
        out.push((m.payload.len(), m.json()?));
    }
    Ok(out)
}

fn driver<'a>(snapshot: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    snapshot["drivers"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

#[tokio::test]
async fn oversized_returns_are_refused_before_copying_and_telemetry_is_still_published()
-> anyhow::Result<()> {
    let big = "limits = { memory_mb = 128, timeout_ms = 5000 }";
    let drivers = vec![
        hostile(
            "huge-status",
            "behavior = \"huge-status\"\ncount = 5000\nbytes = 4096",
            big,
        )?,
        hostile(
            "wide-status",
            "behavior = \"huge-status\"\ncount = 100\nbytes = 10",
            "",
        )?,
        hostile("huge-log", "behavior = \"huge-log\"\nbytes = 30000000", big)?,
        hostile(
            "huge-error",
            "behavior = \"huge-error\"\nbytes = 30000000",
            big,
        )?,
        hostile(
            "long-error",
            "behavior = \"huge-error\"\nbytes = 100000",
            "",
        )?,
    ];
    let mut run = start_with_open_files(drivers, runtime_and_telemetry, |_| {}, None).await?;
    let mut telemetry = telemetry_subscriber(&run).await?;
    let sampler = rss_peak(run.ferrule.child.id(), Duration::from_secs(14));
    let window = Duration::from_secs(10);
    let (healthy, all) = observe(&mut run, window).await?;
    let log = run.ferrule.log_text();
    assert_healthy(healthy, window, &all, &log);

    for needle in [
        "plugin huge-status: status output refused: more than max_result_bytes = 2097152",
        "plugin wide-status: status output refused: 100 extra entries, more than max_status_entries = 64",
        "plugin huge-log: poll output refused: more than max_result_bytes = 2097152",
        "plugin huge-error: poll output refused: more than max_result_bytes = 2097152",
        "plugin long-error: poll failed: protocol error: EEEE",
        "more bytes cut)",
    ] {
        assert!(log.contains(needle), "{needle:?} not in the log:\n{log}");
    }
    // Every snapshot was published, each within the default budget, and
    // names every driver.
    let snaps = snapshots(&mut telemetry)?;
    assert!(snaps.len() >= 8, "{} snapshots in {window:?}", snaps.len());
    for (size, s) in &snaps {
        assert!(*size <= 64 << 10, "a snapshot of {size} bytes");
        assert_eq!(s["drivers"].as_array().map(Vec::len), Some(6), "{s}");
    }
    let (_, last) = snaps.last().ok_or_else(|| anyhow::anyhow!("no snapshot"))?;
    for name in ["huge-status", "wide-status", "huge-log", "huge-error"] {
        let refused = driver(last, name)["outputs_refused"].as_u64().unwrap_or(0);
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(name)).collect();
        assert!(
            refused >= 2,
            "{name}: outputs_refused {refused}: {lines:#?}"
        );
    }
    let peak_mib = sampler.await?? / 1024;
    eprintln!(
        "oversized returns: {} snapshots, largest {} bytes; host RSS peak {peak_mib} MiB (was ~650 MiB before returns were bounded)",
        snaps.len(),
        snaps.iter().map(|(n, _)| *n).max().unwrap_or(0)
    );
    assert!(peak_mib < 400, "host RSS peaked at {peak_mib} MiB");
    assert!(run.ferrule.child.try_wait()?.is_none(), "the host survived");
    Ok(())
}

#[tokio::test]
async fn odd_values_are_published_and_exported_faithfully_and_broken_promises_are_counted()
-> anyhow::Result<()> {
    let drivers = vec![
        hostile("odd", "behavior = \"odd-values\"", "")?,
        hostile("bad-readings", "behavior = \"bad-readings\"", "")?,
        hostile("bad-status", "behavior = \"bad-status\"", "")?,
    ];
    let mut run = start_with_open_files(drivers, runtime_and_telemetry, |_| {}, None).await?;
    let mut telemetry = telemetry_subscriber(&run).await?;
    let window = Duration::from_secs(5);
    let (healthy, all) = observe(&mut run, window).await?;
    let log = run.ferrule.log_text();
    assert_healthy(healthy, window, &all, &log);

    let odd = all
        .iter()
        .find(|v| v["driver"] == "odd")
        .ok_or_else(|| anyhow::anyhow!("no message from odd"))?;
    let value = |channel: &str| {
        odd["readings"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["channel"] == channel))
            .map(|r| (r["type"].clone(), r["value"].clone()))
            .unwrap_or_default()
    };
    assert_eq!(value("nan"), ("float".into(), "NaN".into()), "{odd}");
    assert_eq!(value("inf"), ("float".into(), "inf".into()));
    assert_eq!(value("neg-inf"), ("float".into(), "-inf".into()));
    assert_eq!(
        value("neg-zero").1.as_f64().map(f64::to_bits),
        Some((-0.0f64).to_bits())
    );
    assert_eq!(
        value("control").1,
        "tab\tnul\u{0}bell\u{7}esc\u{1b}\"quote\"\\"
    );
    assert_eq!(value("empty-text"), ("text".into(), "".into()));
    assert_eq!(value("empty-bytes"), ("bytes".into(), "".into()));
    for r in odd["readings"].as_array().into_iter().flatten() {
        assert_eq!(r["quality"], "good", "{r}");
    }

    let bad = all
        .iter()
        .find(|v| v["driver"] == "bad-readings")
        .ok_or_else(|| anyhow::anyhow!("no message from bad-readings"))?;
    let kept: Vec<(String, String)> = bad["readings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["channel"].as_str().unwrap_or("?").to_string(),
                r["quality"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> =
        [("good", "good"), ("epoch", "bad"), ("far-future", "bad")]
            .iter()
            .map(|(c, q)| (c.to_string(), q.to_string()))
            .collect();
    assert_eq!(kept, expected, "{bad}");
    assert!(
        log.contains("plugin output checked: readings rejected or flagged"),
        "{log}"
    );

    let snaps = snapshots(&mut telemetry)?;
    let (_, last) = snaps.last().ok_or_else(|| anyhow::anyhow!("no snapshot"))?;
    let br = driver(last, "bad-readings");
    let polls = br["polls_ok"].as_u64().unwrap_or(0);
    assert!(polls > 0, "{last}");
    // Empty and control-character names (declared, refused), the same
    // instant twice, an index not in the table, a text value for the
    // integer channel "good".
    assert_eq!(br["readings_rejected"].as_u64(), Some(5 * polls), "{br}");
    assert_eq!(br["channels_refused"].as_u64(), Some(2), "{br}");
    assert_eq!(br["timestamps_flagged"].as_u64(), Some(2 * polls), "{br}");
    let bs = driver(last, "bad-status");
    assert!(
        bs["status_fields_rejected"].as_u64().unwrap_or(0) >= 2,
        "{bs}"
    );
    assert_eq!(
        bs["device"]["battery_percent"],
        serde_json::Value::Null,
        "{bs}"
    );
    assert_eq!(
        bs["device"]["signal_quality"],
        serde_json::Value::Null,
        "{bs}"
    );

    // With the broker gone, what is captured stays queued; the export
    // writes all of it, odd values included, and exits 0.
    run.broker.process.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.ferrule.terminate(Duration::from_secs(20))?;
    let config = run.dir.path().join("gateway.toml");
    let config = config.to_string_lossy();
    let (ok, out, err) = run_ferrule(
        run.dir.path(),
        &["queue", "export", &config, "--format", "jsonl"],
    )?;
    assert!(ok, "export failed: {err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let exported_odd = lines.iter().filter(|l| l["driver"] == "odd").count();
    assert!(exported_odd > 0, "no odd entry exported: {err}");
    assert!(out.contains(r#""type":"float","value":"NaN""#), "{out}");
    eprintln!(
        "export: {} entries ({exported_odd} with odd values); {}",
        lines.len(),
        err.trim()
    );
    let (ok, shown, err) = run_ferrule(run.dir.path(), &["telemetry", "show", &config])?;
    assert!(ok, "telemetry show failed: {err}");
    assert!(shown.contains("bad-readings"), "{shown}");
    Ok(())
}

#[tokio::test]
async fn descriptors_and_disk_are_budgeted_and_delivery_resumes_after_a_broker_restart()
-> anyhow::Result<()> {
    // A peer that accepts connections and keeps them.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let peer = listener.local_addr()?;
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().take(2000) {
            held.extend(conn.ok());
        }
    });
    let drivers = vec![
        hostile(
            "files",
            "behavior = \"hold-files\"\ncount = 50",
            "data_dir = true",
        )?,
        hostile(
            "sockets",
            &format!("behavior = \"hold-sockets\"\ncount = 50\ntargets = [\"{peer}\"]"),
            &format!("allow_net = [\"{peer}\"]"),
        )?,
        hostile(
            "filler",
            "behavior = \"fill-disk\"\nbytes = 1048576",
            "data_dir = true\nlimits = { data_dir_quota_mb = 8 }",
        )?,
    ];
    // The service manager's limit of 1,024 descriptors, soft and hard.
    let mut run = start_with_open_files(drivers, runtime_and_telemetry, |_| {}, Some(1024)).await?;
    let mut telemetry = telemetry_subscriber(&run).await?;
    let window = Duration::from_secs(6);
    let (healthy, all) = observe(&mut run, window).await?;
    let log = run.ferrule.log_text();
    assert_healthy(healthy, window, &all, &log);

    let last_of = |name: &str| {
        all.iter()
            .rev()
            .find(|v| v["driver"] == name)
            .cloned()
            .unwrap_or_default()
    };
    let reading = |msg: &serde_json::Value, channel: &str| {
        msg["readings"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["channel"] == channel))
            .map(|r| r["value"].clone())
            .unwrap_or_default()
    };
    let files = last_of("files");
    assert_eq!(reading(&files, "held"), 32, "{files}");
    assert!(
        reading(&files, "last-error")
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{files}"
    );
    let sockets = last_of("sockets");
    assert_eq!(reading(&sockets, "held"), 32, "{sockets}");
    let filler = last_of("filler");
    let fill = reading(&filler, "fill");
    assert!(
        fill.as_str().is_some_and(|f| f.starts_with("denied:")),
        "the quota stopped the writes: {filler}"
    );
    let used = dir_size(&run.dir.path().join("data/plugins/filler"));
    assert!(used <= 8 << 20, "the data dir holds {used} bytes");

    let snaps = snapshots(&mut telemetry)?;
    let (_, last) = snaps.last().ok_or_else(|| anyhow::anyhow!("no snapshot"))?;
    assert_eq!(driver(last, "files")["open_files"], 32, "{last}");
    assert!(driver(last, "files")["open_refused"].as_u64().unwrap_or(0) > 0);
    assert_eq!(driver(last, "sockets")["open_files"], 32);
    let f = driver(last, "filler");
    assert!(f["quota_refused"].as_u64().unwrap_or(0) > 0, "{f}");
    assert!(
        f["data_dir_bytes"].as_u64().unwrap_or(u64::MAX) <= 8 << 20,
        "{f}"
    );
    eprintln!(
        "budgets: files held 32 ({}), sockets held 32, data dir {used} bytes under an 8 MiB quota ({})",
        reading(&files, "last-error"),
        fill
    );

    // The broker restarts; the gateway reconnects although its plugins
    // hold all they may, and delivery resumes with no gap.
    let port = run.broker.port;
    run.broker.process.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.broker = Mosquitto::start(run.dir.path(), &run.pki, port, "")?;
    run.sub = Subscriber::connect(&run.pki, port, "ferrule/gw-test/data/#").await?;
    let (healthy, all) = observe(&mut run, window).await?;
    let log = run.ferrule.log_text();
    assert!(!log.contains("Too many open files"), "{log}");
    // What was captured during the restart arrives too, so at least the
    // window's worth; every sequence since the restart, none missing.
    assert!(
        healthy >= 54,
        "{healthy} healthy messages after the restart"
    );
    let (first, last) = assert_no_sequence_gap(&all);
    eprintln!(
        "after the broker restart: {healthy} healthy messages, seqs {first}..={last} contiguous"
    );
    Ok(())
}

/// Bytes of the files under `dir` (their lengths).
fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Peak host RSS (KiB) over `window` of a gateway running `drivers`
/// beside the healthy one, and the last telemetry snapshot.
async fn peak_rss_kib(
    drivers: Vec<PluginToml>,
    window: Duration,
) -> anyhow::Result<(u64, serde_json::Value)> {
    let mut run = start_with_open_files(drivers, runtime_and_telemetry, |_| {}, None).await?;
    let mut telemetry = telemetry_subscriber(&run).await?;
    let sampler = rss_peak(run.ferrule.child.id(), window + Duration::from_secs(2));
    // Memory is what is measured here: at ~16 MB/s of results the debug
    // build's queue, not the sandbox, sets the healthy driver's pace.
    let (healthy, _) = observe(&mut run, window).await?;
    eprintln!("healthy driver: {healthy} messages in {window:?}");
    let peak = sampler.await??;
    let (_, last) = snapshots(&mut telemetry)?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no telemetry snapshot"))?;
    Ok((peak, last))
}

/// The plugins' linear memory (KiB) in a snapshot.
fn linear_kib(snapshot: &serde_json::Value) -> u64 {
    snapshot["drivers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["memory_bytes"].as_u64())
        .sum::<u64>()
        / 1024
}

/// Eight drivers each returning the largest output the default limits
/// allow (results of ~2 MiB, statuses at their entry and size limits, log
/// lines at their length limit) against the same eight returning one small
/// reading each: none of those outputs is refused or costs an instance,
/// and the host's peak RSS stays bounded. The target — at most 64 MiB
/// above the small outputs' peak, the plugins' own linear memory included —
/// is checked where memory targets are, by a benchmark of the release
/// build (`cargo xtask bench hostile`: 40.5 MiB on 2026-12-02). This debug
/// build copies and overlaps more (61–67 MiB on the same machine and day,
/// run to run), so here the bound is half as much again: it catches
/// memory that grows with the outputs, not the build's own overhead.
const DEBUG_BOUND_MIB: f64 = 96.0;

#[tokio::test]
async fn the_largest_allowed_outputs_of_eight_drivers_keep_host_rss_bounded() -> anyhow::Result<()>
{
    // Every output limit stays at its default. The call deadline does not:
    // a debug build sharing two cores with other tests may take over a
    // second to build and copy a 2 MiB result, and a timeout would measure
    // the machine's load, not the host's memory.
    let eight = |config: &str| -> anyhow::Result<Vec<PluginToml>> {
        (0..8)
            .map(|i| {
                Ok(hostile(&format!("d{i}"), config, "")?
                    .set("interval_ms", 1000)
                    .limit("timeout_ms", 10_000))
            })
            .collect()
    };
    let window = Duration::from_secs(8);
    let (idle, idle_snapshot) =
        peak_rss_kib(eight("behavior = \"readings\"\ncount = 1")?, window).await?;
    let (largest, largest_snapshot) = peak_rss_kib(
        eight("behavior = \"largest\"\ncount = 31\nbytes = 65536\npairs = 64")?,
        window,
    )
    .await?;
    for i in 0..8 {
        let d = driver(&largest_snapshot, &format!("d{i}"));
        assert_eq!(d["outputs_refused"], 0, "{d}");
        assert_eq!(d["restarts"], 0, "{d}");
        assert!(d["readings"].as_u64().unwrap_or(0) >= 31, "{d}");
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    let above = largest.saturating_sub(idle);
    let linear = linear_kib(&largest_snapshot).saturating_sub(linear_kib(&idle_snapshot));
    eprintln!(
        "host RSS peak, 8 drivers: idle {:.1} MiB, largest allowed outputs {:.1} MiB: {:.1} MiB above idle (release target 64 MiB, debug bound {DEBUG_BOUND_MIB} MiB), of which {:.1} MiB the plugins' own linear memory",
        mib(idle),
        mib(largest),
        mib(above),
        mib(linear),
    );
    assert!(
        mib(above) <= DEBUG_BOUND_MIB,
        "{:.1} MiB above idle",
        mib(above)
    );
    Ok(())
}
