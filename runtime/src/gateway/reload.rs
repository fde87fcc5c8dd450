//! Reloading a running gateway's config (SIGHUP, `ferrule reload`).
//!
//! A reload re-reads the config file and checks it as completely as a
//! start does: syntax and values, `[trust]`, each changed plugin's
//! signature, name and version, and each changed driver chain's `init`
//! with its new config. Only when all of that passes does it apply the
//! difference, driver by driver:
//!
//! - a driver whose settings, plugin bytes (any plugin of its chain) and
//!   trust keys are all as before keeps running, never paused;
//! - a new driver starts;
//! - a changed driver gets a new instance, started and initialised before
//!   the old one is stopped;
//! - a removed driver stops once the queue has committed its last batch.
//!
//! A config that fails any check changes nothing; the reason is logged and
//! kept in `{data_dir}/reload.json` and the telemetry's `config.reload`.
//! `[gateway]` id and data_dir never change while running (a reload that
//! changes them is refused); changes to `[mqtt]` (but `payload_format`),
//! `[queue]`, `[telemetry]`, `[storage]` and `[runtime]` engine sizing take
//! effect at the next start and are listed as `pending_restart`.
//!
//! The per-gateway sequence is the queue's, so it stays contiguous: a
//! reload only changes who appends to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    StartError, descriptors, driver_spec, engine_settings, identities, record_versions,
    reserve_descriptors,
};
use crate::config::{Config, DriverConfig};
use crate::deploy::compose::{Layer, compose};
use crate::pipeline::{self, Chain, DriverCounters, DriverSpec};
use crate::plugin::PluginEngine;
use crate::plugin::trust::{self, sha256_hex};
use crate::queue::Queue;
use crate::remote;
use crate::telemetry::{self, ReloadFigures};

/// What the driver tasks share with the rest of the gateway.
pub struct Shared {
    /// The data queue every driver appends to.
    pub queue: Queue,
    /// Each running driver's command inbox.
    pub inboxes: remote::Inboxes,
    /// What telemetry reports on.
    pub live: Arc<Mutex<telemetry::Live>>,
    /// Stops everything; each driver's own stop is a child of it.
    pub shutdown: CancellationToken,
    /// Where config changes and plugin loads are recorded.
    pub audit: crate::audit::AuditLog,
}

/// One running driver task and what it was started from.
struct DriverTask {
    /// Everything its chain was built from (see [`fingerprint`]).
    fingerprint: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
    counters: Arc<DriverCounters>,
    descriptors: u64,
    /// Each plugin of its chain (instance name, provenance), driver first.
    plugins: Vec<(String, trust::Provenance)>,
    /// The engine its instances were made by (its epoch ticker must
    /// outlive them).
    _engine: Arc<PluginEngine>,
}

/// The running drivers of a gateway and the config they came from.
pub struct Gateway {
    shared: Shared,
    config: Config,
    /// The text of the config file as in force (before any deployment's
    /// drivers were added to it).
    bootstrap: String,
    /// The drivers of the deployment in force, if the gateway is managed.
    layer: Option<Layer>,
    /// A deployment is on trial: plugin versions started are not recorded
    /// for anti-rollback, so a rollback can return to the older ones.
    holding_versions: bool,
    versions: trust::Versions,
    /// In config order.
    drivers: Vec<(String, DriverTask)>,
    not_started: Vec<telemetry::NotStarted>,
    last_reload: Option<ReloadFigures>,
}

/// `{data_dir}/reload.json`: what the last reload did (written by the
/// gateway, read by `ferrule reload`).
pub fn outcome_path(config: &Config) -> PathBuf {
    config.resolve(&config.gateway.data_dir).join("reload.json")
}

