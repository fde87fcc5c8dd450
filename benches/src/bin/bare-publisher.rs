//! The benchmarks' baseline: a bare rumqttc client publishing QoS 1 over the
//! same TLS settings ferrule uses (rustls, TCP_NODELAY, client
//! certificate), with nothing in front of it: no plugin, no queue, no disk.
//!
//! Two modes:
//! - `--payloads FILE` (one payload per line): publishes them in turn as fast
//!   as the broker acknowledges, for `--seconds`.
//! - `--rate N --readings K`: N messages a second, each a ferrule-shaped
//!   message of K readings stamped with the time of sending (latency floor).
//!
//! Prints `published N acked M` when done. Started by the benchmarks; not
//! a tool for users.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferrule::publish::{TlsFiles, tls};
use ferrule::reading::{Batch, Quality, Reading, Value, now_ns};
use rumqttc::{
    AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS, TlsConfiguration, Transport,
};

/// The baseline client's arguments.
#[derive(Debug, clap::Parser)]
#[command(about = "A bare rumqttc TLS publisher, the benchmarks' baseline")]
struct Args {
    /// The broker's port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// CA bundle the broker's certificate is checked against.
    #[arg(long)]
    ca: PathBuf,
    /// Client certificate.
    #[arg(long)]
    cert: PathBuf,
    /// Client certificate's key.
    #[arg(long)]
    key: PathBuf,
    /// Topic to publish on.
    #[arg(long)]
    topic: String,
    /// Messages published but not yet acknowledged, at most.
    #[arg(long, default_value_t = 64)]
    inflight: u16,
    /// How long to publish.
    #[arg(long)]
    seconds: f64,
    /// Payloads to replay, one per line, as fast as acknowledged.
    #[arg(long, conflicts_with = "rate")]
    payloads: Option<PathBuf>,
    /// Messages a second, each of `--readings` readings stamped when sent.
    #[arg(long)]
    rate: Option<f64>,
    /// Readings per message with `--rate`.
    #[arg(long, default_value_t = 10)]
    readings: usize,
}

/// A ferrule-shaped data message of `n` readings stamped now.
fn stamped(seq: u64, n: usize) -> anyhow::Result<Vec<u8>> {
    let ts = now_ns();
    let batch = Batch {
        driver: "bare".into(),
        captured_ns: ts,
        readings: (0..n)
            .map(|i| Reading {
                channel: format!("c{i}"),
                value: Value::Float(i as f64),
                ts_ns: ts,
                quality: Quality::Good,
                unit: None,
            })
            .collect(),
    };
    Ok(ferrule::publish::encode_data("bare", seq, &batch)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let tls = tls::client_config(&TlsFiles {
        ca: args.ca.clone(),
        client_cert: Some(args.cert.clone()),
        client_key: Some(args.key.clone()),
    })?;
    let mut options = MqttOptions::new(
        format!("bare-publisher-{}", std::process::id()),
        "127.0.0.1",
        args.port,
    );
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(args.inflight)
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (client, mut eventloop) = AsyncClient::new(options, usize::from(args.inflight) + 8);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let acked = Arc::new(AtomicU64::new(0));
    let counter = acked.clone();
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
    let events = tokio::spawn(async move {
        let mut connected = Some(connected_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = connected.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("bare-publisher: {e}");
                    return;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), connected_rx)
        .await
        .context("no CONNACK within 10 s")??;

    let payloads: Vec<Vec<u8>> = match &args.payloads {
        Some(path) => std::fs::read(path)?
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect(),
        None => Vec::new(),
    };
    let run = Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let mut published = 0u64;
    match args.rate {
        None => {
            anyhow::ensure!(!payloads.is_empty(), "--payloads or --rate is required");
            while started.elapsed() < run {
                let payload = payloads[published as usize % payloads.len()].clone();
                client
                    .publish(&args.topic, QoS::AtLeastOnce, false, payload)
                    .await?;
                published += 1;
            }
        }
        Some(rate) => {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while started.elapsed() < run {
                ticker.tick().await;
                let payload = stamped(published, args.readings)?;
                client
                    .publish(&args.topic, QoS::AtLeastOnce, false, payload)
                    .await?;
                published += 1;
            }
        }
    }
    // Let the last acknowledgements arrive.
    let deadline = Instant::now() + Duration::from_secs(5);
    while acked.load(Ordering::Relaxed) < published && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    events.abort();
    println!(
        "published {published} acked {}",
        acked.load(Ordering::Relaxed)
    );
    Ok(())
}
