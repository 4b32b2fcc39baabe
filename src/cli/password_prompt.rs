//! Reading a password from the terminal with echo off (`-W`), as libpq's clients prompt:
//! on `/dev/tty`, so that standard input and output stay free for the command's data.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};

use anyhow::Context;
use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};

/// Prints `prompt` on the terminal and reads one line without echoing it.
pub(crate) fn read(prompt: &str) -> anyhow::Result<String> {
    let mut tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("could not open the terminal to prompt for a password: give it with PGPASSWORD or a password= in --dbname instead")?;
    // Echo goes off before the prompt shows: what is typed once it shows is neither echoed
    // nor flushed away.
    let echo_off = EchoOff::new(&tty)?;
    let mut out = &tty;
    out.write_all(prompt.as_bytes())
        .and_then(|()| out.flush())
        .context("could not write the password prompt")?;
    let mut line = String::new();
    let read = BufReader::new(&tty).read_line(&mut line);
    drop(echo_off);
    // The Enter the user typed was not echoed either.
    let _ = tty.write_all(b"\n");
    read.context("could not read the password from the terminal")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Terminal echo turned off until dropped.
struct EchoOff<'a> {
    tty: &'a File,
    saved: rustix::termios::Termios,
}

impl<'a> EchoOff<'a> {
    fn new(tty: &'a File) -> anyhow::Result<Self> {
        let saved = tcgetattr(tty).context("could not read the terminal's settings")?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        tcsetattr(tty, OptionalActions::Flush, &quiet)
            .context("could not turn off the terminal's echo")?;
        Ok(Self { tty, saved })
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        let _ = tcsetattr(self.tty, OptionalActions::Flush, &self.saved);
    }
}
