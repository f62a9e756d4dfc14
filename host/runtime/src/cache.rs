//! The compiled-component cache: Cranelift output on disk, keyed by the component's content hash
//! and the engine's compatibility hash (wasmtime version, target, settings), so a restart or a
//! second server on the same data directory does not compile again (a first-party plugin: ~85 ms
//! compiled, ~0.6 ms loaded from here including its first call).
//!
//! Entries are written to a temporary file and renamed into place, so a crash never leaves a
//! half-written entry. Loading an entry is `unsafe` in wasmtime because the bytes are executed
//! as machine code, outside the sandbox: so the cache directory is created private (0700), and a
//! directory that someone else owns, or that group or others may write, is refused.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

pub(crate) struct CompiledCache {
    dir: PathBuf,
    engine_key: String,
}

impl CompiledCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> std::io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        check_private(&dir)?;
        // DefaultHasher::new() has fixed keys: stable across runs of the same build.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("{:016x}", hasher.finish());
        Ok(Self { dir, engine_key })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// The cached compilation of the component whose sha256 is `digest`, if there is a usable one.
    pub(crate) fn get(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest);
        // Read, not mapped: a mapped file that someone truncates under us would be a SIGBUS.
        let bytes = std::fs::read(&path).ok()?;
        // SAFETY: entries are only ever written by `put` below, from `Component::serialize`, into
        // a directory owned by this server; wasmtime further checks the header and engine
        // compatibility and refuses a mismatching entry.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "discarding unusable compiled plugin");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores a compiled component. Failures only cost a recompile later, so they are logged.
    pub(crate) fn put(&self, digest: &str, component: &Component) {
        if let Err(error) = self.try_put(digest, component) {
            tracing::warn!(%error, "could not cache compiled plugin");
        }
    }

    fn try_put(&self, digest: &str, component: &Component) -> anyhow::Result<()> {
        let bytes = component.serialize()?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&bytes)?;
        tmp.as_file().sync_data()?;
        tmp.persist(self.path(digest))?;
        Ok(())
    }
}

/// Refuses a directory that another user owns or that group or others may write: whoever can
/// write there can make the server run their machine code.
fn check_private(dir: &std::path::Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(dir)?;
    // A file we create is owned by our effective user: compare, with no libc call needed.
    let probe = tempfile::NamedTempFile::new_in(dir)?;
    let ours = probe.as_file().metadata()?.uid();
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "refusing the compiled-plugin cache {}: {why}; it holds machine code the server runs",
                dir.display()
            ),
        ))
    };
    if meta.uid() != ours {
        return refuse(format!(
            "it is owned by uid {}, not this server's {ours}",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return refuse(format!(
            "group or others may write it (mode {:o})",
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

/// The sha256 of a component's bytes, as lower-case hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
