//! Network peers for the MQTT link tests: an `openssl s_server` that only
//! speaks what it is told to, and a loopback TCP proxy that can silently
//! stop forwarding (a half-open link).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use ferrule::dev::certs::{CertFiles, DevCa};

use crate::{Process, free_port, spawn_logged_with, wait_for_port};

/// `openssl s_server` on a loopback port with the given certificate, key
/// and protocol/cipher arguments.
pub struct OpensslServer {
    pub port: u16,
    pub process: Process,
}

impl OpensslServer {
    pub fn start(dir: &Path, cert: &Path, key: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut command = Command::new("openssl");
        command
            .arg("s_server")
            .arg("-accept")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .args(args);
        // s_server stops at the end of its input: keep a pipe open.
        let process = spawn_logged_with(
            "openssl s_server",
            command,
            dir.join(format!("s_server-{port}.log")),
            std::process::Stdio::piped(),
        )?;
        let mut server = OpensslServer { port, process };
        if let Err(e) = wait_for_port(port, Duration::from_secs(10)) {
            server.process.kill9();
            bail!(
                "{e}; is openssl installed? log:\n{}",
                server.process.log_text()
            );
        }
        Ok(server)
    }

    /// Runs `openssl s_client` against it with `args`; returns whether the
    /// handshake completed and what s_client printed. Proves the server
    /// really serves the protocol or suite it was started with.
    pub fn handshake(&self, args: &[&str]) -> anyhow::Result<(bool, String)> {
        let output = Command::new("openssl")
            .arg("s_client")
            .arg("-connect")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .context("cannot run openssl s_client")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // s_client prints "Cipher is (NONE)" when no session was made.
        let ok = output.status.success() && !text.contains("Cipher is (NONE)");
        Ok((ok, text))
    }
}

/// An RSA server certificate for `127.0.0.1` signed by `ca` (RSA key
/// exchange, the classic non-forward-secret suite, needs an RSA
/// certificate); the key is made by the openssl tool.
pub fn rsa_server_cert(dir: &Path, ca: &DevCa) -> anyhow::Result<CertFiles> {
    let key = dir.join("rsa-server-key.pem");
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .context("cannot run openssl")?;
    if !out.status.success() {
        bail!("openssl genpkey: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(ca.server_for_key(
        "rsa-server",
        &["127.0.0.1"],
        &std::fs::read_to_string(&key)?,
    )?)
}

