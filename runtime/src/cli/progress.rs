//! Progress of long commands, shown on stderr only when it is a terminal
//! (a pipe or a log file gets the final summary alone).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the progress line is redrawn.
const EVERY: Duration = Duration::from_millis(250);

/// A `Write` that passes everything to `inner` and counts the lines
/// (one per exported entry), redrawing "what: n of total" on stderr.
pub struct LineProgress<W: Write> {
    inner: W,
    what: &'static str,
    total: u64,
    lines: u64,
    shown: Option<Instant>,
    on_terminal: bool,
}

impl<W: Write> LineProgress<W> {
    /// Progress of writing `total` lines of `what` to `inner`.
    pub fn new(inner: W, what: &'static str, total: u64) -> Self {
        LineProgress {
            inner,
            what,
            total,
            lines: 0,
            shown: None,
            on_terminal: std::io::stderr().is_terminal(),
        }
    }

    fn show(&mut self, force: bool) {
        if !self.on_terminal || !(force || self.shown.is_none_or(|t| t.elapsed() >= EVERY)) {
            return;
        }
        self.shown = Some(Instant::now());
        let percent = if self.total == 0 {
            100.0
        } else {
            100.0 * self.lines as f64 / self.total as f64
        };
        eprint!(
            "\r{}: {} of {} ({percent:.0} %)\x1b[K",
            self.what, self.lines, self.total
        );
    }

    /// Ends the progress line (the summary that follows starts a new one).
    pub fn finish(mut self) -> std::io::Result<W> {
        self.inner.flush()?;
        if self.on_terminal && self.shown.is_some() {
            self.show(true);
            eprintln!();
        }
        Ok(self.inner)
    }
}

impl<W: Write> Write for LineProgress<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        self.show(false);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_pass_through_and_are_counted() {
        let mut p = LineProgress::new(Vec::new(), "export", 3);
        p.write_all(b"{\"seq\":1}\n{\"seq\":2}\n").unwrap();
        p.write_all(b"{\"seq\":3}\n").unwrap();
        assert_eq!(p.lines, 3);
        let out = p.finish().unwrap();
        assert_eq!(out, b"{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3}\n");
    }
}
