//! What a plugin returns, checked against its limits and against what the
//! WIT promises, before the rest of the runtime sees it.
//!
//! Sizes are bounded twice: the store's hostcall fuel (`max_result_bytes`)
//! makes wasmtime refuse a result whose lengths in guest memory add up to
//! more than that *before* copying it, and the finer limits here
//! (`max_readings`, `max_value_bytes`, the status limits) are checked on
//! the copy, which is already bounded by the fuel. Either way the call is
//! an error of the plugin ([`PluginError::Oversized`]) and the instance is
//! rebuilt.
//!
//! What the WIT allows but a consumer cannot use is handled per reading
//! and counted ([`Checked`]), so one bad reading never costs the batch:
//!
//! - a channel name that is empty or holds control characters: the
//!   reading is **rejected**;
//! - a second reading with the same channel and timestamp in one batch
//!   (the same instant measured twice, so one of them is wrong): the
//!   later one is **rejected**; the same channel at different timestamps
//!   (a device's buffered samples) is kept;
//! - a timestamp before 2000-01-01 or after 2200-01-01 (a device clock
//!   that was never set): the reading is **kept with quality `bad`**, its
//!   timestamp as the device gave it;
//! - `battery-percent` or `signal-quality` above 100: the field is
//!   **rejected** (reported as absent), not clamped — a clamped 100 would
//!   claim a perfect link.

use std::collections::HashSet;

use super::PluginError;
use super::bindings::types as wt;
use super::instance::DeviceStatus;
use super::sandbox::Limits;
use crate::reading::{Quality, Reading};

/// Earliest timestamp taken as real: 2000-01-01T00:00:00Z.
pub const MIN_TIMESTAMP_NS: u64 = 946_684_800 * 1_000_000_000;
/// Latest timestamp taken as real: 2200-01-01T00:00:00Z.
pub const MAX_TIMESTAMP_NS: u64 = 7_258_118_400 * 1_000_000_000;

/// What the checks did to one call's output; added to the driver's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Readings left out: a bad channel name or a duplicate.
    pub readings_rejected: u64,
    /// Readings kept with quality `bad` for a timestamp outside 2000–2200.
    pub timestamps_flagged: u64,
    /// Status fields reported as absent for a value outside 0–100.
    pub status_fields_rejected: u64,
}

impl Checked {
    /// Adds another call's counts to these.
    pub fn add(&mut self, other: Checked) {
        self.readings_rejected += other.readings_rejected;
        self.timestamps_flagged += other.timestamps_flagged;
        self.status_fields_rejected += other.status_fields_rejected;
    }
}

fn refuse(instance: &str, call: &'static str, message: String) -> PluginError {
    PluginError::Oversized {
        instance: instance.to_string(),
        call,
        message,
    }
}

/// A short, printable form of something a plugin named, for messages.
fn shown(name: &str) -> String {
    name.chars().take(40).flat_map(char::escape_debug).collect()
}

