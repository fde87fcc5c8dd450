//! `ferrule telemetry show` and `ferrule status`: what the local telemetry
//! history and the queue say, read alongside a running gateway.

use std::time::Duration;

use anyhow::Context;
use ferrule::config::Config;
use ferrule::gateway;
use ferrule::telemetry::Snapshot;
use ferrule::telemetry::history::{self, Stored};

fn stored(config: &Config) -> anyhow::Result<Stored> {
    let path = gateway::history_path(config);
    let keyring = gateway::existing_keys(config).ok().flatten();
    history::read(&path, keyring.as_ref()).with_context(|| {
        format!(
            "no telemetry history yet at {} (it is written by `ferrule run` every telemetry.interval_s)",
            path.display()
        )
    })
}

fn age(ts_ms: u64) -> String {
    let now = ferrule::reading::now_ms();
    humantime::format_duration(Duration::from_secs(now.saturating_sub(ts_ms) / 1000)).to_string()
}

fn hour(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Figures shown as trends, when present.
const TRENDS: [&str; 6] = [
    "process.cpu_percent",
    "process.rss_bytes",
    "system.load_1",
    "queue.depth",
    "publisher.payload_bytes_acked",
    "publisher.connected",
];

pub fn telemetry_show(config: &Config, json: bool, hours: usize, raw: bool) -> anyhow::Result<()> {
    let stored = stored(config)?;
    let latest = stored.raw.last();
    if json {
        let trend: std::collections::BTreeMap<&String, &[history::RollUp]> = stored
            .hourly
            .iter()
            .map(|(k, v)| (k, &v[v.len().saturating_sub(hours)..]))
            .collect();
        let mut out = serde_json::json!({
            "latest": latest,
            "raw_samples": stored.raw.len(),
            "hourly": trend,
        });
        if raw {
            out["raw"] = serde_json::to_value(&stored.raw)?;
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let Some(latest) = latest else {
        println!("no telemetry sample kept yet");
        return Ok(());
    };
    println!(
        "latest sample: {} ago ({} raw samples kept)",
        age(latest.ts_ms),
        stored.raw.len()
    );
    println!();
    println!("{:<44} {:>16}", "figure", "value");
    for (name, value) in history::figures(latest) {
        println!("{name:<44} {value:>16.2}");
    }
    println!();
    println!("hourly trend (last {hours} hours):");
    println!(
        "{:<32} {:<20} {:>12} {:>12} {:>12} {:>8}",
        "figure", "hour (UTC)", "min", "avg", "max", "samples"
    );
    let driver_failures = stored
        .hourly
        .keys()
        .filter(|k| k.starts_with("drivers.") && k.ends_with(".polls_failed"));
    for name in TRENDS
        .iter()
        .map(|s| s.to_string())
        .chain(driver_failures.cloned())
    {
        let Some(rollups) = stored.hourly.get(&name) else {
            continue;
        };
        for r in &rollups[rollups.len().saturating_sub(hours)..] {
            println!(
                "{name:<32} {:<20} {:>12.2} {:>12.2} {:>12.2} {:>8}",
                hour(r.hour_ms),
                r.min,
                r.avg,
                r.max,
                r.samples
            );
        }
    }
    Ok(())
}

pub fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    let queue = ferrule::queue::read_stats(&gateway::queue_path(config))?;
    let latest: Option<Snapshot> = stored(config).ok().and_then(|s| s.raw.last().cloned());
    let retention = ferrule::retention::figures(config);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "queue": queue,
                "retention": retention,
                "telemetry": latest,
            }))?
        );
        return Ok(());
    }
    println!("gateway      {}", config.gateway.id.get_ref());
    let oldest = queue
        .oldest_captured_ns
        .map(|ns| age(ns / 1_000_000))
        .unwrap_or_else(|| "-".to_string());
    println!(
        "queue        {} entries, {} bytes, oldest {oldest} old, dropped {} (cap) {} (age), erased {}, set aside as unreadable {}",
        queue.depth,
        queue.bytes,
        queue.dropped_cap,
        queue.dropped_age,
        queue.erased,
        queue.set_aside
    );
    for class in &retention {
        println!(
            "retention    {:<20} kept {}, removed {}",
            class.class,
            class.keep,
            class
                .removed
                .map_or_else(|| "-".to_string(), |n| n.to_string())
        );
    }
    let Some(s) = latest else {
        println!("telemetry    none kept yet (ferrule run writes it every telemetry.interval_s)");
        return Ok(());
    };
    if let Some(c) = &s.config {
        println!(
            "config       {} (sha256 {}), loaded {} ago",
            c.file,
            c.sha256,
            age(c.loaded_ms)
        );
        for d in &c.not_started {
            println!("NOT STARTED  driver {}: {}", d.name, d.error);
        }
        if let Some(r) = &c.reload {
            let mut lines = super::reload::outcome_lines(r).into_iter();
            let first = lines.next().unwrap_or_default();
            println!("last reload  {} ago: {first}", age(r.at_ms));
            for line in lines {
                println!("             {line}");
            }
        }
    }
    println!(
        "as of        {} ago (uptime {})",
        age(s.ts_ms),
        humantime::format_duration(Duration::from_secs(s.uptime_s))
    );
    let p = &s.publisher;
    println!(
        "broker       {}{}",
        if p.connected {
            "connected"
        } else {
            "NOT connected"
        },
        p.last_failure
            .as_ref()
            .map(|f| format!(
                "; last failure {} ago: {} ({})",
                age(f.at_ms),
                f.message,
                f.kind
            ))
            .unwrap_or_default()
    );
    println!(
        "             {} connects, {} failures, {} messages / {} payload bytes acknowledged",
        p.connects, p.failures, p.messages_acked, p.payload_bytes_acked
    );
    println!("drivers");
    for d in &s.drivers {
        let device = d
            .device
            .as_ref()
            .map(|dev| {
                format!(
                    "device {}{}",
                    if dev.connected {
                        "connected"
                    } else {
                        "DISCONNECTED"
                    },
                    dev.signal_quality
                        .map(|q| format!(", quality {q} %"))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_else(|| "device status unknown".to_string());
        println!(
            "  {:<20} polls {} ok / {} failed, {} readings, {} restarts; {device}{}",
            d.name,
            d.polls_ok,
            d.polls_failed,
            d.readings,
            d.restarts,
            d.last_error
                .as_ref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        );
        let plugins = d
            .plugin
            .iter()
            .chain(d.processors.iter().filter_map(|p| p.plugin.as_ref()));
        for p in plugins {
            let identity = match (&p.name, &p.version) {
                (Some(n), Some(v)) => format!("{n} {v}, "),
                _ => String::new(),
            };
            println!(
                "    plugin {} ({}, {identity}{}, sha256 {})",
                p.file,
                p.abi,
                p.signer
                    .as_ref()
                    .map_or("UNSIGNED".to_string(), |k| format!("signed by key id {k}")),
                p.sha256
            );
        }
    }
    Ok(())
}
