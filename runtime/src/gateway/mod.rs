//! Putting a gateway together from its config: load and check every plugin,
//! start their instances, open the queue, then run the driver tasks and the
//! publisher until shutdown.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{
    Config, DriverConfig, MqttProtocol, PayloadFormatConfig, PluginLimits, WhenFull,
};
use crate::pipeline::{Chain, DriverSpec, PluginSpec};
use crate::plugin::trust;
use crate::plugin::{
    Capabilities, ComponentNeeds, EngineSettings, Limits, LoadedDriver, LoadedProcessor,
    PluginEngine, PluginError, Sandbox,
};
use crate::publish::{self, Protocol, PublisherSettings, PublisherStats, TlsFiles, Topics};
use crate::queue::{FullPolicy, Queue, QueueError, QueueOptions};
use crate::reading::PayloadFormat;
use crate::remote;
use crate::telemetry;

pub mod reload;

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A plugin could not be loaded.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The data queue could not be opened.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A driver's chain could not be started.
    #[error("{}: driver {driver}: {source}", config.display())]
    Driver {
        /// The config file.
        config: PathBuf,
        /// The driver's name.
        driver: String,
        /// What failed.
        source: PluginError,
    },
    /// The `[trust]` keys cannot be read.
    #[error("{}: trust: {message}", config.display())]
    Trust {
        /// The config file.
        config: PathBuf,
        /// Why.
        message: String,
    },
    /// A plugin's `[config]` table cannot be written as JSON.
    #[error("{}: {what}: config cannot be passed to the plugin as JSON: {message}", config.display())]
    PluginConfig {
        /// The config file.
        config: PathBuf,
        /// Which plugin (`driver NAME` or `processor DRIVER/NAME`).
        what: String,
        /// Why.
        message: String,
    },
    /// A driver's `device` address cannot be resolved.
    #[error("{}: driver {driver}: device {device:?}: {message}", config.display())]
    Device {
        /// The config file.
        config: PathBuf,
        /// The driver's name.
        driver: String,
        /// The address as configured.
        device: String,
        /// Why it does not resolve.
        message: String,
    },
    /// The storage key cannot be used.
    #[error("{}: storage: {message}", config.display())]
    Storage {
        /// The config file.
        config: PathBuf,
        /// Why.
        message: String,
    },
    #[error(
        "{}: plugins may hold {plugins} open files and sockets (max_open_files of each plugin with data_dir or allow_net) and the gateway keeps {HOST_DESCRIPTORS} for itself, but this process may open only {limit}; lower max_open_files or raise the limit (systemd: LimitNOFILE=)",
        config.display()
    )]
    /// The plugins' descriptor caps and the host's own need more open files
    /// than the process may have.
    Descriptors {
        /// The config file.
        config: PathBuf,
        /// Descriptors the plugins may hold together.
        plugins: u64,
        /// The process's open-file limit.
        limit: u64,
    },
}

/// Descriptors kept for the gateway itself (queue files, the broker link,
/// certificate reads, telemetry), whatever its plugins hold.
pub const HOST_DESCRIPTORS: u64 = 256;

/// Raises the soft limit on open files to the hard one and checks that
/// the plugins' `max_open_files` (`plugins`, summed) fit under it with
/// [`HOST_DESCRIPTORS`] to spare, so no plugin can keep the gateway from
/// reconnecting or opening its queue.
fn reserve_descriptors(config: &Config, plugins: u64) -> Result<(), StartError> {
    let Some(limit) = raise_open_files_limit() else {
        return Ok(());
    };
    if plugins.saturating_add(HOST_DESCRIPTORS) > limit {
        return Err(StartError::Descriptors {
            config: config.source.clone(),
            plugins,
            limit,
        });
    }
    tracing::debug!(limit, plugins, "open file limit");
    Ok(())
}

/// The files and sockets the plugins of one driver's chain may hold.
fn descriptors(spec: &DriverSpec) -> u64 {
    std::iter::once(&spec.driver.sandbox)
        .chain(spec.processors.iter().map(|p| &p.sandbox))
        .filter(|sandbox| sandbox.holds_descriptors())
        .map(|sandbox| sandbox.limits.max_open_files as u64)
        .sum()
}

/// Sets the soft `RLIMIT_NOFILE` to the hard limit; the limit now in force.
fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return None;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                }
            }
        }
        Some(limit.rlim_cur)
    }
    #[cfg(not(unix))]
    None
}

/// A gateway whose plugins are loaded and initialised, not yet running.
/// A driver whose chain failed to start keeps its error: `check` reports
/// it, `run` logs it and lets the supervisor retry with backoff.
pub struct Prepared {
    /// The config it was prepared from.
    pub config: Config,
    /// Each driver's spec and its started chain, or why it did not start.
    pub drivers: Vec<(DriverSpec, Result<Chain, StartError>)>,
    /// Drivers whose plugins could not be loaded (refused by `[trust]`,
    /// missing, not a plugin), by name: they do not run; the others do.
    pub refused: Vec<(String, StartError)>,
    /// The highest version of each plugin run here; `run` records the
    /// versions it starts.
    versions: trust::Versions,
    /// Set for a gateway that takes deployments ([`crate::deploy::agent::startup`]).
    pub managed: Option<crate::deploy::agent::Managed>,
    _engine: PluginEngine,
}

