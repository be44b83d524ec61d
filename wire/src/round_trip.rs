//! Round trips for every message this crate converts: a domain value sent and read back is
//! the same value, and where reading is total, a wire message read and sent again is the same
//! message. The generators (`tollgate_domain::test_support::arb`) make values the wire accepts.

use crate::fleet::Enrollment;
use crate::plan::{AssignedStep, Assignment};
use crate::release::{DescribedRelease, NewRelease, component_from_proto};
use crate::result::{outcome_from_proto, outcome_to_proto};
use crate::{FromProto, ToProto, timestamp_from_proto, timestamp_to_proto};
use proptest::prelude::*;
use tollgate_domain::JobId;
use tollgate_domain::audit::AuditEntry;
use tollgate_domain::fleet::{Inventory, Node};
use tollgate_domain::gate::{Decision, EvidenceItem, Waiver};
use tollgate_domain::release::{Promotion, Track};
use tollgate_domain::result::{Measurement, StepResult, SubResult};
use tollgate_domain::target::MilestoneTarget;
use tollgate_domain::test_support::arb;
use tollgate_proto::v1 as proto;

fn assignment() -> impl Strategy<Value = Assignment> {
    let steps = proptest::collection::vec(
        (0u32..20, arb::step()).prop_map(|(index, step)| AssignedStep { index, step }),
        0..4,
    );
    (
        (
            "job-[0-9a-f]{4}",
            "run-[0-9a-f]{4}",
            any::<u64>(),
            arb::name(),
        ),
        proptest::collection::vec(arb::component(), 0..3),
        (arb::name(), arb::name(), "[0-9a-f]{0,12}"),
        steps,
    )
        .prop_map(
            |(
                (job_id, run_id, lease_epoch, release),
                components,
                (milestone, plan_name, plan_version),
                steps,
            )| Assignment {
                job_id: JobId::new(job_id),
                run_id,
                lease_epoch,
                release,
                components,
                milestone,
                plan_name,
                plan_version,
                steps,
            },
        )
}

fn enrollment() -> impl Strategy<Value = Enrollment> {
    (
        arb::node(),
        "[0-9.]{1,8}",
        proptest::option::of("[0-9a-f]{32}"),
    )
        .prop_map(|(node, agent_version, node_token)| Enrollment {
            node: node.id,
            labels: node.labels,
            inventory: node.inventory,
            agent_version,
            node_token,
        })
}

