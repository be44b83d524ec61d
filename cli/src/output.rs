//! How commands print: the text/JSON switch, aligned tables, and the small formatting helpers
//! (times, ages, hashes, labels, outcomes) every command shares.

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// What a command prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Text for people.
    #[default]
    Text,
    /// The controller's answer as JSON, snake_case field names.
    Json,
}

/// The `-o/--output` flag, flattened into every command that prints. It is per command rather
/// than global because `tollgate report -o FILE` uses the same letter for its file.
#[derive(Clone, Copy, Debug, Default, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(long = "output", short = 'o', value_enum, default_value = "text")]
    pub output: Format,
}

/// The output format the command line asked for, found before the command runs: the `-o`
/// of the innermost subcommand that has one (`gate show -o json` counts as JSON too). Text
/// when there is none, and for `tollgate report`, whose `-o` names a file.
pub fn requested_format(matches: &clap::ArgMatches) -> Format {
    let mut current = matches;
    let mut format = Format::Text;
    loop {
        if let Ok(Some(found)) = current.try_get_one::<Format>("output") {
            format = *found;
        } else if let Ok(Some(found)) = current.try_get_one::<crate::args::DecisionFormat>("output")
        {
            format = match found {
                crate::args::DecisionFormat::Text => Format::Text,
                _ => Format::Json,
            };
        } else if let Ok(Some(true)) = current.try_get_one::<bool>("json") {
            // `tollgate report --json`.
            format = Format::Json;
        }
        match current.subcommand() {
            Some((_, sub)) => current = sub,
            None => return format,
        }
    }
}

/// Prints a JSON value, pretty.
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints a JSON value on one line, for streams of updates.
pub fn print_json_line(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// A text table whose columns are padded to their widest cell.
#[derive(Debug)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|title| (*title).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells print empty.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders with `indent` before every line; no trailing spaces.
    pub fn render(&self, indent: &str) -> String {
        let n_columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (idx, cell) in row.iter().enumerate().take(n_columns) {
                widths[idx] = widths[idx].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::from(indent);
            for (idx, width) in widths.iter().enumerate() {
                let cell = row.get(idx).map_or("", String::as_str);
                if idx + 1 == n_columns {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A proto timestamp as a UTC time; `None` when absent or out of range.
pub fn time(timestamp: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    timestamp.and_then(tollgate_wire::timestamp_from_proto)
}

/// A proto timestamp as RFC 3339 text, `-` when absent.
pub fn format_time(timestamp: Option<&prost_types::Timestamp>) -> String {
    time(timestamp).map_or_else(
        || "-".to_owned(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// How long ago `then` was, coarsely: `4s ago`, `3m ago`, `2h ago`, `5d ago`; `never` when absent.
pub fn format_age(then: Option<&prost_types::Timestamp>, now: DateTime<Utc>) -> String {
    let Some(then) = time(then) else {
        return "never".to_owned();
    };
    let secs = (now - then).num_seconds().max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// A milliseconds duration for people: `850ms`, `3.1s`, `2m05s`.
pub fn format_millis(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// The first 12 characters of a content hash, enough to tell versions apart.
pub fn short_hash(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Labels as `k=v,k=v`, sorted; `-` when there are none.
pub fn format_labels(labels: &HashMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_owned();
    }
    sorted(labels)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A proto map in key order, for stable output.
pub fn sorted(map: &HashMap<String, String>) -> BTreeMap<&str, &str> {
    map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// An outcome's lowercase name (`unknown` for values this CLI does not know).
pub use tollgate_wire::json::outcome_name;

/// Formats a number without a pointless `.0` and with at most two decimals.
pub fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.2}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// `-` for an empty string, so table cells never vanish.
pub fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_trim() {
        let mut table = Table::new(&["NAME", "STATE"]);
        table.row(vec!["lab-1".into(), "ready".into()]);
        table.row(vec!["a-much-longer-name".into(), "busy".into()]);
        assert_eq!(
            table.render(""),
            "NAME                STATE\nlab-1               ready\na-much-longer-name  busy\n"
        );
    }

    #[test]
    fn ages_and_durations_read_naturally() {
        let now = DateTime::from_timestamp(1_000_000, 0).expect("valid");
        let at = |secs: i64| prost_types::Timestamp {
            seconds: secs,
            nanos: 0,
        };
        assert_eq!(format_age(Some(&at(999_996)), now), "4s ago");
        assert_eq!(format_age(Some(&at(1_000_000 - 180)), now), "3m ago");
        assert_eq!(format_age(None, now), "never");
        assert_eq!(format_millis(850), "850ms");
        assert_eq!(format_millis(3140), "3.1s");
        assert_eq!(format_millis(125_000), "2m05s");
    }

    #[test]
    fn numbers_lose_needless_decimals() {
        assert_eq!(format_number(2800.0), "2800");
        assert_eq!(format_number(95.126), "95.13");
        assert_eq!(format_number(3012.5), "3012.5");
    }
}
