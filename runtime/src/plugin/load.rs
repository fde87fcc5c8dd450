//! Turning a `.wasm` file into something that can be instantiated, with a
//! clear error for each way the file can be wrong.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::{Component, InstancePre};

use super::bindings::{v0_1, v0_2};
use super::host::HostState;
use super::ticker::Ticker;
use super::trust::Provenance;
use super::{PluginEngine, PluginError, WIT_PACKAGE};

/// The `ferrule:plugin` ABI versions this runtime loads, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Abi {
    /// `ferrule:plugin@0.1.0`: readings carry their channel name and unit.
    V0_1,
    /// `ferrule:plugin@0.2.0`: channels declared once, readings by index.
    V0_2,
}

impl Abi {
    /// Every version, oldest first.
    pub const ALL: [Abi; 2] = [Abi::V0_1, Abi::V0_2];

    /// The package version, e.g. `0.2.0`.
    pub fn version(self) -> &'static str {
        match self {
            Abi::V0_1 => "0.1.0",
            Abi::V0_2 => "0.2.0",
        }
    }
}

impl serde::Serialize for Abi {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl std::fmt::Display for Abi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ferrule:plugin@{}", self.version())
    }
}

/// A driver component linked against the host, per ABI version.
#[derive(Clone)]
pub(super) enum DriverPre {
    V1(v0_1::driver::DriverPluginPre<HostState>),
    V2(v0_2::driver::DriverPluginPre<HostState>),
}

/// A processor component linked against the host, per ABI version.
#[derive(Clone)]
pub(super) enum ProcessorPre {
    V1(v0_1::processor::ProcessorPluginPre<HostState>),
    V2(v0_2::processor::ProcessorPluginPre<HostState>),
}

/// Which world a component must export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// A driver (`driver-plugin` world).
    Driver,
    /// A processor (`processor-plugin` world).
    Processor,
}

impl PluginKind {
    /// `driver` or `processor`.
    pub fn interface(self) -> &'static str {
        match self {
            PluginKind::Driver => "driver",
            PluginKind::Processor => "processor",
        }
    }

    fn other(self) -> PluginKind {
        match self {
            PluginKind::Driver => PluginKind::Processor,
            PluginKind::Processor => PluginKind::Driver,
        }
    }
}

/// What a component says about itself ([`PluginEngine::describe`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Description {
    /// The plugin world and ABI it exports, if it is a ferrule plugin.
    pub world: Option<(PluginKind, Abi)>,
    /// Its exports' names.
    pub exports: Vec<String>,
    /// Its imports' names.
    pub imports: Vec<String>,
}

/// A compiled, type-checked driver component, ready to instantiate many times.
#[derive(Clone)]
pub struct LoadedDriver {
    pub(super) path: PathBuf,
    pub(super) provenance: Provenance,
    pub(super) pre: DriverPre,
    pub(super) ticker: Arc<Ticker>,
}

/// A compiled, type-checked processor component.
#[derive(Clone)]
pub struct LoadedProcessor {
    pub(super) path: PathBuf,
    pub(super) provenance: Provenance,
    pub(super) pre: ProcessorPre,
    pub(super) ticker: Arc<Ticker>,
}

impl LoadedDriver {
    /// The component file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its hash, signer and signed identity.
    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    /// The ABI it was built against.
    pub fn abi(&self) -> Abi {
        match self.pre {
            DriverPre::V1(_) => Abi::V0_1,
            DriverPre::V2(_) => Abi::V0_2,
        }
    }
}

impl LoadedProcessor {
    /// The component file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its hash, signer and signed identity.
    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    /// The ABI it was built against.
    pub fn abi(&self) -> Abi {
        match self.pre {
            ProcessorPre::V1(_) => Abi::V0_1,
            ProcessorPre::V2(_) => Abi::V0_2,
        }
    }
}

