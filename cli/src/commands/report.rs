//! `tollgate report`: render a release's signed customer acceptance report, or with
//! `--attestation` its decision as a signed in-toto attestation, and write it to a file;
//! `report verify` checks either offline; `report public-key` prints the controller's signing
//! key (with `--all`, every key the deployment has signed with, which `verify
//! --public-keys-from` reads back: a report signed before a key rotation still verifies).

use super::report_keys;
use crate::Reported;
use crate::args::{ReportArgs, ReportCommand, ReportFormat, VerifyArgs};
use crate::client::{Controller, RpcError, answer};
use crate::output::{Format, print_json};
use anyhow::Context as _;
use serde_json::json;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use tollgate_domain::attestation::{self, AttestationError, VerifiedAttestation};
use tollgate_domain::report_key::{self, ReportKey};
use tollgate_domain::report_signature::{self as signature, Verified, VerifyError};
use tollgate_proto::v1 as pb;
use tollgate_wire::FromProto as _;

/// Exit code of a report that does not verify.
const EXIT_INVALID: u8 = 1;
/// Exit code of input that cannot be checked at all.
const EXIT_UNUSABLE: u8 = 2;

/// What `verify` prints when no key is pinned.
const UNPINNED: &str = "signature is valid for the key embedded in the report; pass --public-key to check it is your controller's key";

/// Runs `report` or one of its subcommands; only the ones that need a controller connect.
pub async fn dispatch(target: &crate::client::Target, args: ReportArgs) -> anyhow::Result<()> {
    match args.command {
        Some(ReportCommand::Verify(verify_args)) => verify(&verify_args),
        Some(ReportCommand::PublicKey { all, output }) => {
            public_key(&Controller::connect(target).await?, all, output.output).await
        }
        None => {
            // Without a Chromium a PDF cannot be printed: say so before asking the controller.
            if args.format == ReportFormat::Pdf && !args.attestation {
                super::pdf::find_chromium()?;
            }
            run(&Controller::connect(target).await?, args).await
        }
    }
}

/// Runs `report`: streams the report into a file, prints the path and the decision digest.
pub async fn run(controller: &Controller, args: ReportArgs) -> anyhow::Result<()> {
    let ReportArgs {
        command: _,
        release,
        milestone,
        format,
        file,
        customer,
        attestation,
        json: as_json,
    } = args;
    let release = release.context("--release is required to render a report")?;
    if attestation {
        return write_attestation(controller, &release, milestone.as_deref(), file, as_json).await;
    }
    if format == ReportFormat::Pdf {
        let pdf = file.unwrap_or_else(|| default_path(&release, milestone.as_deref(), "pdf"));
        let chromium = super::pdf::find_chromium()?;
        let html = render_to_file(
            controller,
            &release,
            milestone.as_deref(),
            format,
            customer.as_deref(),
            Some(pdf.with_extension("html")),
        )
        .await?;
        let n_bytes = super::pdf::print(&chromium, &html.path, &pdf).await?;
        return if as_json {
            print_json(&json!({
                "path": pdf.display().to_string(),
                "media_type": "application/pdf",
                "bytes": n_bytes,
                "decision_digest": html.decision_digest,
                "signed_html": html.path.display().to_string(),
            }))
        } else {
            println!("wrote {}", pdf.display());
            println!(
                "printed from the signed {}; check that one with `tollgate report verify`",
                html.path.display()
            );
            println!("decision digest: {}", html.decision_digest);
            Ok(())
        };
    }
    let written = render_to_file(
        controller,
        &release,
        milestone.as_deref(),
        format,
        customer.as_deref(),
        file,
    )
    .await?;
    if as_json {
        print_json(&json!({
            "path": written.path.display().to_string(),
            "media_type": written.media_type,
            "bytes": written.n_bytes,
            "decision_digest": written.decision_digest,
        }))
    } else {
        println!("wrote {}", written.path.display());
        println!("decision digest: {}", written.decision_digest);
        Ok(())
    }
}

