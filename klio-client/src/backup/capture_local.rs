//! The local capture (see [`super::local`]): the readers' blocks and files through the same
//! batches and dedup exchanges as a streamed backup, the manifest beside them.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use klio_crypto::BlockHashKey;
use klio_proto::base_backup::Checkpoint;
use klio_proto::klio::{BackupFinish, CaptureMethod, FileKind, Message};
use tokio::time::Instant;

use super::BLOCK_SIZE;
use super::batch::{Batch, BatchLimits};
use super::capture::{
    BackupError, BackupOptions, BackupOutcome, SEND_CHUNK, Session, SystemFacts, backup_label,
    epoch_ms, wal_timeout_seconds,
};
use super::local::{
    self, Cut, LocalCaptureError, LocalCluster, ManifestWriter, PageChecks, READ_LAST, Readers,
    Reading, Throttle, cut_file,
};
use super::progress::CaptureProgress;

/// Manifest bytes gathered before they are sent.
const MANIFEST_CHUNK: usize = 256 << 10;

/// What a local capture has cut so far.
#[derive(Debug, Default)]
struct Tally {
    files: u64,
    blocks: u64,
    logical_bytes: u64,
}

/// The batch being filled, the manifest and the tally, fed in the order cuts arrive.
struct Gathering {
    batch: Batch,
    limits: BatchLimits,
    manifest: ManifestWriter,
    tally: Tally,
    /// Damaged pages found.
    damaged: Vec<String>,
}

impl Gathering {
    fn add(&mut self, cut: Cut) {
        match cut {
            Cut::Blocks(blocks) => {
                for b in blocks {
                    self.batch.add_block(b.hash, b.plain);
                }
            }
            Cut::File {
                entry,
                crc32c,
                damaged,
            } => {
                self.damaged.extend(damaged);
                self.manifest
                    .add_file(&entry.path, entry.size, entry.mtime, crc32c);
                self.tally.files += 1;
                self.tally.blocks += entry.blocks.len() as u64;
                self.tally.logical_bytes += entry.size;
                self.batch.add_file(entry);
            }
            Cut::Directory(entry) => {
                debug_assert_eq!(entry.kind, FileKind::Directory);
                self.tally.files += 1;
                self.batch.add_file(entry);
            }
        }
    }

    fn batch_is_full(&self) -> bool {
        self.batch.is_full(&self.limits)
    }
}

