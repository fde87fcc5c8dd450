//! `cargo xtask fleet --gateways N` (and `cargo xtask bench cluster`): a
//! fleet of N real ferrule processes, each with its own client certificate
//! and a sim driver, publishing first into one mosquitto and then into a
//! three-node RabbitMQ cluster, same run, same load.
//!
//! On the cluster each gateway lists every node in `mqtt.hosts`, starting
//! on node `i % 3`. Mid-run one node (not the consumer's) is killed with
//! SIGKILL and started again. A consumer with a kept session on another
//! node then checks, per gateway, that every queue sequence number from 1
//! to what the gateway had queued arrived (duplicates allowed). A gateway
//! with a missing sequence fails the run.
//!
//! Figures: aggregate readings/s delivered through each broker over the
//! same window; the reconnect time of the gateways whose node died (from
//! the kill to their log's next "mqtt connected"), median and p90; each
//! broker's memory per connected gateway and CPU per 1,000 messages; the
//! per-gateway CPU and RSS; bytes per reading of the `readings` and
//! `compact` payload formats (half the fleet each).
//!
//! Bounded: N ≤ 1,000 gateways, fixed windows, every wait has a deadline;
//! loopback only. `FERRULE_FLEET_GATEWAYS` (default 50),
//! `FERRULE_FLEET_CHANNELS` and `FERRULE_FLEET_INTERVAL_MS` set the load
//! (10 channels every 1,000 ms in a test build; 100 every 100 ms, a
//! typical gateway's 1,000 readings/s, in a release build);
//! `FERRULE_BENCH_SMOKE=1` runs 3 gateways briefly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferrule::dev::config::{GatewayToml, PluginToml, table};
use ferrule_benches::{self as bench, Report};
use ferrule_tests::rabbit::{RabbitCluster, TlsPaths};
use ferrule_tests::{Mosquitto, Pki, Process, Subscriber, clock_now, log_clock, log_tail};

const PREFIX: &str = "fleet";

fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?}: expected a number")),
        Err(_) => Ok(default),
    }
}

/// The load: gateways, channels per gateway, poll interval.
struct Load {
    gateways: usize,
    channels: usize,
    interval_ms: u64,
    /// The steady window each broker is measured over.
    window: Duration,
}

impl Load {
    fn from_env() -> anyhow::Result<Load> {
        let gateways = env_number("FERRULE_FLEET_GATEWAYS", bench::scaled(50, 3))? as usize;
        if !(1..=1000).contains(&gateways) {
            bail!("FERRULE_FLEET_GATEWAYS={gateways}: expected 1 to 1000");
        }
        // The release build (the benchmark) runs a typical gateway's load:
        // ten devices of 100 registers polled every second, as one driver
        // of 100 channels every 100 ms. The test build (CI's fleet test)
        // runs a light one, so 50 debug gateways fit beside the brokers.
        let (channels, interval_ms) = if cfg!(debug_assertions) {
            (10, 1000)
        } else {
            (100, 100)
        };
        let channels = env_number("FERRULE_FLEET_CHANNELS", channels)? as usize;
        let interval_ms = env_number("FERRULE_FLEET_INTERVAL_MS", interval_ms)?.max(10);
        Ok(Load {
            gateways,
            channels: channels.clamp(1, 1000),
            interval_ms,
            window: Duration::from_secs(bench::scaled(30, 5)),
        })
    }

    fn offered_per_s(&self) -> f64 {
        (self.gateways * self.channels) as f64 * 1000.0 / self.interval_ms as f64
    }
}

/// What the consumer has seen of one gateway.
#[derive(Default)]
struct Seen {
    seqs: Vec<u64>,
    readings: u64,
    bytes: u64,
}

type Tally = Arc<Mutex<HashMap<String, Seen>>>;

/// Counts every data message `sub` receives, per gateway (its `gateway`
/// field), in a task of its own.
fn count(sub: &mut Subscriber) -> Tally {
    let (_, empty) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = std::mem::replace(&mut sub.messages, empty);
    let tally: Tally = Arc::default();
    let counts = tally.clone();
    tokio::spawn(async move {
        while let Some(m) = messages.recv().await {
            if !m.topic.contains("/data/") {
                continue;
            }
            let Ok(v) = m.json() else { continue };
            let (Some(gateway), Some(seq)) = (v["gateway"].as_str(), v["seq"].as_u64()) else {
                continue;
            };
            let readings = v["readings"].as_array().map_or(0, Vec::len) as u64;
            let mut all = counts.lock().unwrap_or_else(|e| e.into_inner());
            let seen = all.entry(gateway.to_string()).or_default();
            seen.seqs.push(seq);
            seen.readings += readings;
            seen.bytes += m.payload.len() as u64;
        }
    });
    tally
}

