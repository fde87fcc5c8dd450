//! Debian's RabbitMQ (3.10, with its `rabbitmq_mqtt` plugin) as a cluster
//! of nodes on loopback: MQTT 3.1.1 over TLS only, client certificates
//! required and mapped to users by their common name. Each node has its own
//! name, ports, config and data directory; the nodes find each other
//! through an Erlang port mapper (epmd) of the cluster's own on a loopback
//! port, so nothing listens beyond 127.0.0.1 and nothing clashes with a
//! RabbitMQ the machine may run. QoS 1 subscriptions of kept sessions are
//! quorum queues (`mqtt.durable_queue_type = quorum`), replicated across
//! the nodes, as a cluster that must survive a node needs. Dropping the
//! cluster kills every node.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferrule::dev::certs::CertFiles;

use crate::{Pki, Process, free_port, log_tail, set_mode, spawn_logged, wait_for_port};

/// One node: its name, ports and, while it runs, its process group.
pub struct RabbitNode {
    pub name: String,
    pub mqtt_port: u16,
    dist_port: u16,
    dir: PathBuf,
    process: Option<Process>,
}

/// The files a node's TLS listener needs: the CA that signs client
/// certificates, and the node's certificate; and the certificate the
/// harness logs in with to see that a node takes MQTT sessions (the
/// subscriber's: its user is always defined).
#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub server: CertFiles,
    pub probe: CertFiles,
}

impl TlsPaths {
    pub fn of(pki: &Pki) -> TlsPaths {
        TlsPaths {
            ca: pki.ca.cert.clone(),
            server: pki.server.clone(),
            probe: pki.subscriber.clone(),
        }
    }
}

/// A RabbitMQ cluster on loopback.
pub struct RabbitCluster {
    pub nodes: Vec<RabbitNode>,
    tls: TlsPaths,
    home: PathBuf,
    epmd_port: u16,
    _epmd: Process,
}

/// How long a node may take to start (a first start creates its database
/// and joins the cluster).
const START_LIMIT: Duration = Duration::from_secs(90);

/// How long a node gets before it is started again, once.
const FIRST_TRY: Duration = Duration::from_secs(60);

impl RabbitCluster {
    /// The `rabbitmq-server` start script of Debian's package, run directly
    /// (the `/usr/sbin` wrapper would switch to the package's system user
    /// and its fixed paths).
    pub fn server_script() -> anyhow::Result<PathBuf> {
        Self::sbin("rabbitmq-server")
    }

    fn sbin(name: &str) -> anyhow::Result<PathBuf> {
        let lib = Path::new("/usr/lib/rabbitmq/lib");
        let found = std::fs::read_dir(lib).ok().and_then(|dirs| {
            dirs.flatten()
                .map(|d| d.path().join("sbin").join(name))
                .find(|p| p.is_file())
        });
        found.with_context(|| {
            format!(
                "RabbitMQ not installed ({name} not under {}); `cargo xtask test` installs it (apt-get install rabbitmq-server)",
                lib.display()
            )
        })
    }

    /// Starts `count` nodes under `dir`, clustered, each with an MQTT TLS
    /// listener that asks for a client certificate signed by the PKI's CA
    /// and takes its common name as the user name. `users` are the common
    /// names allowed in (full permissions on the default vhost), besides
    /// the PKI's gateway and subscriber. Blocks while the nodes start.
    pub fn start(dir: &Path, pki: &Pki, count: usize, users: &[String]) -> anyhow::Result<Self> {
        Self::start_with(dir, &TlsPaths::of(pki), count, users)
    }

    /// Like [`RabbitCluster::start`] with the TLS files as paths (to start
    /// the cluster on a blocking thread).
    pub fn start_with(
        dir: &Path,
        tls: &TlsPaths,
        count: usize,
        users: &[String],
    ) -> anyhow::Result<Self> {
        let script = Self::server_script()?;
        let home = dir.join("rabbit-home");
        std::fs::create_dir_all(&home)?;
        // The nodes and the CLI tools authenticate to each other with the
        // Erlang cookie in $HOME.
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, format!("ferrule-test-{}", std::process::id()))?;
        set_mode(&cookie, 0o400)?;

        let mut names: Vec<String> = vec!["test-gateway".into(), "test-subscriber".into()];
        names.extend(users.iter().cloned());
        let definitions = dir.join("rabbit-definitions.json");
        std::fs::write(
            &definitions,
            serde_json::to_vec_pretty(&definitions_of(&names))?,
        )?;

