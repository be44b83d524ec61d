//! Table-driven tests of the projection: each case is a fleet, releases in queue order, and
//! the finish and risk expected of every milestone.

use super::*;
use crate::test_support::at;

const MIN: u64 = 60;
const HOUR: u64 = 3600;
/// 2026-01-01T22:00:00Z: two hours before the day ends, so that targets bite.
const NOW: i64 = 22 * 3600;

fn node(name: &str) -> NodeId {
    NodeId::new(name)
}

fn date(text: &str) -> NaiveDate {
    text.parse().expect("a test date")
}

/// Nodes in service, all free now.
fn fleet(nodes: &[&str]) -> FreeAt {
    nodes.iter().map(|name| (node(name), at(NOW))).collect()
}

fn step(name: &str, measured_secs: &[u64], timeout_secs: u64) -> StepWork {
    StepWork {
        name: name.into(),
        measured: measured_secs
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect(),
        timeout: Duration::from_secs(timeout_secs),
    }
}

/// `n_jobs` jobs of one step measured at `secs`, on `matching`.
fn work(n_jobs: usize, secs: u64, matching: &[&str]) -> Option<Work> {
    Some(Work {
        n_jobs,
        steps: vec![step("burn", &[secs], 24 * HOUR)],
        matching: matching.iter().map(|name| node(name)).collect(),
    })
}

fn milestone(name: &str, target: Option<&str>, work: Option<Work>) -> MilestoneFacts {
    MilestoneFacts {
        milestone: name.into(),
        target: target.map(date),
        passed_at: None,
        work,
    }
}

fn release(name: &str, milestones: Vec<MilestoneFacts>) -> ReleaseFacts {
    ReleaseFacts {
        release: ReleaseId::new(name),
        halted: false,
        milestones,
    }
}

fn projected(secs_after_now: u64) -> Finish {
    Finish::Projected {
        at: at(NOW + secs_after_now as i64),
        basis: Some(Basis::Measured),
    }
}

struct Case {
    name: &'static str,
    free_at: FreeAt,
    releases: Vec<ReleaseFacts>,
    /// Per release, per milestone: the finish and the risk.
    expected: Vec<Vec<(Finish, Option<Risk>)>>,
}

