use std::path::PathBuf;

/// Why a plugin could not be loaded or a call into it failed. Messages name
/// the plugin file or instance.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    #[error("plugin engine: {0}")]
    Engine(String),
    #[error("{}: cannot read plugin: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a WebAssembly file (expected a component built for wasm32-wasip2)", path.display())]
    NotWasm { path: PathBuf },
    #[error("{}: a core WebAssembly module, not a component (build the plugin for --target wasm32-wasip2)", path.display())]
    NotComponent { path: PathBuf },
    #[error("{}: invalid component: {message}", path.display())]
    Compile { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    WrongWorld { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Link { path: PathBuf, message: String },
    #[error("plugin {instance}: instantiation failed: {message}")]
    Instantiate { instance: String, message: String },
    #[error("plugin {instance}: {call} trapped: {message}")]
    Trap {
        instance: String,
        call: &'static str,
        message: String,
    },
    #[error(
        "plugin {instance}: {call} did not return within {timeout_ms} ms (stopped after {elapsed_ms} ms)"
    )]
    Timeout {
        instance: String,
        call: &'static str,
        timeout_ms: u64,
        elapsed_ms: u64,
    },
    #[error("plugin {instance}: {call} output refused: {message}")]
    Oversized {
        instance: String,
        call: &'static str,
        message: String,
    },
    #[error("plugin {instance}: capability: {message}")]
    Capability { instance: String, message: String },
    #[error("plugin {instance}: {call} failed: {error}")]
    Returned {
        instance: String,
        call: &'static str,
        error: String,
    },
}

impl PluginError {
    /// True when the instance can no longer be trusted and must be rebuilt:
    /// it trapped, ran past its deadline, or returned more than its limits
    /// allow (a result refused mid-copy also leaves the instance unusable).
    pub fn instance_lost(&self) -> bool {
        matches!(
            self,
            PluginError::Trap { .. } | PluginError::Timeout { .. } | PluginError::Oversized { .. }
        )
    }
}
