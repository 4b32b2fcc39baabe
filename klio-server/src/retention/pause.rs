//! A test hook for kill -9 tests: with `KLIO_TEST_PAUSE_AT=<point>` in its environment, the
//! server stops for good at that point of a retention run (logging "paused at <point>") so
//! that a test can kill it there. Unset, which it always is in production, it costs one
//! environment lookup per pack swept.
//!
//! Points: `retention-pack-rewritten` (a pack's live blocks copied into a new, durable pack;
//! the old one still there), `retention-pack-retired` (a dead pack's index renamed away, its
//! file not yet removed).

use std::time::Duration;

/// The environment variable naming the point.
pub(crate) const PAUSE_VARIABLE: &str = "KLIO_TEST_PAUSE_AT";

/// Stops this thread for good if the test hook names `point`.
pub(crate) fn pause_point(point: &str) {
    if std::env::var(PAUSE_VARIABLE).is_ok_and(|v| v == point) {
        tracing::warn!("paused at {point} ({PAUSE_VARIABLE}): waiting to be killed");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}
