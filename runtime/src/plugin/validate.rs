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
//! - a channel declaration (0.2.0) whose name is empty, holds control
//!   characters, is declared twice by the same stage, or whose strings
//!   pass `max_value_bytes`: the channel is **refused** (it keeps its
//!   index) and its readings are rejected; past `max_channels` the call is
//!   refused;
//! - a reading of an index not in the table, or a value of another type
//!   than its channel declares (except text in a `bad` reading: the reason
//!   it is bad): the reading is **rejected**;
//! - a channel name in a 0.1.0 reading that is empty or holds control
//!   characters: the reading is **rejected**;
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
use super::bindings::{v0_1, v0_2};
use super::channels::{ChannelTable, Sample, ValueType, shown};
use super::instance::DeviceStatus;
use super::sandbox::Limits;
use crate::reading::{Quality, Value};

/// Earliest timestamp taken as real: 2000-01-01T00:00:00Z.
pub const MIN_TIMESTAMP_NS: u64 = 946_684_800 * 1_000_000_000;
/// Latest timestamp taken as real: 2200-01-01T00:00:00Z.
pub const MAX_TIMESTAMP_NS: u64 = 7_258_118_400 * 1_000_000_000;

/// What the checks did to one call's output; added to the driver's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Readings left out: a bad or unknown channel, a value of another
    /// type than its channel declares, or a duplicate.
    pub readings_rejected: u64,
    /// Readings kept with quality `bad` for a timestamp outside 2000–2200.
    pub timestamps_flagged: u64,
    /// Status fields reported as absent for a value outside 0–100.
    pub status_fields_rejected: u64,
    /// Channel declarations refused (their readings are rejected).
    pub channels_refused: u64,
}

impl Checked {
    /// Adds another call's counts to these.
    pub fn add(&mut self, other: Checked) {
        self.readings_rejected += other.readings_rejected;
        self.timestamps_flagged += other.timestamps_flagged;
        self.status_fields_rejected += other.status_fields_rejected;
        self.channels_refused += other.channels_refused;
    }
}

/// One call's checks: the counts and the first problem, logged once.
#[derive(Debug, Default)]
pub struct Review {
    checked: Checked,
    first_problem: Option<String>,
}

impl Review {
    /// A reading left out, and why.
    pub fn reject(&mut self, why: impl FnOnce() -> String) {
        self.checked.readings_rejected += 1;
        if self.first_problem.is_none() {
            self.first_problem = Some(why());
        }
    }

    /// Channel declarations refused.
    pub fn refused_channels(&mut self, reasons: Vec<String>) {
        self.checked.channels_refused += reasons.len() as u64;
        if self.first_problem.is_none() {
            self.first_problem = reasons.into_iter().next();
        }
    }

    /// The counts; logs one line naming the plugin if anything was
    /// rejected or flagged.
    pub fn finish(self, instance: &str, call: &'static str) -> Checked {
        let c = self.checked;
        if c.readings_rejected > 0 || c.timestamps_flagged > 0 || c.channels_refused > 0 {
            tracing::warn!(
                plugin = instance,
                call,
                rejected = c.readings_rejected,
                flagged_bad_timestamp = c.timestamps_flagged,
                channels_refused = c.channels_refused,
                first_rejection = self.first_problem.as_deref().unwrap_or(""),
                "plugin output checked: readings rejected or flagged"
            );
        }
        c
    }
}

fn refuse(instance: &str, call: &'static str, message: String) -> PluginError {
    PluginError::Oversized {
        instance: instance.to_string(),
        call,
        message,
    }
}

fn check_count(
    instance: &str,
    call: &'static str,
    what: &str,
    count: usize,
    max: usize,
    limit: &str,
) -> Result<(), PluginError> {
    if count > max {
        return Err(refuse(
            instance,
            call,
            format!("{count} {what}, more than {limit} = {max}"),
        ));
    }
    Ok(())
}

