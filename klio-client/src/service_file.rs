//! libpq's connection service file: `service=NAME` (or `PGSERVICE`) takes the settings of
//! section `[NAME]`, first from the user's file (`PGSERVICEFILE`, else
//! `~/.pg_service.conf`), then from the system's (`PGSYSCONFDIR/pg_service.conf`, by default
//! Debian's `/etc/postgresql-common/pg_service.conf`).
//!
//! # Format
//!
//! An INI file: `[name]` starts a service, `keyword=value` lines (spaces around either are
//! trimmed) give its settings, `#` starts a comment line. A service's settings fill what the
//! connection string leaves unset, before the `PG*` variables do, as in libpq.

use std::path::{Path, PathBuf};

use crate::conn_string::ConnStringError;

/// Debian's libpq reads the system's service file from this directory.
const SYSTEM_CONFIG_DIR: &str = "/etc/postgresql-common";

/// The `(keyword, value)` pairs of service `name`, from the first file that defines it.
pub(crate) fn settings_of(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, ConnStringError> {
    let named_file = env("PGSERVICEFILE").filter(|v| !v.is_empty());
    let user_file = match &named_file {
        Some(path) => Some(PathBuf::from(path)),
        None => env("HOME").map(|home| Path::new(&home).join(".pg_service.conf")),
    };
    let system_file = Path::new(
        &env("PGSYSCONFDIR")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| SYSTEM_CONFIG_DIR.to_owned()),
    )
    .join("pg_service.conf");
    for (file, must_exist) in [
        (user_file, named_file.is_some()),
        (Some(system_file), false),
    ] {
        let Some(file) = file else { continue };
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConnStringError::ServiceFileMissing(file));
            }
            Err(e) => {
                return Err(ConnStringError::ServiceFileUnreadable {
                    path: file,
                    kind: e.kind(),
                });
            }
        };
        if let Some(settings) = section(&text, name, &file)? {
            return Ok(settings);
        }
    }
    Err(ConnStringError::ServiceNotFound(name.to_owned()))
}

/// The settings of section `[name]` of a service file's `text`, if it has one.
fn section(
    text: &str,
    name: &str,
    path: &Path,
) -> Result<Option<Vec<(String, String)>>, ConnStringError> {
    let mut found: Option<Vec<(String, String)>> = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if found.is_some() {
                break;
            }
            if section == name {
                found = Some(Vec::new());
            }
            continue;
        }
        let Some(settings) = found.as_mut() else {
            continue;
        };
        let syntax = || ConnStringError::ServiceSyntax {
            path: path.to_owned(),
            line: index + 1,
        };
        let (keyword, value) = line.split_once('=').ok_or_else(syntax)?;
        let keyword = keyword.trim();
        if keyword == "service" {
            return Err(ConnStringError::NestedService {
                path: path.to_owned(),
                line: index + 1,
            });
        }
        if keyword.is_empty() {
            return Err(syntax());
        }
        settings.push((keyword.to_owned(), value.trim().to_owned()));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# services
[other]
host=elsewhere

[main]
host = db1.example.net
port=5433
 user = replicator
# a comment inside
sslmode=verify-full

[after]
host=not-this
";

    #[test]
    fn a_section_gives_its_settings_and_stops_at_the_next() {
        let got = section(FILE, "main", Path::new("f")).unwrap().unwrap();
        let pairs: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("host", "db1.example.net"),
                ("port", "5433"),
                ("user", "replicator"),
                ("sslmode", "verify-full")
            ]
        );
        assert_eq!(section(FILE, "missing", Path::new("f")).unwrap(), None);
        assert!(matches!(
            section("[a]\nhost\n", "a", Path::new("f")),
            Err(ConnStringError::ServiceSyntax { line: 2, .. })
        ));
        assert!(matches!(
            section("[a]\nservice=b\n", "a", Path::new("f")),
            Err(ConnStringError::NestedService { line: 2, .. })
        ));
    }

    #[test]
    fn the_users_file_comes_before_the_systems_and_a_named_file_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.conf");
        std::fs::write(&user, "[main]\nhost=from-user\n").unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/pg_service.conf"),
            "[main]\nhost=from-system\n[sys]\nport=1\n",
        )
        .unwrap();
        let sysconf = dir.path().join("etc").display().to_string();
        let user_path = user.display().to_string();
        let env = |k: &str| match k {
            "PGSERVICEFILE" => Some(user_path.clone()),
            "PGSYSCONFDIR" => Some(sysconf.clone()),
            _ => None,
        };
        let host = &settings_of("main", &env).unwrap()[0].1;
        assert_eq!(host, "from-user");
        assert_eq!(settings_of("sys", &env).unwrap()[0].1, "1");
        assert!(matches!(
            settings_of("nope", &env),
            Err(ConnStringError::ServiceNotFound(_))
        ));
        let missing = |k: &str| (k == "PGSERVICEFILE").then(|| "/nonexistent/s.conf".to_owned());
        assert!(matches!(
            settings_of("main", &missing),
            Err(ConnStringError::ServiceFileMissing(_))
        ));
    }
}
