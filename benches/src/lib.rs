//! What the benchmarks share: a report of figures (printed as a table and
//! written as JSON for `cargo xtask bench` to collect), CPU and memory of a
//! process (read with sysinfo), pinning processes to cores, and the short
//! "smoke" mode the tests use to keep every benchmark working.
//!
//! Benchmarks print figures; they never assert timings.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use ferrule::dev::config::{self, GatewayToml, PluginToml};
use serde::{Deserialize, Serialize};

/// Set by the smoke test: every benchmark runs for about a second.
pub const SMOKE_ENV: &str = "FERRULE_BENCH_SMOKE";
/// Directory where each part writes `{part}.json` (set by `cargo xtask bench`).
pub const OUT_ENV: &str = "FERRULE_BENCH_OUT";

/// True when running as the smoke test's one-second version.
pub fn smoke() -> bool {
    std::env::var_os(SMOKE_ENV).is_some_and(|v| v != "0")
}

/// `full` normally, about a second in smoke mode.
pub fn run_for(full: Duration) -> Duration {
    if smoke() {
        full.min(Duration::from_secs(1))
    } else {
        full
    }
}

/// How long a part lets the system settle, then measures; about a second
/// each in smoke mode.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    /// Settling time before measuring.
    pub warmup: Duration,
    /// The measuring window.
    pub window: Duration,
}

impl Span {
    /// `warmup` then `window` seconds (see [`run_for`]).
    pub fn secs(warmup: u64, window: u64) -> Span {
        Span {
            warmup: run_for(Duration::from_secs(warmup)),
            window: run_for(Duration::from_secs(window)),
        }
    }

    /// Warm-up and window together.
    pub fn total(&self) -> Duration {
        self.warmup + self.window
    }
}

/// For method lines: "10 s after 3 s".
impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (window, warmup) = (self.window.as_secs_f64(), self.warmup.as_secs_f64());
        write!(f, "{window:.0} s after {warmup:.0} s")
    }
}

/// `full` normally, `small` in smoke mode (counts: backlog sizes, calls).
pub fn scaled<T>(full: T, small: T) -> T {
    if smoke() { small } else { full }
}

/// A bound a figure (or its ratio to the baseline) should meet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// `"ratio"` or `"value"`: what the bound applies to.
    pub on: String,
    /// `"<="` or `">="`.
    pub op: String,
    pub limit: f64,
}

impl Target {
    fn holds(&self, figure: &Figure) -> Option<bool> {
        let x = if self.on == "ratio" {
            figure.ratio?
        } else {
            figure.value
        };
        Some(if self.op == "<=" {
            x <= self.limit
        } else {
            x >= self.limit
        })
    }

    /// As written in the table: "ratio ≥ 0.8", "≤ 40 MiB".
    pub fn text(&self, unit: &str) -> String {
        let op = if self.op == "<=" { "≤" } else { "≥" };
        if self.on == "ratio" {
            format!("ratio {op} {}", number(self.limit))
        } else {
            format!("{op} {} {unit}", number(self.limit))
        }
    }
}

/// One measured figure, with the baseline measured in the same run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    /// `value / baseline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

impl Figure {
    /// The ratio to the baseline must be at least `limit`.
    pub fn ratio_at_least(&mut self, limit: f64) -> &mut Self {
        self.set_target("ratio", ">=", limit)
    }

    /// The ratio to the baseline must be at most `limit`.
    pub fn ratio_at_most(&mut self, limit: f64) -> &mut Self {
        self.set_target("ratio", "<=", limit)
    }

    /// The value itself must be at most `limit` (in its unit).
    pub fn at_most(&mut self, limit: f64) -> &mut Self {
        self.set_target("value", "<=", limit)
    }

    /// The value itself must be at least `limit` (in its unit).
    pub fn at_least(&mut self, limit: f64) -> &mut Self {
        self.set_target("value", ">=", limit)
    }

    fn set_target(&mut self, on: &str, op: &str, limit: f64) -> &mut Self {
        let target = Target {
            on: on.into(),
            op: op.into(),
            limit,
        };
        self.met = target.holds(self);
        self.target = Some(target);
        self
    }
}

/// One benchmark part's results, as written to `{part}.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartResult {
    pub part: String,
    pub title: String,
    /// How it was measured, one line each (shown under the table).
    pub method: Vec<String>,
    pub figures: Vec<Figure>,
    /// Observations made while measuring (shown after the table).
    #[serde(default)]
    pub notes: Vec<String>,
    pub seconds: f64,
    pub smoke: bool,
}

