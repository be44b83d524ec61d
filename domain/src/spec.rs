//! What plan and gate files share: errors that name the file, line and field, and durations.

use crate::limits::Limit;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// One problem in a spec file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecError {
    /// The file name the text came from.
    pub file: String,
    /// 1-based line; 0 when unknown.
    pub line: u64,
    /// 1-based column; 0 when unknown.
    pub column: u64,
    /// Field path, for example `steps[1].timeout`; empty for the whole document.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.column > 0 {
                write!(f, ":{}", self.column)?;
            }
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

/// Every problem found in a spec file, in file order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (idx, error) in self.0.iter().enumerate() {
            if idx > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// Collects errors while a raw spec is validated.
pub(crate) struct Problems<'a> {
    file: &'a str,
    errors: Vec<SpecError>,
}

impl<'a> Problems<'a> {
    pub(crate) fn new(file: &'a str) -> Self {
        Self {
            file,
            errors: Vec::new(),
        }
    }

    pub(crate) fn add(
        &mut self,
        location: serde_saphyr::Location,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.errors.push(SpecError {
            file: self.file.to_owned(),
            line: location.line(),
            column: location.column(),
            field: field.into(),
            message: message.into(),
        });
    }

    /// Records a problem when `value` is longer than `limit`; `true` when it fits.
    pub(crate) fn text(
        &mut self,
        location: serde_saphyr::Location,
        field: impl Into<String>,
        limit: &Limit,
        value: &str,
    ) -> bool {
        match crate::limits::check_text(limit, value) {
            Ok(()) => true,
            Err(message) => {
                self.add(location, field, message);
                false
            }
        }
    }

    /// Records a problem when a list of `n` entries is longer than `limit`; `true` when it
    /// fits.
    pub(crate) fn count(
        &mut self,
        location: serde_saphyr::Location,
        field: impl Into<String>,
        limit: &Limit,
        n: usize,
    ) -> bool {
        match crate::limits::check_count(limit, n) {
            Ok(()) => true,
            Err(message) => {
                self.add(location, field, message);
                false
            }
        }
    }

    /// Every problem recorded, in file order; for giving up early.
    pub(crate) fn into_errors(mut self) -> SpecErrors {
        self.errors.sort_by_key(|e| (e.line, e.column));
        SpecErrors(self.errors)
    }

    pub(crate) fn finish<T>(mut self, value: T) -> Result<T, SpecErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            self.errors.sort_by_key(|e| (e.line, e.column));
            Err(SpecErrors(self.errors))
        }
    }
}

/// An integer field as written in YAML, whatever its sign or size, so that a value out of the
/// field's range is reported with the field's name and line (`steps[0].retries: -1 is not a
/// non-negative integer`) instead of the YAML library's type error.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum RawInt {
    /// A whole number.
    Int(i128),
    /// Anything else (a fraction, a string, a boolean), quoted for the message.
    Other(String),
}

