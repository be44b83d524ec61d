//! Signed reports end to end: a qualification on simulated agents, one running over
//! temperature, reported in every format through the `tollgate` binary; each report file
//! verifies offline against the controller's public key, and an edited temperature does not.

use std::path::Path;
use tollgate_tests::process::{public_key, text, tollgate};
use tollgate_tests::{Backend, Controller, ControllerOptions, qualify_with_one_hot_node};

/// Changes the first digit of the first decimal number after `gpu_temp_c` in the visible part
/// of an HTML report (before its signature region).
fn edit_visible_temperature(html: &str) -> String {
    let visible_end = html
        .find(tollgate_domain::report_signature::REGION_BEGIN)
        .expect("a signature region");
    let label = html[..visible_end]
        .find("gpu_temp_c")
        .expect("a temperature");
    let bytes = html.as_bytes();
    let at = (label..visible_end - 2)
        .find(|&idx| {
            bytes[idx].is_ascii_digit()
                && bytes[idx + 1].is_ascii_digit()
                && bytes[idx + 2] == b'.'
                && !bytes[idx - 1].is_ascii_alphanumeric()
        })
        .expect("a decimal number after the temperature label");
    let digit = if bytes[at] == b'1' { "2" } else { "1" };
    format!("{}{digit}{}", &html[..at], &html[at + 1..])
}

async fn verify(url: &str, path: &Path, public_key: &str) -> std::process::Output {
    let path = path.to_str().expect("UTF-8 path");
    tollgate(url, &["report", "verify", path, "--public-key", public_key]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_report_format_verifies_and_an_edited_temperature_does_not() {
    let Some(controller) = Controller::start(ControllerOptions::new(Backend::Sqlite)).await else {
        return;
    };
    let (_agents, mut clients) = qualify_with_one_hot_node(&controller, 1.0).await;
    let decision = clients.evaluate("r550").await;

    let public_key = public_key(&controller.url).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut html_path = None;
    for (format, extension) in [
        ("html", "html"),
        ("markdown", "md"),
        ("json", "json"),
        ("junit", "xml"),
    ] {
        let path = dir.path().join(format!("r550.{extension}"));
        let output = tollgate(
            &controller.url,
            &[
                "report",
                "--release",
                "r550",
                "--milestone",
                "lab-qual",
                "--format",
                format,
                "-o",
                path.to_str().expect("UTF-8 path"),
            ],
        )
        .await;
        assert!(
            output.status.success(),
            "{format}: {}",
            text(&output.stderr)
        );
        let output = verify(&controller.url, &path, &public_key).await;
        let stdout = text(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{format}: {stdout}{}",
            text(&output.stderr)
        );
        assert!(
            stdout.starts_with("valid: signed by ")
                && stdout.contains("release r550 at lab-qual")
                && stdout.contains(&decision.digest)
                && stdout.contains("(failed)"),
            "{format}: {stdout}"
        );
        if format == "html" {
            // The summary comes first; each node's detail is collapsed.
            let html = std::fs::read_to_string(&path).expect("read HTML");
            let summary = html.find("<section id=\"summary\">").expect("a summary");
            let first_node = html.find("<details class=\"node\"").expect("node detail");
            assert!(summary < first_node);
            assert_eq!(html.matches("<details class=\"node\"").count(), 3);
            assert!(!html.contains("<details class=\"node\" open"));
            html_path = Some(path);
        }
    }

    let html_path = html_path.expect("the HTML report");
    let html = std::fs::read_to_string(&html_path).expect("read HTML");
    let edited = edit_visible_temperature(&html);
    assert_ne!(edited, html);
    std::fs::write(&html_path, edited).expect("write edited HTML");
    let output = verify(&controller.url, &html_path, &public_key).await;
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("invalid: "), "{stdout}");
    assert!(
        stdout.contains("does not match its signature: changed section `"),
        "{stdout}"
    );
}
