//! `cargo xtask`: the one place that knows how to build plugins, install
//! what the tests need, and run the suites.
//!
//! - `cargo xtask demo [--duration 20s]`: build everything, run the demo.
//! - `cargo xtask test`: install test tools if missing, then fmt, clippy and
//!   every test. `.ci/run` calls exactly this.
//! - `cargo xtask plugins`: build the WebAssembly plugins (release,
//!   wasm32-wasip2) into `target/wasm32-wasip2/release/`.
//! - `cargo xtask package [--profile P] [--check]`: the .deb (cargo-deb),
//!   and with `--check` lint, install, verify and purge it (as root).
//! - `cargo xtask proto`: regenerate the Sparkplug B types from their
//!   `.proto` (a separate workspace under `tools/protogen`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

mod bench;
mod guest;
mod package;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the plugins and ferrule, then run the self-contained demo.
    Demo {
        /// Stop after this long (e.g. 20s); runs until Ctrl-C when absent.
        #[arg(long)]
        duration: Option<String>,
        /// Poll interval of the simulated device, in milliseconds.
        #[arg(long)]
        interval_ms: Option<u64>,
    },
    /// Install what the tests need, then run fmt, clippy and all tests.
    Test,
    /// Build the WebAssembly plugins and the plugin-author template.
    Plugins,
    /// Benchmarks that print figures and write benchmarks/results.json and
    /// BENCHMARKS.md (release build). Parts: e2e, latency, stages, backlog,
    /// footprint, gateways, queue, plugin, reload, fleet, link, modbus,
    /// hostile, cluster.
    Bench {
        /// Which part to run; all when absent; `render` runs none and
        /// renders BENCHMARKS.md again (after editing benchmarks/notes/).
        part: Option<String>,
    },
    /// Install the Python and JavaScript plugin toolchains (when missing)
    /// and build the guest-language plugins the tests run.
    GuestPlugins,
    /// Ten drivers against mosquitto for N minutes with broker restarts
    /// and kill -9s: samples RSS, CPU, queue depth and delivered messages,
    /// checks no sequence is missing, writes benchmarks/soak/soak.{csv,png}
    /// and its figures into BENCHMARKS.md (release build).
    Soak {
        #[arg(long, default_value_t = 60.0)]
        minutes: f64,
    },
    /// N real gateways (sim drivers, a client certificate each) through one
    /// mosquitto and then a three-node RabbitMQ cluster, one node killed
    /// and restarted mid-run; fails if any gateway's sequence never
    /// arrived; prints the fleet's figures (debug build, as the tests).
    Fleet {
        #[arg(long, default_value_t = 50)]
        gateways: usize,
    },
    /// Build the .deb a gateway installs (target/debian/): the production
    /// binary, the hardened systemd unit, the config and example plugins.
    Package {
        /// Cargo profile of the binary: `dist` for gateways (release with
        /// fat LTO: smaller, less resident; about 20 minutes on 2 cores).
        #[arg(long, default_value = "dist")]
        profile: String,
        /// Then lint it, install it here, check the installed unit and
        /// config, upgrade over a changed config and purge it (as root).
        #[arg(long)]
        check: bool,
    },
    /// Regenerate the Sparkplug B protobuf types
    /// (runtime/src/publish/sparkplug/proto.rs) from
    /// runtime/proto/sparkplug_b.proto, with protox: no protoc needed.
    Proto,
    /// Run an example from examples/ against its simulated device. Examples: modbus.
    Example {
        name: String,
        /// Stop after this long (e.g. 20s).
        #[arg(long, default_value = "20s")]
        duration: String,
    },
}

const WASM_TARGET: &str = "wasm32-wasip2";

/// Plugin workspaces: each is built from its own directory so its
/// `.cargo/config.toml` (target, shared target dir) applies.
const PLUGIN_WORKSPACES: [&str; 2] = ["plugins", "examples/driver-template"];

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.command {
        Task::Demo {
            duration,
            interval_ms,
        } => demo(&root, duration.as_deref(), interval_ms),
        Task::Test => test(&root),
        Task::Plugins => {
            ensure_wasm_target()?;
            build_plugins(&root)
        }
        Task::Bench { part } => bench(&root, part.as_deref()),
        Task::GuestPlugins => guest::build_all(&root).map(|_| ()),
        Task::Soak { minutes } => soak(&root, minutes),
        Task::Fleet { gateways } => {
            ensure_wasm_target()?;
            ensure_peers()?;
            build_plugins(&root)?;
            let mut command = cargo();
            command.args([
                "build",
                "-p",
                "ferrule-benches",
                "--bin",
                "bench-cluster",
                "-p",
                "ferrule",
            ]);
            linted_env(&mut command);
            run(&root, &mut command)?;
            fleet(&root, gateways)
        }
        Task::Proto => proto(&root),
        Task::Package { profile, check } => {
            let deb = package::build(&root, &profile)?;
            if check {
                package::check(&root, &deb)?;
            }
            Ok(())
        }
        Task::Example { name, duration } => example(&root, &name, &duration),
    }
}