fn described_release() -> impl Strategy<Value = DescribedRelease> {
    (
        arb::release(),
        proptest::collection::vec(arb::name(), 0..4),
        proptest::option::of(arb::some_text()),
    )
        .prop_map(|(release, milestones, halted_reason)| {
            // Targets as the controller sends them: one per milestone of the track.
            let targets = milestones
                .iter()
                .zip(1..)
                .map(|(milestone, day)| MilestoneTarget {
                    milestone: milestone.clone(),
                    target: chrono::NaiveDate::from_ymd_opt(2027, 1, day)
                        .expect("a day of January"),
                    reason: (day % 2 == 0).then(|| format!("moved {day}")),
                    set_by: "alice".into(),
                    set_at: release.created_at,
                })
                .collect();
            DescribedRelease {
                release,
                track: Track { milestones },
                halted_reason,
                targets,
                customers: vec!["acme".into(), "globex".into()],
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn timestamps_round_trip(at in arb::timestamp()) {
        prop_assert_eq!(timestamp_from_proto(&timestamp_to_proto(at)), Some(at));
    }

    #[test]
    fn wire_timestamps_round_trip(seconds in 0i64..4_000_000_000, nanos in 0i32..1_000_000_000) {
        let wire = prost_types::Timestamp { seconds, nanos };
        let at = timestamp_from_proto(&wire).expect("a valid wire timestamp");
        prop_assert_eq!(timestamp_to_proto(at), wire);
    }

    #[test]
    fn outcomes_round_trip(outcome in arb::outcome()) {
        prop_assert_eq!(outcome_from_proto(outcome_to_proto(outcome).into()), Some(outcome));
    }

    #[test]
    fn inventories_round_trip(inventory in arb::inventory()) {
        prop_assert_eq!(Inventory::from_proto(inventory.to_proto()), Ok(inventory));
    }

    #[test]
    fn nodes_round_trip(node in arb::node()) {
        prop_assert_eq!(Node::from_proto(node.to_proto()), Ok(node));
    }

    #[test]
    fn registrations_round_trip(enrollment in enrollment()) {
        prop_assert_eq!(Enrollment::try_from(enrollment.to_proto()), Ok(enrollment));
    }

    #[test]
    fn components_round_trip(component in arb::component()) {
        prop_assert_eq!(component_from_proto(component.to_proto()), component);
    }

    #[test]
    fn wire_components_round_trip(
        name in arb::text(), version in arb::text(), artifact_uri in arb::text(), sha256 in arb::text()
    ) {
        let wire = proto::Component { name, version, artifact_uri, sha256 };
        prop_assert_eq!(component_from_proto(wire.clone()).to_proto(), wire);
    }

    #[test]
    fn new_releases_round_trip(release in arb::release()) {
        let new = NewRelease {
            name: release.id.to_string(),
            components: release.components,
            description: release.description,
        };
        prop_assert_eq!(NewRelease::try_from(new.to_proto()), Ok(new));
    }

    #[test]
    fn promotions_round_trip(promotion in arb::promotion()) {
        prop_assert_eq!(Promotion::from_proto(promotion.to_proto()), Ok(promotion));
    }

    #[test]
    fn releases_round_trip(described in described_release()) {
        prop_assert_eq!(DescribedRelease::from_proto(described.to_proto()), Ok(described));
    }

    #[test]
    fn assignments_and_their_steps_round_trip(assignment in assignment()) {
        prop_assert_eq!(Assignment::from_proto(assignment.to_proto()), Ok(assignment));
    }

    #[test]
    fn measurements_round_trip(measurement in arb::measurement()) {
        prop_assert_eq!(Measurement::from_proto(measurement.to_proto()), Ok(measurement));
    }

    #[test]
    fn sub_results_round_trip(sub in arb::sub_result()) {
        prop_assert_eq!(SubResult::from_proto(sub.to_proto()), Ok(sub));
    }

    #[test]
    fn step_results_round_trip(result in arb::step_result()) {
        prop_assert_eq!(StepResult::from_proto(result.to_proto()), Ok(result.clone()));
        // What an agent uploads is the same result when its texts are within the limits.
        prop_assert_eq!(StepResult::from_proto(crate::result::step_result_for_upload(&result)), Ok(result));
    }

    #[test]
    fn evidence_items_round_trip(item in arb::evidence_item()) {
        prop_assert_eq!(EvidenceItem::from_proto(item.to_proto()), Ok(item));
    }

    #[test]
    fn wire_evidence_items_round_trip(
        node in arb::text(), step in arb::text(), attempt in any::<u32>(), value in proptest::option::of(arb::number()),
        limit in arb::text(), detail in arb::text(), ok in any::<bool>(),
        gpu_index in proptest::option::of(any::<u32>()), signature in arb::text()
    ) {
        let wire = proto::EvidenceItem { node, step, attempt, value, limit, detail, ok, gpu_index, signature };
        let item = EvidenceItem::from_proto(wire.clone()).expect("reading evidence is total");
        prop_assert_eq!(item.to_proto(), wire);
    }

    #[test]
    fn decisions_round_trip(decision in arb::decision()) {
        prop_assert_eq!(Decision::from_proto(decision.to_proto()), Ok(decision));
    }

    #[test]
    fn waivers_round_trip(waiver in arb::waiver()) {
        prop_assert_eq!(Waiver::from_proto(waiver.to_proto()), Ok(waiver));
    }

    #[test]
    fn audit_entries_round_trip(entry in arb::audit_entry()) {
        prop_assert_eq!(AuditEntry::from_proto(entry.to_proto()), Ok(entry));
    }
}