/// The last reload's outcome written by the gateway of `config`, if any.
pub fn read_outcome(config: &Config) -> Option<ReloadFigures> {
    // Written by ferrule itself, but bounded like any file read back.
    let bytes = trust::read_bounded(&outcome_path(config), 1 << 20).ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl Gateway {
    /// Starts a task for each prepared driver. `bootstrap` is the text of
    /// the config file, `layer` the deployment's drivers `config` adds to
    /// it.
    pub fn start(
        shared: Shared,
        (config, bootstrap, layer): (Config, String, Option<Layer>),
        versions: trust::Versions,
        engine: Arc<PluginEngine>,
        drivers: Vec<(DriverSpec, Result<Chain, StartError>)>,
        not_started: Vec<telemetry::NotStarted>,
    ) -> Gateway {
        let mut gateway = Gateway {
            shared,
            versions,
            drivers: Vec::with_capacity(drivers.len()),
            not_started,
            last_reload: None,
            config,
            bootstrap,
            layer,
            holding_versions: false,
        };
        let trust = trust_fingerprint(&gateway.config).unwrap_or_default();
        for (spec, chain) in drivers {
            let name = spec.driver.name.clone();
            let shas = std::iter::once(&spec.driver.loaded)
                .map(|l| l.provenance().sha256.clone())
                .chain(
                    spec.processors
                        .iter()
                        .map(|p| p.loaded.provenance().sha256.clone()),
                )
                .collect::<Vec<_>>();
            let fingerprint = (gateway.config.drivers.iter())
                .find(|d| d.name.get_ref() == &name)
                .map(|d| fingerprint(&gateway.config, d, &trust, &shas))
                .unwrap_or_default();
            let chain = match chain {
                Ok(chain) => Some(chain),
                Err(e) => {
                    tracing::error!(error = %e, "driver not started; retrying with backoff while the others run");
                    None
                }
            };
            let task = gateway.spawn(spec, chain, engine.clone(), fingerprint);
            gateway.drivers.push((name, task));
        }
        let names: Vec<String> = gateway.drivers.iter().map(|(n, _)| n.clone()).collect();
        gateway.audit_plugins(&names);
        gateway.publish();
        gateway
    }

    /// Records the plugins of `drivers` as loaded.
    fn audit_plugins(&self, drivers: &[String]) {
        for (name, task) in &self.drivers {
            if !drivers.contains(name) {
                continue;
            }
            for (instance, p) in &task.plugins {
                self.shared.audit.record(
                    "plugin",
                    serde_json::json!({
                        "instance": instance,
                        "name": p.identity.as_ref().map(|i| i.name.clone()),
                        "version": p.identity.as_ref().map(|i| i.version.to_string()),
                        "sha256": p.sha256,
                        "signer": p.signer,
                    }),
                );
            }
        }
    }

    fn spawn(
        &self,
        spec: DriverSpec,
        chain: Option<Chain>,
        engine: Arc<PluginEngine>,
        fingerprint: String,
    ) -> DriverTask {
        let (tx, rx) = mpsc::channel(16);
        (self.shared.inboxes).insert(spec.driver.name.clone(), tx, spec.commands.clone());
        let counters = Arc::new(DriverCounters::for_spec(&spec));
        let stop = self.shared.shutdown.child_token();
        let descriptors = descriptors(&spec);
        let plugins = std::iter::once((&spec.driver.name, spec.driver.loaded.provenance()))
            .chain((spec.processors.iter()).map(|p| (&p.name, p.loaded.provenance())))
            .map(|(name, provenance)| (name.clone(), provenance.clone()))
            .collect();
        let task = tokio::spawn(pipeline::run_driver(
            spec,
            chain,
            self.shared.queue.clone(),
            counters.clone(),
            rx,
            stop.clone(),
        ));
        DriverTask {
            fingerprint,
            stop,
            task,
            counters,
            descriptors,
            plugins,
            _engine: engine,
        }
    }

    /// Tells telemetry which drivers run and which config they came from.
    fn publish(&self) {
        let mut live = self
            .shared
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        live.drivers = (self.drivers.iter())
            .map(|(name, task)| (name.clone(), task.counters.clone()))
            .collect();
        live.config = Some(telemetry::ConfigFigures {
            file: self.config.source.display().to_string(),
            sha256: self.config.sha256.clone(),
            loaded_ms: self.config.loaded_ms,
            not_started: self.not_started.clone(),
            reload: self.last_reload.clone(),
        });
    }

    /// Waits for every driver task to end (after shutdown was cancelled).
    pub async fn stopped(self) {
        for (name, driver) in self.drivers {
            ended(&name, driver.task).await;
        }
    }

    /// Re-reads the config file and applies the difference, or changes
    /// nothing and says why.
    pub async fn reload(&mut self) {
        tracing::info!(config = %self.config.source.display(), "reloading config");
        self.change(None, true).await;
    }

    /// Runs the drivers of `layer` (a deployment's, or none) beside the
    /// bootstrap config's, applying only the difference; or changes
    /// nothing and says why. `record_versions`: whether the plugin
    /// versions started count for anti-rollback now (a deployment's count
    /// once it is confirmed, see [`Gateway::record_versions`]).
    pub async fn deploy(
        &mut self,
        layer: Option<Layer>,
        record_versions: bool,
    ) -> Result<ReloadFigures, String> {
        let figures = self.change(Some(layer), record_versions).await;
        match &figures.error {
            None => Ok(figures),
            Some(e) => Err(e.clone()),
        }
    }

    /// A reload (`layer` None: the file re-read, the deployment kept) or a
    /// deployment (the bootstrap kept, `layer` in force), applied or refused.
    async fn change(
        &mut self,
        layer: Option<Option<Layer>>,
        record_versions: bool,
    ) -> ReloadFigures {
        let started = Instant::now();
        let mut figures = ReloadFigures {
            at_ms: crate::reading::now_ms(),
            ..ReloadFigures::default()
        };
        let layer_given = layer.is_some();
        let record_versions = record_versions && !self.holding_versions;
        match self.try_reload(&mut figures, layer, record_versions).await {
            Ok(()) => {
                figures.ok = true;
                tracing::info!(
                    started = ?figures.started,
                    replaced = ?figures.replaced,
                    stopped = ?figures.stopped,
                    unchanged = figures.unchanged.len(),
                    "config reloaded"
                );
                if !figures.pending_restart.is_empty() {
                    tracing::warn!(sections = ?figures.pending_restart, "these config sections changed but take effect only when ferrule restarts");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload REFUSED: nothing changed, the gateway runs as before");
                figures.error = Some(e);
            }
        }
        figures.took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match serde_json::to_vec_pretty(&figures) {
            Ok(json) => {
                if let Err(e) = trust::write_atomically(&outcome_path(&self.config), &json, None) {
                    tracing::warn!(error = %e, "reload outcome not written");
                }
            }
            Err(e) => tracing::warn!(error = %e, "reload outcome not encoded"),
        }
        self.shared.audit.record(
            "config",
            serde_json::json!({
                "change": if layer_given { "deployment" } else { "reload" },
                "ok": figures.ok,
                "error": figures.error,
                "config_sha256": figures.sha256,
                "started": figures.started,
                "replaced": figures.replaced,
                "stopped": figures.stopped,
            }),
        );
        if figures.ok {
            let loaded: Vec<String> = figures
                .started
                .iter()
                .chain(&figures.replaced)
                .cloned()
                .collect();
            self.audit_plugins(&loaded);
        }
        self.last_reload = Some(figures.clone());
        self.publish();
        figures
    }

    async fn try_reload(
        &mut self,
        figures: &mut ReloadFigures,
        deployment: Option<Option<Layer>>,
        record: bool,
    ) -> Result<(), String> {
        let source = self.config.source.clone();
        let (text, layer) = match deployment {
            Some(layer) => (self.bootstrap.clone(), layer),
            None => {
                let bytes = tokio::fs::read(&source)
                    .await
                    .map_err(|e| format!("{}: cannot read: {e}", source.display()))?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| format!("{}: not UTF-8 text", source.display()))?;
                (text, self.layer.clone())
            }
        };
        let config = compose(&text, &source, layer.as_ref())?;
        figures.sha256 = config.sha256.clone();
        if config.gateway.id.get_ref() != self.config.gateway.id.get_ref()
            || config.resolve(&config.gateway.data_dir)
                != self.config.resolve(&self.config.gateway.data_dir)
        {
            return Err(format!(
                "{}: [gateway] id and data_dir cannot change while ferrule runs; restart it to apply them",
                source.display()
            ));
        }
        figures.pending_restart = restart_sections(&self.config.text, &config.text);
        let trust = trust_fingerprint(&config)
            .map_err(|message| format!("{}: trust: {message}", source.display()))?;

        // Which drivers change: hashing plugin files is kept off the
        // workers the running drivers poll on.
        let config = Arc::new(config);
        let fingerprints = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || {
                (config.drivers.iter())
                    .map(|d| fingerprint(&config, d, &trust, &file_shas(&config, d)))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| format!("reload check failed: {e}"))?
        };
        let running: HashMap<&str, &DriverTask> = (self.drivers.iter())
            .map(|(name, task)| (name.as_str(), task))
            .collect();
        let changed: Vec<(String, String)> = (config.drivers.iter())
            .zip(fingerprints)
            .filter(|(d, fp)| {
                running
                    .get(d.name.get_ref().as_str())
                    .is_none_or(|task| &task.fingerprint != fp)
            })
            .map(|(d, fp)| (d.name.get_ref().clone(), fp))
            .collect();
        let removed: Vec<String> = (self.drivers.iter())
            .map(|(name, _)| name.clone())
            .filter(|name| !config.drivers.iter().any(|d| d.name.get_ref() == name))
            .collect();
        let unchanged_descriptors: u64 = (self.drivers.iter())
            .filter(|(name, _)| !removed.contains(name) && !changed.iter().any(|(c, _)| c == name))
            .map(|(_, task)| task.descriptors)
            .sum();

        // Load and check every changed plugin (compiling is slow: off the
        // workers), then start and initialise each new chain.
        let mut fresh = HashMap::with_capacity(changed.len());
        if !changed.is_empty() {
            let (config, versions) = (config.clone(), self.versions.clone());
            let names: Vec<String> = changed.iter().map(|(n, _)| n.clone()).collect();
            let (engine, specs) =
                tokio::task::spawn_blocking(move || load_changed(&config, &names, &versions))
                    .await
                    .map_err(|e| format!("reload check failed: {e}"))??;
            let engine = Arc::new(engine);
            let mut fingerprints: HashMap<String, String> = changed.into_iter().collect();
            for spec in specs {
                let name = spec.driver.name.clone();
                let fp = fingerprints.remove(&name).unwrap_or_default();
                let chain = spec
                    .start()
                    .await
                    .map_err(|e| format!("{}: driver {name}: {e}", source.display()))?;
                fresh.insert(name, (spec, chain, fp, engine.clone()));
            }
        }
        let total =
            unchanged_descriptors + fresh.values().map(|(s, ..)| descriptors(s)).sum::<u64>();
        reserve_descriptors(&config, total).map_err(|e| e.to_string())?;
        if self.shared.shutdown.is_cancelled() {
            return Err("the gateway is stopping".to_string());
        }

        // Apply. Nothing below refuses: the new config is in force.
        if record {
            record_versions(
                &mut self.versions,
                identities(fresh.values().map(|(s, ..)| s)),
            );
        }
        for (name, task) in &self.drivers {
            if removed.contains(name) || fresh.contains_key(name) {
                task.stop.cancel();
            }
        }
        let mut old: HashMap<String, DriverTask> = self.drivers.drain(..).collect();
        let mut next = Vec::with_capacity(config.drivers.len());
        for d in &config.drivers {
            let name = d.name.get_ref();
            if let Some((spec, chain, fp, engine)) = fresh.remove(name) {
                match old.remove(name) {
                    Some(before) => {
                        // The new instance is ready; the old one finishes
                        // the poll it is in and its batches commit first.
                        ended(name, before.task).await;
                        figures.replaced.push(name.clone());
                    }
                    None => figures.started.push(name.clone()),
                }
                next.push((name.clone(), self.spawn(spec, Some(chain), engine, fp)));
            } else if let Some(task) = old.remove(name) {
                figures.unchanged.push(name.clone());
                next.push((name.clone(), task));
            }
        }
        for (name, task) in old {
            self.shared.inboxes.remove(&name);
            ended(&name, task.task).await;
            figures.stopped.push(name);
        }
        self.drivers = next;
        self.config = Arc::unwrap_or_clone(config);
        self.bootstrap = text;
        self.layer = layer;
        self.not_started.clear();
        Ok(())
    }

    /// The config in force (bootstrap and deployment).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The counters of the running driver `name`.
    pub fn counters(&self, name: &str) -> Option<Arc<DriverCounters>> {
        (self.drivers.iter())
            .find(|(n, _)| n == name)
            .map(|(_, task)| task.counters.clone())
    }

    /// Every plugin instance running: its instance name and provenance.
    pub fn plugins(&self) -> impl Iterator<Item = &(String, trust::Provenance)> {
        self.drivers
            .iter()
            .flat_map(|(_, task)| task.plugins.iter())
    }

    /// While `hold` (a deployment on trial), no change records the plugin
    /// versions it starts.
    pub fn hold_versions(&mut self, hold: bool) {
        self.holding_versions = hold;
    }

    /// Records the signed version of every plugin running, so an older
    /// one is refused from now on.
    pub fn record_versions(&mut self) {
        let running = self.drivers.iter().flat_map(|(_, task)| &task.plugins);
        record_versions(
            &mut self.versions,
            running.filter_map(|(_, p)| p.identity.as_ref()),
        );
    }
}

