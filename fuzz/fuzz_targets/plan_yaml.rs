//! Plan YAML (`tollgate plan apply`): parsing never panics, errors point inside the file, and
//! every step of an accepted plan reaches the agent unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_domain::JobId;
use tollgate_domain::plan::parse_plan;
use tollgate_wire::plan::AssignedStep;
use tollgate_wire::{Assignment, FromProto, ToProto};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let plan = match parse_plan("plan.yaml", source) {
        Ok(plan) => plan,
        Err(errors) => return tollgate_fuzz::assert_located(source, &errors),
    };
    let steps: Vec<AssignedStep> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(index, step)| AssignedStep {
            index: u32::try_from(index).expect("a plan has at most 100 steps"),
            step: step.clone(),
        })
        .collect();
    let assignment = Assignment {
        job_id: JobId::new("job-1".to_owned()),
        run_id: "run-1".to_owned(),
        lease_epoch: 1,
        release: "r1".to_owned(),
        components: Vec::new(),
        milestone: "lab-qual".to_owned(),
        plan_name: plan.name.clone(),
        plan_version: "0123456789ab".to_owned(),
        steps,
    };
    let received = Assignment::from_proto(assignment.to_proto())
        .unwrap_or_else(|error| panic!("the agent refuses an accepted plan: {error}"));
    assert_eq!(
        received, assignment,
        "a step changed on its way to the agent"
    );
});
