//! Compiled components kept on disk, so a restart skips Cranelift.
//!
//! Key: SHA-256 of the component bytes plus a hash of the engine's
//! compatibility settings (wasmtime version, target, compiler flags). Each
//! file starts with the SHA-256 of the rest; an entry whose checksum does
//! not match, or that wasmtime refuses, is deleted and the component is
//! compiled again. Entries are written to a temporary name and renamed, so a
//! crash never leaves a half-written entry under a real name.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

/// Where a component came from, for logs and the start-up benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Read from the compile cache.
    Cache,
    /// Compiled now (and written to the cache).
    Compiled,
}

impl CompileCache {
    pub fn new(dir: PathBuf, engine: &Engine) -> std::io::Result<CompileCache> {
        std::fs::create_dir_all(&dir)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(CompileCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    fn entry(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The component whose bytes have the SHA-256 `sha256` (hex, as the
    /// loader already computed it): from the cache when a sound entry
    /// exists, otherwise compiled with `compile` and stored.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        sha256: &str,
        compile: impl FnOnce() -> wasmtime::Result<Component>,
    ) -> wasmtime::Result<(Component, Source)> {
        let path = self.entry(sha256);
        if let Some(component) = self.load(engine, &path) {
            return Ok((component, Source::Cache));
        }
        let component = compile()?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(entry = %path.display(), error = %e, "cannot write compile cache entry");
        }
        Ok((component, Source::Compiled))
    }

    fn load(&self, engine: &Engine, path: &Path) -> Option<Component> {
        let data = std::fs::read(path).ok()?;
        let discard = |why: &str| {
            tracing::warn!(entry = %path.display(), why, "discarding compile cache entry; recompiling");
            let _ = std::fs::remove_file(path);
        };
        let (sum, body) = match data.split_at_checked(32) {
            Some(parts) => parts,
            None => {
                discard("too short");
                return None;
            }
        };
        if Sha256::digest(body).as_slice() != sum {
            discard("checksum mismatch");
            return None;
        }
        // SAFETY: the bytes are what `Component::serialize` wrote for an
        // engine with the same compatibility hash (both are in the key), and
        // the checksum above proves they are unchanged since; the cache
        // directory is the runtime's own, never visible to plugins.
        match unsafe { Component::deserialize(engine, body) } {
            Ok(component) => Some(component),
            Err(_) => {
                discard("rejected by the engine");
                None
            }
        }
    }

    fn store(&self, path: &Path, component: &Component) -> std::io::Result<()> {
        let body = component
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&Sha256::digest(&body))?;
        file.write_all(&body)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}
