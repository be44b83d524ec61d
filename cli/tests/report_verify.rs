//! `tollgate report verify`, offline: report files signed here with the domain's signing
//! functions (the same ones the controller's renderer uses) check as valid; an edited number,
//! whose section is named, content forged inside the signature region, whose first byte is
//! named, or another signer, does not; input that is no signed report at all, or a report of
//! the older signature scheme, exits 2.

use assert_cmd::Command;
use ed25519_dalek::SigningKey;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tollgate_domain::report_signature as signature;

fn tollgate() -> Command {
    let mut command = Command::cargo_bin("tollgate").expect("the tollgate binary is built");
    command.env_remove("TOLLGATE_CONTROLLER");
    command
}

/// `tollgate report verify PATH --public-key KEY`, with `key`'s public half.
fn verify(path: &Path, key: &SigningKey) -> std::process::Output {
    tollgate()
        .args(["report", "verify"])
        .arg(path)
        .args(["--public-key", &public_hex(key)])
        .output()
        .expect("runs")
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn public_hex(key: &SigningKey) -> String {
    hex_of(key.verifying_key().as_bytes())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// What the signature names.
fn subject() -> signature::Subject {
    signature::Subject {
        release: "r550".into(),
        milestone: "lab-qual".into(),
        decision_digest: "d41d8cd98f00b204".into(),
        verdict: "failed".into(),
    }
}

/// Signs a `format` report of `parts` (named sections, in order) followed by the section `end`
/// holding `suffix`.
fn sign(
    key: &SigningKey,
    format: signature::Format,
    parts: &[(&str, &str)],
    suffix: &str,
) -> signature::SignatureBlock {
    let mut sections: Vec<signature::Section> = parts
        .iter()
        .map(|(name, text)| signature::section(*name, text.as_bytes()))
        .collect();
    sections.push(signature::section("end", suffix.as_bytes()));
    signature::sign(key, format, subject(), sections)
}

/// A `format` report as the controller lays it out: the sections `parts`, the signature
/// region, then `suffix` (signed as the section `end`).
fn signed_report(
    key: &SigningKey,
    format: signature::Format,
    parts: &[(&str, &str)],
    suffix: &str,
) -> String {
    let block = sign(key, format, parts, suffix);
    let body: String = parts.iter().map(|(_, text)| *text).collect();
    format!("{body}{}{suffix}", signature::region(format, &block))
}

/// A Markdown report laid out as the controller lays it out: the sections, then the
/// signature region with the signature block.
fn markdown_report(key: &SigningKey) -> String {
    let parts = [
        (
            "summary",
            "# Acceptance report r550\n\n## Nodes\n\n| node | max temp |\n|---|---|\n",
        ),
        ("node lab-1", "| lab-1 | 71.5 °C |\n"),
        ("node lab-3", "| lab-3 | 93.25 °C |\n"),
    ];
    signed_report(key, signature::Format::Markdown, &parts, "\n")
}

/// A JSON report: its sections, then the `signature` field last.
fn json_report(key: &SigningKey) -> String {
    let parts = [
        ("summary", r#"{"schema":"tollgate.report.v1","nodes":["#),
        ("node lab-1", r#"{"name":"lab-1","max_temp_c":71.5}"#),
        ("node lab-3", r#",{"name":"lab-3","max_temp_c":93.25}"#),
        ("footer", "]"),
    ];
    signed_report(key, signature::Format::Json, &parts, "}\n")
}

/// A Markdown report as the older scheme wrote it: no `scheme` in its block, and a region the
/// signature did not cover.
fn old_scheme_markdown_report(key: &SigningKey) -> String {
    let report = markdown_report(key);
    let region_start = report
        .find(signature::REGION_BEGIN)
        .expect("a signature region");
    let block_start = report[region_start..]
        .find(signature::MARKDOWN_SIGNATURE_OPEN)
        .expect("a signature block")
        + region_start
        + signature::MARKDOWN_SIGNATURE_OPEN.len();
    let scheme_field = format!("\"scheme\":\"{}\",", signature::SCHEME);
    assert_eq!(
        &report[block_start + 1..][..scheme_field.len()],
        scheme_field
    );
    format!(
        "{}{}",
        &report[..block_start + 1],
        &report[block_start + 1 + scheme_field.len()..]
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write report");
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_signed_report_verifies_against_the_pinned_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let signer = key(1);
    for (name, report) in [
        ("r550.md", markdown_report(&signer)),
        ("r550.json", json_report(&signer)),
    ] {
        let path = write(dir.path(), name, &report);
        let output = verify(&path, &signer);
        let stdout = text(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{name}: {stdout}{}",
            text(&output.stderr)
        );
        let fingerprint = signature::fingerprint(&signer.verifying_key());
        assert_eq!(
            stdout.trim(),
            format!(
                "valid: signed by {fingerprint}, release r550 at lab-qual, decision d41d8cd98f00b204 (failed)"
            ),
            "{name}"
        );
        assert!(!text(&output.stderr).contains("not pinned"), "{name}");
    }
}

#[test]
fn a_key_file_pins_the_signer_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let signer = key(1);
    let path = write(dir.path(), "r550.md", &markdown_report(&signer));
    let key_file = write(
        dir.path(),
        "controller.pub",
        &format!("{}\nfingerprint ignored\n", public_hex(&signer)),
    );
    tollgate()
        .args(["report", "verify"])
        .arg(&path)
        .arg("--key-file")
        .arg(&key_file)
        .assert()
        .code(0);
}

#[test]
fn without_a_pinned_key_it_checks_the_embedded_key_and_warns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "r550.md", &markdown_report(&key(1)));
    let output = tollgate()
        .args(["report", "verify"])
        .arg(&path)
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(0));
    assert!(text(&output.stdout).starts_with("valid: signed by "));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("not pinned"), "{stderr}");
    assert!(
        stderr.contains("signature is valid for the key embedded in the report; pass --public-key to check it is your controller's key"),
        "{stderr}"
    );
}

#[test]
fn an_edited_number_fails_and_names_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let signer = key(1);
    for (name, report, from, to) in [
        (
            "r550.md",
            markdown_report(&signer),
            "| 93.25 °C |",
            "| 83.25 °C |",
        ),
        (
            "r550.md",
            markdown_report(&signer),
            "| 93.25 °C |",
            "| 8.25 °C |",
        ),
        (
            "r550.json",
            json_report(&signer),
            "\"max_temp_c\":93.25",
            "\"max_temp_c\":83.25",
        ),
    ] {
        let edited = report.replacen(from, to, 1);
        assert_ne!(edited, report);
        let path = write(dir.path(), name, &edited);
        let output = verify(&path, &signer);
        assert_eq!(output.status.code(), Some(1), "{name}");
        let stdout = text(&output.stdout);
        assert!(stdout.starts_with("invalid: "), "{name}: {stdout}");
        assert!(
            stdout.contains("does not match its signature: changed section `node lab-3`"),
            "{name}: {stdout}"
        );
        assert!(!stdout.contains("lab-1"), "{name}: {stdout}");
    }
}

