//! `klio-bench`: comparison runs on this machine. Measures; asserts nothing.
//!
//! ```text
//! scripts/bench                    # everything, results in bench-results/
//! cargo run --release -p klio-bench -- ingest --klio target/release/klio
//! ```

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use klio_bench::compare::CompareOptions;
use klio_bench::layout::Layout;

/// Side-by-side comparisons of Klio with the machine's limits and with its peers.
#[derive(Debug, Parser)]
#[command(name = "klio-bench", max_term_width = 100)]
struct Cli {
    /// The klio binary to measure (build it with --release).
    #[arg(
        long,
        value_name = "PATH",
        global = true,
        default_value = "target/release/klio"
    )]
    klio: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything: machine, ingest, streaming, synchronous commit, recovery, archive scale, many
    /// streams; writes results.md and results.json.
    Compare {
        /// Where to write the results.
        #[arg(long, value_name = "DIR", default_value = "bench-results")]
        out: PathBuf,
        /// A short run that checks the harness (noisy numbers).
        #[arg(long)]
        quick: bool,
    },
    /// wal-player play against fsync'd disk writes and pgBackRest archive-push.
    Ingest {
        /// Rounds.
        #[arg(long, default_value_t = 2)]
        rounds: u32,
        /// 16 MiB files per run.
        #[arg(long, default_value_t = 64)]
        files: usize,
        /// Parallelism settings.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        jobs: Vec<usize>,
    },
    /// CPU per GB and flush lag: send-wal against pg_receivewal on one pgbench run.
    Streaming {
        /// Rounds.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Seconds per pgbench run.
        #[arg(long, default_value_t = 30)]
        seconds: u32,
        /// Also write the queue of each receiver over time (every 100 ms) to this CSV file.
        #[arg(long, value_name = "PATH")]
        queue_csv: Option<PathBuf>,
        /// shared: no pinning; pinned: the Klio server and pg_receivewal on the last core,
        /// PostgreSQL, pgbench and send-wal on the others.
        #[arg(long, value_enum, default_value_t = Layout::Shared)]
        layout: Layout,
    },
    /// pgbench TPS with Klio as synchronous standby against pg_receivewal --synchronous.
    SyncCommit {
        /// Rounds.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Seconds per pgbench run.
        #[arg(long, default_value_t = 20)]
        seconds: u32,
        /// pgbench clients.
        #[arg(long, default_value_t = 8)]
        clients: u32,
        /// pgbench scale.
        #[arg(long, default_value_t = 10)]
        scale: u32,
        /// shared: no pinning; pinned: the Klio server and pg_receivewal on the last core,
        /// PostgreSQL, pgbench and send-wal on the others.
        #[arg(long, value_enum, default_value_t = Layout::Shared)]
        layout: Layout,
    },
    /// A local backup of a data directory with many small files: its time and the peak RSS
    /// of client and server
    BackupFiles {
        /// Small files added to the data directory.
        #[arg(long, default_value_t = 1_000_000)]
        files: usize,
    },
    /// Base backups: klio backup run against pg_basebackup and pgBackRest (full, incremental
    /// after pgbench -N), and klio restore against tar -x and pgbackrest restore.
    Backup {
        /// Rounds of full backups and of restores.
        #[arg(long, default_value_t = 2)]
        rounds: u32,
        /// pgbench scale of the database (100 is about 1.5 GiB).
        #[arg(long, default_value_t = 100)]
        scale: u32,
        /// Seconds of pgbench -N between the full and the incremental backup.
        #[arg(long, default_value_t = 60)]
        change_seconds: u32,
        /// Klio's block compression (klio backup run --compress zstd|lz4).
        #[arg(long, default_value = "lz4")]
        compress: String,
    },
    /// The block size study: stored bytes, reference overhead and round trips per block size
    /// on two pg_basebackup archives before and after pgbench -N (no klio binary needed).
    BlockSize {
        /// pgbench scale of the database.
        #[arg(long, default_value_t = 100)]
        scale: u32,
        /// Seconds of pgbench -N between the two backups.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Block sizes to try, KiB.
        #[arg(long, value_delimiter = ',', default_value = "8,16,32,64,128,256")]
        sizes_kib: Vec<usize>,
    },
    /// Tier 2: the relay's upload rate against the disk's, and WAL recovery and klio restore
    /// from a read-only server (Tier 2 alone) against from the primary (Tier 1).
    Tier2 {
        /// Rounds.
        #[arg(long, default_value_t = 2)]
        rounds: u32,
        /// WAL to relay and recover, MiB.
        #[arg(long, default_value_t = 1024)]
        wal_mib: u64,
        /// pgbench scale of the database backed up.
        #[arg(long, default_value_t = 20)]
        scale: u32,
    },
    /// Server start, GetPosition and GetFile latency with small and large archives of
    /// synthetic 1 MiB segments (hard links), side by side.
    ArchiveScale {
        /// Archive sizes, in segments.
        #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
        segments: Vec<u64>,
        /// GetFile requests per size.
        #[arg(long, default_value_t = 200)]
        gets: usize,
    },
    /// Many clusters on one server: wal-player with 1 to 256 concurrent streams (1 MiB
    /// segments); the server's peak and median RSS, MB/s and per-cluster ack latency.
    Streams {
        /// Concurrent streams, one run (and one server) each.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        jobs: Vec<usize>,
        /// 1 MiB segments per run, shared out among its streams.
        #[arg(long, default_value_t = 1024)]
        files: usize,
        /// wal-player --block-size, KiB.
        #[arg(long, default_value_t = 2048)]
        block_kib: usize,
        /// An extra `klio server start` flag (repeatable), e.g. --server-arg=--ingest-memory
        /// --server-arg=64MiB.
        #[arg(long = "server-arg", allow_hyphen_values = true)]
        server_args: Vec<String>,
    },
    /// Recovery time through get-wal, with prefetching and without, against cp.
    Recovery {
        /// Rounds.
        #[arg(long, default_value_t = 2)]
        rounds: u32,
        /// WAL to recover, MiB.
        #[arg(long, default_value_t = 1024)]
        wal_mib: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let klio = std::path::absolute(&cli.klio).unwrap_or(cli.klio);
    if !klio.is_file() {
        eprintln!(
            "klio-bench: {} not found; build it first: cargo build --release --bin klio",
            klio.display()
        );
        std::process::exit(2);
    }
    match cli.command {
        Command::Compare { out, quick } => {
            let opts = if quick {
                CompareOptions::quick()
            } else {
                CompareOptions::full()
            };
            let report = klio_bench::compare::run(&klio, &std::env::temp_dir(), &opts);
            match report.write(&out) {
                Ok((md, json)) => {
                    println!("{}", report.markdown());
                    eprintln!("wrote {} and {}", md.display(), json.display());
                }
                Err(e) => {
                    eprintln!("klio-bench: cannot write results to {}: {e}", out.display());
                    std::process::exit(1);
                }
            }
        }
        Command::Ingest {
            rounds,
            files,
            jobs,
        } => {
            let opts = klio_bench::ingest::IngestOptions {
                rounds,
                files,
                jobs,
            };
            println!("{}", klio_bench::ingest::run(&klio, &opts).markdown());
        }
        Command::Streaming {
            rounds,
            seconds,
            queue_csv,
            layout,
        } => {
            let opts = klio_bench::streaming::StreamingOptions {
                rounds,
                seconds,
                layout,
                ..Default::default()
            };
            let report = klio_bench::streaming::run(&klio, &opts);
            if let Some(path) = queue_csv
                && let Err(e) = std::fs::write(&path, report.queue_csv())
            {
                eprintln!("klio-bench: cannot write {}: {e}", path.display());
                std::process::exit(1);
            }
            println!("{}", report.markdown());
        }
        Command::SyncCommit {
            rounds,
            seconds,
            clients,
            scale,
            layout,
        } => {
            let opts = klio_bench::sync_commit::SyncCommitOptions {
                rounds,
                seconds,
                clients,
                scale,
                layout,
            };
            println!("{}", klio_bench::sync_commit::run(&klio, &opts).markdown());
        }
        Command::BackupFiles { files } => {
            let opts = klio_bench::backup_files::BackupFilesOptions { files };
            println!("{}", klio_bench::backup_files::run(&klio, &opts).markdown());
        }
        Command::Backup {
            rounds,
            scale,
            change_seconds,
            compress,
        } => {
            let opts = klio_bench::backup::BackupOptions {
                rounds,
                scale,
                change_seconds,
                compress,
            };
            println!("{}", klio_bench::backup::run(&klio, &opts).markdown());
        }
        Command::BlockSize {
            scale,
            seconds,
            sizes_kib,
        } => {
            let opts = klio_bench::block_size::BlockSizeOptions {
                scale,
                seconds,
                sizes: sizes_kib.iter().map(|k| k * 1024).collect(),
            };
            println!("{}", klio_bench::block_size::run(&opts).markdown());
        }
        Command::Tier2 {
            rounds,
            wal_mib,
            scale,
        } => {
            let opts = klio_bench::tier2::Tier2Options {
                rounds,
                wal_mib,
                scale,
            };
            println!("{}", klio_bench::tier2::run(&klio, &opts).markdown());
        }
        Command::ArchiveScale { segments, gets } => {
            let opts = klio_bench::archive_scale::ArchiveScaleOptions {
                sizes: segments,
                gets,
                ..Default::default()
            };
            match klio_bench::archive_scale::run(&klio, &opts) {
                Ok(report) => println!("{}", report.markdown()),
                Err(e) => {
                    eprintln!("klio-bench: archive-scale: {}", klio_wal::ErrorChain(&e));
                    std::process::exit(1);
                }
            }
        }
        Command::Streams {
            jobs,
            files,
            block_kib,
            server_args,
        } => {
            let opts = klio_bench::streams::StreamsOptions {
                jobs,
                files,
                block_kib,
                server_args,
            };
            println!("{}", klio_bench::streams::run(&klio, &opts).markdown());
        }
        Command::Recovery { rounds, wal_mib } => {
            let opts = klio_bench::recovery::RecoveryOptions { rounds, wal_mib };
            println!("{}", klio_bench::recovery::run(&klio, &opts).markdown());
        }
    }
}
