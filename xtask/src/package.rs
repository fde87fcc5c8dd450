//! `cargo xtask package [--profile P] [--check]`: the .deb a gateway is
//! installed from (cargo-deb), and the checks CI runs on it.
//!
//! The package holds the production binary (built without the `demo`
//! feature), the hardened systemd unit (`packaging/ferrule.service`), the
//! config as a conffile and the example plugins. `--check` then lints it,
//! installs it on this machine, verifies the installed unit, checks the
//! installed config as the service's user, upgrades over a changed config
//! and purges it again.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The cargo-deb release that builds the package.
const CARGO_DEB: &str = "cargo-deb@3.8.0";

/// The example plugins the package ships under /usr/share/ferrule/plugins
/// (the `assets` of `[package.metadata.deb]` in runtime/Cargo.toml).
const PLUGINS: [&str; 4] = ["sim", "scale", "deadband", "modbus_tcp"];

/// The highest `systemd-analyze security` exposure the unit may have
/// (0.0 is fully locked down, 10.0 fully exposed).
const MAX_EXPOSURE: f64 = 2.0;

/// Builds the .deb with `profile` (`dist` for a gateway; CI's check uses
/// the test build's profile so wasmtime is compiled once per run); returns
/// its path.
pub fn build(root: &Path, profile: &str) -> anyhow::Result<PathBuf> {
    crate::ensure_wasm_target()?;
    crate::build_plugins(root)?;
    // The library's `demo` feature is off unless something in the same
    // build asks for it: `-p ferrule` alone is the production binary.
    crate::run(
        root,
        crate::cargo().args(["build", "-p", "ferrule", "--bins", "--profile", profile]),
    )?;
    let target = crate::target_dir(root);
    let out = target.join("debian");
    // The example plugins, where the package's assets list takes them from
    // (cargo-deb reads only `target/release/` as the build's own output).
    let staged = out.join("plugins");
    std::fs::create_dir_all(&staged)?;
    for plugin in PLUGINS {
        let name = format!("{plugin}.wasm");
        let built = target.join(crate::WASM_TARGET).join("release").join(&name);
        std::fs::copy(&built, staged.join(&name))
            .with_context(|| format!("cannot stage {}", built.display()))?;
    }
    // cargo-deb prints the path of the .deb it wrote (its name carries the
    // version and architecture, which cargo-deb works out).
    let printed = output(
        Command::new(ensure_cargo_deb(root)?)
            .current_dir(root)
            .args([
                "-p",
                "ferrule",
                "--no-build",
                "--profile",
                profile,
                "--output",
            ])
            .arg(&out),
    )?;
    let deb = printed
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo-deb printed no .deb path")?;
    let binary = target
        .join(if profile == "dev" { "debug" } else { profile })
        .join("ferrule");
    eprintln!(
        "xtask: {} ({} KiB); the binary {} is {} KiB",
        deb.display(),
        std::fs::metadata(&deb)?.len() / 1024,
        binary.display(),
        std::fs::metadata(&binary)?.len() / 1024,
    );
    Ok(deb)
}

/// cargo-deb, installed under `target/tools` unless it is there (a debug
/// build: about 40 s on 2 cores).
fn ensure_cargo_deb(root: &Path) -> anyhow::Result<PathBuf> {
    let tools = crate::target_dir(root).join("tools");
    let bin = tools.join("bin").join("cargo-deb");
    if !bin.is_file() {
        crate::run(
            root,
            crate::cargo()
                .args(["install", "--locked", "--debug", "--root"])
                .arg(&tools)
                .arg(CARGO_DEB),
        )?;
    }
    Ok(bin)
}

/// Output of a command, failing with what it printed when it fails.
fn output(command: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{command:?}").replace('"', "");
    eprintln!("xtask: {shown}");
    let out = command
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{shown} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

/// Lints the package, installs it, checks what was installed, upgrades
/// over a changed config, and purges it.
pub fn check(root: &Path, deb: &Path) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("the package check installs and purges the package: run it as root");
    }
    // lintian, and systemd-analyze (a machine without systemd, a
    // container, lacks it).
    crate::ensure_debian_packages(&[("lintian", "lintian"), ("systemd-analyze", "systemd")])?;
    // lintian: no errors (warnings and notes are printed for the reader).
    let lint = Command::new("lintian")
        .args(["--no-tag-display-limit", "--fail-on", "error"])
        .arg(deb)
        .output()
        .context("cannot run lintian")?;
    let text = String::from_utf8_lossy(&lint.stdout).to_string();
    eprint!("{text}");
    if !lint.status.success() || text.lines().any(|l| l.starts_with("E:")) {
        bail!("lintian reports errors on {}", deb.display());
    }
    // Offline checks of the unit as shipped: its exposure score.
    let unit = root.join("packaging/ferrule.service");
    let threshold = format!("--threshold={}", (MAX_EXPOSURE * 10.0).round());
    let security = output(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", &threshold])
            .arg(&unit),
    )?;
    let score = security
        .lines()
        .find_map(|l| l.split("exposure level for ferrule.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .context("systemd-analyze security printed no exposure level")?;
    eprintln!("xtask: ferrule.service exposure {score:.1} (at most {MAX_EXPOSURE:.1})");
    if score > MAX_EXPOSURE {
        bail!("ferrule.service exposure {score:.1} is above {MAX_EXPOSURE:.1}");
    }

    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "ferrule"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("installed"))
        .unwrap_or(false);
    if installed {
        bail!(
            "a ferrule package is installed on this machine; the package check installs and purges its own, so it will not run here (dpkg --purge ferrule first, if this is no gateway)"
        );
    }
    let result = installed_checks(deb);
    // Purged whatever happened, so the machine is as it was.
    let purge = crate::run(
        Path::new("."),
        Command::new("dpkg").args(["--purge", "ferrule"]),
    );
    result?;
    purge?;
    for gone in ["/usr/bin/ferrule", "/etc/ferrule", "/var/lib/ferrule"] {
        if Path::new(gone).exists() {
            bail!("{gone} is still there after dpkg --purge ferrule");
        }
    }
    eprintln!("xtask: package checks passed");
    Ok(())
}

