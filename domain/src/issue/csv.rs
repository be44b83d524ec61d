//! The CSV form of the issue export (docs/issue-format.md): its one list of columns, which the
//! CLI's export writes and the controller's import reads, and reading and writing RFC 4180
//! records. Lists are joined with `;`; an empty cell is an absent value.

use crate::limits;
use std::collections::BTreeSet;

/// The columns, in the order the export writes them. The import takes any order of them
/// (`id`, `opened_at` and `updated_at` are read and ignored) and needs `kind`, `text` and
/// `state`.
pub const COLUMNS: [&str; 16] = [
    "id",
    "kind",
    "text",
    "title",
    "severity",
    "owner",
    "tickets",
    "customers",
    "state",
    "fix_release",
    "reason",
    "releases",
    "nodes",
    "evidence",
    "opened_at",
    "updated_at",
];

/// The columns that hold lists, joined with [`LIST_SEPARATOR`].
pub const LIST_COLUMNS: [&str; 4] = ["tickets", "customers", "releases", "nodes"];

/// What joins a list's items in one cell.
pub const LIST_SEPARATOR: char = ';';

/// The columns an import needs.
const REQUIRED: [&str; 3] = ["kind", "text", "state"];

/// One cell (RFC 4180): quoted, with quotes doubled, when it holds a comma, a quote or a line
/// break.
pub fn cell(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// One record: its cells, quoted as needed, joined with commas and ended with CRLF.
pub fn record(cells: &[String]) -> String {
    let mut out = cells
        .iter()
        .map(|text| cell(text))
        .collect::<Vec<_>>()
        .join(",");
    out.push_str("\r\n");
    out
}

/// A problem with a CSV file: the line it is on (from 1), the column when one is to blame,
/// and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}{}: {message}", column.as_ref().map(|c| format!(", {c}")).unwrap_or_default())]
pub struct CsvProblem {
    /// The line, from 1.
    pub line: usize,
    /// The column, when one is to blame.
    pub column: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

/// One issue's row: the line it starts on and its cells by column, in the header's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The line it starts on, from 1.
    pub line: usize,
    /// Each column of the header with its cell.
    pub cells: Vec<(&'static str, String)>,
}

/// The rows of `text`, a header line naming columns of [`COLUMNS`] and then one record per
/// issue, with every problem found, each with its line (and column): the rows that could be
/// read are answered beside them, so that what their cells hold can be checked too.
pub fn read(text: &str) -> (Vec<Row>, Vec<CsvProblem>) {
    let mut problems = Vec::new();
    let records = split(text, &mut problems);
    let mut records = records.into_iter();
    let Some((_, header)) = records.next() else {
        problems.push(CsvProblem {
            line: 1,
            column: None,
            message: format!(
                "the file is empty; give a header line ({}) and a line per issue",
                COLUMNS.join(",")
            ),
        });
        return (Vec::new(), problems);
    };
    let mut columns: Vec<Option<&'static str>> = Vec::new();
    let mut seen = BTreeSet::new();
    for name in &header {
        let name = name.trim();
        match COLUMNS.iter().find(|column| **column == name) {
            Some(column) if !seen.insert(*column) => {
                problems.push(CsvProblem {
                    line: 1,
                    column: Some((*column).to_owned()),
                    message: "is given twice in the header; keep one".into(),
                });
                columns.push(None);
            }
            Some(column) => columns.push(Some(column)),
            None => {
                problems.push(CsvProblem {
                    line: 1,
                    column: Some(limits::quote(name)),
                    message: format!(
                        "is not a column of the export; give only {}",
                        COLUMNS.join(", ")
                    ),
                });
                columns.push(None);
            }
        }
    }
    for required in REQUIRED {
        if !seen.contains(required) {
            problems.push(CsvProblem {
                line: 1,
                column: Some(required.to_owned()),
                message: "is missing from the header; it is required".into(),
            });
        }
    }
    let mut rows = Vec::new();
    for (line, cells) in records {
        if cells.len() == 1 && cells[0].is_empty() {
            continue;
        }
        if cells.len() != header.len() {
            problems.push(CsvProblem {
                line,
                column: None,
                message: format!(
                    "has {} cells but the header has {}; give one cell per column (quote a \
                     cell holding a comma)",
                    cells.len(),
                    header.len()
                ),
            });
            continue;
        }
        rows.push(Row {
            line,
            cells: columns
                .iter()
                .zip(cells)
                .filter_map(|(column, cell)| column.map(|column| (column, cell)))
                .collect(),
        });
    }
    (rows, problems)
}

/// The records of `text` with the line each starts on; an unterminated quote or a quote in
/// the middle of an unquoted cell is a problem.
fn split(text: &str, problems: &mut Vec<CsvProblem>) -> Vec<(usize, Vec<String>)> {
    let mut records = Vec::new();
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut line = 1;
    let mut start = 1;
    let mut quoted = false;
    let mut quote_line = 0;
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        if quoted {
            match ch {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    cell.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    cell.push(ch);
                }
                _ => cell.push(ch),
            }
            continue;
        }
        match ch {
            '"' if cell.is_empty() => {
                quoted = true;
                quote_line = line;
            }
            '"' => problems.push(CsvProblem {
                line,
                column: None,
                message: "has a quote inside an unquoted cell; quote the whole cell and double \
                          the quote"
                    .into(),
            }),
            ',' => cells.push(std::mem::take(&mut cell)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                cells.push(std::mem::take(&mut cell));
                records.push((start, std::mem::take(&mut cells)));
                line += 1;
                start = line;
            }
            _ => cell.push(ch),
        }
    }
    if quoted {
        problems.push(CsvProblem {
            line: quote_line,
            column: None,
            message: "has a quoted cell that is never closed; end it with a quote".into(),
        });
    }
    if !cell.is_empty() || !cells.is_empty() {
        cells.push(cell);
        records.push((start, cells));
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(row: &Row) -> Vec<(&str, &str)> {
        row.cells
            .iter()
            .map(|(column, cell)| (*column, cell.as_str()))
            .collect()
    }

    #[test]
    fn what_is_written_reads_back() {
        let tricky = "a, \"quoted\"\nsecond line".to_owned();
        let mut text = record(&["kind".into(), "text".into(), "state".into()]);
        text.push_str(&record(&[
            "telemetry".into(),
            tricky.clone(),
            "open".into(),
        ]));
        text.push_str(&record(&[
            "events".into(),
            "XID 79".into(),
            "wont-fix".into(),
        ]));
        let (rows, problems) = read(&text);
        assert_eq!(problems, []);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            texts(&rows[0]),
            [
                ("kind", "telemetry"),
                ("text", tricky.as_str()),
                ("state", "open")
            ]
        );
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[1].line, 4, "the quoted line break counts");
    }

    #[test]
    fn columns_come_in_any_order_and_lf_ends_lines_too() {
        let (rows, problems) = read("state,text,kind\nopen,x,events\n\n");
        assert_eq!(problems, []);
        assert_eq!(
            texts(&rows[0]),
            [("state", "open"), ("text", "x"), ("kind", "events")]
        );
    }

    #[test]
    fn every_problem_is_named_with_its_line() {
        let text = "kind,text,colour,kind\r\nevents,XID 79\r\nevents,a\"b,red,x\r\n\"open";
        let (rows, problems) = read(text);
        // Line 3 has the header's count of cells: it is read for its cells to be checked.
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].line, 3);
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "line 3: has a quote inside an unquoted cell; quote the whole cell and double \
                 the quote",
                "line 4: has a quoted cell that is never closed; end it with a quote",
                "line 1, 'colour': is not a column of the export; give only id, kind, text, \
                 title, severity, owner, tickets, customers, state, fix_release, reason, \
                 releases, nodes, evidence, opened_at, updated_at",
                "line 1, kind: is given twice in the header; keep one",
                "line 1, state: is missing from the header; it is required",
                "line 2: has 2 cells but the header has 4; give one cell per column (quote a \
                 cell holding a comma)",
                "line 4: has 1 cells but the header has 4; give one cell per column (quote a \
                 cell holding a comma)",
            ]
        );
        assert_eq!(read("").1[0].line, 1);
    }
}
