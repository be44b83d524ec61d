//! Step results and what they carry: outcomes, measurements, telemetry, events, per-test
//! sub-results, telemetry series; the summary a run shows; the form an agent uploads.

use crate::fields::{FieldErrors, InvalidFields};
use crate::fleet::{inventory_from_proto, required_inventory};
use crate::release::missing_parts;
use crate::time::timestamp_to_proto;
use crate::{FromProto, ToProto, count_u32, non_empty};
use tollgate_domain::JobId;
use tollgate_domain::limits::{self, quote};
use tollgate_domain::result::{Measurement, Outcome, StepResult, SubResult};
use tollgate_domain::telemetry::{
    FieldSummary, GpuEvent, GpuTelemetry, MAX_SERIES_POINTS, SeriesPoint, TelemetrySeries,
};
use tollgate_proto::v1 as proto;

/// A domain outcome on the wire.
pub fn outcome_to_proto(outcome: Outcome) -> proto::Outcome {
    match outcome {
        Outcome::Passed => proto::Outcome::Passed,
        Outcome::Failed => proto::Outcome::Failed,
        Outcome::Error => proto::Outcome::Error,
        Outcome::Skipped => proto::Outcome::Skipped,
        Outcome::Lost => proto::Outcome::Lost,
    }
}

/// A wire outcome as a domain one; `None` for unspecified or unknown values.
pub fn outcome_from_proto(value: i32) -> Option<Outcome> {
    match proto::Outcome::try_from(value).ok()? {
        proto::Outcome::Unspecified => None,
        proto::Outcome::Passed => Some(Outcome::Passed),
        proto::Outcome::Failed => Some(Outcome::Failed),
        proto::Outcome::Error => Some(Outcome::Error),
        proto::Outcome::Skipped => Some(Outcome::Skipped),
        proto::Outcome::Lost => Some(Outcome::Lost),
    }
}

/// An outcome field: `None` (recorded) for unspecified or unknown values.
fn required_outcome(errors: &mut FieldErrors, field: &str, value: i32) -> Option<Outcome> {
    let outcome = outcome_from_proto(value);
    if outcome.is_none() {
        errors.add(
            field,
            "must be one of passed, failed, error, skipped, lost (not unspecified)",
        );
    }
    outcome
}

fn measurement_from_proto(
    measurement: proto::Measurement,
    field: &str,
    errors: &mut FieldErrors,
) -> Measurement {
    let proto::Measurement { name, value, unit } = measurement;
    errors.non_blank(&format!("{field}.name"), &name);
    errors.text(&format!("{field}.name"), &limits::NAME, &name);
    errors.text(&format!("{field}.unit"), &limits::INVENTORY_TEXT, &unit);
    errors.finite(&format!("{field}.value"), value);
    Measurement {
        name,
        value,
        unit: non_empty(unit),
    }
}

impl FromProto for Measurement {
    type Proto = proto::Measurement;
    fn from_proto(measurement: proto::Measurement) -> Result<Self, InvalidFields> {
        let mut errors = FieldErrors::new();
        let measurement = measurement_from_proto(measurement, "measurement", &mut errors);
        errors.finish(measurement)
    }
}

impl ToProto for Measurement {
    type Proto = proto::Measurement;
    fn to_proto(&self) -> proto::Measurement {
        let Measurement { name, value, unit } = self;
        proto::Measurement {
            name: name.clone(),
            value: *value,
            unit: unit.clone().unwrap_or_default(),
        }
    }
}