/// Waits for a stopped driver's task to end.
async fn ended(driver: &str, task: JoinHandle<()>) {
    if let Err(e) = task.await {
        tracing::error!(driver = %driver, error = %e, "driver task ended abnormally");
    }
}

/// A new engine for `config` and the spec of each driver in `names`, every
/// plugin checked against `[trust]` and the version record.
fn load_changed(
    config: &Config,
    names: &[String],
    versions: &trust::Versions,
) -> Result<(PluginEngine, Vec<DriverSpec>), String> {
    let source = config.source.display();
    let data_root = config.resolve(&config.gateway.data_dir);
    let policy = config
        .trust_policy()
        .map_err(|message| format!("{source}: trust: {message}"))?;
    let engine = PluginEngine::with_settings(&engine_settings(config, &data_root))
        .map_err(|e| e.to_string())?
        .with_trust(policy);
    let (mut drivers, mut processors) = (HashMap::new(), HashMap::new());
    let mut specs = Vec::with_capacity(names.len());
    for name in names {
        let Some(d) = config.drivers.iter().find(|d| d.name.get_ref() == name) else {
            continue;
        };
        let files = (&mut drivers, &mut processors);
        let spec = driver_spec(config, &engine, versions, &data_root, d, files)
            .map_err(|e| format!("{source}: driver {name}: {e}"))?;
        specs.push(spec);
    }
    Ok((engine, specs))
}

