//! Releases: components, new releases, promotions and the release itself.

use crate::fields::{FieldErrors, InvalidFields};
use crate::time::timestamp_to_proto;
use crate::{FromProto, ToProto, non_empty};
use tollgate_domain::ReleaseId;
use tollgate_domain::limits;
use tollgate_domain::projection::{self, Finish, MilestoneProjection};
use tollgate_domain::release::{Component, Promotion, Release, Track};
use tollgate_domain::target::MilestoneTarget;
use tollgate_proto::v1 as proto;

/// A component from the wire; empty optional texts mean absent. Validation is the domain's
/// (`validate_release`), so this cannot fail.
pub fn component_from_proto(component: proto::Component) -> Component {
    let proto::Component {
        name,
        version,
        artifact_uri,
        sha256,
    } = component;
    Component {
        name,
        version,
        artifact_uri: non_empty(artifact_uri),
        sha256: non_empty(sha256),
    }
}

impl ToProto for Component {
    type Proto = proto::Component;
    fn to_proto(&self) -> proto::Component {
        let Component {
            name,
            version,
            artifact_uri,
            sha256,
        } = self;
        proto::Component {
            name: name.clone(),
            version: version.clone(),
            artifact_uri: artifact_uri.clone().unwrap_or_default(),
            sha256: sha256.clone().unwrap_or_default(),
        }
    }
}

/// A checked `CreateReleaseRequest`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRelease {
    /// Name.
    pub name: String,
    /// Components.
    pub components: Vec<Component>,
    /// Free text.
    pub description: String,
}

impl TryFrom<proto::CreateReleaseRequest> for NewRelease {
    type Error = InvalidFields;
    fn try_from(request: proto::CreateReleaseRequest) -> Result<Self, Self::Error> {
        let proto::CreateReleaseRequest {
            name,
            components,
            description,
        } = request;
        let components: Vec<Component> = components.into_iter().map(component_from_proto).collect();
        let mut errors = FieldErrors::new();
        if let Err(problems) =
            tollgate_domain::release::validate_release(&name, &description, &components)
        {
            errors.extend(problems);
        }
        errors.finish(NewRelease {
            name,
            components,
            description,
        })
    }
}

impl ToProto for NewRelease {
    type Proto = proto::CreateReleaseRequest;
    fn to_proto(&self) -> proto::CreateReleaseRequest {
        let NewRelease {
            name,
            components,
            description,
        } = self;
        proto::CreateReleaseRequest {
            name: name.clone(),
            components: components.iter().map(ToProto::to_proto).collect(),
            description: description.clone(),
        }
    }
}

impl ToProto for Promotion {
    type Proto = proto::Promotion;
    fn to_proto(&self) -> proto::Promotion {
        let Promotion {
            from_milestone,
            to_milestone,
            at,
            decision_digest,
            actor,
        } = self;
        proto::Promotion {
            from_milestone: from_milestone.clone(),
            to_milestone: to_milestone.clone(),
            at: Some(timestamp_to_proto(*at)),
            decision_digest: decision_digest.clone(),
            actor: actor.clone(),
        }
    }
}

fn promotion_from_proto(
    promotion: proto::Promotion,
    field: &str,
    errors: &mut FieldErrors,
) -> Option<Promotion> {
    let proto::Promotion {
        from_milestone,
        to_milestone,
        at,
        decision_digest,
        actor,
    } = promotion;
    errors.text(
        &format!("{field}.from_milestone"),
        &limits::NAME,
        &from_milestone,
    );
    errors.text(
        &format!("{field}.to_milestone"),
        &limits::NAME,
        &to_milestone,
    );
    errors.text(
        &format!("{field}.decision_digest"),
        &limits::NAME,
        &decision_digest,
    );
    errors.text(&format!("{field}.actor"), &limits::NAME, &actor);
    let at = errors.required_timestamp(&format!("{field}.at"), at)?;
    Some(Promotion {
        from_milestone,
        to_milestone,
        at,
        decision_digest,
        actor,
    })
}

