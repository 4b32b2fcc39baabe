//! Sans-IO codecs for the PostgreSQL frontend/backend and replication protocols.
//!
//! Bytes in, messages and bytes out: nothing here opens a socket or reads a clock, so every
//! decoder can be unit-tested with byte vectors and fuzzed. Later this crate will also hold
//! Klio's own framed client/server protocol.
#![forbid(unsafe_code)]
