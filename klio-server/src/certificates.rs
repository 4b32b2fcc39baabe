//! The server's certificates while it runs: when they expire (logged, in `/status` and
//! `klio status`, and as `klio_certificate_expiry_timestamp_seconds`), and reloading them from
//! their files (on SIGHUP) for new connections while established ones keep their sessions.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::telemetry::Telemetry;
use crate::tls::{self, TlsFiles, TlsSetupError};

/// A certificate expiring within this time is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// One of the server's certificates and the end of its validity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateExpiry {
    /// Which certificate: `server` or `ca`.
    pub certificate: &'static str,
    /// Its file.
    pub path: PathBuf,
    /// The end of its validity (`notAfter`).
    pub not_after: SystemTime,
}

impl CertificateExpiry {
    /// The end of its validity, as RFC 3339 in UTC.
    pub fn valid_until(&self) -> String {
        humantime::format_rfc3339_seconds(self.not_after).to_string()
    }

    /// Whether it expires within [`EXPIRY_WARNING`] of `now` (or has expired).
    pub fn expires_soon(&self, now: SystemTime) -> bool {
        expires_soon(self.not_after, now)
    }
}

/// The expiry of the first certificate of the PEM file `path` (the leaf of a chain).
pub fn expiry_of(
    certificate: &'static str,
    path: &Path,
) -> Result<CertificateExpiry, TlsSetupError> {
    let certs = tls::load_certs(path, "a certificate")?;
    let unparsable = || TlsSetupError::Unparsable {
        path: path.to_owned(),
    };
    let leaf = certs.first().ok_or_else(unparsable)?;
    Ok(CertificateExpiry {
        certificate,
        path: path.to_owned(),
        not_after: not_after(leaf).ok_or_else(unparsable)?,
    })
}

/// The end of a DER certificate's validity, if it parses.
pub fn not_after(der: &[u8]) -> Option<SystemTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der).ok()?;
    let seconds = u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// Whether `not_after` has passed or is within [`EXPIRY_WARNING`] of `now`.
pub fn expires_soon(not_after: SystemTime, now: SystemTime) -> bool {
    not_after
        .duration_since(now)
        .map_or(true, |left| left < EXPIRY_WARNING)
}

/// The expiries of the server certificate and the CA of `files`.
pub fn expiries(files: &TlsFiles) -> Result<Vec<CertificateExpiry>, TlsSetupError> {
    Ok(vec![
        expiry_of("server", &files.cert)?,
        expiry_of("ca", &files.ca)?,
    ])
}

/// Refuses a server certificate whose validity has ended: every client would refuse it.
pub(crate) fn refuse_expired_server_certificate(
    expiries: &[CertificateExpiry],
) -> Result<(), TlsSetupError> {
    match expiries
        .iter()
        .find(|e| e.certificate == "server" && e.not_after <= SystemTime::now())
    {
        Some(e) => Err(TlsSetupError::Expired {
            path: e.path.clone(),
            at: e.valid_until(),
        }),
        None => Ok(()),
    }
}

/// Logs a warning for each of `expiries` that has expired or expires soon.
pub(crate) fn warn_if_expiring(expiries: &[CertificateExpiry]) {
    let now = SystemTime::now();
    for e in expiries.iter().filter(|e| e.expires_soon(now)) {
        let when = e.valid_until();
        let renew = match e.certificate {
            "server" => {
                "renew it with `klio certs renew -D <certificates directory> --server`, then send SIGHUP to the server"
            }
            _ => {
                "make a new CA with `klio certs init -D <new directory>`, issue every client certificate with it, and give servers and clients both CAs in their CA file while they move"
            }
        };
        if e.not_after <= now {
            tracing::error!(
                "the {} certificate {} expired at {when}: {renew}",
                e.certificate,
                e.path.display()
            );
        } else {
            tracing::warn!(
                "the {} certificate {} expires at {when}: {renew}",
                e.certificate,
                e.path.display()
            );
        }
    }
}

/// Loads the server's certificates again, for connections made from then on.
#[derive(Clone, Debug)]
pub struct CertificateReloader {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) files: TlsFiles,
    pub(crate) telemetry: Arc<Telemetry>,
}

impl CertificateReloader {
    /// Reads the CA, certificate and key files again and serves new connections with them;
    /// established connections keep the session they have. On an error nothing changes: the
    /// server goes on with the certificates it had.
    pub fn reload(&self) -> Result<Vec<CertificateExpiry>, TlsSetupError> {
        let config = tls::quic_server_config(&self.files)?;
        let expiries = expiries(&self.files)?;
        refuse_expired_server_certificate(&expiries)?;
        self.endpoint.set_server_config(Some(config));
        self.telemetry.set_certificates(expiries.clone());
        warn_if_expiring(&expiries);
        Ok(expiries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expiring(certificate: &'static str, in_seconds: i64) -> CertificateExpiry {
        let now = SystemTime::now();
        let at = if in_seconds >= 0 {
            now + Duration::from_secs(in_seconds.unsigned_abs())
        } else {
            now - Duration::from_secs(in_seconds.unsigned_abs())
        };
        CertificateExpiry {
            certificate,
            path: PathBuf::from(format!("/etc/klio/{certificate}.pem")),
            not_after: at,
        }
    }

    #[test]
    fn soon_means_within_thirty_days_or_past_and_an_expired_server_certificate_is_refused() {
        let now = SystemTime::now();
        let day = 86_400;
        assert!(!expiring("server", 31 * day).expires_soon(now));
        assert!(expiring("server", 29 * day).expires_soon(now));
        assert!(expiring("server", -day).expires_soon(now));

        assert!(refuse_expired_server_certificate(&[expiring("server", day)]).is_ok());
        // Only the server's own certificate stops a start or a reload.
        assert!(refuse_expired_server_certificate(&[expiring("ca", -day)]).is_ok());
        let refused = refuse_expired_server_certificate(&[expiring("server", -day)]);
        assert!(
            matches!(&refused, Err(TlsSetupError::Expired { path, .. }) if path.ends_with("server.pem")),
            "{refused:?}"
        );
        let message = refused.map_err(|e| e.to_string()).unwrap_err();
        assert!(message.contains("klio certs renew"), "{message}");
    }
}
