//! `cargo xtask bench [PART]`: builds once (release), runs the benchmark
//! parts, each a binary of `ferrule-benches` that prints its table and writes
//! `{part}.json`, then merges them into `benchmarks/results.json` and
//! renders `BENCHMARKS.md` with the machine, the date and how to reproduce.
//! Running one part updates that part and keeps the others' last results.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use ferrule_figures::number;

/// Every part, in the order a full run takes them.
pub const PARTS: [(&str, &str); 14] = [
    ("e2e", "end-to-end throughput vs a bare rumqttc client"),
    (
        "latency",
        "reading-to-subscriber latency at 1,000 readings/s",
    ),
    ("stages", "cost of each extra processor stage"),
    (
        "backlog",
        "backlog drain of 1,000,000 readings vs capture rate",
    ),
    ("footprint", "idle RSS and CPU with 1, 10 and 50 drivers"),
    (
        "gateways",
        "same Modbus job on ferrule, Node-RED, ThingsBoard gateway",
    ),
    ("queue", "queue capture and drain"),
    ("plugin", "WASM poll vs native, instance start, start-up"),
    (
        "reload",
        "hot reload: untouched driver's gap, changed driver's first reading, signature check",
    ),
    (
        "fleet",
        "deployments over MQTT: time to first reading, transfer throughput, untouched driver's gap",
    ),
    ("link", "TLS + MQTT handshake and reconnect"),
    ("modbus", "Modbus driver vs a native client"),
    (
        "hostile",
        "host memory and telemetry files with hostile plugins",
    ),
    (
        "cluster",
        "50 gateways through one mosquitto and a RabbitMQ cluster that loses a node",
    ),
];

/// The soak (`cargo xtask soak --minutes N`): a part of its own, never in
/// a full run.
pub const SOAK: &str = "soak";

/// How long the soak runs, in minutes (set by `cargo xtask soak`).
pub const SOAK_MINUTES_ENV: &str = "FERRULE_SOAK_MINUTES";

/// Node-RED and the Modbus nodes the side-by-side part runs (Node-RED 5
/// needs a newer Node.js than 20; newer node-red-contrib-modbus releases
/// depend on a tarball outside the npm registry).
const NODE_RED: [&str; 2] = ["node-red@4.1.15", "node-red-contrib-modbus@5.23.3"];
/// ThingsBoard IoT Gateway and the pymodbus its Modbus connector insists
/// on (it would pip-install it at first use otherwise).
const THINGSBOARD: [&str; 4] = [
    "thingsboard-gateway==3.8.5",
    "pymodbus==3.9.2",
    "pyserial==3.5",
    "pyserial-asyncio==0.6",
];

