//! Cluster names: the identity a client certificate carries and a directory name on the server.

use std::fmt;
use std::str::FromStr;

/// The name of a PostgreSQL cluster protected by Klio: 1 to 63 characters of ASCII letters,
/// digits, `-`, `_` and `.`, not starting with `.` or `-`, so that it is always a safe directory
/// name and fits in a certificate's common name `klio@<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterName(String);

/// Why a string is not a cluster name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid cluster name {0:?}: use 1 to 63 ASCII letters, digits, '-', '_' or '.', not starting with '.' or '-'"
)]
pub struct InvalidClusterName(pub String);

impl ClusterName {
    /// The prefix of a client certificate's common name.
    pub const CN_PREFIX: &'static str = "klio@";

    /// Validates a name.
    pub fn new(name: &str) -> Result<Self, InvalidClusterName> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && !name.starts_with(['.', '-'])
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(InvalidClusterName(name.to_owned()))
        }
    }

    /// The cluster named by a certificate common name `klio@<name>`.
    pub fn from_common_name(cn: &str) -> Result<Self, InvalidClusterName> {
        cn.strip_prefix(Self::CN_PREFIX)
            .ok_or_else(|| InvalidClusterName(cn.to_owned()))
            .and_then(Self::new)
    }

    /// The common name a client certificate for this cluster carries.
    pub fn common_name(&self) -> String {
        format!("{}{}", Self::CN_PREFIX, self.0)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ClusterName {
    type Err = InvalidClusterName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["pg1", "prod.eu-west_1", "a", &"x".repeat(63)] {
            assert!(ClusterName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"x".repeat(64),
            "a\0",
        ] {
            assert!(ClusterName::new(bad).is_err(), "{bad:?}");
        }
        let n = ClusterName::from_common_name("klio@pg1").unwrap();
        assert_eq!(n.as_str(), "pg1");
        assert_eq!(n.common_name(), "klio@pg1");
        assert!(ClusterName::from_common_name("pg1").is_err());
        assert!(ClusterName::from_common_name("klio@../x").is_err());
    }
}
