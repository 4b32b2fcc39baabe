//! Log output on standard error through `tracing`: readable text, or one JSON object per line
//! for log collectors. Lines about a cluster carry its name (`cluster`, from the span of the
//! client session or the send-wal loop).

use std::fmt::Write as _;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The format chosen at start, for the lines written outside of `tracing`.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The name the final error and hints are prefixed with: `klio`, or the PostgreSQL tool klio
/// runs as.
static PROGRAM: OnceLock<&'static str> = OnceLock::new();

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

/// Logs on stderr as PostgreSQL's command-line tools do: `<program>: <message>`, with
/// `warning: ` or `error: ` before the message for those levels, and only the message (no
/// fields). Without -v only warnings, errors and the lines pg_receivewal always prints
/// ([`klio_client::receive::NOTICE`]) appear, like the tool's own non-verbose output.
pub(crate) fn init_as_pg_tool(program: &'static str, verbose: u8) {
    let level = match verbose {
        0 => format!("warn,{}=info", klio_client::receive::NOTICE),
        1 => "info".to_owned(),
        _ => "debug".to_owned(),
    };
    let _ = FORMAT.set(LogFormat::Text);
    let _ = PROGRAM.set(program);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(PgToolFormat { program })
        .init();
}

/// The line format of PostgreSQL's command-line tools.
struct PgToolFormat {
    program: &'static str,
}

impl<S, N> FormatEvent<S, N> for PgToolFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            Level::INFO => "",
            Level::DEBUG => "debug: ",
            Level::TRACE => "trace: ",
        };
        let mut message = MessageOnly(String::new());
        event.record(&mut message);
        writeln!(writer, "{}: {level}{}", self.program, message.0)
    }
}

/// Collects an event's message, leaving out its other fields.
struct MessageOnly(String);

impl Visit for MessageOnly {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

/// The name messages are prefixed with.
pub(crate) fn program() -> &'static str {
    PROGRAM.get().copied().unwrap_or("klio")
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
        LogFormat::Text => eprintln!("{}: error: {text}", program()),
        LogFormat::Json => tracing::error!("{text}"),
    }
}

/// What to do about the final error: `klio: hint: ...`, or an INFO line in JSON mode.
pub(crate) fn hint(text: &str) {
    match FORMAT.get().copied().unwrap_or_default() {
        LogFormat::Text => eprintln!("{}: hint: {text}", program()),
        LogFormat::Json => tracing::info!(hint = text),
    }
}
