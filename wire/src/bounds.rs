//! Request bounds: every string and list a caller sends is checked against
//! `tollgate_domain::limits` before anything else reads it, so an oversize value is refused by
//! name, quoted by a prefix. Messages converted into domain values are checked by their
//! conversion instead; the ones handlers read field by field implement [`Bounded`].

use crate::fields::{FieldErrors, InvalidFields};
use tollgate_domain::fleet::Labels;
use tollgate_domain::limits;
use tollgate_proto::v1 as proto;

/// A message whose strings and lists all have a limit.
pub trait Bounded {
    /// Records every field over its limit.
    fn check_bounds(&self, errors: &mut FieldErrors);
}

/// The message when every field is within its limit, else every field that is not.
pub fn bounded<T: Bounded>(request: T) -> Result<T, InvalidFields> {
    let mut errors = FieldErrors::new();
    request.check_bounds(&mut errors);
    errors.finish(request)
}

/// Splits a plan reference, `name` or `name@version-prefix`, into its parts.
pub fn split_plan_ref(text: &str) -> (&str, Option<&str>) {
    match text.split_once('@') {
        Some((name, version)) if !version.is_empty() => (name, Some(version)),
        Some((name, _)) => (name, None),
        None => (text, None),
    }
}

/// Checks label keys and values; each bad label is named.
pub fn check_labels(errors: &mut FieldErrors, field: &str, labels: &Labels) {
    if !errors.count(field, &limits::LABELS, labels.len()) {
        return;
    }
    for (key, value) in labels {
        let at = format!("{field}[{}]", limits::truncate(&limits::NAME, key, false));
        if !errors.text(&at, &limits::LABEL_KEY, key)
            || !errors.text(&at, &limits::LABEL_VALUE, value)
        {
            continue;
        }
        if let Err(message) = tollgate_domain::fleet::parse_label(&format!("{key}={value}")) {
            errors.add(at, message);
        }
    }
}

/// The agent's stream events: a job id longer than a name is refused by name like any request
/// field (the controller then ignores the event and logs why).
impl Bounded for proto::agent_event::Event {
    fn check_bounds(&self, errors: &mut FieldErrors) {
        use proto::agent_event::Event;
        match self {
            Event::Heartbeat(proto::Heartbeat {
                running_job_id,
                sent_at: _,
                unsent_results: _,
                lease_epoch: _,
                step_index: _,
                attempt: _,
                commands_received: _,
                unsent_by_job,
            }) => {
                errors.text("heartbeat.running_job_id", &limits::NAME, running_job_id);
                // One entry per job with unsent results; an agent holds few jobs' results, so
                // the label count bounds it generously.
                let field = "heartbeat.unsent_by_job";
                if errors.count(field, &limits::LABELS, unsent_by_job.len()) {
                    for job_id in unsent_by_job.keys() {
                        errors.text(field, &limits::NAME, job_id);
                    }
                }
            }
            Event::JobAccepted(proto::JobAccepted {
                job_id,
                lease_epoch: _,
            }) => {
                errors.text("job_accepted.job_id", &limits::NAME, job_id);
            }
            Event::StepStarted(proto::StepStarted {
                job_id,
                lease_epoch: _,
                step_index: _,
                attempt: _,
            }) => {
                errors.text("step_started.job_id", &limits::NAME, job_id);
            }
        }
    }
}

/// One batch of fleet telemetry: its lists, each sample's fields and each event's texts.
impl Bounded for proto::TelemetryBatch {
    fn check_bounds(&self, errors: &mut FieldErrors) {
        let proto::TelemetryBatch {
            samples,
            events,
            dropped: _,
        } = self;
        if errors.count("samples", &limits::TELEMETRY_BATCH, samples.len()) {
            for (idx, sample) in samples.iter().enumerate() {
                let proto::TelemetrySample {
                    gpu_index: _,
                    at: _,
                    values,
                } = sample;
                let field = format!("samples[{idx}].values");
                if errors.count(&field, &limits::SAMPLE_FIELDS, values.len()) {
                    for name in values.keys() {
                        errors.text(&field, &limits::NAME, name);
                    }
                }
            }
        }
        if errors.count("events", &limits::TELEMETRY_BATCH, events.len()) {
            for (idx, event) in events.iter().enumerate() {
                let proto::GpuEvent {
                    gpu_index: _,
                    gpu_uuid,
                    kind,
                    code: _,
                    at: _,
                    detail,
                } = event;
                let at = format!("events[{idx}]");
                errors.text(&format!("{at}.gpu_uuid"), &limits::INVENTORY_TEXT, gpu_uuid);
                errors.text(&format!("{at}.kind"), &limits::NAME, kind);
                errors.text(&format!("{at}.detail"), &limits::MESSAGE, detail);
            }
        }
    }
}

