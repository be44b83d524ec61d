//! What plan and gate files share: errors that name the file, line and field, and durations.

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

    pub(crate) fn finish<T>(mut self, value: T) -> Result<T, SpecErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            self.errors.sort_by_key(|e| (e.line, e.column));
            Err(SpecErrors(self.errors))
        }
    }
}

/// Parses YAML into a raw spec, turning a syntax or shape error into a located [`SpecError`].
pub(crate) fn parse_yaml<'de, T: Deserialize<'de>>(
    file: &str,
    source: &'de str,
) -> Result<T, SpecErrors> {
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
        let message = strip_location_prefix(first).to_owned();
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
    let bad = || format!("'{text}' is not a duration (write it like 30s, 5m, 1h30m, 500ms or 7d)");
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
