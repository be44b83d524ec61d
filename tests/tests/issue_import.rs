//! End to end through the CLI: `tollgate issue export` from one controller, `tollgate issue
//! import` into a fresh one, and the fresh one's export is the same document but for issue
//! numbers and times (docs/issue-format.md); importing it again changes nothing; a file with
//! two bad entries is refused naming both, a file that is not JSON naming its line, and
//! neither stores anything. On SQLite and on PostgreSQL (the latter when
//! `TOLLGATE_TEST_DATABASE_URL` is set).

use serde_json::{Value, json};
use tollgate_tests::process::{text, tollgate};
use tollgate_tests::{Backend, Controller, ControllerOptions};

tollgate_tests::on_both_backends!(issues_move_between_controllers_through_export_and_import);

/// What a CLI run printed, stdout then stderr.
fn printed(output: &std::process::Output) -> String {
    format!("{}{}", text(&output.stdout), text(&output.stderr))
}

/// Runs the CLI, asserts it succeeded and answers its JSON output.
async fn json(url: &str, args: &[&str]) -> Value {
    let output = tollgate(url, args).await;
    assert!(output.status.success(), "{args:?}: {}", printed(&output));
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

/// An export without what differs between controllers: issue numbers and times.
fn portable(export: &Value) -> Value {
    let mut export = export.clone();
    for issue in export["issues"].as_array_mut().expect("issues") {
        let issue = issue.as_object_mut().expect("an issue");
        for field in ["id", "opened_at", "updated_at"] {
            assert!(issue.remove(field).is_some(), "{field} is exported");
        }
    }
    export
}

async fn issues_move_between_controllers_through_export_and_import(backend: Backend) {
    let Some(source) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let Some(target) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, document: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, document).expect("write");
        path.display().to_string()
    };

    // The source holds issues in three states, imported from a file and changed by hand.
    let seed = json!({
        "format": "tollgate-issues/1",
        "issues": [
            {"kind": "telemetry", "text": "gpu_temp_c max breaks < 88 in stress",
             "title": "fan curve too flat", "severity": "high", "owner": "alice",
             "tickets": ["JIRA-77"], "customers": ["acme"], "state": "closed",
             "fix_release": "r551", "releases": ["r550"], "nodes": ["lab-3"],
             "evidence": "9f2c"},
            {"kind": "steps-passed", "text": "nccl: failed", "state": "wont-fix",
             "reason": "lab only", "releases": ["r550", "r551"], "nodes": ["lab-1"]},
            {"kind": "events", "text": "XID 79", "state": "open", "releases": ["r552"],
             "nodes": []},
        ],
    });
    let seeded = json(
        &source.url,
        &[
            "issue",
            "import",
            &write("seed.json", &seed.to_string()),
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(
        seeded["opened"].as_array().map(Vec::len),
        Some(3),
        "{seeded:#}"
    );
    let xid = seeded["opened"][2].as_i64().expect("a number").to_string();
    json(
        &source.url,
        &[
            "issue",
            "set",
            &xid,
            "--owner",
            "bob",
            "--customer",
            "globex",
            "-o",
            "json",
        ],
    )
    .await;

    // Export, import into the fresh controller, export again: the same but for ids and times.
    let exported = json(&source.url, &["issue", "export"]).await;
    assert_eq!(exported["issues"].as_array().map(Vec::len), Some(3));
    assert_eq!(exported["issues"][2]["owner"], "bob");
    let file = write(
        "export.json",
        &serde_json::to_string_pretty(&exported).expect("JSON"),
    );
    let imported = tollgate(&target.url, &["issue", "import", &file]).await;
    assert!(imported.status.success(), "{}", printed(&imported));
    assert!(
        printed(&imported).contains("3 opened, 0 updated, 0 unchanged"),
        "{}",
        printed(&imported)
    );
    let reexported = json(&target.url, &["issue", "export"]).await;
    assert_eq!(portable(&reexported), portable(&exported));
    let shown = json(&target.url, &["issue", "show", "1", "-o", "json"]).await;
    assert_eq!(shown["history"][0]["action"], "imported", "{shown:#}");

    // Importing the same file again changes nothing, not even the times.
    let again = json(&target.url, &["issue", "import", &file, "-o", "json"]).await;
    assert_eq!(again["opened"], json!([]));
    assert_eq!(again["updated"], json!([]));
    assert_eq!(again["unchanged"].as_array().map(Vec::len), Some(3));
    assert_eq!(json(&target.url, &["issue", "export"]).await, reexported);

    // A change in the file updates the issue of its signature, with a history entry.
    let mut changed = exported.clone();
    changed["issues"][1]["owner"] = json!("carol");
    let file = write("changed.json", &changed.to_string());
    let updated = json(&target.url, &["issue", "import", &file, "-o", "json"]).await;
    assert_eq!(
        updated["updated"].as_array().map(Vec::len),
        Some(1),
        "{updated:#}"
    );
    let id = updated["updated"][0]
        .as_i64()
        .expect("a number")
        .to_string();
    let shown = json(&target.url, &["issue", "show", &id, "-o", "json"]).await;
    assert_eq!(shown["owner"], "carol");
    assert_eq!(shown["text"], "nccl: failed");
    let last = shown["history"]
        .as_array()
        .and_then(|h| h.last())
        .expect("history");
    assert_eq!(last["action"], "imported");
    assert_eq!(last["detail"], "owner carol");
    let before = json(&target.url, &["issue", "export"]).await;

    // Two bad entries: both named, nothing stored (not even the good entry's change).
    let mut bad = changed.clone();
    bad["issues"][0]["owner"] = json!("dave");
    bad["issues"][1]["state"] = json!("resolved");
    bad["issues"][2]["tickets"] = json!("JIRA-1");
    let file = write("bad.json", &bad.to_string());
    let refused = tollgate(&target.url, &["issue", "import", &file]).await;
    assert!(!refused.status.success());
    let message = printed(&refused);
    assert!(message.contains("issues[1].state"), "{message}");
    assert!(message.contains("issues[2].tickets"), "{message}");
    assert!(!message.contains("issues[0]"), "{message}");
    assert_eq!(json(&target.url, &["issue", "export"]).await, before);

    // Not JSON: the line is named, nothing stored.
    let file = write(
        "broken.json",
        "{\n  \"format\": \"tollgate-issues/1\",\n  \"issues\": [,]\n}\n",
    );
    let refused = tollgate(&target.url, &["issue", "import", &file]).await;
    assert!(!refused.status.success());
    assert!(
        printed(&refused).contains("is not JSON at line 3"),
        "{}",
        printed(&refused)
    );
    assert_eq!(json(&target.url, &["issue", "export"]).await, before);
}
