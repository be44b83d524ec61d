//! PostgreSQL's binary `COPY` format, written: rows streamed with `COPY ... FROM STDIN (FORMAT
//! binary)` instead of bound as statement parameters. The fleet's telemetry buckets are
//! appended this way (`fleet_telemetry.rs`), and `pg-ingest-bench` copies its ceiling with
//! the same encoder.
//!
//! The format (<https://www.postgresql.org/docs/current/sql-copy.html>, "Binary Format"): a
//! signature, flags and an empty header extension; each tuple its field count (16 bits) then
//! each field as a 32-bit length (-1 for NULL) and the value in the type's binary send
//! format (`text`: UTF-8 bytes; `int8`: big-endian; `timestamptz`: microseconds since
//! 2000-01-01 UTC, the server's `integer_datetimes`); a 16-bit -1 ends the stream.

use super::StoreError;
use tollgate_domain::Timestamp;

/// 2000-01-01T00:00:00Z, PostgreSQL's timestamp epoch, in Unix microseconds.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A binary `COPY` stream being written: header, tuples, trailer.
#[derive(Debug)]
pub struct CopyBinary(Vec<u8>);

impl CopyBinary {
    /// A stream holding its header, with room for about `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity.max(32));
        out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        // Flags (no OIDs), then the length of the header extension area (none).
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        Self(out)
    }

    /// Starts a tuple of `n_fields` fields; exactly that many field calls must follow.
    pub fn tuple(&mut self, n_fields: i16) {
        self.0.extend_from_slice(&n_fields.to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let len = i32::try_from(bytes.len()).map_err(|_| StoreError::Corrupt {
            what: "a value to copy".into(),
            detail: format!(
                "{} bytes is over PostgreSQL's 1 GiB field limit",
                bytes.len()
            ),
        })?;
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    /// A `text` field. NUL characters, which PostgreSQL's `text` cannot hold, must have been
    /// replaced by the caller (`store::text`), as for a bound parameter.
    pub fn text(&mut self, value: &str) -> Result<(), StoreError> {
        self.field(value.as_bytes())
    }

    /// A `bigint` field.
    pub fn int8(&mut self, value: i64) {
        self.0.extend_from_slice(&8i32.to_be_bytes());
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    /// A `NULL` field.
    pub fn null(&mut self) {
        self.0.extend_from_slice(&(-1i32).to_be_bytes());
    }

    /// A `timestamptz` field, to the microsecond (finer digits are dropped).
    pub fn timestamptz(&mut self, at: Timestamp) {
        self.int8(at.timestamp_micros() - PG_EPOCH_MICROS);
    }

    /// The stream with its trailer, ready to send.
    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&(-1i16).to_be_bytes());
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_domain::test_support::at;

    #[test]
    fn a_stream_is_header_tuples_and_trailer_in_network_order() {
        let mut copy = CopyBinary::with_capacity(0);
        copy.tuple(4);
        copy.text("n1").unwrap();
        copy.int8(-2);
        copy.null();
        copy.timestamptz(Timestamp::from_timestamp(946_684_801, 500).unwrap());
        let bytes = copy.finish();
        let mut expected: Vec<u8> = b"PGCOPY\n\xff\r\n\0".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[0, 4]);
        expected.extend_from_slice(&[0, 0, 0, 2, b'n', b'1']);
        expected.extend_from_slice(&[0, 0, 0, 8, 255, 255, 255, 255, 255, 255, 255, 254]);
        expected.extend_from_slice(&[255, 255, 255, 255]);
        // One second after PostgreSQL's epoch, the nanoseconds below a microsecond dropped.
        expected.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0x0f, 0x42, 0x40]);
        expected.extend_from_slice(&[255, 255]);
        assert_eq!(bytes, expected);
        // Before the epoch counts down.
        let mut copy = CopyBinary::with_capacity(0);
        copy.timestamptz(at(0));
        let bytes = copy.finish();
        let micros = i64::from_be_bytes(bytes[23..31].try_into().unwrap());
        assert_eq!(micros, at(0).timestamp_micros() - PG_EPOCH_MICROS);
    }
}
