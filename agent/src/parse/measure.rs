//! Measurement lines: how a step reports numbers to Tollgate through its standard output.
//!
//! # Format
//!
//! A step reports a measurement by printing one line on **stdout**:
//!
//! ```text
//! @tollgate measure NAME VALUE [UNIT]
//! ```
//!
//! - the line starts with `@tollgate` in its first column; fields are separated by spaces or tabs;
//! - `NAME` is made of letters, digits, `_`, `.` and `-` (for example `membw_gbps`);
//! - `VALUE` is a finite decimal number (`2950.5`, `-3`, `1e-6`; not `nan` or `inf`);
//! - `UNIT` is optional and is one word without spaces (`GB/s`, `ms`, `%`).
//!
//! For example `@tollgate measure membw_gbps 2950.5 GB/s`. Every other line is ordinary
//! output. A line that starts with `@tollgate` but does not follow the format (an unknown
//! directive, a bad name, a value that is not a finite number, extra fields) makes the attempt
//! an `error` — the harness contract is broken, which says nothing about the hardware — with a
//! message such as `stdout line 12: measurement value 'fast' is not a finite number`. A name
//! over 128 bytes or a unit over the inventory-text limit is malformed the same way (the
//! controller would refuse the result).
//! Measurement lines on stderr are not read.

use tollgate_domain::limits;
use tollgate_domain::result::Measurement;

/// The marker that starts every line Tollgate reads.
pub const MARKER: &str = "@tollgate";

/// Why a `@tollgate` line could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MeasureError {
    /// The directive after the marker is not one Tollgate knows.
    #[error(
        "unknown directive '{0}' after @tollgate (expected: @tollgate measure NAME VALUE [UNIT])"
    )]
    UnknownDirective(String),
    /// The marker stands alone.
    #[error("@tollgate without a directive (expected: @tollgate measure NAME VALUE [UNIT])")]
    MissingDirective,
    /// Fewer or more fields than the format has.
    #[error("measure takes NAME VALUE [UNIT], got {0} field(s)")]
    FieldCount(usize),
    /// The name holds other characters.
    #[error("measurement name '{0}' may hold only letters, digits, '_', '.' and '-'")]
    BadName(String),
    /// The value is not a finite number.
    #[error("measurement value '{0}' is not a finite number")]
    BadValue(String),
    /// The name or the unit is longer than the controller takes.
    #[error("measurement {field} {message}")]
    OverLimit {
        /// `name` or `unit`.
        field: &'static str,
        /// What is over which limit.
        message: String,
    },
    /// The line was cut because it was longer than the agent reads.
    #[error("@tollgate line longer than {0} bytes")]
    TooLong(usize),
    /// The line is not UTF-8.
    #[error("@tollgate line is not valid UTF-8")]
    NotUtf8,
}

/// Reads one stdout line. `Ok(None)` for ordinary output.
pub fn parse_line(line: &str) -> Result<Option<Measurement>, MeasureError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let Some(rest) = line.strip_prefix(MARKER) else {
        return Ok(None);
    };
    // `@tollgatefoo` is ordinary output: the marker must be a whole word.
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return Ok(None);
    }
    let mut fields = rest.split_ascii_whitespace();
    match fields.next() {
        None => return Err(MeasureError::MissingDirective),
        Some("measure") => {}
        Some(other) => return Err(MeasureError::UnknownDirective(other.to_owned())),
    }
    let args: Vec<&str> = fields.collect();
    let (name, value, unit) = match args.as_slice() {
        [name, value] => (*name, *value, None),
        [name, value, unit] => (*name, *value, Some((*unit).to_owned())),
        other => return Err(MeasureError::FieldCount(other.len())),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(MeasureError::BadName(name.to_owned()));
    }
    // The controller refuses a result whose measurement is over these limits: say so here,
    // where the step's author can see which line.
    let over = |field, limit, text| {
        limits::check_text(limit, text)
            .map_err(|message| MeasureError::OverLimit { field, message })
    };
    over("name", &limits::NAME, name)?;
    if let Some(unit) = &unit {
        over("unit", &limits::INVENTORY_TEXT, unit)?;
    }
    let value = value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| MeasureError::BadValue(value.to_owned()))?;
    Ok(Some(Measurement {
        name: name.to_owned(),
        value,
        unit,
    }))
}

/// Collects measurements from a step's stdout, line by line, remembering the first malformed
/// `@tollgate` line.
#[derive(Debug, Default)]
pub struct MeasureParser {
    line_no: u64,
    measurements: Vec<Measurement>,
    first_error: Option<String>,
}

impl MeasureParser {
    /// A parser at line 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next stdout line (without its newline). `truncated` says the reader cut the
    /// line at `limit` bytes.
    pub fn feed(&mut self, line: &[u8], truncated: Option<usize>) {
        self.line_no += 1;
        if !line.starts_with(MARKER.as_bytes()) {
            return;
        }
        let result = match (truncated, std::str::from_utf8(line)) {
            (Some(limit), _) => Err(MeasureError::TooLong(limit)),
            (None, Err(_)) => Err(MeasureError::NotUtf8),
            (None, Ok(text)) => parse_line(text),
        };
        match result {
            Ok(Some(measurement)) => self.measurements.push(measurement),
            Ok(None) => {}
            Err(error) => {
                if self.first_error.is_none() {
                    self.first_error = Some(format!("stdout line {}: {error}", self.line_no));
                }
            }
        }
    }