/// Where `cargo xtask example modbus` starts its simulated device.
const MODBUS_EXAMPLE_PORT: u16 = 5020;

fn example(root: &Path, name: &str, duration: &str) -> anyhow::Result<()> {
    if name != "modbus" {
        bail!("unknown example {name:?}; examples: modbus");
    }
    ensure_wasm_target()?;
    ensure_python_tools()?;
    build_plugins(root)?;
    let mut sim = Command::new("python3")
        .arg(root.join("tests/peers/modbus_sim.py"))
        .arg("--port")
        .arg(MODBUS_EXAMPLE_PORT.to_string())
        .arg("--datastore")
        .arg(root.join("examples/modbus/datastore.json"))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("cannot start the Modbus simulator")?;
    let ready = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", MODBUS_EXAMPLE_PORT)).is_ok()
    });
    let result = if ready {
        let mut command = demo_command(root)?;
        command.args(["--duration", duration, "--drivers"]);
        command.arg(root.join("examples/modbus/drivers.toml"));
        run(root, &mut command)
    } else {
        Err(anyhow::anyhow!(
            "the Modbus simulator did not listen on 127.0.0.1:{MODBUS_EXAMPLE_PORT} (port taken?)"
        ))
    };
    let _ = sim.kill();
    let _ = sim.wait();
    result
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .context("xtask must live one level below the workspace root")
}

