//! The status report's two formats, compared with the files committed under
//! `domain/tests/snapshots/` (fixed facts, a fixed clock). After a change to the report made on
//! purpose, write them again with
//! `TOLLGATE_BLESS=1 cargo test -p tollgate-domain --test status_report` and review the diff.

use chrono::{DateTime, NaiveDate, Utc};
use std::path::PathBuf;
use tollgate_domain::note::{Action, Done, Note};
use tollgate_domain::projection::{Basis, Finish, Holder, MilestoneProjection, Risk};
use tollgate_domain::status_report::{
    ExpiringWaiver, FailingRule, Minutes, OpenIssue, Passed, ReleaseStatus, StatusFacts, html,
    markdown,
};
use tollgate_domain::{ReleaseId, Timestamp};

fn at(text: &str) -> Timestamp {
    DateTime::parse_from_rfc3339(text)
        .expect("a test time")
        .with_timezone(&Utc)
}

fn date(text: &str) -> NaiveDate {
    text.parse().expect("a test date")
}

/// A release that failed its gate on one node, with an issue, a waiver about to expire and a
/// milestone projected after its target; one passed its first milestone this week; one whose
/// name is hostile markup; and minutes with an overdue action item.
fn facts() -> StatusFacts {
    let now = at("2026-12-07T09:00:00Z");
    let r550 = ReleaseStatus {
        release: ReleaseId::from("r550"),
        milestone: "lab-qual".into(),
        customers: vec!["acme".into(), "globex".into()],
        milestones: vec![
            MilestoneProjection {
                milestone: "lab-qual".into(),
                target: Some(date("2026-12-05")),
                finish: Finish::Projected {
                    at: at("2026-12-08T10:00:00Z"),
                    basis: Some(Basis::Measured),
                },
                risk: Some(Risk::AfterTarget),
                waits_for: vec![Holder {
                    release: ReleaseId::from("r549"),
                    milestone: "customer-acceptance".into(),
                }],
            },
            MilestoneProjection {
                milestone: "customer-acceptance".into(),
                target: Some(date("2027-01-15")),
                finish: Finish::Projected {
                    at: at("2026-12-09T10:00:00Z"),
                    basis: Some(Basis::Timeouts),
                },
                risk: None,
                waits_for: Vec::new(),
            },
            MilestoneProjection {
                milestone: "production".into(),
                target: None,
                finish: Finish::NoMatchingNode,
                risk: Some(Risk::NoMatchingNode),
                waits_for: Vec::new(),
            },
        ],
        passed: Vec::new(),
        blocker: "The lab-qual gate failed: rule telemetry:gpu_temp_c failed: max 93 C over 88 C on lab-4.".into(),
        failing_rules: vec![FailingRule {
            rule_id: "telemetry:gpu_temp_c".into(),
            verdict: "failed".into(),
            reason: "max 93 C over 88 C".into(),
            nodes: vec!["lab-4".into()],
        }],
        missing_evidence: vec!["dcgm-diag".into()],
        open_issues: vec![OpenIssue {
            id: 3,
            title: "telemetry: gpu_temp_c max breaks < 88 in stress".into(),
            state: "open".into(),
            owner: Some("bob".into()),
            opened_at: at("2026-12-02T08:00:00Z"),
        }],
        expiring_waivers: vec![ExpiringWaiver {
            id: "waiver-1f2e3d4c5b6a7988".into(),
            milestone: "lab-qual".into(),
            rule_id: "events:xid".into(),
            expires_at: at("2026-12-10T12:00:00Z"),
        }],
    };
    let r560 = ReleaseStatus {
        release: ReleaseId::from("r560"),
        milestone: "customer-acceptance".into(),
        customers: vec!["acme".into()],
        milestones: vec![
            MilestoneProjection {
                milestone: "lab-qual".into(),
                target: Some(date("2026-12-06")),
                finish: Finish::Passed {
                    at: at("2026-12-04T15:00:00Z"),
                },
                risk: None,
                waits_for: Vec::new(),
            },
            MilestoneProjection {
                milestone: "customer-acceptance".into(),
                target: None,
                finish: Finish::NoPlan,
                risk: None,
                waits_for: Vec::new(),
            },
        ],
        passed: vec![
            Passed::Gate {
                at: at("2026-12-04T14:00:00Z"),
                milestone: "lab-qual".into(),
                digest: "0123456789abcdef0123456789abcdef".into(),
            },
            Passed::Promotion {
                at: at("2026-12-04T15:00:00Z"),
                from: "lab-qual".into(),
                to: "customer-acceptance".into(),
                actor: "alice".into(),
            },
        ],
        blocker: "Its customer-acceptance gate cannot be evaluated: no gate for milestone customer-acceptance".into(),
        failing_rules: Vec::new(),
        missing_evidence: Vec::new(),
        open_issues: Vec::new(),
        expiring_waivers: Vec::new(),
    };
    let hostile = ReleaseStatus {
        release: ReleaseId::from("<script>alert(1)</script>"),
        milestone: "lab-qual".into(),
        customers: Vec::new(),
        milestones: Vec::new(),
        passed: Vec::new(),
        blocker:
            "It is halted (\"<img src=x onerror=alert(2)>\"): a release manager must resume it."
                .into(),
        failing_rules: Vec::new(),
        missing_evidence: Vec::new(),
        open_issues: Vec::new(),
        expiring_waivers: Vec::new(),
    };
    let note = |id: i64, text: &str, action: Option<(&str, &str)>, when: &str| Note {
        id,
        release: ReleaseId::from("r550"),
        text: text.into(),
        action: action.map(|(owner, due)| Action {
            owner: owner.into(),
            due: date(due),
        }),
        author: "alice".into(),
        at: at(when),
        done: None,
    };
    let done = |mut note: Note, by: &str, when: &str, comment: Option<&str>| {
        note.done = Some(Done {
            at: at(when),
            by: by.into(),
            comment: comment.map(Into::into),
        });
        note
    };
    StatusFacts {
        now,
        since: at("2026-11-30T09:00:00Z"),
        customer: None,
        dashboard: "https://tollgate.lab:7880".into(),
        releases: vec![r550, r560, hostile],
        minutes: Some(Minutes {
            decisions: vec![note(
                1,
                "ship r560 to acme once customer-acceptance passes",
                None,
                "2026-12-03T10:00:00Z",
            )],
            actions: vec![
                note(
                    2,
                    "replace lab-4's fan",
                    Some(("carol", "2026-12-05")),
                    "2026-12-03T10:05:00Z",
                ),
                note(
                    3,
                    "ask the vendor for VBIOS 96.00.8A",
                    Some(("bob", "2026-12-11")),
                    "2026-12-03T10:06:00Z",
                ),
            ],
            done: vec![
                done(
                    note(
                        4,
                        "reflash lab-2's CX7",
                        Some(("dave", "2026-12-02")),
                        "2026-11-25T10:00:00Z",
                    ),
                    "dave",
                    "2026-12-01T16:00:00Z",
                    Some("flashed to 28.39.1002 <ok>"),
                ),
                done(
                    note(
                        5,
                        "book the lab for r560",
                        Some(("erin", "2026-12-09")),
                        "2026-12-03T10:07:00Z",
                    ),
                    "erin",
                    "2026-12-04T08:00:00Z",
                    None,
                ),
            ],
        }),
    }
}

