//! `ferrule demo`: a gateway, a broker and a subscriber in one process.
//!
//! Makes a throwaway PKI, starts the embedded broker (rumqttd) on a loopback
//! port with TLS and client-certificate authentication, runs a gateway with
//! the `sim` driver and the `scale` processor, and prints every data message
//! a TLS subscriber receives. Stops after `duration` or on Ctrl-C.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use ferrule::config::Config;
use ferrule::dev::certs::DevCa;
use ferrule::dev::config::{GatewayToml, PluginToml, fahrenheit_rule, table};
use ferrule::dev::net::{free_port, wait_for_port};
use ferrule::gateway;
use ferrule::publish::{TlsFiles, tls};

const GATEWAY: &str = "demo-gateway";

/// What the demo needs to know.
pub struct DemoOptions {
    /// Directory holding `sim.wasm` and `scale.wasm`.
    pub plugin_dir: PathBuf,
    /// Stop after this long; `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
    /// How often the simulated device is polled.
    pub interval_ms: u64,
    /// `[[driver]]` tables to run instead of the simulated device.
    pub drivers: Option<PathBuf>,
}

/// Runs the demo; returns an error if no reading arrived.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    // With --drivers, the shipped plugins are not used.
    let shipped: &[&str] = match options.drivers {
        Some(_) => &[],
        None => &["sim.wasm", "scale.wasm"],
    };
    for plugin in shipped {
        let path = options.plugin_dir.join(plugin);
        if !path.is_file() {
            bail!(
                "{}: plugin not found; build the plugins first (cargo xtask plugins) or pass --plugin-dir",
                path.display()
            );
        }
    }
    let work = tempfile::Builder::new().prefix("ferrule-demo-").tempdir()?;
    let certs = work.path().join("certs");
    let ca = DevCa::new(&certs, "demo-ca")?;
    let server = ca.server("broker", &["localhost", "127.0.0.1"])?;
    let gateway_id = ca.client("gateway", GATEWAY)?;
    let viewer = ca.client("viewer", "demo-viewer")?;

    let port = free_port()?;
    start_broker(port, &ca.cert, &server.cert, &server.key)?;
    wait_for_port(port, Duration::from_secs(10))?;
    println!("broker   : embedded, TLS with client certificates, 127.0.0.1:{port}");

    let config_path = work.path().join("ferrule.toml");
    let mut gateway = demo_config(
        port,
        options.interval_ms,
        &options.plugin_dir,
        &ca.cert,
        &gateway_id.cert,
        &gateway_id.key,
    );
    // Compiled plugins outlive the demo's temporary directory, so the next
    // demo of the same plugin (an 18 MB Python one takes seconds to
    // compile) starts at once.
    if let Some(cache) = user_cache_dir() {
        gateway = gateway.set("runtime", "compile_cache_dir", cache.display().to_string());
    }
    if let Some(file) = &options.drivers {
        gateway = drivers_from(file)?
            .into_iter()
            .fold(gateway.without_drivers(), GatewayToml::driver_table);
        println!("drivers  : {}", file.display());
    }
    std::fs::write(
        &config_path,
        format!("# Written by `ferrule demo`.\n{}", gateway.render()),
    )?;
    let config = Config::load(&config_path)?;
    println!("config   : {}", config_path.display());

    let stop = CancellationToken::new();
    let viewer_files = TlsFiles {
        ca: ca.cert.clone(),
        client_cert: Some(viewer.cert),
        client_key: Some(viewer.key),
    };
    let (count_tx, mut count_rx) = watch::channel(Tally::default());
    let subscriber = tokio::spawn(subscribe(
        port,
        viewer_files,
        started,
        count_tx,
        stop.clone(),
    ));

    let prepared = gateway::prepare(config).await?;
    println!(
        "gateway  : {GATEWAY}, plugins loaded in {} ms; readings follow (Ctrl-C to stop)",
        started.elapsed().as_millis()
    );
    let gateway_task = tokio::spawn(gateway::run(prepared, stop.clone()));

    let deadline = async {
        match options.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = deadline => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    stop.cancel();
    gateway_task.await??;
    let _ = tokio::time::timeout(Duration::from_secs(2), subscriber).await;
    let tally = *count_rx.borrow_and_update();
    let received = tally.messages;
    println!(
        "demo done: {} messages, {} readings received over TLS in {:.1} s",
        tally.messages,
        tally.readings,
        started.elapsed().as_secs_f64()
    );
    if let (Some(first), Some(last)) = (tally.first, tally.last) {
        let span = last.duration_since(first).as_secs_f64();
        if span > 0.0 && tally.messages > 1 {
            println!(
                "rate     : {:.0} readings/s, {:.0} messages/s while readings flowed",
                (tally.readings - tally.first_readings) as f64 / span,
                (tally.messages - 1) as f64 / span
            );
        }
    }
    if received == 0 {
        bail!("no reading reached the subscriber");
    }
    Ok(())
}

