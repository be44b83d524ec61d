//! End to end: the plan of record of a release. A release manager sets a milestone's target
//! and moves it with a reason; the audit log says who moved it, from what, to what and why;
//! bad requests name every bad field; `release list` shows target against projected per
//! milestone and flags one at risk, first against its date, then for want of a node (its only
//! node cordoned); a release whose run queues behind another release's job for the only node
//! says which release and milestone it waits for. Every
//! test runs on SQLite and on PostgreSQL (the latter when `TOLLGATE_TEST_DATABASE_URL` is set).

use tollgate_proto::v1;
use tollgate_tests::process::{text, tollgate};
use tollgate_tests::{Agent, Backend, Controller, ControllerOptions, held_plan, plan_yaml};
use tonic::Code;

tollgate_tests::on_both_backends!(
    targets_are_audited_and_listed_against_the_projection,
    a_release_queued_behind_another_says_what_it_waits_for,
);

fn target(milestone: &str, date: &str, reason: &str) -> v1::SetMilestoneTargetRequest {
    v1::SetMilestoneTargetRequest {
        release: "r550".into(),
        milestone: milestone.into(),
        target_date: date.into(),
        reason: reason.into(),
    }
}

/// The line of `release list` that shows `release`.
async fn listed(url: &str, release: &str) -> String {
    let output = tollgate(url, &["release", "list"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.starts_with("NAME"), "{stdout}");
    assert!(
        stdout
            .lines()
            .next()
            .unwrap_or_default()
            .contains("TARGET VS PROJECTED"),
        "{stdout}"
    );
    stdout
        .lines()
        .find(|line| line.starts_with(&format!("{release} ")))
        .unwrap_or_else(|| panic!("{release} is not listed:\n{stdout}"))
        .to_owned()
}

async fn targets_are_audited_and_listed_against_the_projection(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let url = controller.url.clone();
    let agent = Agent::start(&url, "lab-1", 1, &[]);
    let mut clients = controller.clients().await;
    let run = clients
        .start_qualification("r550", 1, &plan_yaml(0.2))
        .await;
    clients.wait_run_done(&run.id).await;

    // Before any target: every milestone is projected, none at risk; and what blocks the
    // release now is said at the end of its line.
    let line = listed(&url, "r550").await;
    assert!(line.contains("lab-qual - vs "), "{line}");
    assert!(!line.contains("AT RISK"), "{line}");
    assert!(
        line.contains("  Its lab-qual gate cannot be evaluated: no gate for milestone lab-qual"),
        "{line}"
    );

    // Set a target through the CLI, then move it (and set another) through the API.
    let output = tollgate(
        &url,
        &[
            "release",
            "plan",
            "r550",
            "--milestone",
            "lab-qual",
            "--target",
            "2020-01-15",
        ],
    )
    .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("lab-qual by 2020-01-15"),
        "{}",
        text(&output.stdout)
    );
    let moved = clients
        .releases
        .set_milestone_target(target(
            "lab-qual",
            "2020-02-01",
            "vendor VBIOS drop slipped",
        ))
        .await
        .expect("move the target")
        .into_inner();
    assert_eq!(moved.targets.len(), 1);
    assert_eq!(moved.targets[0].target_date, "2020-02-01");
    assert_eq!(moved.targets[0].reason, "vendor VBIOS drop slipped");
    clients
        .releases
        .set_milestone_target(target("production", "2999-12-31", ""))
        .await
        .expect("a second milestone");

    // Every bad field in one answer; an unknown release is NotFound.
    let refused = clients
        .releases
        .set_milestone_target(target("ga", "2027-02-30", &"x".repeat(1025)))
        .await
        .expect_err("three bad fields");
    assert_eq!(refused.code(), Code::InvalidArgument);
    for field in ["milestone", "target_date", "reason"] {
        assert!(refused.message().contains(field), "{}", refused.message());
    }
    let refused = clients
        .releases
        .set_milestone_target(v1::SetMilestoneTargetRequest {
            release: "nope".into(),
            ..target("lab-qual", "2027-01-15", "")
        })
        .await
        .expect_err("unknown release");
    assert_eq!(refused.code(), Code::NotFound);

    // The customers the release is for, through the CLI; set again, they replace those before.
    let output = tollgate(
        &url,
        &[
            "release",
            "customers",
            "r550",
            "--customer",
            "globex",
            "--customer",
            "acme",
        ],
    )
    .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("customers:   acme, globex"),
        "{}",
        text(&output.stdout)
    );
    let shown = clients
        .releases
        .set_customers(v1::SetCustomersRequest {
            release: "r550".into(),
            customers: vec!["initech".into(), "acme".into(), "acme".into()],
        })
        .await
        .expect("replace the customers")
        .into_inner();
    assert_eq!(shown.customers, ["acme", "initech"]);
    let refused = clients
        .releases
        .set_customers(v1::SetCustomersRequest {
            release: "r550".into(),
            customers: vec![" ".into()],
        })
        .await
        .expect_err("a blank customer");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("customers[0]"),
        "{}",
        refused.message()
    );

    // The audit log: who, from what, to what, why.
    let mut audit = v1::audit_service_client::AuditServiceClient::new(controller.channel().await);
    let entries: Vec<v1::AuditEntry> = audit
        .list_audit(v1::ListAuditRequest {
            release: "r550".into(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .entries
        .into_iter()
        .filter(|entry| entry.action == "release.target")
        .collect();
    assert_eq!(entries.len(), 3, "{entries:#?}");
    let details: Vec<serde_json::Value> = entries
        .iter()
        .map(|entry| serde_json::from_str(&entry.details).expect("JSON details"))
        .collect();
    let moved = details
        .iter()
        .find(|d| d["to"] == "2020-02-01")
        .expect("the move is audited");
    assert_eq!(moved["milestone"], "lab-qual");
    assert_eq!(moved["from"], "2020-01-15");
    assert_eq!(moved["reason"], "vendor VBIOS drop slipped");
    let first = details
        .iter()
        .find(|d| d["to"] == "2020-01-15")
        .expect("the first setting is audited");
    assert_eq!(first["from"], serde_json::Value::Null);
    assert!(entries.iter().all(|entry| entry.actor == entries[0].actor));
    let customers: Vec<serde_json::Value> = audit
        .list_audit(v1::ListAuditRequest {
            release: "r550".into(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .entries
        .iter()
        .filter(|entry| entry.action == "release.customers")
        .map(|entry| serde_json::from_str(&entry.details).expect("JSON details"))
        .collect();
    assert_eq!(customers.len(), 2);
    assert!(
        customers
            .iter()
            .any(|d| d["from"] == serde_json::json!(["acme", "globex"])
                && d["to"] == serde_json::json!(["acme", "initech"])),
        "{customers:#?}"
    );

    // lab-qual's run ended long after its target: at risk. The others are projected from the
    // measured steps on lab-1, production well before its target.
    let line = listed(&url, "r550").await;
    assert!(
        line.contains("lab-qual 2020-02-01 vs ") && line.contains("AT RISK (after-target)"),
        "{line}"
    );
    assert!(line.contains("customer-acceptance - vs "), "{line}");
    assert!(line.contains("(measured)"), "{line}");
    assert!(line.contains("production 2999-12-31 vs "), "{line}");
    let shown = tollgate(&url, &["release", "list", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_str(&text(&shown.stdout)).expect("json");
    let projections = json["releases"][0]["projections"]
        .as_array()
        .expect("projections")
        .clone();
    let risks: Vec<&str> = projections
        .iter()
        .map(|p| p["risk"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(risks, ["after-target", "", ""], "{projections:#?}");

    let output = tollgate(&url, &["release", "show", "r550"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let shown = text(&output.stdout);
    assert!(
        shown.contains("\ntarget vs projected:\n  lab-qual 2020-02-01 vs "),
        "{shown}"
    );
    assert!(shown.contains("vendor VBIOS drop slipped"), "{shown}");

    // The only matching node is taken out of service: the milestones still to run have no
    // node.
    clients
        .nodes
        .set_cordon(v1::SetCordonRequest {
            name: "lab-1".into(),
            cordoned: true,
        })
        .await
        .expect("cordon lab-1");
    let line = listed(&url, "r550").await;
    assert!(
        line.contains("customer-acceptance - vs no matching node AT RISK (no-matching-node)"),
        "{line}"
    );
    assert!(
        line.contains(
            "production 2999-12-31 vs after customer-acceptance AT RISK (no-matching-node)"
        ),
        "{line}"
    );

    // A halted release: everything it has left is at risk, and the halt is what blocks it.
    clients
        .releases
        .halt(v1::HaltRequest {
            release: "r550".into(),
            reason: "bad batch".into(),
        })
        .await
        .expect("halt");
    let line = listed(&url, "r550").await;
    assert!(
        line.contains("lab-qual 2020-02-01 vs ")
            && line.contains("(no work left) AT RISK (halted)"),
        "{line}"
    );
    assert!(
        line.contains("customer-acceptance - vs no matching node AT RISK (halted)"),
        "{line}"
    );
    assert!(line.contains("It is halted (bad batch)"), "{line}");

    // A release file's customers and targets are set as the release is created.
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/release.yaml");
    let file = file.display().to_string();
    let output = tollgate(&url, &["release", "create", "-f", &file, "-o", "json"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let created: serde_json::Value = serde_json::from_str(&text(&output.stdout)).expect("json");
    assert_eq!(created["customers"], serde_json::json!(["acme"]));
    let targets: Vec<(&str, &str)> = created["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| {
            (
                t["milestone"].as_str().unwrap_or_default(),
                t["target_date"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        targets,
        [
            ("lab-qual", "2027-01-15"),
            ("customer-acceptance", "2027-02-01")
        ]
    );
    agent.stop().await;
}

async fn a_release_queued_behind_another_says_what_it_waits_for(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let url = controller.url.clone();
    let agent = Agent::start(&url, "lab-1", 1, &[]);
    let mut clients = controller.clients().await;
    // r549's job holds lab-1, the only matching node, until the file `go` exists; r550's run of
    // the same plan, started after, has its job wait for the node.
    let dir = tempfile::tempdir().expect("temp dir");
    let go = dir.path().join("go");
    let first = clients
        .start_qualification("r549", 1, &held_plan("gpu-qual", &go))
        .await;
    clients
        .wait_run(
            &first.id,
            std::time::Duration::from_secs(30),
            "r549's job to hold lab-1",
            |run| run.jobs.iter().any(|job| job.state == "running"),
        )
        .await;
    clients.create_release("r550").await;
    let second = clients.start_run("r550", "gpu-qual").await;
    let second = clients.run(&second.id).await;
    assert!(
        second.jobs.iter().all(|job| job.state == "pending"),
        "{second:#?}"
    );

    // The newer release's milestone queues behind what the older one still has to run on the
    // node: the JSON names that release and milestone, the line says it in words.
    let shown = tollgate(&url, &["release", "list", "-o", "json"]).await;
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let json: serde_json::Value = serde_json::from_str(&text(&shown.stdout)).expect("json");
    let releases = json["releases"].as_array().expect("releases");
    let r550 = releases
        .iter()
        .find(|release| release["name"] == "r550")
        .unwrap_or_else(|| panic!("r550 is not listed: {json:#}"));
    let lab_qual = &r550["projections"][0];
    assert_eq!(lab_qual["milestone"], "lab-qual", "{r550:#}");
    let waits_for = lab_qual["waits_for"].as_array().expect("waits_for");
    assert_eq!(waits_for.len(), 1, "{lab_qual:#}");
    assert_eq!(waits_for[0]["release"], "r549", "{lab_qual:#}");
    let held = waits_for[0]["milestone"].as_str().expect("milestone");
    assert!(!held.is_empty(), "{lab_qual:#}");
    let r549 = releases
        .iter()
        .find(|release| release["name"] == "r549")
        .unwrap_or_else(|| panic!("r549 is not listed: {json:#}"));
    assert!(
        r549["projections"]
            .as_array()
            .expect("projections")
            .iter()
            .all(|p| p["waits_for"].as_array().is_none_or(Vec::is_empty)),
        "the oldest release waits for nobody: {r549:#}"
    );
    let line = listed(&url, "r550").await;
    assert!(line.contains(&format!("waits for r549 {held}")), "{line}");
    let line = listed(&url, "r549").await;
    assert!(!line.contains("waits for"), "{line}");

    // Once the node is let go, both runs end.
    std::fs::write(&go, "").expect("let r549's job finish");
    clients.wait_run_done(&first.id).await;
    clients.wait_run_done(&second.id).await;
    agent.stop().await;
}