fn telemetry_from_proto(
    telemetry: proto::GpuTelemetry,
    field: &str,
    errors: &mut FieldErrors,
) -> GpuTelemetry {
    let proto::GpuTelemetry {
        gpu_index,
        gpu_uuid,
        fields,
        samples_missed,
    } = telemetry;
    errors.text(
        &format!("{field}.gpu_uuid"),
        &limits::INVENTORY_TEXT,
        &gpu_uuid,
    );
    let fields = errors
        .within(&format!("{field}.fields"), &limits::SERIES, fields)
        .into_iter()
        .enumerate()
        .filter_map(|(idx, summary)| {
            let proto::FieldSummary {
                field: name,
                min,
                max,
                mean,
                p99,
                last,
                samples,
            } = summary;
            let at = format!("{field}.fields[{idx}]");
            let parsed = errors.keyword(&format!("{at}.field"), &name);
            for (stat, value) in [
                ("min", min),
                ("max", max),
                ("mean", mean),
                ("p99", p99),
                ("last", last),
            ] {
                errors.finite(&format!("{at}.{stat}"), value);
            }
            Some(FieldSummary {
                field: parsed?,
                min,
                max,
                mean,
                p99,
                last,
                samples,
            })
        })
        .collect();
    GpuTelemetry {
        gpu_index,
        gpu_uuid,
        fields,
        samples_missed,
    }
}

impl ToProto for GpuTelemetry {
    type Proto = proto::GpuTelemetry;
    fn to_proto(&self) -> proto::GpuTelemetry {
        let GpuTelemetry {
            gpu_index,
            gpu_uuid,
            fields,
            samples_missed,
        } = self;
        proto::GpuTelemetry {
            gpu_index: *gpu_index,
            gpu_uuid: gpu_uuid.clone(),
            fields: fields
                .iter()
                .map(|summary| {
                    let FieldSummary {
                        field,
                        min,
                        max,
                        mean,
                        p99,
                        last,
                        samples,
                    } = summary;
                    proto::FieldSummary {
                        field: field.name().to_owned(),
                        min: *min,
                        max: *max,
                        mean: *mean,
                        p99: *p99,
                        last: *last,
                        samples: *samples,
                    }
                })
                .collect(),
            samples_missed: *samples_missed,
        }
    }
}

/// Converts a GPU event, recording bad fields under `field`; `None` when unusable.
pub fn event_from_proto(
    event: proto::GpuEvent,
    field: &str,
    errors: &mut FieldErrors,
) -> Option<GpuEvent> {
    let proto::GpuEvent {
        gpu_index,
        gpu_uuid,
        kind,
        code,
        at,
        detail,
    } = event;
    let detail = limits::printable(detail);
    errors.text(
        &format!("{field}.gpu_uuid"),
        &limits::INVENTORY_TEXT,
        &gpu_uuid,
    );
    errors.text(&format!("{field}.detail"), &limits::MESSAGE, &detail);
    let kind = errors.keyword(&format!("{field}.kind"), &kind);
    let at = errors.required_timestamp(&format!("{field}.at"), at);
    Some(GpuEvent {
        gpu_index,
        gpu_uuid,
        kind: kind?,
        code,
        at: at?,
        detail,
    })
}

impl ToProto for GpuEvent {
    type Proto = proto::GpuEvent;
    fn to_proto(&self) -> proto::GpuEvent {
        let GpuEvent {
            gpu_index,
            gpu_uuid,
            kind,
            code,
            at,
            detail,
        } = self;
        proto::GpuEvent {
            gpu_index: *gpu_index,
            gpu_uuid: gpu_uuid.clone(),
            kind: kind.as_str().to_owned(),
            code: *code,
            at: Some(timestamp_to_proto(*at)),
            detail: detail.clone(),
        }
    }
}

impl ToProto for TelemetrySeries {
    type Proto = proto::TelemetrySeries;
    fn to_proto(&self) -> proto::TelemetrySeries {
        let TelemetrySeries {
            gpu_index,
            field,
            bucket_ms,
            points,
        } = self;
        proto::TelemetrySeries {
            gpu_index: *gpu_index,
            field: field.name().to_owned(),
            bucket_ms: *bucket_ms,
            points: points
                .iter()
                .map(|point| {
                    let SeriesPoint {
                        offset_ms,
                        mean,
                        min,
                        max,
                        samples,
                    } = *point;
                    proto::SeriesPoint {
                        offset_ms,
                        mean,
                        min,
                        max,
                        samples,
                    }
                })
                .collect(),
        }
    }
}