/// A report written to a file.
#[derive(Debug)]
pub struct WrittenReport {
    /// Where.
    pub path: PathBuf,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub n_bytes: u64,
    /// The digest of the decision it shows.
    pub decision_digest: String,
}

/// Streams a report from the controller into `file` (by default
/// `RELEASE-MILESTONE.EXT` in the current directory), of one customer's nodes when `customer`
/// is `LABEL=VALUE`. The bytes go to `FILE.part` as they arrive, which is renamed to `FILE`
/// once the stream ends, so an interrupted stream never leaves a truncated report behind.
pub async fn render_to_file(
    controller: &Controller,
    release: &str,
    milestone: Option<&str>,
    format: ReportFormat,
    customer: Option<&str>,
    file: Option<PathBuf>,
) -> anyhow::Result<WrittenReport> {
    let mut stream = answer(
        controller
            .reports()
            .stream_report(pb::RenderReportRequest {
                release: release.to_owned(),
                milestone: milestone.unwrap_or_default().to_owned(),
                format: format.as_str().to_owned(),
                customer: customer.unwrap_or_default().to_owned(),
            })
            .await,
    )?;
    let first = stream
        .message()
        .await
        .map_err(RpcError::from)?
        .context("the controller ended the report stream before sending anything")?;
    let path = file.unwrap_or_else(|| default_path(release, milestone, &first.file_extension));
    let mut part = path.clone().into_os_string();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&part)
            .with_context(|| format!("creating report file {}", part.display()))?,
    );
    let mut n_bytes = 0;
    let mut chunk = Some(first.content);
    loop {
        if let Some(content) = chunk.take() {
            out.write_all(&content)
                .with_context(|| format!("writing report {}", part.display()))?;
            n_bytes += content.len() as u64;
        }
        match stream.message().await {
            Ok(Some(next)) => chunk = Some(next.content),
            Ok(None) => break,
            Err(status) => {
                drop(out);
                let _ = std::fs::remove_file(&part);
                return Err(RpcError::from(status).into());
            }
        }
    }
    out.flush()
        .with_context(|| format!("writing report {}", part.display()))?;
    drop(out);
    std::fs::rename(&part, &path)
        .with_context(|| format!("renaming {} to {}", part.display(), path.display()))?;
    Ok(WrittenReport {
        path,
        media_type: first.media_type,
        n_bytes,
        decision_digest: first.decision_digest,
    })
}

/// Runs `report --attestation`: writes the decision's signed attestation to `file` (by default
/// `RELEASE-MILESTONE.intoto.jsonl`), through `FILE.part` like a report.
async fn write_attestation(
    controller: &Controller,
    release: &str,
    milestone: Option<&str>,
    file: Option<PathBuf>,
    as_json: bool,
) -> anyhow::Result<()> {
    let answer = answer(
        controller
            .reports()
            .render_attestation(pb::RenderAttestationRequest {
                release: release.to_owned(),
                milestone: milestone.unwrap_or_default().to_owned(),
            })
            .await,
    )?;
    let path = file.unwrap_or_else(|| default_path(release, milestone, &answer.file_extension));
    let mut part = path.clone().into_os_string();
    part.push(".part");
    let part = PathBuf::from(part);
    std::fs::write(&part, &answer.envelope)
        .with_context(|| format!("writing attestation {}", part.display()))?;
    std::fs::rename(&part, &path)
        .with_context(|| format!("renaming {} to {}", part.display(), path.display()))?;
    if as_json {
        print_json(&json!({
            "path": path.display().to_string(),
            "bytes": answer.envelope.len(),
            "decision_digest": answer.decision_digest,
            "verification_result": answer.verification_result,
        }))
    } else {
        println!("wrote {}", path.display());
        println!("decision digest: {}", answer.decision_digest);
        println!("verification result: {}", answer.verification_result);
        Ok(())
    }
}