fn check_len(
    instance: &str,
    call: &'static str,
    limits: &Limits,
    what: &str,
    len: usize,
    channel: &dyn Fn() -> String,
) -> Result<(), PluginError> {
    let max = limits.max_value_bytes;
    if len > max {
        return Err(refuse(
            instance,
            call,
            format!(
                "{what} of {len} bytes in channel \"{}\", more than max_value_bytes = {max}",
                channel()
            ),
        ));
    }
    Ok(())
}

fn check_readings(
    instance: &str,
    call: &'static str,
    limits: &Limits,
    n: usize,
) -> Result<(), PluginError> {
    check_count(
        instance,
        call,
        "readings",
        n,
        limits.max_readings,
        "max_readings",
    )
}

/// Refuses 0.1.0 readings beyond the instance's limits, naming what was too big.
pub fn check_sizes_v1(
    instance: &str,
    call: &'static str,
    limits: &Limits,
    readings: &[v0_1::types::Reading],
) -> Result<(), PluginError> {
    use v0_1::types::Value as V;
    check_readings(instance, call, limits, readings.len())?;
    for r in readings {
        let value_len = match &r.value {
            V::Text(t) => t.len(),
            V::Bytes(b) => b.len(),
            _ => 0,
        };
        let unit_len = r.unit.as_ref().map_or(0, String::len);
        let name = || shown(&r.channel);
        check_len(
            instance,
            call,
            limits,
            "channel name",
            r.channel.len(),
            &name,
        )?;
        check_len(instance, call, limits, "value", value_len, &name)?;
        check_len(instance, call, limits, "unit", unit_len, &name)?;
    }
    Ok(())
}

/// Refuses a 0.2.0 batch beyond the instance's limits. Channel strings are
/// checked when they are declared (a long one is refused, not the call).
pub fn check_sizes_v2(
    instance: &str,
    call: &'static str,
    limits: &Limits,
    batch: &v0_2::types::Batch,
) -> Result<(), PluginError> {
    use v0_2::types::Value as V;
    let columns = [
        (
            "floats",
            batch.floats.channels.len(),
            batch.floats.values.len(),
        ),
        ("ints", batch.ints.channels.len(), batch.ints.values.len()),
    ];
    for (name, channels, values) in columns {
        if channels != values {
            return Err(refuse(
                instance,
                call,
                format!("{name}: {channels} channels but {values} values"),
            ));
        }
    }
    let n = batch.readings.len() + batch.floats.values.len() + batch.ints.values.len();
    check_readings(instance, call, limits, n)?;
    let added = batch.added.len();
    check_count(
        instance,
        call,
        "channels added",
        added,
        limits.max_channels,
        "max_channels",
    )?;
    for r in &batch.readings {
        let value_len = match &r.value {
            V::Text(t) => t.len(),
            V::Bytes(b) => b.len(),
            _ => 0,
        };
        let index = || format!("#{}", r.channel);
        check_len(instance, call, limits, "value", value_len, &index)?;
    }
    Ok(())
}

/// Applies the reading rules above to stamped samples of `table`.
pub fn accept_samples(
    review: &mut Review,
    table: &ChannelTable,
    mut samples: Vec<Sample>,
) -> Vec<Sample> {
    let mut seen = Seen::new(table.len());
    samples.retain_mut(|s| {
        let Some(c) = table.usable(s.channel) else {
            let why = table.refusal(s.channel).unwrap_or_default();
            review.reject(|| why);
            return false;
        };
        // A `bad` reading may carry its reason as text, whatever the type.
        let reason = s.quality == Quality::Bad && matches!(s.value, Value::Text(_));
        let value_type = ValueType::of(&s.value);
        if c.declared && !reason && value_type != c.value_type {
            review.reject(|| {
                format!(
                    "channel \"{}\" declares {:?} values, got {value_type:?}",
                    shown(&c.name),
                    c.value_type,
                )
            });
            return false;
        }
        if !seen.insert(s.channel, s.ts_ns) {
            review.reject(|| {
                format!(
                    "second reading of channel \"{}\" at the same timestamp",
                    shown(&c.name)
                )
            });
            return false;
        }
        if !(MIN_TIMESTAMP_NS..=MAX_TIMESTAMP_NS).contains(&s.ts_ns) {
            review.checked.timestamps_flagged += 1;
            s.quality = Quality::Bad;
        }
        true
    });
    samples
}

