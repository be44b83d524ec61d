//! `NodeService`'s maintenance windows and health plans: checked (every bad field named),
//! decided by `tollgate_domain::maintenance` / `health_plan`, stored with their audit entry.

use super::status::{FieldErrors, invalid_field_list, invalid_fields, not_found};
use super::{load_plan, load_release, new_id};
use crate::shared::Shared;
use crate::store::AuditNote;
use tollgate_domain::health_plan::{self, HealthPlan};
use tollgate_domain::maintenance::{self, MaintenanceWindow};
use tollgate_domain::{NodeId, Timestamp};
use tollgate_proto::v1 as proto;
use tollgate_wire::bounds::split_plan_ref;
use tollgate_wire::time::{timestamp_from_proto, timestamp_to_proto};
use tonic::Status;

/// A window as answered at `now`.
pub fn window_to_proto(window: &MaintenanceWindow, now: Timestamp) -> proto::MaintenanceWindow {
    proto::MaintenanceWindow {
        id: window.id.clone(),
        label: window.label(),
        starts_at: Some(timestamp_to_proto(window.starts_at)),
        ends_at: Some(timestamp_to_proto(window.ends_at)),
        reason: window.reason.clone(),
        created_by: window.created_by.clone(),
        active: window.starts_at <= now && !window.is_over(now),
    }
}

/// A health plan as answered.
pub fn health_plan_to_proto(plan: &HealthPlan) -> proto::HealthPlan {
    proto::HealthPlan {
        plan_name: plan.plan_name.clone(),
        plan_version: plan.plan_version.to_string(),
        release: plan.release.to_string(),
        every_seconds: plan.every_seconds,
        set_by: plan.set_by.clone(),
        set_at: Some(timestamp_to_proto(plan.set_at)),
    }
}