/// `RELEASE-MILESTONE.EXT` (or `RELEASE.EXT` without a milestone) in the current directory.
pub fn default_path(release: &str, milestone: Option<&str>, file_extension: &str) -> PathBuf {
    let extension = if file_extension.is_empty() {
        "txt"
    } else {
        file_extension.trim_start_matches('.')
    };
    match milestone {
        Some(milestone) => PathBuf::from(format!("{release}-{milestone}.{extension}")),
        None => PathBuf::from(format!("{release}.{extension}")),
    }
}

/// Runs `report public-key`: the hex key on the first line (so the output can be saved and
/// passed to `verify --key-file`), then its fingerprint; with `all`, the deployment's key list
/// (see `report_keys`).
async fn public_key(controller: &Controller, all: bool, output: Format) -> anyhow::Result<()> {
    let key = answer(
        controller
            .reports()
            .get_public_key(pb::GetPublicKeyRequest {})
            .await,
    )?;
    if all {
        anyhow::ensure!(
            !key.keys.is_empty(),
            "the controller does not list the deployment's keys (it is older than key \
             rotation): upgrade it, or verify with --public-key {}",
            key.public_key
        );
        let keys = key
            .keys
            .into_iter()
            .map(ReportKey::from_proto)
            .collect::<Result<Vec<_>, _>>()
            .context("the controller listed a key that is not valid")?;
        return match output {
            Format::Json => print_json(&report_keys::to_json(&keys)),
            Format::Text => {
                print!("{}", report_keys::to_text(&keys));
                Ok(())
            }
        };
    }
    match output {
        Format::Json => print_json(&json!({
            "algorithm": key.algorithm,
            "public_key": key.public_key,
            "fingerprint": key.fingerprint,
        })),
        Format::Text => {
            println!("{}", key.public_key);
            println!("fingerprint {} ({})", key.fingerprint, key.algorithm);
            Ok(())
        }
    }
}

/// Runs `report verify`: offline, with nothing but the file and, ideally, the pinned key.
fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let expected = match pinned_key(args) {
        Ok(expected) => expected,
        Err(message) => {
            eprintln!("error: {message}");
            return Err(Reported(EXIT_UNUSABLE).into());
        }
    };
    let file = match std::fs::read(&args.file) {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!("error: cannot read report {}: {error}", args.file.display());
            return Err(Reported(EXIT_UNUSABLE).into());
        }
    };
    let Ok(file) = String::from_utf8(file) else {
        eprintln!(
            "error: {} is not a Tollgate report: it is not UTF-8 text",
            args.file.display()
        );
        return Err(Reported(EXIT_UNUSABLE).into());
    };
    let listed = match listed_keys(args) {
        Ok(listed) => listed,
        Err(message) => {
            eprintln!("error: {message}");
            return Err(Reported(EXIT_UNUSABLE).into());
        }
    };
    if attestation::looks_like_envelope(&file) {
        return match &listed {
            Some(keys) => verify_attestation_listed(args, &file, keys),
            None => verify_attestation(args, &file, expected.as_ref()),
        };
    }
    if let Some(keys) = &listed {
        return verify_listed(args, &file, keys);
    }
    let result = signature::verify(&file, expected.as_ref());
    let pinned = expected.is_some();
    match args.output.output {
        Format::Json => print_json(&verify_json(&args.file, &result, pinned))?,
        Format::Text => print_verify_text(&args.file, &result, pinned),
    }
    exit_for(&result)
}

/// The exit of a verification: 0 valid, 1 does not verify, 2 unusable input.
fn exit_for(result: &Result<Verified, VerifyError>) -> anyhow::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(VerifyError::Unsigned(_) | VerifyError::Malformed(_) | VerifyError::Unsupported(_)) => {
            Err(Reported(EXIT_UNUSABLE).into())
        }
        Err(VerifyError::WrongKey { .. } | VerifyError::Mismatch(_)) => {
            Err(Reported(EXIT_INVALID).into())
        }
    }
}