/// Runs `part` (every part of a full run when None), with `env` set for
/// the parts' processes.
pub fn run_parts(root: &Path, part: Option<&str>, env: &[(&str, String)]) -> anyhow::Result<()> {
    if part == Some("render") {
        // Notes edited after a run: render the recorded results again.
        let path = root.join("benchmarks/results.json");
        let results: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("unreadable {}", path.display()))?;
        std::fs::write(root.join("BENCHMARKS.md"), render(root, &results)?)?;
        return update_readme(root, &results);
    }
    let parts: Vec<&str> = match part {
        None => PARTS.iter().map(|(p, _)| *p).collect(),
        Some(p) if PARTS.iter().any(|(name, _)| *name == p) => vec![p],
        // Not in a full run: it takes as long as it is asked to.
        Some(SOAK) => vec![SOAK],
        Some(other) => bail!(
            "unknown benchmark {other:?}; parts: {}",
            PARTS.map(|(p, _)| p).join(", ")
        ),
    };
    let target = crate::target_dir(root);
    let peers = target.join("bench-peers");
    if parts.contains(&"gateways") {
        ensure_gateway_peers(&peers)?;
    }
    // The benchmarks link the library with its `demo` feature (test PKI,
    // config builders); the gateway they measure is the production binary,
    // built on its own afterwards so `target/release/ferrule` is the one
    // the .deb ships.
    crate::run(
        root,
        crate::cargo().args(["build", "--release", "-p", "ferrule-benches", "--bins"]),
    )?;
    crate::run(
        root,
        crate::cargo().args(["build", "--release", "-p", "ferrule", "--bins"]),
    )?;
    let out = target.join("bench-results");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let started = Instant::now();
    let mut failed = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let title = PARTS
            .iter()
            .find(|(p, _)| p == part)
            .map_or("", |(_, t)| *t);
        crate::step(
            i + 1,
            parts.len(),
            &format!(
                "benchmark {part}: {title} ({:.0} s in so far)",
                started.elapsed().as_secs_f64()
            ),
        );
        let bin = target.join("release").join(format!("bench-{part}"));
        let mut command = Command::new(&bin);
        command
            .env("FERRULE_BENCH_OUT", &out)
            .env("FERRULE_BENCH_PEERS", &peers)
            .env("FERRULE_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)));
        let part_started = Instant::now();
        if let Err(e) = crate::run(root, &mut command) {
            eprintln!("xtask: benchmark {part} failed: {e:#}");
            failed.push(*part);
        }
        eprintln!(
            "xtask: {part} took {:.0} s",
            part_started.elapsed().as_secs_f64()
        );
    }
    let results = merge(root, &out, &parts, env)?;
    std::fs::write(root.join("BENCHMARKS.md"), render(root, &results)?)?;
    update_readme(root, &results)?;
    println!();
    println!("{}", summary(&results, &parts));
    eprintln!(
        "xtask: benchmarks took {:.0} s; results in benchmarks/results.json and BENCHMARKS.md",
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!("benchmarks failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Installs Node-RED (npm) and ThingsBoard IoT Gateway (pip, in a venv of
/// its own so its pymodbus does not replace the simulator's) under
/// `peers`, unless already there.
fn ensure_gateway_peers(peers: &Path) -> anyhow::Result<()> {
    let node_red = peers.join("node-red");
    let installed = |package: &str| {
        std::fs::read_to_string(
            node_red
                .join("node_modules")
                .join(package)
                .join("package.json"),
        )
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string))
    };
    let wanted = |spec: &str| spec.rsplit_once('@').map(|(_, v)| v.to_string());
    if NODE_RED
        .iter()
        .any(|spec| installed(spec.rsplit_once('@').map_or(*spec, |(p, _)| p)) != wanted(spec))
    {
        std::fs::create_dir_all(&node_red)?;
        if !node_red.join("package.json").is_file() {
            std::fs::write(
                node_red.join("package.json"),
                "{\"name\": \"ferrule-bench-node-red\", \"private\": true}\n",
            )?;
        }
        eprintln!("xtask: installing {} (npm)", NODE_RED.join(", "));
        crate::run(
            &node_red,
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--save-exact"])
                .args(NODE_RED),
        )?;
    }
    let venv = peers.join("tb-venv");
    let python = venv.join("bin/python");
    let have_tb = python.is_file()
        && Command::new(&python)
            .args([
                "-c",
                "import importlib.metadata as m, sys; sys.exit(0 if m.version('thingsboard-gateway') == '3.8.5' and m.version('pymodbus') == '3.9.2' else 1)",
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    if !have_tb {
        eprintln!("xtask: installing {} (pip, venv)", THINGSBOARD.join(", "));
        crate::run(
            Path::new("."),
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
        )?;
        crate::run(
            Path::new("."),
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(THINGSBOARD),
        )?;
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "not found".into())
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_string(), |(_, m)| m.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map_or("unknown".into(), |s| s.trim_matches('"').to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    json!({
        "cpu": model,
        "cores": cores,
        "memory_gib": (memory_gib * 10.0).round() / 10.0,
        "os": os,
        "kernel": output("uname", &["-r"]),
        "rustc": output("rustc", &["-V"]),
        "mosquitto": output("mosquitto", &["-h"]),
        "python": output("python3", &["--version"]),
        "node": output("node", &["--version"]),
    })
}

/// Reads the parts just run from `out`, stamps them, and merges them into
/// `benchmarks/results.json` (keeping parts not run this time).
fn merge(root: &Path, out: &Path, ran: &[&str], env: &[(&str, String)]) -> anyhow::Result<Value> {
    let path = root.join("benchmarks/results.json");
    let mut results: Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| json!({}));
    let now = output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]);
    let commit = output("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = !output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    results["machine"] = machine();
    results["date"] = json!(now);
    if !results["parts"].is_object() {
        results["parts"] = json!({});
    }
    for part in ran {
        let file = out.join(format!("{part}.json"));
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let mut value: Value = serde_json::from_str(&text)
            .with_context(|| format!("unreadable {}", file.display()))?;
        value["ran_at"] = json!(now);
        value["commit"] = json!(if dirty {
            format!("{commit}+changes")
        } else {
            commit.clone()
        });
        let minutes = env.iter().find(|(k, _)| *k == SOAK_MINUTES_ENV);
        value["command"] = json!(match minutes {
            Some((_, minutes)) if *part == SOAK => format!("cargo xtask soak --minutes {minutes}"),
            _ => format!("cargo xtask bench {part}"),
        });
        results["parts"][*part] = value;
    }
    std::fs::create_dir_all(root.join("benchmarks"))?;
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    Ok(results)
}

fn target_text(figure: &Value) -> String {
    let t = &figure["target"];
    if !t.is_object() {
        return String::new();
    }
    let op = if t["op"] == "<=" { "≤" } else { "≥" };
    let limit = number(t["limit"].as_f64().unwrap_or(f64::NAN));
    if t["on"] == "ratio" {
        format!("ratio {op} {limit}")
    } else {
        format!("{op} {limit} {}", figure["unit"].as_str().unwrap_or(""))
    }
}

fn met_text(figure: &Value) -> &'static str {
    match figure["met"].as_bool() {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "",
    }
}