impl Session<'_> {
    /// Takes the backup by reading the data directory of `cluster` (see [`super::local`]).
    pub(super) async fn capture_local(
        &mut self,
        cluster: &mut LocalCluster,
        opts: &BackupOptions,
        key: BlockHashKey,
        facts: SystemFacts,
        progress: &mut dyn FnMut(&CaptureProgress),
    ) -> Result<BackupOutcome, BackupError> {
        let started_at = SystemTime::now();
        let label = backup_label(opts, started_at);
        let clock = Instant::now();
        let total = estimated_size(cluster).await;
        let fast = opts.checkpoint == Checkpoint::Fast;
        let start = local::backup_start(&mut cluster.sql, &label, fast).await?;
        let tablespaces = local::tablespaces(&cluster.data_directory)?;
        let walk = local::walk_of(
            &cluster.data_directory,
            &tablespaces,
            &cluster.tablespace_version,
        );
        let throttle = match opts.max_rate {
            Some(rate) => Throttle::new(u64::from(rate.get()) * 1024),
            None => Throttle::unlimited(),
        };
        let checks = cluster
            .checksum_segment_pages
            .map(|segment_pages| PageChecks {
                start,
                segment_pages,
            });
        let mut readers = Readers::start(walk, self.jobs, key.clone(), throttle.clone(), checks)?;
        let mut gathering = Gathering {
            batch: Batch::default(),
            limits: BatchLimits::default(),
            manifest: ManifestWriter::new(facts.pg_version, facts.system_id),
            tally: Tally::default(),
            damaged: Vec::new(),
        };
        let mut report = CaptureProgress {
            done: 0,
            total,
            sent: 0,
            elapsed: Duration::ZERO,
        };
        progress(&report);
        let mut last_report = Instant::now();
        while let Some(cut) = readers.cuts.recv().await {
            gathering.add(cut?);
            if gathering.batch_is_full() {
                self.exchange(std::mem::take(&mut gathering.batch)).await?;
            }
            self.send_manifest(&mut gathering.manifest, MANIFEST_CHUNK)
                .await?;
            if last_report.elapsed() >= Duration::from_millis(200) {
                last_report = Instant::now();
                report.done = local::bytes_read(&readers);
                report.sent = self.stats.bytes_sent;
                report.elapsed = clock.elapsed();
                progress(&report);
            }
        }
        let last = readers
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let read_so_far = local::bytes_read(&readers);
        readers.join();

        // pg_control last, as PostgreSQL sends it last.
        if let Some(entry) = last {
            let read = AtomicU64::new(0);
            let reading = Reading {
                key: &key,
                checks,
                throttle: &throttle,
                read: &read,
            };
            let mut blocks = Vec::new();
            let cut = cut_file(&entry, &reading, &mut |b| {
                blocks.extend(b);
                true
            })?;
            gathering.add(Cut::Blocks(blocks));
            if let Some(cut) = cut {
                gathering.add(cut);
            }
        } else {
            tracing::warn!("the data directory has no {READ_LAST}: the backup will not start");
        }

        if !gathering.damaged.is_empty() {
            // Nothing is cataloged; closing the session ends PostgreSQL's backup.
            return Err(LocalCaptureError::DamagedPages {
                warnings: std::mem::take(&mut gathering.damaged),
            }
            .into());
        }
        let stopped = local::backup_stop(&mut cluster.sql, start).await?;
        let ended_at = SystemTime::now();
        let now = epoch_seconds(ended_at);
        for (path, content) in [
            ("backup_label", &stopped.label_file),
            ("tablespace_map", &stopped.tablespace_map),
        ] {
            let (blocks, entry, crc32c) = local::file_of(path, content, now, &key);
            gathering.add(Cut::Blocks(blocks));
            gathering.add(Cut::File {
                entry,
                crc32c,
                damaged: Vec::new(),
            });
        }
        self.exchange(std::mem::take(&mut gathering.batch)).await?;
        let Gathering {
            manifest, tally, ..
        } = gathering;
        let mut manifest = manifest;
        self.send_manifest(&mut manifest, 0).await?;
        let rest = manifest.finish(stopped.start, stopped.end);
        self.send.push(&Message::ManifestData { data: rest });
        self.send.flush().await?;

        self.stats.files = tally.files;
        self.stats.logical_bytes = tally.logical_bytes;
        self.stats.blocks_total = tally.blocks;
        report.done = read_so_far;
        report.sent = self.stats.bytes_sent;
        report.elapsed = clock.elapsed();
        progress(&report);
        self.finish_backup(BackupFinish {
            label,
            start: stopped.start,
            end: stopped.end,
            started_at_ms: epoch_ms(started_at),
            ended_at_ms: epoch_ms(ended_at),
            pg_version: facts.pg_version,
            tablespaces,
            block_size: BLOCK_SIZE as u32,
            wal_timeout_s: wal_timeout_seconds(opts.wal_timeout),
            capture: CaptureMethod::Local,
        })
        .await
    }

    /// Sends what the manifest gathered once it is at least `at_least` bytes.
    async fn send_manifest(
        &mut self,
        manifest: &mut ManifestWriter,
        at_least: usize,
    ) -> Result<(), BackupError> {
        if manifest.pending() < at_least.max(1) {
            return Ok(());
        }
        self.send.push(&Message::ManifestData {
            data: manifest.take(),
        });
        if self.send.queued() >= SEND_CHUNK {
            self.send.flush().await?;
        }
        Ok(())
    }
}

/// The size of the databases, for the progress display (0 when PostgreSQL cannot tell).
async fn estimated_size(cluster: &mut LocalCluster) -> u64 {
    let r = cluster
        .sql
        .simple_query("SELECT sum(pg_database_size(oid))::bigint::text FROM pg_database")
        .await;
    r.ok()
        .and_then(|r| {
            r.single("SELECT")
                .ok()
                .and_then(|s| s.text(0, 0).ok().flatten().and_then(|t| t.parse().ok()))
        })
        .unwrap_or(0)
}

fn epoch_seconds(t: SystemTime) -> i64 {
    epoch_ms(t) / 1000
}
