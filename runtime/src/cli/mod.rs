//! The `ferrule` command line.

#[cfg(feature = "demo")]
pub mod demo;
mod fleet;
mod inspect;
mod new;
mod plugin;
mod progress;
mod reload;
mod top;

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::io::Write as _;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferrule::config::Config;
use ferrule::gateway;
use tokio_util::sync::CancellationToken;

/// ferrule: a WebAssembly plugin runtime for industrial gateways.
#[derive(Debug, Parser)]
#[command(name = "ferrule", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a gateway: poll its drivers, queue every reading, publish over MQTT/TLS.
    Run {
        /// The gateway's TOML config file.
        config: PathBuf,
    },
    /// Check a config and every plugin it names, without connecting anywhere.
    Check { config: PathBuf },
    /// Ask the gateway running CONFIG to re-read it and apply the difference
    /// (as SIGHUP does); waits for the outcome and prints it.
    Reload {
        config: PathBuf,
        /// How long to wait for the gateway's answer.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// A live terminal view of the gateway running CONFIG (drivers, last
    /// values, broker link, queue, system), from the status file it
    /// rewrites every second; works over SSH at 80×24. Keys: 1-4/Tab
    /// views, arrows scroll, q quits.
    Top { config: PathBuf },
    /// What an operator on site needs: broker connection, queue, each
    /// driver's health (from the queue and the telemetry history; works while
    /// ferrule runs).
    Status {
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The gateway's own figures: the latest telemetry sample and the hourly trend.
    Telemetry {
        #[command(subcommand)]
        command: TelemetryCommand,
    },
    /// Inspect or export the store-and-forward queue (works while ferrule runs).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Sign, verify and inspect plugin files; make publisher keys.
    Plugin {
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
    /// Everything the gateway holds about its customer: export it.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// The gateway's tamper-evident audit log ({data_dir}/audit.log).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The storage key that encrypts queued data at rest ([storage]).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// The operator's side of deployments to gateways (docs/fleet.md).
    Fleet {
        #[command(subcommand)]
        command: fleet::FleetCommand,
    },
    /// Run a self-contained demo: embedded TLS broker, sim driver, scale processor.
    #[cfg(feature = "demo")]
    Demo {
        /// Directory with sim.wasm and scale.wasm.
        #[arg(
            long,
            env = "FERRULE_PLUGIN_DIR",
            default_value = "target/wasm32-wasip2/release"
        )]
        plugin_dir: PathBuf,
        /// Stop after this long (e.g. 20s, 5m); runs until Ctrl-C when absent.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Poll interval of the simulated device, in milliseconds.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
        interval_ms: u64,
        /// A TOML file of `[[driver]]` tables to run instead of the simulated
        /// device (plugin paths relative to the file), e.g.
        /// examples/modbus/drivers.toml.
        #[arg(long)]
        drivers: Option<PathBuf>,
    },
    /// Create a plugin project that builds as it is (with a README and a
    /// test): `ferrule new driver --lang python my-meter`.
    New {
        #[arg(value_enum)]
        kind: new::Kind,
        /// A lowercase name with '-' (the project's folder and package).
        name: String,
        #[arg(long, value_enum, default_value = "rust")]
        lang: new::Lang,
        /// Where to create the project's folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Depend on the SDK in this folder (a ferrule checkout's `sdk/`)
        /// instead of its released version.
        #[arg(long)]
        sdk_path: Option<PathBuf>,
    },
}