fn snapshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots")
}

/// Compares `text` with the committed file `name`, or writes it with `TOLLGATE_BLESS=1`.
fn check_snapshot(name: &str, text: &str) {
    let path = snapshot_dir().join(name);
    if std::env::var_os("TOLLGATE_BLESS").is_some() {
        std::fs::create_dir_all(snapshot_dir()).expect("make the snapshot folder");
        std::fs::write(&path, text).expect("write the snapshot");
        return;
    }
    let kept = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "{}: {error}; write it with TOLLGATE_BLESS=1 cargo test -p tollgate-domain --test status_report",
            path.display()
        )
    });
    assert!(
        kept == text,
        "{} differs from the report rendered now; if the change is meant, write it again with \
         TOLLGATE_BLESS=1 cargo test -p tollgate-domain --test status_report\n--- now:\n{text}",
        path.display()
    );
}

#[test]
fn markdown_matches_its_snapshot() {
    check_snapshot("status.md", &markdown(&facts()));
}

#[test]
fn html_matches_its_snapshot() {
    check_snapshot("status.html", &html(&facts()));
}

#[test]
fn html_escapes_every_text() {
    let page = html(&facts());
    assert!(!page.contains("<script>"), "{page}");
    assert!(!page.contains("<img"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(
        page.contains(
            "href=\"https://tollgate.lab:7880/releases/%3Cscript%3Ealert%281%29%3C%2Fscript%3E\""
        ),
        "{page}"
    );
    let text = markdown(&facts());
    assert!(!text.contains("<script>"), "{text}");
    assert!(text.contains("\\<script\\>alert(1)\\</script\\>"), "{text}");
}

#[test]
fn a_customer_scoped_report_shows_only_its_releases() {
    let mut facts = facts();
    facts.customer = Some("globex".into());
    let text = markdown(&facts);
    assert!(text.contains("## Customer globex"), "{text}");
    assert!(text.contains("r550"), "{text}");
    assert!(!text.contains("[r560]"), "{text}");
    assert!(!text.contains("Customer acme"), "{text}");
    assert!(!text.contains("script"), "{text}");
    assert!(text.contains("replace lab-4's fan"), "{text}");
    facts.customer = Some("initech".into());
    let text = markdown(&facts);
    assert!(!text.contains("r550"), "{text}");
    assert!(!text.contains("replace lab-4's fan"), "{text}");
    assert!(text.contains("No release to report."), "{text}");
}

#[test]
fn links_are_paths_without_a_dashboard_url() {
    let mut facts = facts();
    facts.dashboard = String::new();
    let text = markdown(&facts);
    assert!(
        text.contains("### [r550](/releases/r550) at lab-qual"),
        "{text}"
    );
    assert!(text.contains("[lab-4](/nodes/lab-4)"), "{text}");
    let page = html(&facts);
    assert!(
        page.contains("<a href=\"/releases/r560\">r560</a>"),
        "{page}"
    );
}

#[test]
fn at_risk_milestones_and_overdue_actions_are_flagged() {
    let text = markdown(&facts());
    assert!(
        text.contains("| lab-qual | 2026-12-05 | 2026-12-08 (measured) | AT RISK (after-target) |"),
        "{text}"
    );
    assert!(
        text.contains("lab-qual is projected for 2026-12-08, 3 days after its target 2026-12-05"),
        "{text}"
    );
    assert!(
        text.contains("owner carol, due 2026-12-05) **OVERDUE**"),
        "{text}"
    );
    assert!(text.contains("owner bob, due 2026-12-11)\n"), "{text}");
    assert!(text.contains("owner bob, open 5 days"), "{text}");
}

#[test]
fn done_action_items_are_listed_apart_from_the_open_ones() {
    let mut facts = facts();
    let text = markdown(&facts);
    let (open, done) = text
        .split_once("### Action items done since 2026-11-30")
        .expect("a done section");
    assert!(open.contains("#2: replace lab-4's fan"), "{text}");
    assert!(!open.contains("reflash"), "{text}");
    assert!(
        done.contains(
            "#4: reflash lab-2's CX7 (owner dave, due 2026-12-02), done 2026-12-01 by dave: \
             flashed to 28.39.1002 \\<ok\\>"
        ),
        "{text}"
    );
    assert!(
        done.contains(
            "#5: book the lab for r560 (owner erin, due 2026-12-09), done 2026-12-04 by erin\n"
        ),
        "{text}"
    );
    assert!(
        !done.contains("OVERDUE"),
        "a done item is never overdue: {text}"
    );
    let page = html(&facts);
    assert!(
        page.contains("done 2026-12-01 by dave: flashed to 28.39.1002 &lt;ok&gt;</li>"),
        "{page}"
    );
    // An action item done is never shown as open, even when handed in among the open ones.
    let minutes = facts.minutes.as_mut().expect("minutes");
    let finished = minutes.done[0].clone();
    minutes.actions.push(finished);
    let text = markdown(&facts);
    let open = text
        .split_once("### Action items done since")
        .expect("a done section")
        .0;
    assert!(!open.contains("reflash"), "{text}");
    // Nothing done: the section says so.
    facts.minutes.as_mut().expect("minutes").done.clear();
    assert!(
        markdown(&facts).contains("### Action items done since 2026-11-30\n\nNone.\n"),
        "{}",
        markdown(&facts)
    );
}
