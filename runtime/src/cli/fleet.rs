//! `ferrule fleet`: the operator's side of deployments (docs/fleet.md).
//!
//! `deploy` signs a state file's deployment, publishes it retained on the
//! target's `deploy/desired` topic, serves the plugin chunks gateways ask
//! for and exits with their reported outcome; `status` prints a gateway's
//! retained report; `erase` and `command` sign an erasure order or a
//! command and print the gateway's answer; `sign` and `verify` work on
//! files, offline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use ferrule::config::MqttConfig;
use ferrule::deploy::{self, Target};
use ferrule::publish::{TlsFiles, Topics};
use serde::Deserialize;

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Sign a state file's deployment, publish it to a gateway (or a
    /// group), serve the plugins it fetches, and wait for its outcome.
    Deploy {
        /// The operator's file: `[operator] key` and the `[mqtt]` broker.
        #[arg(long)]
        bootstrap: PathBuf,
        /// The gateway to deploy to (or, with --group, one to wait for;
        /// repeat for several).
        #[arg(long)]
        gateway: Vec<String>,
        /// Deploy to every gateway of this group.
        #[arg(long)]
        group: Option<String>,
        /// How long to wait for the gateways' outcome.
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        wait: Duration,
        /// The state file (TOML).
        state: PathBuf,
    },
    /// Serve the plugin files of a directory to every gateway that asks
    /// (a replacement gateway fetching its fleet's state, a group
    /// deployment's late joiners), until stopped.
    Serve {
        /// The operator's file (its `[mqtt]` broker).
        #[arg(long)]
        bootstrap: PathBuf,
        /// The directory of signed plugin files (`*.wasm`).
        #[arg(long)]
        plugins: PathBuf,
        /// Stop after this long (default: run until stopped).
        #[arg(long, value_parser = humantime::parse_duration)]
        until: Option<Duration>,
    },
    /// Print a gateway's reported deployment state.
    Status {
        /// The operator's file (its `[mqtt]` broker).
        #[arg(long)]
        bootstrap: PathBuf,
        #[arg(long)]
        gateway: String,
        /// Print the report's JSON.
        #[arg(long)]
        json: bool,
        /// How long to wait for the retained report.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Sign an erasure order with the operator key, send it to a gateway
    /// (`{prefix}/{gateway}/data/erase`) and print its answer: what it
    /// erased, or why it refused.
    Erase {
        /// The operator's file: `[operator] key` and the `[mqtt]` broker.
        #[arg(long)]
        bootstrap: PathBuf,
        #[arg(long)]
        gateway: String,
        #[command(flatten)]
        what: super::EraseArgs,
        /// The order's number (must rise per gateway); the time in ms
        /// when absent.
        #[arg(long)]
        number: Option<u64>,
        /// How long to wait for the answer.
        #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Sign a command (a write to one channel of one driver) with the
    /// operator key, send it to a gateway and print its result: the value
    /// the device holds afterwards, or why it was refused.
    Command {
        /// The operator's file: `[operator] key` and the `[mqtt]` broker.
        #[arg(long)]
        bootstrap: PathBuf,
        #[arg(long)]
        gateway: String,
        #[arg(long)]
        driver: String,
        #[arg(long)]
        channel: String,
        /// The value: JSON (`1200`, `21.5`, `true`, `"auto"`), or else
        /// taken as a string (`auto`).
        #[arg(long)]
        value: String,
        /// The command's id, unique per gateway; a new one when absent.
        #[arg(long)]
        id: Option<String>,
        /// How long to wait for the result.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Build a deployment document from a state file (drivers, and the
    /// signed plugin files they use) and sign it with an operator key.
    Sign {
        /// The operator's secret key (`ferrule plugin keygen`).
        #[arg(long)]
        key: PathBuf,
        /// For this gateway (instead of the state file's target).
        #[arg(long, conflicts_with = "group")]
        gateway: Option<String>,
        /// For this group (instead of the state file's target).
        #[arg(long)]
        group: Option<String>,
        /// Where to write the signed document; stdout when absent.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// The state file (TOML).
        state: PathBuf,
    },
    /// Check a signed deployment document as a gateway would: the
    /// signature against the operator keys, the target, the number.
    Verify {
        /// A trusted operator public key (repeat for several).
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        /// The gateway id to check it for.
        #[arg(long)]
        gateway: String,
        /// A group the gateway belongs to (repeat for several).
        #[arg(long)]
        group: Vec<String>,
        /// The deployment number the gateway has applied.
        #[arg(long)]
        applied: Option<u64>,
        file: PathBuf,
    },
}

pub async fn run(command: FleetCommand) -> anyhow::Result<()> {
    match command {
        FleetCommand::Deploy {
            bootstrap,
            gateway,
            group,
            wait,
            state,
        } => deploy(&bootstrap, gateway, group, wait, &state).await,
        FleetCommand::Status {
            bootstrap,
            gateway,
            json,
            wait,
        } => status(&bootstrap, &gateway, json, wait).await,
        FleetCommand::Erase {
            bootstrap,
            gateway,
            what,
            number,
            wait,
        } => {
            let selector = what.selector()?;
            let order = ferrule::erase::Order {
                schema: ferrule::erase::SCHEMA,
                erase: number.unwrap_or_else(ferrule::reading::now_ms),
                gateway,
                issued_ms: ferrule::reading::now_ms(),
                driver: selector.driver,
                before_ms: selector.before_ns.map(|ns| ns / 1_000_000),
                all: selector.all,
            };
            erase(&bootstrap, &order, wait).await
        }
        FleetCommand::Command {
            bootstrap,
            gateway,
            driver,
            channel,
            value,
            id,
            wait,
        } => {
            let value = serde_json::from_str::<serde_json::Value>(&value)
                .ok()
                .filter(|v| !(v.is_object() || v.is_array() || v.is_null()))
                .unwrap_or(serde_json::Value::String(value));
            let issued_ms = ferrule::reading::now_ms();
            let command = ferrule::remote::SignedCommand {
                schema: ferrule::remote::authority::SCHEMA,
                kind: ferrule::remote::authority::KIND.to_string(),
                gateway,
                driver,
                channel,
                value,
                id: id.unwrap_or_else(|| format!("op-{issued_ms}-{}", std::process::id())),
                issued_ms,
            };
            send_command(&bootstrap, &command, wait).await
        }
        FleetCommand::Serve {
            bootstrap,
            plugins,
            until,
        } => serve_dir(&bootstrap, &plugins, until).await,
        FleetCommand::Sign {
            key,
            gateway,
            group,
            output,
            state,
        } => {
            let target = match (gateway, group) {
                (Some(id), _) => Some(Target::Gateway(id)),
                (None, Some(g)) => Some(Target::Group(g)),
                (None, None) => None,
            };
            let (deployment, _) =
                deploy::from_state_file(&state, target).map_err(anyhow::Error::msg)?;
            let envelope = deploy::sign(&deployment, &key).map_err(anyhow::Error::msg)?;
            let json = serde_json::to_vec(&envelope)?;
            match &output {
                Some(path) => ferrule::plugin::trust::write_atomically(path, &json, None)
                    .with_context(|| format!("{}: cannot write", path.display()))?,
                None => println!("{}", String::from_utf8_lossy(&json)),
            }
            eprintln!(
                "deployment {} for {}: {} plugin(s), {} driver(s); signed by key id {}",
                deployment.deployment,
                describe(&deployment.target),
                deployment.plugins.len(),
                deployment.drivers.len(),
                envelope.key_id
            );
            Ok(())
        }
        FleetCommand::Verify {
            key,
            gateway,
            group,
            applied,
            file,
        } => {
            let keys = ferrule::plugin::trust::public_keys(&key).map_err(anyhow::Error::msg)?;
            let message = std::fs::read(&file).with_context(|| format!("{}", file.display()))?;
            let to = deploy::Recipient {
                gateway: &gateway,
                groups: &group,
                applied,
                keys: &keys,
            };
            let deployment = deploy::verify(&message, &to)
                .map_err(|e| anyhow::anyhow!("{}: refused: {e}", file.display()))?;
            println!(
                "{}: deployment {} accepted for gateway {gateway}: {} plugin(s), {} driver(s)",
                file.display(),
                deployment.deployment,
                deployment.plugins.len(),
                deployment.drivers.len()
            );
            for p in &deployment.plugins {
                println!(
                    "  plugin {} {} sha256 {} ({} bytes)",
                    p.name, p.version, p.sha256, p.size
                );
            }
            Ok(())
        }
    }
}

fn describe(target: &Target) -> String {
    match target {
        Target::Gateway(id) => format!("gateway {id}"),
        Target::Group(group) => format!("group {group}"),
    }
}

/// The operator's file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorFile {
    #[serde(default)]
    operator: OperatorSection,
    mqtt: MqttConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorSection {
    /// The operator's secret key, relative to the file.
    key: Option<PathBuf>,
    /// The MQTT client id; `ferrule-operator-{pid}` when absent.
    client_id: Option<String>,
}

struct Operator {
    file: OperatorFile,
    dir: PathBuf,
}

impl Operator {
    fn load(path: &Path) -> anyhow::Result<Operator> {
        let bytes = ferrule::plugin::trust::read_bounded(path, 1 << 20)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))?;
        let file: OperatorFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Ok(Operator { file, dir })
    }

    fn resolve(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    fn topics(&self, gateway: &str) -> Topics {
        Topics::new(&self.file.mqtt.topic_prefix, gateway)
    }

    /// Signs `(document, what it is)` with the operator's key (`[operator]
    /// key`), publishes it on `topic` once subscribed to `answers`, prints
    /// the first JSON answer there that `ours` recognizes, and returns it
    /// unless it says `"ok": true`. `(what, wait)`: what is sent, for
    /// messages, and how long an answer is waited for.
    async fn send_signed(
        &self,
        (document, signs): (Vec<u8>, &str),
        (topic, answers): (&str, &str),
        ours: impl Fn(&serde_json::Value) -> bool,
        (what, wait): (&str, Duration),
    ) -> anyhow::Result<Option<serde_json::Value>> {
        let key = (self.file.operator.key.as_ref())
            .map(|k| self.dir.join(k))
            .with_context(|| format!("[operator] key: the operator's secret key signs {signs}"))?;
        let envelope = deploy::sign_document(document, &key).map_err(anyhow::Error::msg)?;
        let payload = serde_json::to_vec(&envelope)?;
        let (client, mut events) = self.connect()?;
        let deadline = Instant::now() + wait;
        loop {
            let event = tokio::select! {
                event = events.poll() => event,
                _ = tokio::time::sleep_until(deadline.into()) => anyhow::bail!(
                    "{what}: no answer on {answers} within {} (is the gateway connected, with [trust] operator_keys?)",
                    humantime::format_duration(wait)
                ),
            };
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    client.try_subscribe(answers, rumqttc::QoS::AtLeastOnce)?;
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    client.try_publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.clone())?;
                    eprintln!("{what}: sent (signed by key id {})", envelope.key_id);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) if p.topic == answers => {
                    let answer: serde_json::Value =
                        serde_json::from_slice(&p.payload).context("the answer is not JSON")?;
                    if ours(&answer) {
                        let _ = client.try_disconnect();
                        println!("{}", serde_json::to_string_pretty(&answer)?);
                        let ok = answer["ok"].as_bool() == Some(true);
                        return Ok((!ok).then_some(answer));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("broker connection: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// A connection to the first broker (a fleet operator's own link; the
    /// gateways keep theirs).
    fn connect(&self) -> anyhow::Result<(rumqttc::AsyncClient, rumqttc::EventLoop)> {
        let m = &self.file.mqtt;
        let tls = ferrule::publish::tls::client_config(&TlsFiles {
            ca: self.resolve(m.ca_file.get_ref()),
            client_cert: m
                .client_cert_file
                .as_ref()
                .map(|f| self.resolve(f.get_ref())),
            client_key: m.client_key(|f| self.resolve(f)),
        })?;
        let client_id = (self.file.operator.client_id.clone())
            .unwrap_or_else(|| format!("ferrule-operator-{}", std::process::id()));
        let mut options = rumqttc::MqttOptions::new(client_id, &m.host, m.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(2 << 20, 2 << 20)
            .set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        if let Some(user) = &m.username {
            let password = match &m.password_file {
                Some(f) => std::fs::read_to_string(self.resolve(f.get_ref()))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                None => String::new(),
            };
            options.set_credentials(user, password);
        }
        Ok(rumqttc::AsyncClient::new(options, 64))
    }
}

/// What a gateway last reported, as far as `deploy` follows it.
#[derive(Debug, Default, Deserialize)]
struct Report {
    #[serde(default)]
    phase: String,
    trial: Option<u64>,
    transfer: Option<Transfer>,
    last: Option<Outcome>,
}

#[derive(Debug, Deserialize)]
struct Transfer {
    plugin: String,
    received: u64,
    size: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct Outcome {
    deployment: u64,
    result: String,
    reason: Option<String>,
}

/// A chunk request from a gateway.
#[derive(Debug, Deserialize)]
struct ChunkRequest {
    sha256: String,
    offset: u64,
    len: u64,
}

/// The largest chunk served, whatever a gateway asks for.
const MAX_CHUNK: u64 = ferrule::config::MAX_CHUNK_BYTES as u64;

async fn deploy(
    bootstrap: &Path,
    gateways: Vec<String>,
    group: Option<String>,
    wait: Duration,
    state: &Path,
) -> anyhow::Result<()> {
    let operator = Operator::load(bootstrap)?;
    let target = match (&group, gateways.as_slice()) {
        (Some(g), _) => Some(Target::Group(g.clone())),
        (None, [one]) => Some(Target::Gateway(one.clone())),
        (None, []) => None,
        (None, _) => anyhow::bail!("deploy to one --gateway, or to a --group"),
    };
    let (deployment, files) = deploy::from_state_file(state, target).map_err(anyhow::Error::msg)?;
    let key = match &operator.file.operator.key {
        Some(k) => operator.dir.join(k),
        None => anyhow::bail!("{}: [operator] key is not set", bootstrap.display()),
    };
    let envelope = deploy::sign(&deployment, &key).map_err(anyhow::Error::msg)?;
    let number = deployment.deployment;
    let plugins: BTreeMap<String, (PathBuf, u64)> = (deployment.plugins.iter())
        .zip(files)
        .map(|(p, f)| (p.sha256.clone(), (f, p.size)))
        .collect();
    // Whom to wait for.
    let mut waiting: Vec<String> = match &deployment.target {
        Target::Gateway(id) => vec![id.clone()],
        Target::Group(_) => gateways,
    };
    let prefix = operator.file.mqtt.topic_prefix.clone();
    let (desired, fetch, reported) = match &deployment.target {
        Target::Gateway(id) => {
            let t = operator.topics(id);
            (t.deploy_desired(), t.deploy_fetch(), t.deploy_reported())
        }
        Target::Group(g) => (
            operator.topics("+").group_desired(g),
            operator.topics("+").deploy_fetch(),
            operator.topics("+").deploy_reported(),
        ),
    };
    eprintln!(
        "deployment {number} for {}: {} plugin(s), {} driver(s), signed by key id {}",
        describe(&deployment.target),
        deployment.plugins.len(),
        deployment.drivers.len(),
        envelope.key_id
    );
    let (client, mut events) = operator.connect()?;
    let message = serde_json::to_vec(&envelope)?;
    let mut published = false;
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_line: BTreeMap<String, String> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    let deadline = Instant::now() + wait;
    // A group deployment without named members waits the whole time and
    // reports every gateway that answered.
    let named = !waiting.is_empty();
    loop {
        if named && waiting.iter().all(|g| outcomes.contains_key(g)) {
            break;
        }
        let event = tokio::select! {
            event = events.poll() => event,
            _ = tokio::time::sleep_until(deadline.into()) => break,
        };
        match event {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                client
                    .try_subscribe(fetch.clone(), rumqttc::QoS::AtLeastOnce)
                    .and_then(|()| {
                        client.try_subscribe(reported.clone(), rumqttc::QoS::AtLeastOnce)
                    })
                    .context("subscribe")?;
                if !published {
                    client
                        .try_publish(
                            desired.clone(),
                            rumqttc::QoS::AtLeastOnce,
                            true,
                            message.clone(),
                        )
                        .context("publish the deployment")?;
                    published = true;
                    eprintln!("published on {desired} (retained)");
                }
            }
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                let Some(gateway) = gateway_of(&p.topic, &prefix) else {
                    continue;
                };
                if p.topic.ends_with("/deploy/fetch") {
                    let served = serve(&operator, &client, gateway, &p.payload, &plugins);
                    match served {
                        Ok(bytes) => *sent.entry(gateway.to_string()).or_default() += bytes,
                        Err(e) => eprintln!("{gateway}: chunk request not served: {e}"),
                    }
                } else if let Ok(report) = serde_json::from_slice::<Report>(&p.payload) {
                    follow(
                        gateway,
                        number,
                        &report,
                        &sent,
                        &mut last_line,
                        &mut outcomes,
                    );
                    if !named
                        && !waiting.iter().any(|g| g == gateway)
                        && outcomes.contains_key(gateway)
                    {
                        waiting.push(gateway.to_string());
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("broker connection: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let _ = client.try_disconnect();
    let mut failed = Vec::new();
    for gateway in &waiting {
        match outcomes.get(gateway) {
            Some(o) if o.result == "applied" => {}
            Some(o) => failed.push(format!(
                "{gateway}: {} ({})",
                o.result,
                o.reason.as_deref().unwrap_or("no reason given")
            )),
            None => failed.push(format!(
                "{gateway}: no outcome within {}",
                humantime::format_duration(wait)
            )),
        }
    }
    if waiting.is_empty() {
        anyhow::bail!(
            "deployment {number}: no gateway reported an outcome within {}",
            humantime::format_duration(wait)
        );
    }
    if !failed.is_empty() {
        anyhow::bail!("deployment {number} not applied: {}", failed.join("; "));
    }
    println!("deployment {number}: applied on {}", waiting.join(", "));
    Ok(())
}

/// Serves every `*.wasm` in `dir` by hash to any gateway asking.
async fn serve_dir(bootstrap: &Path, dir: &Path, until: Option<Duration>) -> anyhow::Result<()> {
    let operator = Operator::load(bootstrap)?;
    let mut plugins = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            let sha = ferrule::plugin::trust::sha256_file(&path)
                .with_context(|| path.display().to_string())?;
            let size = std::fs::metadata(&path)?.len();
            plugins.insert(sha, (path, size));
        }
    }
    eprintln!(
        "serving {} plugin file(s) from {}",
        plugins.len(),
        dir.display()
    );
    let prefix = operator.file.mqtt.topic_prefix.clone();
    let fetch = operator.topics("+").deploy_fetch();
    let (client, mut events) = operator.connect()?;
    let stop = async {
        match until {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let event = tokio::select! {
            event = events.poll() => event,
            _ = &mut stop => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        match event {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                client.try_subscribe(fetch.clone(), rumqttc::QoS::AtLeastOnce)?;
            }
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                let Some(gateway) = gateway_of(&p.topic, &prefix) else {
                    continue;
                };
                match serve(&operator, &client, gateway, &p.payload, &plugins) {
                    Ok(bytes) => *sent.entry(gateway.to_string()).or_default() += bytes,
                    Err(e) => eprintln!("{gateway}: chunk request not served: {e}"),
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("broker connection: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let _ = client.try_disconnect();
    for (gateway, bytes) in &sent {
        eprintln!("{gateway}: {bytes} bytes served");
    }
    Ok(())
}

/// The gateway a topic `{prefix}/{gateway}/deploy/…` is about.
fn gateway_of<'t>(topic: &'t str, prefix: &str) -> Option<&'t str> {
    topic
        .strip_prefix(prefix)?
        .strip_prefix('/')?
        .split('/')
        .next()
}

/// Sends the chunk a gateway asked for; the bytes sent.
fn serve(
    operator: &Operator,
    client: &rumqttc::AsyncClient,
    gateway: &str,
    request: &[u8],
    plugins: &BTreeMap<String, (PathBuf, u64)>,
) -> anyhow::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let request: ChunkRequest = serde_json::from_slice(request).context("malformed request")?;
    let Some((file, size)) = plugins.get(&request.sha256) else {
        anyhow::bail!(
            "sha256 {} is not a plugin of this deployment",
            request.sha256
        );
    };
    if request.offset >= *size {
        anyhow::bail!(
            "offset {} is past the plugin's {size} bytes",
            request.offset
        );
    }
    let len = request.len.min(MAX_CHUNK).min(size - request.offset);
    let mut f = std::fs::File::open(file).with_context(|| file.display().to_string())?;
    f.seek(SeekFrom::Start(request.offset))?;
    let mut data = vec![0; usize::try_from(len)?];
    f.read_exact(&mut data)?;
    let topic = operator
        .topics(gateway)
        .deploy_chunk(&request.sha256, request.offset);
    client
        .try_publish(topic, rumqttc::QoS::AtLeastOnce, false, data)
        .context("publish a chunk")?;
    Ok(len)
}

/// Prints a gateway's progress on deployment `number`; notes its outcome.
fn follow(
    gateway: &str,
    number: u64,
    report: &Report,
    sent: &BTreeMap<String, u64>,
    last_line: &mut BTreeMap<String, String>,
    outcomes: &mut BTreeMap<String, Outcome>,
) {
    let line = match (&report.last, report.trial) {
        (Some(o), _) if o.deployment == number && report.trial != Some(number) => {
            outcomes.insert(gateway.to_string(), o.clone());
            match &o.reason {
                Some(why) => format!("{}: {why}", o.result.to_uppercase()),
                None => o.result.to_uppercase(),
            }
        }
        (_, Some(t)) if t == number => match &report.transfer {
            Some(f) if report.phase == "fetching" => format!(
                "fetching {}: {}/{} bytes ({} sent)",
                f.plugin,
                f.received,
                f.size,
                sent.get(gateway).copied().unwrap_or(0)
            ),
            _ => report.phase.clone(),
        },
        _ => return,
    };
    if last_line.get(gateway) != Some(&line) {
        eprintln!("{gateway}: deployment {number}: {line}");
        last_line.insert(gateway.to_string(), line);
    }
}

/// Sends a signed erasure order and prints the gateway's answer.
async fn erase(
    bootstrap: &Path,
    order: &ferrule::erase::Order,
    wait: Duration,
) -> anyhow::Result<()> {
    let operator = Operator::load(bootstrap)?;
    let topics = operator.topics(&order.gateway);
    let what = format!("erasure order {} to {}", order.erase, order.gateway);
    let refused = operator
        .send_signed(
            (serde_json::to_vec(order)?, "erasure orders"),
            (&topics.data_erase(), &topics.data_erase_result()),
            |answer| answer["erase"].as_u64() == Some(order.erase),
            (&what, wait),
        )
        .await?;
    match refused {
        None => Ok(()),
        Some(answer) => anyhow::bail!(
            "{}: erasure order {} not carried out: {}",
            order.gateway,
            order.erase,
            answer["error"].as_str().unwrap_or("no reason given")
        ),
    }
}

/// Sends a signed command and prints the gateway's result.
async fn send_command(
    bootstrap: &Path,
    command: &ferrule::remote::SignedCommand,
    wait: Duration,
) -> anyhow::Result<()> {
    let operator = Operator::load(bootstrap)?;
    let topics = operator.topics(&command.gateway);
    let what = format!(
        "command {} ({} = {} on driver {} of {})",
        command.id, command.channel, command.value, command.driver, command.gateway
    );
    let refused = operator
        .send_signed(
            (serde_json::to_vec(command)?, "commands"),
            (
                &topics.command_write(&command.driver),
                &topics.command_result(&command.driver),
            ),
            |answer| answer["id"].as_str() == Some(command.id.as_str()),
            (&what, wait),
        )
        .await?;
    match refused {
        None => Ok(()),
        Some(answer) => anyhow::bail!(
            "{}: command {} {}: {}",
            command.gateway,
            command.id,
            match answer["refused"].as_str() {
                Some(code) => format!("refused ({code})"),
                None => "failed".to_string(),
            },
            answer["error"].as_str().unwrap_or("no reason given")
        ),
    }
}

async fn status(bootstrap: &Path, gateway: &str, json: bool, wait: Duration) -> anyhow::Result<()> {
    let operator = Operator::load(bootstrap)?;
    let topic = operator.topics(gateway).deploy_reported();
    let (client, mut events) = operator.connect()?;
    let deadline = Instant::now() + wait;
    loop {
        let event = tokio::select! {
            event = events.poll() => event,
            _ = tokio::time::sleep_until(deadline.into()) => anyhow::bail!("{gateway}: no deployment report on {topic} within {}", humantime::format_duration(wait)),
        };
        match event {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                client.try_subscribe(topic.clone(), rumqttc::QoS::AtLeastOnce)?;
            }
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) if p.topic == topic => {
                let _ = client.try_disconnect();
                let report: serde_json::Value =
                    serde_json::from_slice(&p.payload).context("the report is not JSON")?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print_report(gateway, &report);
                }
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("broker connection: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn print_report(gateway: &str, r: &serde_json::Value) {
    let field = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("gateway     {gateway}");
    println!("running     deployment {}", field(&r["running"]));
    println!("phase       {}", field(&r["phase"]));
    if !r["trial"].is_null() {
        println!("trial       deployment {}", field(&r["trial"]));
    }
    let last = &r["last"];
    if !last.is_null() {
        println!(
            "last        deployment {}: {}{}",
            field(&last["deployment"]),
            field(&last["result"]),
            last["reason"]
                .as_str()
                .map(|why| format!(" ({why})"))
                .unwrap_or_default()
        );
    }
    println!("config      sha256 {}", field(&r["config_sha256"]));
    for p in r["plugins"].as_array().into_iter().flatten() {
        println!(
            "plugin      {:<20} {} {} sha256 {} signer {}",
            field(&p["instance"]),
            field(&p["name"]),
            field(&p["version"]),
            field(&p["sha256"]),
            field(&p["signer"])
        );
    }
}
