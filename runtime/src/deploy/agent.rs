//! The gateway's side of deployments over MQTT (docs/fleet.md).
//!
//! The agent takes signed documents from the gateway's own and its groups'
//! `deploy/desired` topics, fetches the plugins it does not keep yet in
//! chunks (`deploy/fetch` → `deploy/chunk/{sha256}/{offset}`), applies the
//! new state through the hot reload path, watches each changed driver
//! through the health window, and confirms it or returns to the last
//! confirmed state. Every step is recorded in the [`Store`] before the
//! next, and every change of phase is reported, retained, on
//! `deploy/reported`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use super::compose::{Layer, layer};
use super::store::{Outcome, Phase, Record, Result as Done, State, Trial};
use super::{Deployment, PluginRef, Recipient, Refusal, Store};
use crate::config::Config;
use crate::gateway::reload::Gateway;
use crate::plugin::trust;
use crate::publish::Topics;
use crate::remote::{DeployLink, Outgoing};

/// How often transfers and health windows are looked at.
const TICK: Duration = Duration::from_millis(200);
/// Transfer progress is reported at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What a managed gateway starts with: its deployment store and state,
/// the deployment in force and the config text it was added to.
pub struct Managed {
    store: Store,
    state: State,
    running: Option<Deployment>,
    /// The bootstrap config's text.
    pub bootstrap: String,
    /// The confirmed deployment's drivers, already part of the config.
    pub layer: Option<Layer>,
}

/// The config a gateway runs (its bootstrap `config` plus the confirmed
/// deployment's drivers) and what its agent needs; no [`Managed`] when
/// `[trust] operator_keys` is empty (the gateway is managed by hand).
///
/// A deployment found on trial (ferrule stopped before it was confirmed)
/// is rolled back here: the previous confirmed one runs, and the outcome
/// says "interrupted".
pub fn startup(config: Config) -> Result<(Config, Option<Managed>), String> {
    if config.trust.operator_keys.is_empty() {
        return Ok((config, None));
    }
    let store = Store::open(&config.resolve(&config.gateway.data_dir))
        .map_err(|e| format!("{}: deploy store: {e}", config.source.display()))?;
    let mut state = store.state()?;
    if let Some(trial) = state.trial.take() {
        let number = trial.record.deployment;
        tracing::warn!(deployment = number, phase = ?trial.phase, "deployment ROLLED BACK: ferrule stopped before it was confirmed; the previous state runs");
        state.highest = state.highest.max(number);
        state.last = Some(Outcome {
            deployment: number,
            result: Done::RolledBack,
            reason: Some(format!(
                "interrupted: ferrule stopped while deployment {number} was {}; the previous state runs",
                match trial.phase {
                    Phase::Applying => "being applied",
                    Phase::Health => "in its health window",
                }
            )),
            at_ms: crate::reading::now_ms(),
        });
        store
            .save(&state)
            .map_err(|e| format!("{}: {e}", store.dir().display()))?;
    }
    let mut managed = Managed {
        store,
        state,
        running: None,
        bootstrap: config.text.clone(),
        layer: None,
    };
    let Some(record) = managed.state.running.clone() else {
        return Ok((config, Some(managed)));
    };
    let composed = managed.store.document(&record).and_then(|d| {
        let l = layer(&d, &managed.store)?;
        let composed = super::compose::compose(&config.text, &config.source, Some(&l))?;
        Ok((d, l, composed))
    });
    match composed {
        Ok((d, l, composed)) => {
            tracing::info!(
                deployment = d.deployment,
                drivers = d.drivers.len(),
                "running the confirmed deployment"
            );
            managed.running = Some(d);
            managed.layer = Some(l);
            Ok((composed, Some(managed)))
        }
        Err(e) => {
            // The bootstrap's own drivers still run; the fleet's state
            // runs again with the operator's next deployment.
            tracing::error!(deployment = record.deployment, error = %e, "the confirmed deployment cannot be run; running the bootstrap config alone");
            Ok((config, Some(managed)))
        }
    }
}

