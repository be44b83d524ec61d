//! Parsers for what steps print.

pub mod dcgm;
pub mod junit;
pub mod measure;
