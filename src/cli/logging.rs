//! Log output on standard error through `tracing`: readable text, or one JSON object per line
//! for log collectors. Lines about a cluster carry its name (`cluster`, from the span of the
//! client session or the send-wal loop).

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// The format chosen at start, for the lines written outside of `tracing`.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Readable text (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, message and fields, and the fields of the
    /// enclosing spans (`span`, `spans`), such as `cluster`.
    Json,
}

/// Logs on stderr; `RUST_LOG` overrides the level chosen by -v/-q.
pub(crate) fn init(verbose: u8, quiet: bool, format: LogFormat) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let _ = FORMAT.set(format);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// A command's closing summary for a person: plain text on stderr, or an INFO line in JSON
/// mode so that a log collector can parse every line.
pub(crate) fn summary(text: &str) {
    match FORMAT.get().copied().unwrap_or_default() {
        LogFormat::Text => eprintln!("{text}"),
        LogFormat::Json => tracing::info!("{text}"),
    }
}

/// A command's final error: `klio: error: ...` on stderr, or an ERROR line in JSON mode.
pub(crate) fn error(text: &str) {
    match FORMAT.get().copied().unwrap_or_default() {
        LogFormat::Text => eprintln!("klio: error: {text}"),
        LogFormat::Json => tracing::error!("{text}"),
    }
}
