//! libpq-style connection settings: `key=value` strings, `postgresql://` URIs and `PG*`
//! environment variables, resolved the way pg_receivewal resolves them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Why connection settings are invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnStringError {
    /// A syntax error in a `key=value` string or URI.
    #[error("invalid connection string: {0}")]
    Syntax(String),
    /// A keyword libpq would not accept either.
    #[error("invalid connection option {0:?}")]
    UnknownOption(String),
    /// A value out of range.
    #[error("invalid value {value:?} for connection option {option}: {reason}")]
    InvalidValue {
        /// The option's keyword.
        option: &'static str,
        /// The value given.
        value: String,
        /// What a valid value looks like.
        reason: &'static str,
    },
    /// The `port` list neither has one port for all hosts nor one for each.
    #[error(
        "could not match {ports} port numbers to {hosts} hosts: give one port for all, or one per host"
    )]
    PortsDoNotMatchHosts {
        /// Entries in the port list.
        ports: usize,
        /// Entries in the host list.
        hosts: usize,
    },
    /// A feature libpq has that Klio does not implement.
    #[error("connection option {option} is not supported by Klio: {instead}")]
    Unsupported {
        /// The option's keyword.
        option: &'static str,
        /// What to do instead.
        instead: &'static str,
    },
    /// No service file defines the service asked for.
    #[error(
        "definition of service {0:?} not found: add a [section] of that name to ~/.pg_service.conf, the file PGSERVICEFILE names, or pg_service.conf in PGSYSCONFDIR"
    )]
    ServiceNotFound(String),
    /// The service file `PGSERVICEFILE` names does not exist.
    #[error("service file {0:?} not found")]
    ServiceFileMissing(PathBuf),
    /// A service file could not be read.
    #[error("could not read service file {path:?}: {kind}")]
    ServiceFileUnreadable {
        /// The file.
        path: PathBuf,
        /// What the system said.
        kind: std::io::ErrorKind,
    },
    /// A line of a service file is not `keyword=value`.
    #[error("syntax error in service file {path:?}, line {line}")]
    ServiceSyntax {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
    },
    /// A service names another service.
    #[error("nested service specifications not supported in service file {path:?}, line {line}")]
    NestedService {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
    },
}

/// How TLS is negotiated with PostgreSQL (libpq's `sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without verifying the certificate (libpq's default).
    Prefer,
    /// Require TLS, without verifying the certificate.
    Require,
    /// Require TLS and a certificate signed by `sslrootcert`.
    VerifyCa,
    /// Like `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A host name or address, reached over TCP.
    Tcp(String),
    /// A Unix socket directory; the socket is `<dir>/.s.PGSQL.<port>`.
    Socket(PathBuf),
}

/// One server the settings name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Where it listens.
    pub host: Host,
    /// TCP port, also part of the Unix socket name.
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Host::Tcp(h) if h.contains(':') => write!(f, "[{h}]:{}", self.port),
            Host::Tcp(h) => write!(f, "{h}:{}", self.port),
            Host::Socket(d) => write!(f, "{}/.s.PGSQL.{}", d.display(), self.port),
        }
    }
}

/// Which kind of server a connection must reach (libpq's `target_session_attrs`); the
/// servers of [`ConnConfig::endpoints`] are tried in order until one is of that kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TargetSessionAttrs {
    /// Any server (the default).
    #[default]
    Any,
    /// One that accepts writes: not in hot standby, `default_transaction_read_only` off.
    ReadWrite,
    /// One that does not accept writes.
    ReadOnly,
    /// One not in hot standby.
    Primary,
    /// One in hot standby.
    Standby,
    /// A standby if any is reachable, else any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    /// The keyword's value, as written in a connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::ReadWrite => "read-write",
            Self::ReadOnly => "read-only",
            Self::Primary => "primary",
            Self::Standby => "standby",
            Self::PreferStandby => "prefer-standby",
        }
    }

    fn parse(text: &str) -> Result<Self, ConnStringError> {
        [
            Self::Any,
            Self::ReadWrite,
            Self::ReadOnly,
            Self::Primary,
            Self::Standby,
            Self::PreferStandby,
        ]
        .into_iter()
        .find(|a| a.as_str() == text)
        .ok_or_else(|| ConnStringError::InvalidValue {
            option: "target_session_attrs",
            value: text.to_owned(),
            reason: "expected any, read-write, read-only, primary, standby or prefer-standby",
        })
    }
}

