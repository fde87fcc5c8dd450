//! `ferrule new` as a new user runs it, from an empty folder outside the
//! repository, for each language: the driver project it makes passes its
//! own test, builds, and `ferrule demo --drivers` shows its readings; the
//! processor project builds and passes `ferrule check` behind that driver.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferrule_tests::{
    GatewayToml, Pki, PluginToml, ferrule_bin, gateway_toml, shared_compile_cache, target_dir,
    test_cache_home,
};

/// The repository's `sdk/` (what `--sdk-path` points at: the SDK is not
/// released where these tests run).
fn sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk")
}

/// Runs `command` in `dir`; its output, or an error with it.
fn run(dir: &Path, command: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{command:?}");
    let out = command.current_dir(dir).output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        out.status.success(),
        "{shown} failed ({}):\n{text}",
        out.status
    );
    Ok(text)
}

fn ferrule(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    run(
        dir,
        Command::new(ferrule_bin()?)
            .args(args)
            .env("XDG_CACHE_HOME", test_cache_home()),
    )
}

/// `ferrule new KIND --lang LANG NAME` in `dir`.
fn new(dir: &Path, kind: &str, lang: &str, name: &str) -> anyhow::Result<PathBuf> {
    let sdk = sdk();
    let out = ferrule(
        dir,
        &[
            "new",
            kind,
            name,
            "--lang",
            lang,
            "--sdk-path",
            &sdk.to_string_lossy(),
        ],
    )?;
    assert!(out.contains("created"), "{out}");
    Ok(dir.join(name))
}

/// The guest tools `cargo xtask test` installed.
fn python() -> anyhow::Result<PathBuf> {
    let python = target_dir().join("guest-tools/python/bin/python");
    anyhow::ensure!(
        python.is_file(),
        "{} not found; `cargo xtask guest-plugins` installs it",
        python.display()
    );
    Ok(python)
}

/// Tests, then builds the project `lang` made; returns the component.
fn test_and_build(project: &Path, lang: &str, lib: &str) -> anyhow::Result<PathBuf> {
    match lang {
        "rust" => {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            // One target directory for every run's projects, so their
            // dependencies are compiled once.
            let target = target_dir().join("new-projects");
            let out = run(
                project,
                Command::new(&cargo)
                    .arg("test")
                    .env("CARGO_TARGET_DIR", &target),
            )?;
            assert!(out.contains("test result: ok. 1 passed"), "{out}");
            run(
                project,
                Command::new(&cargo)
                    .args(["build", "--release", "--target", "wasm32-wasip2"])
                    .env("CARGO_TARGET_DIR", &target),
            )?;
            Ok(target.join(format!("wasm32-wasip2/release/{lib}.wasm")))
        }
        "python" => {
            let out = run(
                project,
                Command::new(python()?).args(["-m", "unittest", "-v"]),
            )?;
            assert!(out.contains("OK"), "{out}");
            let out = run(
                project,
                Command::new(python()?)
                    .args(["-m", "ferrule_sdk", "build", &format!("{lib}.py")])
                    .args(["-o", &format!("{lib}.wasm")]),
            )?;
            assert!(out.contains("ferrule:plugin@0.2.0"), "{out}");
            Ok(project.join(format!("{lib}.wasm")))
        }
        _ => {
            run(
                project,
                Command::new("npm").args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--no-package-lock",
                ]),
            )?;
            let out = run(project, Command::new("npm").arg("test"))?;
            assert!(
                out.contains("# pass 1") && out.contains("# fail 0"),
                "{out}"
            );
            run(project, Command::new("npm").args(["run", "build"]))?;
            Ok(project.join(format!("{lib}.wasm")))
        }
    }
}

async fn new_projects_build_and_run(lang: &str) -> anyhow::Result<()> {
    // Outside the repository: nothing here can lean on its files.
    let dir = tempfile::Builder::new().prefix("ferrule-new-").tempdir()?;
    let (driver_lib, processor_lib) = match lang {
        "js" => ("my-meter", "my-filter"),
        _ => ("my_meter", "my_filter"),
    };
    let driver = new(dir.path(), "driver", lang, "my-meter")?;
    for file in ["README.md", "drivers.toml"] {
        assert!(driver.join(file).is_file(), "{file} missing");
    }
    let driver_wasm = test_and_build(&driver, lang, driver_lib)?;
    if lang == "rust" {
        // The demo file points at the project's own target directory.
        let local = driver.join(format!("target/wasm32-wasip2/release/{driver_lib}.wasm"));
        std::fs::create_dir_all(local.parent().unwrap_or(&driver))?;
        std::fs::copy(&driver_wasm, &local)?;
    }
    let out = ferrule(
        &driver,
        &["demo", "--drivers", "drivers.toml", "--duration", "4s"],
    )?;
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("my-meter") && l.contains("count="))
        .collect();
    assert!(lines.len() >= 3, "{lang}: too few readings shown:\n{out}");
    eprintln!(
        "{lang}: demo showed {} messages, e.g. {:?}",
        lines.len(),
        lines[0]
    );

    let processor = new(dir.path(), "processor", lang, "my-filter")?;
    let processor_wasm = test_and_build(&processor, lang, processor_lib)?;
    let pki = Pki::new(&dir.path().join("certs"))?;
    let gateway: GatewayToml = gateway_toml(&dir.path().join("data"), &pki, 8883)
        .set(
            "runtime",
            "compile_cache_dir",
            shared_compile_cache().display().to_string(),
        )
        .driver(
            PluginToml::new("meter", &driver_wasm)
                .limit("memory_mb", 64)
                .processor(
                    PluginToml::new("filter", &processor_wasm)
                        .limit("memory_mb", 64)
                        .config("factor", 2.0),
                ),
        );
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, gateway.render())?;
    let out = ferrule(dir.path(), &["check", &config.to_string_lossy()])?;
    assert!(out.contains("ok: 1 driver(s), 1 processor(s)"), "{out}");
    assert!(
        out.contains("ferrule:plugin@0.2.0") || out.contains("0.2.0"),
        "{out}"
    );
    Ok(())
}

#[tokio::test]
async fn new_rust_projects_build_test_and_run() -> anyhow::Result<()> {
    new_projects_build_and_run("rust").await
}

#[tokio::test]
async fn new_python_projects_build_test_and_run() -> anyhow::Result<()> {
    new_projects_build_and_run("python").await
}

#[tokio::test]
async fn new_javascript_projects_build_test_and_run() -> anyhow::Result<()> {
    new_projects_build_and_run("js").await
}
