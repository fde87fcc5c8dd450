//! What one plugin instance is allowed: its limits and its capabilities,
//! resolved and checked before the instance is built.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use super::PluginError;
use super::budget::{BudgetCounters, DiskQuota};

/// What one instance may use, in the units the sandbox enforces. The
/// gateway fills it from the `[limits]` of the config (whose keys the
/// error messages name).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory.
    pub memory_bytes: usize,
    /// Longest a single call (init, poll, process, ...) may run.
    pub timeout: std::time::Duration,
    /// Most readings one `poll` or `process` may return.
    pub max_readings: usize,
    /// Longest string or byte value (channel, unit, text, bytes).
    pub max_value_bytes: usize,
    /// Most channels in a driver's channel table.
    pub max_channels: usize,
    /// Log lines per second (host log, stdout, stderr together).
    pub log_lines_per_s: u32,
    /// Most bytes copied out of the plugin in one call, checked against the
    /// lengths in its memory before copying.
    pub max_result_bytes: usize,
    /// Most `extra` pairs in one device status.
    pub max_status_entries: usize,
    /// Longest firmware string, `extra` key or value of a device status.
    pub max_status_value_bytes: usize,
    /// Longest log line kept.
    pub max_log_bytes: usize,
    /// Longest error message kept.
    pub max_error_bytes: usize,
    /// Files, directories and sockets one instance may hold open at once.
    pub max_open_files: usize,
    /// Bytes the plugin's `data_dir` may hold.
    pub data_dir_quota_bytes: u64,
}

/// What a plugin may reach beyond its own memory; everything else is denied.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    /// `host:port` addresses it may connect to over TCP.
    pub allow_net: Vec<String>,
    /// Whether it may look up names.
    pub allow_dns: bool,
    /// Whether it gets a private directory, preopened as `/data`.
    pub data_dir: bool,
}

/// Limits and capabilities of one instance. Anything not granted here is denied.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// What it may use.
    pub limits: Limits,
    /// Addresses the plugin may connect to over TCP (resolved from `allow_net`).
    pub allow_net: Vec<SocketAddr>,
    /// Whether it may look up names.
    pub allow_dns: bool,
    /// The host directory preopened as `/data`.
    pub data_dir: Option<PathBuf>,
    /// The quota on `data_dir`, shared by the plugin's successive instances.
    pub quota: Option<Arc<DiskQuota>>,
    /// Descriptors and data dir figures, for telemetry.
    pub budget_counters: Arc<BudgetCounters>,
}

impl Sandbox {
    /// Whether the plugin can hold host descriptors at all (files or sockets).
    pub fn holds_descriptors(&self) -> bool {
        self.data_dir.is_some() || !self.allow_net.is_empty()
    }
}

impl Sandbox {
    /// An instance with `limits` and no capability at all: no network, no
    /// name lookup, no data directory.
    pub fn unprivileged(limits: Limits) -> Sandbox {
        Sandbox {
            limits,
            allow_net: Vec::new(),
            allow_dns: false,
            data_dir: None,
            quota: None,
            budget_counters: Arc::new(BudgetCounters::default()),
        }
    }

    /// Resolves `allow_net` (host names are looked up here, by the host) and
    /// creates the private data directory under `data_root/plugins/`.
    pub fn new(
        instance: &str,
        limits: Limits,
        capabilities: &Capabilities,
        data_root: &Path,
    ) -> Result<Sandbox, PluginError> {
        let mut allow_net = Vec::new();
        for entry in &capabilities.allow_net {
            let resolved = entry
                .to_socket_addrs()
                .map_err(|e| PluginError::Capability {
                    instance: instance.to_string(),
                    message: format!("allow_net {entry:?}: cannot resolve: {e}"),
                })?;
            allow_net.extend(resolved);
        }
        let data_dir = if capabilities.data_dir {
            let dir = data_root.join("plugins").join(instance);
            std::fs::create_dir_all(&dir).map_err(|e| PluginError::Capability {
                instance: instance.to_string(),
                message: format!("data_dir {}: {e}", dir.display()),
            })?;
            Some(dir)
        } else {
            None
        };
        let budget_counters = Arc::new(BudgetCounters::default());
        let quota = data_dir.as_ref().map(|dir| {
            Arc::new(DiskQuota::new(
                dir,
                limits.data_dir_quota_bytes,
                budget_counters.clone(),
            ))
        });
        Ok(Sandbox {
            limits,
            allow_net,
            allow_dns: capabilities.allow_dns,
            data_dir,
            quota,
            budget_counters,
        })
    }
}