fn totals(tally: &Tally) -> (u64, u64) {
    let all = tally.lock().unwrap_or_else(|e| e.into_inner());
    (
        all.values().map(|s| s.seqs.len() as u64).sum(),
        all.values().map(|s| s.readings).sum(),
    )
}

/// One gateway of the fleet.
struct Gateway {
    id: String,
    dir: PathBuf,
    config: PathBuf,
    compact: bool,
    process: Option<Process>,
}

impl Gateway {
    fn log(&self) -> String {
        self.process
            .as_ref()
            .map(Process::log_text)
            .unwrap_or_default()
    }

    fn pid(&self) -> anyhow::Result<u32> {
        Ok(self
            .process
            .as_ref()
            .context("gateway not running")?
            .child
            .id())
    }

    /// The last sequence number the gateway has queued.
    fn last_seq(&self) -> anyhow::Result<u64> {
        let stats = ferrule_tests::queue_stats(&self.dir, &self.config)?;
        Ok(stats["next_seq"].as_u64().unwrap_or(1).saturating_sub(1))
    }
}

/// Writes the fleet's configs: gateway `i` has its own certificate (its
/// id as common name), data dir and sim driver; `brokers(i)` is its
/// `mqtt.port` then its `mqtt.hosts`.
fn fleet(
    root: &Path,
    pki: &Pki,
    certs: &[ferrule::dev::certs::CertFiles],
    load: &Load,
    cache: &Path,
    brokers: impl Fn(usize) -> Vec<u16>,
    kept_session: bool,
) -> anyhow::Result<Vec<Gateway>> {
    let sim = ferrule_tests::plugin("sim")?;
    let mut fleet = Vec::new();
    for (i, cert) in certs.iter().enumerate() {
        let id = format!("fleet-gw-{i:04}");
        let dir = root.join(&id);
        std::fs::create_dir_all(&dir)?;
        let ports = brokers(i);
        let channels = (0..load.channels)
            .map(|c| table([("name", format!("c{c}")), ("signal", "counter".into())]))
            .collect();
        let driver = PluginToml::new("sim", &sim)
            .set("interval_ms", load.interval_ms as i64)
            .config("channels", toml::Value::Array(channels));
        let compact = i % 2 == 1;
        let gateway = GatewayToml::new(&id, &dir.join("data"))
            .mqtt_tls("127.0.0.1", ports[0], &pki.ca.cert, &cert.cert, &cert.key)
            .set("mqtt", "topic_prefix", PREFIX)
            .set(
                "mqtt",
                "hosts",
                toml::Value::Array(
                    (ports[1..].iter())
                        .map(|p| format!("127.0.0.1:{p}").into())
                        .collect(),
                ),
            )
            .set("mqtt", "clean_session", !kept_session)
            .set("mqtt", "keep_alive_s", 5)
            .set("mqtt", "reconnect_min_ms", 100)
            .set("mqtt", "reconnect_max_ms", 2000)
            .set(
                "mqtt",
                "payload_format",
                if compact { "compact" } else { "readings" },
            )
            .set("runtime", "compile_cache_dir", cache.display().to_string())
            .set("telemetry", "interval_s", 60)
            .driver(driver);
        let config = dir.join("gateway.toml");
        std::fs::write(&config, gateway.render())?;
        fleet.push(Gateway {
            id,
            dir,
            config,
            compact,
            process: None,
        });
    }
    Ok(fleet)
}

