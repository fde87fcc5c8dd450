//! The sandbox holds: each hostile fixture is stopped or denied, while a
//! healthy `sim` driver beside it keeps its rate with no sequence gap, and
//! the host's memory stays bounded.

use std::path::Path;
use std::time::{Duration, Instant};

use ferrule::dev::config::table;
use ferrule_tests::{
    GatewayToml, Mosquitto, Pki, PluginToml, Process, Rig, Subscriber, guest_plugin, log_clock,
    plugin, rss_kib,
};
pub(crate) use ferrule_tests::{hostile_driver as hostile, rss_peak};

pub(crate) const HEALTHY_INTERVAL_MS: u64 = 100;

pub(crate) struct Run {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) broker: Mosquitto,
    pub(crate) pki: Pki,
    pub(crate) sub: Subscriber,
    pub(crate) ferrule: Process,
}

/// Starts a gateway with the healthy driver and `drivers`, its config
/// adjusted by `configure`.
async fn start(
    drivers: Vec<PluginToml>,
    configure: impl FnOnce(GatewayToml) -> GatewayToml,
    prepare: impl FnOnce(&Path),
) -> anyhow::Result<Run> {
    start_with_open_files(drivers, configure, prepare, None).await
}

/// Rebuilds of failed plugin instances back off from `min_ms` to `max_ms`.
pub(crate) fn backoff(min_ms: i64, max_ms: i64) -> impl FnOnce(GatewayToml) -> GatewayToml {
    move |g| {
        g.set("runtime", "restart_min_ms", min_ms)
            .set("runtime", "restart_max_ms", max_ms)
    }
}

/// Like `start`, with the gateway's open-file limit set to `open_files`.
pub(crate) async fn start_with_open_files(
    drivers: Vec<PluginToml>,
    configure: impl FnOnce(GatewayToml) -> GatewayToml,
    prepare: impl FnOnce(&Path),
    open_files: Option<u64>,
) -> anyhow::Result<Run> {
    let rig = Rig::start("", "ferrule/gw-test/data/#").await?;
    prepare(&rig.data_dir());
    let healthy = PluginToml::new("healthy", &plugin("sim")?)
        .set("interval_ms", HEALTHY_INTERVAL_MS as i64)
        .config(
            "channels",
            toml::Value::Array(vec![table([("name", "n"), ("signal", "counter")])]),
        );
    let gateway = drivers.into_iter().fold(
        configure(rig.gateway()).driver(healthy),
        GatewayToml::driver,
    );
    let (_, ferrule) = rig.run(&gateway, open_files)?;
    let Rig {
        dir,
        pki,
        broker,
        sub,
        ..
    } = rig;
    Ok(Run {
        dir,
        broker,
        pki,
        sub,
        ferrule,
    })
}

/// Messages received over `window` after the first healthy one: (healthy
/// count, every data message as JSON).
pub(crate) async fn observe(
    run: &mut Run,
    window: Duration,
) -> anyhow::Result<(usize, Vec<serde_json::Value>)> {
    let mut all = Vec::new();
    loop {
        let m = run
            .sub
            .next(
                Duration::from_secs(30),
                "the healthy driver's first reading",
            )
            .await?;
        let v = m.json()?;
        let healthy = v["driver"] == "healthy";
        all.push(v);
        if healthy {
            break;
        }
    }
    let until = Instant::now() + window;
    let mut healthy = 0;
    while Instant::now() < until {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(Some(m)) = tokio::time::timeout(left, run.sub.messages.recv()).await else {
            break;
        };
        let v = m.json()?;
        if v["driver"] == "healthy" {
            healthy += 1;
        }
        all.push(v);
    }
    Ok((healthy, all))
}