fn series_from_proto(
    series: proto::TelemetrySeries,
    at: &str,
    errors: &mut FieldErrors,
) -> Option<TelemetrySeries> {
    let proto::TelemetrySeries {
        gpu_index,
        field,
        bucket_ms,
        points,
    } = series;
    let field = errors.keyword(&format!("{at}.field"), &field)?;
    if points.len() > MAX_SERIES_POINTS {
        errors.add(
            format!("{at}.points"),
            format!("has {} points; at most {MAX_SERIES_POINTS}", points.len()),
        );
        return None;
    }
    let all_finite = points
        .iter()
        .all(|p| p.mean.is_finite() && p.min.is_finite() && p.max.is_finite());
    if !all_finite {
        errors.add(format!("{at}.points"), "holds a value that is not finite");
        return None;
    }
    Some(TelemetrySeries {
        gpu_index,
        field,
        bucket_ms,
        points: points
            .into_iter()
            .map(|p| {
                let proto::SeriesPoint {
                    offset_ms,
                    mean,
                    min,
                    max,
                    samples,
                } = p;
                SeriesPoint {
                    offset_ms,
                    mean,
                    min,
                    max,
                    samples,
                }
            })
            .collect(),
    })
}

impl ToProto for SubResult {
    type Proto = proto::SubResult;
    fn to_proto(&self) -> proto::SubResult {
        let SubResult {
            source,
            suite,
            name,
            gpu_index,
            outcome,
            message,
            level,
        } = self;
        proto::SubResult {
            source: source.clone(),
            suite: suite.clone(),
            name: name.clone(),
            gpu_index: *gpu_index,
            outcome: outcome_to_proto(*outcome).into(),
            message: message.clone(),
            level: level.map(u32::from),
        }
    }
}

/// Converts one test of a step, recording bad fields under `field`; `None` when unusable.
pub fn sub_result_from_proto(
    sub: proto::SubResult,
    field: &str,
    errors: &mut FieldErrors,
) -> Option<SubResult> {
    let proto::SubResult {
        source,
        suite,
        name,
        gpu_index,
        outcome,
        message,
        level,
    } = sub;
    if !matches!(source.as_str(), "dcgm-diag" | "junit") {
        errors.add(
            format!("{field}.source"),
            format!(
                "{} is not a result parser (expected dcgm-diag or junit)",
                quote(&source)
            ),
        );
    }
    // Test names and messages come from the test's own output.
    let (suite, name, message) = (
        limits::printable(suite),
        limits::printable(name),
        limits::printable(message),
    );
    errors.non_blank(&format!("{field}.name"), &name);
    errors.text(&format!("{field}.suite"), &limits::TEST_NAME, &suite);
    errors.text(&format!("{field}.name"), &limits::TEST_NAME, &name);
    errors.text(&format!("{field}.message"), &limits::MESSAGE, &message);
    let level = match level.map(u8::try_from) {
        Some(Ok(level)) => Some(level),
        Some(Err(_)) => {
            errors.add(
                format!("{field}.level"),
                "is not a dcgmi diag level (1 to 4)",
            );
            None
        }
        None => None,
    };
    let outcome = required_outcome(errors, &format!("{field}.outcome"), outcome)?;
    Some(SubResult {
        source,
        suite,
        name,
        gpu_index,
        outcome,
        message,
        level,
    })
}

impl FromProto for SubResult {
    type Proto = proto::SubResult;
    fn from_proto(sub: proto::SubResult) -> Result<Self, InvalidFields> {
        let mut errors = FieldErrors::new();
        match sub_result_from_proto(sub, "sub_result", &mut errors) {
            Some(sub) => errors.finish(sub),
            None => Err(missing_parts(errors)),
        }
    }
}

