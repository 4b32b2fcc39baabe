//! Streaming replication: typed results of replication commands, command builders, and the
//! messages carried in `CopyData` during `START_REPLICATION`.

use bytes::{BufMut, Bytes, BytesMut};
use klio_wal::{Lsn, TimelineId};

use crate::backend::Reader;
use crate::error::ProtocolError;
use crate::query::ResultSet;

/// Microseconds from the Unix epoch (1970-01-01) to PostgreSQL's epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Converts microseconds since the Unix epoch (from the caller's clock) to microseconds since
/// PostgreSQL's epoch, 2000-01-01 00:00:00 UTC (saturating).
pub fn pg_epoch_micros(unix_micros: i64) -> i64 {
    unix_micros.saturating_sub(PG_EPOCH_OFFSET_MICROS)
}

/// The inverse of [`pg_epoch_micros`] (saturating).
pub fn unix_micros(pg_micros: i64) -> i64 {
    pg_micros.saturating_add(PG_EPOCH_OFFSET_MICROS)
}

pub(crate) fn bad(command: &'static str, reason: impl Into<String>) -> ProtocolError {
    ProtocolError::BadResult {
        command,
        reason: reason.into(),
    }
}

/// Checks that `set` has exactly one row and returns a text accessor for it.
pub(crate) fn one_row<'a>(
    set: &'a ResultSet,
    command: &'static str,
) -> Result<Row<'a>, ProtocolError> {
    if set.rows.len() != 1 {
        return Err(bad(
            command,
            format!("expected 1 row, got {}", set.rows.len()),
        ));
    }
    Ok(Row { set, command })
}

pub(crate) struct Row<'a> {
    set: &'a ResultSet,
    command: &'static str,
}

impl Row<'_> {
    /// The text of column `name` (located by name), `None` when NULL.
    pub(crate) fn opt(&self, name: &str) -> Result<Option<&str>, ProtocolError> {
        let idx = self
            .set
            .column_index(name)
            .ok_or_else(|| bad(self.command, format!("missing column {name:?}")))?;
        self.set
            .text(0, idx)
            .map_err(|_| bad(self.command, format!("column {name:?} is not valid UTF-8")))
    }

    pub(crate) fn req(&self, name: &str) -> Result<&str, ProtocolError> {
        self.opt(name)?
            .ok_or_else(|| bad(self.command, format!("column {name:?} is NULL")))
    }

    pub(crate) fn lsn(&self, name: &str, s: &str) -> Result<Lsn, ProtocolError> {
        s.parse().map_err(|source| ProtocolError::BadLsn {
            command: self.command,
            column: name.to_owned(),
            source,
        })
    }

    pub(crate) fn timeline(&self, name: &str, s: &str) -> Result<TimelineId, ProtocolError> {
        let n: u32 = s.parse().map_err(|_| {
            bad(
                self.command,
                format!("column {name:?}: {s:?} is not a timeline id"),
            )
        })?;
        TimelineId::new(n).map_err(|source| ProtocolError::BadTimeline {
            command: self.command,
            column: name.to_owned(),
            source,
        })
    }
}

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifySystem {
    /// The cluster's system identifier.
    pub system_id: u64,
    /// The server's current timeline.
    pub timeline: TimelineId,
    /// The current WAL flush location (write location on a standby).
    pub xlog_pos: Lsn,
    /// The database connected to, `None` for physical replication connections.
    pub db_name: Option<String>,
}

impl IdentifySystem {
    /// Parses the result set (columns `systemid`, `timeline`, `xlogpos`, `dbname`).
    pub fn from_result(set: &ResultSet) -> Result<Self, ProtocolError> {
        const C: &str = "IDENTIFY_SYSTEM";
        let row = one_row(set, C)?;
        let sysid = row.req("systemid")?;
        let system_id = sysid.parse().map_err(|_| {
            bad(
                C,
                format!("systemid {sysid:?} is not an unsigned 64-bit number"),
            )
        })?;
        let timeline = row.timeline("timeline", row.req("timeline")?)?;
        let xlog_pos = row.lsn("xlogpos", row.req("xlogpos")?)?;
        let db_name = row.opt("dbname")?.map(str::to_owned);
        Ok(Self {
            system_id,
            timeline,
            xlog_pos,
            db_name,
        })
    }
}

