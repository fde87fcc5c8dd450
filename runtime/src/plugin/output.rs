//! A plugin's log output: the host `log` function and its stdout/stderr,
//! tagged with the instance and rate-limited together.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// A token bucket: `rate` lines per second, bursts of twice that.
#[derive(Debug)]
pub struct LogLimiter {
    rate: f64,
    tokens: f64,
    last: Instant,
    dropped: u64,
}

impl LogLimiter {
    pub fn new(lines_per_s: u32) -> LogLimiter {
        let rate = f64::from(lines_per_s.max(1));
        LogLimiter {
            rate,
            tokens: rate * 2.0,
            last: Instant::now(),
            dropped: 0,
        }
    }

    /// Whether a line may be logged now; `Some(n)` also says `n` lines were
    /// dropped since the last one that passed.
    fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
            .min(self.rate * 2.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.dropped))
        } else {
            self.dropped += 1;
            None
        }
    }
}

/// Where a plugin's lines go.
#[derive(Debug, Clone)]
pub struct PluginLog {
    instance: Arc<str>,
    limiter: Arc<Mutex<LogLimiter>>,
    /// Longest line kept (`max_log_bytes`); the rest is cut so one line
    /// cannot flood the log.
    max_line: usize,
}

#[derive(Debug, Clone, Copy)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl PluginLog {
    pub fn new(instance: &str, lines_per_s: u32, max_line: usize) -> PluginLog {
        PluginLog {
            instance: Arc::from(instance),
            limiter: Arc::new(Mutex::new(LogLimiter::new(lines_per_s))),
            max_line: max_line.max(1),
        }
    }

    /// Logs one line from `source` ("log", "stdout", "stderr") if the rate allows.
    pub fn line(&self, level: Level, source: &str, text: &str) {
        let admitted = self
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit();
        let Some(dropped) = admitted else {
            return;
        };
        let plugin = &*self.instance;
        if dropped > 0 {
            tracing::warn!(plugin, dropped, "plugin log rate limit: lines dropped");
        }
        let text = truncate(text, self.max_line);
        match level {
            Level::Trace => tracing::trace!(plugin, source, "{text}"),
            Level::Debug => tracing::debug!(plugin, source, "{text}"),
            Level::Info => tracing::info!(plugin, source, "{text}"),
            Level::Warn => tracing::warn!(plugin, source, "{text}"),
            Level::Error => tracing::error!(plugin, source, "{text}"),
        }
    }

    /// A WASI stdout/stderr that writes lines into this log.
    pub fn stream(&self, source: &'static str, level: Level) -> OutputLines {
        OutputLines {
            log: self.clone(),
            source,
            level,
        }
    }
}

fn truncate(text: &str, max_line: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max_line {
        return text.into();
    }
    let mut cut = max_line;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut]).into()
}

/// A plugin's stdout or stderr.
#[derive(Debug, Clone)]
pub struct OutputLines {
    log: PluginLog,
    source: &'static str,
    level: Level,
}

impl IsTerminal for OutputLines {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputLines {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            out: self.clone(),
            pending: Vec::new(),
        })
    }
}

/// Splits written bytes into lines; a line longer than `max_log_bytes` is
/// logged in pieces rather than buffered without bound.
struct LineWriter {
    out: OutputLines,
    pending: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self, upto: usize) {
        let line: Vec<u8> = self.pending.drain(..upto).collect();
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        self.out.log.line(self.out.level, self.out.source, text);
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            self.emit(end + 1);
        }
        let max_line = self.out.log.max_line;
        if self.pending.len() > max_line {
            self.emit(max_line);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() {
            let len = self.pending.len();
            self.emit(len);
        }
        Poll::Ready(Ok(()))
    }
}