impl PluginEngine {
    /// Loads (or reads from the compile cache) a driver component of any
    /// ABI version this runtime knows and links it against the host; any
    /// world but the driver's is refused.
    pub fn load_driver(&self, path: &Path) -> Result<LoadedDriver, PluginError> {
        let (abi, pre, provenance) = self.link(path, PluginKind::Driver)?;
        let mismatch = |e: wasmtime::Error| PluginError::WrongWorld {
            path: path.to_path_buf(),
            message: format!("does not match the driver-plugin world of {abi}: {e}"),
        };
        let pre = match abi {
            Abi::V0_1 => DriverPre::V1(v0_1::driver::DriverPluginPre::new(pre).map_err(mismatch)?),
            Abi::V0_2 => DriverPre::V2(v0_2::driver::DriverPluginPre::new(pre).map_err(mismatch)?),
        };
        Ok(LoadedDriver {
            path: path.to_path_buf(),
            provenance,
            pre,
            ticker: self.ticker.clone(),
        })
    }

    /// Loads a processor component, like [`PluginEngine::load_driver`].
    pub fn load_processor(&self, path: &Path) -> Result<LoadedProcessor, PluginError> {
        let (abi, pre, provenance) = self.link(path, PluginKind::Processor)?;
        let mismatch = |e: wasmtime::Error| PluginError::WrongWorld {
            path: path.to_path_buf(),
            message: format!("does not match the processor-plugin world of {abi}: {e}"),
        };
        let pre = match abi {
            Abi::V0_1 => {
                ProcessorPre::V1(v0_1::processor::ProcessorPluginPre::new(pre).map_err(mismatch)?)
            }
            Abi::V0_2 => {
                ProcessorPre::V2(v0_2::processor::ProcessorPluginPre::new(pre).map_err(mismatch)?)
            }
        };
        Ok(LoadedProcessor {
            path: path.to_path_buf(),
            provenance,
            pre,
            ticker: self.ticker.clone(),
        })
    }

