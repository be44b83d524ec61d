//! The plan of record of a release: a target date per milestone, who set it and why, and the
//! customers the release is for. Moving a target is decided here ([`plan_target`]) and applied
//! by the store with a compare-and-set on the target it was decided from, audited.

use crate::Timestamp;
use crate::limits;
use crate::release::Track;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// The date a release should pass a milestone by, as last set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilestoneTarget {
    /// The milestone.
    pub milestone: String,
    /// The day (UTC) it should be passed by.
    pub target: NaiveDate,
    /// Why it was set or moved, if given.
    pub reason: Option<String>,
    /// Who set it.
    pub set_by: String,
    /// When.
    pub set_at: Timestamp,
}

/// A decided change of one milestone's target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetChange {
    /// The target it was decided from; `None` when there was none.
    pub from: Option<NaiveDate>,
    /// The target after the change.
    pub to: MilestoneTarget,
}

/// Why a target cannot be set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetRefusal {
    /// The milestone is not on the track.
    #[error("{} is not on the track ({}); give one of them", limits::quote(.milestone), .track.join(", "))]
    UnknownMilestone {
        /// The milestone asked for.
        milestone: String,
        /// The track's milestones.
        track: Vec<String>,
    },
    /// The target is not a date.
    #[error("{} is not a date; give one as YYYY-MM-DD", limits::quote(.text))]
    BadDate {
        /// The text given.
        text: String,
    },
}

impl TargetRefusal {
    /// The request field the refusal is about.
    pub fn field(&self) -> &'static str {
        match self {
            TargetRefusal::UnknownMilestone { .. } => "milestone",
            TargetRefusal::BadDate { .. } => "target_date",
        }
    }
}

/// Decides setting `milestone`'s target to the date `target` (`YYYY-MM-DD`), from `current`
/// (the target as stored, if any), by `actor` at `now` with an optional `reason` (blank: none).
/// Every refusal is listed. The lengths of the texts are the request's bounds
/// (`limits::REASON` for the reason), checked where the request arrives.
pub fn plan_target(
    track: &Track,
    current: Option<&MilestoneTarget>,
    milestone: &str,
    target: &str,
    reason: Option<&str>,
    actor: &str,
    now: Timestamp,
) -> Result<TargetChange, Vec<TargetRefusal>> {
    let mut refusals = Vec::new();
    if !track.contains(milestone) {
        refusals.push(TargetRefusal::UnknownMilestone {
            milestone: milestone.to_owned(),
            track: track.milestones.clone(),
        });
    }
    let date = NaiveDate::parse_from_str(target.trim(), "%Y-%m-%d").ok();
    if date.is_none() {
        refusals.push(TargetRefusal::BadDate {
            text: target.to_owned(),
        });
    }
    let reason = reason.map(str::trim).filter(|reason| !reason.is_empty());
    let (Some(target), true) = (date, refusals.is_empty()) else {
        return Err(refusals);
    };
    Ok(TargetChange {
        from: current.map(|current| current.target),
        to: MilestoneTarget {
            milestone: milestone.to_owned(),
            target,
            reason: reason.map(str::to_owned),
            set_by: actor.to_owned(),
            set_at: now,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::at;

    fn date(text: &str) -> NaiveDate {
        text.parse().expect("a test date")
    }

    #[test]
    fn a_first_target_is_set_from_none() {
        let change = plan_target(
            &Track::default(),
            None,
            "customer-acceptance",
            "2027-01-15",
            Some("  kickoff  "),
            "alice",
            at(0),
        )
        .expect("a valid target");
        assert_eq!(change.from, None);
        assert_eq!(change.to.target, date("2027-01-15"));
        assert_eq!(change.to.reason.as_deref(), Some("kickoff"));
        assert_eq!(change.to.set_by, "alice");
    }

    #[test]
    fn a_moved_target_remembers_where_it_was() {
        let first = plan_target(
            &Track::default(),
            None,
            "lab-qual",
            "2027-01-15",
            None,
            "a",
            at(0),
        )
        .expect("valid")
        .to;
        let moved = plan_target(
            &Track::default(),
            Some(&first),
            "lab-qual",
            " 2027-02-01 ",
            Some(""),
            "bob",
            at(10),
        )
        .expect("valid");
        assert_eq!(moved.from, Some(date("2027-01-15")));
        assert_eq!(moved.to.reason, None);
    }

    #[test]
    fn every_refusal_is_listed() {
        let refusals = plan_target(
            &Track::default(),
            None,
            "ga",
            "2027-02-30",
            None,
            "a",
            at(0),
        )
        .expect_err("two refusals");
        let fields: Vec<&str> = refusals.iter().map(TargetRefusal::field).collect();
        assert_eq!(fields, ["milestone", "target_date"]);
        assert_eq!(
            refusals[0].to_string(),
            "'ga' is not on the track (lab-qual, customer-acceptance, production); give one of them"
        );
        assert_eq!(
            refusals[1].to_string(),
            "'2027-02-30' is not a date; give one as YYYY-MM-DD"
        );
    }
}
