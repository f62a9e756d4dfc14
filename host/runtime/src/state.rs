//! What one plugin call's store holds: a deny-by-default WASI context, the limiter, the plugin's
//! configuration, and what the plugin logged. A store lives for exactly one call, so nothing a
//! plugin does leaks into the next request.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{
    FsPerms, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use crate::contract::v0_1::host;
use crate::contract::v0_1::types::LogLevel;
use crate::manifest::EffectiveLimits;
use crate::output::BoundedOutput;

/// Bytes of stdout and of stderr kept per call; the rest is dropped.
const OUTPUT_CAPACITY: usize = 64 * 1024;
/// Log lines a plugin may write per call; more are counted and dropped.
const MAX_LOG_LINES: u32 = 1_000;
/// Longest log line kept, in bytes.
const MAX_LINE: usize = 4 * 1024;

/// Which limit a call ran into, recorded by the limiter before it traps the call.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LimitHit {
    Memory { requested: usize },
    TableElements,
}

pub(crate) struct CallState {
    pub(crate) plugin: Arc<str>,
    config: Arc<str>,
    max_level: LogLevel,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    stdout: BoundedOutput,
    stderr: BoundedOutput,
    log_lines: u32,
    /// The last line logged at error level or written to stderr: usually the panic message.
    pub(crate) last_error_line: Option<String>,
}

/// What a call's WASI context may reach.
pub(crate) enum Sandbox<'a> {
    /// Nothing: no files, no network, a clock frozen at the epoch.
    Closed,
    /// Exactly one directory, preopened as `/` (read-write only when the call changes the tree),
    /// and real clocks (file times are part of the work).
    Tree { dir: &'a Path, writable: bool },
}

impl CallState {
    pub(crate) fn new(
        plugin: Arc<str>,
        config: Arc<str>,
        max_level: LogLevel,
        limits: &EffectiveLimits,
        sandbox: Sandbox<'_>,
    ) -> anyhow::Result<Self> {
        let stdout = BoundedOutput::new(OUTPUT_CAPACITY);
        let stderr = BoundedOutput::new(OUTPUT_CAPACITY);
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        match sandbox {
            Sandbox::Closed => {
                builder.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
            }
            Sandbox::Tree { dir, writable } => {
                let perms = if writable {
                    FsPerms::ReadWrite
                } else {
                    FsPerms::ReadOnly
                };
                builder.preopened_dir(dir, "/", perms)?;
            }
        }
        Ok(Self {
            plugin,
            config,
            max_level,
            wasi: builder.build(),
            table: ResourceTable::new(),
            limiter: Limiter::new(limits),
            stdout,
            stderr,
            log_lines: 0,
            last_error_line: None,
        })
    }

    /// Moves what the plugin printed into the server's log, labelled with its name.
    pub(crate) fn flush_output(&mut self) {
        for (stream, pipe) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let (bytes, dropped) = pipe.contents();
            let text = String::from_utf8_lossy(&bytes);
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                tracing::info!(plugin = %self.plugin, stream, "{}", truncate(line));
                if stream == "stderr" {
                    self.last_error_line = Some(truncate(line).to_owned());
                }
            }
            if dropped > 0 {
                tracing::warn!(plugin = %self.plugin, stream, "plugin wrote {dropped} more bytes than the {OUTPUT_CAPACITY} kept per call; dropped");
            }
        }
    }
}

fn truncate(line: &str) -> &str {
    if line.len() <= MAX_LINE {
        return line;
    }
    let mut end = MAX_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

fn rank(level: LogLevel) -> u8 {
    match level {
        LogLevel::Trace => 0,
        LogLevel::Debug => 1,
        LogLevel::Info => 2,
        LogLevel::Warn => 3,
        LogLevel::Error => 4,
    }
}

impl host::Host for CallState {
    fn log(&mut self, level: LogLevel, message: String) {
        if level == LogLevel::Error {
            self.last_error_line = Some(truncate(&message).to_owned());
        }
        if rank(level) < rank(self.max_level) {
            return;
        }
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            if self.log_lines == MAX_LOG_LINES + 1 {
                tracing::warn!(plugin = %self.plugin, "plugin logged more than {MAX_LOG_LINES} lines in one call; dropping the rest");
            }
            return;
        }
        let plugin = &*self.plugin;
        let message = truncate(&message);
        match level {
            LogLevel::Trace => tracing::trace!(plugin = %plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin = %plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin = %plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin = %plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin = %plugin, "{message}"),
        }
    }

    fn max_log_level(&mut self) -> LogLevel {
        self.max_level
    }

    fn config(&mut self) -> String {
        self.config.to_string()
    }
}

impl crate::contract::v0_1::types::Host for CallState {}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A clock that always says "the epoch": placement and validation get no time but what the
/// contract passes in, so their answers do not depend on when they ran.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Enforces a plugin's memory, table and instance limits, and records which one a call hit so
/// that the error can say so instead of a bare trap.
pub(crate) struct Limiter {
    memory_bytes: usize,
    table_elements: usize,
    instances: usize,
    pub(crate) hit: Option<LimitHit>,
}

impl Limiter {
    fn new(limits: &EffectiveLimits) -> Self {
        Self {
            memory_bytes: limits.memory_bytes,
            table_elements: limits.table_elements,
            instances: limits.instances,
            hit: None,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit = Some(LimitHit::Memory { requested: desired });
            wasmtime::bail!("memory limit exceeded");
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.hit = Some(LimitHit::TableElements);
            wasmtime::bail!("table limit exceeded");
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.instances
    }

    fn memories(&self) -> usize {
        self.instances
    }
}