    fn link(
        &self,
        path: &Path,
        kind: PluginKind,
    ) -> Result<(Abi, InstancePre<HostState>, Provenance), PluginError> {
        let (component, provenance) = self.compile(path)?;
        let abi = self.check_world(path, &component, kind)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Link {
                path: path.to_path_buf(),
                message: format!("needs an import ferrule does not provide: {e}"),
            })?;
        Ok((abi, pre, provenance))
    }

    /// Reads the file once, checks those bytes against `[trust]`, and
    /// compiles them (or reads them compiled from the cache).
    fn compile(&self, path: &Path) -> Result<(Component, Provenance), PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        match bytes.get(..8) {
            Some([0x00, b'a', b's', b'm', _, _, 0x01, 0x00]) => {}
            Some([0x00, b'a', b's', b'm', _, _, 0x00, 0x00]) => {
                return Err(PluginError::NotComponent {
                    path: path.to_path_buf(),
                });
            }
            _ => {
                return Err(PluginError::NotWasm {
                    path: path.to_path_buf(),
                });
            }
        }
        let provenance = self
            .trust
            .admit(&bytes)
            .map_err(|refusal| PluginError::Untrusted {
                path: path.to_path_buf(),
                refusal: Box::new(refusal),
            })?;
        if provenance.signer.is_none() && !self.trust.key_ids().is_empty() {
            tracing::warn!(plugin = %path.display(), "plugin runs UNSIGNED: no valid signature by a trusted key ([trust] require_signed = false)");
        }
        let compile = || compile_reporting(&self.engine, path, &bytes);
        let compiled = match &self.cache {
            Some(cache) => cache.get_or_compile(&self.engine, &provenance.sha256, compile),
            None => compile().map(|c| (c, super::cache::Source::Compiled)),
        };
        let (component, source) = compiled.map_err(|e| PluginError::Compile {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })?;
        tracing::debug!(plugin = %path.display(), from = ?source, "component ready");
        Ok((component, provenance))
    }

    /// What a component file imports and exports, and which plugin world
    /// and ABI it is; for `ferrule plugin inspect`. Compiles the file (no
    /// code runs) without trusting it or touching the cache.
    pub fn describe(&self, path: &Path) -> Result<Description, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let component = Component::new(&self.engine, &bytes).map_err(|e| PluginError::Compile {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })?;
        let ty = component.component_type();
        let names = |items: &mut dyn Iterator<Item = &str>| items.map(str::to_string).collect();
        let exports: Vec<String> = names(&mut ty.exports(&self.engine).map(|(n, _)| n));
        let imports: Vec<String> = names(&mut ty.imports(&self.engine).map(|(n, _)| n));
        let world = [PluginKind::Driver, PluginKind::Processor]
            .into_iter()
            .find_map(|kind| {
                self.check_world(path, &component, kind)
                    .ok()
                    .map(|abi| (kind, abi))
            });
        Ok(Description {
            world,
            exports,
            imports,
        })
    }

    /// The ABI version of the `kind` world a component exports, or an error
    /// saying which world it was built for when it is not one this runtime
    /// loads (another kind, or an unknown version of the package).
    fn check_world(
        &self,
        path: &Path,
        component: &Component,
        kind: PluginKind,
    ) -> Result<Abi, PluginError> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let wanted = format!("ferrule:plugin/{}@", kind.interface());
        // The newest first: a component exporting two versions is run as the newer.
        for abi in Abi::ALL.into_iter().rev() {
            if exports
                .iter()
                .any(|e| *e == format!("{wanted}{}", abi.version()))
            {
                return Ok(abi);
            }
        }
        let wrong = |message: String| PluginError::WrongWorld {
            path: path.to_path_buf(),
            message,
        };
        let known = Abi::ALL.map(|a| a.version()).join(", ");
        if let Some(found) = exports.iter().find(|e| e.starts_with(&wanted)) {
            return Err(wrong(format!(
                "built against ferrule:plugin@{}, but this runtime loads {known} only (newest: {WIT_PACKAGE}); rebuild it with a matching ferrule-sdk or upgrade ferrule",
                found.rsplit('@').next().unwrap_or("?")
            )));
        }
        let other = format!("ferrule:plugin/{}@", kind.other().interface());
        if exports.iter().any(|e| e.starts_with(&other)) {
            return Err(wrong(format!(
                "is a {} plugin, but it is configured as a {}",
                kind.other().interface(),
                kind.interface()
            )));
        }
        Err(wrong(format!(
            "does not export {wanted}{{{known}}}, so it is not a {} plugin (it exports: {})",
            kind.interface(),
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            }
        )))
    }
}

/// Components from this size on (a Python or JavaScript plugin carries its
/// interpreter: 12–20 MB) say in the log that they are being compiled, and
/// every few seconds that they still are.
const LARGE_COMPONENT: usize = 4 << 20;

/// How often a long compile reports that it is still running.
const COMPILE_PROGRESS: std::time::Duration = std::time::Duration::from_secs(5);

/// Compiles `bytes`, logging the start, progress and end of a large
/// component's compile (seconds of Cranelift on a small gateway; once per
/// file, as later starts read it from the compile cache).
fn compile_reporting(
    engine: &wasmtime::Engine,
    path: &Path,
    bytes: &[u8],
) -> wasmtime::Result<Component> {
    if bytes.len() < LARGE_COMPONENT {
        return Component::new(engine, bytes);
    }
    let started = std::time::Instant::now();
    let mb = bytes.len() as f64 / 1e6;
    tracing::info!(plugin = %path.display(), size_mb = format!("{mb:.1}"), "compiling plugin: a large component takes a while the first time; later starts read it from the compile cache");
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let compiled = std::thread::scope(|scope| {
        scope.spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                wait.recv_timeout(COMPILE_PROGRESS)
            {
                tracing::info!(plugin = %path.display(), elapsed_s = started.elapsed().as_secs(), "still compiling plugin");
            }
        });
        let compiled = Component::new(engine, bytes);
        drop(done);
        compiled
    });
    if compiled.is_ok() {
        tracing::info!(plugin = %path.display(), seconds = format!("{:.1}", started.elapsed().as_secs_f64()), "plugin compiled");
    }
    compiled
}