/// The keys given by `--public-keys-from`, if any.
fn listed_keys(args: &VerifyArgs) -> Result<Option<Vec<ReportKey>>, String> {
    let Some(path) = &args.public_keys_from else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read key list {}: {error}", path.display()))?;
    report_keys::parse(&text)
        .map(Some)
        .map_err(|message| format!("--public-keys-from {}: {message}", path.display()))
}

/// Why a report that is intact was signed by none of the listed keys.
fn not_listed(public_key: &str, fingerprint: &str, keys: &[ReportKey], list: &Path) -> String {
    format!(
        "signed by key {public_key} ({fingerprint}), which is not one of the {} keys in {}: \
         the deployment never signed reports with it",
        keys.len(),
        list.display()
    )
}

/// What `verify` adds about the key that signed: `signing key FP: its period`.
fn key_line(key: &ReportKey) -> String {
    format!(
        "signing key {}: {}",
        key.fingerprint(),
        report_key::describe_period(key)
    )
}

/// `report verify --public-keys-from`: the report's signature is checked against the key it
/// embeds, which must be one of the listed keys; the output says which and its period.
fn verify_listed(args: &VerifyArgs, file: &str, keys: &[ReportKey]) -> anyhow::Result<()> {
    let result = signature::verify(file, None);
    let Ok(verified) = &result else {
        match args.output.output {
            Format::Json => print_json(&verify_json(&args.file, &result, true))?,
            Format::Text => print_verify_text(&args.file, &result, true),
        }
        return exit_for(&result);
    };
    let signer = signature::parse_public_key(&verified.public_key)
        .ok()
        .and_then(|public_key| report_key::find(keys, &public_key));
    let list = args.public_keys_from.as_deref().unwrap_or(Path::new("-"));
    let Some(signer) = signer else {
        let problem = not_listed(&verified.public_key, &verified.fingerprint, keys, list);
        match args.output.output {
            Format::Json => print_json(&json!({
                "file": args.file.display().to_string(),
                "valid": false,
                "pinned": true,
                "problems": [problem],
            }))?,
            Format::Text => println!("invalid: {}: {problem}", args.file.display()),
        }
        return Err(Reported(EXIT_INVALID).into());
    };
    match args.output.output {
        Format::Json => {
            let mut json = verify_json(&args.file, &result, true);
            json["key"] = report_keys::key_json(signer);
            print_json(&json)?;
        }
        Format::Text => {
            println!("{}", valid_line(verified));
            println!("{}", key_line(signer));
        }
    }
    Ok(())
}

/// `report verify --public-keys-from` on an attestation, which does not carry its key: it must
/// verify with one of the listed keys.
fn verify_attestation_listed(
    args: &VerifyArgs,
    file: &str,
    keys: &[ReportKey],
) -> anyhow::Result<()> {
    let mut unusable = None;
    for key in keys {
        match attestation::verify(file, &key.public_key) {
            Ok(verified) => {
                match args.output.output {
                    Format::Json => {
                        let mut json = attestation_json(&args.file, &Ok(verified));
                        json["key"] = report_keys::key_json(key);
                        print_json(&json)?;
                    }
                    Format::Text => {
                        println!("{}", attestation_valid_line(&verified));
                        println!("{}", key_line(key));
                    }
                }
                return Ok(());
            }
            Err(AttestationError::BadSignature(_)) => {}
            Err(error) => unusable = Some(error),
        }
    }
    if let Some(error) = unusable {
        match args.output.output {
            Format::Json => print_json(&attestation_json(&args.file, &Err(error)))?,
            Format::Text => eprintln!("error: {}: {error}", args.file.display()),
        }
        return Err(Reported(EXIT_UNUSABLE).into());
    }
    let list = args.public_keys_from.as_deref().unwrap_or(Path::new("-"));
    let problem = format!(
        "it is signed by none of the {} keys in {}",
        keys.len(),
        list.display()
    );
    match args.output.output {
        Format::Json => print_json(&json!({
            "file": args.file.display().to_string(),
            "valid": false,
            "pinned": true,
            "problems": [problem],
        }))?,
        Format::Text => {
            println!(
                "invalid: {} does not match its signature",
                args.file.display()
            );
            println!("  - {problem}");
        }
    }
    Err(Reported(EXIT_INVALID).into())
}