/// The healthy driver kept its rate (within 10 %) and no sequence is missing.
pub(crate) fn assert_healthy(
    healthy: usize,
    window: Duration,
    all: &[serde_json::Value],
    log: &str,
) {
    let expected = window.as_millis() as f64 / HEALTHY_INTERVAL_MS as f64;
    let ratio = healthy as f64 / expected;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "healthy driver: {healthy} messages in {window:?}, expected {expected:.0} (ratio {ratio:.2}); log:\n{log}"
    );
    let (first, last) = assert_no_sequence_gap(all);
    eprintln!(
        "healthy driver: {healthy} messages in {window:?} (expected {expected:.0}), seqs {first}..={last} contiguous"
    );
}

/// Every sequence between the lowest and highest of `all` arrived; returns
/// that range.
pub(crate) fn assert_no_sequence_gap(all: &[serde_json::Value]) -> (u64, u64) {
    let mut seqs: Vec<u64> = all.iter().filter_map(|v| v["seq"].as_u64()).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let (first, last) = (seqs[0], seqs[seqs.len() - 1]);
    assert_eq!(
        seqs.len() as u64,
        last - first + 1,
        "sequence gap in {first}..={last}"
    );
    (first, last)
}

/// Runs `drivers` beside the healthy one for 10 s (restarts backing off
/// from 300 ms to 2 s); checks the healthy driver kept its rate with no gap
/// and nothing else produced data; returns the run, its log and the window.
async fn hostiles_beside_the_healthy_driver(
    drivers: Vec<PluginToml>,
    configure: impl FnOnce(GatewayToml) -> GatewayToml,
) -> anyhow::Result<(Run, String, Duration)> {
    let mut run = start(drivers, |g| backoff(300, 2000)(configure(g)), |_| {}).await?;
    // The gateway's first start may compile large components (once per
    // run, into a shared cache): wait for it before the measured window.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !run.ferrule.log_text().contains("ferrule running") {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not up in 300 s:\n{}",
            run.ferrule.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let window = Duration::from_secs(10);
    let (healthy, all) = observe(&mut run, window).await?;
    let log = run.ferrule.log_text();
    assert_healthy(healthy, window, &all, &log);
    let others: Vec<&serde_json::Value> = all.iter().filter(|v| v["driver"] != "healthy").collect();
    assert!(
        others.is_empty(),
        "only the healthy driver produced data: {others:?}"
    );
    Ok((run, log, window))
}

/// (seconds after the first log line, `stopped after N ms`) of every timeout
/// of `plugin`'s `call`.
fn stopped_after_ms(log: &str, plugin: &str, call: &str) -> Vec<(f64, u64)> {
    let start = log.lines().find_map(log_clock).unwrap_or(0.0);
    let needle = format!("plugin {plugin}: {call} did not return within");
    log.lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| {
            let at = (log_clock(l)? - start).rem_euclid(86_400.0);
            let ms = l
                .split("(stopped after ")
                .nth(1)?
                .split(" ms")
                .next()?
                .parse()
                .ok()?;
            Some((at, ms))
        })
        .collect()
}

/// Kept apart from the crashers below so the interruption figures measure
/// the deadline mechanism, not other plugins' host work.
#[tokio::test]
async fn loops_and_sleeps_are_stopped_at_their_deadline_while_a_healthy_driver_keeps_its_rate()
-> anyhow::Result<()> {
    let drivers = vec![
        hostile(
            "loop-poll",
            "behavior = \"loop-in-poll\"",
            "limits = { timeout_ms = 200 }",
        )?,
        hostile(
            "loop-init",
            "behavior = \"loop-in-init\"",
            "limits = { timeout_ms = 200 }",
        )?,
        hostile(
            "sleeper",
            "behavior = \"sleep\"\nsleep_ms = 5000",
            "limits = { timeout_ms = 200 }",
        )?,
    ];
    let (mut run, log, _window) = hostiles_beside_the_healthy_driver(drivers, |g| g).await?;

    for (plugin, call) in [
        ("loop-poll", "poll"),
        ("loop-init", "init"),
        ("sleeper", "poll"),
    ] {
        let stops = stopped_after_ms(&log, plugin, call);
        eprintln!("{plugin}: {call} (seconds into the run, stopped after ms): {stops:?}");
        assert!(
            stops.len() >= 3,
            "{plugin} {call} timed out and was retried repeatedly:\n{log}"
        );
        // Every interruption, start-up included, within deadline + 100 ms.
        let worst = stops.iter().map(|(_, ms)| *ms).max().unwrap_or(0);
        eprintln!("{plugin} {call}: worst interruption {worst} ms (deadline 200 ms)");
        assert!(
            worst <= 300,
            "{plugin} {call} stopped {worst} ms after it began, over deadline + 100 ms:\n{log}"
        );
    }
    assert!(run.ferrule.child.try_wait()?.is_none(), "the host survived");
    Ok(())
}

