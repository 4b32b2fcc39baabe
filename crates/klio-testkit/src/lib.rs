//! Test harness for Klio's integration tests.
#![forbid(unsafe_code)]
