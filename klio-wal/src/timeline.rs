//! Timeline identifiers.

use std::fmt;

/// A PostgreSQL timeline id (`TimeLineID`); timelines start at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimelineId(u32);

/// Timeline 0 does not exist in PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timeline id 0 is invalid: PostgreSQL timelines start at 1")]
pub struct InvalidTimeline;

impl TimelineId {
    /// The first timeline of every cluster.
    pub const FIRST: Self = Self(1);

    /// A timeline id; zero is refused.
    pub const fn new(id: u32) -> Result<Self, InvalidTimeline> {
        if id == 0 {
            Err(InvalidTimeline)
        } else {
            Ok(Self(id))
        }
    }

    /// The numeric id.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The timeline a promotion creates after this one, if it fits in 32 bits.
    pub fn next(self) -> Option<Self> {
        self.0.checked_add(1).map(TimelineId)
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TryFrom<u32> for TimelineId {
    type Error = InvalidTimeline;
    fn try_from(v: u32) -> Result<Self, Self::Error> {
        Self::new(v)
    }
}
