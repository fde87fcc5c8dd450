//! The Modbus TCP driver against pymodbus's server: every type and
//! byte/word order reads back exactly, reads are coalesced as planned, an
//! outage of the device is survived, and the driver reaches nothing but
//! its device.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferrule_tests::net::{CountingProxy, ModbusSim};
use ferrule_tests::{Mosquitto, Process, Subscriber, plugin, queue_stats, tempdir};
use serde_json::{Value, json};

use ferrule_tests::{GatewayToml, PluginToml};

/// A value's registers as a device stores them: the value's big-endian
/// bytes, each register's two bytes swapped for little byte order, the
/// registers reversed for little word order.
fn words(bytes: &[u8], byte_little: bool, word_little: bool) -> Vec<u16> {
    let mut w: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            if byte_little {
                u16::from_le_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], c[1]])
            }
        })
        .collect();
    if word_little {
        w.reverse();
    }
    w
}

/// The register map of the type test: channel config lines, the holding
/// registers' contents, and each channel's expected JSON value.
struct Map {
    channels: Vec<String>,
    holding: Vec<u16>,
    expected: BTreeMap<String, Value>,
}

fn type_map() -> Map {
    let mut map = Map {
        channels: Vec::new(),
        holding: Vec::new(),
        expected: BTreeMap::new(),
    };
    let values: [(&str, Vec<u8>, Value); 9] = [
        ("u16", 0xBEEFu16.to_be_bytes().to_vec(), json!(0xBEEF)),
        ("i16", (-12345i16).to_be_bytes().to_vec(), json!(-12345)),
        (
            "u32",
            3_000_000_000u32.to_be_bytes().to_vec(),
            json!(3_000_000_000u32),
        ),
        (
            "i32",
            (-2_000_000_000i32).to_be_bytes().to_vec(),
            json!(-2_000_000_000),
        ),
        (
            "u64",
            1_234_567_890_123_456_789u64.to_be_bytes().to_vec(),
            json!(1_234_567_890_123_456_789u64),
        ),
        (
            "i64",
            (-1_234_567_890_123_456_789i64).to_be_bytes().to_vec(),
            json!(-1_234_567_890_123_456_789i64),
        ),
        ("f32", 3.5f32.to_be_bytes().to_vec(), json!(3.5)),
        (
            "f64",
            (-1234.5678f64).to_be_bytes().to_vec(),
            json!(-1234.5678),
        ),
        ("string", b"ferrule!".to_vec(), json!("ferrule!")),
    ];
    for (kind, bytes, expected) in values {
        for (bo, wo) in [
            ("big", "big"),
            ("big", "little"),
            ("little", "big"),
            ("little", "little"),
        ] {
            let name = format!("{kind}-{bo}-{wo}");
            let address = map.holding.len();
            let length = if kind == "string" {
                format!(", length = {}", bytes.len() / 2)
            } else {
                String::new()
            };
            map.channels.push(format!(
                "{{ name = \"{name}\", table = \"holding\", address = {address}, type = \"{kind}\", byte_order = \"{bo}\", word_order = \"{wo}\"{length} }}"
            ));
            map.holding
                .extend(words(&bytes, bo == "little", wo == "little"));
            map.expected.insert(name, expected.clone());
        }
    }
    // Scale and offset: 1000 * 0.1 - 40 = 60.
    let address = map.holding.len();
    map.holding.push(1000);
    map.channels.push(format!(
        "{{ name = \"scaled\", table = \"holding\", address = {address}, scale = 0.1, offset = -40.0, unit = \"degC\" }}"
    ));
    map.expected.insert("scaled".into(), json!(60.0));
    map
}

struct Rig {
    dir: tempfile::TempDir,
    /// The broker's, the certificates' and the gateway's directory.
    _rig_dir: tempfile::TempDir,
    _broker: Mosquitto,
    sub: Subscriber,
    ferrule: Process,
    config: std::path::PathBuf,
}

/// Broker, subscriber and `ferrule run` with `drivers` as the `[[driver]]` tables.
async fn run(dir: tempfile::TempDir, drivers: Vec<PluginToml>) -> anyhow::Result<Rig> {
    run_with(dir, drivers, |_, gateway| Ok(gateway)).await
}

/// [`run`], with the gateway's config (and the rig's directory, where
/// the config is) prepared by `prepare` first.
async fn run_with(
    dir: tempfile::TempDir,
    drivers: Vec<PluginToml>,
    prepare: impl FnOnce(&ferrule_tests::Rig, GatewayToml) -> anyhow::Result<GatewayToml>,
) -> anyhow::Result<Rig> {
    let rig = ferrule_tests::Rig::start("", "ferrule/gw-test/#").await?;
    // The simulators' files stay in the test's own directory.
    let gateway = drivers.into_iter().fold(rig.gateway(), GatewayToml::driver);
    let gateway = prepare(&rig, gateway)?;
    let (config, ferrule) = rig.run(&gateway, None)?;
    let ferrule_tests::Rig {
        broker,
        sub,
        dir: rig_dir,
        ..
    } = rig;
    Ok(Rig {
        dir,
        _rig_dir: rig_dir,
        _broker: broker,
        sub,
        ferrule,
        config,
    })
}

