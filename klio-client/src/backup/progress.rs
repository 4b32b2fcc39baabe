//! How far a capture or a verification has come, for a progress display. The library only
//! reports; drawing (or not) is the caller's.

use std::time::Duration;

/// A capture's progress, reported after each `PROGRESS` message of PostgreSQL and after each
/// dedup exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureProgress {
    /// Archive bytes PostgreSQL has sent (its `p` messages).
    pub done: u64,
    /// PostgreSQL's estimate of the archives' size (the tablespace sizes of `PROGRESS`, in kB
    /// turned to bytes); `done` may pass it, as files grow during the backup.
    pub total: u64,
    /// Bytes of new blocks sent to the Klio server, compressed.
    pub sent: u64,
    /// Time since `BASE_BACKUP` started.
    pub elapsed: Duration,
}

impl CaptureProgress {
    /// Archive bytes per second so far.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        }
    }

    /// The time left at the rate so far; `None` before anything was read, or once `done`
    /// passed the estimate.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        if rate <= 0.0 || self.done >= self.total {
            return None;
        }
        Some(Duration::from_secs_f64(
            (self.total - self.done) as f64 / rate,
        ))
    }
}

/// A verification's progress, as the server reports it (about once a second).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyProgress {
    /// Bytes checked.
    pub done: u64,
    /// Bytes to check.
    pub total: u64,
}
