//! Table tests for the issue lifecycle, signature matching across runs and releases, and
//! verification by a fix release's evidence.

use super::*;
use crate::gate::{EvidenceItem, FailureGroup, RuleDecision};
use crate::test_support::at;

fn release(name: &str) -> ReleaseId {
    ReleaseId::from(name)
}

fn nodes(names: &[&str]) -> BTreeSet<NodeId> {
    names.iter().map(|name| NodeId::from(*name)).collect()
}

fn signature(text: &str) -> Signature {
    Signature {
        kind: "steps-passed".into(),
        text: text.into(),
    }
}

fn fix(name: &str) -> IssueState {
    IssueState::FixInRelease {
        release: release(name),
    }
}

fn verifying(name: &str) -> IssueState {
    IssueState::Verifying {
        release: release(name),
    }
}

fn closed(name: &str) -> IssueState {
    IssueState::Closed {
        release: release(name),
    }
}

fn wont_fix() -> IssueState {
    IssueState::WontFix {
        reason: "hardware quirk".into(),
    }
}

#[test]
fn every_transition_and_refusal() {
    use IssueEvent as E;
    let fix_r2 = || E::Fix {
        release: release("r2"),
    };
    let wont = || E::WontFix {
        reason: " hardware quirk ".into(),
    };
    let refused =
        |state: &'static str, event: &'static str| Err(IssueRefusal::Transition { state, event });
    let cases: Vec<(IssueState, IssueEvent, Result<IssueState, IssueRefusal>)> = vec![
        (IssueState::Open, fix_r2(), Ok(fix("r2"))),
        (fix("r1"), fix_r2(), Ok(fix("r2"))),
        (verifying("r1"), fix_r2(), Ok(fix("r2"))),
        (closed("r1"), fix_r2(), refused("closed", "fix")),
        (wont_fix(), fix_r2(), refused("wont-fix", "fix")),
        (
            IssueState::Open,
            E::Fix {
                release: release(" "),
            },
            Err(IssueRefusal::NoRelease),
        ),
        (fix("r2"), E::VerificationStarted, Ok(verifying("r2"))),
        (
            IssueState::Open,
            E::VerificationStarted,
            refused("open", "verification-started"),
        ),
        (
            verifying("r2"),
            E::VerificationStarted,
            refused("verifying", "verification-started"),
        ),
        (fix("r2"), E::Verified, Ok(closed("r2"))),
        (verifying("r2"), E::Verified, Ok(closed("r2"))),
        (IssueState::Open, E::Verified, refused("open", "verified")),
        (closed("r2"), E::Verified, refused("closed", "verified")),
        (fix("r2"), E::StillFailing, Ok(IssueState::Open)),
        (verifying("r2"), E::StillFailing, Ok(IssueState::Open)),
        (
            IssueState::Open,
            E::StillFailing,
            refused("open", "still-failing"),
        ),
        (IssueState::Open, wont(), Ok(wont_fix())),
        (fix("r2"), wont(), Ok(wont_fix())),
        (verifying("r2"), wont(), Ok(wont_fix())),
        (closed("r2"), wont(), refused("closed", "wont-fix")),
        (
            IssueState::Open,
            E::WontFix {
                reason: "  ".into(),
            },
            Err(IssueRefusal::NoReason),
        ),
        (closed("r2"), E::Reopen, Ok(IssueState::Open)),
        (wont_fix(), E::Reopen, Ok(IssueState::Open)),
        (IssueState::Open, E::Reopen, refused("open", "reopen")),
        (fix("r2"), E::Reopen, refused("fix-in-release", "reopen")),
    ];
    for (state, event, want) in cases {
        let label = format!("{state:?} + {event:?}");
        assert_eq!(next(&state, event), want, "{label}");
    }
}

#[test]
fn states_round_trip_through_their_stored_parts() {
    for state in [
        IssueState::Open,
        fix("r2"),
        verifying("r2"),
        closed("r2"),
        wont_fix(),
    ] {
        let back = IssueState::from_parts(
            state.name(),
            state.release().map(ReleaseId::as_str),
            state.reason(),
        );
        assert_eq!(back, Ok(state));
    }
    assert_eq!(
        IssueState::from_parts("done", None, None),
        Err("unknown IssueStateName 'done' (expected one of: open, fix-in-release, verifying, closed, wont-fix)".into())
    );
    assert!(IssueState::from_parts("closed", None, None).is_err());
}

fn known(id: i64, text: &str, state: IssueState, in_releases: &[&str], on: &[&str]) -> KnownIssue {
    KnownIssue {
        id,
        signature: signature(text),
        state,
        releases: in_releases.iter().map(|name| release(name)).collect(),
        nodes: nodes(on),
    }
}