/// Refuses readings beyond the instance's limits, naming what was too big.
pub fn check_sizes(
    instance: &str,
    call: &'static str,
    limits: &Limits,
    readings: &[wt::Reading],
) -> Result<(), PluginError> {
    if readings.len() > limits.max_readings {
        return Err(refuse(
            instance,
            call,
            format!(
                "{} readings, more than max_readings = {}",
                readings.len(),
                limits.max_readings
            ),
        ));
    }
    let max = limits.max_value_bytes;
    for r in readings {
        let value_len = match &r.value {
            wt::Value::Text(t) => t.len(),
            wt::Value::Bytes(b) => b.len(),
            _ => 0,
        };
        let unit_len = r.unit.as_ref().map_or(0, String::len);
        for (what, len) in [
            ("channel name", r.channel.len()),
            ("value", value_len),
            ("unit", unit_len),
        ] {
            if len > max {
                return Err(refuse(
                    instance,
                    call,
                    format!(
                        "{what} of {len} bytes in channel \"{}\", more than max_value_bytes = {max}",
                        shown(&r.channel)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Why a channel name cannot be used, if it cannot.
fn bad_channel(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty channel name")
    } else if name.chars().any(char::is_control) {
        Some("control character in channel name")
    } else {
        None
    }
}

/// Applies the reading rules above to stamped readings; logs one line per
/// call naming the plugin when anything was rejected or flagged.
pub fn accept_readings(
    instance: &str,
    call: &'static str,
    readings: Vec<Reading>,
) -> (Vec<Reading>, Checked) {
    let mut checked = Checked::default();
    let mut first_problem: Option<String> = None;
    let mut seen: HashSet<(String, u64)> = HashSet::with_capacity(readings.len());
    let mut kept = Vec::with_capacity(readings.len());
    for mut r in readings {
        let problem = bad_channel(&r.channel).map(str::to_string).or_else(|| {
            (!seen.insert((r.channel.clone(), r.ts_ns))).then(|| {
                format!(
                    "second reading of channel \"{}\" at the same timestamp",
                    shown(&r.channel)
                )
            })
        });
        if let Some(problem) = problem {
            checked.readings_rejected += 1;
            first_problem.get_or_insert(problem);
            continue;
        }
        if !(MIN_TIMESTAMP_NS..=MAX_TIMESTAMP_NS).contains(&r.ts_ns) {
            checked.timestamps_flagged += 1;
            r.quality = Quality::Bad;
        }
        kept.push(r);
    }
    if checked.readings_rejected > 0 || checked.timestamps_flagged > 0 {
        tracing::warn!(
            plugin = instance,
            call,
            rejected = checked.readings_rejected,
            flagged_bad_timestamp = checked.timestamps_flagged,
            first_rejection = first_problem.as_deref().unwrap_or(""),
            "plugin output checked: readings rejected or flagged"
        );
    }
    (kept, checked)
}

/// Checks a device status against the status limits (an error of the
/// plugin when over) and the 0–100 ranges (fields rejected and counted).
pub fn accept_status(
    instance: &str,
    limits: &Limits,
    s: wt::DeviceStatus,
) -> Result<(DeviceStatus, Checked), PluginError> {
    let max = limits.max_status_value_bytes;
    if s.extra.len() > limits.max_status_entries {
        return Err(refuse(
            instance,
            "status",
            format!(
                "{} extra entries, more than max_status_entries = {}",
                s.extra.len(),
                limits.max_status_entries
            ),
        ));
    }
    let texts = s.firmware.iter().map(|f| ("firmware", f.as_str())).chain(
        s.extra
            .iter()
            .flat_map(|(k, v)| [("extra key", k.as_str()), ("extra value", v.as_str())]),
    );
    for (what, text) in texts {
        if text.len() > max {
            return Err(refuse(
                instance,
                "status",
                format!(
                    "{what} of {} bytes, more than max_status_value_bytes = {max}",
                    text.len()
                ),
            ));
        }
    }
    let mut checked = Checked::default();
    let mut percent = |what: &str, v: Option<u8>| match v {
        Some(p) if p > 100 => {
            checked.status_fields_rejected += 1;
            tracing::warn!(
                plugin = instance,
                field = what,
                value = p,
                "device status field outside 0-100 rejected"
            );
            None
        }
        other => other,
    };
    let battery_percent = percent("battery-percent", s.battery_percent);
    let signal_quality = percent("signal-quality", s.signal_quality);
    Ok((
        DeviceStatus {
            connected: s.connected,
            firmware: s.firmware,
            battery_percent,
            signal_quality,
            extra: s.extra,
        },
        checked,
    ))
}

/// `text` cut to at most `max` bytes on a character boundary, saying how
/// much was cut.
pub fn cut(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} more bytes cut)",
        text.get(..end).unwrap_or_default(),
        text.len() - end
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Value;

    fn reading(channel: &str, ts_ns: u64) -> Reading {
        Reading {
            channel: channel.into(),
            value: Value::Int(1),
            ts_ns,
            quality: Quality::Good,
            unit: None,
        }
    }

    const NOW: u64 = 1_795_450_000_000_000_000;

    #[test]
    fn bad_names_and_same_instant_duplicates_are_rejected_and_bad_clocks_flagged() {
        let (kept, checked) = accept_readings(
            "p",
            "poll",
            vec![
                reading("a", NOW),
                reading("", NOW),
                reading("tab\there", NOW),
                reading("a", NOW),
                reading("a", NOW + 1),
                reading("old", 0),
                reading("future", MAX_TIMESTAMP_NS + 1),
                reading("b", NOW),
            ],
        );
        let names: Vec<(&str, Quality)> = kept
            .iter()
            .map(|r| (r.channel.as_str(), r.quality))
            .collect();
        assert_eq!(
            names,
            [
                ("a", Quality::Good),
                ("a", Quality::Good),
                ("old", Quality::Bad),
                ("future", Quality::Bad),
                ("b", Quality::Good)
            ]
        );
        assert_eq!(
            kept[3].ts_ns,
            MAX_TIMESTAMP_NS + 1,
            "timestamp kept as given"
        );
        assert_eq!(
            checked,
            Checked {
                readings_rejected: 3,
                timestamps_flagged: 2,
                status_fields_rejected: 0
            }
        );
    }

    fn status(
        battery: Option<u8>,
        signal: Option<u8>,
        extra: usize,
        len: usize,
    ) -> wt::DeviceStatus {
        wt::DeviceStatus {
            connected: true,
            firmware: Some("1.0".into()),
            battery_percent: battery,
            signal_quality: signal,
            extra: (0..extra)
                .map(|i| (format!("k{i}"), "v".repeat(len)))
                .collect(),
        }
    }

    #[test]
    fn status_percentages_over_100_are_rejected_and_oversized_statuses_refused() {
        let limits = crate::gateway::plugin_limits(&crate::config::PluginLimits::default());
        let (s, checked) = accept_status("p", &limits, status(Some(250), Some(100), 1, 1)).unwrap();
        assert_eq!((s.battery_percent, s.signal_quality), (None, Some(100)));
        assert_eq!(checked.status_fields_rejected, 1);
        let too_many = accept_status(
            "p",
            &limits,
            status(None, None, limits.max_status_entries + 1, 1),
        );
        assert!(matches!(
            too_many,
            Err(PluginError::Oversized { call: "status", .. })
        ));
        let too_long = accept_status(
            "p",
            &limits,
            status(None, None, 1, limits.max_status_value_bytes + 1),
        );
        let message = too_long.unwrap_err().to_string();
        assert!(message.contains("max_status_value_bytes"), "{message}");
    }

    #[test]
    fn cut_keeps_characters_whole_and_says_what_went() {
        assert_eq!(cut("short".into(), 10), "short");
        let cut_text = cut("ééé".into(), 3);
        assert_eq!(cut_text, "é… (4 more bytes cut)");
    }
}
