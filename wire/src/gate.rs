//! Gate decisions, waivers and audit entries.

use crate::fields::{FieldErrors, InvalidFields};
use crate::release::missing_parts;
use crate::time::timestamp_to_proto;
use crate::{FromProto, ToProto, count_u32, non_empty};
use tollgate_domain::NodeId;
use tollgate_domain::audit::AuditEntry;
use tollgate_domain::gate::{Decision, EvidenceItem, FailureGroup, RuleDecision, Waiver};
use tollgate_proto::v1 as proto;

impl ToProto for EvidenceItem {
    type Proto = proto::EvidenceItem;
    fn to_proto(&self) -> proto::EvidenceItem {
        let EvidenceItem {
            node,
            step,
            attempt,
            gpu_index,
            value,
            limit,
            detail,
            ok,
            signature,
        } = self;
        proto::EvidenceItem {
            node: node.to_string(),
            step: step.clone().unwrap_or_default(),
            attempt: attempt.unwrap_or(0),
            value: *value,
            limit: limit.clone().unwrap_or_default(),
            detail: detail.clone(),
            ok: *ok,
            gpu_index: *gpu_index,
            signature: signature.clone().unwrap_or_default(),
        }
    }
}

/// An evidence item; the wire's empty texts and attempt 0 mean absent (attempts count from 1).
impl FromProto for EvidenceItem {
    type Proto = proto::EvidenceItem;
    fn from_proto(item: proto::EvidenceItem) -> Result<Self, InvalidFields> {
        let proto::EvidenceItem {
            node,
            step,
            attempt,
            value,
            limit,
            detail,
            ok,
            gpu_index,
            signature,
        } = item;
        Ok(EvidenceItem {
            node: NodeId::new(node),
            step: non_empty(step),
            attempt: (attempt != 0).then_some(attempt),
            gpu_index,
            value,
            limit: non_empty(limit),
            detail,
            ok,
            signature: non_empty(signature),
        })
    }
}

impl ToProto for FailureGroup {
    type Proto = proto::FailureGroup;
    fn to_proto(&self) -> proto::FailureGroup {
        let FailureGroup {
            signature,
            count,
            nodes,
        } = self;
        proto::FailureGroup {
            signature: signature.clone(),
            count: count_u32(*count),
            nodes: nodes.iter().map(ToString::to_string).collect(),
        }
    }
}

fn failure_group_from_proto(group: proto::FailureGroup) -> FailureGroup {
    let proto::FailureGroup {
        signature,
        count,
        nodes,
    } = group;
    FailureGroup {
        signature,
        count: usize::try_from(count).unwrap_or(usize::MAX),
        nodes: nodes.into_iter().map(NodeId::new).collect(),
    }
}

impl ToProto for RuleDecision {
    type Proto = proto::RuleDecision;
    fn to_proto(&self) -> proto::RuleDecision {
        let RuleDecision {
            rule_id,
            kind,
            verdict,
            reason,
            evidence,
            failing_nodes,
            failure_groups,
            waiver_id,
        } = self;
        proto::RuleDecision {
            rule_id: rule_id.clone(),
            kind: kind.clone(),
            verdict: verdict.as_str().to_owned(),
            reason: reason.clone(),
            evidence: evidence.iter().map(ToProto::to_proto).collect(),
            failing_nodes: failing_nodes.iter().map(ToString::to_string).collect(),
            failure_groups: failure_groups.iter().map(ToProto::to_proto).collect(),
            waiver_id: waiver_id.clone().unwrap_or_default(),
        }
    }
}

fn rule_from_proto(
    rule: proto::RuleDecision,
    field: &str,
    errors: &mut FieldErrors,
) -> Option<RuleDecision> {
    let proto::RuleDecision {
        rule_id,
        kind,
        verdict,
        reason,
        evidence,
        failing_nodes,
        failure_groups,
        waiver_id,
    } = rule;
    let verdict = errors.keyword(&format!("{field}.verdict"), &verdict)?;
    Some(RuleDecision {
        rule_id,
        kind,
        verdict,
        reason,
        evidence: evidence
            .into_iter()
            .filter_map(|item| EvidenceItem::from_proto(item).ok())
            .collect(),
        failing_nodes: failing_nodes.into_iter().map(NodeId::new).collect(),
        failure_groups: failure_groups
            .into_iter()
            .map(failure_group_from_proto)
            .collect(),
        waiver_id: non_empty(waiver_id),
    })
}

impl ToProto for Decision {
    type Proto = proto::Decision;
    fn to_proto(&self) -> proto::Decision {
        let Decision {
            release,
            milestone,
            verdict,
            summary,
            rules,
            digest,
            policy_version,
            evaluated_at,
        } = self;
        proto::Decision {
            release: release.clone(),
            milestone: milestone.clone(),
            verdict: verdict.as_str().to_owned(),
            summary: summary.clone(),
            rules: rules.iter().map(ToProto::to_proto).collect(),
            digest: digest.clone(),
            evaluated_at: Some(timestamp_to_proto(*evaluated_at)),
            policy_version: policy_version.clone(),
            greenwave_json: tollgate_domain::gate::greenwave(self).to_string(),
            // Only a replayed decision says how its replay went; the gate service sets it.
            replay: String::new(),
        }
    }
}

