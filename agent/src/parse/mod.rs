//! Parsers for what steps print.

pub mod measure;
