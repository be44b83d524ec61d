//! The CLI's parsers of local input, as a library: the binary (`main.rs`) uses them, and so do
//! the fuzz targets in `fuzz/`, which cannot link a binary.

pub mod release_file;