/// Who the gateway is and how it fetches, from its bootstrap config.
struct Settings {
    gateway: String,
    groups: Vec<String>,
    keys: Vec<(String, ed25519_compact::PublicKey)>,
    topics: Topics,
    chunk_bytes: u64,
    chunk_timeout: Duration,
    max_plugin_bytes: u64,
}

/// A verified deployment whose plugins are being fetched.
struct Pending {
    deployment: Deployment,
    message: Vec<u8>,
    fetch: Option<Fetch>,
}

/// The chunk asked for.
struct Fetch {
    plugin: PluginRef,
    offset: u64,
    len: u64,
    asked: Instant,
    reported: Instant,
}

/// An applied deployment in its health window.
struct Watch {
    deployment: Deployment,
    record: Record,
    /// Each changed driver and its successful polls before it started.
    changed: Vec<String>,
    deadline: Instant,
}

/// The deployment agent of one gateway.
pub struct Agent {
    settings: Settings,
    store: Store,
    state: State,
    running: Option<Deployment>,
    inbox: mpsc::Receiver<(String, Vec<u8>)>,
    outbox: mpsc::Sender<Outgoing>,
    pending: Option<Pending>,
    watch: Option<Watch>,
    /// A newer deployment that arrived during a health window.
    next: Option<Vec<u8>>,
    audit: crate::audit::AuditLog,
}

/// Something for the agent to handle.
pub enum Event {
    /// A message on a deployment topic.
    Message(String, Vec<u8>),
    /// Time to look at transfers and health windows.
    Tick,
}

/// The `deploy/reported` message.
#[derive(Serialize)]
struct Report<'a> {
    gateway: &'a str,
    at_ms: u64,
    /// The confirmed deployment running, if any.
    running: Option<u64>,
    /// idle, fetching, applying or health.
    phase: &'a str,
    /// The deployment being fetched, applied or watched.
    #[serde(skip_serializing_if = "Option::is_none")]
    trial: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transfer: Option<Transfer<'a>>,
    last: Option<&'a Outcome>,
    config_sha256: &'a str,
    plugins: Vec<Running<'a>>,
}

#[derive(Serialize)]
struct Transfer<'a> {
    plugin: &'a str,
    sha256: &'a str,
    received: u64,
    size: u64,
}

#[derive(Serialize)]
struct Running<'a> {
    instance: &'a str,
    name: Option<&'a str>,
    version: Option<String>,
    sha256: &'a str,
    signer: Option<&'a str>,
}

impl Agent {
    /// The agent of a managed gateway and the publisher's ends of its
    /// topics.
    pub fn new(config: &Config, managed: Managed) -> Result<(Agent, DeployLink), String> {
        let topics = Topics::new(&config.mqtt.topic_prefix, config.gateway.id.get_ref());
        let groups: Vec<String> = (config.gateway.groups.iter())
            .map(|g| g.get_ref().clone())
            .collect();
        let mut filters = vec![topics.deploy_desired(), topics.deploy_chunks()];
        filters.extend(groups.iter().map(|g| topics.group_desired(g)));
        // Bounded: a chunk is up to 1000 KiB, and only one is asked for at
        // a time; more waiting than this is dropped (and asked for again).
        let (in_tx, inbox) = mpsc::channel(8);
        let (outbox, out_rx) = mpsc::channel(64);
        let chunk_timeout = Duration::from_secs(config.deploy.chunk_timeout_s.max(1));
        let agent = Agent {
            settings: Settings {
                gateway: config.gateway.id.get_ref().clone(),
                groups,
                keys: config.operator_keys()?,
                topics,
                chunk_bytes: u64::from(config.deploy.chunk_bytes),
                chunk_timeout,
                max_plugin_bytes: config.deploy.max_plugin_bytes,
            },
            store: managed.store,
            state: managed.state,
            running: managed.running,
            inbox,
            outbox,
            pending: None,
            watch: None,
            next: None,
            audit: crate::audit::AuditLog::in_dir(&config.resolve(&config.gateway.data_dir)),
        };
        let link = DeployLink {
            filters,
            inbox: in_tx,
            outbox: out_rx,
        };
        Ok((agent, link))
    }