impl FromProto for Promotion {
    type Proto = proto::Promotion;
    fn from_proto(promotion: proto::Promotion) -> Result<Self, InvalidFields> {
        let mut errors = FieldErrors::new();
        let promotion = promotion_from_proto(promotion, "promotion", &mut errors);
        match promotion {
            Some(promotion) => errors.finish(promotion),
            None => Err(missing_parts(errors)),
        }
    }
}

/// The error of a conversion that could not build its value: every missing part was recorded.
pub(crate) fn missing_parts(errors: FieldErrors) -> InvalidFields {
    match errors.finish(()) {
        Err(invalid) => invalid,
        // A conversion returns no value only after recording why; say so rather than panic.
        Ok(()) => InvalidFields(vec![tollgate_domain::release::FieldError {
            field: String::new(),
            message: "could not be converted".into(),
        }]),
    }
}

/// A release on the wire, with the track it moves along. `halted_reason` is not part of the
/// domain release; the release handlers fill it from the store.
pub fn release_to_proto(release: &Release, track: &Track) -> proto::Release {
    DescribedRelease {
        release: release.clone(),
        track: track.clone(),
        halted_reason: None,
        targets: Vec::new(),
        customers: Vec::new(),
    }
    .to_proto()
}

/// A release as the controller describes it: the release, its track and why it is halted.
#[derive(Debug, Clone, PartialEq)]
pub struct DescribedRelease {
    /// The release.
    pub release: Release,
    /// The milestones it moves along.
    pub track: Track,
    /// Why promotions are halted; `None` when they are not.
    pub halted_reason: Option<String>,
    /// The plan of record: the milestones that have a target, in track order.
    pub targets: Vec<MilestoneTarget>,
    /// The customers the release is for, by name.
    pub customers: Vec<String>,
}

impl ToProto for DescribedRelease {
    type Proto = proto::Release;
    fn to_proto(&self) -> proto::Release {
        let DescribedRelease {
            release,
            track,
            halted_reason,
            targets,
            customers,
        } = self;
        let Release {
            id,
            description,
            components,
            milestone,
            created_at,
            promotions,
        } = release;
        proto::Release {
            name: id.to_string(),
            components: components.iter().map(ToProto::to_proto).collect(),
            description: description.clone(),
            milestone: milestone.clone(),
            track: track.milestones.clone(),
            created_at: Some(timestamp_to_proto(*created_at)),
            promotions: promotions.iter().map(ToProto::to_proto).collect(),
            halted_reason: halted_reason.clone().unwrap_or_default(),
            targets: targets.iter().map(ToProto::to_proto).collect(),
            projections: Vec::new(),
            customers: customers.clone(),
            blocking_issues: Vec::new(),
        }
    }
}

impl FromProto for DescribedRelease {
    type Proto = proto::Release;
    fn from_proto(release: proto::Release) -> Result<Self, InvalidFields> {
        let proto::Release {
            name,
            components,
            description,
            milestone,
            track,
            created_at,
            promotions,
            halted_reason,
            targets,
            // A projection is the controller's view at the time of the answer, for people to
            // read; nothing takes it back in.
            projections: _,
            customers,
            // Like the projections: the controller's view when it answered, for people.
            blocking_issues: _,
        } = release;
        let mut errors = FieldErrors::new();
        let components: Vec<Component> = components.into_iter().map(component_from_proto).collect();
        if let Err(problems) =
            tollgate_domain::release::validate_release(&name, &description, &components)
        {
            errors.extend(problems);
        }
        errors.text("milestone", &limits::NAME, &milestone);
        // A release's track and promotions are the controller's own (a handful of milestones),
        // so only their texts are bounded.
        for (idx, milestone) in track.iter().enumerate() {
            errors.text(&format!("track[{idx}]"), &limits::NAME, milestone);
        }
        errors.text("halted_reason", &limits::REASON, &halted_reason);
        let created_at = errors.required_timestamp("created_at", created_at);
        let promotions = promotions
            .into_iter()
            .enumerate()
            .filter_map(|(idx, p)| {
                promotion_from_proto(p, &format!("promotions[{idx}]"), &mut errors)
            })
            .collect();
        let targets = targets
            .into_iter()
            .enumerate()
            .filter_map(|(idx, t)| target_from_proto(t, &format!("targets[{idx}]"), &mut errors))
            .collect();
        if errors.count("customers", &limits::CUSTOMERS, customers.len()) {
            for (idx, customer) in customers.iter().enumerate() {
                errors.text(&format!("customers[{idx}]"), &limits::NAME, customer);
            }
        }
        let Some(created_at) = created_at else {
            return Err(missing_parts(errors));
        };
        errors.finish(DescribedRelease {
            release: Release {
                id: ReleaseId::new(name),
                description,
                components,
                milestone,
                created_at,
                promotions,
            },
            track: Track { milestones: track },
            halted_reason: non_empty(halted_reason),
            targets,
            customers,
        })
    }
}

