//! The state each plugin instance's `Store` carries, and the host functions
//! the `ferrule:plugin/host` interface gives plugins.

use std::net::SocketAddr;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use super::PluginError;
use super::bindings::{v0_1, v0_2};
use super::budget::Budget;
use super::output::{self, PluginLog};
use super::sandbox::Sandbox;

/// The store's resource limits, also counting the linear memory in use.
pub struct Limits {
    inner: StoreLimits,
    /// Bytes of all the instance's linear memories together.
    pub memory_bytes: usize,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        if ok {
            self.memory_bytes = self
                .memory_bytes
                .saturating_sub(current)
                .saturating_add(desired);
        }
        Ok(ok)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

pub struct HostState {
    pub limits: Limits,
    pub log: PluginLog,
    wasi: WasiCtx,
    table: ResourceTable,
    budget: Budget,
}

impl HostState {
    /// A WASI context that grants only what `sandbox` lists: no environment,
    /// arguments or stdin; stdout/stderr into the log; TCP to the allowed
    /// addresses only; name lookup only if allowed; `/data` only if granted.
    pub fn new(instance: &str, sandbox: &Sandbox) -> Result<HostState, PluginError> {
        let limits = &sandbox.limits;
        let memory_bytes = limits.memory_bytes;
        let log = PluginLog::new(instance, limits.log_lines_per_s, limits.max_log_bytes);
        let mut wasi = WasiCtx::builder();
        wasi.stdout(log.stream("stdout", output::Level::Info))
            .stderr(log.stream("stderr", output::Level::Warn))
            .allow_udp(false)
            .allow_tcp(!sandbox.allow_net.is_empty())
            .allow_ip_name_lookup(sandbox.allow_dns);
        let allowed: Arc<[SocketAddr]> = sandbox.allow_net.clone().into();
        wasi.socket_addr_check(move |addr, usage| {
            let ok = match usage {
                SocketAddrUse::TcpConnect => allowed.contains(&addr),
                // connect() binds implicitly to the wildcard address first.
                SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                _ => false,
            };
            Box::pin(async move { ok })
        });
        if let Some(dir) = &sandbox.data_dir {
            wasi.preopened_dir(dir, "/data", FsPerms::ReadWrite)
                .map_err(|e| PluginError::Capability {
                    instance: instance.to_string(),
                    message: format!("data_dir {}: {e}", dir.display()),
                })?;
        }
        Ok(HostState {
            limits: Limits {
                inner: StoreLimitsBuilder::new()
                    .memory_size(memory_bytes)
                    .instances(16)
                    .tables(32)
                    .memories(8)
                    .trap_on_grow_failure(true)
                    .build(),
                memory_bytes: 0,
            },
            log,
            wasi: wasi.build(),
            table: ResourceTable::new(),
            budget: Budget::new(
                sandbox.limits.max_open_files,
                sandbox.quota.clone(),
                sandbox.budget_counters.clone(),
            ),
        })
    }

    pub(super) fn budget(&self) -> &Budget {
        &self.budget
    }

    pub(super) fn budget_and_table(&mut self) -> (&mut Budget, &mut ResourceTable) {
        (&mut self.budget, &mut self.table)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

macro_rules! host_interface {
    ($host:path) => {
        impl $host for HostState {
            fn log(&mut self, level: Level, message: String) {
                let level = match level {
                    Level::Trace => output::Level::Trace,
                    Level::Debug => output::Level::Debug,
                    Level::Info => output::Level::Info,
                    Level::Warn => output::Level::Warn,
                    Level::Error => output::Level::Error,
                };
                self.log.line(level, "log", &message);
            }
        }
    };
}

mod v1 {
    use super::v0_1::host::Level;
    use super::{HostState, output};
    host_interface!(super::v0_1::host::Host);
}

mod v2 {
    use super::v0_2::host::Level;
    use super::{HostState, output};
    host_interface!(super::v0_2::host::Host);
}