    /// The next thing to handle.
    pub async fn next(&mut self) -> Event {
        let busy = self.pending.is_some() || self.watch.is_some();
        tokio::select! {
            Some((topic, payload)) = self.inbox.recv() => Event::Message(topic, payload),
            _ = tokio::time::sleep(TICK), if busy => Event::Tick,
            // The publisher has ended (the gateway is stopping).
            else => std::future::pending().await,
        }
    }

    /// Handles `event`, changing `gateway`'s drivers when a deployment is
    /// applied or rolled back.
    pub async fn handle(&mut self, event: Event, gateway: &mut Gateway) {
        match event {
            Event::Message(topic, payload) => {
                if let Some((sha, offset)) = self.settings.topics.chunk_of(&topic) {
                    let sha = sha.to_string();
                    self.on_chunk(&sha, offset, &payload, gateway).await;
                } else {
                    self.on_document(payload, gateway).await;
                }
            }
            Event::Tick => {
                self.check_transfer(gateway).await;
                self.check_health(gateway).await;
            }
        }
    }

    /// Reports the state as it is (on start).
    pub fn report_now(&self, gateway: &Gateway) {
        self.report(gateway);
    }

    async fn on_document(&mut self, message: Vec<u8>, gateway: &mut Gateway) {
        if self.watch.is_some() {
            // Taken up once the one in its health window is settled.
            self.next = Some(message);
            return;
        }
        let to = Recipient {
            gateway: &self.settings.gateway,
            groups: &self.settings.groups,
            applied: (self.state.highest > 0).then_some(self.state.highest),
            keys: &self.settings.keys,
        };
        let deployment = match super::verify(&message, &to) {
            Ok(d) => d,
            Err(Refusal::Replay { number, .. })
                if Some(number) == self.state.running.as_ref().map(|r| r.deployment)
                    || self
                        .state
                        .last
                        .as_ref()
                        .is_some_and(|l| l.deployment == number) =>
            {
                // The retained document, again after a reconnect.
                tracing::debug!(deployment = number, "deployment already handled");
                return;
            }
            Err(refusal) => {
                let number = super::open_unverified(&message)
                    .map(|d| d.deployment)
                    .unwrap_or(0);
                // Not bumping `highest`: nothing verified says this number.
                self.refuse(number, refusal.to_string(), false, gateway);
                return;
            }
        };
        if (self.pending.as_ref()).is_some_and(|p| p.deployment == deployment) {
            return;
        }
        let number = deployment.deployment;
        if let Some(p) =
            (deployment.plugins.iter()).find(|p| p.size > self.settings.max_plugin_bytes)
        {
            let reason = format!(
                "plugin {} {} is {} bytes, more than the {} this gateway accepts ([deploy] max_plugin_bytes)",
                p.name, p.version, p.size, self.settings.max_plugin_bytes
            );
            self.refuse(number, reason, true, gateway);
            return;
        }
        tracing::info!(
            deployment = number,
            plugins = deployment.plugins.len(),
            drivers = deployment.drivers.len(),
            "deployment received"
        );
        self.pending = Some(Pending {
            deployment,
            message,
            fetch: None,
        });
        self.fetch_or_apply(gateway).await;
    }

