use super::*;
use crate::reading::Reading;

fn settings(dir: &std::path::Path) -> SparkplugSettings {
    SparkplugSettings {
        group_id: "plant".to_string(),
        edge_node_id: "gw1".to_string(),
        primary_host_id: Some("scada".to_string()),
        bd_seq_file: dir.join("sparkplug-bdseq"),
        drivers: Drivers::default(),
    }
}

fn reading(channel: &str, value: Value, ts_ns: u64) -> Reading {
    Reading {
        channel: channel.to_string(),
        value,
        ts_ns,
        quality: Quality::Good,
        unit: Some("degC".to_string()),
    }
}

fn batch(readings: Vec<Reading>, captured_ns: u64) -> Batch {
    Batch {
        driver: "plc".to_string(),
        captured_ns,
        readings,
    }
}

fn decode(m: &Message) -> proto::Payload {
    match proto::Payload::decode(m.payload.as_slice()) {
        Ok(p) => p,
        Err(e) => panic!("{}: {e}", m.topic),
    }
}

#[test]
fn topics_follow_the_sparkplug_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    assert_eq!(s.nbirth(), "spBv1.0/plant/NBIRTH/gw1");
    assert_eq!(s.ndeath(), "spBv1.0/plant/NDEATH/gw1");
    assert_eq!(
        s.filters(),
        [
            "spBv1.0/plant/NCMD/gw1",
            "spBv1.0/plant/DCMD/gw1/+",
            "spBv1.0/STATE/scada"
        ]
    );
    assert_eq!(
        s.incoming("spBv1.0/plant/NCMD/gw1"),
        Some(Incoming::NodeCommand)
    );
    assert_eq!(
        s.incoming("spBv1.0/plant/DCMD/gw1/plc"),
        Some(Incoming::DeviceCommand("plc"))
    );
    assert_eq!(s.incoming("spBv1.0/STATE/scada"), Some(Incoming::State));
    assert_eq!(s.incoming("spBv1.0/plant/DCMD/gw1/a/b"), None);
    assert_eq!(s.incoming("spBv1.0/plant/DCMD/gw1/"), None);
    assert_eq!(s.incoming("spBv1.0/plant/NCMD/gw2"), None);
}

#[test]
fn bd_seq_counts_up_across_connections_and_wraps_after_255() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bd");
    assert_eq!(next_bd_seq(&path), 0);
    assert_eq!(next_bd_seq(&path), 1);
    std::fs::write(&path, "254\n").unwrap();
    assert_eq!(next_bd_seq(&path), 255);
    assert_eq!(next_bd_seq(&path), 0);
    std::fs::write(&path, "garbage").unwrap();
    assert_eq!(next_bd_seq(&path), 0);
    // A huge file is not read whole, and is no bdSeq.
    std::fs::write(&path, "7".repeat(1 << 20)).unwrap();
    assert_eq!(next_bd_seq(&path), 0);
}

#[test]
fn seq_is_stamped_in_hand_over_order_and_wraps() {
    let mut next = 0u8;
    let mut nbirth = proto::Payload::default().encode_to_vec();
    stamp(&mut nbirth, SeqMark::Reset, &mut next);
    assert_eq!(
        proto::Payload::decode(nbirth.as_slice()).unwrap().seq,
        Some(0)
    );
    let mut seqs = Vec::new();
    for _ in 0..300 {
        let mut p = proto::Payload {
            timestamp: Some(5),
            ..proto::Payload::default()
        }
        .encode_to_vec();
        stamp(&mut p, SeqMark::Next, &mut next);
        let decoded = proto::Payload::decode(p.as_slice()).unwrap();
        assert_eq!(decoded.timestamp, Some(5));
        seqs.push(decoded.seq.unwrap());
    }
    assert_eq!(seqs[0], 1);
    assert_eq!(seqs[254], 255);
    assert_eq!(seqs[255], 0, "255 wraps to 0");
    let mut ndeath = proto::Payload::default().encode_to_vec();
    let before = next;
    stamp(&mut ndeath, SeqMark::None, &mut next);
    assert_eq!(proto::Payload::decode(ndeath.as_slice()).unwrap().seq, None);
    assert_eq!(next, before);
}