/// Collects figures; [`Report::finish`] prints them and writes the JSON.
pub struct Report {
    result: PartResult,
    started: std::time::Instant,
}

impl Report {
    pub fn new(part: &str, title: &str) -> Report {
        println!(
            "== {part}: {title}{}",
            if smoke() { " (smoke)" } else { "" }
        );
        Report {
            result: PartResult {
                part: part.into(),
                title: title.into(),
                method: Vec::new(),
                figures: Vec::new(),
                notes: Vec::new(),
                seconds: 0.0,
                smoke: smoke(),
            },
            started: std::time::Instant::now(),
        }
    }

    /// [`Report::new`], with the measuring process pinned ([`pin_self`]).
    pub fn pinned(part: &str, title: &str) -> anyhow::Result<Report> {
        let mut report = Report::new(part, title);
        pin_self(&mut report)?;
        Ok(report)
    }

    /// A line on how the part measures (setup, durations, pinning).
    pub fn method(&mut self, line: impl Into<String>) {
        self.result.method.push(line.into());
    }

    /// Something seen while measuring; printed at once and kept.
    pub fn note(&mut self, line: impl Into<String>) {
        let line = line.into();
        println!("   note: {line}");
        self.result.notes.push(line);
    }

    /// A figure without a baseline.
    pub fn figure(&mut self, name: &str, value: f64, unit: &str) -> &mut Figure {
        self.push(Figure {
            name: name.into(),
            value,
            unit: unit.into(),
            baseline_name: None,
            baseline: None,
            ratio: None,
            target: None,
            met: None,
        })
    }

    /// A figure and the baseline it is compared with; the ratio is
    /// `value / baseline`.
    pub fn compare(
        &mut self,
        name: &str,
        value: f64,
        unit: &str,
        baseline_name: &str,
        baseline: f64,
    ) -> &mut Figure {
        let ratio = (baseline != 0.0).then(|| value / baseline);
        self.push(Figure {
            name: name.into(),
            value,
            unit: unit.into(),
            baseline_name: Some(baseline_name.into()),
            baseline: Some(baseline),
            ratio,
            target: None,
            met: None,
        })
    }

    fn push(&mut self, figure: Figure) -> &mut Figure {
        let at = self.result.figures.len();
        self.result.figures.push(figure);
        &mut self.result.figures[at]
    }

    /// The figures so far (smoke tests check them).
    pub fn figures(&self) -> &[Figure] {
        &self.result.figures
    }

    /// Prints the table and writes `{part}.json` where `cargo xtask bench`
    /// asked for it.
    pub fn finish(mut self) -> anyhow::Result<PartResult> {
        self.result.seconds = self.started.elapsed().as_secs_f64();
        println!("{}", table(&self.result.figures));
        if let Some(dir) = std::env::var_os(OUT_ENV) {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(format!("{}.json", self.result.part));
            std::fs::write(&path, serde_json::to_vec_pretty(&self.result)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(self.result)
    }
}

pub use ferrule_figures::number;

/// The figures as a Markdown table (also how BENCHMARKS.md shows them).
pub fn table(figures: &[Figure]) -> String {
    let mut out = String::from(
        "| figure | value | unit | baseline | ratio | target | met |\n| --- | ---: | --- | --- | ---: | --- | --- |\n",
    );
    for f in figures {
        let baseline = match (&f.baseline_name, f.baseline) {
            (Some(name), Some(v)) => format!("{name}: {}", number(v)),
            _ => String::new(),
        };
        let ratio = f.ratio.map(|r| format!("{r:.2}")).unwrap_or_default();
        let target = f
            .target
            .as_ref()
            .map(|t| t.text(&f.unit))
            .unwrap_or_default();
        let met = match f.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {baseline} | {ratio} | {target} | {met} |\n",
            f.name,
            number(f.value),
            f.unit
        ));
    }
    out
}

/// CPU time (user + system) and resident
/// memory of a running process.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub cpu_s: f64,
    pub rss_kib: u64,
}

/// CPU time and resident memory of a running process.
pub fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let (rss_kib, cpu_s) = ferrule_tests::process_usage(pid)?;
    Ok(ProcSample { cpu_s, rss_kib })
}