fn figures_table(figures: &[Value]) -> String {
    let mut out = String::from(
        "| figure | value | unit | baseline (same run) | ratio | target | met |\n| --- | ---: | --- | --- | ---: | --- | --- |\n",
    );
    for f in figures {
        let baseline = match (f["baseline_name"].as_str(), f["baseline"].as_f64()) {
            (Some(name), Some(v)) => format!("{name}: {}", number(v)),
            _ => String::new(),
        };
        let ratio = f["ratio"]
            .as_f64()
            .map(|r| format!("{r:.2}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "| {} | {} | {} | {baseline} | {ratio} | {} | {} |\n",
            f["name"].as_str().unwrap_or(""),
            number(f["value"].as_f64().unwrap_or(f64::NAN)),
            f["unit"].as_str().unwrap_or(""),
            target_text(f),
            met_text(f),
        ));
    }
    out
}

fn part_figures(results: &Value, part: &str) -> Vec<Value> {
    results["parts"][part]["figures"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Every figure with a target, across parts.
fn targets_table(results: &Value) -> String {
    let mut out = String::from(
        "| part | figure | measured | baseline (same run) | ratio | target | met |\n| --- | --- | ---: | --- | ---: | --- | --- |\n",
    );
    for (part, _) in PARTS {
        for f in part_figures(results, part) {
            if !f["target"].is_object() {
                continue;
            }
            let baseline = match (f["baseline_name"].as_str(), f["baseline"].as_f64()) {
                (Some(name), Some(v)) => format!("{name}: {}", number(v)),
                _ => String::new(),
            };
            out.push_str(&format!(
                "| {part} | {} | {} {} | {baseline} | {} | {} | {} |\n",
                f["name"].as_str().unwrap_or(""),
                number(f["value"].as_f64().unwrap_or(f64::NAN)),
                f["unit"].as_str().unwrap_or(""),
                f["ratio"]
                    .as_f64()
                    .map(|r| format!("{r:.2}"))
                    .unwrap_or_default(),
                target_text(&f),
                met_text(&f),
            ));
        }
    }
    out
}

/// What the terminal shows at the end: the targets, then where the files are.
fn summary(results: &Value, ran: &[&str]) -> String {
    let mut out = format!("benchmarks run: {}\n\n", ran.join(", "));
    out.push_str("targets (all parts, latest results):\n\n");
    out.push_str(&targets_table(results));
    out
}

fn render(root: &Path, results: &Value) -> anyhow::Result<String> {
    let m = &results["machine"];
    let mut doc = String::new();
    doc.push_str("# Benchmarks\n\n");
    doc.push_str(
        "Every figure here was measured by `cargo xtask bench` against a baseline measured in the same run on the same machine, and is written by it (with `benchmarks/results.json`); the analysis under each part comes from `benchmarks/notes/`. Timings are never asserted in tests: the suite prints figures, and a smoke test runs each part for about a second to keep it working.\n\n",
    );
    doc.push_str("## Machine\n\n");
    doc.push_str(&format!(
        "- CPU: {} ({} cores), memory {} GiB\n- OS: {}, kernel {}\n- {}; {}; {}; Node.js {}\n- Last run: {}\n\n",
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["memory_gib"],
        m["os"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        m["rustc"].as_str().unwrap_or("?"),
        m["mosquitto"].as_str().unwrap_or("?"),
        m["python"].as_str().unwrap_or("?"),
        m["node"].as_str().unwrap_or("?"),
        results["date"].as_str().unwrap_or("?"),
    ));
    doc.push_str("## How to reproduce\n\n");
    doc.push_str(
        "```sh\ncargo xtask test          # once: installs mosquitto, pymodbus, the wasm32-wasip2 target\ncargo xtask bench         # every part (release build), about 10 minutes on 2 cores\ncargo xtask bench e2e     # one part; the others keep their last results\n```\n\n",
    );
    doc.push_str(&format!(
        "Parts: {}. `cargo xtask bench gateways` installs Node-RED ({}) with npm and ThingsBoard IoT Gateway ({}) with pip into a venv, under `target/bench-peers/`.\n\n",
        PARTS.map(|(p, _)| format!("`{p}`")).join(", "),
        NODE_RED.join(", "),
        THINGSBOARD.join(", "),
    ));
    doc.push_str(
        "Cores: on a machine with two or more cores and `taskset`, the process under test (ferrule, the bare client, Node-RED, ThingsBoard gateway) is pinned to core 0, and mosquitto, the simulated devices and the measuring process to core 1 (`taskset -a -p -c`), so the broker's work is not billed to the gateway and the gateway cannot borrow the broker's core. In-process parts (stages, queue, plugin, modbus) are not pinned. Everything runs on loopback.\n\n",
    );
    doc.push_str("## Targets\n\n");
    doc.push_str(&targets_table(results));
    doc.push('\n');
    for part in PARTS.iter().map(|(p, _)| *p).chain([SOAK]) {
        let p = &results["parts"][part];
        if !p.is_object() {
            continue;
        }
        doc.push_str(&format!(
            "## {part}: {}\n\n`{}` — ran {} at commit {}, took {:.0} s{}\n\n",
            p["title"].as_str().unwrap_or(""),
            p["command"].as_str().unwrap_or(""),
            p["ran_at"].as_str().unwrap_or("?"),
            p["commit"].as_str().unwrap_or("?"),
            p["seconds"].as_f64().unwrap_or(0.0),
            if p["smoke"].as_bool() == Some(true) {
                " (smoke run: one-second figures, not representative)"
            } else {
                ""
            },
        ));
        for line in p["method"].as_array().into_iter().flatten() {
            doc.push_str(&format!("- {}\n", line.as_str().unwrap_or("")));
        }
        doc.push('\n');
        doc.push_str(&figures_table(&part_figures(results, part)));
        let notes: Vec<&str> = p["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !notes.is_empty() {
            doc.push('\n');
            for note in notes {
                doc.push_str(&format!("- {note}\n"));
            }
        }
        let analysis = root.join("benchmarks/notes").join(format!("{part}.md"));
        if let Ok(text) = std::fs::read_to_string(&analysis) {
            doc.push('\n');
            doc.push_str(text.trim_end());
            doc.push('\n');
        }
        doc.push('\n');
    }
    Ok(doc)
}

/// The README's headline table lives between these markers.
const README_START: &str = "<!-- bench:start -->";
const README_END: &str = "<!-- bench:end -->";

/// Rewrites the README's headline table from the latest results, so the
/// README never shows figures that BENCHMARKS.md does not.
fn update_readme(root: &Path, results: &Value) -> anyhow::Result<()> {
    let path = root.join("README.md");
    let text = std::fs::read_to_string(&path)?;
    let (Some(start), Some(end)) = (text.find(README_START), text.find(README_END)) else {
        return Ok(());
    };
    if end < start {
        return Ok(());
    }
    let m = &results["machine"];
    let table = format!(
        "{README_START}\n{}\nLast run {} on {} ({} cores).\n",
        targets_table(results),
        results["date"].as_str().unwrap_or("?"),
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
    );
    let updated = format!("{}{table}{}", &text[..start], &text[end..]);
    if updated != text {
        std::fs::write(&path, updated)?;
    }
    Ok(())
}
