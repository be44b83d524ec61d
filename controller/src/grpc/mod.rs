//! The gRPC edge: one file per service, every error → `tonic::Status` mapping in `status.rs`,
//! node and API tokens in `auth.rs`. Proto ↔ domain conversion and request bounds are the
//! `tollgate-wire` crate's, which the handlers name `convert`.
//!
//! **Boundary:** handlers decide nothing themselves. They check the request, load facts from
//! the store, call a `tollgate_domain` function, persist and dispatch what it returned.

pub mod admission;
pub mod agent;
pub mod attestation;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod enroll;
pub mod gate;
pub mod issue;
pub mod issue_import;
pub mod limits;
pub mod maintenance;
pub mod node;
pub mod pages;
pub mod plan;
pub mod release;
pub mod report;
pub mod rollout;
pub mod run;
pub mod status;
pub mod status_report;
pub mod telemetry;
pub mod timing;
pub mod token;

use crate::shared::Shared;
use crate::store::{StoredGate, StoredPlan};
use tollgate_domain::ReleaseId;
use tollgate_domain::projection::MilestoneProjection;
use tollgate_domain::release::{RELEASED, Release, Track};
use tonic::Status;

/// Proto ↔ domain conversion, request bounds and field errors: the `tollgate-wire` crate, one
/// for the controller, the agent and the CLI; only `bounded` answers a `Status` here.
pub mod convert {
    pub use super::status::bounded;
    pub use tollgate_wire::*;
}
pub use tollgate_wire::split_plan_ref;

/// A stored plan version as `GetPlan` and `ApplyPlan` answer it.
impl convert::ToProto for StoredPlan {
    type Proto = tollgate_proto::v1::Plan;
    fn to_proto(&self) -> Self::Proto {
        let StoredPlan {
            plan,
            version,
            source,
            created_at,
        } = self;
        convert::plan_to_proto(plan, version, source, *created_at)
    }
}

/// A stored gate policy version as `GetGate` and `ApplyGate` answer it.
impl convert::ToProto for StoredGate {
    type Proto = tollgate_proto::v1::GatePolicy;
    fn to_proto(&self) -> Self::Proto {
        let StoredGate {
            policy,
            version,
            source,
            created_at: _,
        } = self;
        convert::gate_policy_to_proto(policy, version, source)
    }
}

/// Loads a plan by name and optional version prefix; `NotFound` names what was asked for.
pub async fn load_plan(
    shared: &Shared,
    name: &str,
    version: Option<&str>,
) -> Result<StoredPlan, Status> {
    if name.is_empty() {
        return Err(status::invalid_field(
            "plan",
            "is empty; give a plan name or name@version",
        ));
    }
    shared
        .store
        .get_plan(name, version)
        .await?
        .ok_or_else(|| match version {
            Some(version) => status::not_found(format!(
                "plan {name} at a version starting with '{version}'"
            )),
            None => status::not_found(format!(
                "plan {name} (apply it with `tollgate plan apply -f FILE`)"
            )),
        })
}

/// Loads a release; `NotFound` when it does not exist.
pub async fn load_release(shared: &Shared, name: &str) -> Result<Release, Status> {
    if name.is_empty() {
        return Err(status::invalid_field(
            "release",
            "is empty; give a release name",
        ));
    }
    shared
        .store
        .get_release(&ReleaseId::from(name))
        .await?
        .ok_or_else(|| status::not_found(format!("release {name}")))
}

/// Loads a release as a caller scoped to `customer` (`None`: not scoped) may see it: one only
/// for other customers answers `NotFound` exactly as one that does not exist, so that no
/// answer tells the two apart. Every customer-callable RPC that names a release loads it here.
pub async fn load_release_for(
    shared: &Shared,
    name: &str,
    customer: Option<&str>,
) -> Result<Release, Status> {
    let release = load_release(shared, name).await?;
    if sees_release(shared, customer, &release.id).await? {
        Ok(release)
    } else {
        Err(status::not_found(format!("release {name}")))
    }
}

/// Whether a caller scoped to `customer` sees `release` (`access::sees_release`); an unscoped
/// caller sees every release without a read.
pub async fn sees_release(
    shared: &Shared,
    customer: Option<&str>,
    release: &ReleaseId,
) -> Result<bool, Status> {
    Ok(
        unseen_releases(shared, customer, std::slice::from_ref(release))
            .await?
            .is_empty(),
    )
}

