//! `klio keys`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use klio_server::keys::{
    DEFAULT_PASSPHRASE_ENV, KdfParams, generate_key_file, generate_passphrase_key_file,
    keys_in_use, load_key_file, load_keyring, rotate_offline,
};

/// Key files for encrypting archives at rest.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Write a new random 256-bit key (64 hex digits) to FILE with mode 0600; never overwrites.
    ///
    /// Keep a copy somewhere safe: without the key, data encrypted with it cannot be read.
    ///
    /// With --passphrase, the key is derived (Argon2id, 64 MiB, 3 passes) from the passphrase
    /// in the environment variable --passphrase-env instead, and FILE keeps only the salt, the
    /// costs and the key's id. Whoever loads FILE (the server, `klio keys`) must have the same
    /// passphrase in that variable; a wrong one is refused at once. Keep FILE and the
    /// passphrase: either alone gives no key.
    Generate {
        /// The key file to create.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Derive the key from a passphrase instead of random bytes.
        #[arg(long)]
        passphrase: bool,
        /// The environment variable holding the passphrase, now and whenever FILE is loaded
        /// (give each passphrase key its own variable to rotate between two of them).
        #[arg(
            long,
            value_name = "NAME",
            default_value = DEFAULT_PASSPHRASE_ENV,
            requires = "passphrase"
        )]
        passphrase_env: String,
    },
    /// Print the id of a key file (archived objects name the key they need by this id). For a
    /// passphrase key file this also checks the passphrase.
    Id {
        /// The key file.
        file: PathBuf,
    },
    /// With the server stopped: re-wrap every encrypted file's data key under --key (the new
    /// primary), reading them with the --old-key files. Only key slots are rewritten. While the
    /// server runs, restart it with the new key instead: it rotates by itself.
    Rotate {
        /// The server's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The new key.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Keys the files are encrypted with now (repeatable).
        #[arg(long = "old-key", value_name = "FILE")]
        old_keys: Vec<PathBuf>,
    },
    /// List, per cluster, the keys the server's files still need; a key no longer listed can
    /// be retired. Read-only, safe while the server runs.
    InUse {
        /// The server's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Key files (all keys that may be in use; repeatable).
        #[arg(long = "key", value_name = "FILE", required = true)]
        keys: Vec<PathBuf>,
    },
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    match a.command {
        Command::Generate {
            output,
            passphrase,
            passphrase_env,
        } => {
            let id = if passphrase {
                generate_passphrase_key_file(&output, &passphrase_env, KdfParams::default())?
            } else {
                generate_key_file(&output)?
            };
            println!("created {} (key id {id})", output.display());
        }
        Command::Id { file } => println!("{}", load_key_file(&file)?.id()),
        Command::Rotate {
            data_dir,
            key,
            old_keys,
        } => {
            let ring = load_keyring(&key, &old_keys)?;
            for (cluster, n) in rotate_offline(&data_dir, &ring)? {
                println!(
                    "{cluster}: re-wrapped {n} files under key {}",
                    ring.primary_id()
                );
            }
        }
        Command::InUse { data_dir, keys } => {
            let (first, rest) = keys.split_first().context("at least one --key is needed")?;
            let ring = load_keyring(first, rest)?;
            for (cluster, ids) in keys_in_use(&data_dir, &ring)? {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                println!(
                    "{cluster}: {}",
                    if ids.is_empty() {
                        "no encrypted files".to_owned()
                    } else {
                        ids.join(" ")
                    }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
