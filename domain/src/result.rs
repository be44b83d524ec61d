//! Step results: what one attempt of one step on one node produced.

use crate::fleet::Inventory;
use crate::telemetry::{GpuEvent, GpuTelemetry};
use crate::{JobId, Timestamp};
use serde::{Deserialize, Serialize};

/// How a step attempt ended. `Failed` is the thing under test failing; `Error` is the harness
/// failing (timeout, crash, unparseable output). They are never conflated.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::AsRefStr,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::EnumIter,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case", parse_err_ty = String, parse_err_fn = crate::names::unknown::<Self>)]
pub enum Outcome {
    /// The thing under test passed.
    Passed,
    /// The thing under test failed.
    Failed,
    /// The harness failed.
    Error,
    /// Not run.
    Skipped,
    /// The node stopped answering while the step ran.
    Lost,
}

impl Outcome {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A named number a step reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Name (`membw_gbps`).
    pub name: String,
    /// Value.
    pub value: f64,
    /// Unit, when given.
    pub unit: Option<String>,
}

/// The result of one step attempt on one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// The job.
    pub job_id: JobId,
    /// Position of the step in the plan.
    pub step_index: u32,
    /// Step name.
    pub step_name: String,
    /// Attempt, from 1.
    pub attempt: u32,
    /// Lease epoch the attempt ran under.
    pub lease_epoch: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Exit code of the step's process.
    pub exit_code: Option<i32>,
    /// Start.
    pub started_at: Timestamp,
    /// End.
    pub finished_at: Timestamp,
    /// Numbers reported.
    pub measurements: Vec<Measurement>,
    /// Per-GPU telemetry summaries.
    pub telemetry: Vec<GpuTelemetry>,
    /// Events seen during the attempt.
    pub events: Vec<GpuEvent>,
    /// Inventory observed at the start of the attempt.
    pub inventory: Inventory,
    /// Last lines of output.
    pub log_tail: String,
    /// Why the outcome is what it is.
    pub message: String,
    /// Per-test results from a parser (dcgmi diag, JUnit); empty for plain steps.
    #[serde(default)]
    pub sub_results: Vec<SubResult>,
    /// Inventory observed when the attempt ended (a flash step changes it); `None` when it
    /// could not be read, and in results recorded before it was kept.
    #[serde(default)]
    pub inventory_at_end: Option<Inventory>,
    /// Per GPU and field, a downsampled series for charts (at most
    /// [`crate::telemetry::MAX_SERIES_POINTS`] points each); not used by gates.
    #[serde(default)]
    pub series: Vec<crate::telemetry::TelemetrySeries>,
}

impl StepResult {
    /// Where this attempt stands among the attempts of its step: by lease epoch, then attempt
    /// number. A job reassigned after an agent restart numbers its attempts from 1 again under
    /// the new epoch, so the attempt number alone does not say which attempt came last.
    pub fn order_key(&self) -> (u64, u32) {
        (self.lease_epoch, self.attempt)
    }

    /// The inventory the attempt ran on, as the gate judges it: the one observed when the
    /// attempt ended, when that was observed, else the one observed when it started. A flash
    /// changes the inventory during its own attempt, so what it installed is what the step
    /// reports on (a flash that needs a reboot is checked after it); the steps after it
    /// observe that inventory at their own start. An inventory that changed during any other
    /// step is judged on its end too: a step that ended on another build did not qualify
    /// this one.
    pub fn ran_on(&self) -> &Inventory {
        self.inventory_at_end.as_ref().unwrap_or(&self.inventory)
    }

