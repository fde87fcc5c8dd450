//! Per-instance budgets for what a plugin holds outside its memory: open
//! descriptors (files, directories, sockets) and the bytes in its private
//! `data_dir`.
//!
//! Both are enforced by shadowing a few WASI functions in the linker with
//! wrappers that check the budget, then hand the call to wasmtime-wasi's
//! own implementation:
//!
//! - `descriptor.open-at` and `tcp-create-socket.create-tcp-socket` count
//!   the instance's live descriptors and sockets; at `max_open_files` the
//!   plugin gets an error (`insufficient-memory` for a file, which it sees
//!   as ENOMEM; `new-socket-limit` for a socket, EMFILE) and the host's
//!   descriptors are untouched.
//! - `descriptor.write`, `set-size`, `create-directory-at`, `open-at` with
//!   `create`, and every write through `write-via-stream` /
//!   `append-via-stream` are charged to the `data_dir` quota before they
//!   happen; over it the plugin gets `insufficient-space` (ENOSPC), the
//!   gateway's own disk use is never refused.
//! - `tcp-socket.start-listen` is refused (`access-denied`): plugins make
//!   outbound connections only, so a plugin can never open a listening
//!   port on the gateway.
//!
//! The quota is kept pessimistically: every charge adds its full length
//! (an overwrite counts like new data), and when a charge would pass the
//! quota the directory is measured again (each file or directory counts at
//! least one 4 KiB block) before refusing. Measuring is rate-limited.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, ErrorCode, Filesize, HostDescriptor, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::bindings::sockets::network::{
    ErrorCode as SocketErrorCode, IpAddressFamily,
};
use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket::Host as _;
use wasmtime_wasi::p2::{
    DynOutputStream, FsError, OutputStream, Pollable, SocketError, StreamError, StreamResult,
    TcpSocket,
};
use wasmtime_wasi::sockets::WasiSocketsView;

use super::host::HostState;

/// Bytes a file or directory counts for at least.
const MIN_ENTRY_BYTES: u64 = 4096;

/// Least time between two measurements of a data dir.
const RESCAN_EVERY: Duration = Duration::from_millis(250);

/// The WASI package version the wrappers shadow; plugins built against any
/// 0.2.x version link to it.
const WASI: &str = "0.2.12";

/// Counters of one plugin's budgets, shared by its successive instances
/// and read by telemetry.
#[derive(Debug, Default)]
pub struct BudgetCounters {
    /// Descriptors and sockets open now.
    pub open_files: AtomicU64,
    /// Opens refused at `max_open_files`.
    pub open_refused: AtomicU64,
    /// Bytes in the data dir as last measured or charged.
    pub data_dir_bytes: AtomicU64,
    /// Writes refused by the data dir quota.
    pub quota_refused: AtomicU64,
}

/// The data dir quota of one plugin.
#[derive(Debug)]
pub struct DiskQuota {
    dir: PathBuf,
    limit: u64,
    last_scan: Mutex<Option<Instant>>,
    counters: Arc<BudgetCounters>,
}

impl DiskQuota {
    /// A quota on `dir`, measured now.
    pub fn new(dir: &Path, limit: u64, counters: Arc<BudgetCounters>) -> DiskQuota {
        let quota = DiskQuota {
            dir: dir.to_path_buf(),
            limit,
            last_scan: Mutex::new(None),
            counters,
        };
        quota.rescan(true);
        quota
    }

    /// Measures the directory again (unless it was just measured and
    /// `force` is false); true when it was measured.
    fn rescan(&self, force: bool) -> bool {
        let mut last = self
            .last_scan
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !force && last.is_some_and(|t| t.elapsed() < RESCAN_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        self.counters
            .data_dir_bytes
            .store(dir_usage(&self.dir), Ordering::Relaxed);
        true
    }

    /// Charges `bytes` about to be written; false (counted) when they do
    /// not fit.
    pub fn charge(&self, bytes: u64) -> bool {
        let fits = |used: u64| used.saturating_add(bytes) <= self.limit;
        if !fits(self.counters.data_dir_bytes.load(Ordering::Relaxed))
            && (!self.rescan(false) || !fits(self.counters.data_dir_bytes.load(Ordering::Relaxed)))
        {
            self.counters.quota_refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.counters
            .data_dir_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        true
    }

    /// Bytes that may still be written; measured again (rate-limited)
    /// when the count says none.
    fn left(&self) -> u64 {
        let left = || {
            self.limit
                .saturating_sub(self.counters.data_dir_bytes.load(Ordering::Relaxed))
        };
        if left() == 0 {
            self.rescan(false);
        }
        left()
    }
}

/// Bytes under `dir`: each entry its length or allocated blocks, whichever
/// is larger, and at least [`MIN_ENTRY_BYTES`]. Links are not followed.
pub fn dir_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            total = total.saturating_add(
                meta.len()
                    .max(meta.blocks().saturating_mul(512))
                    .max(MIN_ENTRY_BYTES),
            );
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}

/// The budgets of one instance, kept in its store.
pub struct Budget {
    max_open_files: usize,
    /// Table indices of the descriptors and sockets this instance opened.
    open: HashSet<u32>,
    quota: Option<Arc<DiskQuota>>,
    counters: Arc<BudgetCounters>,
}

impl Budget {
    pub fn new(
        max_open_files: usize,
        quota: Option<Arc<DiskQuota>>,
        counters: Arc<BudgetCounters>,
    ) -> Budget {
        Budget {
            max_open_files,
            open: HashSet::new(),
            quota,
            counters,
        }
    }