/// The answer to `READ_REPLICATION_SLOT` (PostgreSQL 15+). All fields are `None` when the slot
/// does not exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReplicationSlot {
    /// `physical` or `logical`.
    pub slot_type: Option<String>,
    /// The slot's `restart_lsn`.
    pub restart_lsn: Option<Lsn>,
    /// The timeline of `restart_lsn`.
    pub restart_tli: Option<TimelineId>,
}

impl ReadReplicationSlot {
    /// Parses the result set (columns `slot_type`, `restart_lsn`, `restart_tli`).
    pub fn from_result(set: &ResultSet) -> Result<Self, ProtocolError> {
        let row = one_row(set, "READ_REPLICATION_SLOT")?;
        let slot_type = row.opt("slot_type")?.map(str::to_owned);
        let restart_lsn = row
            .opt("restart_lsn")?
            .map(|s| row.lsn("restart_lsn", s))
            .transpose()?;
        let restart_tli = row
            .opt("restart_tli")?
            .map(|s| row.timeline("restart_tli", s))
            .transpose()?;
        Ok(Self {
            slot_type,
            restart_lsn,
            restart_tli,
        })
    }

    /// Whether the slot exists.
    pub fn exists(&self) -> bool {
        self.slot_type.is_some()
    }
}

/// The answer to `TIMELINE_HISTORY tli`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineHistory {
    /// The history file's name, e.g. `00000002.history`.
    pub file_name: String,
    /// The file's raw content.
    pub content: Bytes,
}

impl TimelineHistory {
    /// Parses the result set (columns `filename`, `content`).
    pub fn from_result(set: &ResultSet) -> Result<Self, ProtocolError> {
        const C: &str = "TIMELINE_HISTORY";
        let row = one_row(set, C)?;
        let file_name = row.req("filename")?.to_owned();
        if file_name.is_empty() || file_name.contains(['/', '\\']) || file_name.starts_with('.') {
            return Err(bad(C, format!("unsafe history file name {file_name:?}")));
        }
        let idx = set
            .column_index("content")
            .ok_or_else(|| bad(C, "missing column \"content\""))?;
        let content = set
            .get(0, idx)
            .cloned()
            .ok_or_else(|| bad(C, "column \"content\" is NULL"))?;
        Ok(Self { file_name, content })
    }
}

/// The answer to `CREATE_REPLICATION_SLOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSlotResult {
    /// The slot's name.
    pub slot_name: String,
    /// The consistent point; `None` when NULL or `0/0` (physical slots created without
    /// `RESERVE_WAL`).
    pub consistent_point: Option<Lsn>,
    /// Exported snapshot (logical slots only).
    pub snapshot_name: Option<String>,
    /// Output plugin (logical slots only).
    pub output_plugin: Option<String>,
}

impl CreateSlotResult {
    /// Parses the result set (columns `slot_name`, `consistent_point`, `snapshot_name`,
    /// `output_plugin`).
    pub fn from_result(set: &ResultSet) -> Result<Self, ProtocolError> {
        let row = one_row(set, "CREATE_REPLICATION_SLOT")?;
        let slot_name = row.req("slot_name")?.to_owned();
        let consistent_point = row
            .opt("consistent_point")?
            .map(|s| row.lsn("consistent_point", s))
            .transpose()?
            .filter(|l| l.is_valid());
        let snapshot_name = row.opt("snapshot_name")?.map(str::to_owned);
        let output_plugin = row.opt("output_plugin")?.map(str::to_owned);
        Ok(Self {
            slot_name,
            consistent_point,
            snapshot_name,
            output_plugin,
        })
    }
}

/// The result set the server sends after `CopyDone` when streaming reached the end of a
/// timeline: where the next timeline starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndOfTimeline {
    /// The next timeline.
    pub next_timeline: TimelineId,
    /// The LSN where it forked off the one just streamed.
    pub next_start: Lsn,
}

impl EndOfTimeline {
    /// Parses the result set (columns `next_tli` int8, `next_tli_startpos` text).
    pub fn from_result(set: &ResultSet) -> Result<Self, ProtocolError> {
        let row = one_row(set, "START_REPLICATION (end of timeline)")?;
        let next_timeline = row.timeline("next_tli", row.req("next_tli")?)?;
        let next_start = row.lsn("next_tli_startpos", row.req("next_tli_startpos")?)?;
        Ok(Self {
            next_timeline,
            next_start,
        })
    }
}

