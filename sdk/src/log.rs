//! Logging into the server's log. Every line is labelled with the plugin's name by the host.
//!
//! The host's log level is asked once per call and cached, so a `debug!` the server would drop
//! costs one comparison, not a format and a boundary crossing.

use std::sync::OnceLock;

pub use crate::bindings::types::LogLevel;

fn rank(level: LogLevel) -> u8 {
    match level {
        LogLevel::Trace => 0,
        LogLevel::Debug => 1,
        LogLevel::Info => 2,
        LogLevel::Warn => 3,
        LogLevel::Error => 4,
    }
}

/// Whether a line at `level` would be recorded by the server.
pub fn enabled(level: LogLevel) -> bool {
    #[cfg(target_family = "wasm")]
    {
        static HOST_LEVEL: OnceLock<LogLevel> = OnceLock::new();
        rank(level) >= rank(*HOST_LEVEL.get_or_init(crate::bindings::host::max_log_level))
    }
    #[cfg(not(target_family = "wasm"))]
    {
        // Natively (benchmarks, unit tests) there is no host: only warnings and errors matter.
        rank(level) >= rank(LogLevel::Warn)
    }
}

/// Writes `message` at `level`. Prefer the macros, which skip formatting when the level is off.
pub fn write(level: LogLevel, message: &str) {
    #[cfg(target_family = "wasm")]
    crate::bindings::host::log(level, message);
    #[cfg(not(target_family = "wasm"))]
    eprintln!("[{level:?}] {message}");
}

/// Forwards panics to the server's log, so a plugin that traps says why. Called by the export
/// macros at the start of every call; only the first call in an instance installs the hook.
pub fn install_panic_hook() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        std::panic::set_hook(Box::new(|info| {
            write(LogLevel::Error, &format!("plugin panicked: {info}"));
        }));
    });
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log {
    ($level:expr, $($arg:tt)+) => {
        if $crate::log::enabled($level) {
            $crate::log::write($level, &::std::format!($($arg)+));
        }
    };
}

/// Logs at trace level.
#[macro_export]
macro_rules! trace { ($($arg:tt)+) => { $crate::__log!($crate::log::LogLevel::Trace, $($arg)+) }; }
/// Logs at debug level.
#[macro_export]
macro_rules! debug { ($($arg:tt)+) => { $crate::__log!($crate::log::LogLevel::Debug, $($arg)+) }; }
/// Logs at info level.
#[macro_export]
macro_rules! info { ($($arg:tt)+) => { $crate::__log!($crate::log::LogLevel::Info, $($arg)+) }; }
/// Logs at warn level.
#[macro_export]
macro_rules! warn { ($($arg:tt)+) => { $crate::__log!($crate::log::LogLevel::Warn, $($arg)+) }; }
/// Logs at error level.
#[macro_export]
macro_rules! error { ($($arg:tt)+) => { $crate::__log!($crate::log::LogLevel::Error, $($arg)+) }; }