    fn charge(&self, bytes: u64) -> bool {
        self.quota.as_ref().is_none_or(|q| q.charge(bytes))
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.counters
            .open_files
            .fetch_sub(self.open.len() as u64, Ordering::Relaxed);
    }
}

impl HostState {
    /// Forgets descriptors the plugin has closed, then says whether one
    /// more may be opened (counting a refusal).
    fn may_open(&mut self) -> bool {
        let (budget, table) = self.budget_and_table();
        let before = budget.open.len();
        budget.open.retain(|rep| {
            table
                .get_any_mut(*rep)
                .is_ok_and(|e| e.is::<Descriptor>() || e.is::<TcpSocket>())
        });
        let closed = (before - budget.open.len()) as u64;
        budget
            .counters
            .open_files
            .fetch_sub(closed, Ordering::Relaxed);
        if budget.open.len() >= budget.max_open_files {
            budget.counters.open_refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn opened(&mut self, rep: u32) {
        let (budget, _) = self.budget_and_table();
        if budget.open.insert(rep) {
            budget.counters.open_files.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A trap, or the error code the plugin gets.
fn split_fs<T>(result: Result<T, FsError>) -> wasmtime::Result<Result<T, ErrorCode>> {
    match result {
        Ok(v) => Ok(Ok(v)),
        Err(e) => e.downcast().map(Err),
    }
}

fn split_socket<T>(result: Result<T, SocketError>) -> wasmtime::Result<Result<T, SocketErrorCode>> {
    match result {
        Ok(v) => Ok(Ok(v)),
        Err(e) => e.downcast().map(Err),
    }
}

type Store<'a> = StoreContextMut<'a, HostState>;

/// Replaces the WASI functions named in the module doc with budgeted ones.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut fs = linker.instance(&format!("wasi:filesystem/types@{WASI}"))?;
    fs.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: Store<'_>,
         (fd, path_flags, path, oflags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                let state = store.data_mut();
                if !state.may_open() {
                    return Ok((Err(ErrorCode::InsufficientMemory),));
                }
                if oflags.contains(OpenFlags::CREATE) && !state.budget().charge(MIN_ENTRY_BYTES) {
                    return Ok((Err(ErrorCode::InsufficientSpace),));
                }
                let mut view = state.filesystem();
                let opened = split_fs(
                    HostDescriptor::open_at(&mut view, fd, path_flags, path, oflags, flags).await,
                )?;
                if let Ok(r) = &opened {
                    state.opened(r.rep());
                }
                Ok((opened,))
            })
        },
    )?;
    fs.func_wrap_async(
        "[method]descriptor.write",
        |mut store: Store<'_>, (fd, buf, offset): (Resource<Descriptor>, Vec<u8>, Filesize)| {
            Box::new(async move {
                let state = store.data_mut();
                if !state.budget().charge(buf.len() as u64) {
                    return Ok((Err(ErrorCode::InsufficientSpace),));
                }
                let mut view = state.filesystem();
                Ok((split_fs(
                    HostDescriptor::write(&mut view, fd, buf, offset).await,
                )?,))
            })
        },
    )?;
    fs.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store: Store<'_>, (fd, size): (Resource<Descriptor>, Filesize)| {
            Box::new(async move {
                let state = store.data_mut();
                let mut view = state.filesystem();
                let current = split_fs(
                    HostDescriptor::stat(&mut view, Resource::new_borrow(fd.rep())).await,
                )?
                .map_or(0, |s| s.size);
                if size > current && !state.budget().charge(size - current) {
                    return Ok((Err(ErrorCode::InsufficientSpace),));
                }
                let mut view = state.filesystem();
                Ok((split_fs(
                    HostDescriptor::set_size(&mut view, fd, size).await,
                )?,))
            })
        },
    )?;
    fs.func_wrap_async(
        "[method]descriptor.create-directory-at",
        |mut store: Store<'_>, (fd, path): (Resource<Descriptor>, String)| {
            Box::new(async move {
                let state = store.data_mut();
                if !state.budget().charge(MIN_ENTRY_BYTES) {
                    return Ok((Err(ErrorCode::InsufficientSpace),));
                }
                let mut view = state.filesystem();
                Ok((split_fs(
                    HostDescriptor::create_directory_at(&mut view, fd, path).await,
                )?,))
            })
        },
    )?;
    for (name, append) in [
        ("[method]descriptor.write-via-stream", false),
        ("[method]descriptor.append-via-stream", true),
    ] {
        if append {
            fs.func_wrap(
                name,
                |mut store: Store<'_>, (fd,): (Resource<Descriptor>,)| {
                    let state = store.data_mut();
                    let mut view = state.filesystem();
                    let stream = split_fs(HostDescriptor::append_via_stream(&mut view, fd))?;
                    Ok((budgeted_stream(state, stream)?,))
                },
            )?;
        } else {
            fs.func_wrap(
                name,
                |mut store: Store<'_>, (fd, offset): (Resource<Descriptor>, Filesize)| {
                    let state = store.data_mut();
                    let mut view = state.filesystem();
                    let stream = split_fs(HostDescriptor::write_via_stream(&mut view, fd, offset))?;
                    Ok((budgeted_stream(state, stream)?,))
                },
            )?;
        }
    }

    let mut create = linker.instance(&format!("wasi:sockets/tcp-create-socket@{WASI}"))?;
    create.func_wrap(
        "create-tcp-socket",
        |mut store: Store<'_>, (family,): (IpAddressFamily,)| {
            let state = store.data_mut();
            if !state.may_open() {
                return Ok((Err(SocketErrorCode::NewSocketLimit),));
            }
            let mut view = state.sockets();
            let created = split_socket(view.create_tcp_socket(family))?;
            if let Ok(r) = &created {
                state.opened(r.rep());
            }
            Ok((created,))
        },
    )?;
    let mut tcp = linker.instance(&format!("wasi:sockets/tcp@{WASI}"))?;
    tcp.func_wrap(
        "[method]tcp-socket.start-listen",
        |_store: Store<'_>, (_socket,): (Resource<TcpSocket>,)| {
            Ok((Err::<(), _>(SocketErrorCode::AccessDenied),))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The stream wasmtime-wasi made, wrapped so each write is charged first.
fn budgeted_stream(
    state: &mut HostState,
    stream: Result<Resource<DynOutputStream>, ErrorCode>,
) -> wasmtime::Result<Result<Resource<DynOutputStream>, ErrorCode>> {
    let (Ok(stream), Some(quota)) = (&stream, state.budget().quota.clone()) else {
        return Ok(stream);
    };
    let (_, table) = state.budget_and_table();
    let inner = table.delete(Resource::<DynOutputStream>::new_own(stream.rep()))?;
    let wrapped: DynOutputStream = Box::new(QuotaStream { inner, quota });
    Ok(Ok(table.push(wrapped)?))
}

/// A file's output stream whose writes are charged to its plugin's quota.
struct QuotaStream {
    inner: DynOutputStream,
    quota: Arc<DiskQuota>,
}

fn over_quota() -> StreamError {
    // An io::Error with a raw errno reaches the plugin as the matching
    // error code (`filesystem-error-code`): ENOSPC, insufficient-space.
    StreamError::LastOperationFailed(wasmtime::Error::from(std::io::Error::from_raw_os_error(
        28, // ENOSPC
    )))
}

impl QuotaStream {
    fn charge(&self, bytes: usize) -> StreamResult<()> {
        if self.quota.charge(bytes as u64) {
            Ok(())
        } else {
            Err(over_quota())
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for QuotaStream {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for QuotaStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.charge(bytes.len())?;
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        let permitted = self.inner.check_write()?;
        let left = usize::try_from(self.quota.left()).unwrap_or(usize::MAX);
        if left == 0 && permitted > 0 {
            self.quota
                .counters
                .quota_refused
                .fetch_add(1, Ordering::Relaxed);
            return Err(over_quota());
        }
        Ok(permitted.min(left))
    }

    async fn blocking_write_and_flush(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.charge(bytes.len())?;
        self.inner.blocking_write_and_flush(bytes).await
    }

    fn write_zeroes(&mut self, nelem: usize) -> StreamResult<()> {
        self.charge(nelem)?;
        self.inner.write_zeroes(nelem)
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}