impl ToProto for MilestoneProjection {
    type Proto = proto::MilestoneProjection;
    fn to_proto(&self) -> proto::MilestoneProjection {
        let MilestoneProjection {
            milestone,
            target,
            finish,
            risk,
            waits_for,
        } = self;
        let (basis, after) = match finish {
            Finish::Projected { basis, .. } => (basis.map(<&str>::from), None),
            Finish::AfterUnknown { milestone } => (None, Some(milestone.clone())),
            Finish::Passed { .. } | Finish::NoMatchingNode | Finish::NoPlan => (None, None),
        };
        proto::MilestoneProjection {
            milestone: milestone.clone(),
            target_date: target.map(|date| date.to_string()).unwrap_or_default(),
            finish: finish_name(finish).to_owned(),
            finish_at: finish.at().map(timestamp_to_proto),
            basis: basis.unwrap_or_default().to_owned(),
            risk: risk.map(<&str>::from).unwrap_or_default().to_owned(),
            after: after.unwrap_or_default(),
            waits_for: waits_for
                .iter()
                .map(|holder| proto::MilestoneRef {
                    release: holder.release.to_string(),
                    milestone: holder.milestone.clone(),
                })
                .collect(),
        }
    }
}

/// The wire name of a finish.
fn finish_name(finish: &Finish) -> &'static str {
    match finish {
        Finish::Passed { .. } => "passed",
        Finish::Projected { .. } => "projected",
        Finish::NoMatchingNode => "no-matching-node",
        Finish::NoPlan => "no-plan",
        Finish::AfterUnknown { .. } => "after-unknown",
    }
}

impl ToProto for MilestoneTarget {
    type Proto = proto::MilestoneTarget;
    fn to_proto(&self) -> proto::MilestoneTarget {
        let MilestoneTarget {
            milestone,
            target,
            reason,
            set_by,
            set_at,
        } = self;
        proto::MilestoneTarget {
            milestone: milestone.clone(),
            target_date: target.to_string(),
            reason: reason.clone().unwrap_or_default(),
            set_by: set_by.clone(),
            set_at: Some(timestamp_to_proto(*set_at)),
        }
    }
}

fn target_from_proto(
    target: proto::MilestoneTarget,
    field: &str,
    errors: &mut FieldErrors,
) -> Option<MilestoneTarget> {
    let proto::MilestoneTarget {
        milestone,
        target_date,
        reason,
        set_by,
        set_at,
    } = target;
    errors.text(&format!("{field}.milestone"), &limits::NAME, &milestone);
    errors.text(&format!("{field}.reason"), &limits::REASON, &reason);
    errors.text(&format!("{field}.set_by"), &limits::NAME, &set_by);
    let date = target_date.parse().ok();
    if date.is_none() {
        errors.add(
            format!("{field}.target_date"),
            format!("{} is not a date (YYYY-MM-DD)", limits::quote(&target_date)),
        );
    }
    let set_at = errors.required_timestamp(&format!("{field}.set_at"), set_at)?;
    Some(MilestoneTarget {
        milestone,
        target: date?,
        reason: non_empty(reason),
        set_by,
        set_at,
    })
}

/// When a milestone was passed or is projected to be, in words (`Finish::words`): `passed
/// 2026-12-04`, `2027-01-20 (timeouts)`, `no matching node`, `no run yet`, `after lab-qual`.
pub fn finish_words(projection: &proto::MilestoneProjection) -> String {
    finish_from_proto(projection).map_or_else(|| projection.finish.clone(), |finish| finish.words())
}