fn failure(text: &str, in_release: &str, on: &[&str]) -> Failure {
    Failure {
        signature: signature(text),
        release: release(in_release),
        nodes: nodes(on),
    }
}

#[test]
fn matching_across_runs_and_releases() {
    let testcase = "gemm: testcase gemm_fp16 failed";
    let other = "gemm: testcase gemm_fp8 failed";
    let attach = |id, new_release: Option<&str>, new_nodes: &[&str], event| Match::Attach {
        id,
        new_release: new_release.map(release),
        new_nodes: nodes(new_nodes),
        event,
    };
    let cases: Vec<(&str, KnownIssue, Failure, Vec<Match>)> = vec![
        (
            "the same failure again (a re-evaluation, a second run on the same nodes) changes nothing",
            known(1, testcase, IssueState::Open, &["r1"], &["n1"]),
            failure(testcase, "r1", &["n1"]),
            vec![],
        ),
        (
            "the same testcase on new nodes attaches to the issue",
            known(1, testcase, IssueState::Open, &["r1"], &["n1"]),
            failure(testcase, "r1", &["n1", "n2", "n3"]),
            vec![attach(1, None, &["n2", "n3"], None)],
        ),
        (
            "the same testcase in another release attaches with the release",
            known(1, testcase, IssueState::Open, &["r1"], &["n1"]),
            failure(testcase, "r2", &["n1"]),
            vec![attach(1, Some("r2"), &[], None)],
        ),
        (
            "a different testcase opens a new issue",
            known(1, testcase, IssueState::Open, &["r1"], &["n1"]),
            failure(other, "r1", &["n1"]),
            vec![Match::Open(failure(other, "r1", &["n1"]))],
        ),
        (
            "failing in the fix release sends it back to open",
            known(1, testcase, fix("r2"), &["r1"], &["n1"]),
            failure(testcase, "r2", &["n1"]),
            vec![attach(1, Some("r2"), &[], Some(IssueEvent::StillFailing))],
        ),
        (
            "failing again in the release it was known in leaves a fix alone",
            known(1, testcase, verifying("r2"), &["r1"], &["n1"]),
            failure(testcase, "r1", &["n1"]),
            vec![],
        ),
        (
            "a closed issue failing in the old release (its gate re-evaluated) stays closed",
            known(1, testcase, closed("r2"), &["r1"], &["n1"]),
            failure(testcase, "r1", &["n1"]),
            vec![],
        ),
        (
            "a closed issue failing in a new release reopens",
            known(1, testcase, closed("r2"), &["r1"], &["n1"]),
            failure(testcase, "r3", &["n1"]),
            vec![attach(1, Some("r3"), &[], Some(IssueEvent::Reopen))],
        ),
        (
            "a won't-fix issue attaches new failures and stays won't-fix",
            known(1, testcase, wont_fix(), &["r1"], &["n1"]),
            failure(testcase, "r3", &["n2"]),
            vec![attach(1, Some("r3"), &["n2"], None)],
        ),
    ];
    for (what, issue, failure, want) in cases {
        assert_eq!(plan_matches(&[issue], &[failure]), want, "{what}");
    }
}

fn item(node: &str, ok: bool, signature: Option<&str>) -> EvidenceItem {
    EvidenceItem {
        node: NodeId::from(node),
        step: Some("gemm".into()),
        attempt: Some(1),
        gpu_index: None,
        value: None,
        limit: None,
        detail: "gemm".into(),
        ok,
        signature: signature.map(str::to_owned),
    }
}

fn decision(verdict: Verdict, kind: &str, evidence: Vec<EvidenceItem>) -> Decision {
    let mut groups: BTreeMap<String, BTreeSet<NodeId>> = BTreeMap::new();
    for item in evidence.iter().filter(|item| !item.ok) {
        if let Some(signature) = &item.signature {
            groups
                .entry(signature.clone())
                .or_default()
                .insert(item.node.clone());
        }
    }
    Decision {
        release: "r2".into(),
        milestone: "lab-qual".into(),
        verdict,
        summary: String::new(),
        rules: vec![RuleDecision {
            rule_id: "steps".into(),
            kind: kind.into(),
            verdict,
            reason: String::new(),
            failing_nodes: Vec::new(),
            failure_groups: groups
                .into_iter()
                .map(|(signature, nodes)| FailureGroup {
                    signature,
                    count: nodes.len(),
                    nodes: nodes.into_iter().collect(),
                })
                .collect(),
            evidence,
            waiver_id: None,
        }],
        digest: String::new(),
        policy_version: String::new(),
        evaluated_at: at(0),
    }
}