fn to_json(config: &Config, what: &str, table: &toml::Value) -> Result<String, StartError> {
    serde_json::to_string(table).map_err(|e| StartError::PluginConfig {
        config: config.source.clone(),
        what: what.to_string(),
        message: e.to_string(),
    })
}

/// Loads every plugin (checking it exports the right world), builds each
/// instance's sandbox and runs its `init` with its config. Nothing here
/// touches the network. A driver whose plugins cannot be loaded (refused
/// by `[trust]` or the version record, missing, not a plugin) is set aside
/// in `refused`; the others are prepared.
pub async fn prepare(config: Config) -> Result<Prepared, StartError> {
    let data_root = config.resolve(&config.gateway.data_dir);
    let trust = config.trust_policy().map_err(|message| StartError::Trust {
        config: config.source.clone(),
        message,
    })?;
    let engine =
        PluginEngine::with_settings(&engine_settings(&config, &data_root))?.with_trust(trust);
    let mut drivers = Vec::with_capacity(config.drivers.len());
    // Each plugin file is compiled (or read from the cache) once, however
    // many instances use it.
    let mut driver_files: HashMap<PathBuf, LoadedDriver> = HashMap::new();
    let mut processor_files: HashMap<PathBuf, LoadedProcessor> = HashMap::new();
    let versions = trust::Versions::load(&versions_path(&config));
    let mut refused = Vec::new();
    for d in &config.drivers {
        let name = d.name.get_ref().clone();
        let files = (&mut driver_files, &mut processor_files);
        let spec = match driver_spec(&config, &engine, &versions, &data_root, d, files) {
            Ok(spec) => spec,
            Err(e) => {
                // One driver's plugin (refused, missing, broken) never
                // keeps the others from starting.
                refused.push((name, e));
                continue;
            }
        };
        let chain = spec.start().await.map_err(|source| StartError::Driver {
            config: config.source.clone(),
            driver: name.clone(),
            source,
        });
        drivers.push((spec, chain));
    }
    Ok(Prepared {
        config,
        drivers,
        refused,
        versions,
        managed: None,
        _engine: engine,
    })
}

/// The loaded plugins, sandboxes and settings of driver `d` (each plugin
/// file loaded once across drivers).
fn driver_spec(
    config: &Config,
    engine: &PluginEngine,
    versions: &trust::Versions,
    data_root: &Path,
    d: &DriverConfig,
    (driver_files, processor_files): (
        &mut HashMap<PathBuf, LoadedDriver>,
        &mut HashMap<PathBuf, LoadedProcessor>,
    ),
) -> Result<DriverSpec, StartError> {
    let name = d.name.get_ref().clone();
    let limits = config.limits.with(d.limits);
    let loaded = load_once(driver_files, config.resolve(d.plugin.get_ref()), |p| {
        engine.load_driver(p)
    })?;
    let (path, provenance) = (loaded.path(), loaded.provenance());
    check_version(
        versions,
        path,
        provenance,
        &d.plugin_name,
        d.allow_downgrade,
        &name,
    )?;
    let mut processors = Vec::with_capacity(d.processors.len());
    for p in &d.processors {
        let instance = format!("{name}/{}", p.name.get_ref());
        let sandbox = Sandbox::new(
            &instance,
            plugin_limits(&limits.with(p.limits)),
            &capabilities(&p.allow_net, p.allow_dns, p.data_dir, None),
            data_root,
        )?;
        let loaded = load_once(
            processor_files,
            config.resolve(p.plugin.get_ref()),
            |path| engine.load_processor(path),
        )?;
        let (path, provenance) = (loaded.path(), loaded.provenance());
        check_version(
            versions,
            path,
            provenance,
            &p.plugin_name,
            p.allow_downgrade,
            &instance,
        )?;
        processors.push(PluginSpec {
            loaded,
            sandbox,
            config_json: to_json(config, &format!("processor {instance}"), &p.config)?,
            name: instance,
        });
    }
    let mut plugin_config = d.config.clone();
    if let (Some(device), toml::Value::Table(table)) = (&d.device, &mut plugin_config) {
        // Resolved here, by the host, so the plugin needs no name lookup
        // of its own; the sandbox allows the same address.
        let resolved = resolve_device(device.get_ref()).map_err(|message| StartError::Device {
            config: config.source.clone(),
            driver: name.clone(),
            device: device.get_ref().clone(),
            message,
        })?;
        table.insert("device".to_string(), toml::Value::String(resolved));
    }
    let sandbox = Sandbox::new(
        &name,
        plugin_limits(&limits),
        &capabilities(&d.allow_net, d.allow_dns, d.data_dir, d.device.as_ref()),
        data_root,
    )?;
    let spec = DriverSpec {
        driver: PluginSpec {
            loaded,
            sandbox,
            config_json: to_json(config, &format!("driver {name}"), &plugin_config)?,
            name: name.clone(),
        },
        processors,
        interval: Duration::from_millis(*d.interval_ms.get_ref()),
        format: match config.mqtt.payload_format {
            PayloadFormatConfig::Readings => PayloadFormat::Readings,
            PayloadFormatConfig::Compact => PayloadFormat::Compact,
        },
        commands: Arc::new(crate::remote::Policy::new(&d.commands)),
        restart_min: Duration::from_millis(config.runtime.restart_min_ms.max(1)),
        restart_max: Duration::from_millis(
            config
                .runtime
                .restart_max_ms
                .max(config.runtime.restart_min_ms.max(1)),
        ),
    };
    Ok(spec)
}

