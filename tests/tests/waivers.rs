//! End to end: waivers, promotion on a waived decision, waiver expiry under a manual clock,
//! the audit log's tamper evidence, API-token identity, replay and the Greenwave output. Every
//! test runs on SQLite and on PostgreSQL (the latter when `TOLLGATE_TEST_DATABASE_URL` is set).

use std::sync::Arc;
use tollgate_controller::clock::{Clock, ManualClock, SystemClock};
use tollgate_controller::store::{Pool, Store};
use tollgate_proto::v1;
use tollgate_tests::{
    Agent, Backend, Clients, Controller, ControllerOptions, qualify_with_one_hot_node,
};
use tonic::Code;

tollgate_tests::on_both_backends!(
    a_waived_failure_passes_and_promotes_and_the_audit_shows_tampering,
    an_expired_waiver_fails_the_gate_again,
    a_configured_token_is_required_and_names_the_actor,
);

const TEMP_RULE: &str = "telemetry:gpu_temp_c";

/// A controller with three agents, one of them over-temperature, and a finished run of
/// `gpu-qual` for release r550, whose gate fails on the temperature rule.
async fn failing_release(options: ControllerOptions) -> Option<(Controller, Vec<Agent>, Clients)> {
    let controller = Controller::start(options).await?;
    let (agents, clients) = qualify_with_one_hot_node(&controller, 1.0).await;
    Some((controller, agents, clients))
}

fn waive_request(ttl_seconds: u64) -> v1::WaiveRequest {
    v1::WaiveRequest {
        release: "r550".into(),
        rule_id: TEMP_RULE.into(),
        reason: "fan curve bug on lab-3, fixed in next BMC drop".into(),
        ticket: "HW-1234".into(),
        ttl_seconds,
        nodes: vec!["lab-3".into()],
        ..Default::default()
    }
}

async fn a_waived_failure_passes_and_promotes_and_the_audit_shows_tampering(backend: Backend) {
    let Some((controller, agents, mut clients)) =
        failing_release(ControllerOptions::new(backend)).await
    else {
        return;
    };
    // Reason and ticket are mandatory, and the rule must exist: one answer names them all.
    let refused = clients
        .gates
        .waive(v1::WaiveRequest {
            release: "r550".into(),
            rule_id: TEMP_RULE.into(),
            ttl_seconds: 60,
            ..Default::default()
        })
        .await
        .expect_err("no reason, no ticket");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("reason") && refused.message().contains("ticket"),
        "{}",
        refused.message()
    );
    let refused = clients
        .gates
        .waive(v1::WaiveRequest {
            rule_id: "no-such-rule".into(),
            ..waive_request(60)
        })
        .await
        .expect_err("unknown rule");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("no-such-rule"));

    let waiver = clients
        .gates
        .waive(waive_request(7 * 86_400))
        .await
        .expect("waive")
        .into_inner();
    assert_eq!(waiver.approver, "anonymous");
    let decision = clients.evaluate("r550").await;
    assert_eq!(decision.verdict, "passed", "{decision:#?}");
    assert!(
        decision.summary.contains("with a waiver"),
        "{}",
        decision.summary
    );
    let rule = decision
        .rules
        .iter()
        .find(|r| r.rule_id == TEMP_RULE)
        .expect("temperature rule");
    assert_eq!(rule.verdict, "waived");
    assert_eq!(rule.waiver_id, waiver.id);
    let greenwave: serde_json::Value =
        serde_json::from_str(&decision.greenwave_json).expect("greenwave JSON");
    for key in [
        "policies_satisfied",
        "summary",
        "satisfied_requirements",
        "unsatisfied_requirements",
    ] {
        assert!(greenwave.get(key).is_some(), "{key} missing in {greenwave}");
    }

    let promoted = clients
        .releases
        .promote(v1::PromoteRequest {
            name: "r550".into(),
        })
        .await
        .expect("promotion on a waived decision")
        .into_inner();
    let release = promoted.release.expect("release");
    assert_eq!(release.milestone, "customer-acceptance");
    let promotion = &release.promotions[0];
    assert_eq!(promotion.actor, "anonymous");
    assert_eq!(
        promotion.decision_digest,
        promoted.decision.expect("decision").digest
    );

    // Replaying the decision the promotion rested on gives the same digest.
    let replayed = clients
        .gates
        .evaluate_gate(v1::EvaluateGateRequest {
            release: "r550".into(),
            milestone: "lab-qual".into(),
            at: Some(prost_types::Timestamp {
                seconds: SystemClock.now().timestamp() + 1,
                nanos: 0,
            }),
        })
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(
        replayed.replay, "replayed from stored inputs: digest matches",
        "{replayed:#?}"
    );
    assert_eq!(replayed.digest, promotion.decision_digest);

    let mut audit = v1::audit_service_client::AuditServiceClient::new(controller.channel().await);
    let entries = audit
        .list_audit(v1::ListAuditRequest {
            release: "r550".into(),
            ..Default::default()
        })
        .await
        .expect("list audit")
        .into_inner()
        .entries;
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "release.create",
            "run.start",
            "waiver.create",
            "release.promote"
        ]
    );
    let verified = audit
        .verify_audit(v1::VerifyAuditRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(verified.ok, "{verified:#?}");

    // Edit one row behind the controller's back: verification names it.
    let waiver_seq = entries[2].seq as i64;
    let store = Store::connect(&controller.database_url)
        .await
        .expect("open the test's database");
    const TAMPER: &str = "UPDATE audit SET actor = 'mallory' WHERE seq = $1";
    match store.pool() {
        Pool::Sqlite(pool) => sqlx::query(TAMPER)
            .bind(waiver_seq)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()),
        Pool::Postgres(pool) => sqlx::query(TAMPER)
            .bind(waiver_seq)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()),
    }
    .expect("tamper");
    store.close().await;
    let verified = audit
        .verify_audit(v1::VerifyAuditRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(!verified.ok);
    assert_eq!(verified.broken_seq, waiver_seq as u64);
    assert!(verified.reason.contains("edited"), "{}", verified.reason);
    for agent in agents {
        agent.stop().await;
    }
}

