use std::path::Path;

use proptest::prelude::*;

use super::*;

fn write_fixture(dir: &Path) -> String {
    std::fs::write(dir.join("ca.pem"), "x").unwrap();
    std::fs::write(dir.join("drv.wasm"), "x").unwrap();
    r#"[gateway]
id = "gw-1"

[mqtt]
host = "broker.local"
ca_file = "ca.pem"

[[driver]]
name = "d1"
plugin = "drv.wasm"
interval_ms = 250

[driver.config]
answer = 42
"#
    .to_string()
}

#[test]
fn defaults_and_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    let text = write_fixture(dir.path());
    let path = dir.path().join("gw.toml");
    let config = Config::parse(&text, &path).unwrap();
    assert_eq!(config.mqtt.port, 8883);
    assert_eq!(config.mqtt.topic_prefix, "ferrule");
    assert_eq!(config.limits.memory_mb, 64);
    assert_eq!(*config.drivers[0].interval_ms.get_ref(), 250);
    assert_eq!(
        config.resolve(config.drivers[0].plugin.get_ref()),
        dir.path().join("drv.wasm")
    );
    assert_eq!(
        serde_json::to_string(&config.drivers[0].config).unwrap(),
        r#"{"answer":42}"#
    );
}

#[test]
fn unknown_field_names_line_column_and_expected_fields() {
    let dir = tempfile::tempdir().unwrap();
    let text = write_fixture(dir.path()).replace("interval_ms = 250", "intervall = 250");
    let err = Config::parse(&text, Path::new("gw.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("gw.toml:11:1: unknown field `intervall`, expected one of"),
        "{err}"
    );
}

#[test]
fn syntax_error_has_a_position() {
    let err = Config::parse("[gateway\nid = 1", Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("x.toml:1:"), "{err}");
}

#[test]
fn bad_names_and_zero_interval_are_refused_at_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    let text = write_fixture(dir.path()).replace("name = \"d1\"", "name = \"a/b\"");
    let err = Config::parse(&text, &path).unwrap_err().to_string();
    assert!(err.contains("gw.toml:9:8: driver name \"a/b\""), "{err}");

    let text = write_fixture(dir.path()).replace("interval_ms = 250", "interval_ms = 0");
    let err = Config::parse(&text, &path).unwrap_err().to_string();
    assert!(
        err.contains("gw.toml:11:15: interval_ms: expected a positive"),
        "{err}"
    );
}

#[test]
fn missing_ca_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    let text = write_fixture(dir.path()).replace("\"ca.pem\"", "\"nope.pem\"");
    let err = Config::parse(&text, &path).unwrap_err().to_string();
    assert!(
        err.contains("gw.toml:6:11: file \"nope.pem\" not found"),
        "{err}"
    );
}

#[test]
fn mqtt_link_defaults_and_choices() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    let config = Config::parse(&write_fixture(dir.path()), &path).unwrap();
    assert_eq!(config.mqtt.protocol, MqttProtocol::V311);
    assert!(config.mqtt.clean_session);
    assert_eq!(*config.mqtt.max_packet_size.get_ref(), 128 * 1024);
    assert_eq!(*config.mqtt.keep_alive_s.get_ref(), 30);

    std::fs::write(dir.path().join("secret"), "pw\n").unwrap();
    let text = write_fixture(dir.path()).replace(
        "ca_file = \"ca.pem\"",
        "ca_file = \"ca.pem\"\nprotocol = \"5\"\nclean_session = false\nusername = \"gw\"\npassword_file = \"secret\"",
    );
    let config = Config::parse(&text, &path).unwrap();
    assert_eq!(config.mqtt.protocol, MqttProtocol::V5);
    assert!(!config.mqtt.clean_session);
    assert_eq!(
        config.resolve(Path::new(
            config.mqtt.password_file.as_ref().unwrap().get_ref()
        )),
        dir.path().join("secret")
    );
}

#[test]
fn mqtt_link_values_out_of_range_are_refused_at_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    let with = |line: &str| {
        let text = write_fixture(dir.path()).replace(
            "ca_file = \"ca.pem\"",
            &format!("ca_file = \"ca.pem\"\n{line}"),
        );
        Config::parse(&text, &path).unwrap_err().to_string()
    };
    let err = with("protocol = \"4\"");
    assert!(err.contains("gw.toml:7:12: unknown variant `4`"), "{err}");
    let err = with("keep_alive_s = 0");
    assert!(
        err.contains("gw.toml:7:16: keep_alive_s = 0: expected 1 to 65535 seconds"),
        "{err}"
    );
    let err = with("max_packet_size = 100");
    assert!(
        err.contains("gw.toml:7:19: max_packet_size = 100: expected at least 1024 bytes"),
        "{err}"
    );
    let err = with("password_file = \"missing\"");
    assert!(
        err.contains("gw.toml:7:17: file \"missing\" not found"),
        "{err}"
    );
    let err = with("password = \"inline\"");
    assert!(
        err.contains("gw.toml:7:1: unknown field `password`"),
        "{err}"
    );
}