/// The single value of a `SHOW` result.
pub fn show_value(set: &ResultSet) -> Result<String, ProtocolError> {
    const C: &str = "SHOW";
    if set.columns.len() != 1 {
        return Err(bad(
            C,
            format!("expected 1 column, got {}", set.columns.len()),
        ));
    }
    one_row(set, C)?;
    set.text(0, 0)
        .map_err(|_| bad(C, "value is not valid UTF-8"))?
        .map(str::to_owned)
        .ok_or_else(|| bad(C, "value is NULL"))
}

/// Parses a memory-size setting as `SHOW` prints it (`16MB`, `1GB`, `1024kB`, `8192B`) into
/// bytes. Units are PostgreSQL's: B, kB, MB, GB, TB, powers of 1024, case-sensitive; a bare
/// number is taken as bytes.
pub fn parse_size_setting(s: &str) -> Result<u64, ProtocolError> {
    let err = || ProtocolError::BadSize {
        input: s.to_owned(),
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(err());
    }
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult: u64 = match unit.trim_start() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

/// Quotes an identifier (a slot name) for a replication command: `"name"`, with embedded double
/// quotes doubled.
pub fn quote_ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    for c in name.chars() {
        if c == '"' {
            s.push('"');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// `START_REPLICATION [SLOT "slot"] PHYSICAL X/X TIMELINE n`.
pub fn start_replication_command(slot: Option<&str>, start: Lsn, timeline: TimelineId) -> String {
    match slot {
        Some(slot) => format!(
            "START_REPLICATION SLOT {} PHYSICAL {start} TIMELINE {timeline}",
            quote_ident(slot)
        ),
        None => format!("START_REPLICATION PHYSICAL {start} TIMELINE {timeline}"),
    }
}

/// `READ_REPLICATION_SLOT "slot"`.
pub fn read_replication_slot_command(slot: &str) -> String {
    format!("READ_REPLICATION_SLOT {}", quote_ident(slot))
}

/// When a new physical slot starts holding WAL back on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotReservation {
    /// At once (`RESERVE_WAL`): from the moment the slot exists, no WAL from the server's
    /// current position on is removed before the slot's client has it. send-wal's slots.
    Immediately,
    /// When a client first streams from the slot, as pg_receivewal's `--create-slot` makes
    /// them: until then the slot holds nothing back.
    OnFirstStream,
}

/// `CREATE_REPLICATION_SLOT "slot" PHYSICAL [(RESERVE_WAL)]` (PostgreSQL 15+ syntax).
pub fn create_physical_slot_command(slot: &str, reservation: SlotReservation) -> String {
    let options = match reservation {
        SlotReservation::Immediately => " (RESERVE_WAL)",
        SlotReservation::OnFirstStream => "",
    };
    format!(
        "CREATE_REPLICATION_SLOT {} PHYSICAL{options}",
        quote_ident(slot)
    )
}

/// `DROP_REPLICATION_SLOT "slot"`: fails if the slot is in use (no `WAIT`).
pub fn drop_slot_command(slot: &str) -> String {
    format!("DROP_REPLICATION_SLOT {}", quote_ident(slot))
}

/// `TIMELINE_HISTORY n`.
pub fn timeline_history_command(timeline: TimelineId) -> String {
    format!("TIMELINE_HISTORY {timeline}")
}

/// A chunk of WAL (`w`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// The LSN of the first byte of `data`.
    pub wal_start: Lsn,
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    /// Server clock at transmission, microseconds since 2000-01-01.
    pub send_time: i64,
    /// The WAL bytes (a zero-copy slice of the received message).
    pub data: Bytes,
}

/// A message inside `CopyData` sent by the server during `START_REPLICATION`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicationMessage {
    /// `w`: WAL data.
    XLogData(XLogData),
    /// `k`: primary keepalive.
    PrimaryKeepalive {
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// Server clock at transmission, microseconds since 2000-01-01.
        send_time: i64,
        /// The server asks for an immediate status update (to avoid a timeout disconnect).
        reply_requested: bool,
    },
}