    /// Cuts the result to what the controller keeps (`crate::limits`), saying in its message
    /// what was left out, so that a step that printed more than the limits allow still
    /// delivers its result: the controller refuses an overlong list whole, and a refused
    /// result is lost. Test results keep every one that did not pass before any that passed
    /// (the gate and the report judge on failures); measurements, events and series keep
    /// their first entries; the log tail keeps its end. The outcome is never changed.
    pub fn fit_to_limits(&mut self) {
        use crate::limits::{self, Limit};
        fn cut<T>(list: &mut Vec<T>, limit: &Limit, what: &str, notes: &mut Vec<String>) {
            if list.len() > limit.max {
                notes.push(format!(
                    "{} {what} over the limit of {} not kept",
                    list.len() - limit.max,
                    limit.max
                ));
                list.truncate(limit.max);
            }
        }
        let mut notes = Vec::new();
        if self.sub_results.len() > limits::SUB_RESULTS.max {
            // Stable: within each group the parser's order stays.
            self.sub_results
                .sort_by_key(|sub| sub.outcome == Outcome::Passed);
        }
        cut(
            &mut self.sub_results,
            &limits::SUB_RESULTS,
            "test results",
            &mut notes,
        );
        cut(
            &mut self.measurements,
            &limits::MEASUREMENTS,
            "measurements",
            &mut notes,
        );
        cut(&mut self.events, &limits::EVENTS, "GPU events", &mut notes);
        cut(
            &mut self.series,
            &limits::SERIES,
            "telemetry series",
            &mut notes,
        );
        self.log_tail = limits::truncate(
            &limits::LOG_TAIL,
            &limits::printable(std::mem::take(&mut self.log_tail)),
            true,
        );
        let mut message = limits::printable(std::mem::take(&mut self.message));
        if !notes.is_empty() {
            let note = format!(" ({})", notes.join("; "));
            let room = limits::MESSAGE.max.saturating_sub(note.len());
            message = limits::truncate(
                &Limit {
                    max: room,
                    ..limits::MESSAGE
                },
                &message,
                false,
            );
            message.push_str(&note);
        }
        self.message = limits::truncate(&limits::MESSAGE, &message, false);
    }
}

/// The final attempt of each step among `results`, as `(step index, index into results)`, by
/// step index: the attempt with the highest [`StepResult::order_key`]. The one place that
/// decides which attempt of a step counts; the job's end state, the restart decision, the
/// gate and the report all ask it.
pub fn final_attempts(results: &[StepResult]) -> Vec<(u32, usize)> {
    // The gate asks this for every job it takes in: one allocation per job (at most one entry
    // per result) instead of growing the list step by step.
    let mut latest: Vec<(u32, usize)> = Vec::with_capacity(results.len());
    for (i, result) in results.iter().enumerate() {
        // Results are mostly stored in step order: a step after every step seen so far is
        // appended without a search.
        if latest
            .last()
            .is_none_or(|(step, _)| *step < result.step_index)
        {
            latest.push((result.step_index, i));
            continue;
        }
        match latest.binary_search_by_key(&result.step_index, |(step, _)| *step) {
            // `>=`: of two results with the same key (never stored twice), the later wins.
            Ok(pos) => {
                if result.order_key() >= results[latest[pos].1].order_key() {
                    latest[pos].1 = i;
                }
            }
            Err(pos) => latest.insert(pos, (result.step_index, i)),
        }
    }
    latest
}

/// The final attempt of `step_index` among `results` (see [`final_attempts`]).
pub fn final_attempt<'a>(
    results: impl IntoIterator<Item = &'a StepResult>,
    step_index: u32,
) -> Option<&'a StepResult> {
    results
        .into_iter()
        .filter(|r| r.step_index == step_index)
        // `max_by_key` keeps the last of equal keys, as `final_attempts` does.
        .max_by_key(|r| r.order_key())
}

