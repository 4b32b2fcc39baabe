//! Timeline history files (`00000002.history`): which timelines a timeline descends from, and
//! where each one was left.

use crate::{Lsn, TimelineId};

/// One line of a history file: `parent` was left for a newer timeline at `switchpoint`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// An ancestor timeline.
    pub parent: TimelineId,
    /// The first LSN that is no longer on `parent` (the child timeline starts here).
    pub switchpoint: Lsn,
}

/// A history file could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid timeline history, line {line}: {reason}")]
pub struct HistoryParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Parses a history file the way PostgreSQL does: `parentTLI <tab> switchpoint <tab> reason`,
/// `#` comments and blank lines ignored; ancestors must be listed oldest first, with
/// increasing timelines and switchpoints.
pub fn parse_history(content: &[u8]) -> Result<Vec<HistoryEntry>, HistoryParseError> {
    let text = std::str::from_utf8(content).map_err(|e| HistoryParseError {
        line: content[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1,
        reason: "not UTF-8 text".to_owned(),
    })?;
    let mut out: Vec<HistoryEntry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim_start();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let bad = |reason: String| HistoryParseError { line, reason };
        let mut fields = l.split_whitespace();
        let tli = fields
            .next()
            .and_then(|t| t.parse::<u32>().ok())
            .and_then(|t| TimelineId::new(t).ok())
            .ok_or_else(|| bad("the first field is not a timeline id".to_owned()))?;
        let switchpoint: Lsn = fields
            .next()
            .ok_or_else(|| bad("no switchpoint".to_owned()))?
            .parse()
            .map_err(|_| bad("the switchpoint is not an LSN (X/X)".to_owned()))?;
        if let Some(prev) = out.last()
            && (tli <= prev.parent || switchpoint < prev.switchpoint)
        {
            return Err(bad(format!(
                "timeline {tli} at {switchpoint} does not follow timeline {} at {}",
                prev.parent, prev.switchpoint
            )));
        }
        out.push(HistoryEntry {
            parent: tli,
            switchpoint,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postgresql_history_files() {
        let h = parse_history(
            b"1\t0/3000060\tno recovery target specified\n\n# comment\n2\t0/50000A0\tbefore 2026-11-21 10:00:00+00\n",
        )
        .unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].parent.get(), 1);
        assert_eq!(h[0].switchpoint, Lsn(0x3000060));
        assert_eq!(h[1].switchpoint, Lsn(0x50000A0));
        assert_eq!(parse_history(b"").unwrap(), vec![]);
        for bad in [
            &b"x\t0/1\tr\n"[..],
            b"1\n",
            b"1\tzz\tr\n",
            b"2\t0/5\tr\n1\t0/6\tr\n",
            b"1\t0/5\tr\n2\t0/4\tr\n",
            b"\xff",
        ] {
            assert!(parse_history(bad).is_err(), "{bad:?}");
        }
    }
}