/// Refuses a plugin not signed as `expected`, or older than a version of
/// it already run here (unless `allow_downgrade`, which is logged).
fn check_version(
    versions: &trust::Versions,
    path: &Path,
    provenance: &trust::Provenance,
    expected: &Option<toml::Spanned<String>>,
    allow_downgrade: bool,
    instance: &str,
) -> Result<(), StartError> {
    let expected = expected.as_ref().map(|n| n.get_ref().as_str());
    versions
        .check(provenance, expected, allow_downgrade)
        .map_err(|refusal| PluginError::Untrusted {
            path: path.to_path_buf(),
            refusal: Box::new(refusal),
        })?;
    if let Some(identity) = &provenance.identity
        && let Some(highest) = versions.highest(&identity.name)
        && identity.version < *highest
    {
        tracing::warn!(plugin = %path.display(), instance, running = %identity, highest = %highest, "DOWNGRADE: running an older version than this gateway already ran (allow_downgrade = true)");
    }
    Ok(())
}

/// The signed identities of every plugin of `specs`' chains.
fn identities<'a>(
    specs: impl Iterator<Item = &'a DriverSpec>,
) -> impl Iterator<Item = &'a trust::Identity> {
    specs
        .flat_map(|spec| {
            std::iter::once(spec.driver.loaded.provenance())
                .chain(spec.processors.iter().map(|p| p.loaded.provenance()))
        })
        .filter_map(|p| p.identity.as_ref())
}

/// Notes the signed versions of plugins the gateway starts, so an older
/// one is refused from now on.
fn record_versions<'a>(
    versions: &mut trust::Versions,
    identities: impl Iterator<Item = &'a trust::Identity>,
) {
    let mut raised = false;
    for identity in identities {
        raised |= versions.record(identity);
    }
    if (raised || versions.unreadable())
        && let Err(e) = versions.save()
    {
        tracing::error!(error = %e, "cannot record the plugin versions started; rollback protection holds only for those recorded before");
    }
}

/// `{data_dir}/plugin-versions.json`: the highest version of each plugin run.
pub fn versions_path(config: &Config) -> PathBuf {
    config
        .resolve(&config.gateway.data_dir)
        .join("plugin-versions.json")
}

/// `host:port` resolved to its first address, as `ip:port`.
fn resolve_device(device: &str) -> Result<String, String> {
    use std::net::ToSocketAddrs;
    device
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .next()
        .map(|a| a.to_string())
        .ok_or_else(|| "resolves to no address".to_string())
}

/// The plugin loaded from `path`, loading it only the first time.
fn load_once<T: Clone>(
    loaded: &mut HashMap<PathBuf, T>,
    path: PathBuf,
    load: impl FnOnce(&Path) -> Result<T, PluginError>,
) -> Result<T, PluginError> {
    if let Some(found) = loaded.get(&path) {
        return Ok(found.clone());
    }
    let fresh = load(&path)?;
    loaded.insert(path, fresh.clone());
    Ok(fresh)
}

/// Pool and cache settings from config: room for every configured instance
/// (or `runtime.max_instances`, if larger), slots as big as the largest
/// memory cap, and core instances, memories and tables as each configured
/// plugin needs them (read from its bytes).
fn engine_settings(config: &Config, data_root: &Path) -> EngineSettings {
    let mut instances = 0u32;
    let mut max_memory_mb = config.limits.memory_mb;
    let mut files: HashMap<PathBuf, ComponentNeeds> = HashMap::new();
    let mut needed = ComponentNeeds::default();
    let mut largest = ComponentNeeds::default();
    let mut count = |plugin: &Path| {
        let path = config.resolve(plugin);
        let needs = *files.entry(path.clone()).or_insert_with(|| {
            // A file that cannot be read or parsed fails to load later,
            // with its own error; here it counts as a small component.
            std::fs::read(&path)
                .ok()
                .and_then(|bytes| ComponentNeeds::of(&bytes).ok())
                .unwrap_or(ComponentNeeds::UNMEASURED)
        });
        needed = needed.plus(needs);
        largest = largest.max(needs);
    };
    for d in &config.drivers {
        let limits = config.limits.with(d.limits);
        max_memory_mb = max_memory_mb.max(limits.memory_mb);
        count(d.plugin.get_ref());
        for p in &d.processors {
            max_memory_mb = max_memory_mb.max(limits.with(p.limits).memory_mb);
            count(p.plugin.get_ref());
        }
        instances = instances.saturating_add(1 + d.processors.len() as u32);
    }
    // Rebuilds overlap with the instance being dropped: room for two each.
    let max_instances = config
        .runtime
        .max_instances
        .max(instances.saturating_mul(2));
    let spare = max_instances.saturating_sub(instances.saturating_mul(2));
    let pool_total = needed.times(2).plus(largest.times(spare));
    for (path, needs) in &files {
        tracing::debug!(plugin = %path.display(), core_instances = needs.core_instances, memories = needs.memories, tables = needs.tables, "plugin's share of the instance pool");
    }
    EngineSettings {
        max_instances,
        pool_total,
        pool_per_instance: largest,
        max_memory_mb,
        cache_dir: config
            .runtime
            .compile_cache
            .then(|| match &config.runtime.compile_cache_dir {
                Some(dir) => config.resolve(dir),
                None => data_root.join("cache"),
            }),
    }
}