#[test]
fn content_forged_inside_the_signature_region_fails_and_says_where() {
    let dir = tempfile::tempdir().expect("tempdir");
    let signer = key(1);
    let report = markdown_report(&signer);
    let at = report
        .find(signature::REGION_BEGIN)
        .expect("a signature region")
        + signature::REGION_BEGIN.len();
    let forged = format!(
        "{}<h1>FORGED: PASSED</h1>\n{}",
        &report[..at],
        &report[at..]
    );
    let path = write(dir.path(), "r550.md", &forged);
    let output = verify(&path, &signer);
    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    let line = 1 + report[..at].matches('\n').count();
    assert!(
        stdout.contains(&format!(
            "the signature region was changed at byte {at} (line {line}, column 34): it has `<h1>FORGED: PASSED</h1>"
        )),
        "{stdout}"
    );
}

#[test]
fn a_report_of_the_older_scheme_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let signer = key(1);
    let path = write(dir.path(), "r550.md", &old_scheme_markdown_report(&signer));
    let output = verify(&path, &signer);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("signed with the scheme tollgate.report.signature.v2")
            && stderr.contains("re-issue the report"),
        "{stderr}"
    );
}

#[test]
fn another_signer_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "r550.md", &markdown_report(&key(2)));
    let output = verify(&path, &key(1));
    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("not by the expected key"), "{stdout}");
}

#[test]
fn json_output_says_whether_the_signer_is_pinned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "r550.json", &json_report(&key(1)));
    let output = tollgate()
        .args(["report", "verify"])
        .arg(&path)
        .args(["-o", "json"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(0));
    let answer: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(answer["valid"], true);
    assert_eq!(answer["pinned"], false);
    assert_eq!(answer["verdict"], "failed");
}

