//! Helpers for ferrule's integration tests: where the built binary and
//! plugins are, and real peers (mosquitto, the ferrule process, a TLS
//! subscriber) started on loopback and stopped when dropped.
//!
//! The binary and the plugins are built by `cargo xtask test` before the
//! tests run; the helpers fail with a message saying so when they are missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod net;
pub mod rabbit;

use anyhow::{Context, bail};
use ferrule::dev::certs::{CertFiles, DevCa};
pub use ferrule::dev::config::{GatewayToml, PluginToml};
use ferrule::publish::{TlsFiles, tls};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The shared cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The `ferrule` binary built in the same profile as the tests.
pub fn ferrule_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("FERRULE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let bin = profile_bin("ferrule")?;
    if !bin.is_file() {
        bail!(
            "{} not found; build it first (`cargo xtask test` does, or `cargo build -p ferrule`)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A binary of the workspace built in the same profile as the running
/// executable: a test (in `target/<profile>/deps/`) or a benchmark binary
/// (in `target/<profile>/`).
pub fn profile_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("cannot locate the target directory from the running executable")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("no profile directory above deps/")?;
    }
    Ok(dir.join(name))
}

/// A plugin component built by `cargo xtask plugins`.
pub fn plugin(name: &str) -> anyhow::Result<PathBuf> {
    let path = target_dir()
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    if !path.is_file() {
        bail!(
            "{} not found; build the plugins first (`cargo xtask plugins`)",
            path.display()
        );
    }
    Ok(path)
}

/// A Python or JavaScript plugin built by `cargo xtask guest-plugins`
/// (`py-sim`, `js-scale`, `py-hostile`, ...).
pub fn guest_plugin(name: &str) -> anyhow::Result<PathBuf> {
    let path = target_dir()
        .join("guest-plugins")
        .join(format!("{name}.wasm"));
    if !path.is_file() {
        bail!(
            "{} not found; build the guest plugins first (`cargo xtask guest-plugins`)",
            path.display()
        );
    }
    Ok(path)
}

/// What `ferrule demo` started by a test takes for the user's cache
/// folder (it keeps compiled plugins there): under the target directory,
/// never the home of whoever runs the tests.
pub fn test_cache_home() -> PathBuf {
    target_dir().join("test-cache-home")
}

/// A compile cache shared by every test gateway of a run, so a 12–19 MB
/// guest-language component is compiled once, not once per test.
pub fn shared_compile_cache() -> PathBuf {
    target_dir().join("guest-plugins").join("compiled")
}

/// A plugin as an older ferrule SDK built it, kept in `tests/fixtures`
/// (`abi` is the package version, e.g. `0.1.0`; `name` the plugin): every
/// ABI a ferrule ever shipped must keep loading.
pub fn old_plugin(abi: &str, name: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("abi-{abi}"))
        .join(format!("{name}.wasm"));
    if !path.is_file() {
        bail!("{} not found", path.display());
    }
    Ok(path)
}

/// `bytes` (a WASM module or component) with a custom section `name` of
/// `pad` bytes appended: a larger plugin that still loads.
pub fn with_custom_section(bytes: &[u8], name: &str, pad: usize) -> Vec<u8> {
    let leb = |mut n: usize, out: &mut Vec<u8>| loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    };
    let mut body = Vec::with_capacity(pad + name.len() + 5);
    leb(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.resize(body.len() + pad, 0x5a);
    let mut out = bytes.to_vec();
    out.push(0);
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// A temporary directory that other users can enter, so a broker that drops
/// privileges (mosquitto started as root) can still read what the test
/// writes there.
pub fn tempdir() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("ferrule-test-").tempdir()?;
    set_mode(dir.path(), 0o755)?;
    Ok(dir)
}

/// A directory mosquitto may write to (its persistence database).
pub fn broker_writable_dir(parent: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir)?;
    set_mode(&dir, 0o777)?;
    Ok(dir)
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

