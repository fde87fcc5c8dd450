//! `cargo xtask soak --minutes N`: ten drivers against mosquitto for N
//! minutes, with the broker restarted and the gateway killed (-9) on a
//! schedule. Every 5 s it samples the gateway's RSS and CPU, the queue's
//! depth (from the live status file the gateway writes) and the readings
//! delivered; at the end it waits for the queue to drain and checks that
//! every queue sequence arrived. Writes `soak.csv` and `soak.png` (RSS,
//! CPU, queue depth and delivered messages over time, with the faults
//! marked) to `FERRULE_SOAK_OUT`, and its figures like every part.
//! Fails when a sequence is missing; asserts nothing about speed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferrule_benches::{self as bench, Report};
use ferrule_tests::{Mosquitto, SeqLog, Subscriber};

/// Minutes to run (`cargo xtask soak --minutes`).
const MINUTES_ENV: &str = "FERRULE_SOAK_MINUTES";
/// Where the CSV and the plot go.
const OUT_DIR_ENV: &str = "FERRULE_SOAK_OUT";

const DRIVERS: usize = 10;
const CHANNELS: usize = 10;
const INTERVAL_MS: u64 = 250;

/// One sample of the run.
struct Row {
    t_s: f64,
    rss_mib: f64,
    cpu_percent: f64,
    queue_depth: u64,
    delivered: u64,
    event: &'static str,
}

/// When faults happen: the broker is stopped for `broker_down` every
/// `broker_every` for the whole run, and the gateway killed every
/// `kill_every` (restarted a second later) until `kills_until`, so the
/// rest of the run is one process's life, long enough to see its memory
/// grow or not.
struct Schedule {
    sample: Duration,
    broker_every: Duration,
    broker_down: Duration,
    kill_every: Duration,
    kills_until: Duration,
    warmup: Duration,
}