/// The demo gateway: the embedded broker over mutual TLS and one simulated
/// line (`sim`: a sine, a random walk, a ramp and a counter) whose
/// temperature the `scale` processor turns into degrees Fahrenheit.
fn demo_config(
    port: u16,
    interval_ms: u64,
    plugins: &Path,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> GatewayToml {
    let plugins = plugins
        .canonicalize()
        .unwrap_or_else(|_| plugins.to_path_buf());
    let channel = |name: &str, signal: &str, rest: &[(&str, toml::Value)]| {
        let mut t = toml::Table::new();
        t.insert("name".into(), name.into());
        t.insert("signal".into(), signal.into());
        for (k, v) in rest {
            t.insert((*k).into(), v.clone());
        }
        toml::Value::Table(t)
    };
    let line = PluginToml::new("line-1", &plugins.join("sim.wasm"))
        .set(
            "interval_ms",
            i64::try_from(interval_ms).unwrap_or(i64::MAX),
        )
        .config("seed", 42)
        .config(
            "channels",
            toml::Value::Array(vec![
                channel(
                    "temperature",
                    "sine",
                    &[
                        ("offset", 21.0.into()),
                        ("amplitude", 4.0.into()),
                        ("period_s", 30.0.into()),
                        ("unit", "degC".into()),
                    ],
                ),
                channel(
                    "pressure",
                    "random-walk",
                    &[
                        ("offset", 1013.0.into()),
                        ("amplitude", 5.0.into()),
                        ("step", 0.5.into()),
                        ("unit", "hPa".into()),
                    ],
                ),
                channel(
                    "fill",
                    "ramp",
                    &[
                        ("offset", 0.0.into()),
                        ("amplitude", 100.0.into()),
                        ("period_s", 20.0.into()),
                        ("unit", "%".into()),
                    ],
                ),
                channel("count", "counter", &[]),
            ]),
        )
        .processor(
            PluginToml::new("to-fahrenheit", &plugins.join("scale.wasm")).config(
                "channels",
                table([("temperature", fahrenheit_rule("temperature_f"))]),
            ),
        );
    GatewayToml::new(GATEWAY, Path::new("data"))
        .mqtt_tls("127.0.0.1", port, ca, cert, key)
        .set("mqtt", "keep_alive_s", 10)
        .driver(line)
}

/// Where the demo keeps compiled plugins: `$XDG_CACHE_HOME/ferrule/compiled`
/// or `~/.cache/ferrule/compiled`; none (the demo's own directory) when
/// neither is set.
fn user_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ferrule").join("compiled"))
}

/// The `[[driver]]` tables of `file`, with plugin paths made absolute
/// (relative ones are relative to the file).
fn drivers_from(file: &Path) -> anyhow::Result<Vec<toml::Table>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: not valid TOML", file.display()))?;
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .canonicalize()
        .with_context(|| format!("{}: cannot resolve its directory", file.display()))?;
    let absolute = |table: &mut toml::Table| {
        if let Some(toml::Value::String(p)) = table.get_mut("plugin") {
            *p = base.join(&*p).display().to_string();
        }
    };
    let Some(toml::Value::Array(drivers)) = doc.remove("driver") else {
        bail!("{}: no [[driver]] tables", file.display());
    };
    let mut tables = Vec::with_capacity(drivers.len());
    for driver in drivers {
        let toml::Value::Table(mut driver) = driver else {
            bail!("{}: a [[driver]] that is not a table", file.display());
        };
        absolute(&mut driver);
        if let Some(toml::Value::Array(chain)) = driver.get_mut("processor") {
            for p in chain.iter_mut().filter_map(toml::Value::as_table_mut) {
                absolute(p);
            }
        }
        tables.push(driver);
    }
    Ok(tables)
}

