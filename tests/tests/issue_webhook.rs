//! End to end: the issue webhook. A failing gate opens an issue and the receiver (a plain
//! HTTP/1.1 server in the test) gets an `opened` event with the issue's signature, even though
//! it answered 500 to the first two tries; changes made while the receiver refuses everything
//! stay queued across a controller restart and arrive after it, each issue's events in the
//! order they were made. On SQLite and on PostgreSQL (the latter when
//! `TOLLGATE_TEST_DATABASE_URL` is set).

use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tollgate_controller::store::Store;
use tollgate_proto::v1;
use tollgate_tests::{Backend, Controller, ControllerOptions, qualify_with_one_hot_node};

tollgate_tests::on_both_backends!(issue_changes_reach_the_webhook_in_order_after_retries);

/// What the test's receiver saw and how it answers.
#[derive(Default)]
struct Receiver {
    /// Every request body with the status it was answered, in arrival order.
    seen: Vec<(Value, u16)>,
    /// How many of the next requests get a 500.
    fail_next: usize,
    /// Answer every request with 500.
    refuse_all: bool,
}

impl Receiver {
    /// The bodies answered 200, each event id once (its first acceptance), in arrival order.
    fn accepted(&self) -> Vec<Value> {
        let mut ids = Vec::new();
        let mut out = Vec::new();
        for (body, status) in &self.seen {
            if *status == 200 && !ids.contains(&body["id"]) {
                ids.push(body["id"].clone());
                out.push(body.clone());
            }
        }
        out
    }
}

/// Serves HTTP/1.1 POSTs on a loopback port, recording them in `receiver`; the URL.
async fn receive(receiver: Arc<Mutex<Receiver>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let addr = listener.local_addr().expect("receiver address");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let receiver = receiver.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let Ok(read) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&chunk[..read]);
                    let text = String::from_utf8_lossy(&request).into_owned();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    assert!(
                        head.starts_with("POST /hooks/tollgate HTTP/1.1\r\n"),
                        "{head}"
                    );
                    let length: usize = head
                        .lines()
                        .find_map(|line| {
                            line.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|n| n.trim().parse().expect("a length"))
                        })
                        .expect("a content length");
                    if body.len() >= length {
                        break body.to_owned();
                    }
                };
                let body: Value = serde_json::from_str(&body).expect("a JSON body");
                let status = {
                    let mut receiver = receiver.lock().expect("not poisoned");
                    let status = if receiver.refuse_all {
                        500
                    } else if receiver.fail_next > 0 {
                        receiver.fail_next -= 1;
                        500
                    } else {
                        200
                    };
                    receiver.seen.push((body, status));
                    status
                };
                let answer = format!(
                    "HTTP/1.1 {status} {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    if status == 200 {
                        "OK"
                    } else {
                        "Internal Server Error"
                    }
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/hooks/tollgate")
}