/// Runs `report verify` on an attestation. A DSSE envelope does not carry its key, so one
/// must be pinned.
fn verify_attestation(
    args: &VerifyArgs,
    file: &str,
    expected: Option<&ed25519_dalek::VerifyingKey>,
) -> anyhow::Result<()> {
    let Some(expected) = expected else {
        eprintln!(
            "error: {} is an attestation, which does not carry its signing key: pass --public-key or --key-file with the key `tollgate report public-key` prints",
            args.file.display()
        );
        return Err(Reported(EXIT_UNUSABLE).into());
    };
    let result = attestation::verify(file, expected);
    match args.output.output {
        Format::Json => print_json(&attestation_json(&args.file, &result))?,
        Format::Text => match &result {
            Ok(verified) => println!("{}", attestation_valid_line(verified)),
            Err(error @ AttestationError::BadSignature(_)) => {
                println!(
                    "invalid: {} does not match its signature",
                    args.file.display()
                );
                println!("  - {error}");
            }
            Err(error) => eprintln!("error: {}: {error}", args.file.display()),
        },
    }
    match result {
        Ok(_) => Ok(()),
        Err(AttestationError::BadSignature(_)) => Err(Reported(EXIT_INVALID).into()),
        Err(AttestationError::Malformed(_) | AttestationError::WrongStatement(_)) => {
            Err(Reported(EXIT_UNUSABLE).into())
        }
    }
}

/// The one-line summary of a valid attestation.
fn attestation_valid_line(verified: &VerifiedAttestation) -> String {
    let predicate = &verified.statement.predicate;
    format!(
        "valid attestation: signed by {}, release {} at {}, decision {} ({}), verification result {}",
        verified.fingerprint,
        predicate.decision.release,
        predicate.decision.milestone,
        predicate.decision.decision_digest,
        predicate.decision.verdict,
        predicate.verification_result
    )
}

fn attestation_json(
    path: &Path,
    result: &Result<VerifiedAttestation, AttestationError>,
) -> serde_json::Value {
    match result {
        Ok(verified) => {
            let predicate = &verified.statement.predicate;
            json!({
                "file": path.display().to_string(),
                "valid": true,
                "pinned": true,
                "fingerprint": verified.fingerprint,
                "release": predicate.decision.release,
                "milestone": predicate.decision.milestone,
                "decision_digest": predicate.decision.decision_digest,
                "verdict": predicate.decision.verdict,
                "verification_result": predicate.verification_result,
                "subjects": verified.statement.subject.len(),
            })
        }
        Err(error) => json!({
            "file": path.display().to_string(),
            "valid": false,
            "pinned": true,
            "problems": [error.to_string()],
        }),
    }
}

/// The key given by `--public-key` or `--key-file`, if any.
fn pinned_key(args: &VerifyArgs) -> Result<Option<ed25519_dalek::VerifyingKey>, String> {
    let text = match (&args.public_key, &args.key_file) {
        (Some(hex), _) => hex.clone(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|error| format!("cannot read key file {}: {error}", path.display()))?;
            text.lines().next().unwrap_or_default().trim().to_owned()
        }
        (None, None) => return Ok(None),
    };
    signature::parse_public_key(&text)
        .map(Some)
        .map_err(|message| format!("--public-key: {message}"))
}