/// The (channel, timestamp) pairs of a batch seen so far. Most batches
/// stamp every reading alike, so it starts as one bit per channel for the
/// first timestamp, and turns into a set of pairs at the first other one.
enum Seen {
    Bits { ts: Option<u64>, bits: Vec<u64> },
    Pairs(HashSet<(u32, u64)>),
}

impl Seen {
    fn new(channels: usize) -> Seen {
        Seen::Bits {
            ts: None,
            bits: vec![0; channels.div_ceil(64)],
        }
    }

    /// Adds a pair; false if it was already there.
    fn insert(&mut self, channel: u32, ts_ns: u64) -> bool {
        if let Seen::Bits { ts, bits } = self {
            let (word, bit) = (channel as usize / 64, 1u64 << (channel % 64));
            if *ts.get_or_insert(ts_ns) == ts_ns && word < bits.len() {
                let fresh = bits[word] & bit == 0;
                bits[word] |= bit;
                return fresh;
            }
            let first = ts.unwrap_or(ts_ns);
            let mut pairs = HashSet::new();
            for (w, word) in bits.iter().enumerate() {
                for b in 0..64 {
                    if word & (1 << b) != 0 {
                        pairs.insert((u32::try_from(w * 64 + b).unwrap_or(u32::MAX), first));
                    }
                }
            }
            *self = Seen::Pairs(pairs);
        }
        match self {
            Seen::Pairs(pairs) => pairs.insert((channel, ts_ns)),
            Seen::Bits { .. } => true,
        }
    }
}

/// Drops the later of two finished readings with the same name and
/// timestamp: possible only when a processor redeclared a channel name
/// and passed both on.
pub fn dedupe_names(
    review: &mut Review,
    table: &ChannelTable,
    samples: Vec<Sample>,
) -> Vec<Sample> {
    let mut seen: HashSet<(&str, u64)> = HashSet::with_capacity(samples.len());
    let mut kept = Vec::with_capacity(samples.len());
    for s in samples {
        let name = table.get(s.channel).map_or("", |c| c.name.as_str());
        if seen.insert((name, s.ts_ns)) {
            kept.push(s);
        } else {
            review.reject(|| {
                format!(
                    "two channels named \"{}\" at the same timestamp",
                    shown(name)
                )
            });
        }
    }
    kept
}