async fn an_expired_waiver_fails_the_gate_again(backend: Backend) {
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let mut options = ControllerOptions::new(backend);
    options.clock = Some(clock.clone());
    let Some((_controller, agents, mut clients)) = failing_release(options).await else {
        return;
    };
    let waiver = clients
        .gates
        .waive(waive_request(3600))
        .await
        .expect("waive")
        .into_inner();
    assert_eq!(clients.evaluate("r550").await.verdict, "passed");

    clock.advance(chrono::Duration::hours(2));
    let decision = clients.evaluate("r550").await;
    assert_eq!(decision.verdict, "failed", "{decision:#?}");
    let rule = decision
        .rules
        .iter()
        .find(|r| r.rule_id == TEMP_RULE)
        .expect("temperature rule");
    assert_eq!(rule.verdict, "failed");
    assert!(
        rule.reason
            .contains(&format!("waiver {} expired", waiver.id)),
        "{}",
        rule.reason
    );
    let refused = clients
        .releases
        .promote(v1::PromoteRequest {
            name: "r550".into(),
        })
        .await
        .expect_err("the waiver expired");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    for agent in agents {
        agent.stop().await;
    }
}

async fn a_configured_token_is_required_and_names_the_actor(backend: Backend) {
    let mut options = ControllerOptions::new(backend);
    options.api_tokens = vec![("alice".into(), "s3cret-alice".into())];
    let Some(controller) = Controller::start(options).await else {
        return;
    };
    let channel = controller.channel().await;
    let mut anonymous = v1::release_service_client::ReleaseServiceClient::new(channel.clone());
    let refused = anonymous
        .create_release(release_request("r1"))
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);

    let bearer = |secret: &'static str| {
        move |mut request: tonic::Request<()>| {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {secret}").parse().expect("header"),
            );
            Ok(request)
        }
    };
    let mut wrong = v1::release_service_client::ReleaseServiceClient::with_interceptor(
        channel.clone(),
        bearer("nope"),
    );
    let refused = wrong
        .create_release(release_request("r1"))
        .await
        .expect_err("unknown token");
    assert_eq!(refused.code(), Code::Unauthenticated);

    let mut alice = v1::release_service_client::ReleaseServiceClient::with_interceptor(
        channel.clone(),
        bearer("s3cret-alice"),
    );
    alice
        .create_release(release_request("r1"))
        .await
        .expect("alice creates a release");
    let halted = alice
        .halt(v1::HaltRequest {
            release: "r1".into(),
            reason: "bad batch".into(),
        })
        .await
        .expect("halt")
        .into_inner();
    assert_eq!(halted.halted_reason, "bad batch");
    let refused = alice
        .promote(v1::PromoteRequest { name: "r1".into() })
        .await
        .expect_err("halted");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("halted"),
        "{}",
        refused.message()
    );
    alice
        .resume(v1::ResumeRequest {
            release: "r1".into(),
            reason: String::new(),
        })
        .await
        .expect("resume");

    let mut audit = v1::audit_service_client::AuditServiceClient::with_interceptor(
        channel,
        bearer("s3cret-alice"),
    );
    let entries = audit
        .list_audit(v1::ListAuditRequest {
            actor: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .entries;
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["release.create", "release.halt", "release.resume"]
    );
}

fn release_request(name: &str) -> v1::CreateReleaseRequest {
    v1::CreateReleaseRequest {
        name: name.into(),
        components: vec![v1::Component {
            name: "driver".into(),
            version: "550.54.15".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}
