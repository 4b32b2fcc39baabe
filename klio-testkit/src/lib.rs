//! Test harness for Klio's integration tests: real PostgreSQL 15 servers, no mocks.
//!
//! [`PgServer`] runs `initdb` and `postgres` as the `postgres` user (PostgreSQL refuses root) in a
//! temporary directory on a free port, prints the server log when a test panics, and stops the
//! server and removes its files on drop, even on panic. [`TestDir`] makes directories the
//! `postgres` user can use, and [`run`] runs reference tools with their output attached to
//! failures. [`Stack`] puts together what an end-to-end test of Klio runs: PostgreSQL,
//! certificates, a `klio server` and a `klio send-wal` streaming to it. [`S3Server`] is an
//! S3-compatible server (s3s-fs) on 127.0.0.1 for Tier 2's tests, with fault injection;
//! [`MotoServer`] is moto's, for the tests that need S3 Object Lock enforced.
#![warn(missing_docs)]

mod command;
mod files;
mod key_file;
mod klio_server;
mod moto_server;
mod pg;
mod pg_tls;
mod process;
mod receivers;
mod s3_server;
mod send_wal;
mod stack;
mod test_dir;
mod tick_loop;

pub use command::{Output, as_postgres, run, run_ok, wait_until};
pub use files::{assert_same_dump, digests};
pub use key_file::KeyFile;
pub use klio_server::{KlioServer, TestCerts, free_tcp_port};
pub use moto_server::MotoServer;
pub use pg::{Auth, PASSWORD, PgOptions, PgServer, pg_bin};
pub use pg_tls::PgCertificates;
pub use process::BackgroundProcess;
pub use receivers::{start_klio_receive_wal, start_pg_receivewal};
pub use s3_server::{S3Faults, S3Server};
pub use send_wal::{SEND_WAL_SLOT, SendWal};
pub use stack::{Stack, StackBuilder};
pub use test_dir::TestDir;
pub use tick_loop::{TickLoop, pgbench_in_background};
