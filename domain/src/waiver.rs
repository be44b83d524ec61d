//! Waivers: whether one may be granted ([`grant`]: the request's fields, its expiry, and its
//! scope, a rule of the milestone's gate) and whether one may be revoked ([`revoke`]: only one
//! still in force). The controller loads the release, the gate and the waiver, asks here, and
//! stores what it gets with its audit entry.
//!
//! ```text
//!   granted ──revoke (before it expires)──▶ revoked
//!      └──────────── expires_at passes ────▶ expired
//! ```

use crate::gate::{GatePolicy, Waiver};
use crate::release::FieldError;
use crate::{NodeId, Timestamp};

/// A waiver as asked for: the request's text fields, trimmed here, and its expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaiverRequest {
    /// The new waiver's id (made by the caller: ids are random, the domain is not).
    pub id: String,
    /// Release name.
    pub release: String,
    /// The rule to waive.
    pub rule_id: String,
    /// Why the rule may be waived.
    pub reason: String,
    /// The ticket that tracks it.
    pub ticket: String,
    /// Who approves it.
    pub approver: String,
    /// When it stops applying, when given as a time.
    pub expires_at: Option<Timestamp>,
    /// How long it applies, in seconds, when given as a duration (0: not given).
    pub ttl_seconds: u64,
    /// Only failures on these nodes; empty for any node.
    pub nodes: Vec<String>,
    /// Only failures on nodes with these `sku` labels; empty for any SKU.
    pub skus: Vec<String>,
    /// Only failures in these steps; empty for any step.
    pub steps: Vec<String>,
    /// The issue the waived failures are tracked in, if any.
    pub issue: Option<i64>,
}

/// Checks what a waiver request says on its own, before anything is loaded: every field
/// problem at once. Returns when the waiver expires.
pub fn check_request(
    request: &WaiverRequest,
    now: Timestamp,
) -> Result<Timestamp, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut field = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.into(),
            message,
        });
    };
    for (name, value, hint) in [
        ("release", &request.release, "give a release name"),
        (
            "rule_id",
            &request.rule_id,
            "give the id of the rule to waive",
        ),
        ("reason", &request.reason, "say why the rule may be waived"),
        (
            "ticket",
            &request.ticket,
            "give the ticket that tracks the waiver",
        ),
    ] {
        if value.trim().is_empty() {
            field(name, format!("is empty; {hint}"));
        }
    }
    if let Some(issue) = request.issue.filter(|issue| *issue <= 0) {
        field(
            "issue",
            format!("is {issue}; give an issue number (`tollgate issue list` shows them)"),
        );
    }
    let expires_at = match (request.expires_at, request.ttl_seconds) {
        (Some(_), ttl) if ttl > 0 => {
            field(
                "expires_at, ttl_seconds",
                "give one of them, not both".into(),
            );
            None
        }
        (Some(at), _) if at > now => Some(at),
        (Some(at), _) => {
            field(
                "expires_at",
                format!("{} is not in the future", at.to_rfc3339()),
            );
            None
        }
        (None, 0) => {
            field(
                "expires_at, ttl_seconds",
                "both missing; a waiver must expire".into(),
            );
            None
        }
        (None, ttl) => {
            let at = i64::try_from(ttl)
                .ok()
                .and_then(chrono::TimeDelta::try_seconds)
                .and_then(|ttl| now.checked_add_signed(ttl));
            if at.is_none() {
                field("ttl_seconds", format!("{ttl} is too long"));
            }
            at
        }
    };
    match expires_at {
        Some(at) if errors.is_empty() => Ok(at),
        _ => Err(errors),
    }
}

/// Why a waiver cannot be granted or revoked; the message says what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WaiverRefusal {
    /// The request's own fields are wrong (see [`check_request`]).
    #[error("invalid waiver request")]
    Fields(Vec<FieldError>),
    /// The milestone has no gate, so there is no rule to waive.
    #[error("no gate for milestone {milestone}; apply one with `tollgate gate apply -f FILE`")]
    NoGate {
        /// The milestone.
        milestone: String,
    },
    /// The rule is not one of the milestone's gate.
    #[error(
        "rule_id: '{rule_id}' is not a rule of the gate of milestone {milestone} (rules: {rules})"
    )]
    UnknownRule {
        /// The rule asked for.
        rule_id: String,
        /// The milestone.
        milestone: String,
        /// The gate's rule ids, comma separated.
        rules: String,
    },
    /// Revoked before: a waiver is revoked once.
    #[error("waiver {id} was revoked already")]
    AlreadyRevoked {
        /// The waiver.
        id: String,
    },
    /// Expired waivers are no longer in force; there is nothing to revoke.
    #[error("waiver {id} expired at {expired_at}; it is no longer in force, nothing to revoke")]
    Expired {
        /// The waiver.
        id: String,
        /// When it expired (RFC 3339).
        expired_at: String,
    },
}