impl ReplicationMessage {
    /// Decodes a `CopyData` payload. `data` of XLogData is a slice of `payload` (no copy).
    pub fn decode(payload: Bytes) -> Result<Self, ProtocolError> {
        let Some(&kind) = payload.first() else {
            return Err(ProtocolError::Malformed {
                tag: b'd',
                reason: "empty CopyData payload in a replication stream".to_owned(),
            });
        };
        let mut r = Reader::new(kind, payload.slice(1..));
        match kind {
            b'w' => {
                let wal_start = Lsn(r.u64("XLogData start")?);
                let wal_end = Lsn(r.u64("XLogData end")?);
                let send_time = r.i64("XLogData send time")?;
                Ok(Self::XLogData(XLogData {
                    wal_start,
                    wal_end,
                    send_time,
                    data: r.rest(),
                }))
            }
            b'k' => {
                let wal_end = Lsn(r.u64("keepalive end")?);
                let send_time = r.i64("keepalive send time")?;
                let reply = r.u8("keepalive reply flag")?;
                r.finish()?;
                Ok(Self::PrimaryKeepalive {
                    wal_end,
                    send_time,
                    reply_requested: reply != 0,
                })
            }
            other => Err(ProtocolError::Malformed {
                tag: other,
                reason: format!(
                    "unknown replication message type {} (expected 'w' XLogData or 'k' keepalive)",
                    crate::error::tag_display(other)
                ),
            }),
        }
    }

    /// Appends the `CopyData` payload of this message (without the `d` header) to `out`; the
    /// inverse of [`decode`](Self::decode), for fake servers and tests.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Self::XLogData(x) => {
                out.reserve(25 + x.data.len());
                out.put_u8(b'w');
                out.put_u64(x.wal_start.0);
                out.put_u64(x.wal_end.0);
                out.put_i64(x.send_time);
                out.put_slice(&x.data);
            }
            Self::PrimaryKeepalive {
                wal_end,
                send_time,
                reply_requested,
            } => {
                out.put_u8(b'k');
                out.put_u64(wal_end.0);
                out.put_i64(*send_time);
                out.put_u8(u8::from(*reply_requested));
            }
        }
    }
}

/// The standby status update (`r`) the client sends to report progress.
///
/// `flush` is what lets the server recycle WAL behind a slot: report only positions that are
/// durable in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// Last WAL byte + 1 received and written.
    pub write: Lsn,
    /// Last WAL byte + 1 durably stored.
    pub flush: Lsn,
    /// Last WAL byte + 1 applied (Klio does not apply: use `flush`, or `Lsn::INVALID`).
    pub apply: Lsn,
    /// Client clock, microseconds since 2000-01-01 (see [`pg_epoch_micros`]).
    pub client_time: i64,
    /// Ask the server to reply immediately with a keepalive.
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// Length of the `r` payload.
    pub const PAYLOAD_LEN: usize = 34;

    /// Appends a whole `CopyData` message (`d`, length, `r` payload) to `out`.
    pub fn encode_copy_data(&self, out: &mut BytesMut) {
        out.reserve(5 + Self::PAYLOAD_LEN);
        out.put_u8(b'd');
        out.put_i32(4 + Self::PAYLOAD_LEN as i32);
        out.put_u8(b'r');
        out.put_u64(self.write.0);
        out.put_u64(self.flush.0);
        out.put_u64(self.apply.0);
        out.put_i64(self.client_time);
        out.put_u8(u8::from(self.reply_requested));
    }

    /// Decodes an `r` payload (the `CopyData` body), for fake servers and tests.
    pub fn decode(payload: Bytes) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(b'd', payload);
        let kind = r.u8("status update type")?;
        if kind != b'r' {
            return Err(r.malformed(format!(
                "expected a standby status update 'r', got {}",
                crate::error::tag_display(kind)
            )));
        }
        let s = Self {
            write: Lsn(r.u64("write")?),
            flush: Lsn(r.u64("flush")?),
            apply: Lsn(r.u64("apply")?),
            client_time: r.i64("client time")?,
            reply_requested: r.u8("reply flag")? != 0,
        };
        r.finish()?;
        Ok(s)
    }
}