#[test]
fn further_brokers_are_tried_in_order_after_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    let with = |line: &str| {
        let text = write_fixture(dir.path()).replace(
            "ca_file = \"ca.pem\"",
            &format!("ca_file = \"ca.pem\"\nport = 8884\n{line}"),
        );
        Config::parse(&text, &path)
    };
    let config = with(r#"hosts = ["b2", "b3:9000", "[::1]", "[fd00::7]:1883"]"#).unwrap();
    let brokers = config.brokers();
    let brokers: Vec<(&str, u16)> = (brokers.iter()).map(|(h, p)| (h.as_str(), *p)).collect();
    assert_eq!(
        brokers,
        [
            ("broker.local", 8884),
            ("b2", 8884),
            ("b3", 9000),
            ("::1", 8884),
            ("fd00::7", 1883)
        ]
    );
    for (bad, why) in [
        ("b:0", "port must be 1 to 65535"),
        ("b:x", "port must be 1 to 65535"),
        ("::1", "an IPv6 address needs brackets"),
        ("[::1", "no closing ']'"),
        (":1883", "no host name"),
    ] {
        let err = with(&format!("hosts = [\"ok\", \"{bad}\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("gw.toml:8:16: mqtt.hosts: {bad:?}: {why}")),
            "{err}"
        );
    }
}

#[test]
fn operator_keys_are_read_as_keys_and_refused_at_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    let id =
        crate::plugin::trust::keygen(&dir.path().join("op.key"), &dir.path().join("op.key.pub"))
            .unwrap();
    let with = |keys: &str| {
        let text = format!(
            "{}\n[trust]\noperator_keys = [{keys}]\n",
            write_fixture(dir.path())
        );
        Config::parse(&text, &path)
    };
    let config = with("\"op.key.pub\"").unwrap();
    let keys = config.operator_keys().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].0, id);
    assert!(config.trust.publisher_keys.is_empty(), "a separate role");
    let err = with("\"op.key.pub\", \"ca.pem\"").unwrap_err().to_string();
    assert!(
        err.contains("gw.toml:17:32: trust.operator_keys: "),
        "{err}"
    );
}

proptest! {
    #[test]
    fn line_col_matches_a_naive_count(text in "[a-z\n]{0,80}", offset in 0usize..100) {
        let (line, col) = line_col(&text, offset);
        let offset = offset.min(text.len());
        let mut l = 1;
        let mut c = 1;
        for ch in text[..offset].chars() {
            if ch == '\n' { l += 1; c = 1; } else { c += 1; }
        }
        prop_assert_eq!((line, col), (l, c));
    }
}

#[test]
fn the_retention_table_sets_every_class_and_the_older_keys_still_apply() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    let text = write_fixture(dir.path());
    // Before [retention]: the older keys.
    let older = text.replace(
        "[[driver]]",
        "[queue]\nmax_age_s = 600\n[telemetry]\nraw_retention_s = 3600\n\n[[driver]]",
    );
    let config = Config::parse(&older, &path).unwrap();
    assert_eq!(config.queue.max_age_s, Some(600));
    assert_eq!(config.telemetry.raw_retention_s, 3600);
    assert_eq!(config.retention.plugin_data_days, None);
    // [retention] wins where it says something.
    let both = older.replace(
        "[[driver]]",
        "[retention]\nqueue_max_age_s = 2592000\ntelemetry_raw_s = 86400\ntelemetry_trend_s = 31536000\nplugin_data_days = 30\n\n[[driver]]",
    );
    let config = Config::parse(&both, &path).unwrap();
    assert_eq!(config.queue.max_age_s, Some(2_592_000));
    assert_eq!(config.telemetry.raw_retention_s, 86_400);
    assert_eq!(config.telemetry.trend_retention_s, 31_536_000);
    assert_eq!(config.retention.plugin_data_days, Some(30));
    assert_eq!(config.retention.audit_days, 7 * 365);
}