impl std::fmt::Display for TargetSessionAttrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Fully resolved settings for one connection.
#[derive(Clone, Debug)]
pub struct ConnConfig {
    /// The servers to try, in order (libpq's `host` and `port` lists); never empty.
    pub endpoints: Vec<Endpoint>,
    /// Which kind of server to accept.
    pub target_session_attrs: TargetSessionAttrs,
    /// Role name.
    pub user: String,
    /// Password, if any.
    pub password: Option<String>,
    /// Database name (replication connections ignore it for physical replication).
    pub dbname: Option<String>,
    /// TLS negotiation.
    pub sslmode: SslMode,
    /// CA certificates (PEM) for `verify-ca` / `verify-full` (`sslrootcert`, else
    /// `~/.postgresql/root.crt` when it exists).
    pub sslrootcert: Option<PathBuf>,
    /// The client certificate (PEM) offered when the server asks for one (`sslcert`, else
    /// `~/.postgresql/postgresql.crt` when it exists).
    pub sslcert: Option<PathBuf>,
    /// The client certificate's private key (PEM, unencrypted; `sslkey`, else
    /// `~/.postgresql/postgresql.key`).
    pub sslkey: Option<PathBuf>,
    /// Certificate revocation lists (PEM) checked with the server's certificate (`sslcrl`,
    /// else `~/.postgresql/root.crl` when it exists).
    pub sslcrl: Option<PathBuf>,
    /// `application_name`, shown in `pg_stat_replication`.
    pub application_name: String,
    /// Time allowed to establish the connection.
    pub connect_timeout: Option<Duration>,
    /// libpq's password file, read when no password is given (`passfile`, `PGPASSFILE`,
    /// else `~/.pgpass`).
    pub passfile: Option<PathBuf>,
    /// Asks the user for the password when the server wants one that neither the settings
    /// nor the password file give; `None` never asks (`-w`, or no terminal).
    pub password_prompt: Option<PasswordPrompt>,
}

/// Asks for a password once: the first answer is kept for every later connection of the
/// process, as libpq's clients keep what they prompted for.
#[derive(Clone)]
pub struct PasswordPrompt {
    ask: std::sync::Arc<dyn Fn() -> Option<String> + Send + Sync>,
    answer: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl PasswordPrompt {
    /// A prompt that calls `ask` (which may block on a terminal) the first time a password
    /// is needed; `ask` returns `None` when the user gave none.
    pub fn new(ask: impl Fn() -> Option<String> + Send + Sync + 'static) -> Self {
        Self {
            ask: std::sync::Arc::new(ask),
            answer: std::sync::Arc::default(),
        }
    }

    /// The answer kept from an earlier prompt, without asking.
    pub fn kept(&self) -> Option<String> {
        self.answer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The password: the kept answer, else a new one from the user.
    pub fn password(&self) -> Option<String> {
        let mut answer = self
            .answer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if answer.is_none() {
            *answer = (self.ask)();
        }
        answer.clone()
    }
}

impl std::fmt::Debug for PasswordPrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordPrompt")
    }
}

/// Raw settings before defaults are applied; later sources override earlier ones.
#[derive(Clone, Debug, Default)]
pub struct ConnParams {
    values: BTreeMap<&'static str, String>,
}

const KEYS: &[&str] = &[
    "host",
    "port",
    "user",
    "password",
    "dbname",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "target_session_attrs",
    "application_name",
    "connect_timeout",
    "replication",
    "fallback_application_name",
    "passfile",
    "service",
];

