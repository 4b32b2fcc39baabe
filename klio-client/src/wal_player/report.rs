//! What the player reports: one record per file (the JSON the WAL Player documents) and a
//! summary of the run.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// The outcome of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileReport {
    /// The file sent.
    pub path: PathBuf,
    /// The job (1-based) that sent it.
    pub job: usize,
    /// Bytes of WAL in it.
    pub bytes: u64,
    /// When its first byte was handed to the connection.
    pub start: SystemTime,
    /// When the server acknowledged its last byte as durable (or when it failed).
    pub end: SystemTime,
    /// `end - start`, on the monotonic clock.
    pub elapsed: Duration,
    /// Why it failed; `None` when the server has it on stable storage.
    pub error: Option<String>,
}

/// The documented JSON form, field for field.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileReportJson<'a> {
    wal_full_path: String,
    start_time: String,
    end_time: String,
    /// Nanoseconds, as a string.
    elapsed_time: String,
    error: &'a str,
}

impl FileReport {
    /// One line of JSON: `walFullPath`, `startTime`, `endTime` (RFC 3339, UTC), `elapsedTime`
    /// (nanoseconds, as a string) and `error` (empty on success).
    pub fn to_json(&self) -> String {
        let json = FileReportJson {
            wal_full_path: self.path.display().to_string(),
            start_time: humantime::format_rfc3339_nanos(self.start).to_string(),
            end_time: humantime::format_rfc3339_nanos(self.end).to_string(),
            elapsed_time: self.elapsed.as_nanos().to_string(),
            error: self.error.as_deref().unwrap_or(""),
        };
        serde_json::to_string(&json).unwrap_or_default()
    }
}

/// Totals of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlaySummary {
    /// Files played.
    pub files: usize,
    /// Files that failed.
    pub errors: usize,
    /// Bytes of WAL acknowledged as durable.
    pub bytes: u64,
    /// Wall-clock time of the whole run, in seconds.
    pub seconds: f64,
    /// Durable bytes per second, in MB/s (10^6 bytes).
    pub mb_per_s: f64,
    /// Median per-file latency (first byte sent to durable acknowledgement), milliseconds.
    pub latency_p50_ms: f64,
    /// 99th percentile per-file latency, milliseconds.
    pub latency_p99_ms: f64,
    /// Jobs (concurrent streams).
    pub jobs: usize,
}

impl PlaySummary {
    /// Sums up `reports` of a run that took `wall` with `jobs` streams.
    pub fn new(reports: &[FileReport], wall: Duration, jobs: usize) -> Self {
        let mut ok: Vec<Duration> = reports
            .iter()
            .filter(|r| r.error.is_none())
            .map(|r| r.elapsed)
            .collect();
        ok.sort();
        let bytes = reports
            .iter()
            .filter(|r| r.error.is_none())
            .map(|r| r.bytes)
            .sum();
        let seconds = wall.as_secs_f64();
        Self {
            files: reports.len(),
            errors: reports.len() - ok.len(),
            bytes,
            seconds,
            mb_per_s: if seconds > 0.0 {
                bytes as f64 / 1e6 / seconds
            } else {
                0.0
            },
            latency_p50_ms: percentile(&ok, 50.0).as_secs_f64() * 1e3,
            latency_p99_ms: percentile(&ok, 99.0).as_secs_f64() * 1e3,
            jobs,
        }
    }

    /// `{"summary": {...}}`: one line that tools reading the per-file lines can tell apart
    /// (it has no `error` key).
    pub fn to_json(&self) -> String {
        serde_json::json!({ "summary": self }).to_string()
    }

    /// One line for people.
    pub fn to_text(&self) -> String {
        format!(
            "{} files, {} errors, {:.1} MB in {:.2} s: {:.1} MB/s with {} job{}; per-file latency p50 {:.1} ms, p99 {:.1} ms",
            self.files,
            self.errors,
            self.bytes as f64 / 1e6,
            self.seconds,
            self.mb_per_s,
            self.jobs,
            if self.jobs == 1 { "" } else { "s" },
            self.latency_p50_ms,
            self.latency_p99_ms
        )
    }
}

/// The nearest-rank percentile of sorted values (zero when empty).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&v, 50.0), ms(50));
        assert_eq!(percentile(&v, 99.0), ms(99));
        assert_eq!(percentile(&v, 100.0), ms(100));
        assert_eq!(percentile(&[ms(7)], 99.0), ms(7));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn json_has_the_documented_fields() {
        let r = FileReport {
            path: PathBuf::from("/w/000000010000000000000001"),
            job: 1,
            bytes: 16 << 20,
            start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_736_937_000),
            end: SystemTime::UNIX_EPOCH + Duration::from_secs(1_736_937_002),
            elapsed: Duration::from_nanos(7_651_680),
            error: None,
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["walFullPath"], "/w/000000010000000000000001");
        assert_eq!(v["startTime"], "2025-01-15T10:30:00.000000000Z");
        assert_eq!(v["endTime"], "2025-01-15T10:30:02.000000000Z");
        assert_eq!(v["elapsedTime"], "7651680");
        assert_eq!(v["error"], "");
        assert_eq!(v.as_object().unwrap().len(), 5);
    }

    #[test]
    fn summary_counts_only_durable_bytes() {
        let base = FileReport {
            path: PathBuf::new(),
            job: 1,
            bytes: 1_000_000,
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            elapsed: ms(10),
            error: None,
        };
        let failed = FileReport {
            error: Some("refused".into()),
            elapsed: ms(1),
            ..base.clone()
        };
        let s = PlaySummary::new(&[base.clone(), base, failed], Duration::from_secs(2), 1);
        assert_eq!((s.files, s.errors, s.bytes), (3, 1, 2_000_000));
        assert!((s.mb_per_s - 1.0).abs() < 1e-9);
        assert!((s.latency_p99_ms - 10.0).abs() < 1e-9);
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(v["summary"]["files"], 3);
        assert!(v.get("error").is_none());
    }
}
