//! Turning a `.wasm` file into something that can be instantiated, with a
//! clear error for each way the file can be wrong.

use std::path::{Path, PathBuf};

use wasmtime::component::{Component, InstancePre};

use super::bindings::driver::DriverPluginPre;
use super::bindings::processor::ProcessorPluginPre;
use super::host::HostState;
use super::{PluginEngine, PluginError, WIT_PACKAGE};

/// Which world a component must export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// A driver (`driver-plugin` world).
    Driver,
    /// A processor (`processor-plugin` world).
    Processor,
}

impl PluginKind {
    fn interface(self) -> &'static str {
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

/// A compiled, type-checked driver component, ready to instantiate many times.
#[derive(Clone)]
pub struct LoadedDriver {
    pub(super) path: PathBuf,
    pub(super) pre: DriverPluginPre<HostState>,
}

/// A compiled, type-checked processor component.
#[derive(Clone)]
pub struct LoadedProcessor {
    pub(super) path: PathBuf,
    pub(super) pre: ProcessorPluginPre<HostState>,
}

impl LoadedDriver {
    /// The component file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl LoadedProcessor {
    /// The component file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl PluginEngine {
    /// Loads (or reads from the compile cache) a driver component and links
    /// it against the host; any world but the driver's is refused.
    pub fn load_driver(&self, path: &Path) -> Result<LoadedDriver, PluginError> {
        let pre = self.link(path, PluginKind::Driver)?;
        let pre = DriverPluginPre::new(pre).map_err(|e| PluginError::WrongWorld {
            path: path.to_path_buf(),
            message: format!("does not match the driver-plugin world of {WIT_PACKAGE}: {e}"),
        })?;
        Ok(LoadedDriver {
            path: path.to_path_buf(),
            pre,
        })
    }

    /// Loads a processor component, like [`PluginEngine::load_driver`].
    pub fn load_processor(&self, path: &Path) -> Result<LoadedProcessor, PluginError> {
        let pre = self.link(path, PluginKind::Processor)?;
        let pre = ProcessorPluginPre::new(pre).map_err(|e| PluginError::WrongWorld {
            path: path.to_path_buf(),
            message: format!("does not match the processor-plugin world of {WIT_PACKAGE}: {e}"),
        })?;
        Ok(LoadedProcessor {
            path: path.to_path_buf(),
            pre,
        })
    }

    fn link(&self, path: &Path, kind: PluginKind) -> Result<InstancePre<HostState>, PluginError> {
        let component = self.compile(path)?;
        self.check_world(path, &component, kind)?;
        self.linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Link {
                path: path.to_path_buf(),
                message: format!("needs an import ferrule does not provide: {e}"),
            })
    }

    fn compile(&self, path: &Path) -> Result<Component, PluginError> {
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
        let compile = || Component::new(&self.engine, &bytes);
        let compiled = match &self.cache {
            Some(cache) => cache.get_or_compile(&self.engine, &bytes, compile),
            None => compile().map(|c| (c, super::cache::Source::Compiled)),
        };
        let (component, source) = compiled.map_err(|e| PluginError::Compile {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })?;
        tracing::debug!(plugin = %path.display(), from = ?source, "component ready");
        Ok(component)
    }

    /// Says which world a component was built for when it is not the one
    /// expected, including a different version of the WIT package.
    fn check_world(
        &self,
        path: &Path,
        component: &Component,
        kind: PluginKind,
    ) -> Result<(), PluginError> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let wanted = format!("ferrule:plugin/{}@", kind.interface());
        let version = WIT_PACKAGE.rsplit('@').next().unwrap_or_default();
        if exports.iter().any(|e| *e == format!("{wanted}{version}")) {
            return Ok(());
        }
        let wrong = |message: String| PluginError::WrongWorld {
            path: path.to_path_buf(),
            message,
        };
        if let Some(found) = exports.iter().find(|e| e.starts_with(&wanted)) {
            return Err(wrong(format!(
                "built against ferrule:plugin@{}, but this runtime supports {WIT_PACKAGE}; rebuild it with a matching ferrule-sdk",
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
            "does not export {wanted}{version}, so it is not a {} plugin (it exports: {})",
            kind.interface(),
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            }
        )))
    }
}