#[test]
fn unusable_input_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unsigned = write(dir.path(), "notes.md", "# Just notes\n");
    let output = tollgate()
        .args(["report", "verify"])
        .arg(&unsigned)
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("no signature region"));

    let output = tollgate()
        .args(["report", "verify"])
        .arg(dir.path().join("missing.html"))
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("cannot read report"));

    let signed = write(dir.path(), "r550.md", &markdown_report(&key(1)));
    let output = tollgate()
        .args(["report", "verify"])
        .arg(&signed)
        .args(["--public-key", "not-hex"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
}

/// The key list of a deployment whose key 1 signed until a rotation to key 2, as `tollgate
/// report public-key --all` prints it.
fn key_list() -> String {
    let line = |seed: u8, active_from: &str, retired_at: &str| {
        let signer = key(seed);
        format!(
            "{}  {}  {active_from}  {retired_at}\n",
            public_hex(&signer),
            signature::fingerprint(&signer.verifying_key())
        )
    };
    format!(
        "# public key (hex)  fingerprint  active from  retired at\n{}{}",
        line(1, "2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z"),
        line(2, "2026-06-01T00:00:00Z", "current")
    )
}

/// `tollgate report verify PATH --public-keys-from KEYS [-o json]`.
fn verify_listed(path: &Path, keys: &Path, json: bool) -> std::process::Output {
    let mut command = tollgate();
    command
        .args(["report", "verify"])
        .arg(path)
        .arg("--public-keys-from")
        .arg(keys);
    if json {
        command.args(["-o", "json"]);
    }
    command.output().expect("runs")
}

#[test]
fn a_report_of_any_of_the_deployment_s_keys_verifies_and_says_which() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = write(dir.path(), "keys.txt", &key_list());
    for (seed, period) in [
        (
            1,
            "the deployment's key from 2026-01-01T00:00:00Z until 2026-06-01T00:00:00Z (retired)",
        ),
        (2, "the deployment's current key since 2026-06-01T00:00:00Z"),
    ] {
        let path = write(dir.path(), "r550.md", &markdown_report(&key(seed)));
        let output = verify_listed(&path, &keys, false);
        let stdout = text(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{stdout}{}",
            text(&output.stderr)
        );
        let fingerprint = signature::fingerprint(&key(seed).verifying_key());
        assert_eq!(
            stdout,
            format!(
                "valid: signed by {fingerprint}, release r550 at lab-qual, decision d41d8cd98f00b204 (failed)\n\
                 signing key {fingerprint}: {period}\n"
            )
        );
        assert!(!text(&output.stderr).contains("not pinned"));
    }
    let path = write(dir.path(), "r550.json", &json_report(&key(1)));
    let output = verify_listed(&path, &keys, true);
    assert_eq!(output.status.code(), Some(0));
    let answer: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(answer["valid"], true);
    assert_eq!(answer["pinned"], true);
    assert_eq!(answer["key"]["public_key"], public_hex(&key(1)));
    assert_eq!(answer["key"]["retired_at"], "2026-06-01T00:00:00+00:00");
    assert_eq!(answer["key"]["current"], false);
}

#[test]
fn a_report_of_a_key_the_deployment_never_had_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = write(dir.path(), "keys.txt", &key_list());
    let path = write(dir.path(), "r550.md", &markdown_report(&key(3)));
    let output = verify_listed(&path, &keys, false);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with("invalid: ")
            && stdout.contains(&format!("signed by key {}", public_hex(&key(3))))
            && stdout.contains("which is not one of the 2 keys in")
            && stdout.contains("the deployment never signed reports with it"),
        "{stdout}"
    );
    // A listed key does not make an edited report valid.
    let edited = markdown_report(&key(1)).replace("93.25", "83.25");
    let path = write(dir.path(), "edited.md", &edited);
    let output = verify_listed(&path, &keys, false);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("changed section `node lab-3`"), "{stdout}");
}

#[test]
fn a_changed_or_unreadable_key_list_is_unusable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "r550.md", &markdown_report(&key(1)));
    let fingerprint = signature::fingerprint(&key(1).verifying_key());
    let changed = write(
        dir.path(),
        "keys.txt",
        &key_list().replacen(&fingerprint, "0123456789abcdef", 1),
    );
    let output = verify_listed(&path, &changed, false);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("line 2: fingerprint '0123456789abcdef' is not the key's"),
        "{stderr}"
    );
    let output = verify_listed(&path, &dir.path().join("missing.txt"), false);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("cannot read key list"));
    tollgate()
        .args(["report", "verify"])
        .arg(&path)
        .arg("--public-keys-from")
        .arg(&changed)
        .args(["--public-key", &public_hex(&key(1))])
        .assert()
        .code(2);
}

/// An attestation of a waiting decision on release r550, signed by `signer`.
fn attestation(signer: &SigningKey) -> String {
    use tollgate_domain::attestation;
    let decision = tollgate_domain::gate::Decision {
        release: "r550".into(),
        milestone: "lab-qual".into(),
        verdict: tollgate_domain::gate::Verdict::Waiting,
        summary: "waiting for 2 nodes".into(),
        rules: Vec::new(),
        digest: "d1".into(),
        policy_version: "ab".repeat(32),
        evaluated_at: chrono::DateTime::UNIX_EPOCH,
    };
    let verifier = attestation::VerifierInfo {
        public_key: signer.verifying_key(),
        version: "0.1.0".into(),
    };
    let release = tollgate_domain::test_support::release();
    attestation::encode(&attestation::sign(
        &attestation::statement(&release, &decision, &verifier),
        signer,
    ))
}

#[test]
fn an_attestation_verifies_with_the_listed_key_that_signed_it_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = write(dir.path(), "keys.txt", &key_list());
    let path = write(dir.path(), "r550.intoto.jsonl", &attestation(&key(1)));
    let output = verify_listed(&path, &keys, false);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    let fingerprint = signature::fingerprint(&key(1).verifying_key());
    assert!(
        stdout.starts_with(&format!("valid attestation: signed by {fingerprint}"))
            && stdout.contains(&format!(
                "signing key {fingerprint}: the deployment's key from 2026-01-01T00:00:00Z until"
            )),
        "{stdout}"
    );
    let path = write(dir.path(), "other.intoto.jsonl", &attestation(&key(3)));
    let output = verify_listed(&path, &keys, false);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("it is signed by none of the 2 keys in"),
        "{stdout}"
    );
}
