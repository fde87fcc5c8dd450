//! `ferrule new driver|processor --lang rust|python|js NAME`: a plugin
//! project that builds as it is, with its own README and a test, from the
//! templates in `templates/` (built into the binary).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// What kind of plugin to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Driver,
    Processor,
}

/// The language its project is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// The SDK release a new project depends on.
const SDK_VERSION: &str = "0.2.0";

/// One file of a project: where it goes (with `{{lib}}` in the name
/// replaced) and its template.
type Template = (&'static str, &'static str);

const RUST_COMMON: [Template; 3] = [
    (
        "Cargo.toml",
        include_str!("../../../templates/rust/Cargo.toml.in"),
    ),
    (
        ".gitignore",
        include_str!("../../../templates/rust/gitignore"),
    ),
    (
        "README.md",
        include_str!("../../../templates/rust/README.md"),
    ),
];
const RUST_DRIVER: Template = (
    "src/lib.rs",
    include_str!("../../../templates/rust/driver.rs"),
);
const RUST_PROCESSOR: Template = (
    "src/lib.rs",
    include_str!("../../../templates/rust/processor.rs"),
);

const PYTHON_COMMON: [Template; 3] = [
    (
        "requirements.txt",
        include_str!("../../../templates/python/requirements.txt"),
    ),
    (
        ".gitignore",
        include_str!("../../../templates/python/gitignore"),
    ),
    (
        "README.md",
        include_str!("../../../templates/python/README.md"),
    ),
];
const PYTHON_DRIVER: [Template; 2] = [
    (
        "{{lib}}.py",
        include_str!("../../../templates/python/driver.py"),
    ),
    (
        "test_{{lib}}.py",
        include_str!("../../../templates/python/test_driver.py"),
    ),
];
const PYTHON_PROCESSOR: [Template; 2] = [
    (
        "{{lib}}.py",
        include_str!("../../../templates/python/processor.py"),
    ),
    (
        "test_{{lib}}.py",
        include_str!("../../../templates/python/test_processor.py"),
    ),
];

const JS_COMMON: [Template; 3] = [
    (
        "package.json",
        include_str!("../../../templates/js/package.json"),
    ),
    (
        ".gitignore",
        include_str!("../../../templates/js/gitignore"),
    ),
    ("README.md", include_str!("../../../templates/js/README.md")),
];
const JS_DRIVER: [Template; 2] = [
    (
        "{{lib}}.js",
        include_str!("../../../templates/js/driver.js"),
    ),
    (
        "test-{{lib}}.mjs",
        include_str!("../../../templates/js/test-driver.mjs"),
    ),
];
const JS_PROCESSOR: [Template; 2] = [
    (
        "{{lib}}.js",
        include_str!("../../../templates/js/processor.js"),
    ),
    (
        "test-{{lib}}.mjs",
        include_str!("../../../templates/js/test-processor.mjs"),
    ),
];

/// A plugin name: lowercase letters, digits and `-`, starting with a letter.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "{name:?}: a plugin name is lowercase letters, digits and '-', starting with a letter (e.g. my-meter)"
        );
    }
    Ok(())
}