impl<'de> Deserialize<'de> for RawInt {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E>(self, value: i64) -> Result<RawInt, E> {
                Ok(RawInt::Int(i128::from(value)))
            }
            fn visit_u64<E>(self, value: u64) -> Result<RawInt, E> {
                Ok(RawInt::Int(i128::from(value)))
            }
            fn visit_i128<E>(self, value: i128) -> Result<RawInt, E> {
                Ok(RawInt::Int(value))
            }
            fn visit_u128<E>(self, value: u128) -> Result<RawInt, E> {
                Ok(RawInt::Int(i128::try_from(value).unwrap_or(i128::MAX)))
            }
            fn visit_f64<E>(self, value: f64) -> Result<RawInt, E> {
                Ok(RawInt::Other(value.to_string()))
            }
            fn visit_bool<E>(self, value: bool) -> Result<RawInt, E> {
                Ok(RawInt::Other(value.to_string()))
            }
            fn visit_str<E>(self, value: &str) -> Result<RawInt, E> {
                Ok(RawInt::Other(crate::limits::quote(value)))
            }
            fn visit_unit<E>(self) -> Result<RawInt, E> {
                Ok(RawInt::Other("null".into()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl RawInt {
    /// The value as a `u32` no larger than `max`; the error is the message for the field.
    pub(crate) fn to_u32(&self, max: u32) -> Result<u32, String> {
        match self {
            RawInt::Int(value) if *value < 0 => {
                Err(format!("{value} is not a non-negative integer"))
            }
            RawInt::Int(value) => match u32::try_from(*value) {
                Ok(value) if value <= max => Ok(value),
                _ => Err(format!("{value} is more than the limit of {max}")),
            },
            RawInt::Other(text) => Err(format!("{text} is not a non-negative integer")),
        }
    }
}

/// The error for a plan or gate file larger than [`SPEC_SOURCE`](crate::limits::SPEC_SOURCE).
pub(crate) fn check_source(file: &str, source: &str) -> Result<(), SpecErrors> {
    let limit = crate::limits::SPEC_SOURCE;
    if source.len() <= limit.max {
        return Ok(());
    }
    Err(SpecErrors(vec![SpecError {
        file: crate::limits::truncate(&crate::limits::PATH, file, false),
        line: 0,
        column: 0,
        field: String::new(),
        message: format!(
            "the file is {} bytes, over the limit of {limit}; split it",
            source.len()
        ),
    }]))
}

/// Parses YAML into a raw spec, turning a syntax or shape error into a located [`SpecError`].
pub(crate) fn parse_yaml<'de, T: Deserialize<'de>>(
    file: &str,
    source: &'de str,
) -> Result<T, SpecErrors> {
    check_source(file, source)?;
    serde_saphyr::from_str(source).map_err(|error| {
        let (line, column) = error
            .location()
            .map_or((0, 0), |location| (location.line(), location.column()));
        // The library's message can carry a rendered snippet after the first line; the
        // location is reported separately, so keep only the sentence.
        let text = error.to_string();
        let first = text.lines().next().unwrap_or("invalid YAML").trim();
        // The location is reported in its own fields; drop the library's copy of it
        // ("error: line 5 column 1: ...") so a message says it once.
        // The library may quote a scalar it could not read; keep the message short.
        let message =
            crate::limits::truncate(&crate::limits::REASON, strip_location_prefix(first), false);
        SpecErrors(vec![SpecError {
            file: file.to_owned(),
            line,
            column,
            field: String::new(),
            message,
        }])
    })
}

fn strip_location_prefix(message: &str) -> &str {
    let rest = message.strip_prefix("error: ").unwrap_or(message);
    if let Some(after_line) = rest.strip_prefix("line ")
        && let Some((location, tail)) = after_line.split_once(": ")
        && location.contains("column")
    {
        return tail;
    }
    rest
}

/// Parses a duration such as `90s`, `2m`, `1h30m`, `500ms`, `7d` or `2w`: the one duration
/// syntax of plans, gates, waivers and every flag (humantime's, so `1h 30m` and `3days` read
/// too). Units: ms, s, m, h, d (24 h), w (7 d).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "{} is not a duration (write it like 30s, 5m, 1h30m, 500ms or 7d)",
            crate::limits::quote(text)
        )
    };
    let trimmed = text.trim();
    // humantime reads months and years (of average length) too; a qualification timeout or a
    // waiver measured in those is a typo for minutes, so they are refused.
    let calendar_unit = trimmed
        .split(|c: char| !c.is_ascii_alphabetic())
        .any(|unit| matches!(unit, "M" | "month" | "months" | "y" | "year" | "years"));
    if trimmed.is_empty() || calendar_unit {
        return Err(bad());
    }
    humantime::parse_duration(trimmed).map_err(|_| bad())
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = duration.as_secs();
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if secs > 0 || out.is_empty() {
        out.push_str(&format!("{secs}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_errors_state_the_location_once() {
        let errors =
            crate::plan::parse_plan("p.yaml", "name: x\nsteps: []\nselectr: {a: b}\n").unwrap_err();
        let text = errors.to_string();
        assert!(text.starts_with("p.yaml:3:"), "{text}");
        assert!(!text.contains("line 3"), "{text}");
        assert!(!text.contains("error:"), "{text}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("3days"), Ok(Duration::from_secs(3 * 86_400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in [
            "",
            "2",
            "2x",
            "m",
            "-1s",
            "1y",
            "2M",
            "3months",
            "two minutes",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn durations_format_back() {
        for text in ["90ms", "1m30s", "2h", "45s", "0s"] {
            let parsed = parse_duration(text).expect("valid");
            assert_eq!(parse_duration(&format_duration(parsed)), Ok(parsed));
        }
    }
}
