//! The Klio client library.
#![forbid(unsafe_code)]