/// `my-meter` as `MyMeter`.
fn class_name(name: &str) -> String {
    name.split('-')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut chars = p.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// The SDK dependency line: a released version, or `sdk` (the SDK's
/// folder in a ferrule checkout) when given.
fn sdk_dependency(lang: Lang, sdk: Option<&Path>) -> anyhow::Result<String> {
    let Some(sdk) = sdk else {
        return Ok(match lang {
            Lang::Rust => format!("ferrule-sdk = \"{SDK_VERSION}\""),
            Lang::Python => format!("ferrule-sdk=={SDK_VERSION}"),
            Lang::Js => SDK_VERSION.to_string(),
        });
    };
    let dir = sdk.join(match lang {
        Lang::Rust => "",
        Lang::Python => "python",
        Lang::Js => "js",
    });
    let dir = dir
        .canonicalize()
        .with_context(|| format!("--sdk-path: {} not found", dir.display()))?;
    Ok(match lang {
        Lang::Rust => format!("ferrule-sdk = {{ path = {:?} }}", dir.display().to_string()),
        Lang::Python => format!("-e {}", dir.display()),
        Lang::Js => format!("file:{}", dir.display()),
    })
}

/// Where the build puts the component, relative to the project.
fn component_path(lang: Lang, lib: &str) -> String {
    match lang {
        Lang::Rust => format!("target/wasm32-wasip2/release/{lib}.wasm"),
        Lang::Python | Lang::Js => format!("{lib}.wasm"),
    }
}

/// A `drivers.toml` for `ferrule demo --drivers` (drivers only).
fn demo_drivers(name: &str, lang: Lang, lib: &str) -> String {
    format!(
        "# Try the driver: ferrule demo --drivers drivers.toml --duration 10s\n\
         [[driver]]\nname = \"{name}\"\nplugin = \"{}\"\ninterval_ms = 500\n\
         \n[driver.config]\nstart = 1\n",
        component_path(lang, lib)
    )
}

/// Creates the project `name` in `dir/name`; returns its path.
pub fn create(
    kind: Kind,
    lang: Lang,
    name: &str,
    dir: &Path,
    sdk: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let project = dir.join(name);
    if project.exists() {
        bail!(
            "{}: already exists; pick another name or folder",
            project.display()
        );
    }
    // Python modules and Rust libraries take `_`; a JavaScript file keeps the name.
    let lib = match lang {
        Lang::Js => name.to_string(),
        Lang::Rust | Lang::Python => name.replace('-', "_"),
    };
    let kind_name = match kind {
        Kind::Driver => "driver",
        Kind::Processor => "processor",
    };
    let try_it = match kind {
        Kind::Driver => "Try it on your machine (an embedded broker, no setup):\n\
                         `ferrule demo --drivers drivers.toml --duration 10s`."
            .to_string(),
        Kind::Processor => format!(
            "Use it in a driver's chain (`[[driver.processor]]` with `plugin = \"{}\"`), \
             then `ferrule check gateway.toml` and `ferrule demo --drivers drivers.toml`.",
            component_path(lang, &lib)
        ),
    };
    let sdk_line = sdk_dependency(lang, sdk)?;
    let mut files: Vec<Template> = Vec::new();
    match (lang, kind) {
        (Lang::Rust, k) => {
            files.extend(RUST_COMMON);
            files.push(match k {
                Kind::Driver => RUST_DRIVER,
                Kind::Processor => RUST_PROCESSOR,
            });
        }
        (Lang::Python, k) => {
            files.extend(PYTHON_COMMON);
            files.extend(match k {
                Kind::Driver => PYTHON_DRIVER,
                Kind::Processor => PYTHON_PROCESSOR,
            });
        }
        (Lang::Js, k) => {
            files.extend(JS_COMMON);
            files.extend(match k {
                Kind::Driver => JS_DRIVER,
                Kind::Processor => JS_PROCESSOR,
            });
        }
    }
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{lib}}", &lib)
            .replace("{{class}}", &class_name(name))
            .replace("{{kind}}", kind_name)
            .replace("{{sdk}}", &sdk_line)
            .replace("{{try_it}}", &try_it)
    };
    std::fs::create_dir_all(&project)
        .with_context(|| format!("cannot create {}", project.display()))?;
    for (path, template) in files {
        let target = project.join(fill(path));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, fill(template))
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    if kind == Kind::Driver {
        std::fs::write(project.join("drivers.toml"), demo_drivers(name, lang, &lib))?;
    }
    Ok(project)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_classes_and_bad_names_are_refused() {
        assert_eq!(class_name("my-meter-2"), "MyMeter2");
        for bad in ["", "My", "1x", "a_b", "a-", "x y"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("my-meter").unwrap();
    }

    #[test]
    fn every_placeholder_is_filled_in_every_language() {
        let dir = tempfile::tempdir().unwrap();
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            for kind in [Kind::Driver, Kind::Processor] {
                let name = format!("p-{lang:?}-{kind:?}").to_lowercase();
                let project = create(kind, lang, &name, dir.path(), None).unwrap();
                let mut stack = vec![project.clone()];
                let mut count = 0;
                while let Some(p) = stack.pop() {
                    if p.is_dir() {
                        stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                        continue;
                    }
                    count += 1;
                    let text = std::fs::read_to_string(&p).unwrap();
                    assert!(
                        !text.contains("{{"),
                        "{}: a placeholder is left",
                        p.display()
                    );
                }
                assert!(count >= 4, "{name}: {count} files");
                assert!(create(kind, lang, &name, dir.path(), None).is_err());
            }
        }
    }
}