pub use ferrule::dev::net::{free_port, wait_for_port};

/// A throwaway PKI: CA, broker certificate for loopback, gateway and
/// subscriber client certificates.
pub struct Pki {
    pub ca: DevCa,
    pub server: CertFiles,
    pub gateway: CertFiles,
    pub subscriber: CertFiles,
}

impl Pki {
    pub fn new(dir: &Path) -> anyhow::Result<Pki> {
        let ca = DevCa::new(dir, "test-ca")?;
        Ok(Pki {
            server: ca.server("broker", &["localhost", "127.0.0.1", "::1"])?,
            gateway: ca.client("gateway", "test-gateway")?,
            subscriber: ca.client("subscriber", "test-subscriber")?,
            ca,
        })
    }
}

/// A child process killed (SIGKILL) when dropped.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
    name: &'static str,
}

impl Process {
    /// Sends SIGKILL and waits for the process to go.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (graceful stop) and waits up to `limit`.
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        bail!("{} did not stop within {limit:?} of SIGTERM", self.name)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the process's log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while !self.log_text().contains(needle) {
            if Instant::now() > deadline {
                bail!(
                    "{} never logged {needle:?} within {limit:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn spawn_logged(name: &'static str, command: Command, log: PathBuf) -> anyhow::Result<Process> {
    spawn_logged_with(name, command, log, Stdio::null())
}

/// Like [`spawn_logged`] with a chosen stdin (a pipe kept open for the
/// process's life, for servers that stop at end of input).
fn spawn_logged_with(
    name: &'static str,
    mut command: Command,
    log: PathBuf,
    stdin: Stdio,
) -> anyhow::Result<Process> {
    let out = std::fs::File::create(&log)?;
    let err = out.try_clone()?;
    let child = command
        .stdin(stdin)
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Process { child, log, name })
}

/// Debian's mosquitto, on a loopback port, TLS only, client certificates required.
pub struct Mosquitto {
    pub port: u16,
    pub process: Process,
}

impl Mosquitto {
    pub fn binary() -> anyhow::Result<PathBuf> {
        for candidate in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
            if Path::new(candidate).is_file() {
                return Ok(PathBuf::from(candidate));
            }
        }
        bail!("mosquitto not installed; `cargo xtask test` installs it (apt-get install mosquitto)")
    }

    /// Starts mosquitto with `extra` lines appended to its config (after the
    /// listener, so listener options like `max_packet_size` apply there).
    pub fn start(dir: &Path, pki: &Pki, port: u16, extra: &str) -> anyhow::Result<Mosquitto> {
        Self::start_with(dir, &pki.ca.cert, &pki.server, port, extra)
    }

    /// Like [`Mosquitto::start`] with a chosen CA (for client certificates)
    /// and server certificate.
    pub fn start_with(
        dir: &Path,
        ca: &Path,
        server: &CertFiles,
        port: u16,
        extra: &str,
    ) -> anyhow::Result<Mosquitto> {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\n\
                 allow_anonymous true\n\
                 log_dest stderr\n\
                 log_type all\n\
                 listener {port} 127.0.0.1\n\
                 cafile {ca}\n\
                 certfile {cert}\n\
                 keyfile {key}\n\
                 require_certificate true\n\
                 {tls_version}\
                 {extra}\n",
                // TLS 1.2 unless `extra` picks a version: the client
                // certificate is checked during the handshake, so a refusal
                // is the handshake's own alert.
                tls_version = if extra.contains("tls_version") {
                    ""
                } else {
                    "tls_version tlsv1.2\n"
                },
                ca = ca.display(),
                cert = server.cert.display(),
                key = server.key.display(),
            ),
        )?;
        let mut command = Command::new(Self::binary()?);
        command.arg("-c").arg(&conf);
        let process = spawn_logged(
            "mosquitto",
            command,
            dir.join(format!("mosquitto-{port}.log")),
        )?;
        let mut broker = Mosquitto { port, process };
        if let Err(e) = wait_for_port(port, Duration::from_secs(10)) {
            broker.process.kill9();
            bail!("{e}; mosquitto log:\n{}", broker.process.log_text());
        }
        Ok(broker)
    }
}