#[test]
fn births_then_data_with_aliases_and_backfill_flagged_historical() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(settings(dir.path()));
    let (will_topic, will) = node.connecting();
    assert_eq!(will_topic, "spBv1.0/plant/NDEATH/gw1");
    let will = proto::Payload::decode(will.as_slice()).unwrap();
    assert_eq!(will.metrics[0].name.as_deref(), Some("bdSeq"));
    assert_eq!(will.seq, None);
    let births = node.births();
    assert_eq!(births.len(), 1, "no driver runs: NBIRTH only");
    let nbirth = decode(&births[0]);
    assert_eq!(births[0].seq, SeqMark::Reset);
    assert!(
        nbirth
            .metrics
            .iter()
            .any(|m| m.name.as_deref() == Some(REBIRTH))
    );
    assert_eq!(
        nbirth.metrics[0].value, will.metrics[0].value,
        "bdSeq matches the will"
    );

    let now = crate::reading::now_ns();
    let live = batch(
        vec![
            reading("t", Value::Float(21.5), now),
            reading("n", Value::Int(-3), now),
        ],
        now + 1_000_000_000,
    );
    let out = node.data(7, &live, 4096);
    assert_eq!(out.messages.len(), 2, "DBIRTH then DDATA");
    assert_eq!(out.entry_messages, 1);
    assert!(out.messages[0].topic.ends_with("/DBIRTH/gw1/plc"));
    let dbirth = decode(&out.messages[0]);
    let alias_of = |name: &str| {
        dbirth
            .metrics
            .iter()
            .find(|m| m.name.as_deref() == Some(name))
            .and_then(|m| m.alias)
            .unwrap()
    };
    let t = dbirth
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("t"))
        .unwrap();
    assert_eq!(t.datatype, Some(10));
    assert_eq!(t.properties.as_ref().unwrap().keys, ["engUnit"]);
    let ddata = decode(&out.messages[1]);
    assert!(out.messages[1].topic.ends_with("/DDATA/gw1/plc"));
    assert_eq!(ddata.metrics.len(), 3);
    assert!(ddata.metrics.iter().all(|m| m.name.is_none()));
    assert_eq!(ddata.metrics[0].alias, Some(alias_of("t")));
    assert_eq!(
        ddata.metrics[1].value,
        Some(metric::Value::LongValue((-3i64) as u64))
    );
    assert_eq!(ddata.metrics[2].alias, Some(alias_of(SEQ_METRIC)));
    assert_eq!(ddata.metrics[2].value, Some(metric::Value::LongValue(7)));
    assert!(ddata.metrics.iter().all(|m| m.is_historical.is_none()));

    // Same channels again: no new birth. An entry captured before the
    // births is backfill.
    let old = batch(vec![reading("t", Value::Float(1.0), 5)], 5);
    let out = node.data(3, &old, 4096);
    assert_eq!(out.messages.len(), 1);
    let ddata = decode(&out.messages[0]);
    assert!(ddata.metrics.iter().all(|m| m.is_historical == Some(true)));

    // A new channel (or a type change) brings a new DBIRTH with it.
    let more = batch(vec![reading("t", Value::Int(2), now)], now + 2);
    let out = node.data(8, &more, 4096);
    assert_eq!(out.messages.len(), 2);
    let dbirth = decode(&out.messages[0]);
    let t = dbirth
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("t"))
        .unwrap();
    assert_eq!(t.datatype, Some(4));
    assert_eq!(t.alias, Some(alias_of("t")), "aliases stay");
    assert_eq!(
        t.value,
        Some(metric::Value::DoubleValue(21.5)),
        "last live value"
    );

    // A rebirth declares the device again, with the same aliases.
    let births = node.births();
    assert_eq!(
        births.len(),
        1,
        "the driver is not running: no DBIRTH at rebirth"
    );
    let out = node.data(9, &more, 4096);
    assert_eq!(out.messages.len(), 2, "born again at its next data");
}

#[test]
fn a_large_entry_is_split_and_each_part_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(settings(dir.path()));
    node.connecting();
    node.births();
    let now = crate::reading::now_ns();
    let readings: Vec<_> = (0..200)
        .map(|i| reading(&format!("c{i}"), Value::Float(f64::from(i)), now))
        .collect();
    let mut big = batch(readings, now + 1);
    big.readings
        .push(reading("huge", Value::Text("x".repeat(5000)), now));
    let out = node.data(11, &big, 1024);
    assert_eq!(out.too_large.len(), 1);
    assert_eq!(out.too_large[0].0, "huge");
    let parts = &out.messages[1..];
    assert_eq!(parts.len(), out.entry_messages);
    assert!(parts.len() > 2);
    let mut carried = 0;
    for (i, m) in parts.iter().enumerate() {
        assert!(m.payload.len() + 8 <= 1024, "{} bytes", m.payload.len());
        let p = decode(m);
        let seq = p.metrics.last().unwrap();
        assert_eq!(seq.value, Some(metric::Value::LongValue(11)));
        let props = seq.properties.as_ref().unwrap();
        assert_eq!(props.keys, ["part", "parts"]);
        assert_eq!(
            props.values[0].value,
            Some(property_value::Value::IntValue(i as u32 + 1))
        );
        carried += p.metrics.len() - 1;
    }
    assert_eq!(carried, 200);
}