/// The live status file a config points at (`ferrule top` reads it).
pub fn status_path(config: &Config) -> PathBuf {
    match &config.runtime.status_file {
        Some(file) => config.resolve(file),
        None => data_root_file(config, "status.json"),
    }
}

/// The storage key file a config points at.
pub fn key_file(config: &Config) -> PathBuf {
    match &config.storage.key_credential {
        Some(name) => crate::config::credential_path(name.get_ref()),
        None => config.resolve(Path::new(config.storage.key_file.get_ref())),
    }
}

/// The keyring of `[storage] key_credential`, when the config names one:
/// read from `$CREDENTIALS_DIRECTORY`, never changed; a clear error when
/// the credential is not there.
fn credential_keys(
    config: &Config,
) -> Option<Result<crate::queue::crypt::Keyring, crate::queue::crypt::KeyError>> {
    let name = config.storage.key_credential.as_ref()?;
    let path = key_file(config);
    if !path.exists() {
        let why = match std::env::var_os("CREDENTIALS_DIRECTORY") {
            None => "CREDENTIALS_DIRECTORY is not set".to_string(),
            Some(_) => "the credentials directory has no such file".to_string(),
        };
        return Some(Err(crate::queue::crypt::KeyError::File {
            path,
            message: format!(
                "[storage] key_credential {:?}: {why}; run ferrule under systemd with LoadCredentialEncrypted={}:… (or LoadCredential=), or a command through `systemd-run --pipe -p LoadCredentialEncrypted=…`",
                name.get_ref(),
                name.get_ref()
            ),
        }));
    }
    Some(crate::queue::crypt::Keyring::load(&path).map(crate::queue::crypt::Keyring::fixed))
}

/// The storage keys in the config's key file, if it exists (for reading
/// what a gateway stored, alongside it or after it).
pub fn existing_keys(
    config: &Config,
) -> Result<Option<crate::queue::crypt::Keyring>, crate::queue::crypt::KeyError> {
    if let Some(keys) = credential_keys(config) {
        return keys.map(Some);
    }
    let path = key_file(config);
    match path.exists() {
        true => crate::queue::crypt::Keyring::load(&path).map(Some),
        false => Ok(None),
    }
}

/// The storage keys for a gateway's queues, and whether new entries are
/// encrypted. With `[storage] encryption` on (the default) and no key
/// file: a new install (no queue file yet) gets a new key; an install
/// from before encryption keeps writing plaintext and is told how to
/// start encrypting (`ferrule key init`).
pub fn storage_keys(
    config: &Config,
) -> Result<(Option<Arc<crate::queue::crypt::Keyring>>, bool), StartError> {
    use crate::config::Encryption;
    use crate::queue::crypt::Keyring;
    let path = key_file(config);
    let on = config.storage.encryption == Encryption::Aes256Gcm;
    let err = |e: crate::queue::crypt::KeyError| StartError::Storage {
        config: config.source.clone(),
        message: e.to_string(),
    };
    if let Some(keys) = credential_keys(config) {
        let keyring = keys.map_err(err)?;
        tracing::info!(credential = %path.display(), key_id = %keyring.current(), "storage key read from a systemd credential");
        return Ok((Some(Arc::new(keyring)), on));
    }
    if path.exists() {
        let keyring = Keyring::load(&path).map_err(err)?;
        return Ok((Some(Arc::new(keyring)), on));
    }
    if !on {
        return Ok((None, false));
    }
    if queue_path(config).exists() {
        tracing::warn!(key_file = %path.display(), "queue entries are stored in plaintext: this queue was made before encryption at rest; run `ferrule key init CONFIG` to encrypt new entries from the next start");
        return Ok((None, false));
    }
    let keyring = Keyring::create(&path).map_err(err)?;
    tracing::info!(key_file = %path.display(), key_id = %keyring.current(), "storage key created: queue entries are encrypted with it (AES-256-GCM); keep a copy, without it they cannot be read");
    Ok((Some(Arc::new(keyring)), true))
}