fn modbus_driver(
    name: &str,
    device: u16,
    interval_ms: u64,
    channels: &[String],
) -> anyhow::Result<PluginToml> {
    let channels = channels
        .iter()
        .map(|c| channel(c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(PluginToml::new(name, &plugin("modbus_tcp")?)
        .set("device", format!("127.0.0.1:{device}"))
        .set("interval_ms", interval_ms as i64)
        .config("timeout_ms", 500)
        .config("retries", 1)
        .config("channels", toml::Value::Array(channels)))
}

/// A channel written as a TOML inline table (`{ name = "a", ... }`).
fn channel(inline: &str) -> anyhow::Result<toml::Value> {
    let mut doc: toml::Table = toml::from_str(&format!("channel = {inline}"))?;
    doc.remove("channel")
        .ok_or_else(|| anyhow::anyhow!("no channel in {inline}"))
}

/// The next data message of `driver`.
async fn next_of(rig: &mut Rig, driver: &str, limit: Duration) -> anyhow::Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = match rig.sub.next(left, &format!("a message of {driver}")).await {
            Ok(m) => m,
            Err(e) => anyhow::bail!("{e}; ferrule log:\n{}", rig.ferrule.log_text()),
        };
        if !m.topic.contains("/data/") {
            continue;
        }
        let v = m.json()?;
        if v["driver"] == driver {
            return Ok(v);
        }
    }
}

/// Publishes a command to `driver` and returns the result that answers it.
async fn command(rig: &mut Rig, driver: &str, payload: &str) -> anyhow::Result<Value> {
    rig.sub
        .client
        .publish(
            format!("ferrule/gw-test/cmd/{driver}/write"),
            rumqttc::QoS::AtLeastOnce,
            false,
            payload.as_bytes().to_vec(),
        )
        .await?;
    let id = id_in(payload);
    let topic = format!("ferrule/gw-test/cmd/{driver}/result");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = match rig
            .sub
            .next(left, &format!("the result of {payload}"))
            .await
        {
            Ok(m) => m,
            Err(e) => anyhow::bail!("{e}; ferrule log:\n{}", rig.ferrule.log_text()),
        };
        if m.topic == topic {
            let v = m.json()?;
            if v["id"] == id {
                return Ok(v);
            }
        }
    }
}

/// The id of a command: its own, or its signed document's.
fn id_in(payload: &str) -> Value {
    let v = serde_json::from_str::<Value>(payload).unwrap_or(Value::Null);
    let document = v["document"]
        .as_str()
        .and_then(|d| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, d).ok());
    match document {
        Some(d) => serde_json::from_slice::<Value>(&d).unwrap_or(Value::Null)["id"].clone(),
        None => v.get("id").cloned().unwrap_or(Value::Null),
    }
}

// Multi-threaded: the counting proxy runs on this test's runtime and must
// keep forwarding while the test blocks waiting for ferrule to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_byte_order_reads_back_exactly_in_as_few_requests_as_planned()
-> anyhow::Result<()> {
    let dir = tempdir()?;
    let map = type_map();
    let coils = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1];
    let discretes = [0, 1, 1, 0, 1, 0, 0, 0, 1, 0];
    let mut holding = map.holding.clone();
    holding.resize(1001, 0);
    holding[1000] = 4242;
    let sim = ModbusSim::start(
        dir.path(),
        &json!({
            "holding": holding,
            "input": [7, 0xFFFF, 0x8000],
            "coil": coils,
            "discrete": discretes,
        }),
    )?;
    let proxy = CountingProxy::start(sim.port).await?;
    let mut channels = map.channels.clone();
    let mut expected = map.expected.clone();
    // A register far from the others: a request of its own.
    channels.push("{ name = \"far\", table = \"holding\", address = 1000 }".into());
    expected.insert("far".into(), json!(4242));
    channels.push("{ name = \"in-u16\", table = \"input\", address = 0 }".into());
    expected.insert("in-u16".into(), json!(7));
    channels.push("{ name = \"in-i32\", table = \"input\", address = 1, type = \"i32\" }".into());
    expected.insert(
        "in-i32".into(),
        json!(i32::from_be_bytes([0xFF, 0xFF, 0x80, 0x00])),
    );
    for (i, c) in coils.iter().enumerate() {
        channels.push(format!(
            "{{ name = \"coil-{i}\", table = \"coil\", address = {i} }}"
        ));
        expected.insert(format!("coil-{i}"), json!(*c == 1));
    }
    for (i, d) in discretes.iter().enumerate() {
        channels.push(format!(
            "{{ name = \"discrete-{i}\", table = \"discrete\", address = {i} }}"
        ));
        expected.insert(format!("discrete-{i}"), json!(*d == 1));
    }
    // Holding 0..89 in one request, holding 1000, inputs, coils, discretes.
    const REQUESTS_PER_POLL: u64 = 5;
    let mut rig = run(dir, vec![modbus_driver("plc", proxy.port, 200, &channels)?]).await?;

    for _ in 0..3 {
        let v = next_of(&mut rig, "plc", Duration::from_secs(30)).await?;
        let readings = v["readings"].as_array().cloned().unwrap_or_default();
        let got: BTreeMap<String, Value> = readings
            .iter()
            .map(|r| {
                (
                    r["channel"].as_str().unwrap_or_default().to_string(),
                    r.clone(),
                )
            })
            .collect();
        assert_eq!(got.len(), expected.len(), "one reading per channel: {v}");
        for (name, want) in &expected {
            let r = &got[name];
            assert_eq!(r["quality"], "good", "{name}: {r}");
            assert_eq!(&r["value"], want, "{name}: {r}");
        }
        assert_eq!(got["scaled"]["unit"], "degC");
    }
    rig.ferrule.terminate(Duration::from_secs(10))?;
    let polls = queue_stats(rig.dir.path(), &rig.config)?["next_seq"]
        .as_u64()
        .unwrap_or(1)
        - 1;
    let requests = proxy.requests();
    eprintln!(
        "modbus: {} channels ({} holding registers in one block), {polls} polls captured, {requests} requests seen by the proxy ({REQUESTS_PER_POLL} per poll planned)",
        expected.len(),
        map.holding.len()
    );
    // A poll in flight at shutdown may have read without being captured.
    assert!(
        requests == polls * REQUESTS_PER_POLL || requests == (polls + 1) * REQUESTS_PER_POLL,
        "{requests} requests for {polls} polls, expected {REQUESTS_PER_POLL} per poll; log:\n{}",
        rig.ferrule.log_text()
    );
    Ok(())
}