/// The `ferrule` binary running a config.
pub fn start_ferrule(dir: &Path, args: &[&str]) -> anyhow::Result<Process> {
    start_ferrule_with_open_files(dir, args, None)
}

/// Like [`start_ferrule`], with the process's open-file limit (soft and
/// hard) set to `open_files` when given, as a service manager would.
pub fn start_ferrule_with_open_files(
    dir: &Path,
    args: &[&str],
    open_files: Option<u64>,
) -> anyhow::Result<Process> {
    let mut command = match open_files {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}"))
                .arg("--")
                .arg(ferrule_bin()?);
            c
        }
        None => Command::new(ferrule_bin()?),
    };
    command
        .args(args)
        .current_dir(dir)
        .env("FERRULE_LOG", "info,ferrule=debug")
        .env("XDG_CACHE_HOME", test_cache_home());
    spawn_logged("ferrule", command, dir.join("ferrule.log"))
}

/// The arguments of `ferrule fleet deploy` of the state file `state` to
/// gateway gw-test with the operator file `operator.toml`, waiting up to
/// `wait` for its outcome.
pub fn fleet_deploy_args(state: &Path, wait: &str) -> Vec<String> {
    [
        "fleet",
        "deploy",
        "--bootstrap",
        "operator.toml",
        "--gateway",
        "gw-test",
        "--wait",
        wait,
    ]
    .into_iter()
    .map(str::to_string)
    .chain([state.to_string_lossy().into_owned()])
    .collect()
}