/// Applies `[retention]` to the audit log and plugins' private data (at
/// start, then hourly), and
/// records in it every rise of the queue's policy drops (`max_bytes` with
/// drop_oldest, `max_age_s`), looked at each minute and at shutdown.
async fn audit_housekeeping(
    audit: crate::audit::AuditLog,
    retention: crate::config::RetentionConfig,
    queue: Queue,
    shutdown: CancellationToken,
) {
    let retain = |audit: crate::audit::AuditLog| async move {
        let max_age = Duration::from_secs(retention.audit_days.saturating_mul(86_400));
        let max_bytes = retention.audit_max_mb.saturating_mul(1 << 20);
        match tokio::task::spawn_blocking(move || audit.retain(max_age, max_bytes)).await {
            Ok(Ok(r)) if r.dropped > 0 => tracing::info!(
                dropped = r.dropped,
                dropped_total = r.dropped_total,
                "audit retention removed the oldest records"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "audit retention not applied"),
            _ => {}
        }
    };
    let data_dir = audit
        .path()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let prune = |audit: crate::audit::AuditLog, data_dir: PathBuf| async move {
        let Some(days) = retention.plugin_data_days else {
            return;
        };
        let max_age = Duration::from_secs(days.saturating_mul(86_400));
        let pruned = tokio::task::spawn_blocking(move || {
            let pruned = crate::retention::prune_plugin_data(&data_dir, max_age);
            if let Ok(p) = &pruned
                && p.removed > 0
            {
                audit.record(
                    "retention",
                    serde_json::json!({"class": "plugin data", "removed": p.removed, "removed_total": p.removed_total, "max_age_days": days}),
                );
            }
            pruned
        })
        .await;
        match pruned {
            Ok(Ok(p)) if p.removed > 0 => tracing::info!(
                removed = p.removed,
                removed_total = p.removed_total,
                "plugin data retention removed files older than plugin_data_days"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "plugin data retention not applied"),
            _ => {}
        }
    };
    retain(audit.clone()).await;
    prune(audit.clone(), data_dir.clone()).await;
    let mut minutes = 0u64;
    let counts = |q: &Queue| {
        q.stats()
            .map(|s| (s.dropped_cap, s.dropped_age, s.set_aside))
            .ok()
    };
    let Some(mut last) = counts(&queue) else {
        return;
    };
    loop {
        minutes += 1;
        if minutes.is_multiple_of(60) {
            retain(audit.clone()).await;
            prune(audit.clone(), data_dir.clone()).await;
        }
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(Duration::from_secs(60)) => false,
        };
        if let Some(now) = counts(&queue) {
            if (now.0, now.1) != (last.0, last.1) {
                audit.record(
                    "policy-drop",
                    serde_json::json!({
                        "queue": queue.path().display().to_string(),
                        "dropped_cap": now.0 - last.0.min(now.0),
                        "dropped_age": now.1 - last.1.min(now.1),
                        "dropped_cap_total": now.0,
                        "dropped_age_total": now.1,
                    }),
                );
            }
            if now.2 != last.2 {
                audit.record(
                    "quarantine",
                    serde_json::json!({
                        "queue": queue.path().display().to_string(),
                        "entries_set_aside": now.2 - last.2.min(now.2),
                        "entries_set_aside_total": now.2,
                        "why": "unreadable (damaged on disk); kept in the file's set-aside table",
                    }),
                );
            }
            last = now;
        }
        if stopping {
            return;
        }
    }
}

/// `name` in the config's data dir.
fn data_root_file(config: &Config, name: &str) -> PathBuf {
    config.resolve(&config.gateway.data_dir).join(name)
}

/// Erases from the key file every older storage key no stored entry
/// needs any more. Every queue file that exists must be open (and so
/// read) for that; the newest key always stays.
fn erase_unused_keys(
    config: &Config,
    keyring: Option<&crate::queue::crypt::Keyring>,
    history: Option<&telemetry::history::History>,
    queues: &[(PathBuf, Option<&Queue>)],
) {
    let Some(keyring) = keyring else {
        return;
    };
    let path = keyring.path();
    let mut in_use = Vec::new();
    if let Some(history) = history {
        match history.rekey() {
            Ok(true) => {
                tracing::info!("telemetry history sealed again under the current storage key")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "telemetry history not sealed again under the current storage key")
            }
        }
    }
    match history.map(telemetry::history::History::keys_in_use) {
        Some(Ok(ids)) => in_use.extend(ids),
        Some(Err(_)) => return,
        None if history_path(config).exists() => return,
        None => {}
    }
    for (file, queue) in queues {
        match queue {
            Some(q) => match q.keys_in_use() {
                Ok(ids) => in_use.extend(ids),
                Err(_) => return,
            },
            None if file.exists() => return,
            None => {}
        }
    }
    let erased = keyring.erase_unused(&in_use);
    match erased {
        Ok(ids) if !ids.is_empty() => {
            tracing::info!(key_file = %path.display(), erased = ?ids, "storage keys no entry needs any more erased");
            crate::audit::AuditLog::in_dir(&config.resolve(&config.gateway.data_dir)).record(
                "key",
                serde_json::json!({"action": "erase", "key_ids": ids, "why": "no stored entry needs them"}),
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "older storage keys not erased"),
    }
}

/// The queue file a config points at.
pub fn queue_path(config: &Config) -> PathBuf {
    match &config.queue.path {
        Some(p) => config.resolve(p),
        None => config.resolve(&config.gateway.data_dir).join("queue.redb"),
    }
}

/// The telemetry snapshot's size budget: the configured one, lowered so a
/// snapshot always fits one MQTT packet with room for the topic and the
/// framing the publisher adds.
fn snapshot_budget(config: &Config) -> usize {
    let packet = u64::from(*config.mqtt.max_packet_size.get_ref());
    let budget = config
        .telemetry
        .max_snapshot_bytes
        .min(packet.saturating_sub(1024).max(1024));
    usize::try_from(budget).unwrap_or(usize::MAX)
}

/// The local telemetry history file a config points at.
pub fn history_path(config: &Config) -> PathBuf {
    config
        .resolve(&config.gateway.data_dir)
        .join("telemetry-history.redb")
}

/// The queue's limits and policies from config.
pub fn queue_options(config: &Config) -> QueueOptions {
    QueueOptions {
        max_bytes: config.queue.max_bytes,
        when_full: match config.queue.when_full {
            WhenFull::DropOldest => FullPolicy::DropOldest,
            WhenFull::Block => FullPolicy::Block,
        },
        max_age: config.queue.max_age_s.map(Duration::from_secs),
        max_group: None,
        commit_linger: Duration::from_millis(config.queue.commit_linger_ms),
        keyring: None,
        encrypt: false,
    }
}