#[tokio::test]
async fn a_device_outage_is_counted_reported_and_survived_while_other_drivers_run()
-> anyhow::Result<()> {
    let dir = tempdir()?;
    let mut sim = ModbusSim::start(dir.path(), &json!({ "holding": [11, 22] }))?;
    let channels = [
        "{ name = \"a\", table = \"holding\", address = 0 }".to_string(),
        "{ name = \"b\", table = \"holding\", address = 1 }".to_string(),
    ];
    let healthy = PluginToml::new("healthy", &plugin("sim")?)
        .set("interval_ms", 100)
        .config(
            "channels",
            toml::Value::Array(vec![channel("{ name = \"n\", signal = \"counter\" }")?]),
        );
    let drivers = vec![modbus_driver("plc", sim.port, 200, &channels)?, healthy];
    let mut rig = run(dir, drivers).await?;
    let v = next_of(&mut rig, "plc", Duration::from_secs(30)).await?;
    assert_eq!(v["readings"][0]["value"], 11);

    sim.stop();
    let stopped = Instant::now();
    // Count the healthy driver's messages while the device is away.
    let mut healthy = Vec::new();
    let mut plc_during = 0;
    while stopped.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(200), rig.sub.messages.recv()).await
        {
            if !m.topic.contains("/data/") {
                continue;
            }
            let v = m.json()?;
            if v["driver"] == "healthy" {
                healthy.push(v["readings"][0]["value"].as_i64().unwrap_or(-1));
            } else if m.topic.contains("/data/plc") && stopped.elapsed() > Duration::from_secs(2) {
                plc_during += 1;
            }
        }
    }
    sim.restart()?;
    let back = Instant::now();
    let resumed = loop {
        let v = next_of(&mut rig, "plc", Duration::from_secs(30)).await?;
        if v["readings"][0]["quality"] == "good" {
            break v;
        }
    };
    let log = rig.ferrule.log_text();
    let failed = log
        .lines()
        .filter(|l| l.contains("poll failed") && l.contains("driver=plc"))
        .count();
    eprintln!(
        "device away 10 s: {failed} failed polls logged, healthy driver {} messages, plc resumed {:.1} s after the device returned",
        healthy.len(),
        back.elapsed().as_secs_f64()
    );
    assert_eq!(resumed["readings"][1]["value"], 22);
    assert!(failed >= 20, "failed polls are counted and logged:\n{log}");
    assert_eq!(plc_during, 0, "nothing captured from a device that is away");
    let statuses: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("device status") && l.contains("driver=plc"))
        .collect();
    assert!(
        statuses
            .iter()
            .any(|l| l.contains("connected=false") && l.contains("cannot connect")),
        "status said disconnected, with the reason: {statuses:#?}"
    );
    assert!(
        statuses
            .last()
            .is_some_and(|l| l.contains("connected=true")),
        "status says connected again: {statuses:#?}"
    );
    // The healthy driver kept its rate (100 ms) and its counter has no gap.
    assert!(
        (90..=110).contains(&healthy.len()),
        "healthy driver: {} messages in 10 s",
        healthy.len()
    );
    assert!(
        healthy.windows(2).all(|w| w[1] == w[0] + 1),
        "healthy driver's counter without gap: {healthy:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_driver_reaches_its_device_and_nothing_else() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let device = std::net::TcpListener::bind("127.0.0.1:0")?;
    let other = std::net::TcpListener::bind("127.0.0.1:0")?;
    let (device_addr, other_addr) = (device.local_addr()?, other.local_addr()?);
    let other_hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for (listener, hits) in [(device, None), (other, Some(other_hits.clone()))] {
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                if let Some(h) = &hits {
                    h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let mut buf = [0u8; 5];
                if std::io::Read::read_exact(&mut stream, &mut buf).is_ok() {
                    let _ = std::io::Write::write_all(&mut stream, b"pong");
                }
            }
        });
    }
    // The fixture tries both; only `device` grants anything.
    let probe = PluginToml::new("probe", &plugin("hostile")?)
        .set("device", device_addr.to_string())
        .set("interval_ms", 200)
        .config("behavior", "connect")
        .config(
            "targets",
            toml::Value::Array(vec![
                device_addr.to_string().into(),
                other_addr.to_string().into(),
            ]),
        );
    let mut rig = run(dir, vec![probe]).await?;
    let v = next_of(&mut rig, "probe", Duration::from_secs(30)).await?;
    let value = |addr: &std::net::SocketAddr| {
        v["readings"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["channel"] == addr.to_string()))
            .map(|r| r["value"].to_string())
            .unwrap_or_default()
    };
    assert!(value(&device_addr).contains("ok: pong"), "{v}");
    assert!(value(&other_addr).contains("denied"), "{v}");
    assert_eq!(
        other_hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no connection reached the other address"
    );
    Ok(())
}

