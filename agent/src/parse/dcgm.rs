//! Reads `dcgmi diag -j` output into one sub-result per test per GPU.
//!
//! # Grading
//!
//! DCGM serializes a warning-level result as `"Fail"` in JSON (the text table shows `Warn`), so a
//! `"Fail"` is graded by its `warnings[].error_severity` (`dcgmErrorSeverity_t`): 1
//! (`DCGM_ERROR_MONITOR`, "can be monitored") is warning-level, 2 (`DCGM_ERROR_ISOLATE`) and 3
//! (`DCGM_ERROR_RESET`) are real failures. A `"Fail"` passes only when it has warnings and every
//! one of them has severity 1 or lower; a `"Fail"` without warnings stays failed.
//!
//! | status | sub-result |
//! | --- | --- |
//! | `Pass` | passed |
//! | `Skip`, `Not Run` | skipped (a gate counts a skipped required test as missing) |
//! | `Warn` | passed (warning-level, as above) |
//! | `Fail` | failed, unless every warning is warning-level |
//! | anything else | error |
//!
//! A `runtime_error` means the diagnostic did not run: the step is an `error`, not a GPU
//! failure. With `--iterations N` the output is `{"iterations": [...], "Overall Result": ..}`;
//! each test × GPU is then graded over all iterations, and failed if it failed in any of them.
//! Unknown fields are ignored, so newer DCGM versions still parse.

use serde::Deserialize;
use std::collections::BTreeMap;
use tollgate_domain::limits::{MESSAGE, TEST_NAME};
use tollgate_domain::result::{Outcome, SubResult};

/// The highest `error_severity` that is only a warning (`DCGM_ERROR_MONITOR`).
pub const WARNING_SEVERITY: i64 = 1;

/// Why `dcgmi diag` output could not be graded.
#[derive(Debug, thiserror::Error)]
pub enum DcgmError {
    /// Not JSON, or cut short.
    #[error("dcgmi diag output is not valid JSON ({0}); was it cut short?")]
    Json(serde_json::Error),
    /// JSON, but not a diagnostic report.
    #[error(
        "dcgmi diag output has no \"DCGM Diagnostic\" object (nor an \"iterations\" list); top-level keys: {0}"
    )]
    NotADiagnostic(String),
    /// The diagnostic did not run.
    #[error("dcgmi diag did not run: {0}")]
    Runtime(String),
    /// Nothing was tested.
    #[error("dcgmi diag reported no test results")]
    Empty,
}

#[derive(Deserialize)]
struct Diagnostic {
    #[serde(default)]
    test_categories: Vec<Category>,
    #[serde(default)]
    runtime_error: Option<String>,
}

#[derive(Deserialize)]
struct Category {
    category: String,
    #[serde(default)]
    tests: Vec<Test>,
}

#[derive(Deserialize)]
struct Test {
    name: String,
    #[serde(default)]
    results: Vec<EntityResult>,
}

#[derive(Deserialize)]
struct EntityResult {
    #[serde(default)]
    entity_group: String,
    entity_id: u32,
    status: String,
    #[serde(default)]
    warnings: Vec<Warning>,
}

#[derive(Deserialize)]
struct Warning {
    #[serde(default)]
    error_severity: i64,
    #[serde(default)]
    warning: String,
}

/// Grades `dcgmi diag -j` output (plain or `--iterations`) run at `level`.
pub fn parse(json: &str, level: u8) -> Result<Vec<SubResult>, DcgmError> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(DcgmError::Json)?;
    let runs: Vec<serde_json::Value> =
        match (&value.get("DCGM Diagnostic"), &value.get("iterations")) {
            (Some(_), _) => vec![value],
            (None, Some(serde_json::Value::Array(iterations))) => iterations.clone(),
            _ => {
                let keys = value
                    .as_object()
                    .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_else(|| "none (not an object)".to_owned());
                return Err(DcgmError::NotADiagnostic(keys));
            }
        };
    // (category, test, gpu) -> graded sub-result; the worst iteration wins.
    let mut graded: BTreeMap<(usize, String, u32), SubResult> = BTreeMap::new();
    let mut category_order: Vec<String> = Vec::new();
    for run in runs {
        let Some(diagnostic) = run.get("DCGM Diagnostic") else {
            return Err(DcgmError::NotADiagnostic(
                "an iteration without it".to_owned(),
            ));
        };
        let diagnostic: Diagnostic =
            serde_json::from_value(diagnostic.clone()).map_err(DcgmError::Json)?;
        if let Some(error) = diagnostic.runtime_error.filter(|e| !e.trim().is_empty()) {
            return Err(DcgmError::Runtime(error));
        }
        for category in diagnostic.test_categories {
            let category_idx = match category_order.iter().position(|c| *c == category.category) {
                Some(idx) => idx,
                None => {
                    category_order.push(category.category.clone());
                    category_order.len() - 1
                }
            };
            for test in category.tests {
                for entity in test.results {
                    if !entity.entity_group.is_empty() && entity.entity_group != "GPU" {
                        continue;
                    }
                    let (outcome, message) = grade(&entity);
                    let sub = SubResult {
                        source: "dcgm-diag".to_owned(),
                        // Texts as the controller keeps them: a NUL byte as U+FFFD, cut
                        // to their limits.
                        suite: super::kept_text(&TEST_NAME, category.category.clone()),
                        name: super::kept_text(&TEST_NAME, test.name.clone()),
                        gpu_index: Some(entity.entity_id),
                        outcome,
                        message: super::kept_text(&MESSAGE, message),
                        level: Some(level),
                    };
                    let key = (category_idx, test.name.clone(), entity.entity_id);
                    match graded.get(&key) {
                        Some(seen) if severity(seen.outcome) >= severity(sub.outcome) => {}
                        _ => {
                            graded.insert(key, sub);
                        }
                    }
                }
            }
        }
    }
    if graded.is_empty() {
        return Err(DcgmError::Empty);
    }
    Ok(graded.into_values().collect())
}