fn publisher_settings(
    config: &Config,
    drivers: &crate::publish::sparkplug::Drivers,
) -> PublisherSettings {
    let m = &config.mqtt;
    let gateway = config.gateway.id.get_ref().clone();
    let resolve = |p: &str| config.resolve(Path::new(p));
    PublisherSettings {
        client_id: m.client_id.clone().unwrap_or_else(|| gateway.clone()),
        topics: Topics::new(&m.topic_prefix, &gateway),
        gateway,
        host: m.host.clone(),
        port: m.port,
        failover: config.brokers().into_iter().skip(1).collect(),
        tls: TlsFiles {
            ca: resolve(m.ca_file.get_ref()),
            client_cert: m.client_cert_file.as_ref().map(|f| resolve(f.get_ref())),
            client_key: m.client_key(resolve),
        },
        protocol: match m.protocol {
            MqttProtocol::V311 => Protocol::V311,
            MqttProtocol::V5 => Protocol::V5,
        },
        username: m.username.clone(),
        password_file: m.password_file.as_ref().map(|f| resolve(f.get_ref())),
        clean_session: m.clean_session,
        session_expiry_s: m.session_expiry_s,
        max_packet_size: *m.max_packet_size.get_ref(),
        keep_alive: Duration::from_secs(*m.keep_alive_s.get_ref()),
        max_inflight: m.max_inflight,
        reconnect_min: Duration::from_millis(m.reconnect_min_ms.max(10)),
        reconnect_max: Duration::from_millis(m.reconnect_max_ms.max(m.reconnect_min_ms)),
        audit: Some(crate::audit::AuditLog::in_dir(
            &config.resolve(&config.gateway.data_dir),
        )),
        sparkplug: sparkplug_settings(config, drivers),
    }
}

/// The edge node's identity, with `format = "sparkplug-b"` (the config
/// check made sure `[mqtt.sparkplug]` is there).
fn sparkplug_settings(
    config: &Config,
    drivers: &crate::publish::sparkplug::Drivers,
) -> Option<crate::publish::sparkplug::SparkplugSettings> {
    let m = &config.mqtt;
    if m.format.as_ref().map(|f| *f.get_ref()) != Some(crate::config::MessageFormat::SparkplugB) {
        return None;
    }
    let s = m.sparkplug.as_ref()?;
    Some(crate::publish::sparkplug::SparkplugSettings {
        group_id: s.group_id.get_ref().clone(),
        edge_node_id: s.edge_node_id.as_ref().map_or_else(
            || config.gateway.id.get_ref().clone(),
            |e| e.get_ref().clone(),
        ),
        primary_host_id: s.primary_host_id.as_ref().map(|h| h.get_ref().clone()),
        bd_seq_file: config
            .resolve(&config.gateway.data_dir)
            .join("sparkplug-bdseq"),
        drivers: drivers.clone(),
    })
}

/// A plugin's limits as its sandbox enforces them, from the config's
/// `[limits]` (with any per-plugin override already applied).
pub fn plugin_limits(l: &PluginLimits) -> Limits {
    let mib = |n: u64| n.saturating_mul(1 << 20);
    Limits {
        memory_bytes: usize::try_from(mib(l.memory_mb)).unwrap_or(usize::MAX),
        timeout: Duration::from_millis(l.timeout_ms),
        max_readings: l.max_readings,
        max_value_bytes: l.max_value_bytes,
        max_channels: l.max_channels,
        log_lines_per_s: l.log_lines_per_s,
        max_result_bytes: l.max_result_bytes,
        max_status_entries: l.max_status_entries,
        max_status_value_bytes: l.max_status_value_bytes,
        max_log_bytes: l.max_log_bytes,
        max_error_bytes: l.max_error_bytes,
        max_open_files: l.max_open_files,
        data_dir_quota_bytes: mib(l.data_dir_quota_mb),
    }
}

/// What a plugin's config grants it: `allow_net` (plus the driver's
/// `device` address), `allow_dns`, `data_dir`.
fn capabilities(
    allow_net: &[toml::Spanned<String>],
    allow_dns: bool,
    data_dir: bool,
    device: Option<&toml::Spanned<String>>,
) -> Capabilities {
    Capabilities {
        allow_net: allow_net
            .iter()
            .chain(device)
            .map(|a| a.get_ref().clone())
            .collect(),
        allow_dns,
        data_dir,
    }
}

/// Keeps large buffers (a plugin's result, its encoded entry, a batch read
/// back for publishing: up to `max_result_bytes` each) out of glibc's
/// arenas. glibc raises its mmap threshold each time such a buffer is
/// freed, after which they are carved from the arenas and their memory is
/// kept resident once freed; with a fixed threshold each is its own
/// mapping, returned to the system when freed. Measured with eight drivers
/// returning the largest outputs the default limits allow.
pub fn keep_large_buffers_out_of_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets a glibc tuning parameter.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// Hands the heap memory freed during start-up back to the system. Compiling
/// plugins (Cranelift, on a cold compile cache) allocates and frees several
/// MiB; glibc keeps freed memory in its arenas, where it would stay
/// resident for the gateway's whole life (measured: 38 MiB RSS before, 31
/// MiB after, on the side-by-side benchmark's 10-driver Modbus job).
fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only walks glibc's own arenas and releases
    // free pages; it has no preconditions and touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The next reload asked for; never, when reloads are not taken.
