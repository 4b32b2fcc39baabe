//! The startup and authentication exchange as a sans-IO state machine.

use std::fmt;

use bytes::BytesMut;
use postgres_protocol::authentication::{
    md5_hash,
    sasl::{self, ChannelBinding, ScramSha256},
};

use crate::backend::BackendMessage;
use crate::error::{ProtocolError, ServerError};
use crate::frontend;

/// What [`Startup::handle`] concluded from a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupStatus {
    /// Keep reading messages (and write out whatever was appended to `out`).
    Continue,
    /// The server sent `ReadyForQuery`: the connection is ready for commands.
    Ready {
        /// `ParameterStatus` values reported during startup, in arrival order.
        parameters: Vec<(String, String)>,
        /// The backend's process id from `BackendKeyData`, if sent.
        process_id: Option<i32>,
    },
}

/// The authentication method the server chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMethod {
    /// No password was asked for.
    Trust,
    /// Cleartext password.
    Cleartext,
    /// MD5-hashed password.
    Md5,
    /// SCRAM-SHA-256 without channel binding.
    ScramSha256,
    /// SCRAM-SHA-256-PLUS with `tls-server-end-point` channel binding.
    ScramSha256Plus,
}

enum State {
    /// Waiting for the server's authentication request.
    Auth,
    /// A password was sent; waiting for AuthenticationOk.
    PasswordSent,
    /// SASLInitialResponse sent; waiting for SASLContinue.
    ScramContinue(Box<ScramSha256>),
    /// SASLResponse sent; waiting for SASLFinal.
    ScramFinal(Box<ScramSha256>),
    /// Server signature verified; waiting for AuthenticationOk.
    ScramVerified,
    /// Authenticated; collecting parameters until ReadyForQuery.
    Authenticated,
    /// Ready was returned, or an error ended the exchange.
    Done,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            Self::Auth => "an authentication request",
            Self::PasswordSent => "AuthenticationOk after the password",
            Self::ScramContinue(_) => "AuthenticationSASLContinue",
            Self::ScramFinal(_) => "AuthenticationSASLFinal",
            Self::ScramVerified => "AuthenticationOk after SCRAM",
            Self::Authenticated => "ParameterStatus, BackendKeyData or ReadyForQuery",
            Self::Done => "nothing (startup is finished)",
        }
    }
}

/// The client side of connection startup: answers authentication requests and collects the
/// parameters the server reports, until `ReadyForQuery`.
///
/// Send [`frontend::startup`] first, then pass every decoded message to [`Startup::handle`],
/// flushing `out` to the server after each call.
pub struct Startup {
    user: String,
    password: Option<Vec<u8>>,
    tls_server_end_point: Option<Vec<u8>>,
    state: State,
    method: Option<AuthMethod>,
    parameters: Vec<(String, String)>,
    backend_key: Option<(i32, i32)>,
    notices: Vec<ServerError>,
}

impl fmt::Debug for Startup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Startup")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("state", &self.state.name())
            .field("method", &self.method)
            .field("parameters", &self.parameters)
            .field("backend_key", &self.backend_key.map(|(pid, _)| pid))
            .finish_non_exhaustive()
    }
}

impl Startup {
    /// A startup exchange for `user` with an optional password.
    pub fn new(user: &str, password: Option<Vec<u8>>) -> Self {
        Self {
            user: user.to_owned(),
            password,
            tls_server_end_point: None,
            state: State::Auth,
            method: None,
            parameters: Vec::new(),
            backend_key: None,
            notices: Vec::new(),
        }
    }

    /// Enables SCRAM-SHA-256-PLUS channel binding: pass the `tls-server-end-point` hash of the
    /// server certificate (RFC 5929) when the connection runs over TLS.
    pub fn with_tls_server_end_point(mut self, hash: Vec<u8>) -> Self {
        self.tls_server_end_point = Some(hash);
        self
    }

    /// The authentication method the server used, once known.
    pub fn auth_method(&self) -> Option<AuthMethod> {
        self.method
    }

    /// `(process_id, secret_key)` from `BackendKeyData`, for cancel requests.
    pub fn backend_key(&self) -> Option<(i32, i32)> {
        self.backend_key
    }

    /// Notices received during startup (takes them).
    pub fn take_notices(&mut self) -> Vec<ServerError> {
        std::mem::take(&mut self.notices)
    }

    fn password_for(&self, method: &'static str) -> Result<&[u8], ProtocolError> {
        self.password
            .as_deref()
            .ok_or(ProtocolError::MissingPassword { method })
    }

    /// Handles one message from the server; any reply is appended to `out`.
    pub fn handle(
        &mut self,
        msg: BackendMessage,
        out: &mut BytesMut,
    ) -> Result<StartupStatus, ProtocolError> {
        let state = std::mem::replace(&mut self.state, State::Done);
        match self.step(state, msg, out) {
            Ok((next, status)) => {
                self.state = next;
                Ok(status)
            }
            Err(e) => Err(e), // state stays Done
        }
    }

