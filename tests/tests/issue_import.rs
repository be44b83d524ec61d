//! End to end through the CLI: `tollgate issue export` from one controller, `tollgate issue
//! import` into a fresh one, and the fresh one's export is the same document but for issue
//! numbers and times (docs/issue-format.md); importing it again changes nothing; a file with
//! two bad entries is refused naming both, a file that is not JSON naming its line, and
//! neither stores anything. The same through CSV (`issue export --format csv`, `issue import
//! FILE.csv`): the fresh controller's CSV export is the first but for issue numbers and times,
//! a second import changes nothing, and a CSV with bad lines names each line and field and
//! stores nothing. On SQLite and on PostgreSQL (the latter when
//! `TOLLGATE_TEST_DATABASE_URL` is set).

use serde_json::{Value, json};
use tollgate_tests::process::{text, tollgate};
use tollgate_tests::{Backend, Controller, ControllerOptions};

tollgate_tests::on_both_backends!(issues_move_between_controllers_through_export_and_import);
tollgate_tests::on_both_backends!(issues_move_between_controllers_as_csv);

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

/// Runs the CLI, asserts it succeeded and answers its standard output.
async fn ok(url: &str, args: &[&str]) -> String {
    let output = tollgate(url, args).await;
    assert!(output.status.success(), "{args:?}: {}", printed(&output));
    text(&output.stdout)
}

/// A CSV export without what differs between controllers: the `id`, `opened_at` and
/// `updated_at` cells (each line's first and last two; no cell here holds a comma).
fn portable_csv(export: &str) -> Vec<String> {
    export
        .split("\r\n")
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            if cells.len() < 3 {
                return line.to_owned();
            }
            cells[1..cells.len() - 2].join(",")
        })
        .collect()
}

async fn issues_move_between_controllers_as_csv(backend: Backend) {
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

    // The source's issues come from a CSV file itself: three states, lists of two, a quoted
    // title, columns in another order than the export's.
    let seed = "state,kind,text,title,owner,tickets,customers,fix_release,reason,releases,nodes\n\
                closed,telemetry,gpu_temp_c max breaks < 88 in stress,\"fan curve, too flat\",alice,JIRA-77;JIRA-78,acme,r551,,r550,lab-3;lab-4\n\
                wont-fix,steps-passed,nccl: failed,,,,,,lab only,r550;r551,lab-1\n\
                open,events,XID 79,,bob,,globex,,,r552,\n";
    let seeded = json(
        &source.url,
        &["issue", "import", &write("seed.csv", seed), "-o", "json"],
    )
    .await;
    assert_eq!(
        seeded["opened"].as_array().map(Vec::len),
        Some(3),
        "{seeded:#}"
    );
    let shown = json(&source.url, &["issue", "show", "1", "-o", "json"]).await;
    assert_eq!(shown["title"], "fan curve, too flat");
    assert_eq!(shown["tickets"], json!(["JIRA-77", "JIRA-78"]));
    assert_eq!(shown["nodes"], json!(["lab-3", "lab-4"]));
    assert_eq!(shown["state"], "closed");

    // Export CSV, import it into the fresh controller (by extension), export again: the same
    // but for ids and times.
    let exported = ok(&source.url, &["issue", "export", "--format", "csv"]).await;
    assert_eq!(exported.lines().count(), 4, "{exported}");
    let file = write("export.csv", &exported);
    let imported = ok(&target.url, &["issue", "import", &file]).await;
    assert!(
        imported.contains("3 opened, 0 updated, 0 unchanged"),
        "{imported}"
    );
    let reexported = ok(&target.url, &["issue", "export", "--format", "csv"]).await;
    assert_eq!(portable_csv(&reexported), portable_csv(&exported));
    assert_eq!(
        portable(&json(&target.url, &["issue", "export"]).await),
        portable(&json(&source.url, &["issue", "export"]).await)
    );

    // Again: nothing changes, not even the times. --format csv reads a file named otherwise.
    let renamed = write("export.txt", &exported);
    let again = json(
        &target.url,
        &["issue", "import", "--format", "csv", &renamed, "-o", "json"],
    )
    .await;
    assert_eq!(again["opened"], json!([]));
    assert_eq!(again["updated"], json!([]));
    assert_eq!(again["unchanged"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        ok(&target.url, &["issue", "export", "--format", "csv"]).await,
        reexported
    );
    // Read as JSON (its name says nothing else), the CSV is refused as not JSON.
    let refused = tollgate(&target.url, &["issue", "import", &renamed]).await;
    assert!(!refused.status.success());
    assert!(
        printed(&refused).contains("is not JSON"),
        "{}",
        printed(&refused)
    );

    // Bad lines: each named with its line and field, nothing stored (not even line 2's good
    // change of owner).
    let mut lines: Vec<String> = exported.split("\r\n").map(str::to_owned).collect();
    lines[1] = lines[1].replace(",alice,", ",dave,");
    lines[2] = lines[2].replace(",wont-fix,", ",resolved,");
    lines[3] = lines[3].replacen(",events,", ",events,extra,", 1);
    let file = write("bad.csv", &lines.join("\r\n"));
    let refused = tollgate(&target.url, &["issue", "import", &file]).await;
    assert_eq!(refused.status.code(), Some(2), "{}", printed(&refused));
    let message = printed(&refused);
    assert!(message.contains("line 3, state"), "{message}");
    assert!(
        message.contains("line 4: has 17 cells but the header has 16"),
        "{message}"
    );
    assert!(!message.contains("line 2"), "{message}");
    let file = write("worse.csv", "kind,text,state,colour\nk,\"t,open,red\n");
    let refused = tollgate(&target.url, &["issue", "import", &file]).await;
    let message = printed(&refused);
    assert!(message.contains("line 1, 'colour'"), "{message}");
    assert!(
        message.contains("line 2: has a quoted cell that is never closed"),
        "{message}"
    );
    assert_eq!(
        ok(&target.url, &["issue", "export", "--format", "csv"]).await,
        reexported
    );
}