#[tokio::test]
async fn crashes_and_oversized_output_are_stopped_while_a_healthy_driver_keeps_its_rate()
-> anyhow::Result<()> {
    let drivers = vec![
        hostile("recursion", "behavior = \"recursion\"", "")?,
        hostile("panic", "behavior = \"panic\"", "")?,
        hostile("many", "behavior = \"readings\"\ncount = 20000", "")?,
        hostile("millions", "behavior = \"readings\"\ncount = 3000000", "")?,
    ];
    let (mut run, log, window) = hostiles_beside_the_healthy_driver(drivers, |g| g).await?;

    assert!(log.contains("plugin recursion: poll trapped"), "{log}");
    assert!(log.contains("plugin panic: poll trapped"), "{log}");
    assert!(
        log.contains(
            "plugin many: poll output refused: 20000 readings, more than max_readings = 10000"
        ),
        "{log}"
    );
    assert!(
        log.contains("plugin millions: poll trapped")
            || log.contains("plugin millions: poll output refused"),
        "{log}"
    );
    // The supervisor rebuilds them, with backoff: a few restarts each, not a busy loop.
    let panics = log.matches("plugin panic: poll trapped").count();
    assert!(
        (2..=20).contains(&panics),
        "{panics} panic restarts in {window:?}"
    );
    assert!(run.ferrule.child.try_wait()?.is_none(), "the host survived");
    Ok(())
}

#[tokio::test]
async fn a_memory_bomb_fails_at_its_cap_and_host_memory_stays_bounded() -> anyhow::Result<()> {
    let drivers = hostile(
        "bomb",
        "behavior = \"memory-bomb\"",
        "limits = { memory_mb = 32 }",
    )?;
    let mut run = start(vec![drivers], backoff(200, 400), |_| {}).await?;
    let sampler = rss_peak(run.ferrule.child.id(), Duration::from_secs(12));
    let window = Duration::from_secs(8);
    let (healthy, all) = observe(&mut run, window).await?;
    let log = run.ferrule.log_text();
    assert_healthy(healthy, window, &all, &log);
    let bombs = log.matches("plugin bomb: poll trapped").count();
    assert!(
        bombs >= 3,
        "the bomb went off and was rebuilt ({bombs}):\n{log}"
    );
    let max_rss_mib = sampler.await?? / 1024;
    eprintln!("memory bomb: {bombs} traps at the 32 MiB cap; host RSS peaked at {max_rss_mib} MiB");
    assert!(
        max_rss_mib < 160,
        "host RSS {max_rss_mib} MiB with a 32 MiB plugin cap"
    );
    Ok(())
}

#[tokio::test]
async fn a_100_mib_string_is_refused_with_a_clear_error() -> anyhow::Result<()> {
    let drivers = hostile(
        "huge",
        "behavior = \"huge-string\"\nbytes = 104857600",
        "limits = { memory_mb = 400, timeout_ms = 5000 }",
    )?;
    let mut run = start(vec![drivers], backoff(1000, 5000), |_| {}).await?;
    let window = Duration::from_secs(6);
    let (healthy, all) = observe(&mut run, window).await?;
    let log = run.ferrule.log_text();
    assert!(
        log.contains("plugin huge: poll output refused: more than max_result_bytes = 2097152 in one result or one call to the host (refused before copying)"),
        "{log}"
    );
    assert_healthy(healthy, window, &all, &log);
    Ok(())
}

