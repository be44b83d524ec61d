//! The gRPC edge: one file per service, proto ↔ domain conversion in `convert.rs`, every
//! error → `tonic::Status` mapping in `status.rs`, node and API tokens in `auth.rs`.
//!
//! **Boundary:** handlers decide nothing themselves. They check the request, load facts from
//! the store, call a `tollgate_domain` function, persist and dispatch what it returned.

pub mod agent;
pub mod attestation;
pub mod audit;
pub mod auth;
pub mod convert;
pub mod gate;
pub mod node;
pub mod plan;
pub mod release;
pub mod report;
pub mod run;
pub mod status;

use crate::shared::Shared;
use crate::store::StoredPlan;
use tollgate_domain::ReleaseId;
use tollgate_domain::release::{RELEASED, Release, Track};
use tonic::Status;

/// Splits a plan reference, `name` or `name@version-prefix`, into its parts.
pub fn split_plan_ref(text: &str) -> (&str, Option<&str>) {
    match text.split_once('@') {
        Some((name, version)) if !version.is_empty() => (name, Some(version)),
        Some((name, _)) => (name, None),
        None => (text, None),
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

/// A random id with a prefix: `run-` or `job-` followed by 16 hex digits.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", hex::encode(rand::random::<[u8; 8]>()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_domain::test_support::release;

    #[test]
    fn plan_references_split_at_the_at_sign() {
        assert_eq!(split_plan_ref("gpu-qual"), ("gpu-qual", None));
        assert_eq!(split_plan_ref("gpu-qual@ab12"), ("gpu-qual", Some("ab12")));
        assert_eq!(split_plan_ref("gpu-qual@"), ("gpu-qual", None));
    }

    #[test]
    fn milestones_resolve_to_the_track() {
        let mut r = release();
        assert_eq!(resolve_milestone(&r, "").unwrap(), "lab-qual");
        assert_eq!(resolve_milestone(&r, "production").unwrap(), "production");
        let status = resolve_milestone(&r, "moon").unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
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
