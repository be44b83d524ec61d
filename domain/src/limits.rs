//! Every bound on what a request, a plan or gate file or an agent's result may hold, in one
//! table ([`ALL`]), with the checks that apply them and [`quote`], which every error message
//! uses to show an offending value without echoing all of it.
//!
//! The limits keep the store, the gate evaluation and the error path small whatever a caller
//! sends: a value over its limit is refused with the field named and at most a prefix of the
//! value quoted, never stored. `docs/limits.md` lists the same table; a test checks they agree.

use std::fmt;

/// What a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "kebab-case")]
pub enum Unit {
    /// UTF-8 bytes of one text.
    Bytes,
    /// Entries of one list or map.
    Items,
}

impl Unit {
    /// The unit's word in messages and in the documentation.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One named bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// The limit's name, as messages and the documentation give it.
    pub name: &'static str,
    /// The largest allowed size.
    pub max: usize,
    /// What `max` counts.
    pub unit: Unit,
    /// The fields it applies to, for the documentation.
    pub applies_to: &'static str,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.max, self.unit.as_str(), self.name)
    }
}

const fn bytes(name: &'static str, max: usize, applies_to: &'static str) -> Limit {
    Limit {
        name,
        max,
        unit: Unit::Bytes,
        applies_to,
    }
}

const fn items(name: &'static str, max: usize, applies_to: &'static str) -> Limit {
    Limit {
        name,
        max,
        unit: Unit::Items,
        applies_to,
    }
}

/// A whole gRPC request to the services taking files and lists (plans, gates, releases);
/// larger ones are refused (`RESOURCE_EXHAUSTED`) before any field is read. Every other limit
/// is far below it, so an oversize field is always `INVALID_ARGUMENT`. The controller's
/// `grpc::limits` sets each service's size from it and from what the service carries.
pub const REQUEST: Limit = bytes(
    "request",
    4 * 1024 * 1024,
    "one gRPC message to the plan, gate, release or issue service (agent service: 16 MiB; others: 256 KiB)",
);
/// Names and ids.
pub const NAME: Limit = bytes(
    "name",
    128,
    "release, plan, node, step, component, milestone, rule, measurement and test names; run, job and waiver ids; plan versions; report format; actor",
);
/// A gate rule's id (a kind and a name, or one given in the gate file).
pub const RULE_ID: Limit = bytes("rule-id", 256, "gate rule ids");
/// A parsed test's suite or name.
pub const TEST_NAME: Limit = bytes(
    "test-name",
    1024,
    "a test result's suite and name (junit class and case names can be long)",
);
/// A label's key.
pub const LABEL_KEY: Limit = bytes(
    "label-key",
    128,
    "node label keys, selector keys, per: keys",
);
/// A label's value.
pub const LABEL_VALUE: Limit = bytes(
    "label-value",
    256,
    "node label values, selector values, waiver SKUs",
);
/// Labels of one node, entries of one selector.
pub const LABELS: Limit = items(
    "labels",
    64,
    "labels of a node; entries of a selector; jobs with unsent results in one heartbeat",
);
/// A version string.
pub const VERSION: Limit = bytes(
    "version",
    128,
    "component versions; driver, CUDA, NVML, VBIOS and InfoROM versions; agent version",
);
/// Short inventory texts.
pub const INVENTORY_TEXT: Limit = bytes(
    "inventory-text",
    256,
    "GPU uuid, name, serial, board part number, PCI bus id, GPU source, hostname, units",
);
/// Free text describing something.
pub const DESCRIPTION: Limit = bytes("description", 4096, "release and plan descriptions, notes");
/// Why someone did something.
pub const REASON: Limit = bytes(
    "reason",
    1024,
    "waiver, halt, resume, demote, milestone target and node health reasons",
);
/// A ticket reference.
pub const TICKET: Limit = bytes("ticket", 256, "waiver ticket references");
/// A URI or a file path.
pub const PATH: Limit = bytes(
    "path",
    4096,
    "artifact URIs, step workdirs, junit report paths, spec file names",
);
/// Arguments of one command.
pub const COMMAND_ARGS: Limit = items("command-args", 256, "argv entries of a step's command");
/// One argument of a command.
pub const COMMAND_ARG: Limit = bytes("command-arg", 4096, "one argv entry of a step's command");
/// Environment variables of one step.
pub const ENV_VARS: Limit = items("env-vars", 128, "environment variables of a step");
/// One environment variable's value (its name is a [`NAME`]).
pub const ENV_VALUE: Limit = bytes("env-value", 4096, "one environment variable's value");
/// Components of one release, or named by one step.
pub const COMPONENTS: Limit = items(
    "components",
    256,
    "components of a release; components of an inventory-check step or a node's inventory",
);
/// Steps of one plan.
pub const STEPS: Limit = items("steps", 100, "steps of a plan");
/// Tests, limits and other lists inside one step.
pub const STEP_LIST: Limit = items(
    "step-list",
    64,
    "dcgm-diag tests and burn-in telemetry limits of a step",
);
/// Rules of one gate.
pub const RULES: Limit = items("rules", 100, "rules of a gate; health rules of a rollout");
/// Waves of one rollout.
pub const WAVES: Limit = items("waves", 100, "waves of a rollout");
/// Nodes named in one rollout's waves.
pub const CANARIES: Limit = items(
    "canaries",
    1000,
    "nodes named in a rollout's waves, together",
);
/// The text of one plan or gate file.
pub const SPEC_SOURCE: Limit = bytes(
    "spec-source",
    1024 * 1024,
    "a plan, gate or rollout file's text; an issue import document",
);
/// One waiver scope list.
pub const WAIVER_SCOPE: Limit = items("waiver-scope", 1000, "nodes, skus and steps of one waiver");
/// The customers one release is for.
pub const CUSTOMERS: Limit = items("customers", 64, "customers of a release");
/// GPUs of one node.
pub const GPUS: Limit = items(
    "gpus",
    64,
    "GPUs of an inventory; GPU telemetry summaries of a result",
);
/// Measurements of one result.
pub const MEASUREMENTS: Limit = items("measurements", 10_000, "measurements of a result");
/// Parsed test results of one result.
pub const SUB_RESULTS: Limit = items(
    "sub-results",
    10_000,
    "dcgm-diag and junit test results of a result",
);
/// GPU events of one result.
pub const EVENTS: Limit = items("events", 10_000, "GPU events of a result");
/// Telemetry series and summaries of one result.
pub const SERIES: Limit = items(
    "series",
    2048,
    "telemetry series of a result; field summaries of one GPU",
);
/// The log tail a result carries; the agent trims it to this before sending.
pub const LOG_TAIL: Limit = bytes(
    "log-tail",
    64 * 1024,
    "a result's log tail (the agent keeps the last bytes)",
);
/// Messages inside a result.
pub const MESSAGE: Limit = bytes(
    "message",
    16 * 1024,
    "a result's message; a test result's message; a GPU event's detail (the agent trims them)",
);
/// A node token.
pub const TOKEN: Limit = bytes("token", 256, "node tokens; bootstrap tokens");
/// A list RPC's page token.
pub const PAGE_TOKEN: Limit = bytes(
    "page-token",
    1024,
    "page_token of a list request (the controller's own are far shorter)",
);
/// A node's certificate signing request.
pub const CSR: Limit = bytes(
    "csr",
    16384,
    "a node's certificate signing request, PEM (Enroll)",
);
/// Samples (and events) in one batch of fleet telemetry.
pub const TELEMETRY_BATCH: Limit = items(
    "telemetry-batch",
    10_000,
    "samples, and events, in one fleet telemetry batch (PushTelemetry)",
);
/// Fields in one telemetry sample.
pub const SAMPLE_FIELDS: Limit = items(
    "sample-fields",
    256,
    "fields of one fleet telemetry sample (names are `name` bytes at most)",
);