/// Runs the `ferrule` binary to completion; returns (success, stdout, stderr).
pub fn run_ferrule(dir: &Path, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let output = Command::new(ferrule_bin()?)
        .args(args)
        .current_dir(dir)
        .env("FERRULE_LOG", "warn")
        .env("XDG_CACHE_HOME", test_cache_home())
        .output()?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// One message a subscriber received.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Received {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.payload)?)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// What most integration tests run against: a work directory, a test PKI,
/// mosquitto with TLS on a loopback port, and a subscriber; `run` starts
/// the gateway on a config built from [`Rig::gateway`].
pub struct Rig {
    /// Everything the test writes: certificates, config, data, logs.
    pub dir: tempfile::TempDir,
    /// The test CA and its certificates.
    pub pki: Pki,
    /// The broker's port on 127.0.0.1.
    pub port: u16,
    /// The broker.
    pub broker: Mosquitto,
    /// A subscriber to `filter`, connected before the gateway starts.
    pub sub: Subscriber,
}

impl Rig {
    /// A broker with `broker_options` (mosquitto.conf lines) and a
    /// subscriber to `filter`.
    pub async fn start(broker_options: &str, filter: &str) -> anyhow::Result<Rig> {
        Rig::start_with(|_, _| Ok(broker_options.to_string()), filter, None).await
    }

    /// Like [`Rig::start`], with the broker's options written by `broker`
    /// once the work directory and the PKI exist (ACL and CRL files,
    /// persistence), and, given a client id, a subscriber whose session
    /// survives broker restarts.
    pub async fn start_with(
        broker: impl FnOnce(&Path, &Pki) -> anyhow::Result<String>,
        filter: &str,
        persistent_subscriber: Option<&str>,
    ) -> anyhow::Result<Rig> {
        let dir = tempdir()?;
        let pki = Pki::new(&dir.path().join("certs"))?;
        let port = free_port()?;
        let options = broker(dir.path(), &pki)?;
        let broker = Mosquitto::start(dir.path(), &pki, port, &options)?;
        let sub = match persistent_subscriber {
            Some(id) => Subscriber::connect_persistent(&pki, port, filter, id).await?,
            None => Subscriber::connect(&pki, port, filter).await?,
        };
        Ok(Rig {
            dir,
            pki,
            port,
            broker,
            sub,
        })
    }

    /// A broker that keeps sessions and queued messages on disk (restart it
    /// with [`persistence_config`] of the same directory) and a subscriber
    /// `client_id` whose session survives broker restarts.
    pub async fn persistent(filter: &str, client_id: &str) -> anyhow::Result<Rig> {
        Rig::start_with(|dir, _| persistence_config(dir), filter, Some(client_id)).await
    }

    /// The rig's parts, for a test that uses them by name: (work dir, PKI,
    /// broker port, broker, subscriber).
    pub fn into_parts(self) -> (tempfile::TempDir, Pki, u16, Mosquitto, Subscriber) {
        (self.dir, self.pki, self.port, self.broker, self.sub)
    }

    /// Where the gateway keeps its data.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The shared base config for a gateway of this rig.
    pub fn gateway(&self) -> GatewayToml {
        gateway_toml(&self.data_dir(), &self.pki, self.port)
    }

    /// Writes `gateway` to `gateway.toml` in the work directory and starts
    /// `ferrule run` on it (with the open-file limit `open_files`, when
    /// given); returns the config's path and the process.
    pub fn run(
        &self,
        gateway: &GatewayToml,
        open_files: Option<u64>,
    ) -> anyhow::Result<(PathBuf, Process)> {
        let config = self.dir.path().join("gateway.toml");
        std::fs::write(&config, gateway.render())?;
        let ferrule = start_ferrule_with_open_files(
            self.dir.path(),
            &["run", &config.to_string_lossy()],
            open_files,
        )?;
        Ok((config, ferrule))
    }
}

/// A client id no other client of this test process has: `{prefix}-{pid}-{n}`.
pub(crate) fn unique_client_id(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Options for an MQTT client `client_id` of a broker on 127.0.0.1:`port`
/// over TLS, trusting `ca` and logging in with `client`'s certificate.
pub(crate) fn tls_client(
    client_id: String,
    port: u16,
    ca: &Path,
    client: &CertFiles,
) -> anyhow::Result<MqttOptions> {
    let files = TlsFiles {
        ca: ca.to_path_buf(),
        client_cert: Some(client.cert.clone()),
        client_key: Some(client.key.clone()),
    };
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        tls::client_config(&files)?,
    )));
    Ok(options)
}

/// A TLS MQTT subscriber that forwards what it receives to a channel.
pub struct Subscriber {
    pub messages: mpsc::UnboundedReceiver<Received>,
    /// The subscriber's client, to publish with (commands, say).
    pub client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Connects with the PKI's subscriber certificate and subscribes to `filter`.
    pub async fn connect(pki: &Pki, port: u16, filter: &str) -> anyhow::Result<Subscriber> {
        Self::connect_with(pki, port, filter, None, None).await
    }