#[test]
fn commands_are_decoded_by_name_or_alias_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(settings(dir.path()));
    node.connecting();
    node.births();
    let now = crate::reading::now_ns();
    let out = node.data(
        1,
        &batch(vec![reading("sp", Value::Int(5), now)], now),
        4096,
    );
    let alias = decode(&out.messages[0]).metrics[0].alias.unwrap();

    let rebirth = proto::Payload {
        metrics: vec![Metric {
            name: Some(REBIRTH.to_string()),
            value: Some(metric::Value::BooleanValue(true)),
            ..Metric::default()
        }],
        ..proto::Payload::default()
    };
    assert_eq!(node.node_command(&rebirth.encode_to_vec()), Ok(true));
    assert!(node.node_command(b"\xff\xff\xff").is_err());

    let dcmd = proto::Payload {
        metrics: vec![
            Metric {
                alias: Some(alias),
                value: Some(metric::Value::LongValue((-7i64) as u64)),
                ..Metric::default()
            },
            Metric {
                name: Some("sp".to_string()),
                datatype: Some(3),
                value: Some(metric::Value::IntValue((-2i32) as u32)),
                ..Metric::default()
            },
            Metric {
                alias: Some(9999),
                value: Some(metric::Value::BooleanValue(true)),
                ..Metric::default()
            },
            Metric {
                name: Some(SEQ_METRIC.to_string()),
                value: Some(metric::Value::LongValue(1)),
                ..Metric::default()
            },
            Metric {
                name: Some("blob".to_string()),
                value: Some(metric::Value::BytesValue(vec![1])),
                ..Metric::default()
            },
        ],
        ..proto::Payload::default()
    };
    let writes = node.device_command("plc", &dcmd.encode_to_vec()).unwrap();
    assert_eq!(
        writes[0],
        Ok(DeviceWrite {
            channel: "sp".to_string(),
            value: serde_json::json!(-7)
        })
    );
    assert_eq!(writes[1].as_ref().unwrap().value, serde_json::json!(-2));
    assert!(matches!(writes[2], Err(CommandError::UnknownMetric(_))));
    assert!(matches!(writes[3], Err(CommandError::Value(..))));
    assert!(matches!(writes[4], Err(CommandError::Value(..))));
}

#[test]
fn state_follows_the_newest_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(settings(dir.path()));
    node.connecting();
    assert_eq!(node.state(br#"{"online":false,"timestamp":10}"#), None);
    assert_eq!(node.state(b"not json"), None);
    assert_eq!(node.state(br#"{"online":true,"timestamp":20}"#), Some(true));
    node.births();
    assert_eq!(
        node.state(br#"{"online":false,"timestamp":15}"#),
        None,
        "older"
    );
    assert_eq!(
        node.state(br#"{"online":true,"timestamp":30}"#),
        None,
        "no change"
    );
    assert_eq!(
        node.state(br#"{"online":false,"timestamp":40}"#),
        Some(false)
    );
}

#[test]
fn a_channel_declared_after_the_birth_is_born_before_its_first_data() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let counters = Arc::new(crate::pipeline::DriverCounters::default());
    counters
        .availability
        .store(crate::pipeline::AVAILABLE, Ordering::Relaxed);
    let declared = |names: &[&str]| -> Arc<[Channel]> {
        names
            .iter()
            .map(|n| Channel {
                name: (*n).to_string(),
                unit: None,
                value_type: ValueType::Float,
                declared: true,
                description: None,
                address: None,
                range: Some((0.0, 10.0)),
                writable: false,
            })
            .collect()
    };
    *counters.declared.lock().unwrap() = declared(&["a"]);
    settings
        .drivers
        .lock()
        .unwrap()
        .drivers
        .push(("plc".to_string(), counters.clone()));
    let mut node = Node::new(settings);
    node.connecting();
    let births = node.births();
    assert_eq!(births.len(), 2, "NBIRTH and the running driver's DBIRTH");
    let dbirth = decode(&births[1]);
    let a = &dbirth.metrics[0];
    assert_eq!(a.name.as_deref(), Some("a"));
    assert_eq!(a.is_null, Some(true));
    let keys = &a.properties.as_ref().unwrap().keys;
    assert_eq!(keys, &["engLow", "engHigh", "readOnly"]);

    // A channel declared later: its first data needs a birth (the deaths
    // check in between looks at availability only).
    *counters.declared.lock().unwrap() = declared(&["a", "b"]);
    assert!(node.deaths().is_empty());
    let now = crate::reading::now_ns();
    let mut r = reading("b", Value::Float(1.0), now);
    r.unit = None;
    let out = node.data(1, &batch(vec![r], now), 4096);
    assert_eq!(out.messages.len(), 2, "DBIRTH naming b, then DDATA");
    assert!(out.messages[0].topic.contains("/DBIRTH/"));

    // Its polls fail: DDEATH, once.
    counters
        .availability
        .store(crate::pipeline::UNAVAILABLE, Ordering::Relaxed);
    let deaths = node.deaths();
    assert_eq!(deaths.len(), 1);
    assert!(deaths[0].topic.ends_with("/DDEATH/gw1/plc"));
    assert!(node.deaths().is_empty());
}
