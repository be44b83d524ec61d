//! Reads a JUnit XML report into one sub-result per testcase.
//!
//! `<testsuites>` (optional) holds `<testsuite name=..>`s holding `<testcase classname=..
//! name=..>`s. A testcase with `<failure>` failed, with `<error>` is an error, with `<skipped>`
//! was skipped, and passed otherwise. The sub-result's name is `classname.name` (just `name`
//! without a classname), or `(unnamed testcase N)` (its place in the report) when both are
//! missing or blank, since every sub-result needs a name; its message is the failure's or
//! error's `message` attribute, else the first line of its text.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use tollgate_domain::result::{Outcome, SubResult};

/// Why a report could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    /// Not well-formed XML.
    #[error("the JUnit report is not well-formed XML at byte {position}: {message}")]
    Xml {
        /// Where the reader stopped.
        position: u64,
        /// The XML error.
        message: String,
    },
    /// Well-formed, but no testcase in it.
    #[error("the JUnit report has no <testcase>")]
    Empty,
}

/// The testcase being read.
struct Case {
    suite: String,
    name: String,
    outcome: Outcome,
    message: String,
    /// Inside `<failure>`/`<error>`/`<skipped>` whose text may become the message.
    in_detail: bool,
}

fn attribute(element: &BytesStart<'_>, key: &[u8]) -> Option<String> {
    element
        .attributes()
        .flatten()
        .find(|a| a.key.as_ref() == key)
        .map(|a| {
            a.unescape_value()
                .map(|v| v.into_owned())
                .unwrap_or_else(|_| String::from_utf8_lossy(&a.value).into_owned())
        })
}