#[tokio::test]
async fn a_device_that_never_answers_times_out_inside_the_driver() -> anyhow::Result<()> {
    let dir = tempdir()?;
    // Accepts connections and reads requests, never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = silent.local_addr()?.port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let channels = ["{ name = \"a\", table = \"holding\", address = 0 }".to_string()];
    let drivers = modbus_driver("plc", port, 500, &channels)?
        .config("timeout_ms", 200)
        .limit("timeout_ms", 3000);
    let rig = run(dir, vec![drivers]).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = rig.ferrule.log_text();
    let timeouts = log
        .lines()
        .filter(|l| l.contains("poll failed") && l.contains("timeout"))
        .count();
    eprintln!("silent device: {timeouts} polls failed with a timeout in 3 s");
    assert!(
        timeouts >= 3,
        "timeouts are the driver's own, counted:\n{log}"
    );
    assert!(
        !log.contains("instance lost"),
        "the driver's timeout fires before the call deadline; nothing restarts:\n{log}"
    );
    assert!(
        log.contains("device status driver=plc connected=false") && log.contains("timeout"),
        "status says disconnected, timeout:\n{log}"
    );
    Ok(())
}

#[tokio::test]
async fn write_commands_over_mqtt_reach_the_device_and_every_command_is_answered()
-> anyhow::Result<()> {
    let dir = tempdir()?;
    let sim = ModbusSim::start(
        dir.path(),
        &json!({ "holding": [0, 0, 0, 0], "input": [5], "coil": [0, 0, 0] }),
    )?;
    let channels = [
        "{ name = \"setpoint\", table = \"holding\", address = 0 }".to_string(),
        "{ name = \"limit\", table = \"holding\", address = 2, type = \"f32\", word_order = \"little\" }".to_string(),
        "{ name = \"run\", table = \"coil\", address = 1 }".to_string(),
        "{ name = \"level\", table = \"input\", address = 0 }".to_string(),
    ];
    // Every channel writable but `level`'s input register, which the
    // driver declares read-only: listing it cannot change that.
    let plc = modbus_driver("plc", sim.port, 200, &channels)?.set(
        "commands",
        crate::common::writable(&["setpoint", "limit", "run", "level"]),
    );
    let mut rig = run(dir, vec![plc]).await?;
    next_of(&mut rig, "plc", Duration::from_secs(30)).await?;
    rig.ferrule
        .wait_for_log("mqtt subscribed", Duration::from_secs(30))
        .await?;

    let ok = command(
        &mut rig,
        "plc",
        r#"{"id":"w1","channel":"setpoint","value":1234}"#,
    )
    .await?;
    assert_eq!((&ok["id"], &ok["ok"]), (&json!("w1"), &json!(true)), "{ok}");
    // The driver's next poll read the register back.
    assert_eq!(
        (&ok["read_back"]["value"], &ok["read_back"]["matches"]),
        (&json!(1234), &json!(true)),
        "{ok}"
    );
    assert_eq!(sim.read_holding(0, 1)?, [1234]);

    let ok = command(
        &mut rig,
        "plc",
        r#"{"id":2,"channel":"limit","value":21.5}"#,
    )
    .await?;
    assert_eq!((&ok["id"], &ok["ok"]), (&json!(2), &json!(true)), "{ok}");
    assert_eq!(ok["read_back"]["value"], 21.5, "{ok}");
    assert_eq!(
        sim.read_holding(2, 2)?,
        words(&21.5f32.to_be_bytes(), false, true),
        "f32 with little word order"
    );

    let ok = command(
        &mut rig,
        "plc",
        r#"{"id":"w3","channel":"run","value":true}"#,
    )
    .await?;
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(sim.read_coils(0, 3)?, [false, true, false]);

    // The readings show the new values too.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = next_of(&mut rig, "plc", Duration::from_secs(10)).await?;
        if v["readings"][0]["value"] == 1234 && v["readings"][1]["value"] == 21.5 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "readings never showed the writes: {v}"
        );
    }

    for (payload, driver, expected) in [
        (
            r#"{"id":"b1","channel":"nope","value":1}"#,
            "plc",
            "channel \"nope\" is not writable",
        ),
        (
            r#"{"id":"b2","channel":"setpoint","value":"high"}"#,
            "plc",
            "expected a number",
        ),
        (
            r#"{"id":"b3","channel":"setpoint","value":70000}"#,
            "plc",
            "out of range",
        ),
        (
            r#"{"id":"b4","channel":"level","value":1}"#,
            "plc",
            "read-only",
        ),
        (
            r#"{"id":"b5","channel":"run","value":[1]}"#,
            "plc",
            "number, boolean or string",
        ),
        (r#"{"id":"b6","value":1}"#, "plc", "malformed command"),
        (
            r#"{"id":"g1","channel":"x","value":1}"#,
            "ghost",
            "no driver \"ghost\"",
        ),
    ] {
        let v = command(&mut rig, driver, payload).await?;
        assert_eq!(v["ok"], false, "{payload}: {v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(expected),
            "{payload}: {error:?} should say {expected:?}"
        );
    }
    // Not JSON at all: answered, with no id to echo.
    let v = command(&mut rig, "plc", "{not json").await?;
    assert_eq!(v["ok"], false);
    assert!(v["id"].is_null(), "{v}");
    // The device was not touched by any of them.
    assert_eq!(sim.read_holding(0, 1)?, [1234]);

    let log = rig.ferrule.log_text();
    assert!(
        log.lines()
            .filter(|l| l.contains("command received"))
            .count()
            >= 7
            && (log.lines())
                .filter(|l| l.contains("command failed") || l.contains("command refused"))
                .count()
                >= 8
            && log
                .lines()
                .any(|l| l.contains("command refused") && l.contains("not-writable"))
            && log.lines().filter(|l| l.contains("command done")).count() == 3,
        "every command and result is logged:\n{log}"
    );
    assert!(rig.ferrule.child.try_wait()?.is_none(), "still running");
    // `ferrule check` says which listed channel cannot be written.
    let (ok, out, err) =
        ferrule_tests::run_ferrule(rig.dir.path(), &["check", &rig.config.to_string_lossy()])?;
    anyhow::ensure!(ok, "{out}{err}");
    anyhow::ensure!(
        out.contains("commands: open to level, limit, run, setpoint")
            && out.contains(
                "warning: commands.level: the driver declares it read-only; every write to it is refused"
            )
            && !out.contains("warning: commands.setpoint"),
        "{out}"
    );
    Ok(())
}

