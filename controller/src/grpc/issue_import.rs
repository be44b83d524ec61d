//! Reading an issue import document (docs/issue-format.md, the JSON or CSV `tollgate issue
//! export` writes) into the issues the store imports: every bad entry and field is named (an
//! entry of JSON as `issues[N]`, a CSV row by its line), so one refusal says all that is wrong
//! with a file. Both forms are read as the same entries and checked by the same code.

use super::status::FieldErrors;
use crate::store::{ImportedIssue, IssueFields};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use tollgate_domain::issue::{IssueState, IssueStateName, Signature, csv};
use tollgate_domain::limits::{self, Limit};
use tollgate_domain::{NodeId, ReleaseId};

/// The format the document names.
pub const FORMAT: &str = "tollgate-issues/1";

/// Whether an entry may have the field `name`: a CSV column (`id`, `opened_at` and
/// `updated_at` are read and ignored) or, in JSON, the whole `signature` too.
fn is_field(name: &str) -> bool {
    name == "signature" || csv::COLUMNS.contains(&name)
}

/// The issues of `document`, or every bad field recorded in `errors` (then `None`).
pub fn parse(errors: &mut FieldErrors, document: &str) -> Option<Vec<ImportedIssue>> {
    let value: Value = match serde_json::from_str(document) {
        Ok(value) => value,
        Err(error) => {
            errors.add(
                "document",
                format!(
                    "is not JSON at line {}, column {}: {error}; give the file `tollgate issue \
                     export --format json` writes (for a CSV one, set format to csv)",
                    error.line(),
                    error.column()
                ),
            );
            return None;
        }
    };
    let Some(object) = value.as_object() else {
        errors.add(
            "document",
            format!("is not a JSON object; give {{\"format\": \"{FORMAT}\", \"issues\": [...]}}"),
        );
        return None;
    };
    match object.get("format").and_then(Value::as_str) {
        Some(FORMAT) => {}
        Some(other) => errors.add(
            "format",
            format!("is '{other}'; this controller imports {FORMAT}"),
        ),
        None => errors.add("format", format!("is missing; give \"{FORMAT}\"")),
    }
    let Some(entries) = object.get("issues").and_then(Value::as_array) else {
        errors.add(
            "issues",
            "is missing or not a list; give the issues as a JSON list",
        );
        return None;
    };
    let mut objects = Vec::new();
    let mut bad = false;
    for (idx, entry) in entries.iter().enumerate() {
        let at = format!("issues[{idx}]");
        match entry.as_object() {
            Some(entry) => objects.push((at, entry.clone())),
            None => {
                errors.add(at, "is not a JSON object");
                bad = true;
            }
        }
    }
    let issues = parse_entries(errors, &objects, ".");
    (!bad).then_some(issues).flatten()
}

/// The issues of a CSV `document` (a header line of columns, a line per issue), or every
/// problem recorded in `errors`, each named by its line (then `None`).
pub fn parse_csv(errors: &mut FieldErrors, document: &str) -> Option<Vec<ImportedIssue>> {
    let (rows, problems) = csv::read(document);
    let n_problems = problems.len();
    for problem in problems {
        let field = match &problem.column {
            Some(column) => format!("line {}, {column}", problem.line),
            None => format!("line {}", problem.line),
        };
        errors.add(field, problem.message);
    }
    let entries: Vec<(String, Map<String, Value>)> = rows
        .into_iter()
        .map(|row| {
            let entry = row
                .cells
                .into_iter()
                .map(|(column, cell)| {
                    let value = if csv::LIST_COLUMNS.contains(&column) {
                        Value::Array(
                            cell.split(csv::LIST_SEPARATOR)
                                .filter(|item| !item.trim().is_empty())
                                .map(|item| Value::String(item.to_owned()))
                                .collect(),
                        )
                    } else if cell.trim().is_empty() {
                        Value::Null
                    } else {
                        Value::String(cell)
                    };
                    (column.to_owned(), value)
                })
                .collect();
            (format!("line {}", row.line), entry)
        })
        .collect();
    let issues = parse_entries(errors, &entries, ", ");
    (n_problems == 0).then_some(issues).flatten()
}