fn cases() -> Vec<Case> {
    let two_jobs_of_an_hour = || work(2, HOUR, &["n1", "n2"]);
    vec![
        Case {
            name: "alone, on two free nodes, one job each",
            free_at: fleet(&["n1", "n2"]),
            releases: vec![release(
                "r1",
                vec![milestone(
                    "lab-qual",
                    Some("2026-01-01"),
                    two_jobs_of_an_hour(),
                )],
            )],
            expected: vec![vec![(projected(HOUR), None)]],
        },
        Case {
            name: "a competing release ahead holds both nodes for an hour",
            free_at: fleet(&["n1", "n2"]),
            releases: vec![
                release(
                    "r1",
                    vec![milestone("lab-qual", None, two_jobs_of_an_hour())],
                ),
                release(
                    "r2",
                    vec![milestone(
                        "lab-qual",
                        Some("2026-01-02"),
                        two_jobs_of_an_hour(),
                    )],
                ),
            ],
            expected: vec![
                vec![(projected(HOUR), None)],
                vec![(projected(2 * HOUR), None)],
            ],
        },
        Case {
            name: "a halted release ahead holds no node, and all it has left is at risk",
            free_at: fleet(&["n1", "n2"]),
            releases: vec![
                ReleaseFacts {
                    halted: true,
                    ..release(
                        "r1",
                        vec![
                            MilestoneFacts {
                                passed_at: Some(at(NOW - HOUR as i64)),
                                ..milestone("lab-qual", None, None)
                            },
                            milestone("customer-acceptance", None, two_jobs_of_an_hour()),
                        ],
                    )
                },
                release(
                    "r2",
                    vec![milestone("lab-qual", None, two_jobs_of_an_hour())],
                ),
            ],
            expected: vec![
                vec![
                    (
                        Finish::Passed {
                            at: at(NOW - HOUR as i64),
                        },
                        None,
                    ),
                    (projected(HOUR), Some(Risk::Halted)),
                ],
                vec![(projected(HOUR), None)],
            ],
        },
        Case {
            name: "a competing release on other nodes does not delay",
            free_at: fleet(&["n1", "n2", "n3"]),
            releases: vec![
                release(
                    "r1",
                    vec![milestone("lab-qual", None, work(1, 3 * HOUR, &["n3"]))],
                ),
                release(
                    "r2",
                    vec![milestone("lab-qual", None, two_jobs_of_an_hour())],
                ),
            ],
            expected: vec![
                vec![(projected(3 * HOUR), None)],
                vec![(projected(HOUR), None)],
            ],
        },
        Case {
            name: "a node down: the two jobs run one after the other, past the target day",
            free_at: fleet(&["n1"]),
            releases: vec![release(
                "r1",
                vec![milestone(
                    "lab-qual",
                    Some("2026-01-01"),
                    two_jobs_of_an_hour(),
                )],
            )],
            expected: vec![vec![(projected(2 * HOUR), Some(Risk::AfterTarget))]],
        },
        Case {
            name: "the same, with the target moved a day later",
            free_at: fleet(&["n1"]),
            releases: vec![release(
                "r1",
                vec![milestone(
                    "lab-qual",
                    Some("2026-01-02"),
                    two_jobs_of_an_hour(),
                )],
            )],
            expected: vec![vec![(projected(2 * HOUR), None)]],
        },
        Case {
            name: "a busy node is used once it is free",
            free_at: [(node("n1"), at(NOW + 30 * MIN as i64))].into(),
            releases: vec![release(
                "r1",
                vec![milestone("lab-qual", None, work(1, HOUR, &["n1"]))],
            )],
            expected: vec![vec![(projected(HOUR + 30 * MIN), None)]],
        },
        Case {
            name: "nothing measured: the timeouts, and the projection says so",
            free_at: fleet(&["n1"]),
            releases: vec![release(
                "r1",
                vec![milestone(
                    "lab-qual",
                    None,
                    Some(Work {
                        n_jobs: 1,
                        steps: vec![step("diag", &[], 20 * MIN), step("burn", &[], 40 * MIN)],
                        matching: [node("n1")].into(),
                    }),
                )],
            )],
            expected: vec![vec![(
                Finish::Projected {
                    at: at(NOW + HOUR as i64),
                    basis: Some(Basis::Timeouts),
                },
                None,
            )]],
        },
        Case {
            name: "some steps measured (median, upper of an even count), others by timeout",
            free_at: fleet(&["n1"]),
            releases: vec![release(
                "r1",
                vec![milestone(
                    "lab-qual",
                    None,
                    Some(Work {
                        n_jobs: 1,
                        steps: vec![
                            step("diag", &[10 * MIN, 30 * MIN, 20 * MIN, 90 * MIN], HOUR),
                            step("burn", &[], 40 * MIN),
                        ],
                        matching: [node("n1")].into(),
                    }),
                )],
            )],
            expected: vec![vec![(
                Finish::Projected {
                    at: at(NOW + 70 * MIN as i64),
                    basis: Some(Basis::Mixed),
                },
                None,
            )]],
        },
        Case {
            name: "milestones follow each other; one passed stays when it passed",
            free_at: fleet(&["n1", "n2"]),
            releases: vec![release(
                "r1",
                vec![
                    MilestoneFacts {
                        passed_at: Some(at(NOW - 48 * HOUR as i64)),
                        ..milestone("lab-qual", Some("2025-12-30"), two_jobs_of_an_hour())
                    },
                    milestone("customer-acceptance", None, work(2, HOUR, &["n1", "n2"])),
                    milestone("production", Some("2026-01-01"), work(1, 3 * HOUR, &["n2"])),
                ],
            )],
            expected: vec![vec![
                (
                    Finish::Passed {
                        at: at(NOW - 48 * HOUR as i64),
                    },
                    None,
                ),
                (projected(HOUR), None),
                (projected(4 * HOUR), Some(Risk::AfterTarget)),
            ]],
        },
        Case {
            name: "no matching node in service: at risk, and so are the milestones after it",
            free_at: fleet(&["n1"]),
            releases: vec![release(
                "r1",
                vec![
                    milestone("lab-qual", None, work(1, HOUR, &["n9"])),
                    milestone("customer-acceptance", None, work(1, HOUR, &["n1"])),
                ],
            )],
            expected: vec![vec![
                (Finish::NoMatchingNode, Some(Risk::NoMatchingNode)),
                (
                    Finish::AfterUnknown {
                        milestone: "lab-qual".into(),
                    },
                    Some(Risk::NoMatchingNode),
                ),
            ]],
        },
        Case {
            name: "no plan known: nothing projected, nothing flagged",
            free_at: fleet(&["n1"]),
            releases: vec![release(
                "r1",
                vec![
                    milestone("lab-qual", Some("2026-01-01"), None),
                    milestone("customer-acceptance", None, work(1, HOUR, &["n1"])),
                ],
            )],
            expected: vec![vec![
                (Finish::NoPlan, None),
                (
                    Finish::AfterUnknown {
                        milestone: "lab-qual".into(),
                    },
                    None,
                ),
            ]],
        },
        Case {
            name: "no job left: the milestone finishes when it may start",
            free_at: FreeAt::new(),
            releases: vec![release(
                "r1",
                vec![milestone("lab-qual", None, work(0, HOUR, &["n1"]))],
            )],
            expected: vec![vec![(
                Finish::Projected {
                    at: at(NOW),
                    basis: None,
                },
                None,
            )]],
        },
    ]
}