#[tokio::test]
async fn escapes_are_denied_and_only_granted_capabilities_work() -> anyhow::Result<()> {
    // Two TCP peers on loopback: one on the allow-list, one not.
    let allowed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let refused = std::net::TcpListener::bind("127.0.0.1:0")?;
    let (allowed_addr, refused_addr) = (allowed.local_addr()?, refused.local_addr()?);
    let refused_hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for (listener, hits) in [(allowed, None), (refused, Some(refused_hits.clone()))] {
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Some(h) = &hits {
                    h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let mut s = stream;
                let mut buf = [0u8; 5];
                if std::io::Read::read_exact(&mut s, &mut buf).is_ok() {
                    let _ = std::io::Write::write_all(&mut s, b"pong");
                }
            }
        });
    }
    let drivers = vec![
        hostile("escape", "behavior = \"escape\"", "data_dir = true")?,
        hostile(
            "net",
            &format!("behavior = \"connect\"\ntargets = [\"{allowed_addr}\", \"{refused_addr}\"]"),
            &format!("allow_net = [\"{allowed_addr}\"]"),
        )?,
        hostile("env", "behavior = \"env\"", "")?,
    ];
    let mut run = start(
        drivers,
        |g| g,
        |data| {
            // An attacker's symlinks inside the plugin's own directory.
            let own = data.join("plugins/escape");
            let _ = std::fs::create_dir_all(&own);
            let _ = std::os::unix::fs::symlink("/etc/passwd", own.join("link-file"));
            let _ = std::os::unix::fs::symlink("/etc", own.join("link-dir"));
        },
    )
    .await?;
    let mut seen = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 3 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "missing reports: {seen:?}; log:\n{}",
            run.ferrule.log_text()
        );
        let m = run
            .sub
            .next(Duration::from_secs(30), "capability reports")
            .await?;
        let v = m.json()?;
        let driver = v["driver"].as_str().unwrap_or_default().to_string();
        if driver != "healthy" {
            seen.insert(driver, v["readings"].clone());
        }
    }
    let value = |driver: &str, channel: &str| -> String {
        seen[driver]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["channel"] == channel))
            .map(|r| r["value"].to_string())
            .unwrap_or_else(|| format!("no reading {channel}"))
    };
    for channel in [
        "etc-passwd",
        "dotdot",
        "relative-dotdot",
        "root-listing",
        "symlink-file",
        "symlink-dir",
    ] {
        let v = value("escape", channel);
        assert!(v.contains("denied"), "escape {channel}: {v}");
    }
    assert_eq!(
        value("escape", "own-data"),
        "\"ok: mine\"",
        "its own data dir works"
    );
    assert!(run.dir.path().join("data/plugins/escape/own.txt").is_file());
    assert_eq!(
        value("net", &allowed_addr.to_string()),
        "\"ok: pong\"",
        "the allowed address works"
    );
    let v = value("net", &refused_addr.to_string());
    assert!(v.contains("denied"), "the other address is refused: {v}");
    assert_eq!(
        refused_hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no packet reached it"
    );
    assert_eq!(value("env", "env-vars"), "0");
    assert_eq!(value("env", "args"), "0");
    eprintln!("escape reports: {seen:?}");
    Ok(())
}