/// The issues of `entries` (each named by where it is, its fields by that, `sep` and their
/// names), or every bad field recorded in `errors` (then `None`); a signature given twice is
/// one of them.
fn parse_entries(
    errors: &mut FieldErrors,
    entries: &[(String, Map<String, Value>)],
    sep: &str,
) -> Option<Vec<ImportedIssue>> {
    let before = errors.len();
    let mut issues = Vec::new();
    let mut first_of: BTreeMap<String, &str> = BTreeMap::new();
    for (at, entry) in entries {
        let issue = parse_entry(errors, at, sep, entry);
        if let Some(issue) = &issue {
            let key = issue.signature.key();
            if let Some(first) = first_of.get(&key) {
                errors.add(
                    format!("{at}{sep}signature"),
                    format!("'{key}' is given twice ({first} has it too); keep one"),
                );
            } else {
                first_of.insert(key, at);
            }
        }
        issues.extend(issue);
    }
    (errors.len() == before).then_some(issues)
}

/// One entry, or `None` with its bad fields in `errors`.
fn parse_entry(
    errors: &mut FieldErrors,
    at: &str,
    sep: &str,
    entry: &Map<String, Value>,
) -> Option<ImportedIssue> {
    let before = errors.len();
    for name in entry.keys() {
        if !is_field(name) {
            errors.add(
                format!("{at}{sep}{name}"),
                format!("is not a field of {FORMAT}; remove it (docs/issue-format.md)"),
            );
        }
    }
    let mut field = Entry {
        errors,
        at,
        sep,
        entry,
    };
    let kind = field.required("kind", &limits::NAME);
    let text = field.required("text", &limits::REASON);
    let state_name = field.required("state", &limits::NAME);
    let title = field.optional("title", &limits::REASON);
    let severity = field.optional("severity", &limits::NAME);
    let owner = field.optional("owner", &limits::NAME);
    let fix_release = field.optional("fix_release", &limits::NAME);
    let reason = field.optional("reason", &limits::REASON);
    let evidence = field.optional("evidence", &limits::NAME);
    let tickets = field.list("tickets", Some(&limits::CUSTOMERS), &limits::TICKET);
    let customers = field.list("customers", Some(&limits::CUSTOMERS), &limits::LABEL_VALUE);
    let releases = field.list("releases", None, &limits::NAME);
    let nodes = field.list("nodes", None, &limits::NAME);
    let signature = match (kind, text) {
        (Some(kind), Some(text)) => Some(Signature { kind, text }),
        _ => None,
    };
    if let (Some(signature), Some(given)) =
        (&signature, field.optional("signature", &limits::REASON))
        && given != signature.key()
    {
        let key = signature.key();
        field.errors.add(
            format!("{at}{sep}signature"),
            format!("is '{given}' but kind and text make '{key}'; give '{key}' or leave it out"),
        );
    }
    let state = state_name.and_then(|name| {
        let parsed: Option<IssueStateName> =
            field.errors.keyword(&format!("{at}{sep}state"), &name);
        let release = fix_release.clone().map(ReleaseId::from);
        let state = match parsed? {
            IssueStateName::Open => Some(IssueState::Open),
            IssueStateName::FixInRelease => {
                release.map(|release| IssueState::FixInRelease { release })
            }
            IssueStateName::Verifying => release.map(|release| IssueState::Verifying { release }),
            IssueStateName::Closed => release.map(|release| IssueState::Closed { release }),
            IssueStateName::WontFix => reason.clone().map(|reason| IssueState::WontFix { reason }),
        };
        match &state {
            None if name == "wont-fix" => field.errors.add(
                format!("{at}{sep}reason"),
                "is missing; a wont-fix issue says why it will not be fixed",
            ),
            None => field.errors.add(
                format!("{at}{sep}fix_release"),
                format!("is missing; a {name} issue names the release carrying the fix"),
            ),
            Some(state) => {
                if state.release().is_none() && fix_release.is_some() {
                    field.errors.add(
                        format!("{at}{sep}fix_release"),
                        format!("is given but the state is {name}; leave it null"),
                    );
                }
                if state.reason().is_none() && reason.is_some() {
                    field.errors.add(
                        format!("{at}{sep}reason"),
                        format!("is given but the state is {name}; leave it null"),
                    );
                }
            }
        }
        state
    });
    if field.errors.len() != before {
        return None;
    }
    let signature = signature?;
    Some(ImportedIssue {
        fields: IssueFields {
            title: title.unwrap_or_else(|| signature.key()),
            severity,
            owner,
            tickets,
            customers: customers.into_iter().collect(),
        },
        signature,
        state: state?,
        releases: releases.into_iter().map(ReleaseId::from).collect(),
        nodes: nodes.into_iter().map(NodeId::from).collect(),
        evidence,
    })
}

