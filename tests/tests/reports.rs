//! Signed reports end to end: a qualification on simulated agents, one running over
//! temperature, reported in every format through the `tollgate` binary; each report file
//! verifies offline against the controller's public key, and an edited temperature does not.
//! After a key rotation, reports signed before and after it verify against the deployment's
//! key list.

use std::path::Path;
use tollgate_tests::process::{public_key, rotate_report_key, text, tollgate};
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

/// Renders the Markdown report of r550 at lab-qual into `path` through the `tollgate` binary.
async fn render_markdown(url: &str, path: &Path) {
    let output = tollgate(
        url,
        &[
            "report",
            "--release",
            "r550",
            "--milestone",
            "lab-qual",
            "--format",
            "markdown",
            "-o",
            path.to_str().expect("UTF-8 path"),
        ],
    )
    .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
}

/// `tollgate report verify PATH --public-keys-from KEYS`.
async fn verify_listed(url: &str, path: &Path, keys: &Path) -> std::process::Output {
    let path = path.to_str().expect("UTF-8 path");
    let keys = keys.to_str().expect("UTF-8 path");
    tollgate(url, &["report", "verify", path, "--public-keys-from", keys]).await
}

/// One signing identity over time: a report signed, the key rotated while the controller
/// runs (it reads the new key from its data directory at the next report), another report
/// signed. Both verify against the deployment's key list (`report public-key --all`), each
/// naming its key and that key's period; the old one also with the retired key alone, not
/// with the new one. An edited report does not verify, nor does one whose key is not listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_signed_before_and_after_a_key_rotation_verify_with_the_deployment_s_keys() {
    let Some(controller) = Controller::start(ControllerOptions::new(Backend::Sqlite)).await else {
        return;
    };
    let (_agents, _clients) = qualify_with_one_hot_node(&controller, 1.0).await;
    let url = &controller.url;
    let dir = tempfile::tempdir().expect("tempdir");
    let (before, after) = (dir.path().join("before.md"), dir.path().join("after.md"));
    let old_key = public_key(url).await;
    render_markdown(url, &before).await;

    let rotated = rotate_report_key(&controller.data_dir, &controller.database_url).await;
    let stdout = text(&rotated.stdout);
    assert!(
        rotated.status.success(),
        "{stdout}{}",
        text(&rotated.stderr)
    );
    assert!(
        stdout.starts_with(&format!("retired report signing key {old_key} at "))
            && stdout.contains("Copy report-signing.key and report-signing.pub"),
        "{stdout}"
    );
    let new_key = public_key(url).await;
    assert_ne!(new_key, old_key);
    render_markdown(url, &after).await;

    let listed = tollgate(url, &["report", "public-key", "--all"]).await;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let list = text(&listed.stdout);
    let keys: Vec<&str> = list.lines().filter(|line| !line.starts_with('#')).collect();
    assert_eq!(keys.len(), 2, "{list}");
    assert!(
        keys[0].starts_with(&old_key) && !keys[0].ends_with("current"),
        "{list}"
    );
    assert!(
        keys[1].starts_with(&new_key) && keys[1].ends_with("current"),
        "{list}"
    );
    let keys_path = dir.path().join("keys.txt");
    std::fs::write(&keys_path, &list).expect("write the key list");

    let fingerprint = |hex: &str| {
        let key = tollgate_domain::report_signature::parse_public_key(hex).expect("a key");
        tollgate_domain::report_signature::fingerprint(&key)
    };
    for (path, key, period) in [
        (&before, &old_key, "(retired)"),
        (&after, &new_key, "the deployment's current key since "),
    ] {
        let output = verify_listed(url, path, &keys_path).await;
        let stdout = text(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{stdout}{}",
            text(&output.stderr)
        );
        assert!(
            stdout.starts_with(&format!("valid: signed by {}", fingerprint(key)))
                && stdout.contains(&format!("signing key {}: ", fingerprint(key)))
                && stdout.contains(period),
            "{stdout}"
        );
    }
    // The retired key alone verifies the old report; the current key does not.
    assert_eq!(verify(url, &before, &old_key).await.status.code(), Some(0));
    let output = verify(url, &before, &new_key).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));

    // An edited report is refused whichever key signed it.
    let markdown = std::fs::read_to_string(&after).expect("read");
    let edited = dir.path().join("edited.md");
    std::fs::write(&edited, markdown.replacen("r550", "r551", 1)).expect("write");
    let output = verify_listed(url, &edited, &keys_path).await;
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("invalid: "), "{stdout}");

    // A list without the old key: the old report's key is not one of the deployment's.
    let newest_only: String = list
        .lines()
        .filter(|line| !line.starts_with(&old_key))
        .map(|line| format!("{line}\n"))
        .collect();
    let newest_path = dir.path().join("newest.txt");
    std::fs::write(&newest_path, newest_only).expect("write");
    let output = verify_listed(url, &before, &newest_path).await;
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("signed by key {old_key}"))
            && stdout.contains("which is not one of the 1 keys in")
            && stdout.contains("the deployment never signed reports with it"),
        "{stdout}"
    );
}