/// The trusted key ids and `require_signed`: a change re-checks every
/// plugin.
fn trust_fingerprint(config: &Config) -> Result<String, String> {
    let policy = config.trust_policy()?;
    let mut keys = policy.key_ids();
    keys.sort_unstable();
    Ok(format!(
        "{keys:?} require_signed={}",
        policy.require_signed()
    ))
}

/// SHA-256 of each plugin file of driver `d`'s chain, driver first; an
/// unreadable file gets its error instead (and fails to load later).
fn file_shas(config: &Config, d: &DriverConfig) -> Vec<String> {
    std::iter::once(&d.plugin)
        .chain(d.processors.iter().map(|p| &p.plugin))
        .map(|p| {
            trust::sha256_file(&config.resolve(p.get_ref()))
                .unwrap_or_else(|e| format!("unreadable: {e}"))
        })
        .collect()
}

fn strings(list: &[toml::Spanned<String>]) -> Vec<&str> {
    list.iter().map(|s| s.get_ref().as_str()).collect()
}

/// Everything driver `d`'s chain is built from, hashed: its settings and
/// its processors' (as resolved, so a driver moved within the file is the
/// same driver), the bytes of each plugin (`plugin_shas`), the trust keys,
/// and the gateway-wide settings a chain uses. Two equal fingerprints mean
/// a reload has nothing to change for that driver.
fn fingerprint(config: &Config, d: &DriverConfig, trust: &str, plugin_shas: &[String]) -> String {
    let limits = config.limits.with(d.limits);
    let path = |p: &Path| config.resolve(p).display().to_string();
    let processors: Vec<serde_json::Value> = (d.processors.iter())
        .map(|p| {
            serde_json::json!({
                "name": p.name.get_ref(),
                "plugin": path(p.plugin.get_ref()),
                "plugin_name": p.plugin_name.as_ref().map(|n| n.get_ref()),
                "allow_downgrade": p.allow_downgrade,
                "config": &p.config,
                "limits": format!("{:?}", limits.with(p.limits)),
                "allow_net": strings(&p.allow_net),
                "allow_dns": p.allow_dns,
                "data_dir": p.data_dir,
            })
        })
        .collect();
    let mut value = serde_json::json!({
        "name": d.name.get_ref(),
        "plugin": path(d.plugin.get_ref()),
        "plugin_name": d.plugin_name.as_ref().map(|n| n.get_ref()),
        "allow_downgrade": d.allow_downgrade,
        "interval_ms": d.interval_ms.get_ref(),
        "config": &d.config,
        "limits": format!("{limits:?}"),
        "device": d.device.as_ref().map(|x| x.get_ref()),
        "allow_net": strings(&d.allow_net),
        "allow_dns": d.allow_dns,
        "data_dir": d.data_dir,
        "processors": processors,
        "plugin_sha256": plugin_shas,
        "trust": trust,
        "payload_format": format!("{:?}", config.mqtt.payload_format),
        "restart_ms": [config.runtime.restart_min_ms, config.runtime.restart_max_ms],
    });
    // Added only when set, so a driver without commands keeps the
    // fingerprint it had before commands could be configured.
    if !d.commands.is_empty()
        && let serde_json::Value::Object(fields) = &mut value
    {
        let commands: std::collections::BTreeMap<_, _> = (d.commands.iter())
            .map(|(channel, rule)| (channel.get_ref().clone(), rule.clone()))
            .collect();
        fields.insert("commands".into(), serde_json::json!(commands));
    }
    sha256_hex(value.to_string().as_bytes())
}