fn start_broker(port: u16, ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<()> {
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 64
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "demo-tls"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.tls]
capath = "{ca}"
certpath = "{cert}"
keypath = "{key}"
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 1048576
max_inflight_count = 200
dynamic_filters = true
"#,
        ca = ca.display(),
        cert = cert.display(),
        key = key.display()
    );
    let config: rumqttd::Config = toml::from_str(&text).context("embedded broker config")?;
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })?;
    Ok(())
}

/// What the subscriber has seen.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    messages: u64,
    readings: u64,
    /// Readings in the first message (excluded from the rate).
    first_readings: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Subscribes over TLS and prints each message; counts data messages.
async fn subscribe(
    port: u16,
    files: TlsFiles,
    started: Instant,
    count: watch::Sender<Tally>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut options = MqttOptions::new("demo-viewer", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(10));
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        tls::client_config(&files)?,
    )));
    let (client, mut events) = AsyncClient::new(options, 16);
    client
        .subscribe(format!("ferrule/{GATEWAY}/#"), QoS::AtLeastOnce)
        .await?;
    // After stop, keep reading a little longer so the gateway's last
    // messages (and its "offline" status) are shown.
    let mut grace_until: Option<tokio::time::Instant> = None;
    loop {
        let grace = async {
            match grace_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            e = events.poll() => e,
            _ = stop.cancelled(), if grace_until.is_none() => {
                grace_until = Some(tokio::time::Instant::now() + Duration::from_millis(1500));
                continue;
            }
            _ = grace => return Ok(()),
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic.ends_with("/status") {
                    println!("status   : {}", String::from_utf8_lossy(&p.payload));
                    continue;
                }
                if p.topic.ends_with("/telemetry") {
                    println!("{}", describe_telemetry(&p.payload));
                    continue;
                }
                // Only data messages are shown and counted (the gateway also
                // reports its deployments and answers erasure orders).
                let Some(readings) = serde_json::from_slice::<serde_json::Value>(&p.payload)
                    .ok()
                    .filter(|_| p.topic.starts_with(&format!("ferrule/{GATEWAY}/data/")))
                    .and_then(|v| v["readings"].as_array().map(|r| r.len() as u64))
                else {
                    continue;
                };
                let now = Instant::now();
                let mut tally = *count.borrow();
                tally.messages += 1;
                tally.readings += readings;
                tally.last = Some(now);
                if tally.first.is_none() {
                    tally.first = Some(now);
                    tally.first_readings = readings;
                    println!(
                        "first reading arrived {} ms after start",
                        started.elapsed().as_millis()
                    );
                }
                count.send_replace(tally);
                println!("{}", describe(&p.topic, &p.payload));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "demo subscriber reconnecting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// One line of a telemetry snapshot's headline figures.
fn describe_telemetry(payload: &[u8]) -> String {
    let Ok(t) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return format!("telemetry: {}", String::from_utf8_lossy(payload));
    };
    format!(
        "telemetry: up {} s, cpu {:.1} %, rss {:.1} MiB, queue {} entries, {} messages acknowledged",
        t["uptime_s"],
        t["process"]["cpu_percent"].as_f64().unwrap_or(0.0),
        t["process"]["rss_bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0,
        t["queue"]["depth"],
        t["publisher"]["messages_acked"]
    )
}

/// One line per message: sequence, driver and each reading.
fn describe(topic: &str, payload: &[u8]) -> String {
    let Ok(message) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return format!("{topic}: {}", String::from_utf8_lossy(payload));
    };
    let mut line = format!(
        "seq {:>5}  {:<8}",
        message["seq"],
        message["driver"].as_str().unwrap_or("?")
    );
    if let Some(readings) = message["readings"].as_array() {
        for r in readings {
            let value = match &r["value"] {
                serde_json::Value::Number(n) => match n.as_f64() {
                    Some(f) if r["type"] == "float" => format!("{f:.2}"),
                    _ => n.to_string(),
                },
                other => other.to_string(),
            };
            line.push_str(&format!(
                "  {}={}{}",
                r["channel"].as_str().unwrap_or("?"),
                value,
                r["unit"]
                    .as_str()
                    .map(|u| format!(" {u}"))
                    .unwrap_or_default()
            ));
        }
    }
    line
}
