//! An async PostgreSQL replication connection over TCP, TLS or a Unix socket.
//!
//! All protocol knowledge lives in `klio-proto`; this type only moves bytes between a socket
//! and those codecs, and offers the replication commands as typed methods.

use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use klio_proto::replication::{
    self, CreateSlotResult, EndOfTimeline, IdentifySystem, ReadReplicationSlot, ReplicationMessage,
    SlotReservation, StandbyStatusUpdate, TimelineHistory,
};
use klio_proto::{
    BackendDecoder, BackendMessage, ProtocolError, QueryResult, SimpleQuery, Startup, StartupStatus,
};
use klio_wal::{Lsn, SegmentSize, TimelineId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::conn_string::{ConnConfig, Endpoint, Host, SslMode, TargetSessionAttrs};
use crate::error::{ConnectionError, SessionMismatch};

mod base_backup;

pub use base_backup::{BaseBackupStream, MAX_KEPT_WARNINGS};

/// The socket directories libpq builds default to: Debian's, and upstream's.
const DEFAULT_SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

/// The password libpq's password file gives for `endpoint`, if any.
fn passfile_password(cfg: &ConnConfig, endpoint: &Endpoint, session: Session) -> Option<String> {
    let path = cfg.passfile.as_deref()?;
    let host = match &endpoint.host {
        Host::Tcp(h) => h.as_str(),
        // libpq's name for its default socket directory.
        Host::Socket(d) if DEFAULT_SOCKET_DIRS.iter().any(|s| d == Path::new(s)) => "localhost",
        Host::Socket(d) => d.to_str()?,
    };
    let database = match (session, &cfg.dbname) {
        (Session::Replication, _) => "replication",
        (Session::Sql, Some(db)) => db.as_str(),
        (Session::Sql, None) => "postgres",
    };
    crate::passfile::lookup(
        path,
        crate::passfile::Target {
            host,
            port: endpoint.port,
            database,
            user: &cfg.user,
        },
    )
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What arrives while streaming in CopyBoth mode.
#[derive(Debug)]
#[non_exhaustive]
pub enum CopyEvent {
    /// WAL data or a keepalive.
    Message(ReplicationMessage),
    /// The server ended the stream (end of timeline or shutdown); call
    /// [`ReplicationConnection::finish_copy`].
    End,
}

/// A connection to a PostgreSQL server: a replication connection (`replication=true`,
/// [`ReplicationConnection::connect`]), or a plain SQL session
/// ([`ReplicationConnection::connect_sql`]) for the functions a replication connection cannot
/// call (`pg_backup_start`, `pg_backup_stop`).
pub struct ReplicationConnection {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: BackendDecoder,
    parameters: Vec<(String, String)>,
    target: String,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// What a connection is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Session {
    Replication,
    Sql,
}

impl ReplicationConnection {
    /// Connects, negotiates TLS as `sslmode` says, and authenticates, as a replication client.
    pub async fn connect(cfg: &ConnConfig) -> Result<Self, ConnectionError> {
        Self::connect_as(cfg, Session::Replication).await
    }

    /// Connects like [`ReplicationConnection::connect`], as a plain SQL session on `dbname`
    /// (`postgres` when none is given: any database will do for the backup functions).
    pub async fn connect_sql(cfg: &ConnConfig) -> Result<Self, ConnectionError> {
        Self::connect_as(cfg, Session::Sql).await
    }

    async fn connect_as(cfg: &ConnConfig, session: Session) -> Result<Self, ConnectionError> {
        // prefer-standby is two passes: standbys first, then anything.
        let passes: &[TargetSessionAttrs] = match cfg.target_session_attrs {
            TargetSessionAttrs::PreferStandby => {
                &[TargetSessionAttrs::Standby, TargetSessionAttrs::Any]
            }
            TargetSessionAttrs::Any => &[TargetSessionAttrs::Any],
            TargetSessionAttrs::ReadWrite => &[TargetSessionAttrs::ReadWrite],
            TargetSessionAttrs::ReadOnly => &[TargetSessionAttrs::ReadOnly],
            TargetSessionAttrs::Primary => &[TargetSessionAttrs::Primary],
            TargetSessionAttrs::Standby => &[TargetSessionAttrs::Standby],
        };
        let mut tried = 0;
        let mut last = None;
        for &wanted in passes {
            for endpoint in &cfg.endpoints {
                tried += 1;
                let error = match Self::connect_endpoint(cfg, endpoint, session).await {
                    Ok(conn) => match conn.session_mismatch(wanted) {
                        None => return Ok(conn),
                        Some(found) => {
                            // Ended with Terminate, as libpq ends it: the server then logs no
                            // lost connection for a server merely passed over.
                            conn.close().await;
                            ConnectionError::WrongSession {
                                target: endpoint.to_string(),
                                wanted: cfg.target_session_attrs,
                                found,
                            }
                        }
                    },
                    Err(e) => e,
                };
                // The last attempt's error is the one returned.
                if tried < passes.len() * cfg.endpoints.len() {
                    tracing::warn!(
                        "{}; trying the next server of the connection settings",
                        klio_wal::ErrorChain(&error)
                    );
                }
                last = Some(error);
            }
        }
        let last = last.ok_or(ConnectionError::Settings(
            crate::conn_string::ConnStringError::Syntax("no host to connect to".to_owned()),
        ))?;
        if cfg.endpoints.len() > 1 {
            Err(ConnectionError::NoServerUsable {
                tried,
                last: Box::new(last),
            })
        } else {
            Err(last)
        }
    }

    /// Connects to one server, asking for the password (once) when the server wants one
    /// that nothing configured gives.
    async fn connect_endpoint(
        cfg: &ConnConfig,
        endpoint: &Endpoint,
        session: Session,
    ) -> Result<Self, ConnectionError> {
        let known = cfg
            .password
            .clone()
            .or_else(|| passfile_password(cfg, endpoint, session))
            .or_else(|| cfg.password_prompt.as_ref()?.kept());
        let first = Self::connect_with_timeout(cfg, endpoint, session, known.clone()).await;
        let (Some(prompt), None) = (&cfg.password_prompt, known) else {
            return first;
        };
        let missing = match first {
            Err(e @ ConnectionError::Protocol(ProtocolError::MissingPassword { .. })) => e,
            other => return other,
        };
        let prompt = prompt.clone();
        match tokio::task::spawn_blocking(move || prompt.password()).await {
            Ok(Some(password)) => {
                Self::connect_with_timeout(cfg, endpoint, session, Some(password)).await
            }
            // No answer: the server's demand stands.
            _ => Err(missing),
        }
    }

    async fn connect_with_timeout(
        cfg: &ConnConfig,
        endpoint: &Endpoint,
        session: Session,
        password: Option<String>,
    ) -> Result<Self, ConnectionError> {
        let target = endpoint.to_string();
        let fut = Self::connect_inner(cfg, endpoint, target.clone(), session, password);
        match cfg.connect_timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| ConnectionError::Timeout { target })?,
            None => fut.await,
        }
    }

    async fn connect_inner(
        cfg: &ConnConfig,
        endpoint: &Endpoint,
        target: String,
        session: Session,
        password: Option<String>,
    ) -> Result<Self, ConnectionError> {
        let connect_err = |source| ConnectionError::Connect {
            target: target.clone(),
            source,
        };
        let io: Box<dyn Io> = match &endpoint.host {
            Host::Socket(_) => Box::new(UnixStream::connect(&target).await.map_err(connect_err)?),
            Host::Tcp(h) => {
                let mut tcp = TcpStream::connect((h.as_str(), endpoint.port))
                    .await
                    .map_err(connect_err)?;
                tcp.set_nodelay(true)?;
                match cfg.sslmode {
                    SslMode::Disable => Box::new(tcp),
                    _ => {
                        let mut req = BytesMut::new();
                        klio_proto::frontend::ssl_request(&mut req);
                        tcp.write_all(&req).await?;
                        let mut answer = [0u8; 1];
                        tcp.read_exact(&mut answer).await?;
                        match answer[0] {
                            b'S' => {
                                // The files are read only now, as libpq reads them: a server
                                // without TLS never depends on them.
                                let tls = crate::tls::client_config(cfg)?;
                                let name = rustls::pki_types::ServerName::try_from(h.clone())
                                    .map_err(|e| {
                                        ConnectionError::tls_because(
                                            format!("invalid server name {h:?}"),
                                            e,
                                        )
                                    })?;
                                let stream = tokio_rustls::TlsConnector::from(tls)
                                    .connect(name, tcp)
                                    .await
                                    .map_err(|e| {
                                        ConnectionError::tls_because(
                                            format!("handshake with {target} failed"),
                                            e,
                                        )
                                    })?;
                                Box::new(stream)
                            }
                            b'N' if cfg.sslmode == SslMode::Prefer => Box::new(tcp),
                            b'N' => return Err(ConnectionError::TlsNotOffered { target }),
                            other => {
                                return Err(ConnectionError::tls(format!(
                                    "unexpected answer {other:#04x} to the TLS request from {target}"
                                )));
                            }
                        }
                    }
                }
            }
        };
        let mut conn = Self {
            io,
            rbuf: BytesMut::with_capacity(256 * 1024),
            wbuf: BytesMut::new(),
            decoder: BackendDecoder::new(),
            parameters: Vec::new(),
            target,
        };
        conn.startup(cfg, session, password).await?;
        Ok(conn)
    }

    /// Why this server is not of the kind `wanted` names, if it is not; from the parameters
    /// PostgreSQL 14 and later report at startup.
    fn session_mismatch(&self, wanted: TargetSessionAttrs) -> Option<SessionMismatch> {
        let flag = |name: &'static str| match self.parameter(name) {
            Some(v) => Ok(v == "on"),
            None => Err(SessionMismatch::Unreported(name)),
        };
        let check = || -> Result<Option<SessionMismatch>, SessionMismatch> {
            Ok(match wanted {
                TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby => None,
                TargetSessionAttrs::ReadWrite | TargetSessionAttrs::ReadOnly => {
                    let read_only =
                        flag("in_hot_standby")? || flag("default_transaction_read_only")?;
                    match (wanted, read_only) {
                        (TargetSessionAttrs::ReadWrite, true) => Some(SessionMismatch::ReadOnly),
                        (TargetSessionAttrs::ReadOnly, false) => Some(SessionMismatch::NotReadOnly),
                        _ => None,
                    }
                }
                TargetSessionAttrs::Primary | TargetSessionAttrs::Standby => {
                    match (wanted, flag("in_hot_standby")?) {
                        (TargetSessionAttrs::Primary, true) => Some(SessionMismatch::HotStandby),
                        (TargetSessionAttrs::Standby, false) => {
                            Some(SessionMismatch::NotHotStandby)
                        }
                        _ => None,
                    }
                }
            })
        };
        check().unwrap_or_else(Some)
    }

    async fn startup(
        &mut self,
        cfg: &ConnConfig,
        session: Session,
        password: Option<String>,
    ) -> Result<(), ConnectionError> {
        let mut params = vec![
            ("user", cfg.user.as_str()),
            ("application_name", cfg.application_name.as_str()),
            ("client_encoding", "UTF8"),
        ];
        match (session, &cfg.dbname) {
            (Session::Replication, db) => {
                params.push(("replication", "true"));
                if let Some(db) = db {
                    params.push(("database", db.as_str()));
                }
            }
            (Session::Sql, Some(db)) => params.push(("database", db.as_str())),
            (Session::Sql, None) => params.push(("database", "postgres")),
        }
        klio_proto::frontend::startup(&params, &mut self.wbuf)?;
        self.flush_writes().await?;
        let mut startup = Startup::new(&cfg.user, password.map(String::into_bytes));
        loop {
            let msg = self.read_message().await?;
            let status = startup.handle(msg, &mut self.wbuf)?;
            self.flush_writes().await?;
            if let StartupStatus::Ready { parameters, .. } = status {
                self.parameters = parameters;
                return Ok(());
            }
        }
    }

    /// Where this connection goes, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// A server parameter reported at startup (`server_version`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The server's major version from `server_version`, e.g. 15.
    pub fn server_major_version(&self) -> Option<u32> {
        self.parameter("server_version")
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|m| m.parse().ok())
    }

    async fn flush_writes(&mut self) -> Result<(), ConnectionError> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads one backend message. Cancel-safe: bytes read before a cancellation stay buffered.
    async fn read_message(&mut self) -> Result<BackendMessage, ConnectionError> {
        loop {
            if let Some(m) = self.decoder.decode(&mut self.rbuf)? {
                return Ok(m);
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ConnectionError::Closed);
            }
        }
    }

    /// Runs one command with the simple query protocol and collects its results.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult, ConnectionError> {
        klio_proto::frontend::query(sql, &mut self.wbuf)?;
        self.flush_writes().await?;
        let mut q = SimpleQuery::new();
        loop {
            let msg = self.read_message().await?;
            if let Some(result) = q.handle(msg)? {
                return Ok(result);
            }
        }
    }

    /// Runs replication command `sql`; a refusal names it as pg_receivewal names it
    /// (`command`).
    async fn replication_command(
        &mut self,
        sql: &str,
        command: &str,
    ) -> Result<QueryResult, ConnectionError> {
        self.simple_query(sql)
            .await
            .map_err(|e| e.of_command(command))
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem, ConnectionError> {
        let r = self
            .replication_command("IDENTIFY_SYSTEM", "IDENTIFY_SYSTEM")
            .await?;
        Ok(IdentifySystem::from_result(r.single("IDENTIFY_SYSTEM")?)?)
    }

    /// `SHOW name`.
    pub async fn show(&mut self, name: &str) -> Result<String, ConnectionError> {
        let r = self.simple_query(&format!("SHOW {name}")).await?;
        Ok(replication::show_value(r.single("SHOW")?)?)
    }

    /// The server's `wal_segment_size`.
    pub async fn wal_segment_size(&mut self) -> Result<SegmentSize, ConnectionError> {
        let text = self.show("wal_segment_size").await?;
        let bytes = replication::parse_size_setting(&text)?;
        SegmentSize::new(bytes).map_err(ConnectionError::SegmentSize)
    }

    /// `READ_REPLICATION_SLOT` (PostgreSQL 15+): the slot's restart position, if it exists.
    pub async fn read_replication_slot(
        &mut self,
        slot: &str,
    ) -> Result<ReadReplicationSlot, ConnectionError> {
        let r = self
            .replication_command(
                &replication::read_replication_slot_command(slot),
                "READ_REPLICATION_SLOT",
            )
            .await?;
        Ok(ReadReplicationSlot::from_result(
            r.single("READ_REPLICATION_SLOT")?,
        )?)
    }

    /// `CREATE_REPLICATION_SLOT ... PHYSICAL`, reserving WAL as `reservation` says.
    pub async fn create_physical_slot(
        &mut self,
        slot: &str,
        reservation: SlotReservation,
    ) -> Result<CreateSlotResult, ConnectionError> {
        let sql = replication::create_physical_slot_command(slot, reservation);
        let r = self.replication_command(&sql, &sql).await?;
        Ok(CreateSlotResult::from_result(
            r.single("CREATE_REPLICATION_SLOT")?,
        )?)
    }

    /// `DROP_REPLICATION_SLOT "slot"`.
    pub async fn drop_slot(&mut self, slot: &str) -> Result<(), ConnectionError> {
        let sql = replication::drop_slot_command(slot);
        self.replication_command(&sql, &sql).await?;
        Ok(())
    }

    /// `TIMELINE_HISTORY tli`: the `.history` file of a timeline.
    pub async fn timeline_history(
        &mut self,
        timeline: TimelineId,
    ) -> Result<TimelineHistory, ConnectionError> {
        let r = self
            .replication_command(
                &replication::timeline_history_command(timeline),
                "TIMELINE_HISTORY",
            )
            .await?;
        Ok(TimelineHistory::from_result(r.single("TIMELINE_HISTORY")?)?)
    }

    /// `START_REPLICATION [SLOT s] PHYSICAL lsn TIMELINE tli`; on success the connection is in
    /// CopyBoth mode: use [`Self::recv_copy`], [`Self::send_status`], [`Self::finish_copy`].
    pub async fn start_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        timeline: TimelineId,
    ) -> Result<(), ConnectionError> {
        let sql = replication::start_replication_command(slot, start, timeline);
        klio_proto::frontend::query(&sql, &mut self.wbuf)?;
        self.flush_writes().await?;
        let mut q = SimpleQuery::new();
        loop {
            match self.read_message().await? {
                BackendMessage::CopyBothResponse { .. } => return Ok(()),
                BackendMessage::NoticeResponse(n) => {
                    tracing::info!(server = %self.target, "{n}");
                }
                other => {
                    // An error: let the query state machine consume it up to ReadyForQuery so
                    // the connection stays usable, then report the server's error.
                    let handled = q
                        .handle(other)
                        .map_err(|e| ConnectionError::from(e).of_command("START_REPLICATION"))?;
                    if let Some(r) = handled {
                        return Err(ConnectionError::UnexpectedResult {
                            command: sql,
                            reason: format!(
                                "server answered with {} result sets instead of starting to stream",
                                r.sets.len()
                            ),
                        });
                    }
                }
            }
        }
    }

    /// The next message of the stream. Cancel-safe.
    pub async fn recv_copy(&mut self) -> Result<CopyEvent, ConnectionError> {
        loop {
            match self.read_message().await? {
                BackendMessage::CopyData(payload) => {
                    return Ok(CopyEvent::Message(ReplicationMessage::decode(payload)?));
                }
                BackendMessage::CopyDone => return Ok(CopyEvent::End),
                BackendMessage::NoticeResponse(n) => {
                    tracing::info!(server = %self.target, "{n}");
                }
                BackendMessage::ErrorResponse(e) => {
                    return Err(ProtocolError::Server(Box::new(e)).into());
                }
                other => {
                    return Err(ProtocolError::UnexpectedMessage {
                        expected: "CopyData or CopyDone",
                        got: other.tag(),
                    }
                    .into());
                }
            }
        }
    }

    /// Like [`Self::recv_copy`] but returns `None` at once if no whole message is buffered.
    pub fn try_recv_buffered(&mut self) -> Option<Result<CopyEvent, ConnectionError>> {
        let msg = match self.decoder.decode(&mut self.rbuf) {
            Ok(Some(m)) => m,
            Ok(None) => return None,
            Err(e) => return Some(Err(e.into())),
        };
        Some(match msg {
            BackendMessage::CopyData(payload) => ReplicationMessage::decode(payload)
                .map(CopyEvent::Message)
                .map_err(Into::into),
            BackendMessage::CopyDone => Ok(CopyEvent::End),
            BackendMessage::ErrorResponse(e) => Err(ProtocolError::Server(Box::new(e)).into()),
            BackendMessage::NoticeResponse(n) => {
                tracing::info!(server = %self.target, "{n}");
                return self.try_recv_buffered();
            }
            other => Err(ProtocolError::UnexpectedMessage {
                expected: "CopyData or CopyDone",
                got: other.tag(),
            }
            .into()),
        })
    }

    /// Reports progress to the server as Klio does: `write` = received, `flush` = durably
    /// stored, and `apply` = `flush` (Klio replays nothing; "replayed" means stored), stamped
    /// with the current time.
    pub async fn report_progress(&mut self, write: Lsn, flush: Lsn) -> Result<(), ConnectionError> {
        let unix_micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        self.send_status(&StandbyStatusUpdate {
            write,
            flush,
            apply: flush,
            client_time: replication::pg_epoch_micros(unix_micros),
            reply_requested: false,
        })
        .await
    }

    /// Sends a standby status update.
    pub async fn send_status(
        &mut self,
        status: &StandbyStatusUpdate,
    ) -> Result<(), ConnectionError> {
        status.encode_copy_data(&mut self.wbuf);
        self.flush_writes().await
    }

    /// After [`CopyEvent::End`]: answers with CopyDone and reads the rest of the command's
    /// results. Returns where the next timeline starts when the timeline ended, `None` when the
    /// server simply stopped streaming.
    pub async fn finish_copy(&mut self) -> Result<Option<EndOfTimeline>, ConnectionError> {
        klio_proto::frontend::copy_done(&mut self.wbuf);
        self.flush_writes().await?;
        let mut q = SimpleQuery::new();
        loop {
            let msg = match self.read_message().await? {
                // Stream data still in flight when we answered is irrelevant now.
                BackendMessage::CopyData(_) => continue,
                m => m,
            };
            if let Some(r) = q.handle(msg)? {
                let end = r
                    .sets
                    .iter()
                    .find(|s| !s.columns.is_empty())
                    .map(EndOfTimeline::from_result)
                    .transpose()?;
                return Ok(end);
            }
        }
    }

    /// Ends the session politely (Terminate) with a bounded wait.
    pub async fn close(mut self) {
        klio_proto::frontend::terminate(&mut self.wbuf);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.flush_writes().await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }
}