/// Checks that a result carries only what its step's kind produces. An `inventory-check`
/// compares versions and runs no program: a result of one with measurements or test results
/// did not come from that step, and a gate must not count its numbers.
pub fn check_fits_step(
    result: &StepResult,
    step: &crate::plan::Step,
) -> Result<(), Vec<crate::release::FieldError>> {
    let mut errors = Vec::new();
    if let crate::plan::StepKind::InventoryCheck { .. } = step.kind {
        let kind = step.kind.name();
        if !result.measurements.is_empty() {
            errors.push(crate::release::FieldError {
                field: "measurements".into(),
                message: format!(
                    "step {} is an {kind} step, which reports no measurements; {} were sent",
                    step.name,
                    result.measurements.len()
                ),
            });
        }
        if !result.sub_results.is_empty() {
            errors.push(crate::release::FieldError {
                field: "sub_results".into(),
                message: format!(
                    "step {} is an {kind} step, which reports no test results; {} were sent",
                    step.name,
                    result.sub_results.len()
                ),
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// One test inside a step, as a result parser read it (a dcgmi diag test on one GPU, a JUnit
/// testcase).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubResult {
    /// The parser: `dcgm-diag` or `junit`.
    pub source: String,
    /// The group the test belongs to (a dcgm category, a JUnit testsuite).
    pub suite: String,
    /// Test name (`memory`, `pcie`, a testcase name).
    pub name: String,
    /// The GPU, for per-GPU tests.
    pub gpu_index: Option<u32>,
    /// How it ended; a skipped required test counts as missing, never as passed.
    pub outcome: Outcome,
    /// What the parser said.
    pub message: String,
    /// The diagnostic level (`dcgmi diag -r LEVEL`), for dcgm-diag.
    pub level: Option<u8>,
}

/// How many failing sub-results a step's one-line message names before "and N more".
pub const NAMED_IN_MESSAGE: usize = 3;

/// How many passing (or skipped) sub-results a bounded view (a run, a report) lists after
/// every failing one; it says how many more there were.
pub const LISTED_PASSING: usize = 20;

/// Characters of a sub-result's message a one-line step message keeps.
const MESSAGE_CHARS: usize = 120;

impl SubResult {
    /// Whether it counts against its step: it failed or errored. A skipped test is missing,
    /// not failing.
    pub fn is_failing(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Failed | Outcome::Error | Outcome::Lost
        )
    }

    /// What a person calls it: the test name, and the GPU for a per-GPU test
    /// (`memory on GPU 3`).
    pub fn label(&self) -> String {
        match self.gpu_index {
            Some(gpu) => format!("{} on GPU {gpu}", self.name),
            None => self.name.clone(),
        }
    }

    /// The failure's signature: the test and how it ended, without the GPU or the message,
    /// so the same test failing on any node (or GPU) is one failure group.
    pub fn failure_signature(&self) -> String {
        format!("{} {}", self.name, self.outcome)
    }

    /// The first line of its message, cut to a length a one-line summary can carry.
    pub fn first_message_line(&self) -> String {
        let line = self.message.lines().next().unwrap_or_default().trim();
        match line.char_indices().nth(MESSAGE_CHARS) {
            None => line.to_owned(),
            Some((end, _)) => format!("{}…", &line[..end]),
        }
    }
}

/// Names the first [`NAMED_IN_MESSAGE`] failing sub-results, in the parser's order, with how
/// each ended and the first line of its message, then how many more failed:
/// `a.b failed (busbw 120 < 180), memory on GPU 3 failed (ECC) and 2 more`. Empty when none
/// failed.
pub fn name_failing(subs: &[SubResult]) -> String {
    let failing: Vec<&SubResult> = subs.iter().filter(|s| s.is_failing()).collect();
    let mut named: Vec<String> = failing
        .iter()
        .take(NAMED_IN_MESSAGE)
        .map(|s| {
            let message = s.first_message_line();
            if message.is_empty() {
                format!("{} {}", s.label(), s.outcome)
            } else {
                format!("{} {} ({message})", s.label(), s.outcome)
            }
        })
        .collect();
    let more = failing.len().saturating_sub(NAMED_IN_MESSAGE);
    if more > 0
        && let Some(last) = named.last_mut()
    {
        last.push_str(&format!(" and {more} more"));
    }
    named.join(", ")
}

/// The sub-results a bounded view lists: every failing one first, then up to `passing_cap`
/// of the others (each group in the parser's order); and how many others it leaves out.
pub fn listed(subs: &[SubResult], passing_cap: usize) -> (Vec<&SubResult>, usize) {
    let mut shown: Vec<&SubResult> = subs.iter().filter(|s| s.is_failing()).collect();
    let others = subs.iter().filter(|s| !s.is_failing());
    let n_others = others.clone().count();
    shown.extend(others.take(passing_cap));
    (shown, n_others.saturating_sub(passing_cap))
}

#[cfg(test)]
mod sub_result_tests {
    use super::*;

    fn sub(name: &str, gpu: Option<u32>, outcome: Outcome, message: &str) -> SubResult {
        SubResult {
            source: "junit".into(),
            suite: "s".into(),
            name: name.into(),
            gpu_index: gpu,
            outcome,
            message: message.into(),
            level: None,
        }
    }

    #[test]
    fn the_first_failing_tests_are_named_with_their_first_message_line() {
        let subs = [
            sub("a", None, Outcome::Passed, ""),
            sub("b", None, Outcome::Failed, "busbw 120 < 180\ntrace"),
            sub("memory", Some(3), Outcome::Failed, ""),
            sub("c", None, Outcome::Skipped, "no IB"),
            sub("d", None, Outcome::Error, "no device"),
            sub("e", None, Outcome::Failed, "x"),
            sub("f", None, Outcome::Failed, "y"),
        ];
        assert_eq!(
            name_failing(&subs),
            "b failed (busbw 120 < 180), memory on GPU 3 failed, d error (no device) and 2 more"
        );
        assert_eq!(name_failing(&subs[..1]), "");
        assert_eq!(
            sub("memory", Some(3), Outcome::Failed, "").failure_signature(),
            "memory failed"
        );
        let long = sub("g", None, Outcome::Failed, &"z".repeat(500));
        assert_eq!(long.first_message_line().chars().count(), MESSAGE_CHARS + 1);
    }

    #[test]
    fn a_bounded_listing_puts_failing_first_and_counts_the_rest() {
        let subs = [
            sub("a", None, Outcome::Passed, ""),
            sub("b", None, Outcome::Passed, ""),
            sub("c", None, Outcome::Failed, ""),
            sub("d", None, Outcome::Skipped, ""),
        ];
        let (shown, left_out) = listed(&subs, 1);
        let names: Vec<&str> = shown.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["c", "a"]);
        assert_eq!(left_out, 2);
        let (shown, left_out) = listed(&subs, 10);
        assert_eq!(shown.len(), 4);
        assert_eq!(left_out, 0);
    }
}

#[cfg(test)]
mod fit_tests {
    use super::*;
    use crate::limits;
    use crate::test_support::{step_result, with_measurement};

    fn sub(i: usize, outcome: Outcome) -> SubResult {
        SubResult {
            source: "junit".into(),
            suite: "s".into(),
            name: format!("t{i}"),
            gpu_index: None,
            outcome,
            message: String::new(),
            level: None,
        }
    }

    #[test]
    fn a_result_within_the_limits_is_unchanged() {
        let mut result = with_measurement(step_result(0, 1, Outcome::Passed), "x", 1.0);
        result.sub_results = (0..10).map(|i| sub(i, Outcome::Passed)).collect();
        let before = result.clone();
        result.fit_to_limits();
        assert_eq!(result, before);
    }

    #[test]
    fn overlong_lists_are_cut_keeping_failures_and_saying_so() {
        let max = limits::SUB_RESULTS.max;
        let mut result = step_result(0, 1, Outcome::Failed);
        result.message = "1 of 10003 testcases failed".into();
        // The failures come last, where a plain cut would lose them.
        result.sub_results = (0..max + 2).map(|i| sub(i, Outcome::Passed)).collect();
        result.sub_results.push(sub(max + 2, Outcome::Failed));
        result.measurements = (0..limits::MEASUREMENTS.max + 5)
            .map(|i| Measurement {
                name: format!("m{i}"),
                value: 1.0,
                unit: None,
            })
            .collect();
        result.log_tail = format!("{}END", "x".repeat(limits::LOG_TAIL.max));
        result.fit_to_limits();

        assert_eq!(result.outcome, Outcome::Failed);
        assert_eq!(result.sub_results.len(), max);
        assert_eq!(result.sub_results[0].name, format!("t{}", max + 2));
        assert_eq!(result.sub_results[0].outcome, Outcome::Failed);
        // Passed ones keep their order after it.
        assert_eq!(result.sub_results[1].name, "t0");
        assert_eq!(result.measurements.len(), limits::MEASUREMENTS.max);
        assert_eq!(result.measurements[0].name, "m0");
        assert_eq!(result.log_tail.len(), limits::LOG_TAIL.max);
        assert!(result.log_tail.ends_with("END"));
        assert_eq!(
            result.message,
            "1 of 10003 testcases failed (3 test results over the limit of 10000 not kept; \
             5 measurements over the limit of 10000 not kept)"
        );
    }

    #[test]
    fn the_note_fits_even_after_a_message_at_its_limit() {
        let mut result = step_result(0, 1, Outcome::Passed);
        result.message = "é".repeat(limits::MESSAGE.max);
        result.events = (0..limits::EVENTS.max + 1)
            .map(|_| with_xid_event())
            .collect();
        result.fit_to_limits();
        assert!(result.message.len() <= limits::MESSAGE.max);
        assert!(
            result
                .message
                .ends_with("(1 GPU events over the limit of 10000 not kept)")
        );
        assert_eq!(result.events.len(), limits::EVENTS.max);
    }

    fn with_xid_event() -> crate::telemetry::GpuEvent {
        crate::test_support::with_xid(step_result(0, 1, Outcome::Passed), 0, 79)
            .events
            .remove(0)
    }
}
