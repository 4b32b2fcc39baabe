//! Collecting the results of a simple query.

use bytes::Bytes;

use crate::backend::{BackendMessage, FieldDescription};
use crate::error::{ProtocolError, ServerError};

/// The rows of one statement (or replication command) and its command tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultSet {
    /// Column descriptions (empty for commands that return no rows).
    pub columns: Vec<FieldDescription>,
    /// Rows; `None` is SQL NULL. Every row has `columns.len()` values.
    pub rows: Vec<Vec<Option<Bytes>>>,
    /// The `CommandComplete` tag, e.g. `IDENTIFY_SYSTEM` or `SHOW`.
    pub tag: String,
}

impl ResultSet {
    /// The index of the column called `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The raw value at (`row`, `col`); `None` when NULL or out of range.
    pub fn get(&self, row: usize, col: usize) -> Option<&Bytes> {
        self.rows.get(row)?.get(col)?.as_ref()
    }

    /// The value at (`row`, `col`) as text; `Ok(None)` when NULL or out of range.
    pub fn text(&self, row: usize, col: usize) -> Result<Option<&str>, ProtocolError> {
        self.get(row, col)
            .map(|b| std::str::from_utf8(b).map_err(|_| ProtocolError::Utf8 { tag: b'D' }))
            .transpose()
    }
}

/// Everything a simple query produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResult {
    /// One result set per `CommandComplete`, in order.
    pub sets: Vec<ResultSet>,
    /// Notices (`NoticeResponse`) received during the query.
    pub notices: Vec<ServerError>,
    /// `ParameterStatus` changes reported during the query.
    pub parameters: Vec<(String, String)>,
    /// The transaction status from `ReadyForQuery` (`I`, `T` or `E`).
    pub status: u8,
}

impl QueryResult {
    /// The only result set; an error naming `command` if there is not exactly one.
    pub fn single(&self, command: &'static str) -> Result<&ResultSet, ProtocolError> {
        match self.sets.as_slice() {
            [one] => Ok(one),
            sets => Err(ProtocolError::BadResult {
                command,
                reason: format!("expected one result set, got {}", sets.len()),
            }),
        }
    }

    /// Like [`single`](Self::single), by value.
    pub fn into_single(mut self, command: &'static str) -> Result<ResultSet, ProtocolError> {
        if self.sets.len() == 1 {
            Ok(self.sets.remove(0))
        } else {
            Err(ProtocolError::BadResult {
                command,
                reason: format!("expected one result set, got {}", self.sets.len()),
            })
        }
    }
}

/// Collects the messages answering a `Query` until `ReadyForQuery`.
///
/// Feed every decoded message to [`handle`](Self::handle). It returns `Ok(None)` until
/// `ReadyForQuery`, then the collected result, or the server's `ErrorResponse` as
/// [`ProtocolError::Server`]: errors are held back until `ReadyForQuery` so the connection stays
/// in sync and can be reused. The collector resets itself after returning and can be reused.
///
/// COPY responses (`START_REPLICATION`, `BASE_BACKUP`) are not handled here and are reported as
/// [`ProtocolError::UnexpectedMessage`]. A command that sends result sets before its COPY
/// (`BASE_BACKUP`) hands them over with [`take_completed_sets`](Self::take_completed_sets) when
/// the COPY response arrives.
#[derive(Debug, Default)]
pub struct SimpleQuery {
    result: QueryResult,
    current: Option<ResultSet>,
    error: Option<ServerError>,
}

impl SimpleQuery {
    /// A fresh collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// The result sets completed so far, taken out of the collector (which keeps collecting).
    pub fn take_completed_sets(&mut self) -> Vec<ResultSet> {
        std::mem::take(&mut self.result.sets)
    }

    /// Handles one message; see the type documentation.
    pub fn handle(&mut self, msg: BackendMessage) -> Result<Option<QueryResult>, ProtocolError> {
        match msg {
            BackendMessage::RowDescription(columns) => {
                if self.current.is_some() {
                    return Err(ProtocolError::UnexpectedMessage {
                        expected: "DataRow or CommandComplete",
                        got: b'T',
                    });
                }
                self.current = Some(ResultSet {
                    columns,
                    ..ResultSet::default()
                });
            }
            BackendMessage::DataRow(row) => {
                let Some(set) = self.current.as_mut() else {
                    return Err(ProtocolError::UnexpectedMessage {
                        expected: "RowDescription before DataRow",
                        got: b'D',
                    });
                };
                if row.len() != set.columns.len() {
                    return Err(ProtocolError::Malformed {
                        tag: b'D',
                        reason: format!(
                            "row has {} values but RowDescription announced {} columns",
                            row.len(),
                            set.columns.len()
                        ),
                    });
                }
                set.rows.push(row);
            }
            BackendMessage::CommandComplete { tag } => {
                let mut set = self.current.take().unwrap_or_default();
                set.tag = tag;
                self.result.sets.push(set);
            }
            BackendMessage::EmptyQueryResponse => {
                self.current = None;
            }
            BackendMessage::ErrorResponse(e) => {
                self.current = None;
                self.error.get_or_insert(e);
            }
            BackendMessage::NoticeResponse(n) => self.result.notices.push(n),
            BackendMessage::ParameterStatus { name, value } => {
                self.result.parameters.push((name, value));
            }
            BackendMessage::ReadyForQuery { status } => {
                let mut result = std::mem::take(&mut self.result);
                result.status = status;
                let current = self.current.take();
                if let Some(e) = self.error.take() {
                    return Err(ProtocolError::Server(Box::new(e)));
                }
                if current.is_some() {
                    return Err(ProtocolError::UnexpectedMessage {
                        expected: "CommandComplete before ReadyForQuery",
                        got: b'Z',
                    });
                }
                return Ok(Some(result));
            }
            other => {
                return Err(ProtocolError::UnexpectedMessage {
                    expected: "a query result (RowDescription, DataRow, CommandComplete, ErrorResponse or ReadyForQuery)",
                    got: other.tag(),
                });
            }
        }
        Ok(None)
    }
}