impl FromProto for StepResult {
    type Proto = proto::StepResult;
    /// Long by design: the message is destructured whole (a new field fails to compile here)
    /// and each field is checked in field order, every bad one collected.
    fn from_proto(result: proto::StepResult) -> Result<Self, InvalidFields> {
        let proto::StepResult {
            job_id,
            step_index,
            step_name,
            attempt,
            lease_epoch,
            outcome,
            exit_code,
            started_at,
            finished_at,
            measurements,
            telemetry,
            events,
            inventory,
            log_tail,
            message,
            sub_results,
            inventory_at_end,
            series,
        } = result;
        let mut errors = FieldErrors::new();
        // What the step printed is kept as printed, NUL bytes made printable.
        let (log_tail, message) = (limits::printable(log_tail), limits::printable(message));
        errors.non_blank("job_id", &job_id);
        errors.non_blank("step_name", &step_name);
        errors.text("job_id", &limits::NAME, &job_id);
        errors.text("step_name", &limits::NAME, &step_name);
        errors.text("log_tail", &limits::LOG_TAIL, &log_tail);
        errors.text("message", &limits::MESSAGE, &message);
        // A list over its limit is refused whole: its entries are neither checked nor kept.
        let measurements = errors.within("measurements", &limits::MEASUREMENTS, measurements);
        let telemetry = errors.within("telemetry", &limits::GPUS, telemetry);
        let events = errors.within("events", &limits::EVENTS, events);
        let sub_results = errors.within("sub_results", &limits::SUB_RESULTS, sub_results);
        let series = errors.within("series", &limits::SERIES, series);
        if attempt == 0 {
            errors.add("attempt", "must be at least 1");
        }
        let outcome = required_outcome(&mut errors, "outcome", outcome);
        let started_at = errors.required_timestamp("started_at", started_at);
        let finished_at = errors.required_timestamp("finished_at", finished_at);
        if let (Some(start), Some(end)) = (started_at, finished_at)
            && end < start
        {
            errors.add("finished_at", format!("{end} is before started_at {start}"));
        }
        let measurements = measurements
            .into_iter()
            .enumerate()
            .map(|(idx, m)| measurement_from_proto(m, &format!("measurements[{idx}]"), &mut errors))
            .collect();
        let telemetry = telemetry
            .into_iter()
            .enumerate()
            .map(|(idx, t)| telemetry_from_proto(t, &format!("telemetry[{idx}]"), &mut errors))
            .collect();
        let events = events
            .into_iter()
            .enumerate()
            .filter_map(|(idx, e)| event_from_proto(e, &format!("events[{idx}]"), &mut errors))
            .collect();
        let inventory = required_inventory(
            inventory,
            "inventory",
            "send the inventory observed at step start",
            &mut errors,
        );
        let sub_results = sub_results
            .into_iter()
            .enumerate()
            .filter_map(|(idx, sub)| {
                sub_result_from_proto(sub, &format!("sub_results[{idx}]"), &mut errors)
            })
            .collect();
        let inventory_at_end = inventory_at_end
            .map(|inventory| inventory_from_proto(inventory, "inventory_at_end", &mut errors));
        let series = series
            .into_iter()
            .enumerate()
            .filter_map(|(idx, series)| {
                series_from_proto(series, &format!("series[{idx}]"), &mut errors)
            })
            .collect();
        let (Some(outcome), Some(started_at), Some(finished_at)) =
            (outcome, started_at, finished_at)
        else {
            return Err(missing_parts(errors));
        };
        errors.finish(StepResult {
            job_id: JobId::new(job_id),
            step_index,
            step_name,
            attempt,
            lease_epoch,
            outcome,
            exit_code,
            started_at,
            finished_at,
            measurements,
            telemetry,
            events,
            inventory,
            log_tail,
            message,
            sub_results,
            inventory_at_end,
            series,
        })
    }
}