fn known_key(key: &str) -> Result<&'static str, ConnStringError> {
    match key {
        "sslpassword" => Err(ConnStringError::Unsupported {
            option: "sslpassword",
            instead: "give sslkey a key without a passphrase (`openssl pkey -in key.pem -out plain.pem`), readable only by its owner",
        }),
        "sslcrldir" => Err(ConnStringError::Unsupported {
            option: "sslcrldir",
            instead: "put the revocation lists in one PEM file and name it with sslcrl",
        }),
        "hostaddr" => Err(ConnStringError::Unsupported {
            option: "hostaddr",
            instead: "give the address with host",
        }),
        _ => KEYS
            .iter()
            .find(|k| **k == key)
            .copied()
            .ok_or_else(|| ConnStringError::UnknownOption(key.to_owned())),
    }
}

impl ConnParams {
    /// Parses a connection string: `key=value ...` or a `postgresql://` / `postgres://` URI.
    pub fn parse(s: &str) -> Result<Self, ConnStringError> {
        let t = s.trim_start();
        if t.starts_with("postgresql://") || t.starts_with("postgres://") {
            parse_uri(t)
        } else {
            parse_key_values(s)
        }
    }

    /// Sets one value (a flag overriding the connection string).
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> Result<(), ConnStringError> {
        self.values.insert(known_key(key)?, value.into());
        Ok(())
    }

    /// A value, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Applies the service file's settings (`service`, `PGSERVICE`), the `PG*` environment
    /// variables (via `env`) and libpq's defaults, in that order of precedence below what is
    /// set here.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ConnConfig, ConnStringError> {
        let service = self
            .get("service")
            .map(str::to_owned)
            .or_else(|| env("PGSERVICE"))
            .filter(|s| !s.is_empty());
        match service {
            None => self.resolve_without_service(env),
            Some(name) => {
                let mut filled = self.clone();
                for (keyword, value) in crate::service_file::settings_of(&name, &env)? {
                    let key = known_key(&keyword)?;
                    filled.values.entry(key).or_insert(value);
                }
                filled.resolve_without_service(env)
            }
        }
    }

    fn resolve_without_service(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ConnConfig, ConnStringError> {
        let pick = |key: &str, var: &str| -> Option<String> {
            self.get(key)
                .map(str::to_owned)
                .or_else(|| env(var))
                .filter(|v| !v.is_empty())
        };
        let endpoints = endpoints(pick("host", "PGHOST"), pick("port", "PGPORT"))?;
        let all_sockets = endpoints.iter().all(|e| matches!(e.host, Host::Socket(_)));
        let user = pick("user", "PGUSER")
            .or_else(|| env("USER"))
            .unwrap_or_else(|| "postgres".to_owned());
        let sslmode = match pick("sslmode", "PGSSLMODE").as_deref() {
            None | Some("prefer") | Some("allow") => {
                if all_sockets {
                    SslMode::Disable
                } else {
                    SslMode::Prefer
                }
            }
            Some("disable") => SslMode::Disable,
            Some("require") => SslMode::Require,
            Some("verify-ca") => SslMode::VerifyCa,
            Some("verify-full") => SslMode::VerifyFull,
            Some(other) => {
                return Err(ConnStringError::InvalidValue {
                    option: "sslmode",
                    value: other.to_owned(),
                    reason: "expected disable, allow, prefer, require, verify-ca or verify-full",
                });
            }
        };
        let connect_timeout = match pick("connect_timeout", "PGCONNECT_TIMEOUT") {
            None => None,
            Some(v) => match v.parse::<u64>() {
                Ok(0) => None,
                Ok(s) => Some(Duration::from_secs(s.max(2))),
                Err(_) => {
                    return Err(ConnStringError::InvalidValue {
                        option: "connect_timeout",
                        value: v,
                        reason: "must be a whole number of seconds",
                    });
                }
            },
        };
        let target_session_attrs = match pick("target_session_attrs", "PGTARGETSESSIONATTRS") {
            None => TargetSessionAttrs::Any,
            Some(text) => TargetSessionAttrs::parse(&text)?,
        };
        // libpq's files in ~/.postgresql, used when they exist and nothing names others.
        let home_file = |name: &str| {
            env("HOME")
                .map(|home| PathBuf::from(home).join(".postgresql").join(name))
                .filter(|p| p.exists())
        };
        let sslcert = pick("sslcert", "PGSSLCERT")
            .map(PathBuf::from)
            .or_else(|| home_file("postgresql.crt"));
        let sslkey = pick("sslkey", "PGSSLKEY").map(PathBuf::from).or_else(|| {
            let home = env("HOME")?;
            sslcert
                .as_ref()
                .map(|_| PathBuf::from(home).join(".postgresql/postgresql.key"))
        });
        Ok(ConnConfig {
            endpoints,
            target_session_attrs,
            user,
            password: pick("password", "PGPASSWORD"),
            dbname: pick("dbname", "PGDATABASE"),
            sslmode,
            sslrootcert: pick("sslrootcert", "PGSSLROOTCERT")
                .map(PathBuf::from)
                .or_else(|| home_file("root.crt")),
            sslcert,
            sslkey,
            sslcrl: pick("sslcrl", "PGSSLCRL")
                .map(PathBuf::from)
                .or_else(|| home_file("root.crl")),
            application_name: pick("application_name", "PGAPPNAME")
                .or_else(|| self.get("fallback_application_name").map(str::to_owned))
                .unwrap_or_else(|| "klio".to_owned()),
            connect_timeout,
            passfile: pick("passfile", "PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".pgpass"))),
            password_prompt: None,
        })
    }
}

/// The servers of libpq's comma-separated `host` and `port` lists: one port for every host,
/// or one port for all; an empty entry takes the default.
fn endpoints(
    hosts: Option<String>,
    ports: Option<String>,
) -> Result<Vec<Endpoint>, ConnStringError> {
    let hosts: Vec<&str> = hosts
        .as_deref()
        .map_or(vec![""], |h| h.split(',').collect());
    let ports: Vec<&str> = ports
        .as_deref()
        .map_or(vec![""], |p| p.split(',').collect());
    if ports.len() != 1 && ports.len() != hosts.len() {
        return Err(ConnStringError::PortsDoNotMatchHosts {
            ports: ports.len(),
            hosts: hosts.len(),
        });
    }
    hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or_default();
            Ok(Endpoint {
                host: match host.trim() {
                    "" => default_socket_dir(),
                    h if h.starts_with('/') => Host::Socket(PathBuf::from(h)),
                    h => Host::Tcp(h.to_owned()),
                },
                port: match port.trim() {
                    "" => 5432,
                    p => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                        ConnStringError::InvalidValue {
                            option: "port",
                            value: p.to_owned(),
                            reason: "must be a number from 1 to 65535",
                        }
                    })?,
                },
            })
        })
        .collect()
}

