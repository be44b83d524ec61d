//! End to end: the weekly status report and its minutes, through the real controller and the
//! `tollgate` CLI. A release fails its gate on one hot node (an issue opens), is planned to a
//! date already past (at risk), gets notes and an overdue action item, which is then done
//! (once) and listed apart in the minutes; another release, for
//! another customer, is halted with a hostile reason. `tollgate status` groups them per
//! customer and says what blocks each; after a scoped waiver and a promotion it says what
//! passed and which waiver expires soon. A customer token's report shows only its customer's
//! releases. Runs on SQLite and on PostgreSQL (the latter when `TOLLGATE_TEST_DATABASE_URL`
//! is set).

use tollgate_proto::v1;
use tollgate_tests::process::{text, tollgate, tollgate_ok, workspace_binary};
use tollgate_tests::{Backend, Controller, ControllerOptions, qualify_with_one_hot_node};

tollgate_tests::on_both_backends!(the_status_report_says_what_passed_blocks_and_risks);

const HOSTILE: &str = "<script>alert(1)</script>";

/// Runs the CLI with the API token `secret`.
async fn as_token(url: &str, secret: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(workspace_binary("tollgate"))
        .env("TOLLGATE_CONTROLLER", url)
        .env("TOLLGATE_TOKEN", secret)
        .args(args)
        .output()
        .await
        .expect("run tollgate")
}