/// `GetNodeTelemetry`: the node and each field name.
impl Bounded for proto::GetNodeTelemetryRequest {
    fn check_bounds(&self, errors: &mut FieldErrors) {
        let proto::GetNodeTelemetryRequest {
            node,
            since: _,
            until: _,
            gpu_index: _,
            fields,
            resolution_seconds: _,
            limit: _,
        } = self;
        errors.text("node", &limits::NAME, node);
        if errors.count("fields", &limits::SAMPLE_FIELDS, fields.len()) {
            for name in fields {
                errors.text("fields", &limits::NAME, name);
            }
        }
    }
}

impl Bounded for proto::SetCustomersRequest {
    fn check_bounds(&self, errors: &mut FieldErrors) {
        let proto::SetCustomersRequest { release, customers } = self;
        errors.text("release", &limits::NAME, release);
        if errors.count("customers", &limits::CUSTOMERS, customers.len()) {
            for (idx, customer) in customers.iter().enumerate() {
                errors.text(&format!("customers[{idx}]"), &limits::NAME, customer);
            }
        }
    }
}

/// `Bounded` for requests of plain texts: each field with its limit, then (after `;`) the
/// fields that are not texts. Every field is listed, so a new one fails to compile here.
macro_rules! bounded_texts {
    ($($message:ident { $($field:ident: $limit:ident),* $(; $($other:ident),*)? })*) => {
        $(
            impl Bounded for proto::$message {
                #[allow(unused_variables)]
                fn check_bounds(&self, errors: &mut FieldErrors) {
                    let proto::$message { $($field,)* $($($other: _,)*)? } = self;
                    $(errors.text(stringify!($field), &limits::$limit, $field);)*
                }
            }
        )*
    };
}

bounded_texts! {
    GetNodeRequest { name: NAME }
    SetCordonRequest { name: NAME; cordoned }
    SetHealthRequest { name: NAME, health: NAME, reason: REASON }
    DrainNodeRequest { name: NAME, reason: REASON; deadline_seconds }
    RetireNodeRequest { name: NAME, reason: REASON }
    AddMaintenanceWindowRequest { label: NAME, reason: REASON; starts_at, ends_at }
    ListMaintenanceWindowsRequest { ; all }
    EndMaintenanceWindowRequest { id: NAME, reason: REASON }
    SetHealthPlanRequest { plan: NAME, release: NAME; every_seconds }
    ListHealthPlansRequest {}
    RemoveHealthPlanRequest { plan: NAME }
    GetReleaseRequest { name: NAME }
    ListReleasesRequest { page_token: PAGE_TOKEN; page_size }
    PromoteRequest { name: NAME }
    DemoteRequest { release: NAME, to_milestone: NAME, reason: REASON }
    HaltRequest { release: NAME, reason: REASON }
    ResumeRequest { release: NAME, reason: REASON }
    SetMilestoneTargetRequest { release: NAME, milestone: NAME, target_date: NAME, reason: REASON }
    ApplyPlanRequest { source: SPEC_SOURCE, file_name: PATH }
    GetPlanRequest { name: NAME, version: NAME }
    ListPlansRequest {}
    GetRunRequest { id: NAME, page_token: PAGE_TOKEN; page_size }
    ListRunsRequest { release: NAME, page_token: PAGE_TOKEN; page_size }
    CancelRunRequest { id: NAME }
    ApplyGateRequest { source: SPEC_SOURCE, file_name: PATH }
    GetGateRequest { milestone: NAME }
    EvaluateGateRequest { release: NAME, milestone: NAME; at }
    RevokeWaiverRequest { id: NAME }
    ListWaiversRequest { release: NAME, milestone: NAME, page_token: PAGE_TOKEN; page_size }
    ListAuditRequest { release: NAME, actor: NAME, page_token: PAGE_TOKEN; since, until, page_size }
    VerifyAuditRequest {}
    GetPublicKeyRequest {}
    RenderAttestationRequest { release: NAME, milestone: NAME }
    CreateTokenRequest { name: NAME, role: NAME, customer: LABEL_VALUE; ttl_seconds }
    ListTokensRequest {}
    RevokeTokenRequest { name: NAME }
    GetIssueRequest { ; id }
    ListIssuesRequest { state: NAME, release: NAME, customer: LABEL_VALUE, node: NAME, page_token: PAGE_TOKEN; page_size }
    SetFixReleaseRequest { release: NAME, note: REASON; id }
    WontFixRequest { reason: REASON; id }
    ReopenIssueRequest { reason: REASON; id }
    StartRolloutRequest { release: NAME, fleet: REASON, file: SPEC_SOURCE, file_name: PATH }
    GetRolloutRequest { id: NAME }
    ListRolloutsRequest { release: NAME, node: NAME; active_only }
    RolloutActionRequest { id: NAME, reason: REASON }
    AbortRolloutRequest { id: NAME, reason: REASON; rollback }
    ImportIssuesRequest { document: SPEC_SOURCE, file_name: PATH, format: NAME }
    RenderStatusRequest { customer: LABEL_VALUE, format: NAME; since, minutes }
    AddNoteRequest { release: NAME, text: DESCRIPTION, action_owner: NAME, due: NAME }
    ListNotesRequest { release: NAME; since, actions_only }
    CompleteActionRequest { comment: REASON; id }
}