/// Where libpq looks for the server's socket when no host is given: Debian's directory when
/// it exists, else upstream's.
fn default_socket_dir() -> Host {
    let debian = PathBuf::from("/var/run/postgresql");
    if debian.is_dir() {
        Host::Socket(debian)
    } else {
        Host::Socket(PathBuf::from("/tmp"))
    }
}

fn parse_key_values(s: &str) -> Result<ConnParams, ConnStringError> {
    let mut params = ConnParams::default();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(params);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConnStringError::Syntax(format!(
                "missing \"=\" after {key:?}"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(ConnStringError::Syntax(
                            "unterminated quoted string".to_owned(),
                        ));
                    }
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => {
                            return Err(ConnStringError::Syntax(
                                "unterminated quoted string".to_owned(),
                            ));
                        }
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        params.set(&key, value)?;
    }
}

fn percent_decode(s: &str) -> Result<String, ConnStringError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    ConnStringError::Syntax(format!("invalid percent-encoding in {s:?}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnStringError::Syntax(format!("invalid UTF-8 in {s:?}")))
}

fn parse_uri(s: &str) -> Result<ConnParams, ConnStringError> {
    let mut params = ConnParams::default();
    let rest = s.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hp)) => {
            let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            if !user.is_empty() {
                params.set("user", percent_decode(user)?)?;
            }
            if !pass.is_empty() {
                params.set("password", percent_decode(pass)?)?;
            }
            hp
        }
        None => authority,
    };
    if !hostport.is_empty() {
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, after) = h
                .split_once(']')
                .ok_or_else(|| ConnStringError::Syntax("unterminated [ in host".to_owned()))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if !host.is_empty() {
            params.set("host", percent_decode(host)?)?;
        }
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            params.set("port", p)?;
        }
    }
    if !path.is_empty() {
        params.set("dbname", percent_decode(path)?)?;
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| ConnStringError::Syntax(format!("missing \"=\" in {pair:?}")))?;
        params.set(&percent_decode(k)?, percent_decode(v)?)?;
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn key_values_with_quotes() {
        let p =
            ConnParams::parse(r"host=db.example port = 6543 password='a b\'c' user=klio").unwrap();
        let c = p.resolve(no_env).unwrap();
        assert_eq!(
            c.endpoints,
            [Endpoint {
                host: Host::Tcp("db.example".into()),
                port: 6543
            }]
        );
        assert_eq!(c.password.as_deref(), Some("a b'c"));
        assert_eq!(c.user, "klio");
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert_eq!(c.application_name, "klio");
    }

    #[test]
    fn uri_form() {
        let p = ConnParams::parse(
            "postgresql://u%40x:p%3Aw@[::1]:5433/db?sslmode=require&application_name=x",
        )
        .unwrap();
        let c = p.resolve(no_env).unwrap();
        assert_eq!(c.user, "u@x");
        assert_eq!(c.password.as_deref(), Some("p:w"));
        assert_eq!(
            c.endpoints,
            [Endpoint {
                host: Host::Tcp("::1".into()),
                port: 5433
            }]
        );
        assert_eq!(c.dbname.as_deref(), Some("db"));
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.application_name, "x");
    }

    #[test]
    fn environment_fills_gaps_and_flags_win() {
        let mut p = ConnParams::parse("port=1").unwrap();
        p.set("port", "2").unwrap();
        let env = |k: &str| match k {
            "PGHOST" => Some("/run/pg".to_owned()),
            "PGPORT" => Some("3".to_owned()),
            "PGPASSWORD" => Some("secret".to_owned()),
            _ => None,
        };
        let c = p.resolve(env).unwrap();
        assert_eq!(
            c.endpoints,
            [Endpoint {
                host: Host::Socket("/run/pg".into()),
                port: 2
            }]
        );
        assert_eq!(c.password.as_deref(), Some("secret"));
        assert_eq!(c.sslmode, SslMode::Disable, "no TLS over Unix sockets");
    }

    #[test]
    fn the_password_file_is_passfile_then_pgpassfile_then_home() {
        let home = |k: &str| (k == "HOME").then(|| "/home/pg".to_owned());
        let c = ConnParams::default().resolve(home).unwrap();
        assert_eq!(c.passfile, Some(PathBuf::from("/home/pg/.pgpass")));
        let both = |k: &str| match k {
            "PGPASSFILE" => Some("/etc/pgpass".to_owned()),
            other => home(other),
        };
        let c = ConnParams::default().resolve(both).unwrap();
        assert_eq!(c.passfile, Some(PathBuf::from("/etc/pgpass")));
        let c = ConnParams::parse("passfile=/x")
            .unwrap()
            .resolve(both)
            .unwrap();
        assert_eq!(c.passfile, Some(PathBuf::from("/x")));
        assert_eq!(
            ConnParams::default().resolve(no_env).unwrap().passfile,
            None
        );
    }

    #[test]
    fn host_and_port_lists_pair_up_as_in_libpq() {
        let c = ConnParams::parse("host=a,/run/pg,,b port=1,2,3,4 target_session_attrs=primary")
            .unwrap()
            .resolve(no_env)
            .unwrap();
        let ports: Vec<u16> = c.endpoints.iter().map(|e| e.port).collect();
        assert_eq!(ports, [1, 2, 3, 4]);
        assert_eq!(c.endpoints[0].host, Host::Tcp("a".into()));
        assert_eq!(c.endpoints[1].host, Host::Socket("/run/pg".into()));
        assert!(
            matches!(c.endpoints[2].host, Host::Socket(_)),
            "empty: default"
        );
        assert_eq!(c.endpoints[3].to_string(), "b:4");
        assert_eq!(c.target_session_attrs, TargetSessionAttrs::Primary);
        assert_eq!(c.sslmode, SslMode::Prefer, "some hosts are TCP");

        let one_port = ConnParams::parse("host=a,b port=7")
            .unwrap()
            .resolve(no_env);
        let ports: Vec<u16> = one_port.unwrap().endpoints.iter().map(|e| e.port).collect();
        assert_eq!(ports, [7, 7]);
        let default_port = ConnParams::parse("host=a,b port=,9")
            .unwrap()
            .resolve(no_env);
        let ports: Vec<u16> = default_port
            .unwrap()
            .endpoints
            .iter()
            .map(|e| e.port)
            .collect();
        assert_eq!(ports, [5432, 9]);

        let mismatch = ConnParams::parse("host=a,b,c port=1,2")
            .unwrap()
            .resolve(no_env);
        assert_eq!(
            mismatch.unwrap_err().to_string(),
            "could not match 2 port numbers to 3 hosts: give one port for all, or one per host"
        );
        let env = |k: &str| (k == "PGTARGETSESSIONATTRS").then(|| "prefer-standby".to_owned());
        let c = ConnParams::default().resolve(env).unwrap();
        assert_eq!(c.target_session_attrs, TargetSessionAttrs::PreferStandby);
        assert!(matches!(
            ConnParams::parse("target_session_attrs=master")
                .unwrap()
                .resolve(no_env),
            Err(ConnStringError::InvalidValue {
                option: "target_session_attrs",
                ..
            })
        ));
        assert_eq!(
            "[::1]:5",
            Endpoint {
                host: Host::Tcp("::1".into()),
                port: 5
            }
            .to_string()
        );
    }

    #[test]
    fn client_certificates_default_to_libpqs_files_only_when_they_exist() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let home_str = home.to_str().unwrap().to_owned();
        let env = move |k: &str| (k == "HOME").then(|| home_str.clone());
        let c = ConnParams::default().resolve(&env).unwrap();
        assert_eq!(
            (c.sslcert, c.sslkey, c.sslrootcert, c.sslcrl),
            (None, None, None, None)
        );
        let dot = home.join(".postgresql");
        std::fs::create_dir(&dot).unwrap();
        for f in ["postgresql.crt", "root.crt", "root.crl"] {
            std::fs::write(dot.join(f), "").unwrap();
        }
        let c = ConnParams::default().resolve(&env).unwrap();
        assert_eq!(c.sslcert, Some(dot.join("postgresql.crt")));
        assert_eq!(c.sslkey, Some(dot.join("postgresql.key")));
        assert_eq!(c.sslrootcert, Some(dot.join("root.crt")));
        assert_eq!(c.sslcrl, Some(dot.join("root.crl")));
        let c = ConnParams::parse("sslcert=/c sslkey=/k sslcrl=/l")
            .unwrap()
            .resolve(&env)
            .unwrap();
        assert_eq!(c.sslcert, Some(PathBuf::from("/c")));
        assert_eq!(c.sslkey, Some(PathBuf::from("/k")));
        assert_eq!(c.sslcrl, Some(PathBuf::from("/l")));
    }

    #[test]
    fn encrypted_keys_are_refused_saying_what_to_do() {
        let err = ConnParams::parse("sslpassword=x").unwrap_err();
        assert!(
            err.to_string().contains("sslpassword is not supported")
                && err.to_string().contains("openssl pkey"),
            "{err}"
        );
    }

    #[test]
    fn errors_are_specific() {
        assert!(matches!(
            ConnParams::parse("bogus=1"),
            Err(ConnStringError::UnknownOption(_))
        ));
        assert!(matches!(
            ConnParams::parse("host"),
            Err(ConnStringError::Syntax(_))
        ));
        assert!(matches!(
            ConnParams::parse("password='x"),
            Err(ConnStringError::Syntax(_))
        ));
        let bad_port = ConnParams::parse("port=70000").unwrap().resolve(no_env);
        assert!(matches!(
            bad_port,
            Err(ConnStringError::InvalidValue { option: "port", .. })
        ));
        let bad_mode = ConnParams::parse("sslmode=always").unwrap().resolve(no_env);
        assert!(matches!(
            bad_mode,
            Err(ConnStringError::InvalidValue {
                option: "sslmode",
                ..
            })
        ));
    }
}
