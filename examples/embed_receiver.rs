//! How another program embeds Klio's libraries to receive WAL: connect with a libpq-style
//! connection string, stream into a pg_receivewal-compatible directory, stop on Ctrl-C.
//!
//! ```text
//! cargo run --example embed_receiver -- "host=/var/run/postgresql user=postgres" /tmp/wal [slot]
//! ```

use std::time::Duration;

use klio_client::receive::{ReceiveOptions, receive_wal};
use klio_client::{ConnParams, shutdown_channel};
use klio_wal::segment_dir::{Compression, Fsync};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(connstr), Some(directory)) = (args.next(), args.next()) else {
        eprintln!("usage: embed_receiver CONNSTR DIRECTORY [SLOT]");
        std::process::exit(2);
    };
    let slot = args.next();

    // Connection settings resolve like libpq: the string first, then PG* variables.
    let conn = ConnParams::parse(&connstr)?.resolve(|k| std::env::var(k).ok())?;
    std::fs::create_dir_all(&directory)?;
    let options = ReceiveOptions {
        conn,
        directory: directory.into(),
        slot,
        synchronous: true,
        no_loop: false,
        status_interval: Duration::from_secs(10),
        reconnect_delay: Duration::from_secs(5),
        endpos: None,
        fsync: Fsync::Always,
        compression: Compression::None,
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (stop, shutdown) = shutdown_channel();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.trigger();
        });
        // Returns once Ctrl-C was pressed and everything received is fsynced.
        let reason = receive_wal(&options, shutdown).await?;
        println!("stopped: {reason:?}");
        Ok(())
    })
}