#[test]
fn writable_channels_are_listed_with_limits_that_can_be_met() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_fixture(dir.path());
    let path = dir.path().join("gw.toml");
    let parse = |commands: &str| {
        Config::parse(&format!("{base}\n{commands}"), &path).map_err(|e| e.to_string())
    };
    let config = parse(
        "[driver.commands.setpoint]\nmin = 10\nmax = 80.5\nmax_per_minute = 6\n\
         [driver.commands.mode]\nallowed = [\"auto\", \"manual\"]\n[driver.commands.valve]\n",
    )
    .unwrap();
    let commands = &config.drivers[0].commands;
    assert_eq!(commands.len(), 3);
    let rule = |name: &str| {
        (commands.iter())
            .find(|(c, _)| c.get_ref() == name)
            .map(|(_, r)| r.clone())
            .unwrap()
    };
    let setpoint = rule("setpoint");
    assert_eq!((setpoint.min, setpoint.max), (Some(10.0), Some(80.5)));
    assert_eq!(setpoint.max_per_minute, Some(6));
    assert_eq!(rule("valve"), WritableChannel::default());
    // None by default.
    assert!(parse("").unwrap().drivers[0].commands.is_empty());

    for (commands, why) in [
        (
            "[driver.commands.sp]\nmin = 5\nmax = 1\n",
            "commands.sp: min 5 is above max 1",
        ),
        (
            "[driver.commands.sp]\nallowed = []\n",
            "commands.sp: allowed is empty",
        ),
        (
            "[driver.commands.sp]\nallowed = [[1]]\n",
            "commands.sp: allowed value [1]: expected numbers",
        ),
        (
            "[driver.commands.sp]\nmax_per_minute = 0\n",
            "commands.sp: max_per_minute = 0",
        ),
        (
            "[driver.commands.sp]\nmin = nan\n",
            "commands.sp: min must be a finite number",
        ),
    ] {
        let err = parse(commands).unwrap_err();
        assert!(
            err.contains("gw.toml:16:18: ") && err.contains(&format!("driver \"d1\": {why}")),
            "{commands}: {err}"
        );
    }
    let err = parse("[driver.commands.sp]\nmaximum = 5\n").unwrap_err();
    assert!(err.contains("unknown field `maximum`"), "{err}");
}

#[test]
fn commands_need_signatures_once_operator_keys_are_set_and_a_window_that_can_be_met() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    crate::plugin::trust::keygen(&dir.path().join("op.key"), &dir.path().join("op.key.pub"))
        .unwrap();
    let with = |extra: &str| {
        let text = format!("{}\n{extra}", write_fixture(dir.path()));
        Config::parse(&text, &path).map_err(|e| e.to_string())
    };
    let keys = "[trust]\noperator_keys = [\"op.key.pub\"]\n";
    // Unsigned commands are taken only while there is no operator key.
    let plain = with("").unwrap();
    assert!(!plain.commands_require_signed());
    assert_eq!(*plain.commands.window_s.get_ref(), 60);
    assert_eq!(*plain.commands.clock_skew_s.get_ref(), 10);
    assert!(with(keys).unwrap().commands_require_signed());
    let opted_out = with(&format!("{keys}[commands]\nrequire_signed = false\n")).unwrap();
    assert!(!opted_out.commands_require_signed());
    let tuned = with(&format!(
        "{keys}[commands]\nwindow_s = 300\nclock_skew_s = 0\n"
    ))
    .unwrap();
    assert_eq!(
        (
            *tuned.commands.window_s.get_ref(),
            *tuned.commands.clock_skew_s.get_ref()
        ),
        (300, 0)
    );

    for (extra, at, why) in [
        (
            "[commands]\nrequire_signed = true\n",
            "gw.toml:17:18: ",
            "commands.require_signed = true needs [trust] operator_keys",
        ),
        (
            "[commands]\nwindow_s = 0\n",
            "gw.toml:17:12: ",
            "commands.window_s = 0: expected 1 to 86400 seconds",
        ),
        (
            "[commands]\nwindow_s = 86401\n",
            "gw.toml:17:12: ",
            "expected 1 to 86400 seconds",
        ),
        (
            "[commands]\nclock_skew_s = 7200\n",
            "gw.toml:17:16: ",
            "commands.clock_skew_s = 7200: expected 0 to 3600 seconds",
        ),
    ] {
        let err = with(extra).unwrap_err();
        assert!(err.contains(at) && err.contains(why), "{extra}: {err}");
    }
    let err = with("[commands]\nwindow = 5\n").unwrap_err();
    assert!(err.contains("unknown field `window`"), "{err}");
}