/// A command for `plc` on gw-test, signed with `key` (in `dir`).
fn signed(
    dir: &std::path::Path,
    key: &str,
    (id, channel, value): (&str, &str, Value),
    issued_ms: u64,
) -> anyhow::Result<String> {
    let command = ferrule::remote::SignedCommand {
        schema: ferrule::remote::authority::SCHEMA,
        kind: ferrule::remote::authority::KIND.into(),
        gateway: "gw-test".into(),
        driver: "plc".into(),
        channel: channel.into(),
        value,
        id: id.into(),
        issued_ms,
    };
    let envelope = ferrule::deploy::sign_document(serde_json::to_vec(&command)?, &dir.join(key))
        .map_err(anyhow::Error::msg)?;
    Ok(serde_json::to_string(&envelope)?)
}

/// `ferrule fleet command` writing `value` to `channel` of driver plc on
/// gw-test (with the command id `id`, when given), run with the operator
/// file in `work`: (success, stdout, stderr).
fn fleet_command(
    work: &std::path::Path,
    (channel, value): (&str, &str),
    id: Option<&str>,
) -> anyhow::Result<(bool, String, String)> {
    let mut args = vec![
        "fleet",
        "command",
        "--bootstrap",
        "operator.toml",
        "--gateway",
        "gw-test",
        "--driver",
        "plc",
        "--channel",
        channel,
        "--value",
        value,
    ];
    if let Some(id) = id {
        args.extend(["--id", id]);
    }
    ferrule_tests::run_ferrule(work, &args)
}

/// Sends `payload` and checks that it is refused with `code` and that
/// the device's setpoint still holds `holds`.
async fn refused(
    rig: &mut Rig,
    sim: &ModbusSim,
    (payload, code): (&str, &str),
    holds: u16,
) -> anyhow::Result<Value> {
    let v = command(rig, "plc", payload).await?;
    anyhow::ensure!(
        v["ok"] == false && v["refused"] == code,
        "refused as {code}: {v}"
    );
    anyhow::ensure!(
        sim.read_holding(0, 1)? == [holds],
        "setpoint untouched by {v}"
    );
    Ok(v)
}

