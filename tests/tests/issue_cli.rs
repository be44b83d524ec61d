//! End to end through the CLI: a failed gate opens an issue by itself and `tollgate issue
//! list` shows it; `issue open --from` the group `gate show` names attaches to it instead of
//! opening a second; `issue set` gives it an owner and a ticket, then adds and removes tickets
//! and customers one by one; won't-fix without a reason and
//! reopening an open issue are refused, saying why; a waiver of r550's rule names the issue;
//! `issue fix --release r551` promises the fix, and r551's passing run closes it, which
//! `waiver list` and `gate show` then say (the waiver can be revoked); a closed issue takes no
//! fix until reopened; `issue export` writes it as JSON and as CSV. While the issue is open
//! (and while its fix is unverified) `release list` and `release show` name it in what blocks
//! the release, and no longer once it is closed. On SQLite and on
//! PostgreSQL (the latter when `TOLLGATE_TEST_DATABASE_URL` is set).

use serde_json::Value;
use tollgate_tests::process::{text, tollgate};

/// What a CLI run printed, stdout then stderr.
fn printed(output: &std::process::Output) -> String {
    format!("{}{}", text(&output.stdout), text(&output.stderr))
}
use tollgate_tests::{Backend, Controller, ControllerOptions, qualify_with_one_hot_node};

tollgate_tests::on_both_backends!(an_issue_is_tracked_to_closure_from_the_command_line);

/// Runs the CLI, asserts it succeeded and answers its JSON output.
async fn json(url: &str, args: &[&str]) -> Value {
    let output = tollgate(url, args).await;
    assert!(output.status.success(), "{args:?}: {}", printed(&output));
    serde_json::from_slice(&output.stdout).expect("-o json prints JSON")
}

/// The telemetry issues `issue list -o json` shows.
async fn hot_issues(url: &str) -> Vec<Value> {
    let listed = json(url, &["issue", "list", "-o", "json"]).await;
    listed
        .as_array()
        .expect("a list")
        .iter()
        .filter(|issue| issue["kind"] == "telemetry")
        .cloned()
        .collect()
}

/// `release`'s line of `tollgate release list`.
async fn release_line(url: &str, release: &str) -> String {
    let listed = tollgate(url, &["release", "list"]).await;
    assert!(listed.status.success(), "{}", printed(&listed));
    let prefix = format!("{release} ");
    text(&listed.stdout)
        .lines()
        .find(|line| line.starts_with(&prefix))
        .unwrap_or_else(|| panic!("a line for {release}:\n{}", printed(&listed)))
        .to_owned()
}

/// `release`'s object in `tollgate release list -o json`.
async fn release_json(url: &str, release: &str) -> Value {
    let listed = json(url, &["release", "list", "-o", "json"]).await;
    listed["releases"]
        .as_array()
        .expect("a list")
        .iter()
        .find(|found| found["name"] == release)
        .unwrap_or_else(|| panic!("{release} in {listed:#}"))
        .clone()
}

