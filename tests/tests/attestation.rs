//! Attestations end to end: a passed qualification on simulated agents, its decision written by
//! `tollgate report --attestation`, checked by `tollgate report verify` and by an independent
//! DSSE implementation (`scripts/verify-attestation.py`, securesystemslib from PyPI), and an
//! edited envelope rejected by both.
//!
//! Without Python or securesystemslib the independent check says it was skipped and why,
//! unless `TOLLGATE_REQUIRE_ATTESTATION_CHECK=1` (CI sets it), when it fails.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::path::{Path, PathBuf};
use std::process::Output;
use tollgate_proto::v1;
use tollgate_tests::process::{public_key, text, tollgate};
use tollgate_tests::{Backend, Controller, ControllerOptions, gate_yaml, lab_agents, plan_yaml};

/// The driver artifact's digest in the test release.
const DRIVER_SHA256: &str = "5f2b9c1e0d8a7f6e5d4c3b2a19081726354453627180918a7b6c5d4e3f2a1b0c";

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Runs the independent verifier on `envelope`; `None` when it cannot run here (no Python, or
/// no securesystemslib), after saying so, unless the check is required.
async fn independent_check(envelope: &Path, public_key: &str) -> Option<Output> {
    let required = std::env::var("TOLLGATE_REQUIRE_ATTESTATION_CHECK").is_ok_and(|v| v == "1");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/verify-attestation.py");
    let python = std::env::var("TOLLGATE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let skip = |why: String| {
        assert!(
            !required,
            "TOLLGATE_REQUIRE_ATTESTATION_CHECK=1 but the independent check cannot run: {why}"
        );
        eprintln!("SKIPPED: the independent attestation check did not run: {why}");
        None
    };
    let output = match tokio::process::Command::new(&python)
        .arg(&script)
        .arg(envelope)
        .arg(public_key)
        .output()
        .await
    {
        Ok(output) => output,
        Err(error) => {
            return skip(format!(
                "cannot run {python} ({error}); install Python 3 and \
                 `pip install 'securesystemslib[crypto]'`, or set TOLLGATE_PYTHON"
            ));
        }
    };
    if output.status.code() == Some(3) {
        return skip(text(&output.stderr).trim().to_owned());
    }
    Some(output)
}

/// The envelope with its statement rewritten by `edit`, signature kept.
fn with_payload(envelope: &serde_json::Value, edit: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut envelope = envelope.clone();
    let mut payload = BASE64
        .decode(envelope["payload"].as_str().expect("a payload"))
        .expect("base64 payload");
    edit(&mut payload);
    envelope["payload"] = BASE64.encode(payload).into();
    envelope.to_string()
}

async fn a_passed_decision_attests_and_an_edited_attestation_does_not_verify(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let _agents = lab_agents(&controller.url, 2, &[&[], &[]]);
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(2).await;
    clients
        .releases
        .create_release(v1::CreateReleaseRequest {
            name: "r550".into(),
            components: vec![
                v1::Component {
                    name: "driver".into(),
                    version: "550.54.15".into(),
                    artifact_uri: "https://artifacts.example/NVIDIA-Linux-x86_64-550.54.15.run"
                        .into(),
                    sha256: DRIVER_SHA256.into(),
                },
                v1::Component {
                    name: "vbios".into(),
                    version: "96.00.89.00.01".into(),
                    ..Default::default()
                },
            ],
            description: String::new(),
        })
        .await
        .expect("create release");
    clients.apply_plan(&plan_yaml(0.2)).await;
    clients.apply_gate(&gate_yaml(2)).await;
    let run = clients.start_run("r550", "gpu-qual").await;
    clients.wait_run_done(&run.id).await;
    let decision = clients.evaluate("r550").await;
    assert_eq!(decision.verdict, "passed", "{decision:#?}");

    let public_key = public_key(&controller.url).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r550.intoto.jsonl");
    let output = tollgate(
        &controller.url,
        &[
            "report",
            "--release",
            "r550",
            "--attestation",
            "-o",
            path_str(&path),
        ],
    )
    .await;
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(
        stdout.contains(&format!("decision digest: {}", decision.digest))
            && stdout.contains("verification result: PASSED"),
        "{stdout}"
    );

    // What the statement says, read without Tollgate's types.
    let line = std::fs::read_to_string(&path).expect("read the attestation");
    assert_eq!(line.matches('\n').count(), 1, "one envelope on one line");
    let envelope: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(envelope["payloadType"], "application/vnd.in-toto+json");
    let statement: serde_json::Value = serde_json::from_slice(
        &BASE64
            .decode(envelope["payload"].as_str().expect("a payload"))
            .expect("base64"),
    )
    .expect("a JSON statement");
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(
        statement["predicateType"],
        "https://slsa.dev/verification_summary/v1"
    );
    assert_eq!(statement["subject"][0]["name"], "driver");
    assert_eq!(statement["subject"][0]["digest"]["sha256"], DRIVER_SHA256);
    assert_eq!(statement["subject"][1]["name"], "vbios=96.00.89.00.01");
    let predicate = &statement["predicate"];
    assert_eq!(predicate["verificationResult"], "PASSED");
    assert_eq!(predicate["resourceUri"], "urn:tollgate:release:r550");
    assert_eq!(predicate["policy"]["uri"], "urn:tollgate:gate:lab-qual");
    assert_eq!(
        predicate["policy"]["digest"]["sha256"],
        decision.policy_version.as_str()
    );
    assert_eq!(
        predicate["inputAttestations"][0]["digest"]["sha256"],
        decision.digest.as_str()
    );

    let verify = |path: PathBuf, pinned: bool| {
        let url = controller.url.clone();
        let public_key = public_key.clone();
        async move {
            let mut args = vec!["report", "verify", path_str(&path)];
            if pinned {
                args.extend(["--public-key", public_key.as_str()]);
            }
            tollgate(&url, &args).await
        }
    };
    let output = verify(path.clone(), true).await;
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert!(
        stdout.starts_with("valid attestation: signed by ")
            && stdout.contains("release r550 at lab-qual")
            && stdout.contains(&format!("decision {} (passed)", decision.digest))
            && stdout.contains("verification result PASSED"),
        "{stdout}"
    );
    // The envelope does not carry its key: verifying it needs the pinned one.
    let output = verify(path.clone(), false).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("pass --public-key or --key-file"),
        "{}",
        text(&output.stderr)
    );

    let forged_result = with_payload(&envelope, |payload| {
        let edited = String::from_utf8(payload.clone())
            .expect("UTF-8")
            .replace("\"PASSED\"", "\"FAILED\"");
        *payload = edited.into_bytes();
    });
    let changed_byte = with_payload(&envelope, |payload| {
        // A digit of the driver's digest: still valid JSON, another artifact.
        let at = String::from_utf8_lossy(payload)
            .find(DRIVER_SHA256)
            .expect("the driver digest in the statement");
        payload[at] = b'6';
    });
    let mut changed_signature = envelope.clone();
    let mut sig = BASE64
        .decode(envelope["signatures"][0]["sig"].as_str().expect("a sig"))
        .expect("base64 sig");
    sig[0] ^= 0x01;
    changed_signature["signatures"][0]["sig"] = BASE64.encode(sig).into();
    let edits = [
        ("verificationResult changed", forged_result),
        ("a payload byte changed", changed_byte),
        ("a signature byte changed", changed_signature.to_string()),
    ];
    for (what, edited) in &edits {
        let edited_path = dir.path().join("edited.intoto.jsonl");
        std::fs::write(&edited_path, edited).expect("write edited envelope");
        let output = verify(edited_path, true).await;
        let stdout = text(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{what}: {stdout}");
        assert!(
            stdout.starts_with("invalid: ") && stdout.contains("does not match the payload"),
            "{what}: {stdout}"
        );
    }

    let Some(output) = independent_check(&path, &public_key).await else {
        return;
    };
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "securesystemslib rejects the attestation: {stdout}{}",
        text(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("the verifier's JSON");
    assert_eq!(report["verificationResult"], "PASSED");
    assert_eq!(report["subjects"][0]["sha256"], DRIVER_SHA256);
    for (what, edited) in &edits {
        let edited_path = dir.path().join("edited.intoto.jsonl");
        std::fs::write(&edited_path, edited).expect("write edited envelope");
        let output = independent_check(&edited_path, &public_key)
            .await
            .expect("the check ran above");
        let stdout = text(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(1),
            "securesystemslib accepts an envelope with {what}: {stdout}{}",
            text(&output.stderr)
        );
        assert!(
            stdout.starts_with("invalid: DSSE signature"),
            "{what}: {stdout}"
        );
    }
}

tollgate_tests::on_both_backends!(
    a_passed_decision_attests_and_an_edited_attestation_does_not_verify
);