    /// Like [`Subscriber::connect`], logging in as `user` with `password`.
    pub async fn connect_as(
        pki: &Pki,
        port: u16,
        filter: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<Subscriber> {
        Self::connect_with(pki, port, filter, None, Some((user, password))).await
    }

    /// Like [`Subscriber::connect`] with a persistent session under
    /// `client_id`: with broker persistence on, QoS 1 messages published while
    /// the subscriber is away (a broker restart) are kept for it.
    pub async fn connect_persistent(
        pki: &Pki,
        port: u16,
        filter: &str,
        client_id: &str,
    ) -> anyhow::Result<Subscriber> {
        Self::connect_with(pki, port, filter, Some(client_id), None).await
    }

    async fn connect_with(
        pki: &Pki,
        port: u16,
        filter: &str,
        persistent_id: Option<&str>,
        login: Option<(&str, &str)>,
    ) -> anyhow::Result<Subscriber> {
        let client_id = persistent_id.map_or_else(|| unique_client_id("test-sub"), str::to_string);
        let mut options = tls_client(client_id, port, &pki.ca.cert, &pki.subscriber)?;
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(persistent_id.is_none());
        options.set_max_packet_size(16 << 20, 1 << 20);
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let (client, mut events) = AsyncClient::new(options, 64);
        client.subscribe(filter, QoS::AtLeastOnce).await?;
        let (tx, messages) = mpsc::unbounded_channel();
        // Wait for the SUBACK so nothing published after this returns is missed.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if Instant::now() > deadline {
                bail!("subscriber: no SUBACK from 127.0.0.1:{port}");
            }
            match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let _ = tx.send(Received {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                    });
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("subscriber: {e}"),
                Err(_) => bail!("subscriber: timed out connecting to 127.0.0.1:{port}"),
            }
        }
        let publisher = client.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx
                            .send(Received {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Ok(Subscriber {
            messages,
            client: publisher,
            task,
        })
    }

    /// The next message within `limit`, or an error naming what was awaited.
    pub async fn next(&mut self, limit: Duration, what: &str) -> anyhow::Result<Received> {
        match tokio::time::timeout(limit, self.messages.recv()).await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => bail!("subscriber closed while waiting for {what}"),
            Err(_) => bail!("no message within {limit:?} while waiting for {what}"),
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Mosquitto options that keep a persistent subscriber's session and its
/// queued messages across broker restarts.
pub fn persistence_config(dir: &Path) -> anyhow::Result<String> {
    let store = broker_writable_dir(dir, "mosquitto-db")?;
    Ok(format!(
        "persistence true\npersistence_location {}/\nmax_queued_messages 0\nmax_inflight_messages 100\n",
        store.display()
    ))
}

/// `ferrule queue stats --json` for a config.
pub fn queue_stats(dir: &Path, config: &Path) -> anyhow::Result<serde_json::Value> {
    let config = config.to_string_lossy();
    let (ok, stdout, stderr) = run_ferrule(dir, &["queue", "stats", &config, "--json"])?;
    if !ok {
        bail!("ferrule queue stats failed: {stderr}");
    }
    Ok(serde_json::from_str(&stdout)?)
}

/// Sequence numbers seen by a subscriber, with duplicates.
#[derive(Debug, Default)]
pub struct SeqLog {
    pub all: Vec<u64>,
}

impl SeqLog {
    /// Takes every data message already received, without waiting.
    pub fn drain(&mut self, sub: &mut Subscriber) -> anyhow::Result<()> {
        while let Ok(m) = sub.messages.try_recv() {
            self.push(&m)?;
        }
        Ok(())
    }

    pub fn push(&mut self, m: &Received) -> anyhow::Result<()> {
        if m.topic.contains("/data/") {
            let seq = m.json()?["seq"]
                .as_u64()
                .context("data message without seq")?;
            self.all.push(seq);
        }
        Ok(())
    }

    /// Waits until every sequence in `first..=last` has been seen.
    pub async fn wait_for_all(
        &mut self,
        sub: &mut Subscriber,
        first: u64,
        last: u64,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            self.drain(sub)?;
            if self.missing(first, last).is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let missing = self.missing(first, last);
                bail!(
                    "{} of {first}..={last} never arrived (first few: {:?})",
                    missing.len(),
                    &missing[..missing.len().min(20)]
                );
            }
            if let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(200), sub.messages.recv()).await
            {
                self.push(&m)?;
            }
        }
    }

    pub fn unique(&self) -> Vec<u64> {
        let mut u = self.all.clone();
        u.sort_unstable();
        u.dedup();
        u
    }

    pub fn missing(&self, first: u64, last: u64) -> Vec<u64> {
        let u = self.unique();
        (first..=last)
            .filter(|s| u.binary_search(s).is_err())
            .collect()
    }

    pub fn duplicates(&self) -> usize {
        self.all.len() - self.unique().len()
    }

    pub fn max(&self) -> u64 {
        self.all.iter().copied().max().unwrap_or(0)
    }
}

