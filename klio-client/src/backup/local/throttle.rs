//! `--max-rate` for a backup read from the data directory: every reader takes the bytes it is
//! about to read from one shared pace, so the readers together read at most that many bytes
//! a second, and the network carries no more (only read bytes are sent, compressed).
//!
//! The pace keeps the time at which the next byte may be read. Taking `n` bytes moves it on
//! by `n / rate` from that time or from now, whichever is later (an idle reader earns no
//! credit for a burst), and waits until the taken bytes' turn has come.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A shared read rate, or none.
#[derive(Clone, Debug)]
pub(crate) struct Throttle(Option<Arc<Pace>>);

#[derive(Debug)]
struct Pace {
    bytes_per_second: f64,
    /// When the next byte may be read.
    next: Mutex<Instant>,
}

impl Throttle {
    /// No limit.
    pub(crate) fn unlimited() -> Self {
        Self(None)
    }

    /// At most `bytes_per_second` (at least 1).
    pub(crate) fn new(bytes_per_second: u64) -> Self {
        Self(Some(Arc::new(Pace {
            bytes_per_second: bytes_per_second.max(1) as f64,
            next: Mutex::new(Instant::now()),
        })))
    }

    /// Waits until `bytes` more may be read.
    pub(crate) fn take(&self, bytes: usize) {
        let Some(pace) = &self.0 else {
            return;
        };
        let now = Instant::now();
        let turn = {
            let mut next = pace.next.lock().unwrap_or_else(PoisonError::into_inner);
            let turn = (*next).max(now);
            *next = turn + Duration::from_secs_f64(bytes as f64 / pace.bytes_per_second);
            turn
        };
        if turn > now {
            std::thread::sleep(turn - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_sharing_a_throttle_read_no_faster_than_its_rate_together() {
        let throttle = Throttle::new(4 << 20);
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..3 {
                let t = throttle.clone();
                s.spawn(move || {
                    for _ in 0..8 {
                        t.take(64 << 10);
                    }
                });
            }
        });
        // 1.5 MiB at 4 MiB/s: the first block goes at once, the rest take 1.5 MiB - 64 KiB.
        let least = Duration::from_secs_f64((1.5 * 1024.0 - 64.0) / (4.0 * 1024.0));
        assert!(started.elapsed() >= least, "{:?}", started.elapsed());
    }

    #[test]
    fn an_unlimited_throttle_never_waits() {
        let started = Instant::now();
        for _ in 0..1000 {
            Throttle::unlimited().take(1 << 30);
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