/// Waits until `done` holds of the receiver's state; panics after a minute.
async fn wait_for(receiver: &Arc<Mutex<Receiver>>, what: &str, done: impl Fn(&Receiver) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        {
            let receiver = receiver.lock().expect("not poisoned");
            if done(&receiver) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the receiver never saw {what}; it saw {:#?}",
                receiver.seen
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The accepted events of issue `id`, as (event id, event name).
fn events_of(receiver: &Receiver, id: i64) -> Vec<(i64, String)> {
    receiver
        .accepted()
        .iter()
        .filter(|body| body["issue"]["id"] == id)
        .map(|body| {
            (
                body["id"].as_i64().expect("an event id"),
                body["event"].as_str().expect("an event name").to_owned(),
            )
        })
        .collect()
}

async fn issue_changes_reach_the_webhook_in_order_after_retries(backend: Backend) {
    let receiver = Arc::new(Mutex::new(Receiver {
        fail_next: 2,
        ..Receiver::default()
    }));
    let url = receive(receiver.clone()).await;
    let mut options = ControllerOptions::new(backend);
    options.issue_webhook = Some(url);
    let Some(mut controller) = Controller::start(options).await else {
        return;
    };
    // lab-3 runs over temperature: r550's gate fails and opens an issue.
    let (agents, mut clients) = qualify_with_one_hot_node(&controller, 1.0).await;
    let is_hot = |body: &Value| {
        body["event"] == "opened"
            && body["issue"]["kind"] == "telemetry"
            && body["issue"]["nodes"] == serde_json::json!(["lab-3"])
    };
    wait_for(&receiver, "the hot issue opened", |r| {
        r.accepted().iter().any(is_hot)
    })
    .await;
    let opened = {
        let receiver = receiver.lock().expect("not poisoned");
        // The first two tries were answered 500 and tried again.
        assert_eq!(receiver.seen[0].1, 500);
        assert_eq!(receiver.seen[1].1, 500);
        let first = receiver.seen[0].0["id"].clone();
        assert!(
            receiver.accepted().iter().any(|body| body["id"] == first),
            "event {first} was never delivered: {:#?}",
            receiver.seen
        );
        receiver
            .accepted()
            .into_iter()
            .find(is_hot)
            .expect("the hot issue's event")
    };
    let hot = opened["issue"]["id"].as_i64().expect("an issue id");
    let signature = opened["issue"]["signature"].as_str().expect("a signature");
    assert_eq!(
        signature,
        format!(
            "telemetry: {}",
            opened["issue"]["text"].as_str().expect("text")
        )
    );
    assert_eq!(opened["issue"]["state"], "open");
    assert_eq!(opened["issue"]["releases"], serde_json::json!(["r550"]));
    chrono::DateTime::parse_from_rfc3339(opened["at"].as_str().expect("at")).expect("RFC 3339");

    // The receiver refuses everything: a title change and a fix release stay queued, across a
    // restart of the controller.
    receiver.lock().expect("not poisoned").refuse_all = true;
    clients
        .issues
        .update_issue(v1::UpdateIssueRequest {
            id: hot,
            title: Some("fan curve too flat".into()),
            ..v1::UpdateIssueRequest::default()
        })
        .await
        .expect("update the issue");
    clients.create_release("r551").await;
    clients
        .issues
        .set_fix_release(v1::SetFixReleaseRequest {
            id: hot,
            release: "r551".into(),
            note: String::new(),
        })
        .await
        .expect("set the fix release");
    wait_for(&receiver, "a refused try of the update", |r| {
        r.seen
            .iter()
            .any(|(body, status)| *status == 500 && body["event"] == "updated")
    })
    .await;
    controller.stop().await;
    let store = Store::connect(&controller.database_url)
        .await
        .expect("open the test's database");
    let queued: Vec<(i64, String)> = store
        .queued_webhooks(100)
        .await
        .expect("queued events")
        .into_iter()
        .filter(|event| event.issue_id == hot)
        .map(|event| (event.issue_id, event.event))
        .collect();
    assert_eq!(
        queued,
        [(hot, "updated".to_owned()), (hot, "state".to_owned())]
    );
    store.close().await;

    receiver.lock().expect("not poisoned").refuse_all = false;
    controller.restart().await;
    wait_for(&receiver, "the fix release after the restart", |r| {
        events_of(r, hot).iter().any(|(_, event)| event == "state")
    })
    .await;
    {
        let receiver = receiver.lock().expect("not poisoned");
        let events = events_of(&receiver, hot);
        let names: Vec<&str> = events.iter().map(|(_, name)| name.as_str()).collect();
        assert_eq!(
            names,
            ["opened", "updated", "state"],
            "{:#?}",
            receiver.seen
        );
        assert!(
            events.windows(2).all(|pair| pair[0].0 < pair[1].0),
            "{events:?}"
        );
        // The issue is as the store has it at delivery.
        let last = receiver
            .accepted()
            .into_iter()
            .rfind(|body| body["issue"]["id"] == hot)
            .expect("the last event");
        assert_eq!(last["issue"]["title"], "fan curve too flat");
        assert_eq!(last["issue"]["state"], "fix-in-release");
        assert_eq!(last["issue"]["fix_release"], "r551");
    }
    controller.stop().await;
    for agent in agents {
        agent.stop().await;
    }
}

/// `--issue-webhook` takes plain http:// URLs only: https:// and a malformed URL stop the
/// controller at startup, saying why.
#[tokio::test]
async fn https_and_malformed_webhook_urls_are_refused_at_startup() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (url, says) in [
        ("https://hooks.lab/tollgate", "https is not supported"),
        ("hooks.lab:8080", "is not an http:// URL"),
        ("http://hooks.lab:99999/", "is not a port"),
    ] {
        let out = tokio::process::Command::new(tollgate_tests::process::workspace_binary(
            "tollgate-controller",
        ))
        .args(["serve", "--listen", "127.0.0.1:0", "--insecure-loopback"])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--issue-webhook", url])
        .output()
        .await
        .expect("run tollgate-controller");
        let stderr = tollgate_tests::process::text(&out.stderr);
        assert!(!out.status.success(), "{url} was accepted: {stderr}");
        assert!(
            stderr.contains("--issue-webhook") && stderr.contains(says),
            "{url}: {stderr}"
        );
    }
}