/// Every object of a JSON report with a GPU's telemetry: its GPU index and field names.
fn telemetry_of(value: &serde_json::Value, found: &mut Vec<(u64, Vec<String>)>) {
    match value {
        serde_json::Value::Object(object) => {
            if let (Some(gpu), Some(serde_json::Value::Array(fields))) =
                (object.get("gpu_index"), object.get("fields"))
            {
                let names = fields
                    .iter()
                    .filter_map(|f| f.get("field").and_then(|n| n.as_str()))
                    .map(str::to_owned)
                    .collect();
                found.push((gpu.as_u64().expect("a GPU index"), names));
            }
            object.values().for_each(|v| telemetry_of(v, found));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| telemetry_of(v, found)),
        _ => {}
    }
}

/// Whether a real Chromium and `pdftotext` are here; when they are not, the PDF test fails
/// if `TOLLGATE_REQUIRE_CHROMIUM` is set (CI installs both) and is skipped, loudly, if not.
fn can_print() -> bool {
    let have = |program: &str, arg: &str| {
        std::process::Command::new(program)
            .arg(arg)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .any(|name| have(name, "--version"));
    let pdftotext = have("pdftotext", "-v");
    if chromium && pdftotext {
        return true;
    }
    let missing = format!("chromium found: {chromium}, pdftotext found: {pdftotext}");
    assert!(
        std::env::var_os("TOLLGATE_REQUIRE_CHROMIUM").is_none(),
        "TOLLGATE_REQUIRE_CHROMIUM is set but {missing}; install the chromium and poppler-utils packages"
    );
    eprintln!(
        "SKIPPED: printing a PDF needs chromium and pdftotext ({missing}); `apt-get install \
         chromium poppler-utils`, or set TOLLGATE_REQUIRE_CHROMIUM=1 to fail instead"
    );
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_printed_report_keeps_every_telemetry_field_of_every_gpu() {
    if !can_print() {
        return;
    }
    let Some(controller) = Controller::start(ControllerOptions::new(Backend::Sqlite)).await else {
        return;
    };
    let (_agents, _clients) = qualify_with_one_hot_node(&controller, 1.0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_str().expect("UTF-8").to_owned();
    let render = |format: &'static str, file: String| {
        let url = controller.url.clone();
        async move {
            let args = [
                "report",
                "--release",
                "r550",
                "--milestone",
                "lab-qual",
                "--format",
                format,
                "-o",
                &file,
            ];
            let output = tollgate(&url, &args).await;
            assert!(
                output.status.success(),
                "{format}: {}",
                text(&output.stderr)
            );
            text(&output.stdout)
        }
    };
    let stdout = render("pdf", path("r550.pdf")).await;
    assert!(
        stdout.contains("r550.pdf") && stdout.contains("r550.html"),
        "{stdout}"
    );
    // The HTML it was printed from is kept beside it, and verifies.
    let public_key = public_key(&controller.url).await;
    let verified = verify(&controller.url, &dir.path().join("r550.html"), &public_key).await;
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}",
        text(&verified.stdout)
    );
    let pdf = std::fs::read(dir.path().join("r550.pdf")).expect("the PDF");
    assert!(pdf.starts_with(b"%PDF-"));
    assert!(!dir.path().join("r550.pdf.part").exists());

    render("json", path("r550.json")).await;
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("r550.json")).expect("JSON"))
            .expect("a JSON report");
    let mut gpus = Vec::new();
    telemetry_of(&json, &mut gpus);
    assert!(gpus.len() >= 3, "three nodes' GPUs: {gpus:?}");
    assert!(
        gpus.iter().all(|(_, fields)| fields.len() >= 10),
        "{gpus:?}"
    );

    let printed = std::process::Command::new("pdftotext")
        .args(["-layout", &path("r550.pdf"), "-"])
        .output()
        .expect("pdftotext");
    assert!(printed.status.success());
    let printed = text(&printed.stdout);
    // One table per GPU, each under a caption `GPU N GPU-UUID`, in the JSON's order.
    let captions: Vec<usize> = printed
        .match_indices("GPU ")
        .map(|(at, _)| at)
        .filter(|&at| {
            let line_start = printed[..at].rfind('\n').map_or(0, |i| i + 1);
            printed[line_start..at].trim().is_empty()
                && printed[at..]
                    .lines()
                    .next()
                    .is_some_and(|l| l.contains(" GPU-"))
        })
        .collect();
    assert_eq!(captions.len(), gpus.len(), "{printed}");
    for (idx, ((gpu, fields), &at)) in gpus.iter().zip(&captions).enumerate() {
        let end = captions.get(idx + 1).copied().unwrap_or(printed.len());
        let table = &printed[at..end];
        assert!(table.starts_with(&format!("GPU {gpu} GPU-")), "{table}");
        for field in fields {
            // The field's row holds all five statistics: no column was cut at the margin.
            let row = table
                .lines()
                .find(|line| line.split_whitespace().next() == Some(field.as_str()))
                .unwrap_or_else(|| panic!("GPU {gpu} has no row for {field}:\n{table}"));
            let numbers = row
                .split_whitespace()
                .filter(|w| w.parse::<f64>().is_ok() || *w == "n/a")
                .count();
            assert!(numbers >= 5, "GPU {gpu} {field}: {row}");
        }
    }
}