/// Every limit, in the order the documentation lists them.
pub const ALL: &[Limit] = &[
    REQUEST,
    NAME,
    RULE_ID,
    TEST_NAME,
    LABEL_KEY,
    LABEL_VALUE,
    LABELS,
    VERSION,
    INVENTORY_TEXT,
    DESCRIPTION,
    REASON,
    TICKET,
    PATH,
    COMMAND_ARGS,
    COMMAND_ARG,
    ENV_VARS,
    ENV_VALUE,
    COMPONENTS,
    STEPS,
    STEP_LIST,
    RULES,
    WAVES,
    CANARIES,
    SPEC_SOURCE,
    WAIVER_SCOPE,
    CUSTOMERS,
    GPUS,
    MEASUREMENTS,
    SUB_RESULTS,
    EVENTS,
    SERIES,
    LOG_TAIL,
    MESSAGE,
    TOKEN,
    PAGE_TOKEN,
    CSR,
    TELEMETRY_BATCH,
    SAMPLE_FIELDS,
];

/// The problem of a text holding a NUL byte at byte `at`: no name, reason or file a person
/// sends holds one, and PostgreSQL cannot store it.
pub fn nul_byte(at: usize) -> String {
    format!("contains a NUL byte (at byte {at}); remove it")
}

/// How many characters of an offending value an error message shows.
pub const QUOTED_PREFIX_CHARS: usize = 64;

/// `value` in single quotes for an error message: whole when short, else its first
/// [`QUOTED_PREFIX_CHARS`] characters, an ellipsis and its length, so a huge value never makes
/// a huge message.
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTED_PREFIX_CHARS) {
        None => format!("'{value}'"),
        Some((end, _)) => format!("'{}…' ({} bytes)", &value[..end], value.len()),
    }
}

/// The message for a text over `limit`, quoting its prefix.
pub fn too_long(limit: &Limit, value: &str) -> String {
    format!(
        "{} is {} bytes, over the limit of {limit}; shorten it",
        quote(value),
        value.len()
    )
}

/// The message for a list of `n` entries over `limit`.
pub fn too_many(limit: &Limit, n: usize) -> String {
    format!("has {n} entries, over the limit of {limit}; send fewer")
}