#[test]
fn failures_of_a_decision_are_one_per_signature_and_only_from_failed_rules() {
    let failed = decision(
        Verdict::Failed,
        "steps-passed",
        vec![
            item("n1", false, Some("gemm: failed")),
            item("n2", false, Some("gemm: failed")),
            item("n3", true, None),
        ],
    );
    assert_eq!(
        failures_of(&failed),
        vec![failure("gemm: failed", "r2", &["n1", "n2"])]
    );
    let waiting = decision(
        Verdict::Waiting,
        "steps-passed",
        vec![item("n1", false, Some("gemm: failed"))],
    );
    assert_eq!(failures_of(&waiting), vec![]);
}

#[test]
fn a_person_names_a_failure_group_by_rule_and_number_or_by_signature() {
    let failed = decision(
        Verdict::Failed,
        "steps-passed",
        vec![
            item("n1", false, Some("gemm: failed")),
            item("n2", false, Some("stress: failed")),
        ],
    );
    // Groups are numbered from 1 in the decision's order (here by signature).
    assert_eq!(
        failure_named(&failed, "steps#2"),
        Ok(failure("stress: failed", "r2", &["n2"]))
    );
    assert_eq!(
        failure_named(&failed, " steps-passed: gemm: failed "),
        Ok(failure("gemm: failed", "r2", &["n1"]))
    );
    let unknown = failure_named(&failed, "steps#3").unwrap_err();
    assert!(
        unknown.contains("give one of: steps#1 (steps-passed: gemm: failed), steps#2"),
        "{unknown}"
    );
    let passed = decision(
        Verdict::Passed,
        "steps-passed",
        vec![item("n1", true, None)],
    );
    let none = failure_named(&passed, "steps#1").unwrap_err();
    assert!(none.contains("has none (no rule failed)"), "{none}");
}

/// What it shows, the issue's state, the release judged, its checks, the event wanted.
type VerificationCase = (
    &'static str,
    IssueState,
    &'static str,
    BTreeMap<NodeId, NodeCheck>,
    Option<IssueEvent>,
);

#[test]
fn verification_by_the_fix_release() {
    let sig = signature("gemm: failed");
    let affected = nodes(&["n1", "n2"]);
    let passed_on = |on: &[&str], failing: &[&str]| {
        let mut evidence: Vec<EvidenceItem> = on.iter().map(|n| item(n, true, None)).collect();
        evidence.extend(failing.iter().map(|n| item(n, false, Some("gemm: failed"))));
        let verdict = if failing.is_empty() {
            Verdict::Passed
        } else {
            Verdict::Failed
        };
        checks_of(&decision(verdict, "steps-passed", evidence), &sig)
    };
    let cases: Vec<VerificationCase> = vec![
        (
            "passing on every affected node closes it",
            fix("r2"),
            "r2",
            passed_on(&["n1", "n2", "n9"], &[]),
            Some(IssueEvent::Verified),
        ),
        (
            "verifying closes the same way",
            verifying("r2"),
            "r2",
            passed_on(&["n1", "n2"], &[]),
            Some(IssueEvent::Verified),
        ),
        (
            "passing on some affected nodes starts verifying",
            fix("r2"),
            "r2",
            passed_on(&["n1"], &[]),
            Some(IssueEvent::VerificationStarted),
        ),
        (
            "already verifying and still partial: nothing",
            verifying("r2"),
            "r2",
            passed_on(&["n1"], &[]),
            None,
        ),
        (
            "still failing on an affected node sends it back to open",
            verifying("r2"),
            "r2",
            passed_on(&["n1"], &["n2"]),
            Some(IssueEvent::StillFailing),
        ),
        (
            "another release's evidence verifies nothing",
            fix("r2"),
            "r3",
            passed_on(&["n1", "n2"], &[]),
            None,
        ),
        (
            "no evidence yet: nothing",
            fix("r2"),
            "r2",
            BTreeMap::new(),
            None,
        ),
        (
            "an open issue is not verified",
            IssueState::Open,
            "r2",
            passed_on(&["n1", "n2"], &[]),
            None,
        ),
    ];
    for (what, state, in_release, checks, want) in cases {
        assert_eq!(
            plan_verification(&state, &affected, &release(in_release), &checks),
            want,
            "{what}"
        );
    }
}

#[test]
fn another_failure_on_a_node_leaves_its_check_pending() {
    let sig = signature("gemm: failed");
    let checks = checks_of(
        &decision(
            Verdict::Failed,
            "steps-passed",
            vec![item("n1", false, Some("install: failed"))],
        ),
        &sig,
    );
    assert_eq!(checks.get(&NodeId::from("n1")), Some(&NodeCheck::Pending));
    let other_kind = checks_of(
        &decision(Verdict::Passed, "events", vec![item("n1", true, None)]),
        &sig,
    );
    assert!(other_kind.is_empty());
}