    /// The well-formed measurements read, in order, and the first malformed line's message.
    pub fn finish(self) -> (Vec<Measurement>, Option<String>) {
        (self.measurements, self.first_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(name: &str, value: f64, unit: Option<&str>) -> Measurement {
        Measurement {
            name: name.to_owned(),
            value,
            unit: unit.map(str::to_owned),
        }
    }

    #[test]
    fn good_lines_parse() {
        assert_eq!(
            parse_line("@tollgate measure membw_gbps 2950.5 GB/s"),
            Ok(Some(measurement("membw_gbps", 2950.5, Some("GB/s"))))
        );
        assert_eq!(
            parse_line("@tollgate measure nccl.allreduce-busbw\t-1e3\r"),
            Ok(Some(measurement("nccl.allreduce-busbw", -1000.0, None)))
        );
        assert_eq!(parse_line("membw 2950"), Ok(None));
        assert_eq!(parse_line("  @tollgate measure x 1"), Ok(None));
        assert_eq!(parse_line("@tollgates are fun"), Ok(None));
    }

    #[test]
    fn malformed_lines_say_what_is_wrong() {
        let cases = [
            ("@tollgate", MeasureError::MissingDirective),
            (
                "@tollgate measur x 1",
                MeasureError::UnknownDirective("measur".into()),
            ),
            ("@tollgate measure x", MeasureError::FieldCount(1)),
            (
                "@tollgate measure x 1 GB/s extra",
                MeasureError::FieldCount(4),
            ),
            (
                "@tollgate measure x/y 1",
                MeasureError::BadName("x/y".into()),
            ),
            (
                "@tollgate measure x fast",
                MeasureError::BadValue("fast".into()),
            ),
            (
                "@tollgate measure x NaN",
                MeasureError::BadValue("NaN".into()),
            ),
            (
                "@tollgate measure x inf",
                MeasureError::BadValue("inf".into()),
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_line(line), Err(expected), "{line}");
        }
    }

    /// Found by fuzzing (`measure_line`): a 131-byte name parsed, and the controller then
    /// refused the whole result. A name or unit the controller would refuse is a malformed
    /// line; one at the limit is read and taken.
    #[test]
    fn names_and_units_over_the_controllers_limits_are_malformed_lines() {
        use tollgate_wire::{FromProto as _, ToProto as _};
        let at_limit = "n".repeat(limits::NAME.max);
        let line = format!(
            "@tollgate measure {at_limit} 1 {}",
            "u".repeat(limits::INVENTORY_TEXT.max)
        );
        let measurement = parse_line(&line)
            .expect("at the limits")
            .expect("a measurement");
        assert_eq!(
            Measurement::from_proto(measurement.to_proto()).as_ref(),
            Ok(&measurement),
            "the controller takes it"
        );
        let over = format!("@tollgate measure {at_limit}x 1");
        match parse_line(&over) {
            Err(MeasureError::OverLimit {
                field: "name",
                message,
            }) => {
                assert!(message.contains("129 bytes"), "{message}")
            }
            other => panic!("expected the name over its limit, got {other:?}"),
        }
        let long_unit = format!(
            "@tollgate measure x 1 {}",
            "u".repeat(limits::INVENTORY_TEXT.max + 1)
        );
        assert!(matches!(
            parse_line(&long_unit),
            Err(MeasureError::OverLimit { field: "unit", .. })
        ));
        let mut parser = MeasureParser::new();
        parser.feed(over.as_bytes(), None);
        let (measurements, first_error) = parser.finish();
        assert!(measurements.is_empty());
        assert!(
            first_error.is_some_and(|error| error.starts_with("stdout line 1: measurement name")),
        );
    }

    #[test]
    fn the_parser_names_the_first_bad_line() {
        let mut parser = MeasureParser::new();
        for line in [
            "hello",
            "@tollgate measure a 1",
            "x",
            "@tollgate measure b one",
            "@tollgate bad",
        ] {
            parser.feed(line.as_bytes(), None);
        }
        let (measurements, error) = parser.finish();
        assert_eq!(measurements, vec![measurement("a", 1.0, None)]);
        assert_eq!(
            error.as_deref(),
            Some("stdout line 4: measurement value 'one' is not a finite number")
        );
    }

    #[test]
    fn huge_output_keeps_only_measurements() {
        let mut parser = MeasureParser::new();
        let noise = vec![b'x'; 4096];
        for _ in 0..10_000 {
            parser.feed(&noise, None);
        }
        parser.feed(b"@tollgate measure after_noise 42 ms", None);
        assert_eq!(
            parser.finish(),
            (vec![measurement("after_noise", 42.0, Some("ms"))], None)
        );
        let mut parser = MeasureParser::new();
        parser.feed(b"@tollgate measure x 1 aaaa", Some(65536));
        let (_, error) = parser.finish();
        assert_eq!(
            error.as_deref(),
            Some("stdout line 1: @tollgate line longer than 65536 bytes")
        );
    }
}