impl Command {
    /// `run` and `demo` run a gateway; every other command reports and ends.
    pub fn is_long_running(&self) -> bool {
        match self {
            Command::Run { .. } => true,
            #[cfg(feature = "demo")]
            Command::Demo { .. } => true,
            _ => false,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Write the queued data, telemetry (queued and history) and audit log
    /// as JSON Lines, with a manifest (counts, SHA-256, time ranges), into
    /// a new directory; works while ferrule runs; audited.
    Export {
        config: PathBuf,
        /// The directory to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Erase data from every store on the gateway: a driver's batches,
    /// what was captured before a time, or everything (decommissioning).
    /// The stores are written again without it and the storage key is
    /// rotated so the old one can be erased. A running gateway carries it
    /// out (asked by SIGUSR1); otherwise this command does. Audited.
    Erase {
        config: PathBuf,
        #[command(flatten)]
        what: EraseArgs,
        /// Confirm --all.
        #[arg(long)]
        yes: bool,
        /// How long to wait for a running gateway's outcome.
        #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
}

/// What an erasure takes (`data erase`, `fleet erase`).
#[derive(Debug, clap::Args)]
pub struct EraseArgs {
    /// The driver whose batches to erase.
    #[arg(long)]
    driver: Option<String>,
    /// Erase what was captured before this time: RFC 3339
    /// (2026-11-30T00:00:00Z) or milliseconds since the Unix epoch.
    #[arg(long)]
    before: Option<String>,
    /// Erase everything the gateway holds but the audit record of this
    /// erasure (decommissioning).
    #[arg(long, conflicts_with_all = ["driver", "before"])]
    all: bool,
}

impl EraseArgs {
    /// The selector, for an erasure asked for now.
    pub(crate) fn selector(self) -> anyhow::Result<ferrule::queue::Selector> {
        let selector = ferrule::queue::Selector {
            driver: self.driver,
            before_ns: self.before.as_deref().map(parse_time).transpose()?,
            all: self.all,
            upto_ns: ferrule::reading::now_ns(),
        };
        selector.check().map_err(anyhow::Error::msg)?;
        Ok(selector)
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; name the first record changed, removed,
    /// reordered, or where the log was cut.
    Verify { config: PathBuf },
    /// Print the records (JSON Lines), oldest first.
    Show {
        config: PathBuf,
        /// Only those of the last DURATION (e.g. 24h).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create the storage key file ([storage] key_file, mode 0600). An
    /// existing plaintext queue stays readable; entries are encrypted from
    /// the next start on.
    Init { config: PathBuf },
    /// Add a new key that encrypts from the next start (or reload) on; the
    /// older ones still decrypt, and each is erased at a start once no
    /// stored entry needs it.
    Rotate { config: PathBuf },
    /// The key ids in the file and how many queued entries each encrypts.
    Show { config: PathBuf },
    /// Create a storage key file at PATH (mode 0600) without a config: the
    /// file a `[storage] key_credential` is loaded from (the .deb makes
    /// /etc/ferrule/credentials/storage.key this way). Refuses to replace
    /// an existing file.
    New { path: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum TelemetryCommand {
    /// The latest sample's figures and the hourly trend (min, average, max).
    Show {
        config: PathBuf,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Hours of trend to show.
        #[arg(long, default_value_t = 24)]
        hours: usize,
        /// With --json: every raw sample kept, too.
        #[arg(long, requires = "json")]
        raw: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Depth, bytes, oldest entry's age, drops by reason.
    Stats {
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write every queued batch to stdout, oldest first.
    Export {
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line: `{"seq", "driver", "captured_ns", "readings"}`.
    Jsonl,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config } => run_gateway(&config).await,
        Command::Check { config } => check(&config).await,
        Command::Reload { config, wait } => reload::ask(&config, wait).await,
        Command::Queue { command } => queue(command),
        Command::Plugin { command } => plugin::run(command),
        Command::Fleet { command } => fleet::run(command).await,
        Command::Key { command } => key(command),
        Command::Audit { command } => audit(command),
        Command::Data {
            command: DataCommand::Export { config, out },
        } => {
            let config = Config::load(&config)?;
            let manifest = ferrule::data::export(&config, &out)?;
            for (name, f) in &manifest.files {
                println!(
                    "{name:<24} {:>8} records {:>12} bytes  sha256 {}",
                    f.records, f.bytes, f.sha256
                );
            }
            for (file, seq, why) in &manifest.unreadable {
                eprintln!("{file}: entry {seq} unreadable, not exported: {why}");
            }
            println!("manifest: {}", out.join("manifest.json").display());
            Ok(())
        }
        Command::Data {
            command:
                DataCommand::Erase {
                    config,
                    what,
                    yes,
                    wait,
                },
        } => erase(&config, what, yes, wait).await,
        Command::Top { config } => top::run(&Config::load(&config)?),
        Command::Status { config, json } => inspect::status(&Config::load(&config)?, json),
        Command::Telemetry {
            command:
                TelemetryCommand::Show {
                    config,
                    json,
                    hours,
                    raw,
                },
        } => {
            let config = Config::load(&config)?;
            audit_log(&config).record(
                "data-access",
                serde_json::json!({"command": "telemetry show", "user": ferrule::audit::os_user()}),
            );
            inspect::telemetry_show(&config, json, hours, raw)
        }
        #[cfg(feature = "demo")]
        Command::Demo {
            plugin_dir,
            duration,
            interval_ms,
            drivers,
        } => {
            demo::run(demo::DemoOptions {
                plugin_dir,
                duration,
                interval_ms,
                drivers,
            })
            .await
        }
        Command::New {
            kind,
            name,
            lang,
            dir,
            sdk_path,
        } => {
            let project = new::create(kind, lang, &name, &dir, sdk_path.as_deref())?;
            println!(
                "created {}: see its README.md to build, test and try it",
                project.display()
            );
            Ok(())
        }
    }
}

async fn run_gateway(path: &Path) -> anyhow::Result<()> {
    // Before anything slow (and before the pid file tells `ferrule reload`
    // and `ferrule data erase` whom to signal): the default action of
    // SIGHUP and SIGUSR1 would end the process.
    let reloads = reload::on_sighup();
    ferrule::erase::catch_sigusr1();
    let config = Config::load(path)?;
    let pid_file = reload::PidFile::write(&config)?;
    let (config, managed) = ferrule::deploy::agent::startup(config).map_err(anyhow::Error::msg)?;
    let mut prepared = gateway::prepare(config).await?;
    prepared.managed = managed;
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        on_signal.cancel();
    });
    gateway::run_reloading(prepared, stop, reloads).await?;
    drop(pid_file);
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let drivers = config.drivers.len();
    let processors: usize = config.drivers.iter().map(|d| d.processors.len()).sum();
    let writable: std::collections::HashMap<String, Vec<String>> = (config.drivers.iter())
        .map(|d| {
            let channels = d.commands.keys().map(|c| c.get_ref().clone()).collect();
            (d.name.get_ref().clone(), channels)
        })
        .collect();
    let signed = config.commands_require_signed();
    let prepared = gateway::prepare(config)
        .await
        .with_context(|| format!("{}: check failed", path.display()))?;
    if !prepared.refused.is_empty() {
        let lines: Vec<String> = (prepared.refused.iter())
            .map(|(driver, e)| format!("driver {driver}: {e}"))
            .collect();
        anyhow::bail!("{}", lines.join("\n"));
    }
    for (_, chain) in &prepared.drivers {
        if let Err(e) = chain {
            anyhow::bail!("{e}");
        }
    }
    for (spec, chain) in &prepared.drivers {
        let channels = chain.as_ref().map_or(0, |c| c.channels().len());
        println!(
            "driver {:<16} {}  {}, {channels} channel(s) declared or seen at init; {}",
            spec.driver.name,
            spec.driver.loaded.path().display(),
            spec.driver.loaded.abi(),
            plugin::origin(spec.driver.loaded.provenance()),
        );
        for p in &spec.processors {
            println!(
                "  processor {:<22} {}  {}; {}",
                p.name,
                p.loaded.path().display(),
                p.loaded.abi(),
                plugin::origin(p.loaded.provenance()),
            );
        }
        let listed = writable
            .get(&spec.driver.name)
            .map_or(&[][..], Vec::as_slice);
        if let Ok(chain) = chain {
            for line in commands_report(chain.channels(), spec.driver.loaded.abi(), listed) {
                println!("  {line}");
            }
        }
    }
    println!(
        "commands: {}",
        if signed {
            "only signed by an operator key ([commands] require_signed)"
        } else {
            "plain or signed (no operator key required)"
        }
    );
    println!(
        "{}: ok: {drivers} driver(s), {processors} processor(s); every plugin exports its world and accepted its config",
        path.display()
    );
    Ok(())
}

/// What `ferrule check` says of a driver's `[driver.commands]` channels:
/// which are writable, and which a 0.2.0 driver declares read-only (never
/// written, whatever the config says) or does not declare at all.
fn commands_report(
    table: &ferrule::plugin::ChannelTable,
    abi: ferrule::plugin::Abi,
    listed: &[String],
) -> Vec<String> {
    if listed.is_empty() {
        return vec!["commands: none writable (no [driver.commands] tables)".to_string()];
    }
    let mut lines = vec![format!("commands: open to {}", listed.join(", "))];
    if abi < ferrule::plugin::Abi::V0_2 {
        return lines;
    }
    for channel in listed {
        match table.driver_channel(channel) {
            Some((_, c)) if !c.writable => lines.push(format!(
                "warning: commands.{channel}: the driver declares it read-only; every write to it is refused"
            )),
            None => lines.push(format!(
                "warning: commands.{channel}: the driver declares no such channel at init"
            )),
            Some(_) => {}
        }
    }
    lines
}

/// The audit log of the data dir a config names.
fn audit_log(config: &Config) -> ferrule::audit::AuditLog {
    ferrule::audit::AuditLog::in_dir(&config.resolve(&config.gateway.data_dir))
}

fn audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { config } => {
            let config = Config::load(&config)?;
            let log = audit_log(&config);
            match ferrule::audit::verify(log.path()) {
                Ok(n) => {
                    println!("{}: {n} records, chain intact", log.path().display());
                    Ok(())
                }
                Err(e) => anyhow::bail!("{}: TAMPERED: {e}", log.path().display()),
            }
        }
        AuditCommand::Show { config, since } => {
            let config = Config::load(&config)?;
            let log = audit_log(&config);
            let from_ms = since.map_or(0, |d| {
                ferrule::reading::now_ms()
                    .saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            });
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            ferrule::audit::for_each(log.path(), |_, record| {
                if record.at_ms >= from_ms {
                    let line = serde_json::to_string(&record).unwrap_or_default();
                    if writeln!(out, "{line}").is_err() {
                        return Ok(false);
                    }
                }
                Ok(true)
            })
            .map_err(|e| anyhow::anyhow!("{}: {e}", log.path().display()))?;
            out.flush()?;
            Ok(())
        }
    }
}

/// A time given as RFC 3339 or milliseconds since the Unix epoch, in ns.
fn parse_time(text: &str) -> anyhow::Result<u64> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms.saturating_mul(1_000_000));
    }
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            anyhow::anyhow!(
                "--before {text:?}: not an RFC 3339 time (2026-11-30T00:00:00Z) or milliseconds since the Unix epoch: {e}"
            )
        })?;
    u64::try_from(t.unix_timestamp_nanos()).context("--before: before 1970")
}

