//! libpq's password file: `passfile=` in the connection settings, else `PGPASSFILE`, else
//! `~/.pgpass`, read as libpq reads it when no password is given.
//!
//! # Format
//!
//! One entry per line, `hostname:port:database:username:password`; the first line whose four
//! fields match the connection gives the password (up to a further unescaped `:`, if any). A field of `*` matches anything; `\`
//! escapes a `:` or a `\`. Lines starting with `#` are comments. The host of a Unix-socket
//! connection to the default socket directory is `localhost`; to another directory, its path.
//! A replication connection's database is `replication`.
//!
//! # Permissions
//!
//! As libpq, a file that others can read or write (any group or world bit) is ignored with a
//! warning: a password file must be private.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What a connection is, as the password file's fields see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target<'a> {
    pub(crate) host: &'a str,
    pub(crate) port: u16,
    pub(crate) database: &'a str,
    pub(crate) user: &'a str,
}

/// The password `path` holds for `target`, if the file exists, is private, and has a line
/// for it. A file that cannot be read is ignored, as libpq ignores it.
pub(crate) fn lookup(path: &Path, target: Target<'_>) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!("password file {path:?} is not a plain file");
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file {path:?} has group or world access; permissions should be u=rw (0600) or less"
        );
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    find(&text, target)
}

/// The password of the first line of `text` that matches `target`.
fn find(text: &str, target: Target<'_>) -> Option<String> {
    let port = target.port.to_string();
    let wanted = [target.host, port.as_str(), target.database, target.user];
    text.lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .find_map(|line| {
            let (fields, password) = split_entry(line)?;
            let matches = fields
                .iter()
                .zip(wanted)
                .all(|(field, value)| field.raw == "*" || field.value == value);
            matches.then_some(password)
        })
}

/// A field as written (to recognise `*`) and with its escapes removed.
#[derive(Debug)]
struct Field<'a> {
    raw: &'a str,
    value: String,
}

/// The four fields and the password of a line, or nothing if it has fewer than five.
fn split_entry(line: &str) -> Option<([Field<'_>; 4], String)> {
    let mut fields = Vec::with_capacity(4);
    let mut rest = line;
    while fields.len() < 4 {
        let end = unescaped_colon(rest)?;
        fields.push(Field {
            raw: &rest[..end],
            value: unescape(&rest[..end]),
        });
        rest = &rest[end + 1..];
    }
    let fields: [Field<'_>; 4] = fields.try_into().ok()?;
    // As in libpq, the password ends at the next unescaped `:`, if there is one.
    let password = &rest[..unescaped_colon(rest).unwrap_or(rest.len())];
    Some((fields, unescape(password)))
}

/// The byte offset of the first `:` not escaped by a `\`.
fn unescaped_colon(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ':' => return Some(i),
            _ => {}
        }
    }
    None
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Target<'static> = Target {
        host: "db1",
        port: 5432,
        database: "replication",
        user: "rep",
    };

    #[test]
    fn the_first_matching_line_wins_with_wildcards_and_escapes() {
        let text = "\
# a comment:with:colons:and:a password
other:5432:*:rep:not this one
db1:5433:*:rep:wrong port
db1:5432:replication:rep:pa\\:ss\\\\word:with colon
*:*:*:*:catch-all
";
        assert_eq!(find(text, TARGET).as_deref(), Some("pa:ss\\word"));
        let elsewhere = Target {
            host: "db2",
            ..TARGET
        };
        assert_eq!(find(text, elsewhere).as_deref(), Some("catch-all"));
        assert_eq!(
            find("db1:5432:replication:rep", TARGET),
            None,
            "four fields only"
        );
        assert_eq!(
            find(
                "db\\:1:5432:*:*:x",
                Target {
                    host: "db:1",
                    ..TARGET
                }
            )
            .as_deref(),
            Some("x")
        );
        assert_eq!(
            find("\\*:*:*:*:x", TARGET),
            None,
            "an escaped * is a literal *"
        );
    }

    #[test]
    fn a_file_others_can_read_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "*:*:*:*:secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&path, TARGET).as_deref(), Some("secret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(lookup(&path, TARGET), None);
        assert_eq!(lookup(&dir.path().join("missing"), TARGET), None);
        assert_eq!(lookup(dir.path(), TARGET), None, "a directory");
    }
}