/// Starts every gateway: the first alone (it fills the shared compile
/// cache), the rest in groups of ten, and waits until the consumer has a
/// message from each.
async fn start(fleet: &mut [Gateway], tally: &Tally) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for (i, gateway) in fleet.iter_mut().enumerate() {
        gateway.process = Some(bench::start_ferrule(
            &gateway.dir,
            &gateway.config,
            "ferrule.log",
        )?);
        if i == 0 {
            let first = fleet_first(tally, &gateway.id);
            bench::first_arrival(
                &gateway.id,
                first,
                gateway.process.as_ref().context("started")?,
            )
            .await?;
        } else if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let silent: Vec<&str> = {
            let all = tally.lock().unwrap_or_else(|e| e.into_inner());
            (fleet.iter())
                .filter(|g| !all.contains_key(&g.id))
                .map(|g| g.id.as_str())
                .collect()
        };
        if silent.is_empty() {
            return Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            let first = fleet.iter().find(|g| g.id == silent[0]).context("listed")?;
            bail!(
                "{} of {} gateways never published within 180 s ({:?}…); {}'s log ends:\n{}",
                silent.len(),
                fleet.len(),
                &silent[..silent.len().min(5)],
                first.id,
                log_tail(&first.log(), 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn fleet_first(tally: &Tally, id: &str) -> impl Fn() -> bool + use<> {
    let (tally, id) = (tally.clone(), id.to_string());
    move || {
        tally
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&id)
    }
}

/// How long a broker's idle CPU is measured before the fleet connects.
fn idle_span() -> Duration {
    Duration::from_secs(bench::scaled(10, 2))
}

/// CPU seconds and RSS (KiB) of each pid.
fn usage(pids: &[u32]) -> anyhow::Result<Vec<(f64, u64)>> {
    (pids.iter())
        .map(|&p| ferrule_tests::process_usage(p).map(|(rss, cpu)| (cpu, rss)))
        .collect()
}

/// CPU use of `pids` together over `span`, percent of one core.
async fn cpu_percent(pids: &[u32], span: Duration) -> anyhow::Result<f64> {
    let before = usage(pids)?;
    let t0 = Instant::now();
    tokio::time::sleep(span).await;
    let after = usage(pids)?;
    let cpu: f64 = after.iter().zip(&before).map(|(a, b)| a.0 - b.0).sum();
    Ok(100.0 * cpu / t0.elapsed().as_secs_f64())
}

/// What one broker's steady window measured.
struct Steady {
    readings_per_s: f64,
    messages_per_s: f64,
    /// Broker CPU, percent of one core (all its processes).
    broker_cpu_percent: f64,
    /// Broker RSS growth from before the fleet connected to the window's
    /// end, per gateway, KiB.
    broker_kib_per_gateway: f64,
    /// Per gateway: CPU percent of one core, RSS MiB.
    gateway_cpu: Vec<f64>,
    gateway_rss_mib: Vec<f64>,
}

async fn steady(
    fleet: &[Gateway],
    tally: &Tally,
    brokers: &[u32],
    broker_idle_kib: u64,
    window: Duration,
) -> anyhow::Result<Steady> {
    let pids: Vec<u32> = fleet
        .iter()
        .map(Gateway::pid)
        .collect::<anyhow::Result<_>>()?;
    let before = usage(&pids)?;
    let broker_before = usage(brokers)?;
    let (m0, r0) = totals(tally);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let (m1, r1) = totals(tally);
    let wall = t0.elapsed().as_secs_f64();
    let after = usage(&pids)?;
    let broker_after = usage(brokers)?;
    let broker_cpu: f64 = (broker_after.iter().zip(&broker_before))
        .map(|(a, b)| a.0 - b.0)
        .sum();
    let broker_kib: u64 = broker_after.iter().map(|u| u.1).sum();
    Ok(Steady {
        readings_per_s: (r1 - r0) as f64 / wall,
        messages_per_s: (m1 - m0) as f64 / wall,
        broker_cpu_percent: 100.0 * broker_cpu / wall,
        // Signed: a broker's memory can be below its idle figure when its
        // own variation is larger than what the fleet adds.
        broker_kib_per_gateway: (broker_kib as f64 - broker_idle_kib as f64) / fleet.len() as f64,
        gateway_cpu: (after.iter().zip(&before))
            .map(|(a, b)| 100.0 * (a.0 - b.0) / wall)
            .collect(),
        gateway_rss_mib: after.iter().map(|u| u.1 as f64 / 1024.0).collect(),
    })
}

/// Waits until the consumer has every sequence 1..=last of every gateway
/// (`last` read from each gateway's queue now); returns the duplicates
/// seen, or fails naming the gateways with gaps.
async fn all_delivered(fleet: &[Gateway], tally: &Tally) -> anyhow::Result<usize> {
    let mut last = HashMap::new();
    for gateway in fleet {
        last.insert(gateway.id.clone(), gateway.last_seq()?);
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (gaps, duplicates) = {
            let all = tally.lock().unwrap_or_else(|e| e.into_inner());
            let mut gaps = Vec::new();
            let mut duplicates = 0;
            for gateway in fleet {
                let mut seqs = (all.get(&gateway.id)).map_or_else(Vec::new, |s| s.seqs.clone());
                let received = seqs.len();
                seqs.sort_unstable();
                seqs.dedup();
                duplicates += received - seqs.len();
                let wanted = last[&gateway.id];
                let missing = (1..=wanted)
                    .filter(|s| seqs.binary_search(s).is_err())
                    .count();
                if missing > 0 {
                    gaps.push(format!("{}: {missing} of 1..={wanted}", gateway.id));
                }
            }
            (gaps, duplicates)
        };
        if gaps.is_empty() {
            return Ok(duplicates);
        }
        if Instant::now() > deadline {
            bail!(
                "{} gateway(s) with sequences that never arrived: {}",
                gaps.len(),
                gaps.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn stop(fleet: &mut [Gateway]) {
    for gateway in fleet.iter_mut() {
        if let Some(process) = gateway.process.as_mut() {
            let pid = process.child.id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status();
        }
    }
    for gateway in fleet.iter_mut() {
        if let Some(mut process) = gateway.process.take() {
            let _ = process.terminate(Duration::from_secs(20));
        }
    }
}

/// Bytes per reading of each payload format, from what the consumer got.
fn bytes_per_reading(fleet: &[Gateway], tally: &Tally) -> (f64, f64) {
    let all = tally.lock().unwrap_or_else(|e| e.into_inner());
    let mut sums = [(0u64, 0u64); 2];
    for gateway in fleet {
        if let Some(seen) = all.get(&gateway.id) {
            let s = &mut sums[usize::from(gateway.compact)];
            s.0 += seen.bytes;
            s.1 += seen.readings;
        }
    }
    let per = |(bytes, readings): (u64, u64)| bytes as f64 / readings.max(1) as f64;
    (per(sums[0]), per(sums[1]))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let load = Load::from_env()?;
    let mut report = Report::new(
        "cluster",
        "a fleet through one mosquitto and a RabbitMQ cluster",
    );
    report.method(format!(
        "{} ferrule processes ({} build), each with its own client certificate and a sim driver of {} channels every {} ms ({:.0} readings/s offered in all), publishing QoS 1 over TLS: first to one mosquitto, then to a three-node RabbitMQ 3.10 cluster (rabbitmq_mqtt, quorum queues for kept sessions), each measured over the same {} s window; on the cluster one node (not the consumer's) is killed with SIGKILL mid-run and started again; a consumer with a kept session checks that every gateway's every sequence arrived. Half the gateways use the readings payload format, half compact. All on one 2-core machine, loopback.",
        load.gateways,
        if cfg!(debug_assertions) { "debug" } else { "release" },
        load.channels,
        load.interval_ms,
        load.offered_per_s(),
        load.window.as_secs(),
    ));
    let work = bench::workdir("cluster")?;
    let root = work.path();
    let pki = Pki::new(root)?;
    let certs: Vec<_> = (0..load.gateways)
        .map(|i| {
            let id = format!("fleet-gw-{i:04}");
            pki.ca.client(&id, &id)
        })
        .collect::<Result<_, _>>()?;
    let cache = root.join("compile-cache");

    // Phase 1: one mosquitto.
    eprintln!("cluster: {} gateways on one mosquitto", load.gateways);
    let port = ferrule_tests::free_port()?;
    let mosquitto = Mosquitto::start(root, &pki, port, bench::BENCH_BROKER)?;
    let mosquitto_pid = mosquitto.process.child.id();
    let mut consumer =
        Subscriber::connect_persistent(&pki, port, &format!("{PREFIX}/#"), "fleet-consumer")
            .await?;
    let tally = count(&mut consumer);
    let idle = ferrule_tests::rss_kib(mosquitto_pid)?;
    let idle_cpu = cpu_percent(&[mosquitto_pid], idle_span()).await?;
    let mut gateways = fleet(
        &root.join("on-mosquitto"),
        &pki,
        &certs,
        &load,
        &cache,
        |_| vec![port],
        false,
    )?;
    let took = start(&mut gateways, &tally).await?;
    eprintln!("cluster: all publishing after {:.1} s", took.as_secs_f64());
    let single = steady(&gateways, &tally, &[mosquitto_pid], idle, load.window).await?;
    let single_duplicates = all_delivered(&gateways, &tally).await?;
    let (json_bytes, compact_bytes) = bytes_per_reading(&gateways, &tally);
    stop(&mut gateways).await;
    drop(consumer);
    drop(mosquitto);

    // Phase 2: the RabbitMQ cluster.
    eprintln!("cluster: starting three RabbitMQ nodes");
    let users: Vec<String> = (0..load.gateways)
        .map(|i| format!("fleet-gw-{i:04}"))
        .collect();
    let cluster = {
        let (root, tls) = (root.to_path_buf(), TlsPaths::of(&pki));
        tokio::task::spawn_blocking(move || RabbitCluster::start_with(&root, &tls, 3, &users))
            .await??
    };
    let ports = cluster.ports();
    let beams: Vec<u32> = (0..3)
        .map(|i| cluster.beam_pid(i))
        .collect::<anyhow::Result<_>>()?;
    let idle: u64 = usage(&beams)?.iter().map(|u| u.1).sum();
    let cluster_idle_cpu = cpu_percent(&beams, idle_span()).await?;
    let mut consumer =
        Subscriber::connect_persistent(&pki, ports[0], &format!("{PREFIX}/#"), "fleet-consumer")
            .await?;
    let tally = count(&mut consumer);
    eprintln!("cluster: {} gateways on the cluster", load.gateways);
    let mut gateways = fleet(
        &root.join("on-cluster"),
        &pki,
        &certs,
        &load,
        &cache,
        |i| (0..3).map(|k| ports[(i + k) % 3]).collect(),
        true,
    )?;
    let took = start(&mut gateways, &tally).await?;
    eprintln!("cluster: all publishing after {:.1} s", took.as_secs_f64());
    let clustered = steady(&gateways, &tally, &beams, idle, load.window).await?;

    // A node dies: of nodes 2 and 3 (node 1 holds the consumer's session),
    // the one most gateways are on now. Gateways start on node i mod 3,
    // but one that a node turned away at start (RabbitMQ refuses
    // connections while its client-id registry settles) moved on to the
    // next node of its list and stayed there.
    let last_port = |g: &Gateway| {
        let log = g.log();
        (log.lines())
            .rfind(|l| l.contains("mqtt connected"))
            .and_then(|l| l.split("broker=127.0.0.1:").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|port| port.parse::<u16>().ok())
    };
    let on_node: Vec<Option<u16>> = gateways.iter().map(last_port).collect();
    let count_on = |k: usize| on_node.iter().filter(|p| **p == Some(ports[k])).count();
    let victim = if count_on(2) > count_on(1) { 2 } else { 1 };
    let on_victim: Vec<usize> = (0..gateways.len())
        .filter(|&i| on_node[i] == Some(ports[victim]))
        .collect();
    anyhow::ensure!(
        !on_victim.is_empty(),
        "no gateway on node 2 or 3 to move: connected to {:?} (nodes' ports {ports:?})",
        on_node
    );
    let victim_port = format!(":{}", ports[victim]);
    let victim_name = format!("node {}", victim + 1);
    let mut cluster = cluster;
    let killed_clock = clock_now();
    cluster.kill(victim);
    eprintln!(
        "cluster: {victim_name} killed with {} gateways on it",
        on_victim.len()
    );
    let mut reconnects = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for &i in &on_victim {
        loop {
            let log = gateways[i].log();
            let back = log.lines().find(|l| {
                l.contains("mqtt connected")
                    && !l.contains(&victim_port)
                    && log_clock(l).is_some_and(|c| c >= killed_clock)
            });
            if let Some(c) = back.and_then(log_clock) {
                reconnects.push((c - killed_clock).max(0.0) * 1000.0);
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} never reconnected after {victim_name} died; its log ends:\n{}",
                    gateways[i].id,
                    log_tail(&log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(bench::scaled(10, 2))).await;
    let mut cluster = tokio::task::spawn_blocking(move || {
        cluster.restart(victim)?;
        anyhow::Ok(cluster)
    })
    .await??;
    eprintln!("cluster: {victim_name} back");
    tokio::time::sleep(Duration::from_secs(bench::scaled(10, 2))).await;
    let duplicates = all_delivered(&gateways, &tally).await?;
    stop(&mut gateways).await;
    drop(consumer);
    cluster.kill(0);
    drop(cluster);

    let n = load.gateways as f64;
    report
        .figure(
            "readings/s delivered, RabbitMQ cluster",
            clustered.readings_per_s,
            "readings/s",
        )
        .at_least(0.95 * load.offered_per_s());
    report
        .figure(
            "readings/s delivered, one mosquitto",
            single.readings_per_s,
            "readings/s",
        )
        .at_least(0.95 * load.offered_per_s());
    report.figure(
        "cluster / mosquitto, readings delivered",
        clustered.readings_per_s / single.readings_per_s.max(f64::MIN_POSITIVE),
        "x",
    );
    reconnects.sort_by(f64::total_cmp);
    report.figure(
        "reconnect after a node kill, median",
        bench::percentile(&reconnects, 50.0),
        "ms",
    );
    report.figure(
        "reconnect after a node kill, p90",
        bench::percentile(&reconnects, 90.0),
        "ms",
    );
    report.figure(
        "gateways reconnected after the kill",
        reconnects.len() as f64,
        "gateways",
    );
    report.figure(
        "gateway CPU, median (on the cluster)",
        bench::median(clustered.gateway_cpu.clone()),
        "% of one core",
    );
    report.figure(
        "gateway RSS, median (on the cluster)",
        bench::median(clustered.gateway_rss_mib.clone()),
        "MiB",
    );
    report.figure(
        "gateway RSS, largest (on the cluster)",
        clustered
            .gateway_rss_mib
            .iter()
            .copied()
            .fold(0.0, f64::max),
        "MiB",
    );
    report.figure(
        "mosquitto memory per gateway",
        single.broker_kib_per_gateway,
        "KiB",
    );
    report.figure(
        "RabbitMQ memory per gateway (3 nodes)",
        clustered.broker_kib_per_gateway,
        "KiB",
    );
    // What the fleet adds to each broker's CPU, beyond its idle use.
    let per_thousand = |steady: &Steady, idle: f64| {
        (steady.broker_cpu_percent - idle).max(0.0) * 1000.0
            / steady.messages_per_s.max(f64::MIN_POSITIVE)
    };
    report.figure(
        "mosquitto CPU per 1,000 messages/s (above idle)",
        per_thousand(&single, idle_cpu),
        "% of one core",
    );
    report.figure(
        "RabbitMQ CPU per 1,000 messages/s (3 nodes, above idle)",
        per_thousand(&clustered, cluster_idle_cpu),
        "% of one core",
    );
    report.figure("mosquitto CPU idle", idle_cpu, "% of one core");
    report.figure(
        "RabbitMQ CPU idle (3 nodes)",
        cluster_idle_cpu,
        "% of one core",
    );
    report.figure("bytes per reading, readings format", json_bytes, "bytes");
    report.figure("bytes per reading, compact format", compact_bytes, "bytes");
    report.note(format!(
        "Every gateway's sequences 1..=last arrived through both brokers ({single_duplicates} duplicates on mosquitto, {duplicates} on the cluster, delivered again after a reconnect and dropped by seq downstream). {} of {} gateways were on the killed node.",
        on_victim.len(),
        load.gateways
    ));
    for (broker, steady) in [("mosquitto", &single), ("RabbitMQ", &clustered)] {
        if steady.broker_kib_per_gateway <= 0.0 {
            report.note(format!(
                "{broker} used no more memory with the fleet connected than idle ({:.1} KiB per gateway): at {n:.0} gateways its own variation hides what a connection costs; a larger fleet measures it.",
                steady.broker_kib_per_gateway
            ));
        }
    }
    report.note(format!(
        "Broker CPU in the steady window: mosquitto {:.1} %, the three RabbitMQ nodes {:.1} % of a core, at {:.0} and {:.0} messages/s. Per-gateway figures are for {n:.0} processes sharing 2 cores with the brokers.",
        single.broker_cpu_percent,
        clustered.broker_cpu_percent,
        single.messages_per_s,
        clustered.messages_per_s,
    ));
    report.finish()?;
    Ok(())
}