/// A projection's finish as the domain holds it; `None` for a kind this build does not know
/// (or a time it lacks).
fn finish_from_proto(projection: &proto::MilestoneProjection) -> Option<Finish> {
    let at = || {
        projection
            .finish_at
            .as_ref()
            .and_then(crate::time::timestamp_from_proto)
    };
    Some(match projection.finish.as_str() {
        "passed" => Finish::Passed { at: at()? },
        "projected" => Finish::Projected {
            at: at()?,
            basis: if projection.basis.is_empty() {
                None
            } else {
                Some(projection.basis.parse().ok()?)
            },
        },
        "no-matching-node" => Finish::NoMatchingNode,
        "no-plan" => Finish::NoPlan,
        "after-unknown" => Finish::AfterUnknown {
            milestone: projection.after.clone(),
        },
        _ => return None,
    })
}

/// A milestone's risk in words: `AT RISK (after-target)`; empty when it is not at risk.
pub fn risk_words(projection: &proto::MilestoneProjection) -> String {
    projection::risk_words(non_empty(projection.risk.clone()).as_deref())
}

/// What a milestone's jobs queue behind, in words: `waits for r549 customer-acceptance, r548
/// production`; empty when it waits for no other release.
pub fn waits_words(projection: &proto::MilestoneProjection) -> String {
    if projection.waits_for.is_empty() {
        return String::new();
    }
    let holders = projection
        .waits_for
        .iter()
        .map(|holder| (holder.release.as_str(), holder.milestone.as_str()));
    format!("waits for {}", projection::holders_words(holders))
}

/// A verdict as a sentence says it.
fn verdict_words(verdict: &str) -> String {
    match verdict {
        "failed" => "failed".to_owned(),
        "waiting" => "is waiting for evidence".to_owned(),
        "error" => "could not be evaluated".to_owned(),
        other => format!("is {other}"),
    }
}

/// How many of a release's blocking issues its one line names; the rest are counted.
const BLOCKING_ISSUES_NAMED: usize = 3;

/// A release's issues not closed or won't-fix, in words: `Open issues: issue #3 open, owner
/// alice, 4 d; issue #5 verifying, no owner, 0 d.`; empty when it has none.
pub fn blocking_issues_words(release: &proto::Release) -> String {
    if release.blocking_issues.is_empty() {
        return String::new();
    }
    let named: Vec<String> = release
        .blocking_issues
        .iter()
        .take(BLOCKING_ISSUES_NAMED)
        .map(|issue| {
            let owner = if issue.owner.is_empty() {
                "no owner".to_owned()
            } else {
                format!("owner {}", issue.owner)
            };
            format!(
                "issue #{} {}, {owner}, {} d",
                issue.id, issue.state, issue.age_days
            )
        })
        .collect();
    let more = match release.blocking_issues.len().saturating_sub(named.len()) {
        0 => String::new(),
        n => format!(" (and {n} more)"),
    };
    format!("Open issues: {}{more}.", named.join("; "))
}

/// What blocks the release now, in one line, from its gate decision evaluated now (or why
/// that failed), followed by its issues not closed or won't-fix (`blocking_issues`): the
/// dashboard's release page and `tollgate release list` and `show` say the same.
pub fn blocker(release: &proto::Release, decision: &Result<proto::Decision, String>) -> String {
    if release.milestone == tollgate_domain::release::RELEASED {
        return "Nothing: it passed every milestone and is released.".to_owned();
    }
    let sentence = gate_blocker(release, decision);
    match blocking_issues_words(release) {
        issues if issues.is_empty() => sentence,
        issues => format!("{sentence} {issues}"),
    }
}