async fn the_status_report_says_what_passed_blocks_and_risks(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let url = controller.url.clone();
    let (agents, mut clients) = qualify_with_one_hot_node(&controller, 0.2).await;

    tollgate_ok(
        &url,
        &["release", "customers", "r550", "--customer", "acme"],
    )
    .await;
    tollgate_ok(
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
    clients.create_release("r560").await;
    tollgate_ok(
        &url,
        &["release", "customers", "r560", "--customer", "globex"],
    )
    .await;
    tollgate_ok(&url, &["halt", "--release", "r560", "--reason", HOSTILE]).await;

    // Notes: a decision, an action item already overdue; a bad note names every bad field.
    let added = tollgate_ok(
        &url,
        &[
            "note",
            "add",
            "--release",
            "r550",
            "wait for the <b>BMC</b> fix",
        ],
    )
    .await;
    assert!(added.contains("wait for the <b>BMC</b> fix"), "{added}");
    tollgate_ok(
        &url,
        &[
            "note",
            "add",
            "--release",
            "r550",
            "replace lab-3's fan",
            "--action",
            "carol",
            "--due",
            "2020-01-02",
        ],
    )
    .await;
    let refused = tollgate(
        &url,
        &["note", "add", "--release", "r550", " ", "--due", "soon"],
    )
    .await;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    for field in ["text", "due", "action_owner"] {
        assert!(
            text(&refused.stderr).contains(field),
            "{field}: {}",
            text(&refused.stderr)
        );
    }
    let refused = tollgate(&url, &["note", "add", "--release", "nope", "x"]).await;
    assert_eq!(refused.status.code(), Some(4), "{}", text(&refused.stderr));
    let listed = tollgate_ok(&url, &["note", "list", "--release", "r550"]).await;
    assert_eq!(
        listed.lines().count(),
        3,
        "a header and two notes: {listed}"
    );
    let actions = tollgate_ok(&url, &["note", "list", "--actions", "-o", "json"]).await;
    let actions: serde_json::Value = serde_json::from_str(&actions).expect("JSON");
    assert_eq!(actions[0]["action_owner"], "carol");
    assert_eq!(actions[0]["due"], "2020-01-02");
    assert_eq!(actions.as_array().map(Vec::len), Some(1));

    // The report, per customer: what blocks r550, its open issue, its milestone at risk; r560
    // halted, its hostile reason inert; the minutes with the overdue action item.
    let report = tollgate_ok(&url, &["status", "--minutes"]).await;
    let acme = report.find("## Customer acme").expect("acme's group");
    let globex = report.find("## Customer globex").expect("globex's group");
    assert!(acme < globex, "{report}");
    assert!(
        report.contains("### [r550](/releases/r550) at lab-qual"),
        "{report}"
    );
    assert!(
        report.contains("| lab-qual | 2020-01-15 |") && report.contains("AT RISK (after-target)"),
        "{report}"
    );
    assert!(
        report.contains("rule telemetry:gpu\\_temp\\_c failed on [lab-3](/nodes/lab-3)"),
        "{report}"
    );
    assert!(report.contains("  - issue #"), "{report}");
    assert!(report.contains("owner none, open 0 days"), "{report}");
    assert!(report.contains("- **Passed since"), "{report}");
    assert!(!report.contains("promoted lab-qual"), "{report}");
    assert!(report.contains("It is halted (\\<script\\>"), "{report}");
    assert!(!report.contains(HOSTILE), "{report}");
    assert!(report.contains("## Minutes"), "{report}");
    assert!(
        report.contains("wait for the \\<b\\>BMC\\</b\\> fix"),
        "{report}"
    );
    assert!(
        report.contains("(owner carol, due 2020-01-02) **OVERDUE**"),
        "{report}"
    );
    // The action item is done, once, with a comment: the minutes list it apart from the open
    // ones; closing it again, closing a note that is no action item, or an unknown note, is
    // refused saying which note.
    let action_id = actions[0]["id"].as_i64().expect("a number").to_string();
    let every = tollgate_ok(&url, &["note", "list", "--release", "r550", "-o", "json"]).await;
    let every: serde_json::Value = serde_json::from_str(&every).expect("JSON");
    let decision_id = every[0]["id"].as_i64().expect("a number");
    assert_eq!(every[0]["state"], serde_json::Value::Null, "{every:#}");
    let another = tollgate_ok(
        &url,
        &[
            "note",
            "add",
            "--release",
            "r550",
            "book the lab",
            "--action",
            "dave",
            "--due",
            "2020-01-03",
            "-o",
            "json",
        ],
    )
    .await;
    let another: serde_json::Value = serde_json::from_str(&another).expect("JSON");
    assert_eq!(another["state"], "overdue", "{another:#}");
    let done = tollgate_ok(
        &url,
        &[
            "note",
            "done",
            &action_id,
            "--comment",
            "fan swapped",
            "-o",
            "json",
        ],
    )
    .await;
    let done: serde_json::Value = serde_json::from_str(&done).expect("JSON");
    assert_eq!(done["state"], "done", "{done:#}");
    assert_eq!(done["done_by"], "anonymous");
    assert_eq!(done["done_comment"], "fan swapped");
    let again = tollgate(&url, &["note", "done", &action_id]).await;
    assert_eq!(again.status.code(), Some(3), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains(&format!("note {action_id} was done already, by anonymous")),
        "{}",
        text(&again.stderr)
    );
    let not_action = tollgate(&url, &["note", "done", &decision_id.to_string()]).await;
    assert_eq!(
        not_action.status.code(),
        Some(3),
        "{}",
        text(&not_action.stderr)
    );
    assert!(
        text(&not_action.stderr).contains(&format!("note {decision_id} is not an action item")),
        "{}",
        text(&not_action.stderr)
    );
    let unknown = tollgate(&url, &["note", "done", "999999"]).await;
    assert_eq!(unknown.status.code(), Some(4), "{}", text(&unknown.stderr));
    assert!(text(&unknown.stderr).contains("note 999999 not found"));
    let listed = tollgate_ok(&url, &["note", "list", "--actions"]).await;
    let states: Vec<(&str, &str)> = listed
        .lines()
        .skip(1)
        .map(|line| {
            let state = line.split_whitespace().nth(6).unwrap_or_default();
            (state, line)
        })
        .collect();
    assert!(
        states[0].0 == "done" && states[0].1.ends_with("(done by anonymous: fan swapped)"),
        "{listed}"
    );
    assert_eq!(states[1].0, "OVERDUE", "{listed}");
    let audit = tollgate_ok(&url, &["audit", "list", "--release", "r550", "-o", "json"]).await;
    assert!(
        audit.contains("note.done") && audit.contains(&format!("note/{action_id}")),
        "{audit}"
    );
    let minutes = tollgate_ok(&url, &["status", "--minutes"]).await;
    let (open, finished) = minutes
        .split_once("### Action items done since")
        .expect("a done section");
    let open = open.split_once("### Action items").expect("open items").1;
    assert!(!open.contains("replace lab-3"), "{minutes}");
    assert!(
        open.contains("book the lab (owner dave, due 2020-01-03) **OVERDUE**"),
        "{minutes}"
    );
    assert!(
        finished.contains("replace lab-3's fan (owner carol, due 2020-01-02), done ")
            && finished.contains(" by anonymous: fan swapped"),
        "{minutes}"
    );

    // Scoped to acme, whose nodes (none labelled `customer=acme`) saw nothing: r550's gate is
    // evaluated over them alone, and the issue seen on lab-3 is not acme's.
    let acme = tollgate_ok(&url, &["status", "--customer", "acme"]).await;
    assert!(acme.contains("### [r550](/releases/r550)"), "{acme}");
    assert!(!acme.contains("r560"), "{acme}");
    assert!(!acme.contains("lab-3"), "{acme}");
    assert!(!acme.contains("issue #"), "{acme}");
    assert!(acme.contains("missing evidence"), "{acme}");
    let page = tollgate_ok(&url, &["status", "--format", "html"]).await;
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains(HOSTILE), "{page}");
    assert!(!page.contains("Minutes"), "no minutes unless asked: {page}");
    let refused = tollgate(&url, &["status", "--format", "pdf"]).await;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("format"));

    // A waiver of the hot node's failure for three days lets r550 pass and be promoted: the
    // report then says what passed, and which waiver expires within the week.
    let waiver = clients
        .gates
        .waive(v1::WaiveRequest {
            release: "r550".into(),
            rule_id: "telemetry:gpu_temp_c".into(),
            reason: "fan curve bug on lab-3".into(),
            ticket: "HW-1234".into(),
            ttl_seconds: 3 * 24 * 3600,
            nodes: vec!["lab-3".into()],
            ..Default::default()
        })
        .await
        .expect("waive")
        .into_inner();
    tollgate_ok(&url, &["promote", "--release", "r550"]).await;
    let report = tollgate_ok(&url, &["status", "--since", "1d"]).await;
    assert!(
        report.contains("promoted lab-qual → customer-acceptance (by anonymous)"),
        "{report}"
    );
    assert!(
        report.contains("the lab-qual gate passed (decision "),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "{} of telemetry:gpu\\_temp\\_c at lab-qual: expires",
            waiver.id.replace('_', "\\_")
        )),
        "{report}"
    );
    assert!(
        report.contains("| lab-qual | 2020-01-15 | passed "),
        "{report}"
    );

    // Scoped to a customer: only its releases.
    let scoped = tollgate_ok(&url, &["status", "--customer", "globex"]).await;
    assert!(scoped.contains("## Customer globex"), "{scoped}");
    assert!(scoped.contains("r560"), "{scoped}");
    assert!(!scoped.contains("r550"), "{scoped}");

    // A customer token sees its own customer's report only, and may not add notes.
    let secret = controller
        .create_token(None, "globex-portal", "customer", "globex")
        .await;
    let own = as_token(&url, &secret, &["status"]).await;
    assert!(own.status.success(), "{}", text(&own.stderr));
    let own = text(&own.stdout);
    assert!(own.contains("For customer globex only."), "{own}");
    assert!(own.contains("r560"), "{own}");
    assert!(!own.contains("r550"), "{own}");
    let minutes = as_token(&url, &secret, &["status", "--minutes"]).await;
    assert!(!minutes.status.success());
    assert!(
        text(&minutes.stderr).contains("may not read; leave out minutes"),
        "{}",
        text(&minutes.stderr)
    );
    let other = as_token(&url, &secret, &["status", "--customer", "acme"]).await;
    assert!(!other.status.success());
    assert!(
        text(&other.stderr).contains("its own customer (globex) only"),
        "{}",
        text(&other.stderr)
    );
    let note = as_token(&url, &secret, &["note", "add", "--release", "r560", "x"]).await;
    assert!(!note.status.success());
    assert!(
        text(&note.stderr).contains("may not call StatusService/AddNote"),
        "{}",
        text(&note.stderr)
    );
    drop(agents);
}