/// The fields of one entry, read with their errors named `issues[N].field` (JSON) or `line
/// N, field` (CSV).
struct Entry<'a> {
    errors: &'a mut FieldErrors,
    at: &'a str,
    sep: &'a str,
    entry: &'a Map<String, Value>,
}

impl Entry<'_> {
    /// A text that must be given, not blank, within `limit`.
    fn required(&mut self, name: &str, limit: &Limit) -> Option<String> {
        let field = format!("{}{}{name}", self.at, self.sep);
        match self.entry.get(name) {
            None | Some(Value::Null) => {
                self.errors.add(field, "is missing; it is required");
                None
            }
            Some(Value::String(value)) if value.trim().is_empty() => {
                self.errors.add(field, "is empty; it is required");
                None
            }
            Some(Value::String(value)) => self
                .errors
                .text(&field, limit, value)
                .then(|| value.trim().to_owned()),
            Some(_) => {
                self.errors.add(field, "is not a text");
                None
            }
        }
    }

    /// A text that may be absent, null or blank (`None`), else within `limit`.
    fn optional(&mut self, name: &str, limit: &Limit) -> Option<String> {
        let field = format!("{}{}{name}", self.at, self.sep);
        match self.entry.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(value)) if value.trim().is_empty() => None,
            Some(Value::String(value)) => self
                .errors
                .text(&field, limit, value)
                .then(|| value.trim().to_owned()),
            Some(_) => {
                self.errors.add(field, "is not a text or null");
                None
            }
        }
    }

    /// A list of texts (at most `count`), each not blank, within `each` and given once; empty
    /// when absent.
    fn list(&mut self, name: &str, count: Option<&Limit>, each: &Limit) -> Vec<String> {
        let field = format!("{}{}{name}", self.at, self.sep);
        let values = match self.entry.get(name) {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Array(values)) => values,
            Some(_) => {
                self.errors.add(field, "is not a list of texts");
                return Vec::new();
            }
        };
        if count.is_some_and(|count| !self.errors.count(&field, count, values.len())) {
            return Vec::new();
        }
        let mut seen = BTreeSet::new();
        let mut clean = Vec::new();
        for (idx, value) in values.iter().enumerate() {
            let at = format!("{field}[{idx}]");
            match value.as_str().map(str::trim) {
                None => self.errors.add(at, "is not a text"),
                Some("") => self.errors.add(at, "is empty"),
                Some(value) if !seen.insert(value.to_owned()) => {
                    self.errors.add(at, format!("'{value}' is given twice"));
                }
                Some(value) => {
                    if self.errors.text(&at, each, value) {
                        clean.push(value.to_owned());
                    }
                }
            }
        }
        clean
    }
}