fn installed_checks(deb: &Path) -> anyhow::Result<()> {
    let deb = deb.to_str().context("the .deb path is not UTF-8")?;
    // As an operator installs it: apt brings its dependencies (adduser,
    // ca-certificates) if the machine lacks them.
    crate::run(
        Path::new("."),
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", deb])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    // The unit as installed: `systemd-analyze verify` prints a warning for
    // anything it doubts (and still exits 0 for some), so any output fails.
    let verify = output(
        Command::new("systemd-analyze").args(["verify", "/usr/lib/systemd/system/ferrule.service"]),
    )?;
    if !verify.trim().is_empty() {
        bail!("systemd-analyze verify ferrule.service:\n{verify}");
    }
    // What the package set up: the user, the directories, the secrets.
    let stat = |path: &str| {
        output(Command::new("stat").args(["-c", "%U:%G %a", path])).map(|s| s.trim().to_string())
    };
    for (path, want) in [
        ("/var/lib/ferrule", "ferrule:ferrule 750"),
        ("/var/cache/ferrule", "ferrule:ferrule 750"),
        ("/etc/ferrule/credentials", "root:root 700"),
        ("/etc/ferrule/credentials/storage.key", "root:root 600"),
        ("/etc/ferrule/gateway.toml", "root:ferrule 640"),
    ] {
        let got = stat(path)?;
        if got != want {
            bail!("{path}: {got}, expected {want}");
        }
    }
    // The installed config, checked as the service's user would run it.
    let as_ferrule = |args: &[&str]| {
        let mut command = Command::new("runuser");
        command.args(["-u", "ferrule", "--"]).args(args);
        command
    };
    output(&mut as_ferrule(&[
        "/usr/bin/ferrule",
        "check",
        "/etc/ferrule/gateway.toml",
    ]))?;
    // The other installed example plugins load: a copy of the config with
    // a second simulated device and the deadband processor.
    let dir = tempfile::Builder::new()
        .prefix("ferrule-package-")
        .tempdir()?;
    let config = dir.path().join("gateway.toml");
    let text = std::fs::read_to_string("/etc/ferrule/gateway.toml")?;
    std::fs::write(
        &config,
        format!(
            "{text}\n[[driver]]\nname = \"sim-1\"\nplugin = \"/usr/share/ferrule/plugins/sim.wasm\"\ninterval_ms = 1000\n\n[driver.config]\nchannels = [{{ name = \"level\", signal = \"counter\" }}]\n\n[[driver.processor]]\nname = \"band\"\nplugin = \"/usr/share/ferrule/plugins/deadband.wasm\"\n"
        ),
    )?;
    crate::run(
        Path::new("."),
        Command::new("chmod").arg("-R").arg("a+rX").arg(dir.path()),
    )?;
    let config = config.to_str().context("temp path is not UTF-8")?;
    let checked = output(&mut as_ferrule(&["/usr/bin/ferrule", "check", config]))?;
    if !checked.contains("ok: 2 driver(s), 2 processor(s)") {
        bail!("ferrule check of the example plugins said:\n{checked}");
    }
    // The production binary has no demo.
    let help = output(Command::new("/usr/bin/ferrule").arg("--help"))?;
    if help.lines().any(|l| l.trim_start().starts_with("demo ")) {
        bail!("the packaged ferrule has the demo command:\n{help}");
    }
    // An upgrade (here: the same package again) keeps a changed config
    // and the storage key.
    let key_before = std::fs::read("/etc/ferrule/credentials/storage.key")?;
    let changed = text.replace("id = \"gateway-1\"", "id = \"line-7\"");
    if changed == text {
        bail!("the shipped config no longer sets id = \"gateway-1\"");
    }
    std::fs::write("/etc/ferrule/gateway.toml", &changed)?;
    crate::run(
        Path::new("."),
        Command::new("dpkg").args(["--install", deb]),
    )?;
    if std::fs::read_to_string("/etc/ferrule/gateway.toml")? != changed {
        bail!("reinstalling the package replaced the changed /etc/ferrule/gateway.toml");
    }
    if std::fs::read("/etc/ferrule/credentials/storage.key")? != key_before {
        bail!("reinstalling the package replaced the storage key");
    }
    Ok(())
}