    fn step(
        &mut self,
        state: State,
        msg: BackendMessage,
        out: &mut BytesMut,
    ) -> Result<(State, StartupStatus), ProtocolError> {
        use BackendMessage as M;
        let cont = StartupStatus::Continue;
        match (state, msg) {
            (State::Done, msg) => Err(unexpected(&State::Done, &msg)),
            (_, M::ErrorResponse(e)) => Err(ProtocolError::Server(Box::new(e))),
            (state, M::NoticeResponse(n)) => {
                self.notices.push(n);
                Ok((state, cont))
            }
            (state, M::NegotiateProtocolVersion { .. }) => {
                // We ask for 3.0 without `_pq_.` options, which every server supports; the
                // server continues with the version it announced.
                Ok((state, cont))
            }
            (State::Auth, M::AuthenticationOk) => {
                self.method = Some(AuthMethod::Trust);
                Ok((State::Authenticated, cont))
            }
            (State::Auth, M::AuthenticationCleartextPassword) => {
                let pw = self.password_for("cleartext")?;
                check_password(pw)?;
                frontend::password(pw, out);
                self.method = Some(AuthMethod::Cleartext);
                Ok((State::PasswordSent, cont))
            }
            (State::Auth, M::AuthenticationMd5Password { salt }) => {
                let pw = self.password_for("md5")?;
                check_password(pw)?;
                let hash = md5_hash(self.user.as_bytes(), pw, salt);
                frontend::password(hash.as_bytes(), out);
                self.method = Some(AuthMethod::Md5);
                Ok((State::PasswordSent, cont))
            }
            (State::Auth, M::AuthenticationSasl { mechanisms }) => {
                let has = |m: &str| mechanisms.iter().any(|x| x == m);
                let (mechanism, binding, method) = match &self.tls_server_end_point {
                    Some(hash) if has(sasl::SCRAM_SHA_256_PLUS) => (
                        sasl::SCRAM_SHA_256_PLUS,
                        ChannelBinding::tls_server_end_point(hash.clone()),
                        AuthMethod::ScramSha256Plus,
                    ),
                    // "n": the client does not support channel binding. ("y" would make a
                    // TLS-enabled server reject us as a possible downgrade.)
                    _ if has(sasl::SCRAM_SHA_256) => (
                        sasl::SCRAM_SHA_256,
                        if self.tls_server_end_point.is_some() {
                            ChannelBinding::unrequested()
                        } else {
                            ChannelBinding::unsupported()
                        },
                        AuthMethod::ScramSha256,
                    ),
                    _ if has(sasl::SCRAM_SHA_256_PLUS) => {
                        return Err(ProtocolError::AuthUnsupported(
                            "the server offers only SCRAM-SHA-256-PLUS (channel binding), not plain SCRAM-SHA-256, and no TLS channel-binding data was given to Klio".to_owned(),
                        ));
                    }
                    _ => {
                        return Err(ProtocolError::AuthUnsupported(format!(
                            "the server offers only the SASL mechanisms [{}]",
                            mechanisms.join(", ")
                        )));
                    }
                };
                let pw = self.password_for("SCRAM-SHA-256")?;
                let scram = ScramSha256::new(pw, binding);
                frontend::sasl_initial_response(mechanism, scram.message(), out);
                self.method = Some(method);
                Ok((State::ScramContinue(Box::new(scram)), cont))
            }
            (State::ScramContinue(mut scram), M::AuthenticationSaslContinue(data)) => {
                scram.update(&data).map_err(|e| {
                    ProtocolError::Auth(format!("invalid SCRAM server-first message: {e}"))
                })?;
                frontend::sasl_response(scram.message(), out);
                Ok((State::ScramFinal(scram), cont))
            }
            (State::ScramFinal(mut scram), M::AuthenticationSaslFinal(data)) => {
                scram.finish(&data).map_err(|e| {
                    ProtocolError::Auth(format!(
                        "the server could not prove it knows the password (SCRAM server signature check failed: {e}); the server may be an impostor"
                    ))
                })?;
                Ok((State::ScramVerified, cont))
            }
            (State::PasswordSent | State::ScramVerified, M::AuthenticationOk) => {
                Ok((State::Authenticated, cont))
            }
            (
                State::Auth,
                m @ (M::AuthenticationKerberosV5
                | M::AuthenticationGss
                | M::AuthenticationGssContinue(_)
                | M::AuthenticationSspi),
            ) => Err(ProtocolError::AuthUnsupported(
                match m {
                    M::AuthenticationKerberosV5 => "the server requested Kerberos V5",
                    M::AuthenticationSspi => "the server requested SSPI",
                    _ => "the server requested GSSAPI",
                }
                .to_owned(),
            )),
            (State::Authenticated, M::ParameterStatus { name, value }) => {
                self.parameters.push((name, value));
                Ok((State::Authenticated, cont))
            }
            (
                State::Authenticated,
                M::BackendKeyData {
                    process_id,
                    secret_key,
                },
            ) => {
                self.backend_key = Some((process_id, secret_key));
                Ok((State::Authenticated, cont))
            }
            (State::Authenticated, M::ReadyForQuery { .. }) => Ok((
                State::Done,
                StartupStatus::Ready {
                    parameters: std::mem::take(&mut self.parameters),
                    process_id: self.backend_key.map(|(pid, _)| pid),
                },
            )),
            (state @ (State::ScramContinue(_) | State::ScramFinal(_)), M::AuthenticationOk) => {
                Err(ProtocolError::Auth(format!(
                    "the server sent AuthenticationOk while waiting for {}, skipping the SCRAM exchange; refusing to trust a server that has not proven it knows the password",
                    state.name()
                )))
            }
            (state, msg) => Err(unexpected(&state, &msg)),
        }
    }
}

fn check_password(pw: &[u8]) -> Result<(), ProtocolError> {
    if pw.contains(&0) {
        Err(ProtocolError::InteriorNul {
            what: "the password",
        })
    } else {
        Ok(())
    }
}

fn unexpected(state: &State, msg: &BackendMessage) -> ProtocolError {
    ProtocolError::UnexpectedMessage {
        expected: state.name(),
        got: msg.tag(),
    }
}
