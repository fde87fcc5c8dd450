//! Logging from a plugin into the runtime's structured log.
//!
//! Lines are tagged with the plugin instance by the runtime. Use the macros:
//! `ferrule_sdk::info!("connected to {}", addr)`.

use std::sync::OnceLock;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Step-by-step detail, off by default.
    Trace,
    /// Detail for finding a problem.
    Debug,
    /// What the plugin is doing.
    Info,
    /// Something is off, but the plugin goes on.
    Warn,
    /// Something failed.
    Error,
}

type Sink = fn(Level, &str);

static SINK: OnceLock<Sink> = OnceLock::new();

/// Installed by the generated glue before the plugin's `new` runs.
pub fn install(sink: Sink) {
    let _ = SINK.set(sink);
}

/// Writes one line to the runtime's log (dropped when no runtime is attached,
/// as in a plugin's own unit tests).
pub fn write(level: Level, message: &str) {
    if let Some(sink) = SINK.get() {
        sink(level, message);
    }
}

/// Logs a line at `trace` level, formatted like `format!`; the runtime tags it
/// with the plugin instance and rate-limits it.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Trace, &format!($($arg)*)) };
}

/// Logs a line at `debug` level, formatted like `format!`; the runtime tags it
/// with the plugin instance and rate-limits it.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, &format!($($arg)*)) };
}

/// Logs a line at `info` level, formatted like `format!`; the runtime tags it
/// with the plugin instance and rate-limits it.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, &format!($($arg)*)) };
}

/// Logs a line at `warn` level, formatted like `format!`; the runtime tags it
/// with the plugin instance and rate-limits it.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, &format!($($arg)*)) };
}

/// Logs a line at `error` level, formatted like `format!`; the runtime tags it
/// with the plugin instance and rate-limits it.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, &format!($($arg)*)) };
}
