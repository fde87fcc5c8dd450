//! The Python and JavaScript plugin kits in CI: their pinned toolchains,
//! installed into the project's own folders only when missing, their own
//! tests, and the guest plugins the integration tests run, rebuilt only
//! when their sources change.
//!
//! - Python: a venv in `target/guest-tools/python` with componentize-py
//!   and the SDK (`sdk/python`, editable).
//! - JavaScript: `sdk/js/node_modules` (componentize-js, esbuild), from
//!   the exact versions in `sdk/js/package.json`.
//! - Plugins: `target/guest-plugins/{name}.wasm`, each beside a stamp of
//!   the hash of everything it is built from.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::run;

/// The componentize-py release the Python kit builds with.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// What the guest plugins are built from.
struct GuestPlugin {
    /// `target/guest-plugins/{name}.wasm`.
    name: &'static str,
    /// The module, relative to the repository root.
    source: &'static str,
}

const PLUGINS: [GuestPlugin; 6] = [
    GuestPlugin {
        name: "py-sim",
        source: "sdk/python/examples/sim.py",
    },
    GuestPlugin {
        name: "py-scale",
        source: "sdk/python/examples/scale.py",
    },
    GuestPlugin {
        name: "py-hostile",
        source: "tests/fixtures/guest/py_hostile.py",
    },
    GuestPlugin {
        name: "js-sim",
        source: "sdk/js/examples/sim.js",
    },
    GuestPlugin {
        name: "js-scale",
        source: "sdk/js/examples/scale.js",
    },
    GuestPlugin {
        name: "js-hostile",
        source: "tests/fixtures/guest/js-hostile.js",
    },
];

fn target(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// The venv's Python, with componentize-py and the SDK installed.
pub fn python(root: &Path) -> anyhow::Result<PathBuf> {
    let venv = target(root).join("guest-tools").join("python");
    let bin = venv.join("bin").join("python");
    let ready = |bin: &Path| {
        Command::new(bin)
            .args([
                "-c",
                "import componentize_py, ferrule_sdk, importlib.metadata as m, sys; \
                 sys.exit(0 if m.version('componentize-py') == '0.25.1' else 1)",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if bin.is_file() && ready(&bin) {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing {COMPONENTIZE_PY} and the Python SDK into {}",
        venv.display()
    );
    run(
        root,
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
    )?;
    run(
        root,
        Command::new(&bin).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            COMPONENTIZE_PY,
            "-e",
            "sdk/python",
        ]),
    )?;
    if !ready(&bin) {
        bail!(
            "{}: componentize-py or ferrule_sdk still missing after install",
            bin.display()
        );
    }
    Ok(bin)
}

/// `sdk/js/node_modules`, installed from `sdk/js/package.json` unless
/// componentize-js and esbuild are there at the pinned versions.
pub fn node_modules(root: &Path) -> anyhow::Result<()> {
    let sdk = root.join("sdk/js");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sdk.join("package.json"))?)?;
    let wanted = manifest["dependencies"]
        .as_object()
        .context("sdk/js/package.json has no dependencies")?;
    let installed = |name: &str| -> Option<String> {
        let text =
            std::fs::read_to_string(sdk.join("node_modules").join(name).join("package.json"))
                .ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["version"].as_str().map(str::to_string)
    };
    let missing = wanted
        .iter()
        .any(|(name, version)| installed(name).as_deref() != version.as_str());
    if !missing {
        return Ok(());
    }
    eprintln!("xtask: installing the JavaScript kit's tools into sdk/js/node_modules (npm)");
    run(
        &sdk,
        Command::new("npm").args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-package-lock",
            "--loglevel=error",
        ]),
    )
}

/// The kits' own tests: Python's unittest and Node's test runner.
pub fn test_kits(root: &Path) -> anyhow::Result<()> {
    let python = python(root)?;
    node_modules(root)?;
    run(
        root,
        Command::new(&python).args(["-m", "unittest", "discover", "-s", "sdk/python/tests"]),
    )?;
    run(
        &root.join("sdk/js"),
        Command::new("node").args(["--test", "test/"]),
    )
}

/// Every file under `path` (or `path` itself), in a stable order.
fn files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if matches!(name, "node_modules" | "__pycache__" | "tests" | "test")
            || name.ends_with(".egg-info")
        {
            continue;
        }
        files(&entry, out)?;
    }
    Ok(())
}

/// A hash of the plugin's module, its kit and the kit's pinned tools.
fn inputs_hash(root: &Path, plugin: &GuestPlugin) -> anyhow::Result<String> {
    let kit = match plugin.source.ends_with(".py") {
        true => [
            root.join("sdk/python/ferrule_sdk"),
            root.join("sdk/python/pyproject.toml"),
        ],
        false => [root.join("sdk/js/src"), root.join("sdk/js/package.json")],
    };
    let mut list = Vec::new();
    files(&root.join(plugin.source), &mut list)?;
    for path in kit.iter().chain([&root.join("sdk/js/bin")]) {
        files(path, &mut list)?;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    COMPONENTIZE_PY.hash(&mut hasher);
    for path in list {
        path.strip_prefix(root).unwrap_or(&path).hash(&mut hasher);
        std::fs::read(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .hash(&mut hasher);
    }
    Ok(format!("{:016x}", hasher.finish()))
}

/// Builds every guest plugin whose inputs changed since its last build;
/// returns where they are.
pub fn build_all(root: &Path) -> anyhow::Result<PathBuf> {
    let python = python(root)?;
    node_modules(root)?;
    let out = target(root).join("guest-plugins");
    std::fs::create_dir_all(&out)?;
    for plugin in &PLUGINS {
        let wasm = out.join(format!("{}.wasm", plugin.name));
        let stamp = out.join(format!("{}.inputs", plugin.name));
        let hash = inputs_hash(root, plugin)?;
        if wasm.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == hash) {
            continue;
        }
        let _ = std::fs::remove_file(&stamp);
        let mut command = match plugin.source.ends_with(".py") {
            true => {
                let mut c = Command::new(&python);
                c.args(["-m", "ferrule_sdk", "build"]);
                c
            }
            false => {
                let mut c = Command::new("node");
                c.arg(root.join("sdk/js/bin/ferrule-js.mjs")).arg("build");
                c
            }
        };
        command.arg(root.join(plugin.source)).arg("-o").arg(&wasm);
        run(root, &mut command)?;
        std::fs::write(&stamp, hash)?;
    }
    Ok(out)
}