impl Bounded for proto::OpenIssueRequest {
    fn check_bounds(&self, errors: &mut FieldErrors) {
        let proto::OpenIssueRequest {
            release,
            milestone,
            group,
            title,
            severity,
            owner,
        } = self;
        errors.text("release", &limits::NAME, release);
        errors.text("milestone", &limits::NAME, milestone);
        errors.text("group", &limits::REASON, group);
        errors.text("title", &limits::REASON, title);
        errors.text("severity", &limits::NAME, severity);
        errors.text("owner", &limits::NAME, owner);
    }
}

impl Bounded for proto::UpdateIssueRequest {
    fn check_bounds(&self, errors: &mut FieldErrors) {
        let proto::UpdateIssueRequest {
            id: _,
            title,
            severity,
            owner,
            tickets,
            customers,
            expected_updated_at: _,
            add_tickets,
            remove_tickets,
            add_customers,
            remove_customers,
        } = self;
        errors.text("title", &limits::REASON, title.as_deref().unwrap_or(""));
        for (field, values) in [
            ("add_tickets", add_tickets),
            ("remove_tickets", remove_tickets),
        ] {
            errors.texts(field, &limits::CUSTOMERS, &limits::TICKET, values);
        }
        for (field, values) in [
            ("add_customers", add_customers),
            ("remove_customers", remove_customers),
        ] {
            errors.texts(field, &limits::CUSTOMERS, &limits::LABEL_VALUE, values);
        }
        errors.text("severity", &limits::NAME, severity.as_deref().unwrap_or(""));
        errors.text("owner", &limits::NAME, owner.as_deref().unwrap_or(""));
        if let Some(tickets) = tickets {
            errors.texts(
                "tickets",
                &limits::CUSTOMERS,
                &limits::TICKET,
                &tickets.values,
            );
        }
        if let Some(customers) = customers {
            errors.texts(
                "customers",
                &limits::CUSTOMERS,
                &limits::LABEL_VALUE,
                &customers.values,
            );
        }
    }
}

impl Bounded for proto::ListNodesRequest {
    fn check_bounds(&self, errors: &mut FieldErrors) {
        let proto::ListNodesRequest {
            selector,
            page_size: _,
            page_token,
        } = self;
        let selector: Labels = crate::sorted(selector.clone());
        check_labels(errors, "selector", &selector);
        errors.text("page_token", &limits::PAGE_TOKEN, page_token);
    }
}

/// A plan reference, `name` or `name@version`: each part is a name.
fn check_plan_ref(errors: &mut FieldErrors, field: &str, plan: &str) {
    let (name, version) = split_plan_ref(plan);
    if name.len() > limits::NAME.max || version.is_some_and(|v| v.len() > limits::NAME.max) {
        errors.add(field, limits::too_long(&limits::NAME, plan));
    } else if let Some(at) = plan.find('\0') {
        errors.add(field, limits::nul_byte(at));
    }
}