/// The target directory every build of this workspace shares.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs a command in `dir`, echoing it, failing on a non-zero exit.
fn run(dir: &Path, command: &mut Command) -> anyhow::Result<()> {
    command.current_dir(dir);
    let shown = format!("{command:?}").replace('"', "");
    eprintln!("xtask: {shown}");
    let status = command
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// `ferrule demo` (debug build, with the `demo` feature) with the plugins
/// just built. The build runs first on its own, showing cargo's progress:
/// from a fresh clone it compiles wasmtime, minutes on 2 cores.
fn demo_command(root: &Path) -> anyhow::Result<Command> {
    step(
        2,
        3,
        "building ferrule (a first build compiles wasmtime: several minutes on 2 cores)",
    );
    run(
        root,
        cargo().args(["build", "-p", "ferrule", "--features", "demo", "--bins"]),
    )?;
    step(3, 3, "starting the demo");
    let mut command = Command::new(target_dir(root).join("debug").join("ferrule"));
    command.args(["demo", "--plugin-dir"]);
    command.arg(target_dir(root).join(WASM_TARGET).join("release"));
    Ok(command)
}

/// One step of a long xtask, said before it starts, with the time.
fn step(n: usize, of: usize, what: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    eprintln!(
        "xtask: [{n}/{of}] {what} ({:02}:{:02}:{:02} UTC)",
        now / 3600 % 24,
        now / 60 % 60,
        now % 60
    );
}

fn demo(root: &Path, duration: Option<&str>, interval_ms: Option<u64>) -> anyhow::Result<()> {
    ensure_wasm_target()?;
    step(
        1,
        3,
        "building the example plugins (wasm32-wasip2, release)",
    );
    build_plugins(root)?;
    let mut command = demo_command(root)?;
    if let Some(d) = duration {
        command.args(["--duration", d]);
    }
    if let Some(ms) = interval_ms {
        command.arg("--interval-ms").arg(ms.to_string());
    }
    run(root, &mut command)
}

/// Set by `cargo xtask test`: tests may not skip themselves.
const FULL_SUITE_ENV: &str = "FERRULE_FULL_SUITE";

fn test(root: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    ensure_wasm_target()?;
    ensure_peers()?;
    ensure_sparkplug_host(root)?;

    run(root, cargo().args(["fmt", "--all", "--check"]))?;
    for ws in PLUGIN_WORKSPACES {
        run(&root.join(ws), cargo().args(["fmt", "--all", "--check"]))?;
    }
    // Dependencies no source file uses, in every workspace below the root.
    run(root, &mut Command::new(ensure_machete(root)?))?;
    // Clippy runs as the compiler of the workspace's own crates while they
    // are built for the tests (what `cargo clippy` does, with a build
    // instead of a check), so the dependencies — wasmtime above all — are
    // compiled once instead of once to check and once to build.
    let linted = |dir: &Path, args: &[&str]| {
        let mut command = cargo();
        command.args(args);
        linted_env(&mut command);
        run(dir, &mut command)
    };
    // Every target of every crate, linted; the ferrule binary the
    // integration tests run is among them.
    linted(root, &["build", "--workspace", "--all-targets"])?;
    // The plugin workspaces have no test targets: their release build is
    // every target there is.
    for ws in PLUGIN_WORKSPACES {
        linted(&root.join(ws), &["build", "--release"])?;
    }
    // The SDK crates integrators depend on must package on their own (the
    // WIT is inside them): `cargo package` builds them as they would be
    // published.
    run(
        root,
        cargo().args([
            "package",
            "--allow-dirty",
            "-p",
            "ferrule-sdk-macros",
            "-p",
            "ferrule-sdk",
        ]),
    )?;
    // The Python and JavaScript kits: their own tests, then the example
    // and fixture plugins the integration tests run (rebuilt only when
    // their sources change).
    guest::test_kits(root)?;
    guest::build_all(root)?;
    // Every test must run here: one that needs something the machine
    // lacks (a tmpfs mount) fails instead of skipping itself.
    let mut command = cargo();
    command
        .env(FULL_SUITE_ENV, "1")
        .args(["test", "--workspace", "--", "--skip", "sandbox::"]);
    linted_env(&mut command);
    run(root, &mut command)?;
    // The sandbox tests check rates and deadlines (their issue asks for it);
    // they run alone, one at a time, so other tests don't share the cores.
    let mut command = cargo();
    command.args([
        "test",
        "--workspace",
        "--test",
        "integration",
        "sandbox::",
        "--",
        "--test-threads",
        "1",
    ]);
    linted_env(&mut command);
    run(root, &mut command)?;
    // The fleet: 50 gateways through mosquitto and a RabbitMQ cluster that
    // loses a node (its binaries came with the workspace build above).
    fleet(root, 50)?;
    // The .deb, built from this run's profile (the release package is
    // `cargo xtask package`): linted, installed, checked and purged. Last,
    // because it rebuilds the ferrule binary without the `demo` feature.
    let deb = package::build(root, "dev")?;
    package::check(root, &deb)?;
    eprintln!(
        "xtask: all checks passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn bench(root: &Path, part: Option<&str>) -> anyhow::Result<()> {
    ensure_wasm_target()?;
    ensure_peers()?;
    build_plugins(root)?;
    guest::build_all(root)?;
    bench::run_parts(root, part, &[])
}

fn soak(root: &Path, minutes: f64) -> anyhow::Result<()> {
    if !(minutes > 0.0 && minutes <= 7.0 * 24.0 * 60.0) {
        bail!("--minutes {minutes}: expected more than 0 and at most a week");
    }
    // The plot's text is drawn in DejaVu Sans.
    ensure_debian_packages(&[(
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "fonts-dejavu-core",
    )])?;
    ensure_wasm_target()?;
    ensure_peers()?;
    build_plugins(root)?;
    let out = root.join("benchmarks/soak");
    std::fs::create_dir_all(&out)?;
    bench::run_parts(
        root,
        Some(bench::SOAK),
        &[
            (bench::SOAK_MINUTES_ENV, minutes.to_string()),
            ("FERRULE_SOAK_OUT", out.display().to_string()),
        ],
    )
}

/// Runs the fleet test (`bench-cluster` of the test profile, built by the
/// caller) with `gateways` gateways.
fn fleet(root: &Path, gateways: usize) -> anyhow::Result<()> {
    if !(1..=1000).contains(&gateways) {
        bail!("--gateways {gateways}: expected 1 to 1000");
    }
    let mut command = Command::new(target_dir(root).join("debug/bench-cluster"));
    command
        .env("FERRULE_FLEET_GATEWAYS", gateways.to_string())
        .env("FERRULE_LOG", "warn");
    run(root, &mut command)
}

/// Regenerates the Sparkplug B types, formatted as the tree is.
fn proto(root: &Path) -> anyhow::Result<()> {
    run(
        root,
        cargo()
            .args(["run", "--quiet", "--manifest-path"])
            .arg(root.join("tools/protogen/Cargo.toml"))
            .arg("--")
            .arg(root),
    )?;
    run(
        root,
        Command::new("rustfmt")
            .args(["--edition", "2024"])
            .arg(root.join("runtime/src/publish/sparkplug/proto.rs")),
    )
}

fn build_plugins(root: &Path) -> anyhow::Result<()> {
    for ws in PLUGIN_WORKSPACES {
        run(&root.join(ws), cargo().args(["build", "--release"]))?;
    }
    Ok(())
}

/// The environment under which cargo runs clippy as the compiler of the
/// workspace's own crates (see `test`). Every build in one `cargo xtask
/// test` uses it, so none rebuilds what another built.
fn linted_env(command: &mut Command) {
    command.env("RUSTC_WORKSPACE_WRAPPER", clippy_driver()).env(
        "CLIPPY_ARGS",
        "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__",
    );
}

/// clippy-driver from the toolchain running this cargo, else from `PATH`.
fn clippy_driver() -> PathBuf {
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .map(|cargo| cargo.with_file_name("clippy-driver"))
        .filter(|driver| driver.is_file())
        .unwrap_or_else(|| PathBuf::from("clippy-driver"))
}

/// The cargo-machete release the unused-dependency check runs.
const MACHETE: &str = "cargo-machete@0.9.2";

/// cargo-machete, installed under `target/tools` unless it is there: a
/// debug build (about 40 s on 2 cores, against 3 minutes optimised; it
/// only reads a few dozen files). Run as its own binary from the root it
/// checks every workspace below it.
fn ensure_machete(root: &Path) -> anyhow::Result<std::path::PathBuf> {
    let tools = target_dir(root).join("tools");
    let bin = tools.join("bin").join("cargo-machete");
    if !bin.is_file() {
        run(
            root,
            cargo()
                .args(["install", "--locked", "--debug", "--root"])
                .arg(&tools)
                .arg(MACHETE),
        )?;
    }
    Ok(bin)
}

fn ensure_wasm_target() -> anyhow::Result<()> {
    let output = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to add the wasm32-wasip2 target")?;
    if String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|l| l.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    run(
        Path::new("."),
        Command::new("rustup").args(["target", "add", WASM_TARGET]),
    )
}

/// The pymodbus version the Modbus tests and example run against.
const PYMODBUS: &str = "pymodbus==3.8.6";

/// What the README's Python command-signing example needs.
const CRYPTOGRAPHY: &str = "cryptography>=41";

/// Python tools the tests start as peers: pymodbus (a Modbus TCP device),
/// and cryptography for the command-signing example.
fn ensure_python_tools() -> anyhow::Result<()> {
    let have = Command::new("python3")
        .args([
            "-c",
            "import pymodbus, sys; from cryptography.hazmat.primitives.asymmetric import ed25519; sys.exit(0 if pymodbus.__version__ == '3.8.6' else 1)",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if have {
        return Ok(());
    }
    eprintln!("xtask: installing {PYMODBUS} and {CRYPTOGRAPHY} (pip)");
    run(
        Path::new("."),
        Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            PYMODBUS,
            CRYPTOGRAPHY,
        ]),
    )
}

/// The independent Sparkplug B host the Sparkplug tests decode with
/// (Eclipse Tahu's payload codec, from npm, at the version its lock file
/// pins), under `tests/peers/sparkplug/node_modules`.
fn ensure_sparkplug_host(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("tests/peers/sparkplug");
    let installed =
        std::fs::read_to_string(dir.join("node_modules/sparkplug-payload/package.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|v| v["version"].as_str().map(str::to_string));
    if installed.as_deref() == Some("1.0.3") {
        return Ok(());
    }
    eprintln!("xtask: installing the Sparkplug test host's codec into tests/peers/sparkplug (npm)");
    run(
        &dir,
        Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]),
    )
}

fn ensure_peers() -> anyhow::Result<()> {
    ensure_python_tools()?;
    // The broker and its clients, the openssl tool (the TLS tests run
    // `openssl s_server` as a peer that speaks only old or weak TLS), and
    // tmux (the terminal `ferrule top` is tested in), and RabbitMQ (the
    // clustered broker of another make the cluster and fleet tests run).
    ensure_debian_packages(&[
        ("mosquitto", "mosquitto"),
        ("rabbitmq-server", "rabbitmq-server"),
        ("mosquitto_sub", "mosquitto-clients"),
        ("openssl", "openssl"),
        ("tmux", "tmux"),
    ])
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs the Debian packages (apt-get, as root or through sudo) whose
/// program (the first of each pair: a name looked up in the system's
/// binary directories, or an absolute path) is not on the machine.
fn ensure_debian_packages(wanted: &[(&str, &str)]) -> anyhow::Result<()> {
    let have = |bin: &str| {
        Path::new(bin).is_absolute() && Path::new(bin).is_file()
            || ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
                .iter()
                .any(|dir| Path::new(dir).join(bin).is_file())
    };
    let missing: Vec<&str> = (wanted.iter())
        .filter(|(bin, _)| !have(bin))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {} (Debian packages)", missing.join(", "));
    let as_root = |args: &[&str]| {
        let mut command = if is_root() {
            Command::new(args[0])
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg(args[0]);
            sudo
        };
        command
            .args(&args[1..])
            .env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    run(Path::new("."), &mut as_root(&["apt-get", "update"]))?;
    let mut install = vec!["apt-get", "install", "-y", "--no-install-recommends"];
    install.extend(missing);
    run(Path::new("."), &mut as_root(&install))
}