#[tokio::test]
async fn commands_must_be_listed_in_bounds_signed_fresh_and_new_and_read_back_what_the_device_holds()
-> anyhow::Result<()> {
    let dir = tempdir()?;
    let sim = ModbusSim::start(dir.path(), &json!({ "holding": [100, 0, 0] }))?;
    let channels = [
        "{ name = \"setpoint\", table = \"holding\", address = 0 }".to_string(),
        "{ name = \"mode\", table = \"holding\", address = 1 }".to_string(),
        "{ name = \"other\", table = \"holding\", address = 2 }".to_string(),
    ];
    let rules: toml::Value = toml::from_str(
        "[setpoint]\nmin = 0\nmax = 1500\nmax_per_minute = 3\n[mode]\nallowed = [0, 1, 2]\n",
    )?;
    let plc = modbus_driver("plc", sim.port, 200, &channels)?.set("commands", rules);
    let (mut work, mut key_id, mut rogue_id) =
        (std::path::PathBuf::new(), String::new(), String::new());
    let mut rig = run_with(dir, vec![plc], |rig, gateway| {
        work = rig.dir.path().to_path_buf();
        key_id = crate::common::keygen(&work, "op.key")?;
        rogue_id = crate::common::keygen(&work, "rogue.key")?;
        // The operator's file for `ferrule fleet command`.
        let (ca, cert, key) = (&rig.pki.ca.cert, &rig.pki.subscriber.cert, &rig.pki.subscriber.key);
        std::fs::write(
            work.join("operator.toml"),
            format!(
                "[operator]\nkey = \"op.key\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
                rig.port,
                ca.display(),
                cert.display(),
                key.display()
            ),
        )?;
        Ok(gateway
            .set(
                "trust",
                "operator_keys",
                toml::Value::Array(vec!["op.key.pub".into()]),
            )
            .set("commands", "window_s", 30)
            .set("commands", "clock_skew_s", 5)
            .set("telemetry", "interval_s", 1))
    })
    .await?;
    rig.ferrule
        .wait_for_log("mqtt subscribed", Duration::from_secs(60))
        .await?;
    let now = ferrule::reading::now_ms;
    let sp = |id: &str, value: i64| (id.to_string(), value);
    let sign = |key: &str, (id, value): (String, i64), channel: &str, at: u64| {
        signed(&work, key, (&id, channel, json!(value)), at)
    };

    // Once operator keys are set, plain commands are refused.
    refused(
        &mut rig,
        &sim,
        (
            r#"{"id":"u1","channel":"setpoint","value":500}"#,
            "unsigned",
        ),
        100,
    )
    .await?;
    let rogue = sign("rogue.key", sp("k1", 500), "setpoint", now())?;
    refused(&mut rig, &sim, (&rogue, "unknown-key"), 100).await?;
    // A signed document with its value changed afterwards.
    let mut tampered: Value =
        serde_json::from_str(&sign("op.key", sp("t1", 500), "setpoint", now())?)?;
    let other = signed(&work, "op.key", ("t1", "setpoint", json!(1400)), now())?;
    tampered["document"] = serde_json::from_str::<Value>(&other)?["document"].clone();
    refused(
        &mut rig,
        &sim,
        (&tampered.to_string(), "bad-signature"),
        100,
    )
    .await?;
    // Signed, but not allowed by [driver.commands].
    let unlisted = sign("op.key", sp("n1", 5), "other", now())?;
    refused(&mut rig, &sim, (&unlisted, "not-writable"), 100).await?;
    let high = sign("op.key", sp("r1", 2000), "setpoint", now())?;
    refused(&mut rig, &sim, (&high, "out-of-range"), 100).await?;
    let mode = sign("op.key", sp("m1", 7), "mode", now())?;
    refused(&mut rig, &sim, (&mode, "not-allowed"), 100).await?;
    anyhow::ensure!(sim.read_holding(1, 1)? == [0], "mode untouched");
    // Outside the window (30 s, 5 s of skew) on either side.
    let stale = sign("op.key", sp("s1", 500), "setpoint", now() - 40_000)?;
    refused(&mut rig, &sim, (&stale, "outside-window"), 100).await?;
    let ahead = sign("op.key", sp("s2", 500), "setpoint", now() + 60_000)?;
    refused(&mut rig, &sim, (&ahead, "outside-window"), 100).await?;

    // A valid command from the operator CLI: written, and read back.
    let (ok, out, err) = fleet_command(&work, ("setpoint", "1200"), Some("cli-1"))?;
    anyhow::ensure!(ok, "ferrule fleet command: {out}{err}");
    let result: Value = serde_json::from_str(&out)?;
    anyhow::ensure!(
        result["ok"] == true
            && result["read_back"]["value"] == 1200
            && result["read_back"]["matches"] == true
            && result["signed_by"].is_string(),
        "{result}"
    );
    anyhow::ensure!(sim.read_holding(0, 1)? == [1200]);

    let second = sign("op.key", sp("ok-2", 900), "setpoint", now())?;
    let sent = Instant::now();
    let v = command(&mut rig, "plc", &second).await?;
    // A figure, not a check: verify, record, write, poll again, answer.
    eprintln!(
        "signed command answered with its read-back in {:.1} ms",
        sent.elapsed().as_secs_f64() * 1000.0
    );
    anyhow::ensure!(v["ok"] == true && v["read_back"]["value"] == 900, "{v}");
    anyhow::ensure!(sim.read_holding(0, 1)? == [900]);
    // The same message again: a replay.
    refused(&mut rig, &sim, (&second, "replay"), 900).await?;
    // max_per_minute = 3: a third write passes, a fourth does not.
    let third = sign("op.key", sp("ok-3", 901), "setpoint", now())?;
    anyhow::ensure!(command(&mut rig, "plc", &third).await?["ok"] == true);
    let fourth = sign("op.key", sp("ok-4", 902), "setpoint", now())?;
    refused(&mut rig, &sim, (&fourth, "rate-limited"), 901).await?;
    // Signed by the README's Python example.
    let script = ferrule_tests::workspace_root().join("examples/commands/sign_command.py");
    let python = std::process::Command::new("python3")
        .arg(&script)
        .args([
            "--key",
            "op.key",
            "--key-id",
            &key_id,
            "--gateway",
            "gw-test",
        ])
        .args([
            "--driver",
            "plc",
            "--channel",
            "mode",
            "--value",
            "2",
            "--id",
            "py-1",
        ])
        .current_dir(&work)
        .output()?;
    anyhow::ensure!(
        python.status.success(),
        "{}",
        String::from_utf8_lossy(&python.stderr)
    );
    let from_python = String::from_utf8(python.stdout)?;
    let v = command(&mut rig, "plc", from_python.trim()).await?;
    anyhow::ensure!(v["ok"] == true && v["read_back"]["value"] == 2, "{v}");
    anyhow::ensure!(sim.read_holding(1, 1)? == [2], "mode written");

    // Telemetry counts them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = rig.sub.next(Duration::from_secs(10), "telemetry").await?;
        if !m.topic.ends_with("/telemetry") {
            continue;
        }
        let c = m.json()?["commands"].clone();
        if c["accepted"] == 4 {
            anyhow::ensure!(
                c["refused"] == 10
                    && c["failed"] == 0
                    && c["refused_by"]["replay"] == 1
                    && c["refused_by"]["rate-limited"] == 1
                    && c["refused_by"]["outside-window"] == 2,
                "{c}"
            );
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no snapshot with the commands: {c}"
        );
    }

    // After a restart, the commands taken are still known.
    rig.ferrule.terminate(Duration::from_secs(30))?;
    rig.ferrule =
        ferrule_tests::start_ferrule(rig.dir.path(), &["run", &rig.config.to_string_lossy()])?;
    rig.ferrule
        .wait_for_log("mqtt subscribed", Duration::from_secs(60))
        .await?;
    refused(&mut rig, &sim, (&second, "replay"), 901).await?;
    refused(&mut rig, &sim, (&third, "replay"), 901).await?;
    // The CLI says why it was refused, and exits non-zero.
    let (ok, out, err) = fleet_command(&work, ("other", "5"), None)?;
    anyhow::ensure!(
        !ok && err.contains("refused (not-writable)") && out.contains("\"refused\""),
        "ferrule fleet command of an unlisted channel: {out}{err}"
    );
    anyhow::ensure!(sim.read_holding(2, 1)? == [0], "other untouched");

    // The audit log has every one of them: who signed, what came of it.
    let (ok, shown, err) = ferrule_tests::run_ferrule(
        rig.dir.path(),
        &["audit", "show", &rig.config.to_string_lossy()],
    )?;
    anyhow::ensure!(ok, "{err}");
    let commands: Vec<Value> = (shown.lines())
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["event"] == "command")
        .map(|r| r["detail"].clone())
        .collect();
    let codes: Vec<&str> = (commands.iter())
        .map(|d| d["result"]["refused"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        codes,
        [
            "unsigned",
            "unknown-key",
            "bad-signature",
            "not-writable",
            "out-of-range",
            "not-allowed",
            "outside-window",
            "outside-window",
            "-",
            "-",
            "replay",
            "-",
            "rate-limited",
            "-",
            "replay",
            "replay",
            "not-writable"
        ],
        "{shown}"
    );
    let accepted = &commands[8];
    assert_eq!(accepted["command"]["id"], "cli-1");
    assert_eq!(accepted["command"]["signed_by"], key_id);
    assert_eq!(accepted["command"]["channel"], "setpoint");
    assert!(accepted["command"]["issued_ms"].as_u64().is_some());
    assert_eq!(accepted["result"]["read_back"]["matches"], true);
    assert!(accepted["result"]["read_back"]["value_sha256"].is_string());
    // Refused before their signature checked out: what they claim, marked.
    let unsigned = &commands[0]["command"];
    assert_eq!(
        (&unsigned["id"], &unsigned["channel"], &unsigned["verified"]),
        (&json!("u1"), &json!("setpoint"), &json!(false)),
        "{unsigned}"
    );
    let rogue = &commands[1]["command"];
    assert_eq!(rogue["claimed_key_id"], rogue_id.as_str(), "{rogue}");
    assert_eq!(rogue["verified"], false, "{rogue}");
    assert!(rogue.get("signed_by").is_none(), "{rogue}");
    Ok(())
}