/// Sections that differ between two config texts and that a reload does
/// not apply to running parts (the publisher, the queue, telemetry, the
/// engine): they take effect at the next start.
fn restart_sections(old: &str, new: &str) -> Vec<String> {
    let parse = |text: &str| {
        let mut table = text.parse::<toml::Table>().unwrap_or_default();
        // These are part of each driver's fingerprint, applied per driver.
        if let Some(toml::Value::Table(mqtt)) = table.get_mut("mqtt") {
            mqtt.remove("payload_format");
        }
        if let Some(toml::Value::Table(runtime)) = table.get_mut("runtime") {
            runtime.remove("restart_min_ms");
            runtime.remove("restart_max_ms");
        }
        table
    };
    let (old, new) = (parse(old), parse(new));
    [
        "mqtt",
        "queue",
        "telemetry",
        "runtime",
        "storage",
        "retention",
        "deploy",
        "commands",
    ]
    .into_iter()
    .filter(|section| old.get(*section) != new.get(*section))
    .map(String::from)
    // Operator keys authorize commands, deployments and erasure orders,
    // whose handlers are set up at start; publisher keys apply at reload.
    .chain((operator_keys(&old) != operator_keys(&new)).then(|| "trust.operator_keys".to_string()))
    .collect()
}

fn operator_keys(config: &toml::Table) -> Option<&toml::Value> {
    config.get("trust")?.get("operator_keys")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: &str = "[gateway]\nid = \"gw\"\n[mqtt]\nhost = \"b\"\nca_file = \"ca.pem\"\n";

    /// Each driver's fingerprint in a config of `drivers` (TOML), every
    /// plugin file's bytes given as `sha`.
    fn fingerprints(dir: &Path, drivers: &str, sha: &str) -> Vec<(String, String)> {
        let text = format!("{GATEWAY}{drivers}");
        let config = Config::parse(&text, &dir.join("gw.toml")).unwrap();
        (config.drivers.iter())
            .map(|d| {
                let shas = vec![sha.to_string(); 1 + d.processors.len()];
                let fp = fingerprint(&config, d, "[] require_signed=false", &shas);
                (d.name.get_ref().clone(), fp)
            })
            .collect()
    }

    const A: &str = "[[driver]]\nname = \"a\"\nplugin = \"sim.wasm\"\ninterval_ms = 100\n[driver.config]\nk = 1\n[[driver.processor]]\nname = \"p\"\nplugin = \"scale.wasm\"\n[driver.processor.config]\ngain = 2\n";
    const B: &str = "[[driver]]\nname = \"b\"\nplugin = \"sim.wasm\"\ninterval_ms = 100\n";

    #[test]
    fn a_driver_is_unchanged_only_when_everything_its_chain_is_built_from_is() {
        let dir = tempfile::tempdir().unwrap();
        for file in ["ca.pem", "sim.wasm", "scale.wasm"] {
            std::fs::write(dir.path().join(file), "").unwrap();
        }
        let fingerprints = |drivers: &str, sha: &str| fingerprints(dir.path(), drivers, sha);
        let before = fingerprints(&format!("{A}{B}"), "1");
        // Moved within the file, with comments and spacing changed: the same.
        let moved = fingerprints(&format!("# moved\n{B}\n\n{A}"), "1");
        assert_eq!(before[0], moved[1]);
        assert_eq!(before[1], moved[0]);
        let differs = |drivers: &str, sha: &str| fingerprints(drivers, sha)[0].1 != before[0].1;
        assert!(differs(A, "2"), "plugin bytes");
        assert!(differs(&A.replace("k = 1", "k = 2"), "1"), "driver config");
        assert!(
            differs(&A.replace("gain = 2", "gain = 3"), "1"),
            "processor config"
        );
        assert!(
            differs(&A.replace("interval_ms = 100", "interval_ms = 200"), "1"),
            "interval"
        );
        assert!(
            differs(
                &A.replace(
                    "[driver.config]",
                    "[driver.limits]\nmemory_mb = 8\n[driver.config]"
                ),
                "1"
            ),
            "limits"
        );
        assert!(differs(&A.replace("\"p\"", "\"q\""), "1"), "processor name");
        let global = fingerprints(&format!("[limits]\ntimeout_ms = 77\n{A}"), "1");
        assert_ne!(global[0].1, before[0].1, "gateway-wide limits");
    }

    #[test]
    fn only_sections_a_reload_cannot_apply_are_pending_restart() {
        let old =
            "[mqtt]\nhost = \"a\"\npayload_format = \"readings\"\n[runtime]\nrestart_min_ms = 5\n";
        let same = "[mqtt]\nhost = \"a\"\npayload_format = \"compact\"\n[runtime]\nrestart_min_ms = 9\n[[driver]]\nname = \"x\"\n";
        assert!(restart_sections(old, same).is_empty());
        let moved = "[queue]\nmax_bytes = 1\n[mqtt]\nhost = \"b\"\n";
        assert_eq!(restart_sections(old, moved), ["mqtt", "queue", "runtime"]);
        let keys = "[trust]\npublisher_keys = [\"p.pub\"]\n";
        let more = "[trust]\npublisher_keys = [\"p.pub\", \"q.pub\"]\n";
        assert!(restart_sections(keys, more).is_empty(), "applied at reload");
        let operators = "[trust]\npublisher_keys = [\"p.pub\"]\noperator_keys = [\"o.pub\"]\n";
        assert_eq!(restart_sections(keys, operators), ["trust.operator_keys"]);
        let window = "[commands]\nwindow_s = 30\n";
        assert_eq!(restart_sections("", window), ["commands"]);
    }
}