impl ToProto for StepResult {
    type Proto = proto::StepResult;
    fn to_proto(&self) -> proto::StepResult {
        let StepResult {
            job_id,
            step_index,
            step_name,
            attempt,
            lease_epoch,
            outcome,
            exit_code,
            started_at,
            finished_at,
            measurements,
            telemetry,
            events,
            inventory,
            log_tail,
            message,
            sub_results,
            inventory_at_end,
            series,
        } = self;
        proto::StepResult {
            job_id: job_id.to_string(),
            step_index: *step_index,
            step_name: step_name.clone(),
            attempt: *attempt,
            lease_epoch: *lease_epoch,
            outcome: outcome_to_proto(*outcome).into(),
            exit_code: *exit_code,
            started_at: Some(timestamp_to_proto(*started_at)),
            finished_at: Some(timestamp_to_proto(*finished_at)),
            measurements: measurements.iter().map(ToProto::to_proto).collect(),
            telemetry: telemetry.iter().map(ToProto::to_proto).collect(),
            events: events.iter().map(ToProto::to_proto).collect(),
            inventory: Some(inventory.to_proto()),
            log_tail: log_tail.clone(),
            message: message.clone(),
            sub_results: sub_results.iter().map(ToProto::to_proto).collect(),
            inventory_at_end: inventory_at_end.as_ref().map(ToProto::to_proto),
            series: series.iter().map(ToProto::to_proto).collect(),
        }
    }
}

/// The result as an agent uploads it: free texts are trimmed to the controller's limits (the
/// log tail keeps its end), so a chatty step never gets its result refused; the agent's
/// spooled copy keeps them whole.
pub fn step_result_for_upload(result: &StepResult) -> proto::StepResult {
    let mut wire = result.to_proto();
    let message = |text: &str| limits::truncate(&limits::MESSAGE, text, false);
    wire.log_tail = limits::truncate(&limits::LOG_TAIL, &wire.log_tail, true);
    wire.message = message(&wire.message);
    wire.events = result.events.iter().map(gpu_event_for_upload).collect();
    for sub in &mut wire.sub_results {
        sub.message = message(&sub.message);
    }
    wire
}

/// A GPU event as an agent uploads it (in a result or a telemetry batch): its detail trimmed
/// to the controller's limit.
pub fn gpu_event_for_upload(event: &GpuEvent) -> proto::GpuEvent {
    let mut wire = event.to_proto();
    wire.detail = limits::truncate(&limits::MESSAGE, &wire.detail, false);
    wire
}