/// CPU and memory of a process over a window: sampled once a second.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// CPU seconds used during the window.
    pub cpu_s: f64,
    /// Length of the window, seconds.
    pub wall_s: f64,
    /// Mean of the RSS samples, KiB.
    pub rss_mean_kib: f64,
    /// Highest RSS sample, KiB.
    pub rss_max_kib: u64,
}

impl Usage {
    /// CPU use as a share of one core, percent.
    pub fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu_s / self.wall_s
    }
}

/// Samples `pids` (summed: a gateway may be several processes) once a
/// second for `window`.
pub async fn measure(pids: &[u32], window: Duration) -> anyhow::Result<Usage> {
    let read = |pids: &[u32]| -> anyhow::Result<ProcSample> {
        let mut total = ProcSample {
            cpu_s: 0.0,
            rss_kib: 0,
        };
        for &pid in pids {
            let s = sample(pid)?;
            total.cpu_s += s.cpu_s;
            total.rss_kib += s.rss_kib;
        }
        Ok(total)
    };
    let started = std::time::Instant::now();
    let first = read(pids)?;
    let mut rss = vec![first.rss_kib];
    let step = Duration::from_millis(if smoke() { 250 } else { 1000 });
    while started.elapsed() + step <= window {
        tokio::time::sleep(step).await;
        rss.push(read(pids)?.rss_kib);
    }
    let remaining = window.saturating_sub(started.elapsed());
    tokio::time::sleep(remaining).await;
    let last = read(pids)?;
    rss.push(last.rss_kib);
    Ok(Usage {
        cpu_s: last.cpu_s - first.cpu_s,
        wall_s: started.elapsed().as_secs_f64(),
        rss_mean_kib: rss.iter().sum::<u64>() as f64 / rss.len() as f64,
        rss_max_kib: rss.iter().copied().max().unwrap_or(0),
    })
}

/// The cores the benchmarks pin to: the gateway under test on the first,
/// the broker, simulators and the measuring process on the second. `None`
/// on a machine with one core or without `taskset`.
pub fn cores() -> Option<(usize, usize)> {
    // Decided once, before anything is pinned: once the measuring process
    // is pinned to one core, it would see only that one.
    static CORES: std::sync::OnceLock<Option<(usize, usize)>> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let taskset =
            Path::new("/usr/bin/taskset").is_file() || Path::new("/bin/taskset").is_file();
        (n >= 2 && taskset).then_some((0, 1))
    })
}

/// Pins every thread of `pid` to `core` (threads it starts later inherit
/// it). Does nothing when [`cores`] is `None`.
pub fn pin(pid: u32, core: usize) -> anyhow::Result<()> {
    if cores().is_none() {
        return Ok(());
    }
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run taskset")?;
    anyhow::ensure!(status.success(), "taskset could not pin process {pid}");
    Ok(())
}

/// Pins the measuring process itself to the second core (with the broker),
/// and says how cores are used, for the report.
fn pin_self(report: &mut Report) -> anyhow::Result<()> {
    match cores() {
        Some((gateway, rest)) => {
            pin(std::process::id(), rest)?;
            report.method(format!(
                "cores: gateway under test pinned to core {gateway}; broker, simulators and the measuring process to core {rest} (taskset -a -p -c)"
            ));
        }
        None => report.method("cores: not pinned (one core, or no taskset)"),
    }
    Ok(())
}

/// Pins a process under test to the first core.
pub fn pin_gateway(pid: u32) -> anyhow::Result<()> {
    match cores() {
        Some((gateway, _)) => pin(pid, gateway),
        None => Ok(()),
    }
}

/// Pins a peer (broker, simulator) to the second core.
pub fn pin_peer(pid: u32) -> anyhow::Result<()> {
    match cores() {
        Some((_, rest)) => pin(pid, rest),
        None => Ok(()),
    }
}

/// Mosquitto options for benchmarks: no per-client queue limit (a subscriber
/// that falls behind for a moment must not lose counted messages), a wide
/// in-flight window, and TCP_NODELAY on the broker's side.
pub const BENCH_BROKER: &str =
    "max_queued_messages 0\nmax_inflight_messages 1000\nset_tcp_nodelay true\n";

/// Percentile `p` (0..=100) of sorted values.
/// The median of `values`.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 50.0)
}

