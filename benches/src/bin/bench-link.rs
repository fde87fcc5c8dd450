//! `cargo xtask bench link`: what connecting costs, against a local
//! mosquitto with mutual TLS. The handshake (TCP connect, TLS handshake,
//! MQTT CONNECT to CONNACK) for TLS 1.2 and 1.3 and MQTT 3.1.1 and 5, and
//! the time from a restarted broker listening again to ferrule's CONNACK
//! with the default backoff. Prints figures; asserts nothing.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferrule::publish::Protocol as MqttProtocol;
use ferrule::publish::{self, PublisherSettings, PublisherStats, TlsFiles, Topics};
use ferrule::queue::{Queue, QueueOptions};
use ferrule_benches::{self as bench, Report};
use ferrule_tests::{Mosquitto, Pki, free_port};

fn handshakes_per_case() -> usize {
    bench::scaled(20, 2)
}

fn restarts() -> usize {
    bench::scaled(5, 1)
}
const OUTAGE: Duration = Duration::from_secs(2);

fn settings(pki: &Pki, port: u16, protocol: MqttProtocol) -> PublisherSettings {
    PublisherSettings {
        gateway: "bench".into(),
        host: "127.0.0.1".into(),
        port,
        failover: Vec::new(),
        client_id: "bench-link".into(),
        topics: Topics::new("ferrule", "bench"),
        tls: TlsFiles {
            ca: pki.ca.cert.clone(),
            client_cert: Some(pki.gateway.cert.clone()),
            client_key: Some(pki.gateway.key.clone()),
        },
        protocol,
        username: None,
        password_file: None,
        clean_session: true,
        session_expiry_s: 0,
        max_packet_size: 128 * 1024,
        keep_alive: Duration::from_secs(30),
        max_inflight: 32,
        // The defaults of `[mqtt]`.
        reconnect_min: Duration::from_millis(500),
        reconnect_max: Duration::from_secs(30),
        audit: None,
        sparkplug: None,
    }
}

/// Waits until `stats` has counted more than `seen` connects.
async fn connected_after(stats: &PublisherStats, seen: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats.connects.load(Ordering::Relaxed) <= seen {
        anyhow::ensure!(Instant::now() < deadline, "no CONNACK within 60 s");
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    Ok(())
}

/// (median, 90th percentile) of `values`.
fn median_p90(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

/// Handshake times in ms, each with a fresh publisher (a fresh TLS session).
async fn handshakes(
    dir: &Path,
    pki: &Pki,
    tls_version: &str,
    protocol: MqttProtocol,
    broker_nodelay: bool,
) -> anyhow::Result<Vec<f64>> {
    let port = free_port()?;
    let nodelay = if broker_nodelay {
        "set_tcp_nodelay true\n"
    } else {
        ""
    };
    let _broker = Mosquitto::start(
        dir,
        pki,
        port,
        &format!("tls_version {tls_version}\n{nodelay}"),
    )?;
    let queue = Queue::open(
        &dir.join(format!("handshake-{port}.redb")),
        QueueOptions::default(),
    )?;
    let mut times = Vec::with_capacity(handshakes_per_case());
    for _ in 0..handshakes_per_case() {
        let stats = Arc::new(PublisherStats::default());
        let stop = tokio_util::sync::CancellationToken::new();
        let publisher = tokio::spawn(publish::run(
            settings(pki, port, protocol),
            queue.clone(),
            stats.clone(),
            None,
            None,
            None,
            stop.clone(),
        ));
        connected_after(&stats, 0).await?;
        times.push(stats.last_connect_us.load(Ordering::Relaxed) as f64 / 1000.0);
        stop.cancel();
        publisher.await?;
    }
    Ok(times)
}

/// Times in ms from the restarted broker listening to ferrule's CONNACK.
async fn reconnects(dir: &Path, pki: &Pki) -> anyhow::Result<Vec<f64>> {
    let port = free_port()?;
    let mut broker = Mosquitto::start(dir, pki, port, "set_tcp_nodelay true\n")?;
    let queue = Queue::open(&dir.join("restart.redb"), QueueOptions::default())?;
    let stats = Arc::new(PublisherStats::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = tokio::spawn(publish::run(
        settings(pki, port, MqttProtocol::V311),
        queue,
        stats.clone(),
        None,
        None,
        None,
        stop.clone(),
    ));
    connected_after(&stats, 0).await?;
    let mut times = Vec::with_capacity(restarts());
    for _ in 0..restarts() {
        let seen = stats.connects.load(Ordering::Relaxed);
        broker.process.terminate(Duration::from_secs(10))?;
        tokio::time::sleep(OUTAGE).await;
        // `start` returns once the port accepts connections.
        broker = Mosquitto::start(dir, pki, port, "set_tcp_nodelay true\n")?;
        let back = Instant::now();
        connected_after(&stats, seen).await?;
        times.push(back.elapsed().as_secs_f64() * 1000.0);
    }
    stop.cancel();
    publisher.await?;
    Ok(times)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::new(
        "link",
        "MQTT link: handshake and reconnect (mutual TLS, ECDSA P-256)",
    );
    report.method(format!(
        "handshake: TCP connect + TLS handshake + MQTT CONNECT..CONNACK by the real publisher, fresh session each, median of {} runs per case, mosquitto on loopback",
        handshakes_per_case()
    ));
    report.method(format!(
        "reconnect: {} broker restarts, broker away {OUTAGE:?}, default backoff 500 ms doubling to 30 s with up to 25 % jitter; time from the broker listening again to CONNACK",
        restarts()
    ));
    let dir = bench::workdir("link")?;
    let pki = Pki::new(&dir.path().join("certs"))?;
    let cases = [
        ("tlsv1.2", MqttProtocol::V311, true),
        ("tlsv1.2", MqttProtocol::V5, true),
        ("tlsv1.3", MqttProtocol::V311, true),
        ("tlsv1.3", MqttProtocol::V5, true),
        // mosquitto's default: Nagle's algorithm on the broker's side.
        ("tlsv1.3", MqttProtocol::V311, false),
    ];
    let mut nodelay_13 = f64::NAN;
    for (tls, protocol, nodelay) in cases {
        let mut times = handshakes(dir.path(), &pki, tls, protocol, nodelay).await?;
        let (median, _) = median_p90(&mut times);
        let name = format!(
            "handshake TLS {} / MQTT {}{}",
            tls.trim_start_matches("tlsv"),
            protocol.as_str(),
            if nodelay {
                ""
            } else {
                ", broker without TCP_NODELAY (mosquitto default)"
            }
        );
        if nodelay {
            if tls == "tlsv1.3" && protocol == MqttProtocol::V311 {
                nodelay_13 = median;
            }
            report.figure(&name, median, "ms");
        } else {
            report.compare(&name, median, "ms", "same with TCP_NODELAY", nodelay_13);
        }
    }
    let mut times = reconnects(dir.path(), &pki).await?;
    let (median, p90) = median_p90(&mut times);
    report.figure("reconnect after a broker restart, median", median, "ms");
    report.figure("reconnect after a broker restart, p90", p90, "ms");
    report.note(
        "the reconnect time is mostly the backoff wait still running when the broker returned",
    );
    report.finish()?;
    Ok(())
}