        let epmd_port = free_port()?;
        let mut epmd = Command::new(epmd_binary()?);
        epmd.args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"]);
        let epmd = spawn_logged("epmd", epmd, dir.join("epmd.log"))?;
        wait_for_port(epmd_port, Duration::from_secs(10))?;

        let stamp = std::process::id();
        let mut nodes = Vec::new();
        for i in 1..=count {
            let node_dir = dir.join(format!("rabbit{i}"));
            std::fs::create_dir_all(&node_dir)?;
            nodes.push(RabbitNode {
                name: format!("ferrule{stamp}n{i}@localhost"),
                mqtt_port: free_port()?,
                dist_port: free_port()?,
                dir: node_dir,
                process: None,
            });
        }
        let peers: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        for node in &nodes {
            std::fs::write(
                node.dir.join("rabbitmq.conf"),
                node_config(node, tls, &peers, &definitions),
            )?;
            std::fs::write(node.dir.join("enabled_plugins"), "[rabbitmq_mqtt].\n")?;
        }
        let mut cluster = RabbitCluster {
            nodes,
            tls: tls.clone(),
            home,
            epmd_port,
            _epmd: epmd,
        };
        // The first node alone, then the others together, joining it. Its
        // peers unreachable, the first node forms the cluster, and the MQTT
        // plugin's client-id registry with it; nodes started all at once
        // are often left without a registry leader, refusing every client.
        cluster.spawn(0, &script)?;
        cluster.ready_or_restarted(0, &script)?;
        for i in 1..count {
            cluster.spawn(i, &script)?;
        }
        for i in 1..count {
            cluster.ready_or_restarted(i, &script)?;
        }
        Ok(cluster)
    }

    /// Waits for node `i`; one that is not up within [`FIRST_TRY`] is
    /// started again, once. A node can stay stuck in the election of the
    /// MQTT plugin's client-id registry when the cluster's nodes start
    /// together on a busy machine; started again, it joins the registry
    /// its peers formed meanwhile.
    fn ready_or_restarted(&mut self, i: usize, script: &Path) -> anyhow::Result<()> {
        let Err(stuck) = self.wait_ready_within(i, FIRST_TRY) else {
            return Ok(());
        };
        eprintln!("{stuck:#}\nstarting it again");
        self.kill(i);
        self.spawn(i, script)?;
        self.wait_ready(i)
    }

    fn spawn(&mut self, i: usize, script: &Path) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let mut command = Command::new(script);
        command
            .env("HOME", &self.home)
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                node.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            // Its own process group: the start script, the Erlang VM and
            // its helpers go together on a kill.
            .process_group(0);
        let log = node.dir.join(format!(
            "node-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        ));
        let process = spawn_logged("rabbitmq", command, log)?;
        self.nodes[i].process = Some(process);
        Ok(())
    }

    /// Waits until node `i` takes MQTT sessions.
    pub fn wait_ready(&self, i: usize) -> anyhow::Result<()> {
        self.wait_ready_within(i, START_LIMIT)
    }

    /// Ready is a CONNECT answered with an accepting CONNACK. A node logs
    /// its startup complete and opens its port before the MQTT plugin's
    /// client-id registry has a leader, and until it has one the node
    /// closes every new MQTT connection.
    fn wait_ready_within(&self, i: usize, limit: Duration) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let started = Instant::now();
        let mut refused = None;
        loop {
            let log = node.log_text();
            if log.contains("Server startup complete")
                && wait_for_port(node.mqtt_port, Duration::from_millis(200)).is_ok()
            {
                match self.takes_a_session(i) {
                    Ok(()) => return Ok(()),
                    Err(e) => refused = Some(e),
                }
            }
            if started.elapsed() > limit {
                let refused = refused.map_or_else(String::new, |e| format!(" (MQTT: {e:#})"));
                bail!(
                    "RabbitMQ node {} not ready within {limit:?}{refused}; its log ends:\n{}",
                    node.name,
                    log_tail(&log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// One MQTT session on node `i` with a clean session and an id of
    /// its own, opened and closed; an error if the node does not accept it
    /// within 5 s. Runs on a runtime of its own: the harness starts nodes
    /// on blocking threads.
    fn takes_a_session(&self, i: usize) -> anyhow::Result<()> {
        use rumqttc::{AsyncClient, ConnectReturnCode, Event, Packet};

        let mut options = crate::tls_client(
            crate::unique_client_id("ferrule-probe"),
            self.nodes[i].mqtt_port,
            &self.tls.ca,
            &self.tls.probe,
        )?;
        options.set_clean_session(true);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let (client, mut events) = AsyncClient::new(options, 4);
            let answer = tokio::time::timeout(Duration::from_secs(5), events.poll()).await;
            match answer {
                Ok(Ok(Event::Incoming(Packet::ConnAck(ack))))
                    if ack.code == ConnectReturnCode::Success =>
                {
                    let _ = client.try_disconnect();
                    let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
                    Ok(())
                }
                Ok(Ok(other)) => bail!("answered {other:?} to CONNECT"),
                Ok(Err(e)) => bail!("{e}"),
                Err(_) => bail!("no CONNACK within 5 s"),
            }
        })
    }

    /// The MQTT ports of the nodes, in order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.mqtt_port).collect()
    }

    /// Kills node `i` (SIGKILL to its whole process group): its clients'
    /// connections drop without a goodbye, as when a broker host dies.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.nodes[i].process.take() {
            kill_group(&mut process);
        }
    }

    /// Starts node `i` again after [`RabbitCluster::kill`] and waits until
    /// it is back in the cluster and serving MQTT.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let script = Self::server_script()?;
        self.kill(i);
        self.spawn(i, &script)?;
        self.ready_or_restarted(i, &script)
    }

    /// `rabbitmqctl` against node `i`.
    pub fn ctl(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(Self::sbin("rabbitmqctl")?)
            .env("HOME", &self.home)
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .args(["-n", &self.nodes[i].name, "-q"])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The resident memory of node `i`'s Erlang VM, in KiB.
    pub fn node_rss_kib(&self, i: usize) -> anyhow::Result<u64> {
        let pid = self.beam_pid(i)?;
        crate::rss_kib(pid)
    }

    /// The process id of node `i`'s Erlang VM (a child of its start script).
    pub fn beam_pid(&self, i: usize) -> anyhow::Result<u32> {
        let script = self.nodes[i]
            .process
            .as_ref()
            .with_context(|| format!("node {} is not running", self.nodes[i].name))?
            .child
            .id();
        let children = std::fs::read_to_string(format!("/proc/{script}/task/{script}/children"))?;
        children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "beam.smp")
            })
            .with_context(|| {
                format!(
                    "no Erlang VM under node {}'s start script",
                    self.nodes[i].name
                )
            })
    }
}

