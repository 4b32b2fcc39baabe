//! A one-line progress display on standard error, only when it is a terminal: scripts and
//! logs get no carriage-return noise.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Counts `done` of `total` items and redraws at most ten times a second.
#[derive(Debug)]
pub(crate) struct Progress {
    label: &'static str,
    unit: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    drawn: Option<Instant>,
    enabled: bool,
}

impl Progress {
    pub(crate) fn new(label: &'static str, total: u64, unit: &'static str) -> Self {
        Self {
            label,
            unit,
            total,
            done: 0,
            started: Instant::now(),
            drawn: None,
            enabled: std::io::stderr().is_terminal(),
        }
    }

    pub(crate) fn set(&mut self, done: u64) {
        self.done = done;
        if self.enabled
            && self
                .drawn
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(100))
        {
            self.draw();
        }
    }

    fn draw(&mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        let pct = if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        };
        let rate = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{}: {}/{} {} ({pct:.0}%), {rate:.1}/s, {secs:.1} s\x1b[K",
            self.label, self.done, self.total, self.unit
        );
        let _ = err.flush();
        self.drawn = Some(Instant::now());
    }

    /// Draws the final state and ends the line.
    pub(crate) fn finish(&mut self) {
        if self.enabled {
            self.draw();
            eprintln!();
        }
    }
}

/// `n` bytes for a person: 1023 B, 1.5 KiB, 23.0 MiB, 1.5 GiB.
pub(crate) fn bytes(n: u64) -> String {
    klio_wal::ByteSize(n).to_string()
}