/// Those of `releases` a caller scoped to `customer` does not see, in one read of their
/// customers; none for an unscoped caller (no read). Lists drop them, and fields naming
/// other releases (a projection's `waits_for`, an issue's releases) leave them out.
pub async fn unseen_releases(
    shared: &Shared,
    customer: Option<&str>,
    releases: &[ReleaseId],
) -> Result<std::collections::BTreeSet<ReleaseId>, Status> {
    let Some(customer) = customer else {
        return Ok(std::collections::BTreeSet::new());
    };
    let mut distinct: Vec<ReleaseId> = releases.to_vec();
    distinct.sort();
    distinct.dedup();
    let customers = shared.store.release_customers_of(&distinct).await?;
    Ok(distinct
        .into_iter()
        .filter(|release| {
            let of = customers.get(release).map_or(&[][..], Vec::as_slice);
            !tollgate_domain::access::sees_release(Some(customer), of)
        })
        .collect())
}

/// Leaves out of `milestones`' `waits_for` the releases a caller scoped to `customer` does not
/// see: a projection names no release the caller could not get.
pub async fn hide_unseen_holders<'a>(
    shared: &Shared,
    customer: Option<&str>,
    milestones: impl IntoIterator<Item = &'a mut MilestoneProjection>,
) -> Result<(), Status> {
    if customer.is_none() {
        return Ok(());
    }
    let mut milestones: Vec<&mut MilestoneProjection> = milestones.into_iter().collect();
    let holders: Vec<ReleaseId> = milestones
        .iter()
        .flat_map(|milestone| milestone.waits_for.iter())
        .map(|holder| holder.release.clone())
        .collect();
    if holders.is_empty() {
        return Ok(());
    }
    let unseen = unseen_releases(shared, customer, &holders).await?;
    for milestone in &mut milestones {
        milestone
            .waits_for
            .retain(|holder| !unseen.contains(&holder.release));
    }
    Ok(())
}

/// The milestone a request means: the one given, which must be on the track, or the release's
/// current one, which must not be past the end of the track.
pub fn resolve_milestone(release: &Release, requested: &str) -> Result<String, Status> {
    let track = Track::default();
    if requested.is_empty() {
        if release.milestone == RELEASED || !track.contains(&release.milestone) {
            return Err(status::no_milestone_left(release));
        }
        return Ok(release.milestone.clone());
    }
    if !track.contains(requested) {
        return Err(status::invalid_field(
            "milestone",
            format!(
                "'{requested}' is not on the track ({})",
                track.milestones.join(", ")
            ),
        ));
    }
    Ok(requested.to_owned())
}

/// The nodes a customer sees (`access::sees_node`): lists and runs are filtered to them.
pub async fn customer_nodes(
    shared: &Shared,
    customer: &str,
) -> Result<std::collections::BTreeSet<String>, Status> {
    Ok(shared
        .store
        .list_nodes()
        .await?
        .into_iter()
        .filter(|node| tollgate_domain::access::sees_node(Some(customer), &node.labels))
        .map(|node| node.id.to_string())
        .collect())
}

/// A random id with a prefix: `run-` or `job-` followed by 16 hex digits.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", hex::encode(rand::random::<[u8; 8]>()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_domain::test_support::release;

    #[test]
    fn milestones_resolve_to_the_track() {
        let mut r = release();
        assert_eq!(resolve_milestone(&r, "").unwrap(), "lab-qual");
        assert_eq!(resolve_milestone(&r, "production").unwrap(), "production");
        let status = resolve_milestone(&r, "moon").unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        use tonic_types::StatusExt;
        let details = status.get_error_details();
        let bad = details
            .bad_request()
            .expect("the bad field travels as details");
        assert_eq!(bad.field_violations[0].field, "milestone");
        assert!(
            status
                .message()
                .contains("lab-qual, customer-acceptance, production")
        );
        r.milestone = RELEASED.into();
        assert_eq!(
            resolve_milestone(&r, "").unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
    }

    #[test]
    fn ids_are_prefixed_random_hex() {
        let id = new_id("run");
        assert!(id.starts_with("run-") && id.len() == 20, "{id}");
        assert_ne!(new_id("job"), new_id("job"));
    }
}