/// Orders outcomes so that a later iteration can only make a test look worse.
fn severity(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Passed => 0,
        Outcome::Skipped => 1,
        Outcome::Error | Outcome::Lost => 2,
        Outcome::Failed => 3,
    }
}

fn grade(entity: &EntityResult) -> (Outcome, String) {
    let message = entity
        .warnings
        .iter()
        .map(|w| w.warning.trim())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let outcome = match entity.status.as_str() {
        "Pass" | "Warn" => Outcome::Passed,
        "Skip" | "Not Run" => Outcome::Skipped,
        "Fail"
            if !entity.warnings.is_empty()
                && entity
                    .warnings
                    .iter()
                    .all(|w| w.error_severity <= WARNING_SEVERITY) =>
        {
            Outcome::Passed
        }
        "Fail" => Outcome::Failed,
        other => {
            return (
                Outcome::Error,
                format!("unknown dcgmi diag status '{other}'"),
            );
        }
    };
    let message = match (outcome, message.is_empty()) {
        (Outcome::Passed, false) => format!("warning: {message}"),
        (Outcome::Failed, true) => "failed (no warning given)".to_owned(),
        _ => message,
    };
    (outcome, message)
}

/// The step's outcome and message over its sub-results: failed if any failed, passed otherwise
/// (a skipped test does not fail the step; the gate counts it as missing).
pub fn step_outcome(subs: &[SubResult]) -> (Outcome, String) {
    let count = |outcome: Outcome| subs.iter().filter(|s| s.outcome == outcome).count();
    let (n_failed, n_error, n_skipped) = (
        count(Outcome::Failed),
        count(Outcome::Error),
        count(Outcome::Skipped),
    );
    // Names each failing test with its GPU and warning, as a JUnit step names its testcases.
    let failing = tollgate_domain::result::name_failing(subs);
    if n_failed > 0 {
        return (Outcome::Failed, format!("dcgmi diag failed: {failing}"));
    }
    if n_error > 0 {
        return (
            Outcome::Error,
            format!("dcgmi diag reported {n_error} result(s) with an unknown status: {failing}"),
        );
    }
    (
        Outcome::Passed,
        format!(
            "dcgmi diag passed: {} result(s), {n_skipped} skipped",
            subs.len()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> String {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/dcgm/synthetic_dcgmi_diag_r2_fail.json"
        );
        std::fs::read_to_string(path).expect("the shared dcgm fixture is present")
    }

    fn find<'a>(subs: &'a [SubResult], name: &str, gpu: u32) -> &'a SubResult {
        subs.iter()
            .find(|s| s.name == name && s.gpu_index == Some(gpu))
            .expect("sub-result present")
    }

    #[test]
    fn synthetic_fixture_grades_each_test_per_gpu() {
        let subs = parse(&fixture(), 2).expect("fixture parses");
        assert_eq!(subs.len(), 6);
        let memory = find(&subs, "memory", 1);
        assert_eq!(memory.outcome, Outcome::Failed);
        assert_eq!(memory.suite, "Hardware");
        assert_eq!(memory.level, Some(2));
        assert!(memory.message.contains("uncorrectable error on GPU 1"));
        assert_eq!(find(&subs, "memory", 0).outcome, Outcome::Passed);
        assert_eq!(find(&subs, "pcie", 1).outcome, Outcome::Skipped);
        assert_eq!(find(&subs, "software", 0).source, "dcgm-diag");
        let (outcome, message) = step_outcome(&subs);
        assert_eq!(outcome, Outcome::Failed);
        assert_eq!(
            message,
            "dcgmi diag failed: memory on GPU 1 failed (SYNTHETIC EXAMPLE: memory test found an uncorrectable error on GPU 1)"
        );
    }

    #[test]
    fn warning_level_fail_passes_and_unknown_fields_are_ignored() {
        let json = r#"{"DCGM Diagnostic": {"new_field": 1, "test_categories": [{"category": "Hardware",
          "tests": [{"name": "memory", "results": [
            {"entity_group": "GPU", "entity_group_id": 1, "entity_id": 0, "status": "Fail", "extra": true,
             "warnings": [{"error_category": 1, "error_id": 3, "error_severity": 1, "warning": "clocks low"}]},
            {"entity_group": "GPU", "entity_group_id": 1, "entity_id": 1, "status": "Fail"}],
            "test_summary": {"status": "Fail"}}]}]}, "something_else": []}"#;
        let subs = parse(json, 1).expect("parses");
        assert_eq!(find(&subs, "memory", 0).outcome, Outcome::Passed);
        assert_eq!(find(&subs, "memory", 0).message, "warning: clocks low");
        assert_eq!(find(&subs, "memory", 1).outcome, Outcome::Failed);
    }

    #[test]
    fn truncated_and_foreign_json_are_errors_with_a_clear_message() {
        let text = fixture();
        let cut = &text[..text.len() / 2];
        let error = parse(cut, 2).expect_err("truncated");
        assert!(error.to_string().contains("not valid JSON"), "{error}");
        let error = parse(r#"{"results": []}"#, 2).expect_err("not a diagnostic");
        assert!(
            error.to_string().contains("top-level keys: results"),
            "{error}"
        );
        let error = parse("[1, 2]", 2).expect_err("not an object");
        assert!(error.to_string().contains("not an object"), "{error}");
    }

    #[test]
    fn runtime_error_means_the_diagnostic_did_not_run() {
        let json = r#"{"DCGM Diagnostic": {"runtime_error": "Error connecting to host engine"}}"#;
        let error = parse(json, 3).expect_err("runtime error");
        assert!(matches!(error, DcgmError::Runtime(ref e) if e.contains("host engine")));
    }

    #[test]
    fn iterations_fail_a_test_that_failed_in_any_iteration() {
        let run = |status: &str| {
            format!(
                r#"{{"DCGM Diagnostic": {{"test_categories": [{{"category": "Hardware", "tests": [{{"name": "memory",
                  "results": [{{"entity_group": "GPU", "entity_group_id": 1, "entity_id": 0, "status": "{status}",
                  "warnings": [{{"error_category": 10, "error_id": 0, "error_severity": 2, "warning": "bad row"}}]}}],
                  "test_summary": {{"status": "{status}"}}}}]}}]}}}}"#
            )
        };
        let json = format!(
            r#"{{"iterations": [{}, {}, {}], "Overall Result": "Fail", "warning": "x"}}"#,
            run("Pass"),
            run("Fail"),
            run("Pass")
        );
        let subs = parse(&json, 2).expect("parses");
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].outcome, Outcome::Failed);
        assert_eq!(subs[0].message, "bad row");
    }

    #[test]
    fn huge_output_parses() {
        let result = r#"{"entity_group": "GPU", "entity_group_id": 1, "entity_id": 0, "status": "Pass", "info": ["INFO"]}"#
            .replace("INFO", &"x".repeat(10_000));
        let tests: Vec<String> = (0..500)
            .map(|n| format!(r#"{{"name": "t{n}", "results": [{result}], "test_summary": {{"status": "Pass"}}}}"#))
            .collect();
        let json = format!(
            r#"{{"DCGM Diagnostic": {{"test_categories": [{{"category": "Stress", "tests": [{}]}}]}}}}"#,
            tests.join(",")
        );
        assert!(json.len() > 5_000_000);
        let subs = parse(&json, 4).expect("parses");
        assert_eq!(subs.len(), 500);
        assert_eq!(step_outcome(&subs).0, Outcome::Passed);
    }

    #[test]
    fn overlong_texts_are_cut_to_what_the_controller_keeps() {
        let long = "n".repeat(TEST_NAME.max + 10);
        let warning = "w".repeat(MESSAGE.max + 10);
        let json = format!(
            r#"{{"DCGM Diagnostic": {{"test_categories": [{{"category": "{long}", "tests": [{{"name": "{long}",
              "results": [{{"entity_group": "GPU", "entity_group_id": 1, "entity_id": 0, "status": "Fail",
              "warnings": [{{"error_category": 10, "error_id": 0, "error_severity": 2, "warning": "{warning}"}}]}}],
              "test_summary": {{"status": "Fail"}}}}]}}]}}}}"#
        );
        let subs = parse(&json, 2).expect("parses");
        assert_eq!(subs[0].suite.len(), TEST_NAME.max);
        assert_eq!(subs[0].name.len(), TEST_NAME.max);
        assert_eq!(subs[0].message.len(), MESSAGE.max);
    }
}