/// Checks a device status against the status limits (an error of the
/// plugin when over) and the 0–100 ranges (fields rejected and counted).
pub fn accept_status(
    instance: &str,
    limits: &Limits,
    s: DeviceStatus,
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
    const NOW: u64 = 1_795_450_000_000_000_000;

    fn sample(channel: u32, value: Value, ts_ns: u64) -> Sample {
        Sample {
            channel,
            value,
            ts_ns,
            quality: Quality::Good,
        }
    }

    fn table() -> ChannelTable {
        use super::super::channels::Channel;
        let mut table = ChannelTable::new(16, 64);
        let int = |name: &str| Channel {
            declared: true,
            ..Channel::learned(name, None, &Value::Int(0))
        };
        let refused = table
            .declare(0, [int("a"), int(""), int("old"), int("future"), int("b")])
            .unwrap();
        assert_eq!(refused.len(), 1);
        table
    }

    #[test]
    fn unknown_refused_mistyped_and_same_instant_samples_are_rejected_and_bad_clocks_flagged() {
        let table = table();
        let mut review = Review::default();
        let kept = accept_samples(
            &mut review,
            &table,
            vec![
                sample(0, Value::Int(1), NOW),
                sample(1, Value::Int(1), NOW),
                sample(0, Value::Int(2), NOW),
                sample(0, Value::Int(3), NOW + 1),
                sample(4, Value::Float(1.0), NOW),
                sample(9, Value::Int(1), NOW),
                sample(2, Value::Int(1), 0),
                sample(3, Value::Int(1), MAX_TIMESTAMP_NS + 1),
                sample(4, Value::Int(1), NOW),
                Sample {
                    quality: Quality::Bad,
                    ..sample(0, Value::Text("device exception".into()), NOW + 2)
                },
            ],
        );
        let got: Vec<(u32, Quality)> = kept.iter().map(|s| (s.channel, s.quality)).collect();
        assert_eq!(
            got,
            [
                (0, Quality::Good),
                (0, Quality::Good),
                (2, Quality::Bad),
                (3, Quality::Bad),
                (4, Quality::Good),
                (0, Quality::Bad)
            ]
        );
        assert_eq!(
            kept[3].ts_ns,
            MAX_TIMESTAMP_NS + 1,
            "timestamp kept as given"
        );
        assert_eq!(
            review.finish("p", "poll"),
            Checked {
                readings_rejected: 4,
                timestamps_flagged: 2,
                status_fields_rejected: 0,
                channels_refused: 0,
            }
        );
    }

    #[test]
    fn seen_pairs_switch_from_bits_to_a_set_without_forgetting() {
        let mut seen = Seen::new(130);
        assert!(seen.insert(3, 10));
        assert!(seen.insert(129, 10));
        assert!(!seen.insert(3, 10));
        // Another timestamp, and an index past the bits: a set from here on.
        assert!(seen.insert(3, 11));
        assert!(!seen.insert(129, 10), "remembered across the switch");
        assert!(!seen.insert(3, 11));
        assert!(seen.insert(500, 10));
        assert!(!seen.insert(500, 10));
    }

    #[test]
    fn finished_readings_of_one_name_at_one_instant_keep_the_first() {
        use super::super::channels::Channel;
        let mut table = ChannelTable::new(8, 64);
        let t = |unit: &str| Channel::learned("t", Some(unit), &Value::Int(1));
        table.declare(0, [t("degC")]).unwrap();
        table.declare(1, [t("degF")]).unwrap();
        let mut review = Review::default();
        let kept = dedupe_names(
            &mut review,
            &table,
            vec![
                sample(0, Value::Int(1), NOW),
                sample(1, Value::Int(1), NOW),
                sample(1, Value::Int(1), NOW + 1),
            ],
        );
        let got: Vec<(u32, u64)> = kept.iter().map(|s| (s.channel, s.ts_ns)).collect();
        assert_eq!(got, [(0, NOW), (1, NOW + 1)]);
        assert_eq!(review.finish("p", "chain").readings_rejected, 1);
    }

    fn status(battery: Option<u8>, signal: Option<u8>, extra: usize, len: usize) -> DeviceStatus {
        DeviceStatus {
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
    fn ragged_columns_and_too_many_readings_across_lists_refuse_the_call() {
        use v0_2::types::{Batch, FloatColumns, IntColumns};
        let mut limits = crate::gateway::plugin_limits(&crate::config::PluginLimits::default());
        limits.max_readings = 4;
        let batch = |float_channels: usize, floats: usize, ints: usize| Batch {
            added: Vec::new(),
            timestamp_ns: None,
            readings: Vec::new(),
            floats: FloatColumns {
                channels: (0..float_channels as u32).collect(),
                values: vec![1.0; floats],
            },
            ints: IntColumns {
                channels: (0..ints as u32).collect(),
                values: vec![1; ints],
            },
        };
        assert!(check_sizes_v2("p", "poll", &limits, &batch(2, 2, 2)).is_ok());
        let e = check_sizes_v2("p", "poll", &limits, &batch(3, 2, 0)).unwrap_err();
        assert!(e.instance_lost(), "{e}");
        assert!(
            e.to_string().contains("floats: 3 channels but 2 values"),
            "{e}"
        );
        // Columns count against max_readings with the rest.
        let e = check_sizes_v2("p", "poll", &limits, &batch(3, 3, 2)).unwrap_err();
        assert!(e.to_string().contains("5 readings"), "{e}");
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