/// `examples/modbus` (what `cargo xtask example modbus` runs), on a free
/// port: its register map reads its simulated device as documented.
#[tokio::test]
async fn the_modbus_example_reads_its_simulated_line() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let example = ferrule_tests::workspace_root().join("examples/modbus");
    let store: Value = serde_json::from_slice(&std::fs::read(example.join("datastore.json"))?)?;
    let sim = ModbusSim::start(dir.path(), &store)?;
    // The example as a user has it, pointed at the simulator and the
    // plugin just built.
    let mut example_file: toml::Table =
        toml::from_str(&std::fs::read_to_string(example.join("drivers.toml"))?)?;
    let Some(toml::Value::Array(tables)) = example_file.remove("driver") else {
        anyhow::bail!("examples/modbus/drivers.toml has no [[driver]]");
    };
    let drivers = tables
        .into_iter()
        .filter_map(|t| match t {
            toml::Value::Table(t) => Some(t),
            _ => None,
        })
        .map(|t| {
            Ok(PluginToml::from_table(t)
                .set("device", format!("127.0.0.1:{}", sim.port))
                .set("plugin", plugin("modbus_tcp")?.display().to_string()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut rig = run(dir, drivers).await?;
    let v = next_of(&mut rig, "line-plc", Duration::from_secs(30)).await?;
    let got: BTreeMap<String, Value> = v["readings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            (
                r["channel"].as_str().unwrap_or_default().to_string(),
                r["value"].clone(),
            )
        })
        .collect();
    let expected = json!({
        "tank_temperature": 63.5, "pressure": 4.2, "speed_setpoint": -120, "energy": 1234567,
        "firmware": "v2.4.1", "level": 73.5, "pump_running": true, "valve_open": false,
        "high_level_alarm": false,
    });
    for (name, want) in expected.as_object().into_iter().flatten() {
        let got = &got[name];
        match (got.as_f64(), want.as_f64()) {
            (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{name}: {got} != {want}"),
            _ => assert_eq!(got, want, "{name}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_exception_makes_only_its_channels_bad() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let sim = ModbusSim::start(dir.path(), &json!({ "holding": [1, 2] }))?;
    let channels = [
        "{ name = \"a\", table = \"holding\", address = 0 }".to_string(),
        "{ name = \"b\", table = \"holding\", address = 1 }".to_string(),
        // Beyond the simulator's 2,000 registers: an IllegalDataAddress exception.
        "{ name = \"beyond\", table = \"holding\", address = 5000 }".to_string(),
    ];
    let mut rig = run(dir, vec![modbus_driver("plc", sim.port, 200, &channels)?]).await?;
    let v = next_of(&mut rig, "plc", Duration::from_secs(30)).await?;
    let r = &v["readings"];
    assert_eq!(
        (r[0]["value"].clone(), r[0]["quality"].clone()),
        (json!(1), json!("good")),
        "{v}"
    );
    assert_eq!(
        (r[1]["value"].clone(), r[1]["quality"].clone()),
        (json!(2), json!("good")),
        "{v}"
    );
    assert_eq!(r[2]["quality"], "bad", "{v}");
    assert!(
        r[2]["value"]
            .as_str()
            .unwrap_or_default()
            .contains("IllegalDataAddress"),
        "{v}"
    );
    Ok(())
}

#[tokio::test]
async fn a_device_answering_out_of_step_is_reconnected_and_counted() -> anyhow::Result<()> {
    let dir = tempdir()?;
    // Answers every read with the wrong transaction id (as a device that
    // sends a late answer to an earlier request would).
    let liar = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = liar.local_addr()?.port();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = connections.clone();
    std::thread::spawn(move || {
        for mut s in liar.incoming().flatten() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut req = [0u8; 12];
                while std::io::Read::read_exact(&mut s, &mut req).is_ok() {
                    let tr = u16::from_be_bytes([req[0], req[1]]).wrapping_add(1);
                    let [th, tl] = tr.to_be_bytes();
                    let answer = [th, tl, 0, 0, 0, 5, 1, 3, 2, 0, 7];
                    if std::io::Write::write_all(&mut s, &answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let channels = ["{ name = \"a\", table = \"holding\", address = 0 }".to_string()];
    let rig = run(dir, vec![modbus_driver("plc", port, 200, &channels)?]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = rig.ferrule.log_text();
    let failed = log
        .lines()
        .filter(|l| l.contains("poll failed") && l.contains("transaction id"))
        .count();
    let n = connections.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "out-of-step device: {failed} polls failed naming the transaction id, {n} connections"
    );
    assert!(failed >= 3, "{log}");
    assert!(
        n >= 2 * failed,
        "each failure reconnects (with one retry): {n} connections"
    );
    assert!(!log.contains("instance lost"), "{log}");
    Ok(())
}