/// The waiver to store for `request` at `milestone`, whose ruling gate is `gate` (`None`: the
/// milestone has none), or why not.
pub fn grant(
    request: WaiverRequest,
    milestone: &str,
    gate: Option<&GatePolicy>,
    now: Timestamp,
) -> Result<Waiver, WaiverRefusal> {
    let expires_at = check_request(&request, now).map_err(WaiverRefusal::Fields)?;
    let Some(gate) = gate else {
        return Err(WaiverRefusal::NoGate {
            milestone: milestone.to_owned(),
        });
    };
    if !gate.rules.iter().any(|rule| rule.id == request.rule_id) {
        let ids: Vec<&str> = gate.rules.iter().map(|rule| rule.id.as_str()).collect();
        return Err(WaiverRefusal::UnknownRule {
            rule_id: request.rule_id,
            milestone: milestone.to_owned(),
            rules: ids.join(", "),
        });
    }
    Ok(Waiver {
        id: request.id,
        release: request.release.trim().to_owned(),
        milestone: milestone.to_owned(),
        rule_id: request.rule_id,
        reason: request.reason.trim().to_owned(),
        ticket: request.ticket.trim().to_owned(),
        approver: request.approver,
        created_at: now,
        expires_at,
        revoked_at: None,
        nodes: request.nodes.into_iter().map(NodeId::from).collect(),
        skus: request.skus,
        steps: request.steps,
        issue: request.issue,
    })
}

/// When `waiver` is revoked if revoked at `now`, or why it cannot be: only a waiver in force
/// (not revoked, not expired) is revoked. The store applies it only if the waiver is still
/// not revoked.
pub fn revoke(waiver: &Waiver, now: Timestamp) -> Result<Timestamp, WaiverRefusal> {
    if waiver.revoked_at.is_some() {
        return Err(WaiverRefusal::AlreadyRevoked {
            id: waiver.id.clone(),
        });
    }
    if waiver.expires_at <= now {
        return Err(WaiverRefusal::Expired {
            id: waiver.id.clone(),
            expired_at: waiver.expires_at.to_rfc3339(),
        });
    }
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::at;

    fn request() -> WaiverRequest {
        WaiverRequest {
            id: "waiver-1".into(),
            release: "r550".into(),
            rule_id: gate().rules[0].id.clone(),
            reason: " fan curve bug ".into(),
            ticket: "HW-1".into(),
            approver: "alice".into(),
            expires_at: None,
            ttl_seconds: 60,
            nodes: vec!["lab-3".into()],
            skus: Vec::new(),
            steps: Vec::new(),
            issue: None,
        }
    }

    fn gate() -> GatePolicy {
        let yaml =
            "milestone: lab-qual\nrules:\n  - steps-passed: {plan: gpu-qual, steps: [stress]}\n";
        crate::gate::parse_gate("gate.yaml", yaml).expect("a valid gate")
    }

    #[test]
    fn a_valid_request_on_a_rule_of_the_gate_is_granted_until_its_expiry() {
        let waiver = grant(request(), "lab-qual", Some(&gate()), at(100)).expect("granted");
        assert_eq!(waiver.expires_at, at(160));
        assert_eq!(waiver.reason, "fan curve bug");
        assert_eq!(waiver.milestone, "lab-qual");
        assert_eq!(waiver.nodes, [NodeId::from("lab-3")]);
        assert_eq!(waiver.revoked_at, None);
        let explicit = WaiverRequest {
            expires_at: Some(at(500)),
            ttl_seconds: 0,
            ..request()
        };
        let waiver = grant(explicit, "lab-qual", Some(&gate()), at(100)).expect("granted");
        assert_eq!(waiver.expires_at, at(500));
    }

    #[test]
    fn every_bad_field_is_named_at_once() {
        let bad = WaiverRequest {
            reason: " ".into(),
            ticket: String::new(),
            expires_at: Some(at(50)),
            ttl_seconds: 0,
            ..request()
        };
        let Err(WaiverRefusal::Fields(errors)) = grant(bad, "lab-qual", Some(&gate()), at(100))
        else {
            panic!("field errors expected");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["reason", "ticket", "expires_at"]);
        assert!(errors[2].message.contains("not in the future"));
        let both = WaiverRequest {
            expires_at: Some(at(500)),
            ..request()
        };
        let errors = check_request(&both, at(100)).expect_err("both");
        assert_eq!(errors[0].field, "expires_at, ttl_seconds");
        let neither = WaiverRequest {
            ttl_seconds: 0,
            ..request()
        };
        let errors = check_request(&neither, at(100)).expect_err("neither");
        assert!(errors[0].message.contains("must expire"));
        let forever = WaiverRequest {
            ttl_seconds: u64::MAX,
            ..request()
        };
        let errors = check_request(&forever, at(100)).expect_err("too long");
        assert_eq!(errors[0].field, "ttl_seconds");
    }

    #[test]
    fn the_scope_must_be_a_rule_of_the_milestone_s_gate() {
        let unknown = WaiverRequest {
            rule_id: "no-such-rule".into(),
            ..request()
        };
        let refusal = grant(unknown, "lab-qual", Some(&gate()), at(100)).expect_err("refused");
        assert!(
            matches!(&refusal, WaiverRefusal::UnknownRule { rules, .. } if *rules == gate().rules[0].id),
            "{refusal:?}"
        );
        assert!(refusal.to_string().contains("no-such-rule"), "{refusal}");
        assert_eq!(
            grant(request(), "lab-qual", None, at(100)),
            Err(WaiverRefusal::NoGate {
                milestone: "lab-qual".into()
            })
        );
    }

    #[test]
    fn only_a_waiver_in_force_is_revoked() {
        let waiver = grant(request(), "lab-qual", Some(&gate()), at(100)).expect("granted");
        assert_eq!(revoke(&waiver, at(120)), Ok(at(120)));
        assert!(matches!(
            revoke(&waiver, at(160)),
            Err(WaiverRefusal::Expired { .. })
        ));
        let revoked = Waiver {
            revoked_at: Some(at(120)),
            ..waiver
        };
        assert_eq!(
            revoke(&revoked, at(130)),
            Err(WaiverRefusal::AlreadyRevoked {
                id: "waiver-1".into()
            })
        );
    }
}
