//! What one plugin instance is allowed: its limits and its capabilities,
//! resolved and checked before the instance is built.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use super::PluginError;
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
        Ok(Sandbox {
            limits,
            allow_net,
            allow_dns: capabilities.allow_dns,
            data_dir,
        })
    }
}
