//! `-Z/--compress` as pg_receivewal 15 reads it: `METHOD[:DETAIL]` with METHOD `none`,
//! `gzip` or `lz4` and DETAIL a level (`gzip:9`) or `level=N`, or the older bare integer
//! (`-Z 5` is gzip at level 5, `-Z 0` no compression). Refusals use its words.

use klio_wal::segment_dir::Compression;

/// A `-Z` value pg_receivewal would refuse.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CompressOptionError {
    #[error("unrecognized compression algorithm: {0:?}")]
    UnknownAlgorithm(String),
    #[error("invalid compression specification")]
    Invalid(#[source] SpecificationError),
    #[error("compression with ZSTD is not yet supported")]
    Zstd,
}

/// What is wrong with a DETAIL.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpecificationError {
    #[error("found empty string where a compression option was expected")]
    EmptyOption,
    #[error("unrecognized compression option: {0:?}")]
    UnknownOption(String),
    #[error("compression option \"{0}\" requires a value")]
    MissingValue(&'static str),
    #[error("value for compression option \"{0}\" must be an integer")]
    NotAnInteger(&'static str),
    #[error("compression algorithm \"{0}\" does not accept a worker count")]
    NoWorkers(&'static str),
    #[error("compression algorithm \"none\" does not accept a compression level")]
    NoLevelForNone,
    #[error(
        "compression algorithm \"{algorithm}\" expects a compression level between {min} and {max} (default at {default})"
    )]
    LevelOutOfRange {
        algorithm: &'static str,
        min: i64,
        max: i64,
        default: i64,
    },
}

/// The compression `-Z text` asks for, and a warning when it cannot be had exactly.
pub(crate) fn parse(text: &str) -> Result<(Compression, Option<String>), CompressOptionError> {
    // The older form: a bare integer, 0 for none and otherwise a gzip level.
    let (algorithm, detail) = match c_integer(text) {
        Some(0) => ("none", None),
        Some(_) => ("gzip", Some(text)),
        None => match text.split_once(':') {
            Some((algorithm, detail)) => (algorithm, Some(detail)),
            None => (text, None),
        },
    };
    let (name, min, max, default): (&'static str, i64, i64, i64) = match algorithm {
        "none" => ("none", 0, 0, 0),
        "gzip" => ("gzip", 1, 9, -1),
        "lz4" => ("lz4", 1, 12, 0),
        "zstd" => ("zstd", -131_072, 22, 3),
        other => return Err(CompressOptionError::UnknownAlgorithm(other.to_owned())),
    };
    let detail = detail
        .map(parse_detail)
        .transpose()
        .map_err(CompressOptionError::Invalid)?
        .unwrap_or_default();
    let invalid = CompressOptionError::Invalid;
    if detail.workers && name != "zstd" {
        return Err(invalid(SpecificationError::NoWorkers(name)));
    }
    if let Some(level) = detail.level {
        if name == "none" {
            return Err(invalid(SpecificationError::NoLevelForNone));
        }
        if !(min..=max).contains(&level) {
            return Err(invalid(SpecificationError::LevelOutOfRange {
                algorithm: name,
                min,
                max,
                default,
            }));
        }
    }
    Ok(match name {
        "none" => (Compression::None, None),
        // zlib's default level.
        "gzip" => (
            Compression::Gzip {
                level: detail.level.map_or(6, |l| l as u32),
            },
            None,
        ),
        "lz4" => {
            // LZ4's levels from 3 on are its high-compression mode, which Klio's LZ4 has not.
            let warning = detail.level.filter(|l| *l >= 3).map(|l| {
                format!(
                    "lz4 compression level {l} is written at level 1: Klio's LZ4 has only its fast mode (the files are valid LZ4 either way; use gzip for smaller ones)"
                )
            });
            (Compression::Lz4, warning)
        }
        _ => return Err(CompressOptionError::Zstd),
    })
}

/// What a DETAIL sets.
#[derive(Debug, Default)]
struct Detail {
    level: Option<i64>,
    workers: bool,
}

