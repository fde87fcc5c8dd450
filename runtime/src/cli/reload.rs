//! `ferrule reload` and the running gateway's side of it: SIGHUP, and the
//! pid file that says which process runs which config.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferrule::config::Config;
use ferrule::gateway::reload::{outcome_path, read_outcome};
use ferrule::telemetry::ReloadFigures;
use tokio::sync::mpsc;

/// `{data_dir}/ferrule.pid`: `{"pid": …, "config": "/abs/path.toml"}`.
fn pid_path(config: &Config) -> PathBuf {
    config.resolve(&config.gateway.data_dir).join("ferrule.pid")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PidRecord {
    pid: u32,
    config: PathBuf,
}

/// The pid file of this process; removed when dropped (a pid file left by
/// a killed gateway names a process that is gone, which `ask` checks).
pub struct PidFile(PathBuf);

impl PidFile {
    /// Records this process as the gateway running `config`.
    pub fn write(config: &Config) -> anyhow::Result<PidFile> {
        let path = pid_path(config);
        if let Some(other) =
            read_record(&path).filter(|r| r.pid != std::process::id() && is_running_gateway(r.pid))
        {
            bail!(
                "another gateway (pid {}, {}) runs with data_dir {}; each gateway needs its own",
                other.pid,
                other.config.display(),
                config.resolve(&config.gateway.data_dir).display()
            );
        }
        let record = PidRecord {
            pid: std::process::id(),
            config: std::fs::canonicalize(&config.source).unwrap_or_else(|_| config.source.clone()),
        };
        ferrule::plugin::trust::write_atomically(&path, &serde_json::to_vec(&record)?, None)
            .with_context(|| format!("{}: cannot write the pid file", path.display()))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = read_record(&self.0).is_some_and(|r| r.pid == std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A message each time the process gets SIGHUP; several while one reload
/// runs make one more.
pub fn on_sighup() -> Option<mpsc::Receiver<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP not handled: reload by signal unavailable");
                return None;
            }
        };
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reload asked for");
                let _ = tx.try_send(());
            }
        });
        Some(rx)
    }
    #[cfg(not(unix))]
    None
}

fn read_record(path: &Path) -> Option<PidRecord> {
    // Ours, but bounded like any file read back.
    let bytes = ferrule::plugin::trust::read_bounded(path, 64 << 10).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether process `pid` is a `ferrule run` (and not a process that got
/// the pid of a gateway killed since).
fn is_running_gateway(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0);
    let program = args.next().map(String::from_utf8_lossy).unwrap_or_default();
    let ferrule = Path::new(program.as_ref())
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("ferrule"));
    ferrule && args.any(|a| a == b"run")
}

/// The pid of the gateway running with `config`'s data dir, if one runs.
pub fn running_gateway(config: &Config) -> Option<u32> {
    read_record(&pid_path(config))
        .map(|r| r.pid)
        .filter(|pid| is_running_gateway(*pid))
}

/// Sends SIGUSR1 to `pid` (a running gateway: "an erasure request waits").
pub fn signal_erase(pid: u32) -> anyhow::Result<()> {
    send(pid, libc::SIGUSR1)
}

/// `ferrule reload CONFIG`: checks CONFIG parses, finds the gateway running
/// it, sends it SIGHUP and prints what it did.
pub async fn ask(path: &Path, wait: Duration) -> anyhow::Result<()> {
    // A config that does not even parse is refused here, before the
    // gateway is asked (it would refuse it too).
    let config = Config::load(path)?;
    let pid_file = pid_path(&config);
    let record = read_record(&pid_file).with_context(|| {
        format!(
            "no gateway runs with data_dir {}: {} is missing (is `ferrule run` running?)",
            config.resolve(&config.gateway.data_dir).display(),
            pid_file.display()
        )
    })?;
    let ours = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if record.config != ours {
        bail!(
            "the gateway with this data_dir (pid {}) runs {}, not {}",
            record.pid,
            record.config.display(),
            ours.display()
        );
    }
    if !is_running_gateway(record.pid) {
        bail!(
            "pid {} in {} is not a running ferrule (left by a gateway that was killed?)",
            record.pid,
            pid_file.display()
        );
    }
    let asked = ferrule::reading::now_ms();
    signal_hangup(record.pid)?;
    let deadline = Instant::now() + wait;
    loop {
        if let Some(outcome) = read_outcome(&config).filter(|o| o.at_ms >= asked) {
            print_outcome(&outcome);
            if outcome.ok {
                return Ok(());
            }
            bail!(
                "reload refused, nothing changed: {}",
                outcome.error.unwrap_or_default()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the gateway (pid {}) got SIGHUP but wrote no outcome to {} within {}",
                record.pid,
                outcome_path(&config).display(),
                humantime::format_duration(wait)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn signal_hangup(pid: u32) -> anyhow::Result<()> {
    send(pid, libc::SIGHUP)
}

fn send(pid: u32, signal: libc::c_int) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
        // SAFETY: kill(2) only sends a signal; the pid was read from the
        // gateway's pid file and checked to be a ferrule process.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!(
                "cannot signal pid {pid}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }
    #[cfg(not(unix))]
    bail!("signalling the gateway needs a Unix system (pid {pid}, signal {signal})")
}

/// One line per kind of change.
pub fn outcome_lines(o: &ReloadFigures) -> Vec<String> {
    if !o.ok {
        return vec![format!(
            "REFUSED, nothing changed: {}",
            o.error.as_deref().unwrap_or("")
        )];
    }
    let mut lines = vec![format!(
        "applied in {} ms (config sha256 {})",
        o.took_ms, o.sha256
    )];
    for (what, names) in [
        ("started", &o.started),
        ("replaced", &o.replaced),
        ("stopped", &o.stopped),
        ("unchanged", &o.unchanged),
    ] {
        if !names.is_empty() {
            lines.push(format!("{what:<10} {}", names.join(", ")));
        }
    }
    if !o.pending_restart.is_empty() {
        lines.push(format!(
            "changed but applied only at the next start: [{}]",
            o.pending_restart.join("], [")
        ));
    }
    lines
}

fn print_outcome(o: &ReloadFigures) {
    for line in outcome_lines(o) {
        println!("{line}");
    }
}