/// A loopback TCP proxy to `127.0.0.1:target`. After [`freeze`], every
/// connection open at that moment stops forwarding in both directions
/// while its sockets stay open (a half-open link: no FIN, no RST); new
/// connections are forwarded normally.
///
/// [`freeze`]: StallingProxy::freeze
pub struct StallingProxy {
    pub port: u16,
    /// Connections opened so far; each gets the number it was opened with.
    opened: Arc<AtomicU64>,
    /// Connections numbered below this are frozen.
    frozen_below: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl StallingProxy {
    pub async fn start(target: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let opened = Arc::new(AtomicU64::new(0));
        let frozen_below = Arc::new(AtomicU64::new(0));
        let (o, f) = (opened.clone(), frozen_below.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let number = o.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, number, f.clone()));
                tokio::spawn(pump(sr, cw, number, f.clone()));
            }
        });
        Ok(StallingProxy {
            port,
            opened,
            frozen_below,
            task,
        })
    }

    /// Silently stops every connection open now.
    pub fn freeze(&self) {
        self.frozen_below
            .store(self.opened.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.opened.load(Ordering::SeqCst)
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either ends or the connection is frozen;
/// a frozen connection keeps both sockets open and idle (bounded: an
/// hour at most, the test is long over by then).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    number: u64,
    frozen_below: Arc<AtomicU64>,
) {
    let frozen = || number < frozen_below.load(Ordering::SeqCst);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await;
        if frozen() {
            // Hold the sockets, forward nothing, read nothing more.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        match read {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// pymodbus's Modbus TCP server on a loopback port, with the datastore in
/// `store` (JSON: `holding`, `input`, `coil`, `discrete` value lists from
/// address 0). `cargo xtask test` installs pymodbus.
pub struct ModbusSim {
    /// The first device's port.
    pub port: u16,
    /// Every device's port (one unless started with [`ModbusSim::start_devices`]).
    pub ports: Vec<u16>,
    dir: std::path::PathBuf,
    store: std::path::PathBuf,
    pub process: Process,
}

impl ModbusSim {
    pub fn start(dir: &Path, store: &serde_json::Value) -> anyhow::Result<Self> {
        Self::start_devices(dir, store, 1)
    }

    /// `devices` simulated devices, each on its own port with its own copy
    /// of `store`, served by one process.
    pub fn start_devices(
        dir: &Path,
        store: &serde_json::Value,
        devices: usize,
    ) -> anyhow::Result<Self> {
        let path = dir.join("modbus-store.json");
        std::fs::write(&path, serde_json::to_vec(store)?)?;
        let mut ports = Vec::with_capacity(devices);
        while ports.len() < devices {
            let port = free_port()?;
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        Self::start_on(dir, &path, &ports)
    }

    fn start_on(dir: &Path, store: &Path, ports: &[u16]) -> anyhow::Result<Self> {
        let script = crate::workspace_root().join("tests/peers/modbus_sim.py");
        let mut command = Command::new("python3");
        command.arg(&script);
        for port in ports {
            command.arg("--port").arg(port.to_string());
        }
        command.arg("--datastore").arg(store);
        let process = crate::spawn_logged(
            "modbus simulator",
            command,
            dir.join(format!("modbus-sim-{}.log", ports[0])),
        )?;
        let mut sim = ModbusSim {
            port: ports[0],
            ports: ports.to_vec(),
            dir: dir.to_path_buf(),
            store: store.to_path_buf(),
            process,
        };
        for &port in ports {
            if let Err(e) = wait_for_port(port, Duration::from_secs(20)) {
                sim.process.kill9();
                bail!(
                    "{e}; is pymodbus installed (`cargo xtask test` installs it)? log:\n{}",
                    sim.process.log_text()
                );
            }
        }
        Ok(sim)
    }

    /// Stops the simulator (its datastore is lost; a restart reloads the file).
    pub fn stop(&mut self) {
        self.process.kill9();
    }

    /// Starts it again on the same port with the original datastore.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let fresh = Self::start_on(&self.dir, &self.store, &self.ports)?;
        *self = fresh;
        Ok(())
    }

    /// Reads holding registers directly (a hand-made frame, independent of
    /// ferrule's own Modbus code).
    pub fn read_holding(&self, address: u16, count: u16) -> anyhow::Result<Vec<u16>> {
        let frame = self.ask(3, address, count)?;
        anyhow::ensure!(
            frame.len() == 9 + usize::from(count) * 2 && frame[7] == 3,
            "unexpected answer {frame:02x?}"
        );
        Ok(frame[9..]
            .chunks(2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
            .collect())
    }

    /// Reads coils directly.
    pub fn read_coils(&self, address: u16, count: u16) -> anyhow::Result<Vec<bool>> {
        let frame = self.ask(1, address, count)?;
        anyhow::ensure!(
            frame.len() >= 9 && frame[7] == 1,
            "unexpected answer {frame:02x?}"
        );
        Ok((0..usize::from(count))
            .map(|i| frame[9 + i / 8] >> (i % 8) & 1 == 1)
            .collect())
    }

    fn ask(&self, function: u8, address: u16, count: u16) -> anyhow::Result<Vec<u8>> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let [ah, al] = address.to_be_bytes();
        let [ch, cl] = count.to_be_bytes();
        s.write_all(&[0x7A, 0x01, 0, 0, 0, 6, 1, function, ah, al, ch, cl])?;
        let mut header = [0u8; 6];
        s.read_exact(&mut header)?;
        let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let mut rest = vec![0u8; len];
        s.read_exact(&mut rest)?;
        Ok([header.to_vec(), rest].concat())
    }
}

/// A loopback proxy in front of a Modbus TCP device that counts the
/// request frames (MBAP framing) passing from clients to the device.
pub struct CountingProxy {
    pub port: u16,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start(target: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut header = [0u8; 6];
                    loop {
                        if cr.read_exact(&mut header).await.is_err() {
                            return;
                        }
                        let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
                        let mut body = vec![0u8; len];
                        if cr.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        counter.fetch_add(1, Ordering::SeqCst);
                        if sw.write_all(&header).await.is_err()
                            || sw.write_all(&body).await.is_err()
                        {
                            return;
                        }
                    }
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
            }
        });
        Ok(CountingProxy {
            port,
            requests,
            task,
        })
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
