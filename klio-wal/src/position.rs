//! A position in a cluster's WAL history.

use std::fmt;

use crate::{Lsn, TimelineId};

/// An LSN on a timeline: where a cluster's WAL stands, for example the durable end of an
/// archive or the end of WAL PostgreSQL reported.
///
/// Ordered by timeline, then LSN: the order in which a cluster's history moves forward (a
/// promotion starts a higher timeline).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalPosition {
    /// The timeline.
    pub timeline: TimelineId,
    /// The LSN on it.
    pub lsn: Lsn,
}

impl WalPosition {
    /// `lsn` on `timeline`.
    pub const fn new(timeline: TimelineId, lsn: Lsn) -> Self {
        Self { timeline, lsn }
    }
}

impl fmt::Display for WalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on timeline {}", self.lsn, self.timeline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_timeline_is_later_whatever_its_lsn() {
        let t1 = TimelineId::FIRST;
        let t2 = TimelineId::new(2).unwrap();
        assert!(WalPosition::new(t2, Lsn(1)) > WalPosition::new(t1, Lsn(u64::MAX)));
        assert!(WalPosition::new(t1, Lsn(2)) > WalPosition::new(t1, Lsn(1)));
    }

    #[test]
    fn displays_as_lsn_on_timeline() {
        let p = WalPosition::new(TimelineId::FIRST, Lsn(0x0300_0028));
        assert_eq!(p.to_string(), "0/3000028 on timeline 1");
    }
}