async fn erase(path: &Path, what: EraseArgs, yes: bool, wait: Duration) -> anyhow::Result<()> {
    use ferrule::erase;
    let config = Config::load(path)?;
    if what.all && !yes {
        anyhow::bail!(
            "--all erases everything this gateway holds (queued data, telemetry, plugin data, the audit log but this erasure's record) and its storage key; add --yes to confirm"
        );
    }
    let request = erase::Request {
        id: format!("cli-{}-{}", ferrule::reading::now_ms(), std::process::id()),
        selector: what.selector()?,
        by: ferrule::audit::os_user(),
    };
    let data_dir = config.resolve(&config.gateway.data_dir);
    let outcome = match reload::running_gateway(&config) {
        Some(pid) => {
            erase::submit(&data_dir, &request).map_err(anyhow::Error::msg)?;
            reload::signal_erase(pid)?;
            eprintln!(
                "erasure {} handed to the running gateway (pid {pid})",
                request.id
            );
            let deadline = std::time::Instant::now() + wait;
            loop {
                if let Some(outcome) = erase::read_outcome(&data_dir, &request.id) {
                    break outcome;
                }
                if std::time::Instant::now() >= deadline {
                    anyhow::bail!(
                        "the gateway (pid {pid}) wrote no outcome to {} within {}; the request stays and is carried out when it can",
                        erase::outcome_path(&data_dir, &request.id).display(),
                        humantime::format_duration(wait)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        None => {
            let stores = erase::offline_stores(&config).map_err(|e| {
                anyhow::anyhow!(
                    "{e} (no gateway runs with this data_dir, so this command erases itself)"
                )
            })?;
            erase::submit(&data_dir, &request).map_err(anyhow::Error::msg)?;
            let done = stores.run_waiting().await;
            done.into_iter()
                .find(|o| o.id == request.id)
                .context("the request was not found when carried out")?
        }
    };
    print_erasure(&outcome);
    match outcome.error {
        None => Ok(()),
        Some(e) => anyhow::bail!("erasure {} not complete: {e}", outcome.id),
    }
}

fn print_erasure(o: &ferrule::erase::Outcome) {
    for (name, q) in &o.queues {
        println!(
            "{name:<11} {:>9} entries erased ({} bytes), {:>9} kept{}",
            q.erased,
            q.erased_bytes,
            q.kept,
            match q.unreadable_kept {
                0 => String::new(),
                n => format!(", {n} unreadable kept"),
            }
        );
    }
    println!("history     {:>9} rows erased", o.history_rows);
    if o.selector.all {
        println!("plugin data {:>9} files erased", o.plugin_files);
    }
    if let Some(key) = &o.key {
        println!("storage key {key} encrypts from now on");
    }
    if !o.keys_erased.is_empty() {
        println!("storage keys erased: {}", o.keys_erased.join(", "));
    }
    println!("erasure {} by {} took {} ms", o.id, o.by, o.took_ms);
}

fn create_key(path: &Path) -> anyhow::Result<()> {
    let keyring = ferrule::queue::crypt::Keyring::create(path)?;
    println!(
        "storage key {} created in {} (mode 0600)",
        keyring.current(),
        path.display()
    );
    println!("keep a copy somewhere safe: without it, encrypted entries cannot be read");
    Ok(())
}

fn key(command: KeyCommand) -> anyhow::Result<()> {
    use ferrule::queue::crypt::Keyring;
    let changes = matches!(command, KeyCommand::Init { .. } | KeyCommand::Rotate { .. });
    let config = match &command {
        KeyCommand::Init { config }
        | KeyCommand::Rotate { config }
        | KeyCommand::Show { config } => Some(config),
        KeyCommand::New { .. } => None,
    };
    if changes
        && let Some(config) = config
        && let Some(name) = &Config::load(config)?.storage.key_credential
    {
        anyhow::bail!(
            "the storage key is the systemd credential {:?}, which ferrule does not change: make a key file with `ferrule key new FILE`, then `systemd-creds encrypt --name={} FILE FILE.cred` and point LoadCredentialEncrypted= at it (or put FILE where LoadCredential= reads it)",
            name.get_ref(),
            name.get_ref()
        );
    }
    match command {
        KeyCommand::Init { config } => create_key(&gateway::key_file(&Config::load(&config)?)),
        KeyCommand::New { path } => create_key(&path),
        KeyCommand::Rotate { config } => {
            let config = Config::load(&config)?;
            let path = gateway::key_file(&config);
            let id = Keyring::rotate(&path)?;
            audit_log(&config).record(
                "key",
                serde_json::json!({"action": "rotate", "key_id": id, "user": ferrule::audit::os_user()}),
            );
            println!(
                "storage key {id} added to {}; it encrypts from the next start on",
                path.display()
            );
            Ok(())
        }
        KeyCommand::Show { config } => {
            let config = Config::load(&config)?;
            let keyring = gateway::existing_keys(&config)?.with_context(|| {
                format!("no storage key at {}", gateway::key_file(&config).display())
            })?;
            let queue = gateway::queue_path(&config);
            let counts = ferrule::queue::key_counts(&queue).unwrap_or_default();
            let encrypting = keyring.current();
            for id in keyring.ids() {
                let entries = counts.iter().find(|(k, _)| *k == id).map_or(0, |(_, n)| *n);
                let current = if id == encrypting { " (encrypts)" } else { "" };
                println!("key {id}{current}: {entries} queued entries");
            }
            Ok(())
        }
    }
}

fn queue(command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::Stats { config, json } => {
            let config = Config::load(&config)?;
            let path = gateway::queue_path(&config);
            let stats = ferrule::queue::read_stats(&path)?;
            let quarantined = ferrule::queue::quarantined_files(&path);
            if json {
                let mut value = serde_json::to_value(stats)?;
                value["quarantined"] = serde_json::to_value(&quarantined)?;
                println!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(());
            }
            let age = stats
                .oldest_captured_ns
                .map(|ns| {
                    let age_ns = ferrule::reading::now_ns().saturating_sub(ns);
                    humantime::format_duration(Duration::from_secs(age_ns / 1_000_000_000))
                        .to_string()
                })
                .unwrap_or_else(|| "-".to_string());
            println!("queue        {}", path.display());
            println!("depth        {} entries", stats.depth);
            println!("bytes        {}", stats.bytes);
            println!("oldest age   {age}");
            println!(
                "sequence     next {}{}",
                stats.next_seq,
                stats
                    .oldest_seq
                    .map(|s| format!(", oldest queued {s}"))
                    .unwrap_or_default()
            );
            println!(
                "dropped      cap {}, age {}",
                stats.dropped_cap, stats.dropped_age
            );
            println!("erased       {} (on request)", stats.erased);
            println!(
                "set aside    {} (unreadable, kept in the file)",
                stats.set_aside
            );
            Ok(())
        }
        QueueCommand::Export { config, format } => {
            let config = Config::load(&config)?;
            let path = gateway::queue_path(&config);
            match format {
                ExportFormat::Jsonl => {
                    let stdout = std::io::stdout();
                    let total = ferrule::queue::read_stats(&path)?.depth;
                    let mut out = progress::LineProgress::new(
                        std::io::BufWriter::new(stdout.lock()),
                        "exported",
                        total,
                    );
                    let keyring = gateway::existing_keys(&config)?;
                    let summary = ferrule::queue::export_jsonl(&path, keyring.as_ref(), &mut out)?;
                    std::io::Write::flush(&mut out.finish()?)?;
                    audit_log(&config).record(
                        "data-access",
                        serde_json::json!({
                            "command": "queue export",
                            "user": ferrule::audit::os_user(),
                            "exported": summary.exported,
                            "unreadable": summary.unreadable.len(),
                        }),
                    );
                    for (seq, reason) in &summary.unreadable {
                        eprintln!("entry {seq} unreadable, not exported: {reason}");
                    }
                    eprintln!(
                        "exported {} batches from {}",
                        summary.exported,
                        path.display()
                    );
                    if !summary.unreadable.is_empty() {
                        anyhow::bail!(
                            "{} entries of {} could not be read (listed above); every other entry was exported",
                            summary.unreadable.len(),
                            path.display()
                        );
                    }
                }
            }
            Ok(())
        }
    }
}
