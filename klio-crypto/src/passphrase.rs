//! Passphrase key files: the non-secret half of a key derived from a passphrase.
//!
//! A passphrase alone does not make a key: Argon2id also needs a salt and cost parameters, and
//! a reader needs to know whether the passphrase it was given is the right one before it
//! encrypts anything with the key. A passphrase key file records all three (salt, costs, and
//! the id of the key the right passphrase gives) plus the name of the environment variable the
//! passphrase is read from, so that a keyring can hold several passphrase keys during a
//! rotation. The file holds nothing secret; it is text:
//!
//! ```text
//! klio-passphrase-key 1
//! key-id 5f0c0a8e1d2b3c4d5e6f708192a3b4c5
//! salt 00112233445566778899aabbccddeeff
//! argon2id m=65536 t=3 p=4
//! passphrase-env KLIO_KEY_PASSPHRASE
//! ```
//!
//! Lines starting with `#` and blank lines are ignored.

use ring::rand::SecureRandom;

use crate::error::CryptoError;
use crate::keys::{HEX, KdfParams, Kek, KeyId, SALT_LEN, decode_hex};

/// The first line of every passphrase key file (format version 1).
const FIRST_LINE: &str = "klio-passphrase-key 1";

/// What tells a passphrase key file from a raw key file.
const MARKER: &[u8] = b"klio-passphrase-key";

/// The environment variable a passphrase is read from unless the file names another.
pub const DEFAULT_PASSPHRASE_ENV: &str = "KLIO_KEY_PASSPHRASE";

/// Salt, Argon2id costs, the resulting key's id, and where the passphrase comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassphraseKeyFile {
    /// The key the right passphrase gives.
    pub key_id: KeyId,
    /// Argon2id salt, random per file.
    pub salt: [u8; SALT_LEN],
    /// Argon2id costs.
    pub params: KdfParams,
    /// The environment variable holding the passphrase.
    pub passphrase_env: String,
}

impl PassphraseKeyFile {
    /// Derives a new key from `passphrase` with a fresh random salt; returns the key and the
    /// file that lets it be derived again.
    pub fn create(
        passphrase: &[u8],
        params: KdfParams,
        passphrase_env: &str,
        rng: &dyn SecureRandom,
    ) -> Result<(Kek, Self), CryptoError> {
        check_env_name(passphrase_env)?;
        let mut salt = [0u8; SALT_LEN];
        rng.fill(&mut salt).map_err(|_| CryptoError::Random)?;
        let kek = Kek::from_passphrase(passphrase, &salt, &params)?;
        let file = Self {
            key_id: kek.id(),
            salt,
            params,
            passphrase_env: passphrase_env.to_owned(),
        };
        Ok((kek, file))
    }

    /// Whether `contents` claims to be a passphrase key file (then [`parse`](Self::parse)
    /// gives it or says what is wrong with it).
    pub fn is_passphrase_key_file(contents: &[u8]) -> bool {
        // Raw key files (32 bytes, or 64 hex digits) never contain the marker.
        contents.windows(MARKER.len()).any(|w| w == MARKER)
    }

    /// Parses a passphrase key file.
    pub fn parse(contents: &[u8]) -> Result<Self, CryptoError> {
        let bad = |reason: String| CryptoError::BadPassphraseKeyFile { reason };
        let text = std::str::from_utf8(contents).map_err(|e| {
            bad(format!(
                "byte {} is not UTF-8 text",
                e.valid_up_to().saturating_add(1)
            ))
        })?;
        let mut lines = text
            .lines()
            .map(str::trim)
            .enumerate()
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        match lines.next() {
            Some((_, FIRST_LINE)) => {}
            Some((_, l)) if l.starts_with("klio-passphrase-key") => {
                return Err(bad(format!(
                    "unsupported version line {l:?} (this build reads {FIRST_LINE:?}); \
                     upgrade Klio"
                )));
            }
            _ => return Err(bad(format!("it does not start with {FIRST_LINE:?}"))),
        }
        let (mut key_id, mut salt, mut params, mut env) = (None, None, None, None);
        for (n, line) in lines {
            let lineno = n + 1;
            let (field, value) = line
                .split_once(' ')
                .map_or((line, ""), |(f, v)| (f, v.trim()));
            let seen = match field {
                "key-id" => {
                    key_id
                        .replace(value.parse::<KeyId>().map_err(|_| {
                            bad(format!("line {lineno}: key-id is not 32 hex digits"))
                        })?)
                        .is_some()
                }
                "salt" => {
                    let mut s = [0u8; SALT_LEN];
                    decode_hex(value.as_bytes(), &mut s).map_err(|_| {
                        bad(format!(
                            "line {lineno}: salt is not {} hex digits",
                            2 * SALT_LEN
                        ))
                    })?;
                    salt.replace(s).is_some()
                }
                "argon2id" => params
                    .replace(parse_params(value).map_err(|r| bad(format!("line {lineno}: {r}")))?)
                    .is_some(),
                "passphrase-env" => {
                    check_env_name(value)?;
                    env.replace(value.to_owned()).is_some()
                }
                other => {
                    return Err(bad(format!("line {lineno}: unknown field {other:?}")));
                }
            };
            if seen {
                return Err(bad(format!("line {lineno}: {field} appears twice")));
            }
        }
        let missing = |f: &str| bad(format!("the {f} line is missing"));
        Ok(Self {
            key_id: key_id.ok_or_else(|| missing("key-id"))?,
            salt: salt.ok_or_else(|| missing("salt"))?,
            params: params.ok_or_else(|| missing("argon2id"))?,
            passphrase_env: env.unwrap_or_else(|| DEFAULT_PASSPHRASE_ENV.to_owned()),
        })
    }