#[tokio::test]
async fn a_log_flood_is_rate_limited_and_tagged() -> anyhow::Result<()> {
    let drivers = hostile(
        "flood",
        "behavior = \"log-flood\"\ncount = 2000",
        "limits = { log_lines_per_s = 20 }",
    )?;
    let mut run = start(vec![drivers], |g| g, |_| {}).await?;
    let window = Duration::from_secs(5);
    let (healthy, all) = observe(&mut run, window).await?;
    let log = run.ferrule.log_text();
    assert_healthy(healthy, window, &all, &log);
    let lines = log.lines().filter(|l| l.contains("flood line")).count();
    // 6,000 lines per poll, every 200 ms; the limit lets ~20/s plus a burst of 40 through.
    assert!(lines <= 20 * 7 + 40, "{lines} flood lines logged");
    assert!(lines >= 20, "some lines get through: {lines}");
    assert!(
        log.contains("plugin log rate limit: lines dropped"),
        "{log}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains("flood line"))
            .all(|l| l.contains("plugin=\"flood\"")),
        "lines are tagged"
    );
    assert!(log.contains("source=\"stdout\""), "stdout is captured");
    assert!(log.contains("source=\"stderr\""), "stderr is captured");
    eprintln!("log flood: {lines} of ~150,000 lines logged in {window:?}");
    Ok(())
}

fn restarts(run: &Run) -> usize {
    run.ferrule
        .log_text()
        .matches("plugin panic: poll trapped")
        .count()
}

async fn wait_for_restarts(run: &Run, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(240);
    while restarts(run) < n {
        anyhow::ensure!(Instant::now() < deadline, "only {} restarts", restarts(run));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_thousand_trap_and_restart_cycles_do_not_leak_host_memory() -> anyhow::Result<()> {
    let drivers = hostile("panic", "behavior = \"panic\"", "")?.set("interval_ms", 1);
    let run = start(vec![drivers], backoff(1, 1), |_| {}).await?;
    let pid = run.ferrule.child.id();
    wait_for_restarts(&run, 200).await?;
    let before = rss_kib(pid)?;
    let at = restarts(&run);
    wait_for_restarts(&run, at + 1000).await?;
    let after = rss_kib(pid)?;
    let growth_kib = after.saturating_sub(before);
    eprintln!(
        "1000 trap-and-restart cycles: host RSS {} KiB -> {} KiB (+{} KiB)",
        before, after, growth_kib
    );
    assert!(
        growth_kib < 5 * 1024,
        "RSS grew by {growth_kib} KiB over 1000 restarts"
    );
    Ok(())
}

/// A hostile Python or JavaScript driver (sdk/python, sdk/js; fixtures in
/// tests/fixtures/guest) of `kit` (`py` or `js`) doing `behavior`.
fn guest_hostile(kit: &str, behavior: &str) -> anyhow::Result<PluginToml> {
    Ok(PluginToml::new(
        &format!("{kit}-{behavior}"),
        &guest_plugin(&format!("{kit}-hostile"))?,
    )
    .set("interval_ms", 200)
    .limit("memory_mb", 64)
    .limit("timeout_ms", 500)
    .config("behavior", behavior))
}

#[tokio::test]
async fn guest_language_loops_memory_bombs_and_exceptions_are_contained() -> anyhow::Result<()> {
    let drivers = ["py", "js"]
        .into_iter()
        .flat_map(|kit| ["loop", "memory-bomb", "raise"].map(move |b| guest_hostile(kit, b)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (_run, log, _window) =
        hostiles_beside_the_healthy_driver(drivers, crate::guest::shared_cache).await?;
    for kit in ["py", "js"] {
        let loop_line = format!("plugin {kit}-loop: poll did not return within");
        assert!(
            log.contains(&loop_line),
            "{loop_line:?} not in the log:\n{log}"
        );
        let bomb: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("{kit}-memory-bomb")) && l.contains("poll"))
            .collect();
        assert!(
            bomb.iter()
                .any(|l| l.contains("memory") || l.contains("Memory")),
            "{kit}-memory-bomb: no poll failure naming memory in the log:\n{log}"
        );
        let raised = match kit {
            "py" => "ZeroDivisionError",
            _ => "RangeError: poll",
        };
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("{kit}-raise")) && l.contains(raised)),
            "{kit}-raise: {raised:?} not in the log:\n{log}"
        );
    }
    Ok(())
}