/// A small deterministic generator for test timings (seed printed by the test).
pub struct Jitter(u64);

impl Jitter {
    pub fn from_time() -> Jitter {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Jitter(seed)
    }

    pub fn seed(&self) -> u64 {
        self.0
    }

    /// A duration uniformly in `min..max`.
    pub fn between(&mut self, min: Duration, max: Duration) -> Duration {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        let span = max.saturating_sub(min).as_millis().max(1) as u64;
        min + Duration::from_millis(x % span)
    }
}

/// The last `lines` lines of `text` (a process's log, for an error).
pub fn log_tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Seconds since midnight (UTC) of a log line's RFC 3339 timestamp.
pub fn log_clock(line: &str) -> Option<f64> {
    let clock = line.split('T').nth(1)?.split('Z').next()?;
    let mut parts = clock.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Seconds since midnight (UTC) now, comparable with [`log_clock`].
pub fn clock_now() -> f64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    since_epoch.rem_euclid(86_400.0)
}

/// The `connect_ms` figure of each "mqtt connected" line in a ferrule log,
/// with the line's clock time.
pub fn connects(log: &str) -> Vec<(f64, f64)> {
    log.lines()
        .filter(|l| l.contains("mqtt connected"))
        .filter_map(|l| {
            let ms = l.split("connect_ms=").nth(1)?.split_whitespace().next()?;
            Some((log_clock(l)?, ms.parse().ok()?))
        })
        .collect()
}

/// Resident memory (KiB) and CPU time (user + system, seconds) of a
/// running process; an error if it is gone or cannot be read.
pub fn process_usage(pid: u32) -> anyhow::Result<(u64, f64)> {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
    let pid = Pid::from_u32(pid);
    let mut system = System::new();
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing().with_memory().with_cpu(),
    );
    let process = system
        .process(pid)
        .with_context(|| format!("process {pid} is gone or cannot be read"))?;
    Ok((
        process.memory() / 1024,
        process.accumulated_cpu_time() as f64 / 1000.0,
    ))
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    Ok(process_usage(pid)?.0)
}

/// The peak resident memory (KiB) of process `pid`, sampled every 10 ms
/// for `span`; an error if the process could not be read at some point.
pub fn rss_peak(pid: u32, span: Duration) -> tokio::task::JoinHandle<anyhow::Result<u64>> {
    tokio::spawn(async move {
        let mut peak = 0;
        let until = Instant::now() + span;
        while Instant::now() < until {
            peak = peak.max(rss_kib(pid)?);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(peak)
    })
}

/// A `[[driver]]` running the hostile fixture every 200 ms, with `config`
/// (a TOML document) as its `[driver.config]` and `extra` (a TOML
/// document) as further keys of its table (`limits`, `data_dir`, ...).
pub fn hostile_driver(name: &str, config: &str, extra: &str) -> anyhow::Result<PluginToml> {
    let mut driver = PluginToml::new(name, &plugin("hostile")?).set("interval_ms", 200);
    for (key, value) in toml::from_str::<toml::Table>(config)? {
        driver = driver.config(&key, value);
    }
    for (key, value) in toml::from_str::<toml::Table>(extra)? {
        driver = driver.set(&key, value);
    }
    Ok(driver)
}

/// The `[gateway]` and `[mqtt]` tables every test gateway shares (id
/// `gw-test`, mutual TLS with the test PKI, quick reconnects), to build on.
pub fn gateway_toml(data_dir: &Path, pki: &Pki, port: u16) -> GatewayToml {
    GatewayToml::new("gw-test", data_dir)
        .mqtt_tls(
            "127.0.0.1",
            port,
            &pki.ca.cert,
            &pki.gateway.cert,
            &pki.gateway.key,
        )
        .set("mqtt", "keep_alive_s", 5)
        .set("mqtt", "reconnect_min_ms", 100)
        .set("mqtt", "reconnect_max_ms", 1000)
}