    /// Asks for the next missing chunk, or applies once nothing is missing.
    async fn fetch_or_apply(&mut self, gateway: &mut Gateway) {
        let Some(pending) = self.pending.as_ref() else {
            return;
        };
        let missing = (pending.deployment.plugins.iter())
            .find(|p| !self.store.has_plugin(p))
            .cloned();
        let Some(plugin) = missing else {
            self.apply(gateway).await;
            return;
        };
        let part = self.store.staging_path(&plugin.sha256);
        let mut offset = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        if offset > plugin.size {
            let _ = std::fs::remove_file(&part);
            offset = 0;
        }
        if offset == plugin.size {
            match self.finish(&plugin, &part) {
                Ok(()) => return Box::pin(self.fetch_or_apply(gateway)).await,
                Err(reason) => {
                    let number = pending.deployment.deployment;
                    self.pending = None;
                    self.refuse(number, reason, true, gateway);
                    return;
                }
            }
        }
        let Some(pending) = self.pending.as_mut() else {
            return;
        };
        let len = self.settings.chunk_bytes.min(plugin.size - offset);
        if offset == 0 || pending.fetch.is_none() {
            tracing::info!(plugin = %plugin.name, version = %plugin.version, sha256 = %plugin.sha256, size = plugin.size, from = offset, "fetching plugin");
        }
        let request = serde_json::json!({
            "sha256": plugin.sha256, "offset": offset, "len": len,
        });
        let now = Instant::now();
        let reported = pending
            .fetch
            .as_ref()
            .map_or(now - PROGRESS_EVERY, |f| f.reported);
        pending.fetch = Some(Fetch {
            plugin,
            offset,
            len,
            asked: now,
            reported,
        });
        self.send(
            self.settings.topics.deploy_fetch(),
            request.to_string().into_bytes(),
            false,
        );
        if reported.elapsed() >= PROGRESS_EVERY {
            if let Some(f) = self.pending.as_mut().and_then(|p| p.fetch.as_mut()) {
                f.reported = now;
            }
            self.report(gateway);
        }
    }

    async fn on_chunk(&mut self, sha: &str, offset: u64, data: &[u8], gateway: &mut Gateway) {
        let Some(fetch) = self.pending.as_ref().and_then(|p| p.fetch.as_ref()) else {
            return;
        };
        // Only the chunk asked for: a late or repeated one is dropped.
        if fetch.plugin.sha256 != sha || fetch.offset != offset {
            return;
        }
        if data.is_empty() || data.len() as u64 > fetch.len {
            tracing::warn!(
                sha256 = sha,
                offset,
                bytes = data.len(),
                asked = fetch.len,
                "chunk of the wrong size dropped; asking again"
            );
            return;
        }
        let part = self.store.staging_path(sha);
        if let Err(e) = append(&part, offset, data) {
            // A full or failing disk: asked again after the timeout.
            tracing::error!(file = %part.display(), error = %e, "cannot stage a plugin chunk");
            return;
        }
        self.fetch_or_apply(gateway).await;
    }

    /// A staged plugin received whole: checked against its pin and moved
    /// into the plugin store.
    fn finish(&self, plugin: &PluginRef, part: &Path) -> Result<(), String> {
        let refuse = |why: String| {
            let _ = std::fs::remove_file(part);
            Err(format!("plugin {} {}: {why}", plugin.name, plugin.version))
        };
        let bytes = match trust::read_bounded(part, plugin.size) {
            Ok(bytes) => bytes,
            Err(e) => return refuse(format!("staged file unreadable: {e}")),
        };
        let sha = trust::sha256_hex(&bytes);
        if sha != plugin.sha256 {
            return refuse(format!(
                "the file received has sha256 {sha}, not the {} the deployment pins (changed in transit or by the sender)",
                plugin.sha256
            ));
        }
        match trust::inspect(&bytes) {
            Ok(seen) => match seen.identity {
                Some(id) if id.name == plugin.name && id.version == plugin.version => {}
                Some(id) => {
                    return refuse(format!("signed as {id}, not as the deployment says"));
                }
                None => return refuse("carries no signed name and version".into()),
            },
            Err(e) => return refuse(format!("not a plugin: {e}")),
        }
        let kept = self.store.plugin_path(&plugin.sha256);
        std::fs::rename(part, &kept)
            .and_then(|()| sync_dir(&kept))
            .map_err(|e| format!("{}: {e}", kept.display()))?;
        tracing::info!(plugin = %plugin.name, version = %plugin.version, sha256 = %plugin.sha256, "plugin received and verified");
        Ok(())
    }

    async fn check_transfer(&mut self, gateway: &mut Gateway) {
        let stalled = (self.pending.as_ref())
            .and_then(|p| p.fetch.as_ref())
            .is_some_and(|f| f.asked.elapsed() >= self.settings.chunk_timeout);
        if stalled {
            tracing::info!("no chunk within the timeout; asking again");
            self.fetch_or_apply(gateway).await;
        }
    }