/// A DETAIL: a bare level, or `keyword=value` options separated by commas.
fn parse_detail(text: &str) -> Result<Detail, SpecificationError> {
    if let Some(level) = c_integer(text).filter(|_| !text.trim().is_empty()) {
        return Ok(Detail {
            level: Some(level),
            workers: false,
        });
    }
    let mut detail = Detail::default();
    for option in text.split(',') {
        let (keyword, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (option, None),
        };
        let keyword: &'static str = match keyword {
            "" => return Err(SpecificationError::EmptyOption),
            "level" => "level",
            "workers" => "workers",
            other => return Err(SpecificationError::UnknownOption(other.to_owned())),
        };
        let value = match value {
            None | Some("") => return Err(SpecificationError::MissingValue(keyword)),
            Some(v) => c_integer(v).ok_or(SpecificationError::NotAnInteger(keyword))?,
        };
        match keyword {
            "level" => detail.level = Some(value),
            _ => detail.workers = true,
        }
    }
    Ok(detail)
}

/// `text` read whole as C's `strtol` reads an integer (leading spaces and a sign allowed); an
/// empty text reads as 0, as pg_receivewal takes it.
fn c_integer(text: &str) -> Option<i64> {
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return text.is_empty().then_some(0);
    }
    trimmed.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> String {
        let e = parse(text).unwrap_err();
        match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        }
    }

    #[test]
    fn methods_levels_and_the_older_integer_form() {
        assert_eq!(parse("none").unwrap().0, Compression::None);
        assert_eq!(parse("0").unwrap().0, Compression::None);
        assert_eq!(parse("gzip").unwrap().0, Compression::Gzip { level: 6 });
        assert_eq!(parse("5").unwrap().0, Compression::Gzip { level: 5 });
        assert_eq!(parse("gzip:9").unwrap().0, Compression::Gzip { level: 9 });
        assert_eq!(
            parse("gzip:level=1").unwrap().0,
            Compression::Gzip { level: 1 }
        );
        assert_eq!(parse("lz4").unwrap(), (Compression::Lz4, None));
        assert_eq!(parse("lz4:2").unwrap(), (Compression::Lz4, None));
        let (method, warning) = parse("lz4:9").unwrap();
        assert_eq!(method, Compression::Lz4);
        assert!(warning.unwrap().contains("level 9"));
    }

    #[test]
    fn refusals_are_worded_as_pg_receivewal_words_them() {
        let cases = [
            ("foo", "unrecognized compression algorithm: \"foo\""),
            ("GZIP", "unrecognized compression algorithm: \"GZIP\""),
            (
                "none:5",
                "invalid compression specification: compression algorithm \"none\" does not accept a compression level",
            ),
            (
                "gzip:",
                "invalid compression specification: found empty string where a compression option was expected",
            ),
            (
                "gzip:level=3,",
                "invalid compression specification: found empty string where a compression option was expected",
            ),
            (
                "gzip:foo",
                "invalid compression specification: unrecognized compression option: \"foo\"",
            ),
            (
                "gzip:level",
                "invalid compression specification: compression option \"level\" requires a value",
            ),
            (
                "gzip:level=x",
                "invalid compression specification: value for compression option \"level\" must be an integer",
            ),
            (
                "gzip:workers=2",
                "invalid compression specification: compression algorithm \"gzip\" does not accept a worker count",
            ),
            (
                "10",
                "invalid compression specification: compression algorithm \"gzip\" expects a compression level between 1 and 9 (default at -1)",
            ),
            (
                "lz4:13",
                "invalid compression specification: compression algorithm \"lz4\" expects a compression level between 1 and 12 (default at 0)",
            ),
            (
                "zstd:50",
                "invalid compression specification: compression algorithm \"zstd\" expects a compression level between -131072 and 22 (default at 3)",
            ),
            ("zstd", "compression with ZSTD is not yet supported"),
        ];
        for (text, expected) in cases {
            assert_eq!(message(text), expected, "-Z {text}");
        }
    }
}