/// A decision as the controller sent it. The Greenwave form and the replay note are derived
/// from the decision or added beside it by the gate service, so they are not part of it.
impl FromProto for Decision {
    type Proto = proto::Decision;
    fn from_proto(decision: proto::Decision) -> Result<Self, InvalidFields> {
        let proto::Decision {
            release,
            milestone,
            verdict,
            summary,
            rules,
            digest,
            evaluated_at,
            policy_version,
            greenwave_json: _,
            replay: _,
        } = decision;
        let mut errors = FieldErrors::new();
        let verdict = errors.keyword("verdict", &verdict);
        let rules = rules
            .into_iter()
            .enumerate()
            .filter_map(|(idx, rule)| rule_from_proto(rule, &format!("rules[{idx}]"), &mut errors))
            .collect();
        let evaluated_at = errors.required_timestamp("evaluated_at", evaluated_at);
        let (Some(verdict), Some(evaluated_at)) = (verdict, evaluated_at) else {
            return Err(missing_parts(errors));
        };
        errors.finish(Decision {
            release,
            milestone,
            verdict,
            summary,
            rules,
            digest,
            policy_version,
            evaluated_at,
        })
    }
}

impl ToProto for Waiver {
    type Proto = proto::Waiver;
    fn to_proto(&self) -> proto::Waiver {
        let Waiver {
            id,
            release,
            milestone,
            rule_id,
            reason,
            ticket,
            approver,
            created_at,
            expires_at,
            revoked_at,
            nodes,
            skus,
            steps,
            issue,
        } = self;
        proto::Waiver {
            id: id.clone(),
            release: release.clone(),
            milestone: milestone.clone(),
            rule_id: rule_id.clone(),
            reason: reason.clone(),
            ticket: ticket.clone(),
            approver: approver.clone(),
            created_at: Some(timestamp_to_proto(*created_at)),
            expires_at: Some(timestamp_to_proto(*expires_at)),
            revoked_at: revoked_at.map(timestamp_to_proto),
            nodes: nodes.iter().map(ToString::to_string).collect(),
            skus: skus.clone(),
            steps: steps.clone(),
            issue: issue.unwrap_or(0),
            issue_state: String::new(),
        }
    }
}

impl FromProto for Waiver {
    type Proto = proto::Waiver;
    fn from_proto(waiver: proto::Waiver) -> Result<Self, InvalidFields> {
        let proto::Waiver {
            id,
            release,
            milestone,
            rule_id,
            reason,
            ticket,
            approver,
            created_at,
            expires_at,
            revoked_at,
            nodes,
            skus,
            steps,
            issue,
            issue_state: _,
        } = waiver;
        let mut errors = FieldErrors::new();
        let created_at = errors.required_timestamp("created_at", created_at);
        let expires_at = errors.required_timestamp("expires_at", expires_at);
        let revoked_at = errors.optional_timestamp("revoked_at", revoked_at);
        let (Some(created_at), Some(expires_at)) = (created_at, expires_at) else {
            return Err(missing_parts(errors));
        };
        errors.finish(Waiver {
            id,
            release,
            milestone,
            rule_id,
            reason,
            ticket,
            approver,
            created_at,
            expires_at,
            revoked_at,
            nodes: nodes.into_iter().map(NodeId::new).collect(),
            skus,
            steps,
            issue: (issue > 0).then_some(issue),
        })
    }
}

impl ToProto for AuditEntry {
    type Proto = proto::AuditEntry;
    fn to_proto(&self) -> proto::AuditEntry {
        let AuditEntry {
            seq,
            at,
            actor,
            action,
            subject,
            details,
            prev_hash,
            hash,
        } = self;
        proto::AuditEntry {
            seq: *seq,
            at: Some(timestamp_to_proto(*at)),
            actor: actor.clone(),
            action: action.clone(),
            subject: subject.clone(),
            details: details.clone(),
            prev_hash: prev_hash.clone(),
            hash: hash.clone(),
        }
    }
}

impl FromProto for AuditEntry {
    type Proto = proto::AuditEntry;
    fn from_proto(entry: proto::AuditEntry) -> Result<Self, InvalidFields> {
        let proto::AuditEntry {
            seq,
            at,
            actor,
            action,
            subject,
            details,
            prev_hash,
            hash,
        } = entry;
        let mut errors = FieldErrors::new();
        let Some(at) = errors.required_timestamp("at", at) else {
            return Err(missing_parts(errors));
        };
        errors.finish(AuditEntry {
            seq,
            at,
            actor,
            action,
            subject,
            details,
            prev_hash,
            hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_with_an_unknown_verdict_names_the_rule() {
        let decision = proto::Decision {
            verdict: "passed".into(),
            evaluated_at: Some(prost_types::Timestamp::default()),
            rules: vec![proto::RuleDecision {
                verdict: "green".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let error = Decision::from_proto(decision).unwrap_err();
        assert_eq!(error.fields(), ["rules[0].verdict"]);
    }
}