#[test]
fn projects_each_case() {
    for case in cases() {
        let projections = project(&case.releases, &case.free_at, at(NOW));
        let got: Vec<Vec<(Finish, Option<Risk>)>> = projections
            .iter()
            .map(|release| {
                release
                    .milestones
                    .iter()
                    .map(|m| (m.finish.clone(), m.risk))
                    .collect()
            })
            .collect();
        assert_eq!(got, case.expected, "case: {}", case.name);
        for (projection, facts) in projections.iter().zip(&case.releases) {
            assert_eq!(projection.release, facts.release, "case: {}", case.name);
            let targets: Vec<_> = projection.milestones.iter().map(|m| m.target).collect();
            let given: Vec<_> = facts.milestones.iter().map(|m| m.target).collect();
            assert_eq!(targets, given, "case: {}", case.name);
        }
    }
}

#[test]
fn the_same_inputs_give_the_same_projection() {
    for case in cases() {
        assert_eq!(
            project(&case.releases, &case.free_at, at(NOW)),
            project(&case.releases, &case.free_at, at(NOW)),
            "case: {}",
            case.name
        );
    }
}

#[test]
fn a_node_free_before_now_is_free_now() {
    let free_at: FreeAt = [(node("n1"), at(NOW - 10 * HOUR as i64))].into();
    let releases = vec![release(
        "r1",
        vec![milestone("lab-qual", None, work(1, HOUR, &["n1"]))],
    )];
    let projection = project(&releases, &free_at, at(NOW));
    assert_eq!(projection[0].milestones[0].finish, projected(HOUR));
}

#[test]
fn a_milestone_names_the_other_releases_it_waits_behind() {
    let holder = |release: &str, milestone: &str| Holder {
        release: ReleaseId::from(release),
        milestone: milestone.to_owned(),
    };
    let waits = |projection: &[ReleaseProjection]| -> Vec<Vec<Vec<Holder>>> {
        projection
            .iter()
            .map(|r| r.milestones.iter().map(|m| m.waits_for.clone()).collect())
            .collect()
    };
    // r1 holds n1 for an hour at lab-qual; r2's lab-qual needs n1 only (it waits behind
    // r1's lab-qual); r2's customer-acceptance runs on n2, free, after r2's own lab-qual:
    // it waits behind nothing of another release. r3 needs n2 after r2's second milestone.
    let releases = vec![
        release(
            "r1",
            vec![milestone("lab-qual", None, work(1, HOUR, &["n1"]))],
        ),
        release(
            "r2",
            vec![
                milestone("lab-qual", None, work(1, HOUR, &["n1"])),
                milestone("customer-acceptance", None, work(1, HOUR, &["n2"])),
            ],
        ),
        release(
            "r3",
            vec![milestone("lab-qual", None, work(1, HOUR, &["n2"]))],
        ),
    ];
    let projection = project(&releases, &fleet(&["n1", "n2"]), at(NOW));
    assert_eq!(
        waits(&projection),
        vec![
            vec![vec![]],
            vec![vec![holder("r1", "lab-qual")], vec![]],
            vec![vec![holder("r2", "customer-acceptance")]],
        ]
    );
    // A halted release ahead holds no node, so nothing waits behind it.
    let mut halted = releases.clone();
    halted[0].halted = true;
    let projection = project(&halted, &fleet(&["n1", "n2"]), at(NOW));
    assert_eq!(waits(&projection)[1][0], vec![]);
    // A release's own jobs queueing on one node wait behind no other release.
    let free_at: FreeAt = fleet(&["n1"]);
    let alone = vec![release(
        "r9",
        vec![milestone("lab-qual", None, work(2, HOUR, &["n1"]))],
    )];
    let projection = project(&alone, &free_at, at(NOW));
    assert_eq!(
        waits(&projection),
        vec![vec![vec![]]],
        "its own jobs queueing on one node are no other release's"
    );
}
