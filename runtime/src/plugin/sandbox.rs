//! What one plugin instance is allowed: its limits and its capabilities,
//! resolved and checked before the instance is built.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use super::PluginError;
use super::budget::{BudgetCounters, DiskQuota};
use crate::config::{Capabilities, PluginLimits};

/// Limits and capabilities of one instance. Anything not granted here is denied.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    pub limits: PluginLimits,
    /// Addresses the plugin may connect to over TCP (resolved from `allow_net`).
    pub allow_net: Vec<SocketAddr>,
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
    /// Resolves `allow_net` (host names are looked up here, by the host) and
    /// creates the private data directory under `data_root/plugins/`.
    pub fn new(
        instance: &str,
        limits: PluginLimits,
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
                limits.data_dir_quota_mb.saturating_mul(1 << 20),
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