async fn next_reload(reloads: &mut Option<tokio::sync::mpsc::Receiver<()>>) -> Option<()> {
    match reloads {
        Some(source) => source.recv().await,
        None => std::future::pending().await,
    }
}

/// The deployment agent's next event; never, on a gateway managed by hand.
async fn next_event(
    agent: &mut Option<crate::deploy::agent::Agent>,
) -> Option<crate::deploy::agent::Event> {
    match agent {
        Some(agent) => Some(agent.next().await),
        None => std::future::pending().await,
    }
}

/// Runs a prepared gateway until `shutdown` is cancelled; then stops
/// polling, takes a last telemetry snapshot, lets the publisher say
/// offline, and returns once every task has ended.
pub async fn run(prepared: Prepared, shutdown: CancellationToken) -> Result<(), StartError> {
    run_reloading(prepared, shutdown, None).await
}

/// [`run`], re-reading the config file and applying the difference each
/// time `reloads` yields (see [`reload`]).
pub async fn run_reloading(
    prepared: Prepared,
    shutdown: CancellationToken,
    mut reloads: Option<tokio::sync::mpsc::Receiver<()>>,
) -> Result<(), StartError> {
    let Prepared {
        config,
        drivers,
        refused,
        mut versions,
        managed,
        _engine,
    } = prepared;
    record_versions(
        &mut versions,
        identities(drivers.iter().map(|(spec, _)| spec)),
    );
    for (driver, e) in &refused {
        tracing::error!(driver = %driver, error = %e, "driver NOT started: its plugin could not be loaded; the other drivers run");
    }
    let not_started: Vec<telemetry::NotStarted> = (refused.iter())
        .map(|(driver, e)| telemetry::NotStarted {
            name: driver.clone(),
            error: e.to_string(),
        })
        .collect();
    if drivers.is_empty()
        && let Some((_, e)) = refused.into_iter().next()
    {
        return Err(e);
    }
    reserve_descriptors(
        &config,
        drivers.iter().map(|(spec, _)| descriptors(spec)).sum(),
    )?;
    let (keyring, encrypt) = storage_keys(&config)?;
    let queue = Queue::open(
        &queue_path(&config),
        QueueOptions {
            keyring: keyring.clone(),
            encrypt,
            ..queue_options(&config)
        },
    )?;
    let stats = queue.stats()?;
    let audit = crate::audit::AuditLog::in_dir(&config.resolve(&config.gateway.data_dir));
    audit.record(
        "start",
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "gateway": config.gateway.id.get_ref(),
            "config": config.source.display().to_string(),
            "config_sha256": config.sha256,
            "drivers": drivers.len(),
            "not_started": not_started.iter().map(|n| serde_json::json!({"driver": n.name, "error": n.error})).collect::<Vec<_>>(),
            "encrypted": encrypt,
        }),
    );
    if let Some(aside) = queue.health().quarantined {
        audit.record(
            "quarantine",
            serde_json::json!({"file": queue.path().display().to_string(), "moved_to": aside.display().to_string()}),
        );
    }
    release_startup_memory();
    tracing::info!(
        gateway = %config.gateway.id.get_ref(),
        drivers = drivers.len(),
        queued = stats.depth,
        queued_bytes = stats.bytes,
        next_seq = stats.next_seq,
        "ferrule running"
    );
    let publisher_stats = Arc::new(PublisherStats::default());
    // Telemetry is worth having, not worth stopping data capture for: if
    // its queue cannot be opened the gateway runs without it.
    let telemetry_queue = match config.telemetry.interval_s {
        0 => None,
        _ => match Queue::open(
            &config
                .resolve(&config.gateway.data_dir)
                .join("telemetry.redb"),
            QueueOptions {
                max_bytes: Some(config.telemetry.max_queue_bytes),
                when_full: FullPolicy::DropOldest,
                max_age: None,
                max_group: None,
                commit_linger: Duration::ZERO,
                keyring: keyring.clone(),
                encrypt,
            },
        ) {
            Ok(q) => Some(q),
            Err(e) => {
                tracing::error!(error = %e, "telemetry queue unavailable; running without telemetry");
                None
            }
        },
    };
    // The audit log's copy for the cloud: its own durable lane.
    let audit_lane = match Queue::open(
        &config
            .resolve(&config.gateway.data_dir)
            .join("audit-lane.redb"),
        QueueOptions {
            keyring: keyring.clone(),
            encrypt,
            ..QueueOptions::default()
        },
    ) {
        Ok(q) => Some(q),
        Err(e) => {
            tracing::error!(error = %e, "audit lane unavailable: the audit log is kept on disk but not published");
            None
        }
    };
    let history = match telemetry_queue {
        Some(_) => match telemetry::history::History::open(
            &history_path(&config),
            Duration::from_secs(config.telemetry.raw_retention_s),
            Duration::from_secs(config.telemetry.trend_retention_s),
            config.telemetry.max_history_bytes,
        )
        .and_then(|h| h.with_keys(keyring.clone(), encrypt))
        {
            Ok(h) => Some(Arc::new(h)),
            Err(e) => {
                tracing::warn!(error = %e, "telemetry history not kept");
                None
            }
        },
        None => None,
    };
    erase_unused_keys(
        &config,
        keyring.as_deref(),
        history.as_deref(),
        &[
            (queue_path(&config), Some(&queue)),
            (
                data_root_file(&config, "telemetry.redb"),
                telemetry_queue.as_ref(),
            ),
            (
                data_root_file(&config, "audit-lane.redb"),
                audit_lane.as_ref(),
            ),
        ],
    );
    // Each driver task takes writes from its own inbox; the router hands
    // them out by driver name. A reload changes both lists.
    let inboxes = remote::Inboxes::default();
    let live = Arc::new(std::sync::Mutex::new(telemetry::Live::default()));
    let status_gate = Arc::new(telemetry::status::Gate::default());
    let tasks = TaskTracker::new();
    let authority =
        remote::Authority::from_config(&config).map_err(|message| StartError::Trust {
            config: config.source.clone(),
            message,
        })?;
    tracing::info!(
        require_signed = authority.require_signed(),
        window_s = config.commands.window_s.get_ref(),
        "commands: only channels listed in [driver.commands] are writable"
    );
    let command_counters = Arc::new(remote::CommandCounters::default());
    live.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .commands = command_counters.clone();
    let mut commands = remote::start(
        inboxes.clone(),
        Arc::new(authority),
        remote::Record {
            audit: Some(audit.clone()),
            counters: command_counters,
        },
    );
    let (mut agent, bootstrap, layer) = match managed {
        Some(mut managed) => {
            let (bootstrap, layer) = (std::mem::take(&mut managed.bootstrap), managed.layer.take());
            let (agent, link) =
                crate::deploy::agent::Agent::new(&config, managed).map_err(|message| {
                    StartError::Trust {
                        config: config.source.clone(),
                        message,
                    }
                })?;
            commands.deploy = Some(link);
            (Some(agent), bootstrap, layer)
        }
        None => (None, config.text.clone(), None),
    };
    let orders = crate::erase::orders(&config).map_err(|message| StartError::Trust {
        config: config.source.clone(),
        message,
    })?;
    let orders = orders.map(|(link, orders)| {
        commands.erase = Some(link);
        orders
    });
    tasks.spawn(crate::erase::serve(
        crate::erase::Stores {
            data: queue.clone(),
            telemetry: telemetry_queue.clone(),
            audit_lane: audit_lane.clone(),
            history: history.clone(),
            keyring: keyring.clone(),
            data_dir: config.resolve(&config.gateway.data_dir),
            audit: audit.clone(),
            status_file: status_path(&config),
            status: (status_gate.clone(), Some(live.clone())),
        },
        orders,
        shutdown.clone(),
    ));
    tasks.spawn(publish::run(
        publisher_settings(&config, &live),
        queue.clone(),
        publisher_stats.clone(),
        telemetry_queue.clone(),
        audit_lane.clone(),
        Some(commands),
        shutdown.clone(),
    ));
    if let Some(lane) = audit_lane {
        tasks.spawn(crate::audit::ship(audit.clone(), lane, shutdown.clone()));
    }
    tasks.spawn(audit_housekeeping(
        audit.clone(),
        config.retention,
        queue.clone(),
        shutdown.clone(),
    ));
    if config.runtime.status_interval_ms > 0 {
        let path = status_path(&config);
        tasks.spawn(telemetry::status::run(
            telemetry::status::StatusWriter {
                collector: telemetry::Collector::new(
                    config.gateway.id.get_ref(),
                    &config.resolve(&config.gateway.data_dir),
                ),
                withhold: telemetry::status::withhold_reason(
                    &path,
                    config.storage.encryption != crate::config::Encryption::None,
                ),
                path,
                interval: Duration::from_millis(config.runtime.status_interval_ms),
                live: live.clone(),
                publisher: publisher_stats.clone(),
                data: queue.clone(),
                failing: false,
                gate: status_gate,
            },
            shutdown.clone(),
        ));
    }
    if let Some(lane) = telemetry_queue {
        tasks.spawn(telemetry::run(
            telemetry::Reporter {
                collector: telemetry::Collector::new(
                    config.gateway.id.get_ref(),
                    &config.resolve(&config.gateway.data_dir),
                ),
                interval: Duration::from_secs(config.telemetry.interval_s),
                live: live.clone(),
                publisher: publisher_stats,
                data: queue.clone(),
                lane,
                max_snapshot_bytes: snapshot_budget(&config),
                trimmed: 0,
                history,
            },
            shutdown.clone(),
        ));
    }
    let mut gateway = reload::Gateway::start(
        reload::Shared {
            queue,
            inboxes,
            live,
            shutdown: shutdown.clone(),
            audit: audit.clone(),
        },
        (config, bootstrap, layer),
        versions,
        Arc::new(_engine),
        drivers,
        not_started,
    );
    if let Some(agent) = &agent {
        agent.report_now(&gateway);
    }
    loop {
        // A reload or a deployment step is checked and applied whole;
        // shutdown, if asked for meanwhile, follows it and stops every
        // driver.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            asked = next_reload(&mut reloads) => match asked {
                Some(()) => gateway.reload().await,
                None => reloads = None,
            },
            Some(event) = next_event(&mut agent) => {
                if let Some(agent) = agent.as_mut() {
                    agent.handle(event, &mut gateway).await;
                }
            }
        }
    }
    shutdown.cancelled().await;
    gateway.stopped().await;
    audit.record("stop", serde_json::json!({}));
    tasks.close();
    tasks.wait().await;
    Ok(())
}