async fn an_issue_is_tracked_to_closure_from_the_command_line(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let url = controller.url.clone();
    // lab-3 runs over temperature: r550's gate fails and the decision opened an issue.
    let (mut agents, mut clients) = qualify_with_one_hot_node(&controller, 1.0).await;
    let hot = hot_issues(&url).await;
    assert_eq!(hot.len(), 1, "{hot:#?}");
    let id = hot[0]["id"].as_i64().expect("a number");
    let number = id.to_string();
    assert_eq!(hot[0]["state"], "open");
    assert_eq!(hot[0]["nodes"], serde_json::json!(["lab-3"]));
    let listed = tollgate(&url, &["issue", "list", "--state", "open"]).await;
    assert!(
        printed(&listed).contains(&format!("#{id}")),
        "{}",
        printed(&listed)
    );

    // `gate show` names the failure group; opening an issue from it attaches to the one the
    // signature has.
    let shown = tollgate(&url, &["gate", "show", "--release", "r550"]).await;
    let shown = printed(&shown);
    let group = shown
        .lines()
        .find_map(|line| {
            let rest = line.trim().strip_prefix("group ")?;
            let (reference, signature) = rest.split_once(": ")?;
            signature
                .starts_with("telemetry: ")
                .then(|| reference.to_owned())
        })
        .unwrap_or_else(|| panic!("gate show names the telemetry group:\n{shown}"));
    let opened = json(
        &url,
        &[
            "issue",
            "open",
            "--release",
            "r550",
            "--from",
            &group,
            "--title",
            "hot",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(opened["attached"], true, "{opened:#}");
    assert_eq!(opened["issue"]["id"], id);
    assert_eq!(hot_issues(&url).await.len(), 1, "no second issue");
    let unknown = tollgate(
        &url,
        &["issue", "open", "--release", "r550", "--from", "nope#9"],
    )
    .await;
    assert!(!unknown.status.success());
    assert!(
        printed(&unknown).contains("give one of: ") && printed(&unknown).contains(&group),
        "{}",
        printed(&unknown)
    );

    // An owner and a ticket.
    let set = json(
        &url,
        &[
            "issue", "set", &number, "--owner", "alice", "--ticket", "JIRA-77", "-o", "json",
        ],
    )
    .await;
    assert_eq!(set["owner"], "alice");
    assert_eq!(set["tickets"], serde_json::json!(["JIRA-77"]));
    let actions: Vec<&str> = set["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|entry| entry["action"].as_str())
        .collect();
    assert_eq!(actions, ["opened", "updated"], "{set:#}");

    // Tickets and customers change element by element: adding one the issue has and removing
    // one it lacks change nothing; a whole list beside its edits is refused, naming the fields.
    let set = json(
        &url,
        &[
            "issue",
            "set",
            &number,
            "--add-ticket",
            "JIRA-78",
            "--add-ticket",
            "JIRA-77",
            "--remove-ticket",
            "JIRA-1",
            "--add-customer",
            "globex",
            "--add-customer",
            "acme",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(set["tickets"], serde_json::json!(["JIRA-77", "JIRA-78"]));
    assert_eq!(set["customers"], serde_json::json!(["acme", "globex"]));
    let refused = tollgate(
        &url,
        &[
            "issue",
            "set",
            &number,
            "--ticket",
            "JIRA-9",
            "--add-ticket",
            "JIRA-10",
            "--customer",
            "initech",
            "--remove-customer",
            "acme",
        ],
    )
    .await;
    assert!(!refused.status.success(), "{}", printed(&refused));
    for field in ["add_tickets", "remove_customers"] {
        assert!(printed(&refused).contains(field), "{}", printed(&refused));
    }
    let set = json(
        &url,
        &[
            "issue",
            "set",
            &number,
            "--remove-ticket",
            "JIRA-78",
            "--remove-customer",
            "acme",
            "--remove-customer",
            "globex",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(set["tickets"], serde_json::json!(["JIRA-77"]));
    assert_eq!(set["customers"], serde_json::json!([]));

    // What blocks r550 names the open issue, its owner and age, beside the failing rule: in
    // `release list`, `release show` and their `-o json`.
    let named = format!("Open issues: issue #{id} open, owner alice, 0 d.");
    let line = release_line(&url, "r550").await;
    assert!(
        line.contains("The lab-qual gate failed: rule ") && line.ends_with(&named),
        "{line}"
    );
    let listed = release_json(&url, "r550").await;
    assert!(
        listed["blocked_by"]
            .as_str()
            .is_some_and(|b| b.ends_with(&named)),
        "{listed:#}"
    );
    assert_eq!(listed["blocking_issues"][0]["id"], id, "{listed:#}");
    assert_eq!(listed["blocking_issues"][0]["owner"], "alice");
    assert_eq!(listed["blocking_issues"][0]["state"], "open");
    let shown = tollgate(&url, &["release", "show", "r550"]).await;
    assert!(
        text(&shown.stdout).lines().any(|line| line
            .starts_with("blocked by:  The lab-qual gate failed")
            && line.ends_with(&named)),
        "{}",
        printed(&shown)
    );
    let shown = json(&url, &["release", "show", "r550", "-o", "json"]).await;
    assert_eq!(shown["blocked_by"], listed["blocked_by"], "{shown:#}");
    assert_eq!(shown["blocking_issues"], listed["blocking_issues"]);

    // Refusals say what to do.
    let no_reason = tollgate(&url, &["issue", "wont-fix", &number]).await;
    assert!(!no_reason.status.success());
    assert!(
        printed(&no_reason).contains("reason: is empty; say why it will not be fixed"),
        "{}",
        printed(&no_reason)
    );
    let reopen = tollgate(&url, &["issue", "reopen", &number]).await;
    assert!(!reopen.status.success());
    assert!(
        printed(&reopen).contains("only a closed or won't-fix issue can be reopened"),
        "{}",
        printed(&reopen)
    );

    // r550 ships meanwhile with the rule waived, the waiver naming the issue; one naming an
    // issue that does not exist is refused.
    let rule = group.rsplit_once('#').expect("RULE#N").0.to_owned();
    let waive = |issue: &str| {
        [
            "waive",
            "--release",
            "r550",
            "--rule",
            &rule,
            "--reason",
            "fan curve",
            "--ticket",
            "JIRA-77",
            "--for",
            "7d",
            "--issue",
            issue,
            "-o",
            "json",
        ]
        .map(str::to_owned)
    };
    let args = waive("999999");
    let refused = tollgate(&url, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(!refused.status.success());
    assert!(
        printed(&refused).contains("issue #999999"),
        "{}",
        printed(&refused)
    );
    let args = waive(&number);
    let waiver = json(&url, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(waiver["issue"], id);
    let waivers = tollgate(&url, &["waiver", "list", "--release", "r550"]).await;
    assert!(
        printed(&waivers).contains(&format!("#{id} open")) && !printed(&waivers).contains("revoke"),
        "{}",
        printed(&waivers)
    );

    // A fix for an issue that does not exist, in a release that does not either: the issue
    // is named; a fix of this issue in a release that does not exist names the release.
    let neither = tollgate(&url, &["issue", "fix", "999999", "--release", "r551"]).await;
    assert_eq!(neither.status.code(), Some(4), "{}", printed(&neither));
    assert!(
        printed(&neither).contains("issue #999999") && !printed(&neither).contains("r551"),
        "{}",
        printed(&neither)
    );
    let no_release = tollgate(&url, &["issue", "fix", &number, "--release", "r551"]).await;
    assert_eq!(
        no_release.status.code(),
        Some(4),
        "{}",
        printed(&no_release)
    );
    assert!(
        printed(&no_release).contains("release r551"),
        "{}",
        printed(&no_release)
    );

    // The fix is in r551; lab-3 comes back repaired and r551's run passes on every node.
    clients.create_release("r551").await;
    let fixed = json(
        &url,
        &["issue", "fix", &number, "--release", "r551", "-o", "json"],
    )
    .await;
    assert_eq!(fixed["state"], "fix-in-release");
    assert_eq!(fixed["fix_release"], "r551");
    // Until it is verified the issue blocks the release the fix is in, too.
    let line = release_line(&url, "r551").await;
    assert!(
        line.contains(&format!("issue #{id} fix-in-release, owner alice")),
        "{line}"
    );
    let hot_agent = agents.pop().expect("lab-3");
    agents.push(hot_agent.shut_down().await.start_repaired());
    clients.wait_ready_nodes(3).await;
    let run = clients.start_run("r551", "gpu-qual").await;
    clients.wait_run_done(&run.id).await;
    assert_eq!(clients.evaluate("r551").await.verdict, "passed");

    let closed = json(&url, &["issue", "show", &number, "-o", "json"]).await;
    assert_eq!(closed["state"], "closed", "{closed:#}");
    assert_eq!(closed["fix_release"], "r551");
    assert_eq!(closed["owner"], "alice");
    let actions: Vec<&str> = closed["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|entry| entry["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["opened", "updated", "updated", "updated", "fix", "verified"],
        "{closed:#}"
    );
    let listed = json(&url, &["issue", "list", "--state", "closed", "-o", "json"]).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed:#}");
    // Closed, it blocks neither release any more.
    for release in ["r550", "r551"] {
        let line = release_line(&url, release).await;
        assert!(!line.contains(&format!("issue #{id}")), "{line}");
        let listed = release_json(&url, release).await;
        assert_eq!(
            listed["blocking_issues"],
            serde_json::json!([]),
            "{listed:#}"
        );
    }

    // The waiver's issue is closed: the list says the waiver can go.
    let waivers = tollgate(&url, &["waiver", "list", "--release", "r550"]).await;
    let waiver_id = waiver["id"].as_str().expect("an id");
    assert!(
        printed(&waivers).contains(&format!(
            "waiver {waiver_id}: issue #{id} closed; revoke the waiver with `tollgate waiver \
             revoke {waiver_id}`"
        )),
        "{}",
        printed(&waivers)
    );
    let listed = json(&url, &["waiver", "list", "--release", "r550", "-o", "json"]).await;
    assert_eq!(listed[0]["issue_state"], "closed", "{listed:#}");
    let shown = tollgate(&url, &["gate", "show", "--release", "r550"]).await;
    assert!(
        printed(&shown).contains(&format!(
            "is waived by {waiver_id}, whose issue #{id} is closed; revoke the waiver"
        )),
        "{}",
        printed(&shown)
    );

    // A closed issue takes no fix until it is reopened.
    let again = tollgate(&url, &["issue", "fix", &number, "--release", "r551"]).await;
    assert!(!again.status.success());
    assert!(
        printed(&again).contains(&format!(
            "reopen it first with `tollgate issue reopen {id}`"
        )),
        "{}",
        printed(&again)
    );

    // The export holds the closed issue, as JSON and as CSV.
    let exported = json(&url, &["issue", "export", "--state", "closed"]).await;
    assert_eq!(exported["format"], "tollgate-issues/1");
    assert_eq!(exported["issues"][0]["id"], id);
    assert_eq!(
        exported["issues"][0]["tickets"],
        serde_json::json!(["JIRA-77"])
    );
    let csv = tollgate(&url, &["issue", "export", "--format", "csv"]).await;
    assert!(csv.status.success(), "{}", printed(&csv));
    let csv = text(&csv.stdout);
    let line = csv
        .lines()
        .find(|line| line.starts_with(&format!("{id},telemetry,")))
        .unwrap_or_else(|| panic!("a line for issue #{id}:\n{csv}"));
    assert!(
        line.contains(",alice,JIRA-77,,closed,r551,,r550,lab-3,"),
        "{line}"
    );
    for agent in agents {
        agent.stop().await;
    }
}