/// Parses a JUnit XML report.
///
/// One loop over the XML reader's events: the suite and testcase state it keeps is read and
/// written by every arm, so the loop stays whole rather than spread over helpers.
pub fn parse(xml: &str) -> Result<Vec<SubResult>, JunitError> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut suites: Vec<String> = Vec::new();
    let mut case: Option<Case> = None;
    let mut subs = Vec::new();
    let mut n_cases = 0_usize;
    let mut depth: i64 = 0;
    let error = |reader: &Reader<&[u8]>, message: String| JunitError::Xml {
        position: reader.buffer_position(),
        message,
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|e| error(&reader, e.to_string()))?;
        match event {
            Event::Eof => break,
            Event::Start(ref element) | Event::Empty(ref element) => {
                let empty = matches!(event, Event::Empty(_));
                if !empty {
                    depth += 1;
                }
                match element.name().as_ref() {
                    b"testsuite" if !empty => {
                        suites.push(attribute(element, b"name").unwrap_or_default());
                    }
                    b"testcase" => {
                        let name = attribute(element, b"name").unwrap_or_default();
                        let name = match attribute(element, b"classname") {
                            Some(class) if !class.is_empty() => format!("{class}.{name}"),
                            _ => name,
                        };
                        n_cases += 1;
                        let name = if name.trim().is_empty() {
                            format!("(unnamed testcase {n_cases})")
                        } else {
                            name
                        };
                        let new = Case {
                            suite: suites.last().cloned().unwrap_or_default(),
                            name,
                            outcome: Outcome::Passed,
                            message: String::new(),
                            in_detail: false,
                        };
                        if empty {
                            subs.push(finish(new));
                        } else {
                            case = Some(new);
                        }
                    }
                    tag @ (b"failure" | b"error" | b"skipped") => {
                        if let Some(case) = &mut case {
                            let outcome = match tag {
                                b"failure" => Outcome::Failed,
                                b"error" => Outcome::Error,
                                _ => Outcome::Skipped,
                            };
                            // A failure outweighs an error, which outweighs a skip.
                            let rank = |o: Outcome| match o {
                                Outcome::Failed => 3,
                                Outcome::Error => 2,
                                Outcome::Skipped => 1,
                                _ => 0,
                            };
                            if rank(outcome) > rank(case.outcome) {
                                case.outcome = outcome;
                                case.message = attribute(element, b"message").unwrap_or_default();
                                case.in_detail = !empty && case.message.is_empty();
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Text(text) => {
                if let Some(case) = &mut case
                    && case.in_detail
                {
                    let text = text.decode().map(|t| t.into_owned()).unwrap_or_default();
                    case.message = text.lines().next().unwrap_or_default().trim().to_owned();
                    case.in_detail = false;
                }
            }
            Event::End(element) => {
                depth -= 1;
                match element.name().as_ref() {
                    b"testsuite" => {
                        suites.pop();
                    }
                    b"testcase" => {
                        if let Some(done) = case.take() {
                            subs.push(finish(done));
                        }
                    }
                    b"failure" | b"error" | b"skipped" => {
                        if let Some(case) = &mut case {
                            case.in_detail = false;
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(error(
            &reader,
            format!("the document ends with {depth} element(s) still open"),
        ));
    }
    if subs.is_empty() {
        return Err(JunitError::Empty);
    }
    Ok(subs)
}

/// The sub-result of a testcase, its texts as the controller keeps them (a NUL byte as
/// U+FFFD, `limits::printable`) and within its limits (cut at the end).
fn finish(case: Case) -> SubResult {
    use tollgate_domain::limits::{MESSAGE, TEST_NAME};
    SubResult {
        source: "junit".to_owned(),
        suite: super::kept_text(&TEST_NAME, case.suite),
        name: super::kept_text(&TEST_NAME, case.name),
        gpu_index: None,
        outcome: case.outcome,
        message: super::kept_text(&MESSAGE, case.message),
        level: None,
    }
}

/// The step's outcome over its testcases and the command's exit code, with a message that
/// counts the outcomes and names the first failing testcases: failed if any testcase
/// failed; error if any errored and none failed; failed if every testcase passed or was
/// skipped but the command exited non-zero (the suite said it failed in a way the report does
/// not show, so it must not pass); passed otherwise.
pub fn step_outcome(subs: &[SubResult], exit_code: Option<i32>) -> (Outcome, String) {
    let count = |outcome: Outcome| subs.iter().filter(|s| s.outcome == outcome).count();
    let (n_failed, n_error, n_skipped) = (
        count(Outcome::Failed),
        count(Outcome::Error),
        count(Outcome::Skipped),
    );
    let mut summary = format!(
        "{} testcase(s): {} passed, {n_failed} failed, {n_error} error, {n_skipped} skipped",
        subs.len(),
        count(Outcome::Passed)
    );
    let failing = tollgate_domain::result::name_failing(subs);
    if !failing.is_empty() {
        summary.push_str(&format!("; {failing}"));
    }
    if n_failed > 0 {
        (Outcome::Failed, summary)
    } else if n_error > 0 {
        (Outcome::Error, summary)
    } else if let Some(code) = exit_code.filter(|code| *code != 0) {
        (
            Outcome::Failed,
            format!("exit code {code} with no failing testcase; {summary}"),
        )
    } else {
        (Outcome::Passed, summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="all">
  <testsuite name="nccl" tests="4">
    <testcase classname="nccl.allreduce" name="bw_8gpu" time="1.2"/>
    <testcase classname="nccl.allreduce" name="bw_16gpu">
      <failure message="busbw 120 &lt; 180 GB/s" type="AssertionError">trace</failure>
    </testcase>
    <testcase classname="nccl.p2p" name="setup"><error>could not open /dev/nvidia0
more</error></testcase>
    <testcase name="ib"><skipped message="no IB"/></testcase>
  </testsuite>
  <testsuite name="cuda"><testcase classname="cuda" name="saxpy"><system-out>ok</system-out></testcase></testsuite>
</testsuites>"#;

    #[test]
    fn testcases_become_sub_results() {
        let subs = parse(REPORT).expect("parses");
        let view: Vec<(&str, &str, Outcome, &str)> = subs
            .iter()
            .map(|s| {
                (
                    s.suite.as_str(),
                    s.name.as_str(),
                    s.outcome,
                    s.message.as_str(),
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                ("nccl", "nccl.allreduce.bw_8gpu", Outcome::Passed, ""),
                (
                    "nccl",
                    "nccl.allreduce.bw_16gpu",
                    Outcome::Failed,
                    "busbw 120 < 180 GB/s"
                ),
                (
                    "nccl",
                    "nccl.p2p.setup",
                    Outcome::Error,
                    "could not open /dev/nvidia0"
                ),
                ("nccl", "ib", Outcome::Skipped, "no IB"),
                ("cuda", "cuda.saxpy", Outcome::Passed, ""),
            ]
        );
        assert!(subs.iter().all(|s| s.source == "junit"));
        let (outcome, message) = step_outcome(&subs, Some(1));
        assert_eq!(outcome, Outcome::Failed);
        assert_eq!(
            message,
            "5 testcase(s): 2 passed, 1 failed, 1 error, 1 skipped; \
             nccl.allreduce.bw_16gpu failed (busbw 120 < 180 GB/s), \
             nccl.p2p.setup error (could not open /dev/nvidia0)"
        );
    }

    #[test]
    fn step_outcome_rules() {
        let sub = |outcome| SubResult {
            source: "junit".into(),
            suite: "s".into(),
            name: "n".into(),
            gpu_index: None,
            outcome,
            message: String::new(),
            level: None,
        };
        let passed = [sub(Outcome::Passed), sub(Outcome::Skipped)];
        assert_eq!(step_outcome(&passed, Some(0)).0, Outcome::Passed);
        let (outcome, message) = step_outcome(&passed, Some(2));
        assert_eq!(outcome, Outcome::Failed);
        assert!(
            message.starts_with("exit code 2 with no failing testcase"),
            "{message}"
        );
        assert_eq!(
            step_outcome(&[sub(Outcome::Passed), sub(Outcome::Error)], Some(1)).0,
            Outcome::Error
        );
    }

    #[test]
    fn a_testcase_without_a_name_is_named_by_its_place() {
        // Found by fuzzing: the controller refuses a sub-result without a name, and with it
        // the whole step result.
        let subs = parse(
            r#"<testsuite name="s"><testcase name="a"/><testcase classname+="c" n`ame="n"><failure message="m">t</failure></testcase><testcase name=" "/></testsuite>"#,
        )
        .expect("ok");
        let names: Vec<&str> = subs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "(unnamed testcase 2)", "(unnamed testcase 3)"]);
        // Also found by fuzzing: NUL bytes in a name are kept as the controller keeps them.
        let subs =
            parse("<testsuite name=\"s\"><testcase name=\"a\0\0b\"/></testsuite>").expect("ok");
        assert_eq!(subs[0].name, "a\u{FFFD}\u{FFFD}b");
        let back: SubResult =
            tollgate_wire::FromProto::from_proto(tollgate_wire::ToProto::to_proto(&subs[0]))
                .expect("the controller takes it");
        assert_eq!(back, subs[0], "unchanged on the wire");
        // And a name over the controller's limit is cut to it (found by fuzzing too).
        let long = "n".repeat(tollgate_domain::limits::TEST_NAME.max + 10);
        let subs = parse(&format!(
            "<testsuite><testcase name=\"{long}\"/></testsuite>"
        ))
        .expect("ok");
        assert_eq!(subs[0].name.len(), tollgate_domain::limits::TEST_NAME.max);
        tollgate_wire::FromProto::from_proto(tollgate_wire::ToProto::to_proto(&subs[0]))
            .map(|_: SubResult| ())
            .expect("the controller takes it");
        for sub in subs {
            tollgate_wire::FromProto::from_proto(tollgate_wire::ToProto::to_proto(&sub))
                .map(|_: SubResult| ())
                .expect("the controller takes it");
        }
    }

    #[test]
    fn a_bare_testsuite_parses() {
        let subs = parse(r#"<testsuite name="s"><testcase name="a"/></testsuite>"#).expect("ok");
        assert_eq!(subs[0].suite, "s");
        assert_eq!(subs[0].name, "a");
    }

    #[test]
    fn malformed_and_empty_reports_are_errors() {
        let error = parse("<testsuite><testcase name=\"a\"></testsuite>").expect_err("mismatch");
        assert!(error.to_string().contains("not well-formed XML"), "{error}");
        let error = parse("<testsuite name=\"s\"><testcase name=\"a\">").expect_err("cut short");
        assert!(error.to_string().contains("still open"), "{error}");
        let error = parse("<testsuites/>").expect_err("empty");
        assert!(matches!(error, JunitError::Empty));
        assert!(parse("not xml at all <<<").is_err());
    }
}
