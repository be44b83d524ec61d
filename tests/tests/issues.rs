//! End to end: issues follow gate decisions. A node running over temperature fails release
//! r550's gate and opens an issue by itself; a second run failing the same way attaches to it
//! (no duplicate); once the fix is said to be in r551 and the repaired node passes r551's run,
//! the issue closes with that decision as its evidence. On SQLite and on PostgreSQL (the
//! latter when `TOLLGATE_TEST_DATABASE_URL` is set).

use tollgate_controller::clock::{Clock, SystemClock};
use tollgate_controller::store::{IssueFilter, IssueTransition, Store};
use tollgate_domain::issue::{Issue, IssueState};
use tollgate_domain::{NodeId, ReleaseId};
use tollgate_tests::{Backend, Controller, ControllerOptions, qualify_with_one_hot_node};

tollgate_tests::on_both_backends!(a_failure_opens_an_issue_that_a_passing_fix_release_closes);

async fn all_issues(store: &Store) -> Vec<Issue> {
    store
        .issues(&IssueFilter::default(), 100)
        .await
        .expect("list issues")
}

async fn a_failure_opens_an_issue_that_a_passing_fix_release_closes(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    // lab-3 runs over temperature: r550's gate fails, and evaluating it opened an issue.
    let (mut agents, mut clients) = qualify_with_one_hot_node(&controller, 1.0).await;
    let store = Store::connect(&controller.database_url)
        .await
        .expect("open the test's database");
    let issues = all_issues(&store).await;
    let hot: Vec<&Issue> = issues
        .iter()
        .filter(|issue| issue.signature.kind == "telemetry")
        .collect();
    assert_eq!(hot.len(), 1, "{issues:#?}");
    let hot = hot[0].clone();
    assert_eq!(hot.state, IssueState::Open);
    assert_eq!(hot.nodes, [NodeId::from("lab-3")].into());
    assert_eq!(hot.releases, [ReleaseId::from("r550")].into());
    assert_eq!(hot.title, hot.signature.key());

    // A second run fails the same way: the same issue, nothing new, no duplicate.
    let run = clients.start_run("r550", "gpu-qual").await;
    clients.wait_run_done(&run.id).await;
    assert_eq!(clients.evaluate("r550").await.verdict, "failed");
    let again = all_issues(&store).await;
    assert_eq!(
        again, issues,
        "the second run's failure attached to the known issue"
    );

    // The fix is in r551; lab-3 comes back repaired and r551's run passes on every node.
    let r551 = ReleaseId::from("r551");
    store
        .change_issue_state(
            hot.id,
            &IssueTransition {
                from: IssueState::Open,
                to: IssueState::FixInRelease {
                    release: r551.clone(),
                },
                evidence: None,
            },
            "fix",
            "fan curve fixed in r551",
            "alice",
            SystemClock.now(),
        )
        .await
        .expect("fix in r551");
    let hot_agent = agents.pop().expect("lab-3");
    let repaired = hot_agent.shut_down().await.start_repaired();
    agents.push(repaired);
    clients.wait_ready_nodes(3).await;
    clients.create_release("r551").await;
    let run = clients.start_run("r551", "gpu-qual").await;
    clients.wait_run_done(&run.id).await;
    let decision = clients.evaluate("r551").await;
    assert_eq!(decision.verdict, "passed", "{decision:#?}");

    let closed = store
        .issue(hot.id)
        .await
        .expect("issue")
        .expect("still there");
    assert_eq!(
        closed.state,
        IssueState::Closed {
            release: r551.clone()
        }
    );
    // The evidence is the decision of r551 that first saw lab-3 pass (a re-evaluation while
    // the other nodes still ran, or the one above).
    let evidence = closed.evidence.expect("closed with evidence");
    let history = store.issue_history(hot.id).await.expect("history");
    let actions: Vec<&str> = history.iter().map(|entry| entry.action.as_str()).collect();
    assert_eq!(actions, ["opened", "fix", "verified"], "{history:#?}");
    assert_eq!(
        history[2].detail,
        format!("release r551 passed the checks on lab-3 (decision {evidence})")
    );
    store.close().await;
    for agent in agents {
        agent.stop().await;
    }
}