impl Bounded for proto::StartRunRequest {
    fn check_bounds(&self, errors: &mut FieldErrors) {
        let proto::StartRunRequest {
            release,
            plan,
            milestone,
            nodes_now: _,
        } = self;
        errors.text("release", &limits::NAME, release);
        check_plan_ref(errors, "plan", plan);
        errors.text("milestone", &limits::NAME, milestone);
    }
}

impl Bounded for proto::WaiveRequest {
    fn check_bounds(&self, errors: &mut FieldErrors) {
        let proto::WaiveRequest {
            release,
            milestone,
            rule_id,
            reason,
            ticket,
            expires_at: _,
            ttl_seconds: _,
            issue: _,
            nodes,
            skus,
            steps,
        } = self;
        // Required texts are checked here, before the handler loads the release or its gate.
        for (field, limit, value) in [
            ("release", &limits::NAME, release),
            ("rule_id", &limits::RULE_ID, rule_id),
            ("reason", &limits::REASON, reason),
            ("ticket", &limits::TICKET, ticket),
        ] {
            if errors.text(field, limit, value) {
                errors.non_blank(field, value);
            }
        }
        errors.text("milestone", &limits::NAME, milestone);
        let scope = &limits::WAIVER_SCOPE;
        errors.clean_texts("nodes", scope, &limits::NAME, nodes);
        errors.clean_texts("skus", scope, &limits::LABEL_VALUE, skus);
        errors.clean_texts("steps", scope, &limits::NAME, steps);
    }
}

impl Bounded for proto::RenderReportRequest {
    fn check_bounds(&self, errors: &mut FieldErrors) {
        let proto::RenderReportRequest {
            release,
            milestone,
            format,
            customer,
        } = self;
        errors.text("release", &limits::NAME, release);
        errors.text("milestone", &limits::NAME, milestone);
        errors.text("format", &limits::NAME, format);
        let (key, value) = customer.split_once('=').unwrap_or((customer, ""));
        if key.len() > limits::LABEL_KEY.max || value.len() > limits::LABEL_VALUE.max {
            errors.add("customer", limits::too_long(&limits::LABEL_VALUE, customer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_references_split_at_the_at_sign() {
        assert_eq!(split_plan_ref("gpu-qual"), ("gpu-qual", None));
        assert_eq!(split_plan_ref("gpu-qual@ab12"), ("gpu-qual", Some("ab12")));
        assert_eq!(split_plan_ref("gpu-qual@"), ("gpu-qual", None));
    }

    #[test]
    fn agent_events_with_an_oversize_job_id_are_refused_by_name() {
        use proto::agent_event::Event;
        let huge = "j".repeat(3 * 1024 * 1024);
        let events = [
            (
                Event::Heartbeat(proto::Heartbeat {
                    running_job_id: huge.clone(),
                    ..Default::default()
                }),
                "heartbeat.running_job_id",
            ),
            (
                Event::JobAccepted(proto::JobAccepted {
                    job_id: huge.clone(),
                    lease_epoch: 1,
                }),
                "job_accepted.job_id",
            ),
            (
                Event::StepStarted(proto::StepStarted {
                    job_id: huge.clone(),
                    ..Default::default()
                }),
                "step_started.job_id",
            ),
        ];
        for (event, field) in events {
            let refused = bounded(event).expect_err("an oversize id is refused");
            assert_eq!(refused.fields(), [field]);
            assert!(
                refused.to_string().len() < 1024,
                "{}",
                refused.to_string().len()
            );
        }
        let fine = Event::Heartbeat(proto::Heartbeat {
            running_job_id: "job-1".into(),
            ..Default::default()
        });
        assert!(bounded(fine).is_ok());
    }

    #[test]
    fn requests_name_each_oversize_field() {
        let huge = "x".repeat(limits::NAME.max + 1);
        let request = proto::StartRunRequest {
            release: huge.clone(),
            plan: format!("gpu-qual@{huge}"),
            milestone: "lab-qual".into(),
            nodes_now: false,
        };
        assert_eq!(
            bounded(request).expect_err("refused").fields(),
            ["release", "plan"]
        );
        let request = proto::ListNodesRequest {
            selector: [("bad key".to_owned(), "x".to_owned())]
                .into_iter()
                .collect(),
            page_size: 0,
            page_token: "t".repeat(tollgate_domain::limits::PAGE_TOKEN.max + 1),
        };
        assert_eq!(
            bounded(request).expect_err("refused").fields(),
            ["selector[bad key]", "page_token"]
        );
    }
}
