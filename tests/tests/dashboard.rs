//! The web dashboard against a real controller and real agents (simulated GPUs): every page
//! renders the fleet's real data; anonymous access only where gRPC allows it; sign-in keeps
//! the token in an HTTP-only cookie; a viewer sees no action and a forged POST of one is
//! refused; a POST without the session's CSRF token or from another origin is refused; an
//! operator's cordon through the page takes effect and is audited; a customer token sees
//! only its own nodes; the run page's event stream follows a run until it ends. The rollout
//! pages show a rollout halted by a node's failed procedure (wave by wave, the node, the rule,
//! the runs, the limits, the audit entries), escape a hostile reason, and show a customer only
//! the rollouts of the releases for it. A release only for another customer is, on every
//! page, one that does not exist.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tollgate_proto::v1;
use tollgate_tests::http::{self, Jar};
use tollgate_tests::{
    Agent, Backend, Controller, ControllerOptions, gate_yaml, plan_yaml, rollout, wait_for,
};

/// Reads the run's event stream until it ends; returns every `grid` event's data.
/// The `held` step is let go (`go` written) once the first grid arrived.
async fn follow_events(addr: SocketAddr, run_id: &str, go: &std::path::Path) -> Vec<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!(
                "GET /runs/{run_id}/events HTTP/1.1\r\nHost: {addr}\r\nAccept: \
                 text/event-stream\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("send");
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut buffer).await.expect("read events");
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buffer[..n]);
            if !go.exists() && String::from_utf8_lossy(&raw).contains("event: grid") {
                std::fs::write(go, "").expect("let the held step end");
            }
            if String::from_utf8_lossy(&raw).contains("event: end") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&raw).to_string();
    assert!(
        read.is_ok(),
        "the event stream ended within a minute: {text}"
    );
    assert!(text.contains("text/event-stream"), "{text}");
    text.split("event: grid")
        .skip(1)
        .map(|event| event.split("event: end").next().unwrap_or(event).to_owned())
        .collect()
}

fn assert_contains(answer: &http::Answer, needles: &[&str], what: &str) {
    assert_eq!(answer.status, 200, "{what}: {}", answer.body);
    for needle in needles {
        assert!(
            answer.body.contains(needle),
            "{what} shows {needle:?}: {}",
            answer.body
        );
    }
}