impl Schedule {
    fn for_run(total: Duration) -> Schedule {
        if total < Duration::from_secs(600) {
            // A short run (the smoke test's, or a quick look): one of each.
            Schedule {
                sample: Duration::from_secs(1),
                broker_every: total / 2,
                broker_down: Duration::from_secs(2),
                kill_every: total / 3,
                kills_until: total / 2,
                warmup: total / 8,
            }
        } else {
            Schedule {
                sample: Duration::from_secs(5),
                broker_every: Duration::from_secs(240),
                broker_down: Duration::from_secs(5),
                kill_every: Duration::from_secs(370),
                kills_until: total * 2 / 5,
                warmup: Duration::from_secs(120),
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let minutes: f64 = match std::env::var(MINUTES_ENV) {
        Ok(v) => v.parse().with_context(|| format!("{MINUTES_ENV}={v:?}"))?,
        Err(_) => 60.0,
    };
    let total = if bench::smoke() {
        Duration::from_secs(12)
    } else {
        Duration::from_secs_f64(minutes * 60.0)
    };
    let plan = Schedule::for_run(total);
    let out_dir = match std::env::var_os(OUT_DIR_ENV) {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os(bench::OUT_ENV)
            .map(PathBuf::from)
            .context("set FERRULE_SOAK_OUT (cargo xtask soak does)")?,
    };
    std::fs::create_dir_all(&out_dir)?;
    let mut report = Report::new("soak", "soak: faults, memory and delivery over time");
    report.method(format!(
        "ferrule (release) with {DRIVERS} sim drivers of {CHANNELS} channels every {INTERVAL_MS} ms, each through a scale processor, against mosquitto (mutual TLS, persistence on) for {:.0} min; the broker stopped for {} s every {} s and the gateway killed with SIGKILL every {} s (restarted 1 s later) for the first {:.0} min; RSS, CPU, queue depth and delivered messages sampled every {} s. Memory growth is read over the last process's life (no kill after minute {:.0}), from {} s after its start",
        total.as_secs_f64() / 60.0,
        plan.broker_down.as_secs(),
        plan.broker_every.as_secs(),
        plan.kill_every.as_secs(),
        plan.kills_until.as_secs_f64() / 60.0,
        plan.sample.as_secs(),
        plan.kills_until.as_secs_f64() / 60.0,
        plan.warmup.as_secs()
    ));

    let dir = bench::workdir("soak")?;
    let pki = ferrule_tests::Pki::new(dir.path())?;
    let port = ferrule_tests::free_port()?;
    let extra = format!(
        "{}{}",
        ferrule_tests::persistence_config(dir.path())?,
        bench::BENCH_BROKER
    );
    let mut broker = Mosquitto::start(dir.path(), &pki, port, &extra)?;
    let mut sub =
        Subscriber::connect_persistent(&pki, port, "ferrule/gw-test/data/#", "soak-sub").await?;
    let data = dir.path().join("data");
    let drivers = (0..DRIVERS)
        .map(|d| bench::sim_driver(&format!("sim-{d}"), CHANNELS, INTERVAL_MS, 1))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config_path = dir.path().join("soak.toml");
    std::fs::write(
        &config_path,
        bench::gateway_of(&data, &pki, port, 32, drivers).render(),
    )?;
    let status_file = data.join("status.json");
    let mut ferrule = bench::start_ferrule(dir.path(), &config_path, "ferrule.log")?;
    let mut starts = 1;

    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut seqs = SeqLog::default();
    let mut last_cpu: Option<(f64, Instant, u32)> = None;
    let (mut restarts, mut kills) = (0u32, 0u32);
    let mut next_broker = plan.broker_every;
    let mut next_kill = plan.kill_every;
    let mut depth = 0;
    while started.elapsed() < total {
        tokio::time::sleep(plan.sample).await;
        seqs.drain(&mut sub)?;
        let mut event = "";
        let now = started.elapsed();
        if now >= next_broker && now + plan.broker_down < total {
            next_broker += plan.broker_every;
            broker.process.terminate(Duration::from_secs(10))?;
            tokio::time::sleep(plan.broker_down).await;
            broker = Mosquitto::start(dir.path(), &pki, port, &extra)?;
            restarts += 1;
            event = "broker restart";
        } else if now >= next_kill && now < plan.kills_until {
            next_kill += plan.kill_every;
            ferrule.kill9();
            tokio::time::sleep(Duration::from_secs(1)).await;
            starts += 1;
            ferrule =
                bench::start_ferrule(dir.path(), &config_path, &format!("ferrule-{starts}.log"))?;
            kills += 1;
            last_cpu = None;
            event = "kill -9";
        }
        let pid = ferrule.child.id();
        let Ok(s) = bench::sample(pid) else {
            continue;
        };
        let cpu_percent = match last_cpu {
            Some((cpu, at, p)) if p == pid => {
                100.0 * (s.cpu_s - cpu) / at.elapsed().as_secs_f64().max(1e-3)
            }
            _ => 0.0,
        };
        last_cpu = Some((s.cpu_s, Instant::now(), pid));
        if let Ok(status) = ferrule::telemetry::status::read(&status_file) {
            depth = status.snapshot.queue.depth;
        }
        rows.push(Row {
            t_s: started.elapsed().as_secs_f64(),
            rss_mib: s.rss_kib as f64 / 1024.0,
            cpu_percent,
            queue_depth: depth,
            delivered: seqs.unique().len() as u64,
            event,
        });
    }

    // A clean stop (once the gateway last started is up: a SIGTERM while
    // it opens its queue is a kill, repaired at the next open), then
    // every sequence the queue ever assigned must arrive (the persistent
    // session keeps what the broker took).
    let up = Instant::now();
    while ferrule::telemetry::status::read(&status_file)
        .map_or(true, |s| s.pid != ferrule.child.id() || s.stopped)
    {
        anyhow::ensure!(
            up.elapsed() < Duration::from_secs(120),
            "the gateway wrote no live status within 120 s of its start:\n{}",
            ferrule.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stopped = ferrule.terminate(Duration::from_secs(30))?;
    let stats = ferrule_tests::queue_stats(dir.path(), &config_path).with_context(|| {
        format!(
            "after a stop ({stopped}); the gateway's log:\n{}",
            ferrule.log_text()
        )
    })?;
    let last = stats["next_seq"]
        .as_u64()
        .context("queue stats: next_seq")?
        - 1;
    ferrule = bench::start_ferrule(dir.path(), &config_path, "ferrule-drain.log")?;
    let drained = seqs
        .wait_for_all(&mut sub, 1, last, Duration::from_secs(120))
        .await;
    ferrule.terminate(Duration::from_secs(30))?;
    let missing = seqs.missing(1, last).len();
    drop(broker);

    write_csv(&out_dir.join("soak.csv"), &rows)?;
    plot(&out_dir.join("soak.png"), &rows, total)?;

    // The last process's life, from `warmup` after its start (the run's
    // start when nothing was killed): its growth is the leak figure.
    let last_start = rows
        .iter()
        .rev()
        .find(|r| r.event == "kill -9")
        .map_or(0.0, |r| r.t_s);
    let mut settled: Vec<&Row> = rows
        .iter()
        .filter(|r| r.t_s >= last_start + plan.warmup.as_secs_f64())
        .collect();
    if settled.is_empty() {
        settled = rows.iter().filter(|r| r.t_s >= last_start).collect();
    }
    let window = (settled.len() / 5).clamp(1, 12);
    let median_rss = |rows: &[&Row]| bench::median(rows.iter().map(|r| r.rss_mib).collect());
    let rss_after_warmup = median_rss(&settled[..window.min(settled.len())]);
    let rss_end = median_rss(&settled[settled.len().saturating_sub(window)..]);
    let rss_max = rows.iter().map(|r| r.rss_mib).fold(0.0, f64::max);
    let cpu: Vec<f64> = rows
        .iter()
        .filter(|r| r.event.is_empty() && r.cpu_percent > 0.0)
        .map(|r| r.cpu_percent)
        .collect();
    let cpu_mean = cpu.iter().sum::<f64>() / cpu.len().max(1) as f64;
    let hours = match (settled.first(), settled.last()) {
        (Some(a), Some(b)) => (b.t_s - a.t_s).max(1.0) / 3600.0,
        _ => 1.0,
    };
    report.figure("duration", started.elapsed().as_secs_f64() / 60.0, "min");
    report.figure("last process's life after warm-up", hours * 60.0, "min");
    report.figure(
        "RSS after warm-up, last process (median of its first samples)",
        rss_after_warmup,
        "MiB",
    );
    report.figure(
        "RSS at the end, last process (median of its last samples)",
        rss_end,
        "MiB",
    );
    report.figure(
        "RSS growth after warm-up",
        rss_end - rss_after_warmup,
        "MiB",
    );
    report.figure(
        "RSS growth per hour after warm-up",
        (rss_end - rss_after_warmup) / hours,
        "MiB",
    );
    report.figure("highest RSS", rss_max, "MiB");
    report.figure("CPU, mean between faults", cpu_mean, "% of one core");
    report.figure("broker restarts", f64::from(restarts), "faults");
    report.figure("kill -9", f64::from(kills), "faults");
    report.figure("messages delivered (unique)", last as f64, "messages");
    report.figure(
        "duplicates (QoS 1 redelivery)",
        seqs.duplicates() as f64,
        "messages",
    );
    report
        .figure("queue sequences missing", missing as f64, "messages")
        .at_most(0.0);
    report.note(
        "![soak: RSS, CPU, queue depth and delivered messages over time](benchmarks/soak/soak.png)",
    );
    report.note("Samples: benchmarks/soak/soak.csv (t_s, rss_mib, cpu_percent, queue_depth, delivered, event). A kill -9 starts a fresh process (its plugins from the compile cache, so below the first process, which compiled them); memory growth is read over the last process's life.");
    report.finish()?;
    drained.with_context(|| format!("{missing} queue sequences of 1..={last} never arrived"))?;
    Ok(())
}

fn write_csv(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let mut text = String::from("t_s,rss_mib,cpu_percent,queue_depth,delivered,event\n");
    for r in rows {
        text.push_str(&format!(
            "{:.1},{:.2},{:.2},{},{},{}\n",
            r.t_s, r.rss_mib, r.cpu_percent, r.queue_depth, r.delivered, r.event
        ));
    }
    std::fs::write(path, text)?;
    Ok(())
}

/// The font the plot's text is drawn in (Debian's fonts-dejavu-core,
/// which `cargo xtask soak` installs when missing).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// A panel of the plot: its name, unit, and the figure of a sample.
type Series = (&'static str, &'static str, fn(&Row) -> f64);

fn plot(path: &Path, rows: &[Row], total: Duration) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let font: &'static [u8] = Box::leak(
        std::fs::read(FONT)
            .with_context(|| format!("{FONT} (apt-get install fonts-dejavu-core)"))?
            .into_boxed_slice(),
    );
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a font plotters can read"))?;
    let root = BitMapBackend::new(path, (1200, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((4, 1));
    let minutes = total.as_secs_f64() / 60.0;
    let series: [Series; 4] = [
        ("RSS", "MiB", |r| r.rss_mib),
        ("CPU", "% of one core", |r| r.cpu_percent),
        ("queue depth", "entries", |r| r.queue_depth as f64),
        ("delivered", "messages", |r| r.delivered as f64),
    ];
    for (panel, (name, unit, value)) in panels.iter().zip(series.iter()) {
        let top = rows.iter().map(value).fold(0.0, f64::max).max(1.0) * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{name} ({unit})"), ("sans-serif", 18))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..minutes, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .label_style(("sans-serif", 12))
            .draw()?;
        for r in rows.iter().filter(|r| !r.event.is_empty()) {
            let colour = if r.event == "kill -9" { RED } else { BLUE };
            let x = r.t_s / 60.0;
            chart.draw_series(LineSeries::new([(x, 0.0), (x, top)], colour.mix(0.4)))?;
        }
        chart.draw_series(LineSeries::new(
            rows.iter().map(|r| (r.t_s / 60.0, value(r))),
            BLACK.stroke_width(2),
        ))?;
    }
    root.present()?;
    Ok(())
}