/// The largest gap between consecutive capture times (ns), in ms.
pub fn largest_gap_ms(captured_ns: impl IntoIterator<Item = u64>) -> f64 {
    let mut at: Vec<u64> = captured_ns.into_iter().collect();
    at.sort_unstable();
    at.windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e6)
        .fold(0.0, f64::max)
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Counts ferrule data messages and their readings in a payload without a
/// full parse (the measuring process shares a core with the broker).
pub fn readings_in(payload: &[u8]) -> usize {
    count(payload, b"\"channel\":")
}

/// Occurrences of `needle` in `haystack`.
pub fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// The `sim` driver's config (JSON, as `init` receives it) with `channels`
/// sine channels in degC, for in-process benchmarks.
pub fn sim_config_json(channels: usize) -> String {
    let list: Vec<String> = (0..channels)
        .map(|i| {
            format!(
                r#"{{"name":"c{i}","signal":"sine","amplitude":5.0,"offset":20.0,"unit":"degC"}}"#
            )
        })
        .collect();
    format!(r#"{{"channels":[{}]}}"#, list.join(","))
}

/// A `[[driver]]` of the `sim` plugin with `channels` sine channels polled
/// every `interval_ms`, followed by `stages` `scale` processors that each
/// rescale every channel.
pub fn sim_driver(
    name: &str,
    channels: usize,
    interval_ms: u64,
    stages: usize,
) -> anyhow::Result<PluginToml> {
    let list = (0..channels)
        .map(|i| {
            config::table([
                ("name", toml::Value::from(format!("c{i}"))),
                ("signal", "sine".into()),
                ("amplitude", 5.0.into()),
                ("offset", 20.0.into()),
                ("period_s", 10.0.into()),
                ("unit", "degC".into()),
            ])
        })
        .collect();
    let mut driver = PluginToml::new(name, &ferrule_tests::plugin("sim")?)
        .set("interval_ms", i64::try_from(interval_ms)?)
        .config("channels", toml::Value::Array(list));
    let scale = ferrule_tests::plugin("scale")?;
    let rescale = config::table((0..channels).map(|i| {
        (
            format!("c{i}"),
            config::table([("gain", 1.8), ("offset", 32.0)]),
        )
    }));
    for stage in 0..stages {
        driver = driver.processor(
            PluginToml::new(&format!("scale-{stage}"), &scale).config("channels", rescale.clone()),
        );
    }
    Ok(driver)
}

/// Overrides `[queue] commit_linger_ms` in every benchmark gateway, for
/// measuring what the linger costs and gains (the default is what ships).
pub const LINGER_ENV: &str = "FERRULE_BENCH_COMMIT_LINGER_MS";

/// A gateway running `drivers`, connected like every test gateway, with
/// `max_inflight` messages in flight at most.
pub fn gateway_of(
    data_dir: &Path,
    pki: &ferrule_tests::Pki,
    port: u16,
    max_inflight: u16,
    drivers: impl IntoIterator<Item = PluginToml>,
) -> GatewayToml {
    let mut gateway = ferrule_tests::gateway_toml(data_dir, pki, port).set(
        "mqtt",
        "max_inflight",
        i64::from(max_inflight),
    );
    if let Some(ms) = std::env::var(LINGER_ENV)
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
    {
        gateway = gateway.set("queue", "commit_linger_ms", ms);
    }
    drivers.into_iter().fold(gateway, GatewayToml::driver)
}

/// Starts the release (or test-profile) `ferrule` binary on `config`,
/// logging at `info` (benchmarks must not pay for debug logging).
pub fn start_ferrule(
    dir: &Path,
    config: &Path,
    log_name: &str,
) -> anyhow::Result<ferrule_tests::Process> {
    let mut command = Command::new(ferrule_tests::ferrule_bin()?);
    command
        .arg("run")
        .arg(config)
        .current_dir(dir)
        .env("FERRULE_LOG", "info");
    ferrule_tests::spawn_logged("ferrule", command, dir.join(log_name))
}

/// Messages and readings a subscriber has received so far, counted by a
/// task of its own.
#[derive(Default)]
pub struct Tally {
    pub messages: std::sync::atomic::AtomicU64,
    pub readings: std::sync::atomic::AtomicU64,
    /// Payload bytes of the messages counted.
    pub bytes: std::sync::atomic::AtomicU64,
    /// The first payloads seen (for replay by the baseline client).
    kept: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl Tally {
    /// Counts what `subscriber` receives on topics for which `wanted` holds,
    /// with `readings` telling how many readings a payload carries; keeps
    /// the first `keep` payloads.
    pub fn start(
        subscriber: &mut ferrule_tests::Subscriber,
        wanted: impl Fn(&str) -> bool + Send + 'static,
        readings: impl Fn(&[u8]) -> usize + Send + 'static,
        keep: usize,
    ) -> std::sync::Arc<Tally> {
        use std::sync::atomic::Ordering::Relaxed;
        let (_, empty) = tokio::sync::mpsc::unbounded_channel();
        let mut messages = std::mem::replace(&mut subscriber.messages, empty);
        let tally = std::sync::Arc::new(Tally::default());
        let counts = tally.clone();
        tokio::spawn(async move {
            while let Some(m) = messages.recv().await {
                if !wanted(&m.topic) {
                    continue;
                }
                counts.messages.fetch_add(1, Relaxed);
                counts.bytes.fetch_add(m.payload.len() as u64, Relaxed);
                counts
                    .readings
                    .fetch_add(readings(&m.payload) as u64, Relaxed);
                let mut kept = counts.kept.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() < keep {
                    kept.push(m.payload);
                }
            }
        });
        tally
    }

    /// The payloads kept so far.
    pub fn kept(&self) -> Vec<Vec<u8>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Payload bytes so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// (messages, readings) so far.
    pub fn now(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.messages.load(Relaxed), self.readings.load(Relaxed))
    }
}

/// The `bare-publisher` baseline client (built beside the benchmarks),
/// connecting like the gateway does, publishing on `topic` for `run`; add
/// `--payloads FILE` or `--rate N --readings K`.
pub fn bare_publisher(
    pki: &ferrule_tests::Pki,
    port: u16,
    topic: &str,
    inflight: u16,
    run: Duration,
) -> anyhow::Result<Command> {
    let mut command = Command::new(ferrule_tests::profile_bin("bare-publisher")?);
    command
        .args(["--port", &port.to_string()])
        .arg("--ca")
        .arg(&pki.ca.cert)
        .arg("--cert")
        .arg(&pki.gateway.cert)
        .arg("--key")
        .arg(&pki.gateway.key)
        .args(["--topic", topic, "--inflight", &inflight.to_string()])
        .args(["--seconds", &format!("{:.3}", run.as_secs_f64())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    Ok(command)
}

/// A fresh directory for one benchmark's files on the project's disk
/// (`target/bench-tmp`), not the system temp directory, which may be a
/// tmpfs where fsync costs nothing; `FERRULE_BENCH_TMP` picks another place
/// (the disk a gateway would use, or a tmpfs to see what fsync costs).
/// Readable by a broker that drops privileges.
pub fn workdir(part: &str) -> anyhow::Result<tempfile::TempDir> {
    let base = std::env::var_os("FERRULE_BENCH_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(|| ferrule_tests::target_dir().join("bench-tmp"));
    std::fs::create_dir_all(&base)?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("{part}-"))
        .tempdir_in(&base)?;
    ferrule_tests::broker_writable_dir(dir.path(), ".")?;
    Ok(dir)
}

/// Waits (up to 90 s) until `arrived` holds: the first message of a gateway
/// that is still starting. Fails naming it, with the end of its log.
pub async fn first_arrival(
    name: &str,
    arrived: impl Fn() -> bool,
    gateway: &ferrule_tests::Process,
) -> anyhow::Result<()> {
    let limit = std::time::Instant::now() + Duration::from_secs(90);
    while !arrived() {
        if std::time::Instant::now() > limit {
            anyhow::bail!(
                "{name} published nothing within 90 s; the end of its log:\n{}",
                ferrule_tests::log_tail(&gateway.log_text(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A benchmark's working directory, test PKI and mosquitto on a loopback
/// port (mutual TLS, [`BENCH_BROKER`] options), pinned to the peers' core.
pub fn broker(
    part: &str,
) -> anyhow::Result<(
    tempfile::TempDir,
    ferrule_tests::Pki,
    u16,
    ferrule_tests::Mosquitto,
)> {
    let dir = workdir(part)?;
    let pki = ferrule_tests::Pki::new(dir.path())?;
    let port = ferrule_tests::free_port()?;
    let broker = ferrule_tests::Mosquitto::start(dir.path(), &pki, port, BENCH_BROKER)?;
    pin_peer(broker.process.child.id())?;
    Ok((dir, pki, port, broker))
}