async fn dashboard(backend: Backend) {
    let mut options = ControllerOptions::new(backend);
    options.http = true;
    let Some(mut controller) = Controller::start(options).await else {
        return;
    };
    let addr = controller.http_addr.expect("the dashboard listens");
    let origin = format!("http://{addr}");
    let agents = vec![
        Agent::start_labelled(&controller.url, "lab-1", 2, &[("customer", "a")]),
        Agent::start_labelled(&controller.url, "lab-2", 2, &[("customer", "b")]),
        Agent::start(&controller.url, "lab-3", 2, &["over-temp"]),
    ];
    let mut clients = controller.clients().await;
    let run = clients
        .qualify("r550", 3, &plan_yaml(0.5), &gate_yaml(3))
        .await;
    assert_eq!(clients.evaluate("r550").await.verdict, "failed");

    // No token anywhere: from loopback the dashboard is anonymous, as gRPC is.
    let anonymous = Jar::default();
    let releases = http::get(addr, "/releases", &anonymous).await;
    assert_contains(
        &releases,
        &["r550", "anonymous"],
        "the anonymous release list",
    );

    // The plan of record: a target already past puts lab-qual at risk, on the list and on
    // the release's page, each milestone's target against its projection.
    clients
        .releases
        .set_milestone_target(v1::SetMilestoneTargetRequest {
            release: "r550".into(),
            milestone: "lab-qual".into(),
            target_date: "2020-01-15".into(),
            reason: String::new(),
        })
        .await
        .expect("a target");
    let releases = http::get(addr, "/releases", &anonymous).await;
    assert_contains(
        &releases,
        &[
            "<th>Target vs projected</th>",
            "lab-qual: 2020-01-15 vs ",
            "customer-acceptance: <span class=\"muted\">no target</span> vs ",
            "<span class=\"badge bad\">AT RISK (after-target)</span>",
        ],
        "the release list's plan of record",
    );
    let release = http::get(addr, "/releases/r550", &anonymous).await;
    assert_contains(
        &release,
        &[
            "<h2>Plan of record</h2>",
            "<td>lab-qual</td><td>2020-01-15</td>",
            "<span class=\"badge bad\">AT RISK (after-target)</span>",
        ],
        "the release page's plan of record",
    );
    assert_eq!(
        release.body.matches("AT RISK").count(),
        1,
        "only lab-qual is at risk: {}",
        release.body
    );

    // The run page's event stream follows a second run until it finishes: its `held` step
    // ends only once the stream is open.
    let go_dir = tempfile::tempdir().expect("a temp dir");
    let go = go_dir.path().join("go");
    clients
        .apply_plan(&tollgate_tests::held_plan("live-qual", &go))
        .await;
    let second = clients.start_run("r550", "live-qual").await;
    let page = http::get(addr, &format!("/runs/{}", second.id), &anonymous).await;
    assert_contains(
        &page,
        &[&format!("data-events=\"/runs/{}/events\"", second.id)],
        "a running run's page",
    );
    let grids = follow_events(addr, &second.id, &go).await;
    assert!(
        grids.len() >= 2,
        "the grid was sent again as results came: {grids:?}"
    );
    assert!(grids[0].contains("running"), "{}", grids[0]);
    let last = grids.last().expect("a grid");
    assert!(
        last.contains("finished"),
        "the last grid shows the run finished: {last}"
    );
    for node in ["lab-1", "lab-2", "lab-3"] {
        assert!(last.contains(node), "{last}");
    }

    // Tokens: once one exists, nobody is anonymous any more.
    let root = controller.create_token(None, "root", "admin", "").await;
    let ops = controller
        .create_token(Some(&root), "ops", "operator", "")
        .await;
    let eve = controller
        .create_token(Some(&root), "eve", "viewer", "")
        .await;
    let cust_a = controller
        .create_token(Some(&root), "cust-a", "customer", "a")
        .await;
    let rm = controller
        .create_token(Some(&root), "rm", "release-manager", "")
        .await;
    let refused = http::get(addr, "/releases", &anonymous).await;
    assert_eq!(refused.status, 303, "{refused:?}");
    assert!(
        refused
            .header("location")
            .is_some_and(|to| to.starts_with("/signin")),
        "{refused:?}"
    );
    // `/metrics` stays open to the lab's Prometheus, which holds no session.
    let scrape = http::get(addr, "/metrics", &anonymous).await;
    assert_eq!(scrape.status, 200, "{scrape:?}");
    assert!(
        scrape.body.contains("tollgate_agents_connected"),
        "{}",
        scrape.body
    );
    let bad = http::post(
        addr,
        "/signin",
        &anonymous,
        Some(&origin),
        &[("token", "not-a-token"), ("next", "/releases")],
    )
    .await;
    assert_eq!(bad.status, 401, "an unknown token is refused: {bad:?}");
    assert!(bad.body.contains("unknown API token"), "{}", bad.body);

    // Sign-in: the token is kept in an HTTP-only, SameSite=Strict cookie.
    let signed_in = http::post(
        addr,
        "/signin",
        &anonymous,
        Some(&origin),
        &[("token", &eve), ("next", "/fleet")],
    )
    .await;
    assert_eq!(signed_in.status, 303);
    assert_eq!(signed_in.header("location"), Some("/fleet"));
    let session = signed_in
        .headers
        .iter()
        .find(|(key, value)| key == "set-cookie" && value.starts_with("tollgate_session="))
        .map(|(_, value)| value.clone())
        .expect("a session cookie");
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    let mut viewer = Jar::default();
    viewer.keep(&signed_in);

    // Every page, with the fleet's real data, for a viewer.
    let release = http::get(addr, "/releases/r550", &viewer).await;
    assert_contains(
        &release,
        &[
            "What blocks it now",
            "The lab-qual gate failed: rule telemetry:gpu_temp_c failed",
            "lab-3",
            "gpu_temp_c",
            "/reports/r550/lab-qual?format=html",
            "Promotions",
            &run.id,
        ],
        "the release page",
    );
    let run_page = http::get(addr, &format!("/runs/{}", run.id), &viewer).await;
    assert_contains(
        &run_page,
        &[
            "lab-1",
            "lab-2",
            "lab-3",
            "versions",
            "stress",
            "passed",
            "href=\"/nodes/lab-3\"",
        ],
        "the run page",
    );
    let fleet = http::get(addr, "/fleet?release=r550", &viewer).await;
    assert_contains(
        &fleet,
        &[
            "lab-1",
            "lab-2",
            "lab-3",
            "simulated GPUs",
            "customer=a",
            "Drift from r550",
            "550.54.15",
        ],
        "the fleet page",
    );
    let filtered = http::get(addr, "/fleet?label=customer%3Db", &viewer).await;
    assert_contains(&filtered, &["lab-2"], "the fleet filtered by label");
    assert!(
        !filtered.body.contains("href=\"/nodes/lab-1\""),
        "{}",
        filtered.body
    );
    let paged = http::get(addr, "/fleet?page_size=2", &viewer).await;
    assert_contains(&paged, &["rel=\"next\""], "a fleet page of two nodes");
    let node = http::get(addr, "/nodes/lab-3", &viewer).await;
    assert_contains(
        &node,
        &[
            "simulated GPUs",
            "GPU 0",
            "<svg",
            "gpu_temp_c",
            "Job history",
            "limit 88",
        ],
        "the node page",
    );
    let day = http::get(addr, "/nodes/lab-3?window=24h", &viewer).await;
    assert_contains(
        &day,
        &["last 24h", "60 s buckets"],
        "a day of fleet history",
    );
    let bad_window = http::get(addr, "/nodes/lab-3?window=1y", &viewer).await;
    assert_eq!(bad_window.status, 400, "{}", bad_window.body);
    let waivers = http::get(addr, "/waivers", &viewer).await;
    assert_contains(&waivers, &["Waivers"], "the waivers page");
    let audit = http::get(addr, "/audit", &viewer).await;
    assert_contains(
        &audit,
        &["Hash chain", "intact", "release.create"],
        "the audit page",
    );
    let report = http::get(addr, "/reports/r550/lab-qual?format=html", &viewer).await;
    assert_eq!(report.status, 200, "{}", report.body);
    assert!(
        report
            .header("content-disposition")
            .is_some_and(|value| value.contains("attachment")),
        "{report:?}"
    );
    assert!(report.body.contains("r550") && report.body.contains("lab-3"));
    // Bad input: a clear 4xx page saying what to do.
    let unknown = http::get(addr, "/runs/run-nope", &viewer).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(unknown.body.contains("run-nope"), "{}", unknown.body);
    let bad_filter = http::get(addr, "/fleet?label=sku", &viewer).await;
    assert_eq!(bad_filter.status, 400, "{}", bad_filter.body);
    assert!(bad_filter.body.contains("KEY=VALUE"), "{}", bad_filter.body);
    let bad_since = http::get(addr, "/audit?since=yesterday", &viewer).await;
    assert_eq!(bad_since.status, 400, "{}", bad_since.body);

    // A viewer sees no action, and a forged one is refused by the authorization table.
    for page in [&release, &node] {
        for action in ["/promote\"", "/waive\"", "/cordon\""] {
            assert!(
                !page.body.contains(action),
                "a viewer sees no {action} form"
            );
        }
    }
    let csrf = viewer
        .get("tollgate_csrf")
        .expect("a CSRF cookie")
        .to_owned();
    let forged = http::post(
        addr,
        "/nodes/lab-1/cordon",
        &viewer,
        Some(&origin),
        &[("csrf", &csrf), ("cordoned", "true")],
    )
    .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(
        forged.body.contains("may not call NodeService/SetCordon"),
        "{}",
        forged.body
    );
    assert_eq!(
        clients_node_state(&controller, &root, "lab-1").await,
        "ready"
    );

    // An operator: the cordon form shows, and works only with the session's CSRF token from
    // this origin.
    let operator = http::sign_in(addr, &ops).await;
    let node_page = http::get(addr, "/nodes/lab-1", &operator).await;
    assert_contains(
        &node_page,
        &["/nodes/lab-1/cordon", "Cordon"],
        "an operator's node page",
    );
    let release_page = http::get(addr, "/releases/r550", &operator).await;
    assert!(
        !release_page.body.contains("/promote"),
        "an operator may not promote"
    );
    let csrf = operator
        .get("tollgate_csrf")
        .expect("a CSRF cookie")
        .to_owned();
    let no_token = http::post(
        addr,
        "/nodes/lab-1/cordon",
        &operator,
        Some(&origin),
        &[("cordoned", "true")],
    )
    .await;
    assert_eq!(no_token.status, 403, "{}", no_token.body);
    assert!(no_token.body.contains("CSRF"), "{}", no_token.body);
    let wrong_token = http::post(
        addr,
        "/nodes/lab-1/cordon",
        &operator,
        Some(&origin),
        &[("csrf", &"0".repeat(64)), ("cordoned", "true")],
    )
    .await;
    assert_eq!(wrong_token.status, 403, "{}", wrong_token.body);
    let elsewhere = http::post(
        addr,
        "/nodes/lab-1/cordon",
        &operator,
        Some("http://evil.example"),
        &[("csrf", &csrf), ("cordoned", "true")],
    )
    .await;
    assert_eq!(elsewhere.status, 403, "{}", elsewhere.body);
    let no_origin = http::post(
        addr,
        "/nodes/lab-1/cordon",
        &operator,
        None,
        &[("csrf", &csrf), ("cordoned", "true")],
    )
    .await;
    assert_eq!(no_origin.status, 403, "{}", no_origin.body);
    assert_eq!(
        clients_node_state(&controller, &root, "lab-1").await,
        "ready"
    );
    let cordoned = http::post(
        addr,
        "/nodes/lab-1/cordon",
        &operator,
        Some(&origin),
        &[("csrf", &csrf), ("cordoned", "true")],
    )
    .await;
    assert_eq!(cordoned.status, 303, "{}", cordoned.body);
    assert_eq!(
        clients_node_state(&controller, &root, "lab-1").await,
        "cordoned"
    );
    let audit = http::get(addr, "/audit?actor=ops", &operator).await;
    assert_contains(
        &audit,
        &["node.cordon", "node/lab-1", "intact"],
        "the audit of the cordon",
    );
    let node_page = http::get(addr, "/nodes/lab-1", &operator).await;
    assert_contains(
        &node_page,
        &["Uncordon", "cordoned"],
        "a cordoned node's page",
    );

    // A release manager waives the failing rule and promotes, through the page's forms.
    let manager = http::sign_in(addr, &rm).await;
    let page = http::get(addr, "/releases/r550", &manager).await;
    assert_contains(
        &page,
        &[
            "/releases/r550/promote",
            "/releases/r550/waive",
            "Grant waiver",
        ],
        "a release manager's release page",
    );
    assert!(
        !page.body.contains("/cordon\""),
        "a release manager may not cordon"
    );
    let csrf = manager.get("tollgate_csrf").expect("csrf").to_owned();
    let refused = http::post(
        addr,
        "/releases/r550/promote",
        &manager,
        Some(&origin),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(
        refused.status, 409,
        "a failing gate refuses promotion: {}",
        refused.body
    );
    let waived = http::post(
        addr,
        "/releases/r550/waive",
        &manager,
        Some(&origin),
        &[
            ("csrf", &csrf),
            ("milestone", "lab-qual"),
            ("rule_id", "telemetry:gpu_temp_c"),
            ("reason", "lab-3 fan replaced"),
            ("ticket", "OPS-42"),
            ("ttl", "2d"),
        ],
    )
    .await;
    assert_eq!(waived.status, 303, "{}", waived.body);
    let page = http::get(addr, "/releases/r550", &manager).await;
    assert_contains(
        &page,
        &[
            "lab-3 fan replaced",
            "OPS-42",
            "Nothing: the lab-qual gate passed",
        ],
        "the release page with the waiver in force",
    );
    let promoted = http::post(
        addr,
        "/releases/r550/promote",
        &manager,
        Some(&origin),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(promoted.status, 303, "{}", promoted.body);
    let page = http::get(addr, "/releases/r550", &manager).await;
    assert_contains(
        &page,
        &["customer-acceptance", "rm"],
        "the promoted release",
    );
    let audit = http::get(addr, "/audit?release=r550", &manager).await;
    assert_contains(
        &audit,
        &["waiver.create", "release.promote"],
        "the audit of the promotion",
    );
    let waivers = http::get(addr, "/waivers", &manager).await;
    assert_contains(
        &waivers,
        &["OPS-42", "/revoke\""],
        "the waivers page for a release manager",
    );

    // The failed gate's issue: listed, shown with its history, linked from the release.
    let issues = wait_for(
        Duration::from_secs(10),
        "the failed gate's issue",
        || async {
            let page = http::get(addr, "/issues", &manager).await;
            page.body.contains("href=\"/issues/1\"").then_some(page)
        },
    )
    .await;
    assert_contains(
        &issues,
        &[
            "<a href=\"/issues\" aria-current=\"page\">Issues</a>",
            "href=\"/nodes/lab-3\"",
            "href=\"/releases/r550\"",
            ">open<",
        ],
        "the issues page",
    );
    let closed = http::get(addr, "/issues?state=closed", &manager).await;
    assert_contains(&closed, &["No issue."], "no closed issue");
    let lab1 = http::get(addr, "/issues?node=lab-1", &manager).await;
    assert_contains(&lab1, &["No issue."], "no issue failed on lab-1");
    let issue = http::get(addr, "/issues/1", &manager).await;
    assert_contains(
        &issue,
        &[
            "Issue #1",
            "<h2>History</h2>",
            "opened",
            "href=\"/nodes/lab-3\"",
        ],
        "an issue's page",
    );
    for missing in ["/issues/99", "/issues/one"] {
        let page = http::get(addr, missing, &manager).await;
        assert_eq!(page.status, 404, "{missing}: {}", page.body);
    }
    let release = http::get(addr, "/releases/r550", &manager).await;
    assert_contains(
        &release,
        &["href=\"/issues/1\"", "href=\"/issues?release=r550\""],
        "the release page links its issues",
    );

    // A customer sees its own nodes only.
    let customer = http::sign_in(addr, &cust_a).await;
    let issues = http::get(addr, "/issues", &customer).await;
    assert_contains(
        &issues,
        &["No issue."],
        "a customer sees no issue not set for it",
    );
    assert_eq!(http::get(addr, "/issues/1", &customer).await.status, 404);
    let fleet = http::get(addr, "/fleet", &customer).await;
    assert_contains(&fleet, &["lab-1"], "a customer's fleet");
    for other in ["lab-2", "lab-3"] {
        assert!(
            !fleet.body.contains(other),
            "a customer's fleet hides {other}"
        );
    }
    let other = http::get(addr, "/nodes/lab-2", &customer).await;
    assert_eq!(
        other.status, 404,
        "another customer's node does not exist: {}",
        other.body
    );
    let run_page = http::get(addr, &format!("/runs/{}", run.id), &customer).await;
    assert_contains(&run_page, &["lab-1"], "a customer's run page");
    assert!(!run_page.body.contains("lab-2"), "{}", run_page.body);
    let release = http::get(addr, "/releases/r550", &customer).await;
    assert_contains(
        &release,
        &["What blocks it now"],
        "a customer's release page",
    );
    assert!(!release.body.contains("lab-2"), "{}", release.body);
    assert!(!release.body.contains("lab-3"), "{}", release.body);
    let report = http::get(addr, "/reports/r550/lab-qual?format=markdown", &customer).await;
    assert_eq!(report.status, 200, "{}", report.body);
    assert!(report.body.contains("lab-1") && !report.body.contains("lab-2"));
    let audit = http::get(addr, "/audit", &customer).await;
    assert_eq!(
        audit.status, 403,
        "a customer may not read the audit log: {}",
        audit.body
    );

    // Sign-out forgets the session.
    let csrf = customer.get("tollgate_csrf").expect("csrf").to_owned();
    let out = http::post(
        addr,
        "/signout",
        &customer,
        Some(&origin),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(out.status, 303);
    let mut forgotten = customer.clone();
    forgotten.keep(&out);
    assert_eq!(http::get(addr, "/fleet", &forgotten).await.status, 303);

    for agent in agents {
        agent.stop().await;
    }
    controller.stop().await;
}

/// The node's state as an admin reads it over gRPC.
async fn clients_node_state(controller: &Controller, admin: &str, node: &str) -> String {
    let header = format!("Bearer {admin}");
    let mut nodes = v1::node_service_client::NodeServiceClient::with_interceptor(
        controller.channel().await,
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", header.parse().expect("header"));
            Ok(request)
        },
    );
    nodes
        .get_node(v1::GetNodeRequest { name: node.into() })
        .await
        .expect("get node")
        .into_inner()
        .state
}

/// A reason a page must escape (release and node names are validated; a person's reason for
/// an action on a rollout is free text).
const HOSTILE: &str = "<script>alert(1)</script>&";

/// The release rolled out.
const RELEASE: &str = "r9";

/// The rollouts page, a rollout's page, and the rollouts on the release and node pages.
async fn rollout_pages(backend: Backend) {
    let mut options = ControllerOptions::new(backend);
    options.http = true;
    let Some(mut controller) = Controller::start(options).await else {
        return;
    };
    let addr = controller.http_addr.expect("the dashboard listens");
    let mut agents = vec![Agent::start(&controller.url, "lab-1", 1, &[])];
    agents.extend(rollout::prod_agents(&controller.url, 2));
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(3).await;
    let anonymous = Jar::default();

    let empty = http::get(addr, "/rollouts", &anonymous).await;
    assert_contains(
        &empty,
        &[
            "No rollout yet",
            "<a href=\"/rollouts\" aria-current=\"page\">Rollouts</a>",
        ],
        "the rollouts page before any",
    );

    let started = rollout::start(&mut clients, RELEASE, &["prod-2"]).await;
    let halted = rollout::wait_phase(&clients, &started.id, "halted").await;
    let failed_node = halted
        .waves
        .iter()
        .flat_map(|wave| &wave.nodes)
        .find(|node| node.node == "prod-2")
        .expect("prod-2 is in the rollout");
    assert_eq!(failed_node.progress, "failed", "{halted:?}");

    let list = http::get(addr, "/rollouts", &anonymous).await;
    assert_contains(
        &list,
        &[
            &format!("href=\"/rollouts/{}\"", started.id),
            "href=\"/releases/r9\"",
            "role=prod",
            ">halted<",
            "wave 2 of 2",
            "1 / 2",
            "rule procedure-passed failed on prod-2",
        ],
        "the rollouts page",
    );

    let page = http::get(addr, &format!("/rollouts/{}", started.id), &anonymous).await;
    assert_contains(
        &page,
        &[
            "Halted at wave 2",
            "href=\"/nodes/prod-1\"",
            "href=\"/nodes/prod-2\"",
            &format!("href=\"/runs/{}\"", failed_node.run),
            ">done<",
            ">failed<",
            "Health <span class=\"badge ok\">passed</span>",
            "Health <span class=\"badge bad\">failed</span>",
            "rule procedure-passed failed on prod-2",
            "at most 1 per rack",
            "flash-or-fail",
            "rollout.create",
            "rollout.health-judged",
        ],
        "the rollout's page",
    );
    // Wave 1 passed before wave 2 started; wave 2's verdict is the failure.
    let wave_1 = page.body.find("Wave 1 of 2").expect("wave 1");
    let wave_2 = page.body.find("Wave 2 of 2").expect("wave 2");
    let passed = page.body.find("badge ok\">passed").expect("a pass");
    let failure = page.body.find("badge bad\">failed").expect("a failure");
    assert!(
        wave_1 < passed && passed < wave_2 && wave_2 < failure,
        "{}",
        page.body
    );
    let missing = http::get(addr, "/rollouts/rollout-nope", &anonymous).await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert!(missing.body.contains("rollout list"), "{}", missing.body);

    let release = http::get(addr, "/releases/r9", &anonymous).await;
    assert_contains(
        &release,
        &[&format!("href=\"/rollouts/{}\"", started.id)],
        "the release page",
    );
    let node = http::get(addr, "/nodes/prod-2", &anonymous).await;
    assert_contains(
        &node,
        &[&format!("href=\"/rollouts/{}\"", started.id), ">failed<"],
        "a node of the rollout",
    );
    let other = http::get(addr, "/nodes/lab-1", &anonymous).await;
    assert_contains(&other, &["Part of no rollout."], "a node of none");

    // A person's reason shows escaped: skipping the halted wave completes the rollout.
    clients
        .rollouts
        .skip_wave(v1::RolloutActionRequest {
            id: started.id.clone(),
            reason: HOSTILE.into(),
        })
        .await
        .expect("skip the halted wave");
    rollout::wait_phase(&clients, &started.id, "completed").await;
    let page = http::get(addr, &format!("/rollouts/{}", started.id), &anonymous).await;
    assert_contains(
        &page,
        &[
            "Wave 2 was skipped",
            "&lt;script&gt;alert(1)&lt;/script&gt;&amp;",
            "rollout.skip-wave",
        ],
        "the rollout's page after a skip",
    );
    assert!(!page.body.contains(HOSTILE), "{}", page.body);

    // A customer sees the rollouts of the releases for it only.
    clients.set_customers(RELEASE, &["a"]).await;
    let root = controller.create_token(None, "root", "admin", "").await;
    let cust_a = controller
        .create_token(Some(&root), "cust-a", "customer", "a")
        .await;
    let cust_b = controller
        .create_token(Some(&root), "cust-b", "customer", "b")
        .await;
    let a = http::sign_in(addr, &cust_a).await;
    let b = http::sign_in(addr, &cust_b).await;
    let list = http::get(addr, "/rollouts", &a).await;
    assert_contains(&list, &[&started.id], "customer a's rollouts");
    let page = http::get(addr, &format!("/rollouts/{}", started.id), &a).await;
    assert_contains(
        &page,
        &["Wave 2 of 2", "Your role does not read the audit log."],
        "customer a's rollout page",
    );
    let list = http::get(addr, "/rollouts", &b).await;
    assert_contains(&list, &["No rollout yet"], "customer b's rollouts");
    assert!(!list.body.contains(&started.id), "{}", list.body);
    let page = http::get(addr, &format!("/rollouts/{}", started.id), &b).await;
    assert_eq!(page.status, 404, "{}", page.body);

    for agent in agents {
        agent.stop().await;
    }
    controller.stop().await;
}

/// A release only for customer b.
const HIDDEN: &str = "r549-b";
/// A release nobody made.
const MISSING: &str = "r000-none";

/// Customer a's pages of a release only for customer b, run on both customers' nodes: each
/// answers exactly as for a release nobody made (or a run nobody started), and no list or
/// node page names it; the release for no customer in particular is shown as ever.
async fn another_customers_release(backend: Backend) {
    let mut options = ControllerOptions::new(backend);
    options.http = true;
    let Some(mut controller) = Controller::start(options).await else {
        return;
    };
    let addr = controller.http_addr.expect("the dashboard listens");
    let agents = vec![
        Agent::start_labelled(&controller.url, "lab-1", 2, &[("customer", "a")]),
        Agent::start_labelled(&controller.url, "lab-2", 2, &[("customer", "b")]),
    ];
    let mut clients = controller.clients().await;
    let hidden_run = clients
        .qualify(HIDDEN, 2, &plan_yaml(0.1), &gate_yaml(2))
        .await;
    assert_eq!(hidden_run.jobs.len(), 2, "{hidden_run:#?}");
    clients.set_customers(HIDDEN, &["b"]).await;
    clients.create_release("r550").await;
    let root = controller.create_token(None, "root", "admin", "").await;
    let cust_a = controller
        .create_token(Some(&root), "cust-a", "customer", "a")
        .await;
    let a = http::sign_in(addr, &cust_a).await;

    let nobodys_run = "run-0000000000000000";
    for (hidden, missing) in [
        (
            format!("/releases/{HIDDEN}"),
            format!("/releases/{MISSING}"),
        ),
        (
            format!("/reports/{HIDDEN}/lab-qual?format=markdown"),
            format!("/reports/{MISSING}/lab-qual?format=markdown"),
        ),
        (
            format!("/fleet?release={HIDDEN}"),
            format!("/fleet?release={MISSING}"),
        ),
        (
            format!("/issues?release={HIDDEN}"),
            format!("/issues?release={MISSING}"),
        ),
        (
            format!("/runs/{}", hidden_run.id),
            format!("/runs/{nobodys_run}"),
        ),
        (
            format!("/runs/{}/events", hidden_run.id),
            format!("/runs/{nobodys_run}/events"),
        ),
    ] {
        let hidden_page = http::get(addr, &hidden, &a).await;
        let missing_page = http::get(addr, &missing, &a).await;
        assert_eq!(hidden_page.status, missing_page.status, "{hidden}");
        assert_eq!(
            hidden_page
                .body
                .replace(HIDDEN, MISSING)
                .replace(&hidden_run.id, nobodys_run),
            missing_page.body,
            "{hidden}: the pages tell the two apart"
        );
    }
    for path in ["/releases", "/nodes/lab-1", "/rollouts"] {
        let page = http::get(addr, path, &a).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert!(!page.body.contains(HIDDEN), "{path}: {}", page.body);
        assert!(!page.body.contains(&hidden_run.id), "{path}: {}", page.body);
    }
    for path in ["/releases/r550", "/reports/r550/lab-qual?format=markdown"] {
        let page = http::get(addr, path, &a).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
    }

    for agent in agents {
        agent.stop().await;
    }
    controller.stop().await;
}

tollgate_tests::on_both_backends!(dashboard, rollout_pages, another_customers_release);

/// Plain text off loopback is refused for the dashboard as for gRPC.
#[tokio::test]
async fn the_dashboard_refuses_plain_text_off_loopback() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = tollgate_controller::ControllerConfig::new(dir.path().to_path_buf());
    config.http_listen = Some("0.0.0.0:0".parse().expect("address"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let refused = tollgate_controller::run(config, listener, async {})
        .await
        .expect_err("plain text on 0.0.0.0 is refused");
    assert!(
        refused.to_string().contains("not a loopback address"),
        "{refused:#}"
    );
}

/// Over TLS the dashboard serves HTTPS with the controller's certificate (HTTP/1.1 and h2
/// offered), and the session cookie is `Secure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_serves_https_with_the_controllers_certificate() {
    let mut options = ControllerOptions::new(Backend::Sqlite);
    options.http = true;
    options.tls = true;
    options.api_tokens = vec![("eve:viewer".into(), "s3cret-eve".into())];
    let mut controller = Controller::start(options).await.expect("a controller");
    let addr = controller.http_addr.expect("the dashboard listens");
    let ca_file = controller.ca_file.clone().expect("a lab CA");
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&ca_file).expect("the CA");
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.expect("a certificate")).expect("a root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let body = "token=s3cret-eve&next=%2Ffleet";
    let request = format!(
        "POST /signin HTTP/1.1\r\nHost: {addr}\r\nOrigin: https://{addr}\r\nContent-Type: \
         application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("a name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("a TLS handshake with the lab CA");
    tls.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 303"), "{text}");
    let cookie = text
        .lines()
        .find(|line| {
            line.to_ascii_lowercase()
                .starts_with("set-cookie: tollgate_session=")
        })
        .expect("a session cookie");
    assert!(cookie.contains("; Secure"), "{cookie}");
    // Plain HTTP on the TLS port gets no page.
    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(format!("GET /releases HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), plain.read_to_end(&mut raw)).await;
    assert!(
        !String::from_utf8_lossy(&raw).contains("200 OK"),
        "plain HTTP is not served"
    );
    controller.stop().await;
}
