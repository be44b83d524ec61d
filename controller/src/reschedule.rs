//! Job-level retries at the controller: when a decided job change ends a job `lost`, `error`
//! or cancelled at a drain's deadline, [`attach`] loads what `tollgate_domain::reschedule`
//! decides from (the run's plan, the job's earlier attempts, the fleet as seen now) and adds
//! the new job to the change; the store creates it in the transaction that ends the old one.

use crate::grpc::new_id;
use crate::grpc::node::mark_disconnected;
use crate::shared::Shared;
use crate::store::StoreError;
use tollgate_domain::JobId;
use tollgate_domain::job::JobChange;
use tollgate_domain::reschedule::{self, Cause, Reschedule};

/// Adds the reschedule of the job `change` ends, if the domain decides one: `drained` when
/// the change is the cancellation at a drain's deadline. A change that does not end the job,
/// or ends it for another reason, is left alone; so is one whose job no node can take (logged).
pub async fn attach(
    shared: &Shared,
    change: &mut JobChange,
    drained: bool,
) -> Result<(), StoreError> {
    change.reschedule = None;
    if !change.to.is_terminal() || change.from.is_terminal() {
        return Ok(());
    }
    let Some(cause) = Cause::of_end(change.to, drained) else {
        return Ok(());
    };
    let store = &shared.store;
    let Some(job) = store.get_job(&change.job).await? else {
        return Ok(());
    };
    let Some((run, plan)) = store.run_and_plan(&job.run_id).await? else {
        return Ok(());
    };
    if !reschedule::reschedules(run.purpose) {
        return Ok(());
    }
    if cause != Cause::DrainDeadline && plan.plan.reschedule_attempts == 0 {
        // The common case: nothing more to load.
        return Ok(());
    }
    let tried: Vec<_> = store
        .attempts_of_job(&change.job)
        .await?
        .into_iter()
        .map(|(_, node, _)| node)
        .collect();
    let busy_in_run: Vec<_> = store
        .jobs_of_run(&job.run_id)
        .await?
        .into_iter()
        .filter(|other| other.id != job.id && !other.state.is_terminal())
        .map(|other| other.node)
        .collect();
    let mut nodes = store.list_nodes().await?;
    mark_disconnected(shared, &mut nodes);
    match reschedule::next_node(&plan.plan, cause, job.attempt, &tried, &busy_in_run, &nodes) {
        Ok((node, attempt)) => {
            tracing::info!(job = %job.id, %cause, to = %node, attempt, "job rescheduled");
            change.reschedule = Some(Reschedule {
                job: JobId::new(new_id("job")),
                node,
                attempt,
                cause,
            });
        }
        Err(why) => tracing::info!(job = %job.id, %cause, %why, "job not rescheduled"),
    }
    Ok(())
}