/// The one-line summary of a valid report.
fn valid_line(verified: &Verified) -> String {
    format!(
        "valid: signed by {}, release {} at {}, decision {} ({})",
        verified.fingerprint,
        verified.release,
        verified.milestone,
        verified.decision_digest,
        verified.verdict
    )
}

fn print_verify_text(path: &Path, result: &Result<Verified, VerifyError>, pinned: bool) {
    match result {
        Ok(verified) => {
            println!("{}", valid_line(verified));
            if !pinned {
                eprintln!("WARNING: the signer is not pinned: {UNPINNED}");
            }
        }
        Err(VerifyError::Mismatch(mismatches)) => {
            println!("invalid: {} does not match its signature", path.display());
            for mismatch in mismatches {
                println!("  - {mismatch}");
            }
        }
        Err(error @ VerifyError::WrongKey { .. }) => println!("invalid: {error}"),
        Err(
            error @ (VerifyError::Unsigned(_)
            | VerifyError::Malformed(_)
            | VerifyError::Unsupported(_)),
        ) => {
            eprintln!("error: {}: {error}", path.display());
        }
    }
}

fn verify_json(
    path: &Path,
    result: &Result<Verified, VerifyError>,
    pinned: bool,
) -> serde_json::Value {
    match result {
        Ok(verified) => json!({
            "file": path.display().to_string(),
            "valid": true,
            "pinned": pinned,
            "warning": (!pinned).then_some(UNPINNED),
            "fingerprint": verified.fingerprint,
            "public_key": verified.public_key,
            "release": verified.release,
            "milestone": verified.milestone,
            "decision_digest": verified.decision_digest,
            "verdict": verified.verdict,
        }),
        Err(VerifyError::Mismatch(mismatches)) => json!({
            "file": path.display().to_string(),
            "valid": false,
            "pinned": pinned,
            "problems": mismatches,
        }),
        Err(error) => json!({
            "file": path.display().to_string(),
            "valid": false,
            "pinned": pinned,
            "problems": [error.to_string()],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_paths_use_the_suggested_extension() {
        assert_eq!(
            default_path("r1", Some("lab-qual"), ".html"),
            PathBuf::from("r1-lab-qual.html")
        );
        assert_eq!(default_path("r1", None, "html"), PathBuf::from("r1.html"));
    }

    #[test]
    fn an_attestation_verifies_with_the_pinned_key_only() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let release = tollgate_domain::test_support::release();
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
            public_key: key.verifying_key(),
            version: "0.1.0".into(),
        };
        let envelope = attestation::encode(&attestation::sign(
            &attestation::statement(&release, &decision, &verifier),
            &key,
        ));
        let verified = attestation::verify(&envelope, &key.verifying_key());
        let fingerprint = signature::fingerprint(&key.verifying_key());
        let Ok(verified) = &verified else {
            panic!("{verified:?}");
        };
        assert_eq!(
            attestation_valid_line(verified),
            format!(
                "valid attestation: signed by {fingerprint}, release r550 at lab-qual, decision d1 (waiting), verification result FAILED"
            )
        );
        let other = ed25519_dalek::SigningKey::from_bytes(&[4; 32]).verifying_key();
        let refused = attestation::verify(&envelope, &other);
        let json = attestation_json(Path::new("a.intoto.jsonl"), &refused);
        assert_eq!(json["valid"], false);
        assert!(
            json["problems"][0]
                .as_str()
                .is_some_and(|problem| problem.contains(&fingerprint)),
            "{json}"
        );
    }

    #[test]
    fn the_valid_line_names_signer_release_and_decision() {
        let verified = Verified {
            fingerprint: "0123456789abcdef".into(),
            public_key: "ab".into(),
            release: "r550".into(),
            milestone: "lab-qual".into(),
            decision_digest: "d1".into(),
            verdict: "failed".into(),
        };
        assert_eq!(
            valid_line(&verified),
            "valid: signed by 0123456789abcdef, release r550 at lab-qual, decision d1 (failed)"
        );
    }
}