    /// Every plugin is kept: check and apply the pending deployment.
    async fn apply(&mut self, gateway: &mut Gateway) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let number = pending.deployment.deployment;
        let new_layer = match layer(&pending.deployment, &self.store) {
            Ok(l) => l,
            Err(e) => {
                self.refuse(number, format!("deployment {number}: {e}"), true, gateway);
                return;
            }
        };
        let record = match self.store.keep_document(number, &pending.message) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot keep the deployment document; not applied");
                self.refuse(
                    number,
                    format!("cannot keep the document: {e}"),
                    false,
                    gateway,
                );
                return;
            }
        };
        self.state.highest = self.state.highest.max(number);
        self.state.trial = Some(Trial {
            record: record.clone(),
            phase: Phase::Applying,
            since_ms: crate::reading::now_ms(),
        });
        self.save();
        self.report(gateway);
        tracing::info!(deployment = number, "applying deployment");
        gateway.hold_versions(true);
        match gateway.deploy(Some(new_layer), false).await {
            Err(e) => {
                gateway.hold_versions(false);
                self.state.trial = None;
                self.refuse(number, e, true, gateway);
            }
            Ok(figures) => {
                let changed: Vec<String> = figures
                    .started
                    .iter()
                    .chain(&figures.replaced)
                    .cloned()
                    .collect();
                let window = Duration::from_secs(pending.deployment.health.window_s);
                if let Some(trial) = self.state.trial.as_mut() {
                    trial.phase = Phase::Health;
                    trial.since_ms = crate::reading::now_ms();
                }
                self.save();
                tracing::info!(deployment = number, changed = ?changed, window_s = window.as_secs(), "deployment applied; health window started");
                self.watch = Some(Watch {
                    deployment: pending.deployment,
                    record,
                    changed,
                    deadline: Instant::now() + window,
                });
                self.report(gateway);
                self.check_health(gateway).await;
            }
        }
    }

    async fn check_health(&mut self, gateway: &mut Gateway) {
        let Some(watch) = self.watch.as_ref() else {
            return;
        };
        let good_polls = u64::from(watch.deployment.health.good_polls.max(1));
        let mut failing = Vec::new();
        for name in &watch.changed {
            let Some(counters) = gateway.counters(name) else {
                failing.push(format!("driver {name}: not running"));
                continue;
            };
            let ok = counters.polls_ok.load(std::sync::atomic::Ordering::Relaxed);
            if ok < good_polls {
                let failed = counters
                    .polls_failed
                    .load(std::sync::atomic::Ordering::Relaxed);
                let error = counters
                    .last_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                failing.push(format!(
                    "driver {name}: {ok} of {good_polls} good polls, {failed} failed{}",
                    error
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ));
            }
        }
        if failing.is_empty() {
            self.confirm(gateway).await;
        } else if Instant::now() >= watch.deadline {
            let reason = format!(
                "health window of {} s: {}",
                watch.deployment.health.window_s,
                failing.join("; ")
            );
            self.roll_back(reason, gateway).await;
        }
    }

    async fn confirm(&mut self, gateway: &mut Gateway) {
        let Some(watch) = self.watch.take() else {
            return;
        };
        let number = watch.record.deployment;
        self.state.running = Some(watch.record.clone());
        self.state.trial = None;
        self.state.last = Some(Outcome {
            deployment: number,
            result: Done::Applied,
            reason: None,
            at_ms: crate::reading::now_ms(),
        });
        self.save();
        gateway.hold_versions(false);
        gateway.record_versions();
        self.store
            .collect_garbage(&[(&watch.record, &watch.deployment)]);
        self.running = Some(watch.deployment);
        tracing::info!(
            deployment = number,
            "deployment CONFIRMED: its drivers are healthy"
        );
        self.report(gateway);
        self.take_next(gateway).await;
    }

    async fn roll_back(&mut self, reason: String, gateway: &mut Gateway) {
        let Some(watch) = self.watch.take() else {
            return;
        };
        let number = watch.record.deployment;
        tracing::error!(deployment = number, reason = %reason, "deployment ROLLED BACK: returning to the last confirmed state");
        let previous = match &self.running {
            Some(d) => layer(d, &self.store).map(Some),
            None => Ok(None),
        };
        gateway.hold_versions(false);
        let back = match previous {
            Ok(l) => gateway.deploy(l, true).await,
            Err(e) => Err(e),
        };
        let reason = match back {
            Ok(_) => reason,
            Err(e) => {
                tracing::error!(error = %e, "the last confirmed state could not be restored; restart ferrule to run it");
                format!("{reason}; restoring the previous state failed: {e}")
            }
        };
        self.state.trial = None;
        self.state.last = Some(Outcome {
            deployment: number,
            result: Done::RolledBack,
            reason: Some(reason),
            at_ms: crate::reading::now_ms(),
        });
        self.save();
        self.report(gateway);
        self.take_next(gateway).await;
    }

    async fn take_next(&mut self, gateway: &mut Gateway) {
        if let Some(message) = self.next.take() {
            Box::pin(self.on_document(message, gateway)).await;
        }
    }

    /// Refuses deployment `number`; nothing changes. `verified`: the
    /// number is signed, so it is not taken again.
    fn refuse(&mut self, number: u64, reason: String, verified: bool, gateway: &Gateway) {
        tracing::error!(deployment = number, reason = %reason, "deployment REFUSED: nothing changed");
        if verified {
            self.state.highest = self.state.highest.max(number);
        }
        self.state.last = Some(Outcome {
            deployment: number,
            result: Done::Refused,
            reason: Some(reason),
            at_ms: crate::reading::now_ms(),
        });
        self.save();
        self.report(gateway);
    }

    fn save(&self) {
        if let Err(e) = self.store.save(&self.state) {
            tracing::error!(dir = %self.store.dir().display(), error = %e, "cannot record the deployment state");
        }
        // Every outcome and every phase the state records is audited.
        self.audit.record(
            "deployment",
            serde_json::json!({
                "running": self.state.running.as_ref().map(|r| r.deployment),
                "trial": self.state.trial.as_ref().map(|t| (t.record.deployment, t.phase)),
                "last": self.state.last,
            }),
        );
    }

    fn send(&self, topic: String, payload: Vec<u8>, retain: bool) {
        let out = Outgoing {
            topic,
            payload,
            retain,
        };
        if let Err(e) = self.outbox.try_send(out) {
            tracing::warn!(error = %e, "deployment message not sent: too many waiting");
        }
    }

    fn report(&self, gateway: &Gateway) {
        let (phase, trial) = match (&self.watch, &self.state.trial, &self.pending) {
            (Some(w), ..) => ("health", Some(w.record.deployment)),
            (None, Some(t), _) => ("applying", Some(t.record.deployment)),
            (None, None, Some(p)) => ("fetching", Some(p.deployment.deployment)),
            _ => ("idle", None),
        };
        let transfer = (self.pending.as_ref())
            .and_then(|p| p.fetch.as_ref())
            .map(|f| Transfer {
                plugin: &f.plugin.name,
                sha256: &f.plugin.sha256,
                received: f.offset,
                size: f.plugin.size,
            });
        let report = Report {
            gateway: &self.settings.gateway,
            at_ms: crate::reading::now_ms(),
            running: self.state.running.as_ref().map(|r| r.deployment),
            phase,
            trial,
            transfer,
            last: self.state.last.as_ref(),
            config_sha256: &gateway.config().sha256,
            plugins: gateway
                .plugins()
                .map(|(instance, p)| Running {
                    instance,
                    name: p.identity.as_ref().map(|i| i.name.as_str()),
                    version: p.identity.as_ref().map(|i| i.version.to_string()),
                    sha256: &p.sha256,
                    signer: p.signer.as_deref(),
                })
                .collect(),
        };
        match serde_json::to_vec(&report) {
            Ok(json) => self.send(self.settings.topics.deploy_reported(), json, true),
            Err(e) => tracing::warn!(error = %e, "deployment report not encoded"),
        }
    }
}

/// Writes `data` at `offset` of the staged file (its current end), synced.
fn append(part: &PathBuf, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)?;
    if file.metadata()?.len() != offset {
        return Err(std::io::Error::other(
            "staged file is not at the chunk's offset",
        ));
    }
    file.write_all(data)?;
    file.sync_data()
}

fn sync_dir(file: &Path) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