/// What holds a release that is not released back now: its halt, or its gate decision.
fn gate_blocker(release: &proto::Release, decision: &Result<proto::Decision, String>) -> String {
    if !release.halted_reason.is_empty() {
        return format!(
            "It is halted ({}): a release manager must resume it before it runs or is promoted.",
            release.halted_reason
        );
    }
    let decision = match decision {
        Ok(decision) => decision,
        Err(why) => return format!("Its {} gate cannot be evaluated: {why}", release.milestone),
    };
    let holding: Vec<&proto::RuleDecision> = decision
        .rules
        .iter()
        .filter(|rule| {
            !matches!(
                rule.verdict.as_str(),
                "passed" | "waived" | "not-applicable"
            )
        })
        .collect();
    match (decision.verdict.as_str(), holding.first()) {
        ("passed", _) => format!(
            "Nothing: the {} gate passed, so a release manager may promote it now.",
            decision.milestone
        ),
        (verdict, Some(rule)) => {
            let more = match holding.len() {
                1 => String::new(),
                n => format!(" (and {} more rules)", n - 1),
            };
            format!(
                "The {} gate {}: rule {} {}: {}{more}.",
                decision.milestone,
                verdict_words(verdict),
                rule.rule_id,
                verdict_words(&rule.verdict),
                rule.reason.trim_end_matches('.')
            )
        }
        (verdict, None) => format!(
            "The {} gate {}: {}",
            decision.milestone,
            verdict_words(verdict),
            decision.summary
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_release_names_every_bad_field() {
        let request = proto::CreateReleaseRequest {
            name: "bad name".into(),
            components: vec![
                proto::Component {
                    name: "driver".into(),
                    version: String::new(),
                    ..Default::default()
                },
                proto::Component {
                    name: "vbios".into(),
                    version: "96.00".into(),
                    sha256: "xyz".into(),
                    ..Default::default()
                },
            ],
            description: String::new(),
        };
        let error = NewRelease::try_from(request).unwrap_err();
        assert_eq!(
            error.fields(),
            ["name", "components[0].version", "components[1].sha256"]
        );
    }

    #[test]
    fn a_described_release_without_a_creation_time_is_refused() {
        let mut wire =
            release_to_proto(&tollgate_domain::test_support::release(), &Track::default());
        wire.created_at = None;
        let error = DescribedRelease::from_proto(wire).unwrap_err();
        assert_eq!(error.fields(), ["created_at"]);
    }

    #[test]
    fn what_blocks_names_the_open_issues_after_the_gate() {
        let issue = |id: i64, state: &str, owner: &str, age_days: u32| proto::BlockingIssue {
            id,
            state: state.into(),
            owner: owner.into(),
            opened_at: None,
            age_days,
        };
        let mut release = proto::Release {
            name: "r550".into(),
            milestone: "lab-qual".into(),
            ..proto::Release::default()
        };
        let failed = Ok(proto::Decision {
            milestone: "lab-qual".into(),
            verdict: "failed".into(),
            rules: vec![proto::RuleDecision {
                rule_id: "temp".into(),
                verdict: "failed".into(),
                reason: "lab-3 ran hot.".into(),
                ..proto::RuleDecision::default()
            }],
            ..proto::Decision::default()
        });
        assert_eq!(
            blocker(&release, &failed),
            "The lab-qual gate failed: rule temp failed: lab-3 ran hot."
        );
        release.blocking_issues = vec![issue(3, "open", "alice", 4)];
        assert_eq!(
            blocker(&release, &failed),
            "The lab-qual gate failed: rule temp failed: lab-3 ran hot. Open issues: issue #3 \
             open, owner alice, 4 d."
        );
        release.blocking_issues.extend([
            issue(5, "verifying", "", 0),
            issue(6, "open", "bob", 1),
            issue(7, "fix-in-release", "", 2),
            issue(8, "open", "", 2),
        ]);
        assert_eq!(
            blocking_issues_words(&release),
            "Open issues: issue #3 open, owner alice, 4 d; issue #5 verifying, no owner, 0 d; \
             issue #6 open, owner bob, 1 d (and 2 more)."
        );
        // A halted release says so first; a released one is blocked by nothing.
        release.halted_reason = "BMC bug".into();
        assert!(
            blocker(&release, &failed).starts_with("It is halted (BMC bug)")
                && blocker(&release, &failed).contains("issue #3 open")
        );
        release.milestone = tollgate_domain::release::RELEASED.into();
        assert_eq!(
            blocker(&release, &failed),
            "Nothing: it passed every milestone and is released."
        );
    }
}