/// A result as a run shows it, with every failing test and the first
/// [`tollgate_domain::result::LISTED_PASSING`] others (a run of a large fleet stays small).
pub fn result_summary(result: &StepResult) -> proto::StepResultSummary {
    let duration_ms = (result.finished_at - result.started_at)
        .num_milliseconds()
        .max(0);
    let (listed, not_listed) = tollgate_domain::result::listed(
        &result.sub_results,
        tollgate_domain::result::LISTED_PASSING,
    );
    proto::StepResultSummary {
        sub_results: listed.into_iter().map(ToProto::to_proto).collect(),
        sub_results_not_listed: count_u32(not_listed),
        step_index: result.step_index,
        step_name: result.step_name.clone(),
        attempt: result.attempt,
        outcome: outcome_to_proto(result.outcome).into(),
        message: result.message.clone(),
        measurements: result.measurements.iter().map(ToProto::to_proto).collect(),
        duration_ms: u64::try_from(duration_ms).unwrap_or(0),
        lease_epoch: result.lease_epoch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp_to_proto;
    use tollgate_domain::telemetry::{EventKind, Field};
    use tollgate_domain::test_support::{at, inventory, step_result};

    pub(crate) fn full_result() -> StepResult {
        let mut result = step_result(1, 2, Outcome::Failed);
        result.exit_code = Some(3);
        result.lease_epoch = 4;
        result.inventory_at_end = Some(result.inventory.clone());
        let mut series = tollgate_domain::telemetry::SeriesBuilder::new(1000, 120);
        series.push(0, 60.0);
        series.push(1500, 71.0);
        result.series = vec![series.build(0, Field::GpuTempC)];
        result.started_at = at(10);
        result.finished_at = at(70) + chrono::Duration::milliseconds(250);
        result.measurements = vec![Measurement {
            name: "membw_gbps".into(),
            value: 3012.5,
            unit: Some("GB/s".into()),
        }];
        result.telemetry = vec![GpuTelemetry {
            gpu_index: 0,
            gpu_uuid: "GPU-00000000".into(),
            fields: vec![
                FieldSummary::from_samples(Field::GpuTempC, &[60.0, 71.0]).expect("samples"),
            ],
            samples_missed: 1,
        }];
        result.events = vec![GpuEvent {
            gpu_index: 0,
            gpu_uuid: "GPU-00000000".into(),
            kind: EventKind::Xid,
            code: 79,
            at: at(30),
            detail: "fallen off the bus".into(),
        }];
        result.inventory = inventory("550.54.15", "96.00.89.00.01", 2);
        result
            .inventory
            .components
            .insert("cx7-fw".into(), "28.39.1002".into());
        result.log_tail = "line 1\nline 2\n".into();
        result.message = "exit status 3".into();
        result
    }

    #[test]
    fn step_results_round_trip() {
        let result = full_result();
        assert_eq!(StepResult::from_proto(result.to_proto()), Ok(result));
    }

    #[test]
    fn nul_bytes_in_what_a_step_printed_are_kept_printable_and_refused_in_its_names() {
        let mut wire = full_result().to_proto();
        wire.log_tail = "a\0b".into();
        wire.message = "exit\0".into();
        wire.events[0].detail = "x\0".into();
        let result = StepResult::from_proto(wire).expect("process output is kept");
        assert_eq!(result.log_tail, "a\u{FFFD}b");
        assert_eq!(result.message, "exit\u{FFFD}");
        assert_eq!(result.events[0].detail, "x\u{FFFD}");

        let mut wire = full_result().to_proto();
        wire.step_name = "stress\0".into();
        wire.measurements[0].name = "membw\0".into();
        let error = StepResult::from_proto(wire).unwrap_err();
        let fields: Vec<&str> = error.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["step_name", "measurements[0].name"], "{error:?}");
    }

    #[test]
    fn a_malformed_result_names_every_bad_field() {
        let mut wire = full_result().to_proto();
        wire.job_id = String::new();
        wire.step_name = " ".into();
        wire.attempt = 0;
        wire.outcome = proto::Outcome::Unspecified.into();
        wire.started_at = None;
        wire.finished_at = Some(prost_types::Timestamp {
            seconds: 0,
            nanos: 2_000_000_000,
        });
        wire.measurements[0].value = f64::NAN;
        wire.telemetry[0].fields[0].field = "gpu_temperature".into();
        wire.events[0].kind = "meteor".into();
        wire.inventory = None;
        let error = StepResult::from_proto(wire).unwrap_err();
        assert_eq!(
            error.fields(),
            [
                "job_id",
                "step_name",
                "attempt",
                "outcome",
                "started_at",
                "finished_at",
                "measurements[0].value",
                "telemetry[0].fields[0].field",
                "events[0].kind",
                "inventory",
            ]
        );
        let message = error.to_string();
        for field in ["job_id", "outcome", "started_at: is missing", "inventory"] {
            assert!(message.contains(field), "{message}");
        }
    }

    /// JSON, and so the store, holds no NaN or infinity: a telemetry summary carrying one is
    /// refused at the edge, each number named, as a measurement's is.
    #[test]
    fn numbers_that_are_not_finite_are_named_in_telemetry_summaries_too() {
        let mut wire = full_result().to_proto();
        wire.telemetry.push(wire.telemetry[0].clone());
        wire.telemetry[0].fields[0].max = f64::INFINITY;
        wire.telemetry[0].fields[0].p99 = f64::NAN;
        wire.telemetry[1].fields[0].last = f64::NEG_INFINITY;
        wire.measurements[0].value = f64::NAN;
        let error = StepResult::from_proto(wire).unwrap_err();
        assert_eq!(
            error.fields(),
            [
                "measurements[0].value",
                "telemetry[0].fields[0].max",
                "telemetry[0].fields[0].p99",
                "telemetry[1].fields[0].last",
            ]
        );
        assert!(
            error.to_string().contains("inf is not a finite number"),
            "{error}"
        );
    }

    #[test]
    fn a_result_that_ends_before_it_starts_is_rejected() {
        let mut wire = full_result().to_proto();
        wire.finished_at = Some(timestamp_to_proto(at(0)));
        let error = StepResult::from_proto(wire).unwrap_err();
        assert_eq!(error.fields(), ["finished_at"]);
    }

    #[test]
    fn uploads_fit_the_controllers_text_limits_and_are_accepted() {
        let mut result = full_result();
        result.log_tail = format!("{}last line", "x".repeat(2 * limits::LOG_TAIL.max));
        result.message = "m".repeat(2 * limits::MESSAGE.max);
        result.events[0].detail = "d".repeat(2 * limits::MESSAGE.max);
        let wire = step_result_for_upload(&result);
        assert_eq!(wire.log_tail.len(), limits::LOG_TAIL.max);
        assert!(wire.log_tail.ends_with("last line"));
        assert_eq!(wire.message.len(), limits::MESSAGE.max);
        assert_eq!(wire.events[0].detail.len(), limits::MESSAGE.max);
        // What the agent sends is what the controller accepts.
        assert!(StepResult::from_proto(wire).is_ok());
        assert!(StepResult::from_proto(result.to_proto()).is_err());
    }

    #[test]
    fn a_result_ending_in_a_leap_second_is_accepted() {
        let mut result = full_result();
        result.finished_at = chrono::DateTime::from_timestamp(1_767_225_659, 1_500_000_000)
            .expect("chrono represents a leap second");
        let back = StepResult::from_proto(step_result_for_upload(&result)).expect("accepted");
        assert_eq!(back.finished_at.timestamp(), 1_767_225_659);
    }

    #[test]
    fn summaries_carry_the_duration() {
        let summary = result_summary(&full_result());
        assert_eq!(summary.duration_ms, 60_250);
        assert_eq!(summary.outcome, i32::from(proto::Outcome::Failed));
        // The epoch tells a reassigned job's attempts apart (`run show`'s EPOCH column).
        assert_eq!((summary.lease_epoch, summary.attempt), (4, 2));
    }

    #[test]
    fn summaries_list_failing_tests_first_and_count_the_passing_ones_left_out() {
        let mut result = full_result();
        let test = |name: String, outcome| SubResult {
            source: "junit".into(),
            suite: "suite".into(),
            name,
            gpu_index: None,
            outcome,
            message: String::new(),
            level: None,
        };
        let passing = tollgate_domain::result::LISTED_PASSING + 5;
        result.sub_results = (0..passing)
            .map(|n| test(format!("ok_{n}"), Outcome::Passed))
            .collect();
        result
            .sub_results
            .push(test("bandwidth".into(), Outcome::Failed));
        let summary = result_summary(&result);
        assert_eq!(summary.sub_results[0].name, "bandwidth");
        assert_eq!(
            summary.sub_results[0].outcome,
            i32::from(proto::Outcome::Failed)
        );
        assert_eq!(
            summary.sub_results.len(),
            tollgate_domain::result::LISTED_PASSING + 1
        );
        assert_eq!(summary.sub_results_not_listed, 5);
    }
}
