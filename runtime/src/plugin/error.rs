use std::path::PathBuf;

/// Why a plugin could not be loaded or a call into it failed. Messages name
/// the plugin file or instance.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The wasmtime engine could not be set up.
    #[error("plugin engine: {0}")]
    Engine(String),
    /// The plugin file could not be read.
    #[error("{}: cannot read plugin: {source}", path.display())]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file is not WebAssembly at all.
    #[error("{}: not a WebAssembly file (expected a component built for wasm32-wasip2)", path.display())]
    NotWasm {
        /// The plugin file.
        path: PathBuf,
    },
    /// The file is a core module, not a component.
    #[error("{}: a core WebAssembly module, not a component (build the plugin for --target wasm32-wasip2)", path.display())]
    NotComponent {
        /// The plugin file.
        path: PathBuf,
    },
    /// The plugin's signature or identity does not satisfy `[trust]`.
    #[error("{}: refused: {refusal}", path.display())]
    Untrusted {
        /// The plugin file.
        path: PathBuf,
        /// Why (boxed: it names versions, and errors stay small).
        refusal: Box<super::trust::Refusal>,
    },
    /// The component did not validate or compile.
    #[error("{}: invalid component: {message}", path.display())]
    Compile {
        /// The plugin file.
        path: PathBuf,
        /// wasmtime's reason.
        message: String,
    },
    /// The component exports neither the driver nor the processor world,
    /// or one of another version.
    #[error("{}: {message}", path.display())]
    WrongWorld {
        /// The plugin file.
        path: PathBuf,
        /// What it exports and what was expected.
        message: String,
    },
    /// The component imports something the host does not provide.
    #[error("{}: {message}", path.display())]
    Link {
        /// The plugin file.
        path: PathBuf,
        /// The missing import.
        message: String,
    },
    /// An instance could not be created (e.g. its memory did not fit).
    #[error("plugin {instance}: instantiation failed: {message}")]
    Instantiate {
        /// The instance (`driver` or `driver/processor`).
        instance: String,
        /// wasmtime's reason.
        message: String,
    },
    /// The guest trapped (a panic, an out-of-bounds access, memory
    /// exhausted); the instance must be rebuilt.
    #[error("plugin {instance}: {call} trapped: {message}")]
    Trap {
        /// The instance.
        instance: String,
        /// The export that was called (`init`, `poll`, ...).
        call: &'static str,
        /// The trap and its backtrace, on one line.
        message: String,
    },
    /// The call ran past `timeout_ms` and was stopped; the instance must be
    /// rebuilt.
    #[error(
        "plugin {instance}: {call} did not return within {timeout_ms} ms (stopped after {elapsed_ms} ms)"
    )]
    Timeout {
        /// The instance.
        instance: String,
        /// The export that was called.
        call: &'static str,
        /// The deadline.
        timeout_ms: u64,
        /// How long the call ran before it was stopped.
        elapsed_ms: u64,
    },
    /// The call returned (or passed to the host) more than the limits
    /// allow; the instance must be rebuilt.
    #[error("plugin {instance}: {call} output refused: {message}")]
    Oversized {
        /// The instance.
        instance: String,
        /// The export that was called.
        call: &'static str,
        /// Which limit, and by how much.
        message: String,
    },
    /// A capability in the config cannot be granted (an address that does
    /// not resolve, a data dir that cannot be created).
    #[error("plugin {instance}: capability: {message}")]
    Capability {
        /// The instance.
        instance: String,
        /// Which capability, and why.
        message: String,
    },
    /// A write from the cloud names a channel the driver does not have or
    /// did not declare writable; the plugin is not called.
    #[error(
        "plugin {instance}: write refused: {}",
        if *read_only { format!("channel {channel:?} is declared read-only") } else { format!("no channel {channel:?}") }
    )]
    NotWritable {
        /// The instance.
        instance: String,
        /// The channel named in the write.
        channel: String,
        /// Whether the channel exists but is read-only.
        read_only: bool,
    },
    /// The plugin returned an error of its own; the instance stays.
    #[error("plugin {instance}: {call} failed: {error}")]
    Returned {
        /// The instance.
        instance: String,
        /// The export that was called.
        call: &'static str,
        /// The plugin's error, cut at `max_error_bytes`.
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