    /// The file's text.
    pub fn encode(&self) -> Vec<u8> {
        let salt: String = self
            .salt
            .iter()
            .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0x0f)]])
            .map(char::from)
            .collect();
        let p = &self.params;
        format!(
            "# Klio key derived from a passphrase; the passphrase is read from ${env}.\n\
             # Nothing here is secret, but without this file the passphrase gives no key.\n\
             {FIRST_LINE}\n\
             key-id {id}\n\
             salt {salt}\n\
             argon2id m={m} t={t} p={par}\n\
             passphrase-env {env}\n",
            env = self.passphrase_env,
            id = self.key_id,
            m = p.memory_kib,
            t = p.iterations,
            par = p.parallelism,
        )
        .into_bytes()
    }

    /// The key `passphrase` gives; [`CryptoError::WrongPassphrase`] if it is not the key
    /// this file is for.
    pub fn derive(&self, passphrase: &[u8]) -> Result<Kek, CryptoError> {
        let kek = Kek::from_passphrase(passphrase, &self.salt, &self.params)?;
        if kek.id() != self.key_id {
            return Err(CryptoError::WrongPassphrase {
                expected: self.key_id,
                derived: kek.id(),
            });
        }
        Ok(kek)
    }
}

/// `m=<KiB> t=<passes> p=<lanes>`, in this order.
fn parse_params(value: &str) -> Result<KdfParams, String> {
    let mut parts = value.split_whitespace();
    let mut field = |name: &str| -> Result<u32, String> {
        let part = parts
            .next()
            .ok_or_else(|| format!("argon2id needs m=, t= and p=, got {value:?}"))?;
        part.strip_prefix(name)
            .and_then(|v| v.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("expected {name}=<number>, got {part:?}"))
    };
    let params = KdfParams {
        memory_kib: field("m")?,
        iterations: field("t")?,
        parallelism: field("p")?,
    };
    if parts.next().is_some() {
        return Err(format!("argon2id has extra fields: {value:?}"));
    }
    Ok(params)
}

/// Environment variable names: ASCII letters, digits and `_`, not starting with a digit.
fn check_env_name(name: &str) -> Result<(), CryptoError> {
    let ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(CryptoError::BadPassphraseKeyFile {
            reason: format!("{name:?} is not an environment variable name (letters, digits and _)"),
        })
    }
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;

    use super::*;

    const FAST: KdfParams = KdfParams::INSECURE_FAST_FOR_TESTS;

    #[test]
    fn round_trip_and_wrong_passphrase() {
        let rng = SystemRandom::new();
        let (kek, file) = PassphraseKeyFile::create(b"tr0ub4dor", FAST, "KLIO_X", &rng).unwrap();
        let text = file.encode();
        assert!(PassphraseKeyFile::is_passphrase_key_file(&text));
        let parsed = PassphraseKeyFile::parse(&text).unwrap();
        assert_eq!(parsed, file);
        assert_eq!(parsed.derive(b"tr0ub4dor").unwrap().id(), kek.id());
        assert!(matches!(
            parsed.derive(b"tr0ub4dor!"),
            Err(CryptoError::WrongPassphrase { expected, .. }) if expected == kek.id()
        ));
        // A second file from the same passphrase has another salt, hence another key.
        let (other, _) = PassphraseKeyFile::create(b"tr0ub4dor", FAST, "KLIO_X", &rng).unwrap();
        assert_ne!(other.id(), kek.id());
    }

    #[test]
    fn default_env_and_comments() {
        let rng = SystemRandom::new();
        let (_, file) = PassphraseKeyFile::create(b"pw", FAST, "KLIO_X", &rng).unwrap();
        let text = String::from_utf8(file.encode()).unwrap();
        let without_env: String = text
            .lines()
            .filter(|l| !l.starts_with("passphrase-env"))
            .map(|l| format!("{l}\n\n"))
            .collect();
        let parsed = PassphraseKeyFile::parse(without_env.as_bytes()).unwrap();
        assert_eq!(parsed.passphrase_env, DEFAULT_PASSPHRASE_ENV);
        assert_eq!(parsed.key_id, file.key_id);
    }

    #[test]
    fn malformed_files_say_what_is_wrong() {
        let rng = SystemRandom::new();
        let (_, file) = PassphraseKeyFile::create(b"pw", FAST, "KLIO_X", &rng).unwrap();
        let good = String::from_utf8(file.encode()).unwrap();
        let cases = [
            (
                good.replace("klio-passphrase-key 1", "klio-passphrase-key 2"),
                "version",
            ),
            (good.replace("key-id ", "key-id x"), "key-id"),
            (good.replace("salt ", "salt 0"), "salt"),
            (good.replace(" t=", " q="), "t=<number>"),
            (
                good.replace("passphrase-env KLIO_X", "passphrase-env 1X"),
                "environment",
            ),
            (good.replace("passphrase-env", "colour"), "unknown field"),
            (
                format!("{good}salt 00112233445566778899aabbccddeeff\n"),
                "twice",
            ),
            (
                good.lines()
                    .filter(|l| !l.starts_with("salt"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                "salt line is missing",
            ),
            ("0123".into(), "does not start"),
        ];
        for (text, expect) in cases {
            let err = PassphraseKeyFile::parse(text.as_bytes()).unwrap_err();
            assert!(
                err.to_string().contains(expect),
                "{expect:?} not in {err} for\n{text}"
            );
        }
        assert!(PassphraseKeyFile::parse(b"\xff\xfe").is_err());
    }
}