/// `AddMaintenanceWindow`.
pub async fn add_window(
    shared: &Shared,
    actor: &str,
    request: proto::AddMaintenanceWindowRequest,
) -> Result<proto::MaintenanceWindow, Status> {
    let proto::AddMaintenanceWindowRequest {
        label,
        starts_at,
        ends_at,
        reason,
    } = request;
    let now = shared.now();
    let mut bad: Vec<(&'static str, String)> = Vec::new();
    let starts_at = match starts_at.as_ref().map(timestamp_from_proto) {
        None => Some(now),
        Some(None) => {
            bad.push(("starts_at", "is not a valid timestamp".into()));
            None
        }
        Some(at) => at,
    };
    let ends_at = match ends_at.as_ref().map(timestamp_from_proto) {
        None => {
            bad.push((
                "ends_at",
                "is missing; give when the window ends (`--until` or `--for`)".into(),
            ));
            None
        }
        Some(None) => {
            bad.push(("ends_at", "is not a valid timestamp".into()));
            None
        }
        Some(at) => at,
    };
    match (starts_at, ends_at) {
        (Some(starts_at), Some(ends_at)) => {
            bad.extend(maintenance::check_new(
                &label, starts_at, ends_at, &reason, now,
            ));
        }
        _ => {
            if let Err(problem) = maintenance::parse_label(&label) {
                bad.push(("label", problem));
            }
            if reason.trim().is_empty() {
                bad.push((
                    "reason",
                    "is empty; say why (the audit log keeps it)".into(),
                ));
            }
        }
    }
    let (Some(starts_at), Some(ends_at), true) = (starts_at, ends_at, bad.is_empty()) else {
        return Err(invalid_field_list(bad));
    };
    let (key, value) = maintenance::parse_label(&label).map_err(|problem| {
        // Checked above; kept so that a change there cannot store a bad label.
        invalid_field_list(vec![("label", problem)])
    })?;
    let window = MaintenanceWindow {
        id: new_id("mw"),
        key,
        value,
        starts_at,
        ends_at,
        reason: reason.trim().to_owned(),
        created_by: actor.to_owned(),
    };
    let note = AuditNote::new(
        now,
        actor,
        "maintenance.open",
        format!("maintenance/{}", window.id),
    )
    .details(serde_json::json!({
        "label": window.label(),
        "starts_at": window.starts_at.to_rfc3339(),
        "ends_at": window.ends_at.to_rfc3339(),
        "reason": window.reason,
    }));
    shared
        .store
        .create_maintenance_window(&window, now, &note)
        .await?;
    tracing::info!(window = window.id, label = window.label(), starts_at = %window.starts_at, ends_at = %window.ends_at, "maintenance window opened");
    shared.notify_changed();
    Ok(window_to_proto(&window, now))
}

/// `ListMaintenanceWindows`.
pub async fn list_windows(
    shared: &Shared,
    all: bool,
) -> Result<proto::ListMaintenanceWindowsResponse, Status> {
    let now = shared.now();
    let windows = shared.store.maintenance_windows(now, all).await?;
    Ok(proto::ListMaintenanceWindowsResponse {
        windows: windows
            .iter()
            .map(|window| window_to_proto(window, now))
            .collect(),
    })
}

/// `EndMaintenanceWindow`.
pub async fn end_window(
    shared: &Shared,
    actor: &str,
    request: proto::EndMaintenanceWindowRequest,
) -> Result<proto::MaintenanceWindow, Status> {
    let proto::EndMaintenanceWindowRequest { id, reason } = request;
    if id.trim().is_empty() {
        return Err(super::status::invalid_field(
            "id",
            "is empty; give a window id (`tollgate maintenance list`)",
        ));
    }
    let found = shared
        .store
        .get_maintenance_window(&id)
        .await?
        .ok_or_else(|| {
            not_found(format!(
                "maintenance window {id} (`tollgate maintenance list --all` lists them)"
            ))
        })?;
    let now = shared.now();
    let ends_at = found.end_at(now).map_err(Status::failed_precondition)?;
    let note = AuditNote::new(now, actor, "maintenance.end", format!("maintenance/{id}")).details(
        serde_json::json!({
            "reason": reason.trim(),
            "ends_at": ends_at.to_rfc3339(),
        }),
    );
    // A window another caller ended meanwhile: `Aborted`, retry the call.
    let window = shared
        .store
        .end_maintenance_window(&found, ends_at, &note)
        .await?;
    tracing::info!(
        window = window.id,
        label = window.label(),
        "maintenance window ended"
    );
    shared.notify_changed();
    shared.poke_scheduler();
    Ok(window_to_proto(&window, now))
}

/// `SetHealthPlan`.
pub async fn set_health_plan(
    shared: &Shared,
    actor: &str,
    request: proto::SetHealthPlanRequest,
) -> Result<proto::HealthPlan, Status> {
    let proto::SetHealthPlanRequest {
        plan,
        release,
        every_seconds,
    } = request;
    let mut errors = FieldErrors::new();
    if split_plan_ref(&plan).0.is_empty() {
        errors.add("plan", "is empty; give a plan name or name@version");
    }
    if release.is_empty() {
        errors.add(
            "release",
            "is empty; give the release the fleet runs (its components are what the steps see)",
        );
    }
    if let Some(problem) = health_plan::check_every(every_seconds) {
        errors.add("every_seconds", problem);
    }
    errors.finish(()).map_err(invalid_fields)?;
    let (plan_name, version) = split_plan_ref(&plan);
    let stored = load_plan(shared, plan_name, version).await?;
    let release = load_release(shared, &release).await?;
    let now = shared.now();
    let health_plan = HealthPlan {
        plan_name: stored.plan.name.clone(),
        plan_version: stored.version.clone(),
        release: release.id.clone(),
        every_seconds,
        set_by: actor.to_owned(),
        set_at: now,
    };
    let note = AuditNote::new(
        now,
        actor,
        "health-plan.set",
        format!("health-plan/{}", health_plan.plan_name),
    )
    .release(&health_plan.release)
    .details(serde_json::json!({
        "plan_version": health_plan.plan_version.as_str(),
        "every_seconds": every_seconds,
    }));
    shared.store.set_health_plan(&health_plan, &note).await?;
    tracing::info!(plan = health_plan.plan_name, version = %health_plan.plan_version, every_seconds, "health plan set");
    Ok(health_plan_to_proto(&health_plan))
}

/// `ListHealthPlans`.
pub async fn list_health_plans(shared: &Shared) -> Result<proto::ListHealthPlansResponse, Status> {
    let plans = shared.store.health_plans().await?;
    Ok(proto::ListHealthPlansResponse {
        health_plans: plans.iter().map(health_plan_to_proto).collect(),
    })
}

/// `RemoveHealthPlan`.
pub async fn remove_health_plan(
    shared: &Shared,
    actor: &str,
    request: proto::RemoveHealthPlanRequest,
) -> Result<proto::HealthPlan, Status> {
    let proto::RemoveHealthPlanRequest { plan } = request;
    if plan.trim().is_empty() {
        return Err(super::status::invalid_field(
            "plan",
            "is empty; give the plan name (`tollgate node health-plan list`)",
        ));
    }
    let found = shared
        .store
        .health_plans()
        .await?
        .into_iter()
        .find(|health_plan| health_plan.plan_name == plan)
        .ok_or_else(|| {
            not_found(format!(
                "health plan {plan} (`tollgate node health-plan list` lists them)"
            ))
        })?;
    let now = shared.now();
    let note = AuditNote::new(
        now,
        actor,
        "health-plan.remove",
        format!("health-plan/{plan}"),
    )
    .release(&found.release);
    shared.store.remove_health_plan(&plan, &note).await?;
    tracing::info!(plan, "health plan removed");
    Ok(health_plan_to_proto(&found))
}

/// What `GetNode` adds about `node`: its drain deadline, the window holding it back now, and
/// its latest health checks.
pub async fn node_details(
    shared: &Shared,
    node: &tollgate_domain::fleet::Node,
    view: &mut proto::Node,
) -> Result<(), Status> {
    let now = shared.now();
    view.drain_deadline = shared
        .store
        .drain_deadlines()
        .await?
        .into_iter()
        .find(|(id, _)| *id == node.id)
        .map(|(_, deadline)| timestamp_to_proto(deadline));
    let windows = shared.store.maintenance_windows(now, false).await?;
    view.maintenance_window = maintenance::holding(&windows, &node.labels, now)
        .map(|window| maintenance::explain(node.id.as_str(), window))
        .unwrap_or_default();
    view.health_checks = shared
        .store
        .latest_health_checks(&NodeId::clone(&node.id))
        .await?
        .into_iter()
        .map(
            |(plan_name, run, started, verdict)| proto::NodeHealthCheck {
                plan_name,
                run_id: run.to_string(),
                started_at: Some(timestamp_to_proto(started)),
                verdict: verdict.unwrap_or_default(),
            },
        )
        .collect();
    Ok(())
}