/// `Err` with the message when `value` is longer than `limit` or holds a NUL byte (no
/// store keeps one: PostgreSQL's text refuses it, and no name, command or file needs one).
/// Process output, which may hold NUL bytes, is made [`printable`] before it is checked.
pub fn check_text(limit: &Limit, value: &str) -> Result<(), String> {
    debug_assert_eq!(limit.unit, Unit::Bytes, "{} counts items", limit.name);
    if value.len() > limit.max {
        Err(too_long(limit, value))
    } else if let Some(at) = value.find('\0') {
        Err(nul_byte(at))
    } else {
        Ok(())
    }
}

/// Process output as it is kept: each NUL byte becomes U+FFFD (the replacement character),
/// as invalid UTF-8 already does when the output is read.
pub fn printable(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// `Err` with the message when a list of `n` entries is longer than `limit`.
pub fn check_count(limit: &Limit, n: usize) -> Result<(), String> {
    debug_assert_eq!(limit.unit, Unit::Items, "{} counts bytes", limit.name);
    if n > limit.max {
        Err(too_many(limit, n))
    } else {
        Ok(())
    }
}

/// `text` cut to at most `limit` bytes at a character boundary, keeping its end (what a log
/// tail keeps) when `keep_end`, else its start.
pub fn truncate(limit: &Limit, text: &str, keep_end: bool) -> String {
    if text.len() <= limit.max {
        return text.to_owned();
    }
    if keep_end {
        let mut start = text.len() - limit.max;
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_owned()
    } else {
        let mut end = limit.max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_owned()
    }
}

/// The documentation's table of every limit, Markdown (`docs/limits.md` holds it verbatim).
pub fn markdown_table() -> String {
    let mut table = String::from("| limit | at most | applies to |\n| --- | --- | --- |\n");
    for limit in ALL {
        table.push_str(&format!(
            "| `{}` | {} {} | {} |\n",
            limit.name,
            limit.max,
            limit.unit.as_str(),
            limit.applies_to
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_byte_is_refused_in_any_text_and_made_printable_in_process_output() {
        assert_eq!(check_text(&NAME, "gpu-qual"), Ok(()));
        let refused = check_text(&NAME, "gpu\0qual").expect_err("a NUL byte");
        assert!(refused.contains("NUL byte (at byte 3)"), "{refused}");
        assert_eq!(printable("a\0b\0".to_owned()), "a\u{FFFD}b\u{FFFD}");
        assert_eq!(printable("plain".to_owned()), "plain");
        assert_eq!(check_text(&LOG_TAIL, &printable("x\0y".to_owned())), Ok(()));
    }

    #[test]
    fn names_are_unique_and_every_field_limit_fits_a_request() {
        for (idx, limit) in ALL.iter().enumerate() {
            assert!(
                ALL[..idx].iter().all(|other| other.name != limit.name),
                "{} is listed twice",
                limit.name
            );
            if *limit != REQUEST && limit.unit == Unit::Bytes {
                assert!(limit.max * 2 <= REQUEST.max, "{}", limit.name);
            }
        }
    }

    #[test]
    fn the_documented_table_is_the_code() {
        let doc = include_str!("../../docs/limits.md");
        let table = doc
            .split_once("<!-- limits-table-begin -->\n")
            .and_then(|(_, rest)| rest.split_once("<!-- limits-table-end -->"))
            .map(|(table, _)| table)
            .expect("docs/limits.md holds the table between its markers");
        assert!(
            table == markdown_table(),
            "docs/limits.md is stale; put this between its markers:\n{}",
            markdown_table()
        );
    }

    #[test]
    fn quotes_show_a_prefix_of_a_long_value() {
        assert_eq!(quote("r550"), "'r550'");
        let long = "é".repeat(3 * 1024 * 1024);
        let quoted = quote(&long);
        assert!(quoted.len() < 200, "{quoted}");
        assert!(quoted.ends_with("…' (6291456 bytes)"), "{quoted}");
        assert!(quoted.starts_with(&format!("'{}", "é".repeat(QUOTED_PREFIX_CHARS))));
    }

    #[test]
    fn checks_name_the_limit_and_the_size() {
        assert_eq!(check_text(&NAME, &"a".repeat(128)), Ok(()));
        let message = check_text(&NAME, &"a".repeat(129)).unwrap_err();
        assert!(
            message.ends_with("is 129 bytes, over the limit of 128 bytes (name); shorten it"),
            "{message}"
        );
        assert_eq!(check_count(&STEPS, 100), Ok(()));
        assert_eq!(
            check_count(&STEPS, 101).unwrap_err(),
            "has 101 entries, over the limit of 100 items (steps); send fewer"
        );
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        let text = format!("{}end", "é".repeat(LOG_TAIL.max));
        let tail = truncate(&LOG_TAIL, &text, true);
        assert!(tail.len() <= LOG_TAIL.max && tail.ends_with("end"));
        let head = truncate(&MESSAGE, &text, false);
        assert!(head.len() <= MESSAGE.max && head.starts_with('é'));
        assert_eq!(truncate(&NAME, "short", true), "short");
    }
}