impl RabbitNode {
    pub fn log_text(&self) -> String {
        self.process
            .as_ref()
            .map(Process::log_text)
            .unwrap_or_default()
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

fn kill_group(process: &mut Process) {
    let group = format!("-{}", process.child.id());
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    process.kill9();
}

fn epmd_binary() -> anyhow::Result<PathBuf> {
    let candidates = ["/usr/lib/erlang/bin/epmd", "/usr/bin/epmd"];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("epmd not found (it comes with rabbitmq-server's Erlang runtime)")
}

/// Users for the client certificates' common names: no password (they
/// log in by certificate only), full permissions on the default vhost.
fn definitions_of(users: &[String]) -> serde_json::Value {
    serde_json::json!({
        "vhosts": [{"name": "/"}],
        "users": users.iter().map(|u| serde_json::json!({
            "name": u,
            "password_hash": "",
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": [],
        })).collect::<Vec<_>>(),
        "permissions": users.iter().map(|u| serde_json::json!({
            "user": u, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*",
        })).collect::<Vec<_>>(),
    })
}

fn node_config(node: &RabbitNode, tls: &TlsPaths, peers: &[String], definitions: &Path) -> String {
    let mut text = format!(
        "listeners.tcp = none\n\
         mqtt.listeners.tcp = none\n\
         mqtt.listeners.ssl.default = 127.0.0.1:{port}\n\
         ssl_options.cacertfile = {ca}\n\
         ssl_options.certfile = {cert}\n\
         ssl_options.keyfile = {key}\n\
         ssl_options.verify = verify_peer\n\
         ssl_options.fail_if_no_peer_cert = true\n\
         ssl_options.versions.1 = tlsv1.3\n\
         ssl_options.versions.2 = tlsv1.2\n\
         mqtt.ssl_cert_login = true\n\
         ssl_cert_login_from = common_name\n\
         mqtt.allow_anonymous = false\n\
         mqtt.durable_queue_type = quorum\n\
         loopback_users = none\n\
         load_definitions = {definitions}\n\
         log.console = true\n\
         log.console.level = info\n\
         log.file = false\n\
         cluster_formation.peer_discovery_backend = classic_config\n",
        port = node.mqtt_port,
        ca = tls.ca.display(),
        cert = tls.server.cert.display(),
        key = tls.server.key.display(),
        definitions = definitions.display(),
    );
    for (i, peer) in peers.iter().enumerate() {
        text.push_str(&format!(
            "cluster_formation.classic_config.nodes.{} = {peer}\n",
            i + 1
        ));
    }
    text
}
