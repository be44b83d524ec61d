//! Signed customer acceptance reports: the canonical content of a report, its Ed25519
//! signature, how a signature and its data are embedded in each format, and offline
//! verification. Pure computation: the controller signs with its key, `tollgate report verify`
//! checks a file with nothing but this module.
//!
//! **Canonical content:** the report's JSON view model, serialized by `serde_json` with every
//! object's keys sorted and no whitespace. Embedded copies may escape `<`, `>` and `&` (as
//! `\u003c` and so on) to stay inert inside HTML, Markdown and XML; the verifier re-canonicalizes
//! what it parses, so such escapes do not matter.
//!
//! **What is signed:** the message `tollgate.report.signature.v1\n<signed>\n<visible>\n`, where
//! `signed` is the hex sha256 of the canonical content and `visible` the hex sha256 of the
//! human-visible part of the file (empty for JSON, whose data fields are the canonical content).
//! Editing a number in the embedded data breaks `signed`; editing one in the visible text breaks
//! `visible`. The per-section digests in [`SignatureBlock`] are not signed: they only let the
//! verifier name the part of the report that was changed.

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

/// The only algorithm.
pub const ALGORITHM: &str = "ed25519";

/// Starts the signed message; bump on any change to what is signed.
const MESSAGE_PREFIX: &str = "tollgate.report.signature.v1";

/// Opens the signature region of a Markdown, HTML or JUnit report. Everything outside the
/// region is the visible part.
pub const REGION_BEGIN: &str = "<!-- tollgate-signature-begin -->";
/// Closes the signature region.
pub const REGION_END: &str = "<!-- tollgate-signature-end -->";

/// Markdown: opens the HTML comment holding the canonical content.
pub const MARKDOWN_DATA_OPEN: &str = "<!-- tollgate-report-data\n";
/// Markdown: opens the HTML comment holding the signature block.
pub const MARKDOWN_SIGNATURE_OPEN: &str = "<!-- tollgate-report-signature\n";
/// Markdown: closes either comment.
pub const MARKDOWN_CLOSE: &str = "\n-->";
/// HTML: opens the data block holding the canonical content.
pub const HTML_DATA_OPEN: &str = r#"<script type="application/json" id="tollgate-report">"#;
/// HTML: opens the data block holding the signature block.
pub const HTML_SIGNATURE_OPEN: &str = r#"<script type="application/json" id="tollgate-signature">"#;
/// HTML: closes either block.
pub const HTML_CLOSE: &str = "</script>";
/// JUnit: the property holding the canonical content.
pub const JUNIT_DATA_PROPERTY: &str = "tollgate.report";
/// JUnit: the property holding the signature block.
pub const JUNIT_SIGNATURE_PROPERTY: &str = "tollgate.signature";

/// The signature of one report, embedded in every format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureBlock {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The signing key, hex (32 bytes).
    pub public_key: String,
    /// The signature of the signed message, hex (64 bytes).
    pub signature: String,
    /// Hex sha256 of the canonical content.
    pub signed: String,
    /// Hex sha256 of the visible part of the file; empty for JSON.
    #[serde(default)]
    pub visible: String,
    /// Hex sha256 of each part of the canonical content (JSON pointers: every top-level field,
    /// and every element or field one level below), so a verifier can name what was changed.
    #[serde(default)]
    pub sections: BTreeMap<String, String>,
    /// Hex sha256 of each chunk of the visible part, by heading, in order.
    #[serde(default)]
    pub visible_sections: Vec<(String, String)>,
}

/// What a valid signature vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The signing key's fingerprint: the first 16 hex digits of sha256 of the key.
    pub fingerprint: String,
    /// The signing key, hex.
    pub public_key: String,
    /// The release named in the content.
    pub release: String,
    /// The milestone named in the content.
    pub milestone: String,
    /// The decision's digest.
    pub decision_digest: String,
    /// The decision's verdict.
    pub verdict: String,
}

/// Why a report does not verify. Each message names what does not match.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The file is not a signed report.
    #[error("not a signed Tollgate report: {0}")]
    Unsigned(String),
    /// The embedded data or signature block cannot be read.
    #[error("malformed report: {0}")]
    Malformed(String),
    /// Signed by another key than the one expected.
    #[error(
        "signed by key {actual} ({actual_fingerprint}), not by the expected key {expected} ({expected_fingerprint})"
    )]
    WrongKey {
        /// The key in the file.
        actual: String,
        /// Its fingerprint.
        actual_fingerprint: String,
        /// The key the caller trusts.
        expected: String,
        /// Its fingerprint.
        expected_fingerprint: String,
    },
    /// The content or signature was changed after signing.
    #[error("{}", .0.join("; "))]
    Mismatch(Vec<String>),
}

/// The canonical form of `value`: keys sorted, no whitespace.
pub fn canonical_json(value: &Value) -> String {
    // `serde_json::Map` is a BTreeMap (the `preserve_order` feature is off in this workspace),
    // so serializing a `Value` writes every object's keys sorted.
    value.to_string()
}

/// The canonical content of any serializable report model.
pub fn canonical_value<T: Serialize>(model: &T) -> Result<Value, serde_json::Error> {
    serde_json::to_value(model)
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The fingerprint of a public key: the first 16 hex digits of sha256 of its 32 bytes.
pub fn fingerprint(key: &VerifyingKey) -> String {
    let mut digest = sha256_hex(key.as_bytes());
    digest.truncate(16);
    digest
}

/// Parses a hex public key.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes =
        hex::decode(text.trim()).map_err(|error| format!("public key is not hex: {error}"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| format!("public key has {} bytes, expected 32", bytes.len()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|error| format!("invalid Ed25519 public key: {error}"))
}

/// Escapes the canonical JSON for embedding in HTML, Markdown or XML: `<`, `>` and `&` occur
/// only inside JSON strings, where `\u003c` and friends mean the same characters.
pub fn escape_for_embedding(canonical: &str) -> String {
    let mut out = String::with_capacity(canonical.len() + canonical.len() / 64);
    for c in canonical.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c => out.push(c),
        }
    }
    out
}

/// The per-part digests of `value` (see [`SignatureBlock::sections`]).
pub fn section_digests(value: &Value) -> BTreeMap<String, String> {
    let mut sections = BTreeMap::new();
    let Value::Object(top) = value else {
        sections.insert(String::new(), sha256_hex(value.to_string().as_bytes()));
        return sections;
    };
    for (key, field) in top {
        let pointer = format!("/{key}");
        match field {
            Value::Object(children) => {
                for (child_key, child) in children {
                    sections.insert(
                        format!("{pointer}/{child_key}"),
                        sha256_hex(child.to_string().as_bytes()),
                    );
                }
            }
            Value::Array(children) => {
                for (idx, child) in children.iter().enumerate() {
                    sections.insert(
                        format!("{pointer}/{idx}"),
                        sha256_hex(child.to_string().as_bytes()),
                    );
                }
            }
            _ => {}
        }
        sections.insert(pointer, sha256_hex(field.to_string().as_bytes()));
    }
    sections
}

/// The digest of each visible chunk: the text is cut before every heading line (Markdown `#`,
/// HTML `<h1>`..`<h4>`, a JUnit `<testsuite`), and each chunk is named by its first line.
pub fn visible_chunks(visible: &str) -> Vec<(String, String)> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in visible.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let heading = trimmed.starts_with('#')
            || trimmed.starts_with("<h1")
            || trimmed.starts_with("<h2")
            || trimmed.starts_with("<h3")
            || trimmed.starts_with("<h4")
            || trimmed.starts_with("<testsuite ");
        if heading && offset > start {
            chunks.push(chunk(&visible[start..offset]));
            start = offset;
        }
        offset += line.len();
    }
    if offset > start {
        chunks.push(chunk(&visible[start..offset]));
    }
    chunks
}

fn chunk(text: &str) -> (String, String) {
    let name: String = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .chars()
        .take(120)
        .collect();
    (name, sha256_hex(text.as_bytes()))
}

fn message(signed: &str, visible: &str) -> String {
    format!("{MESSAGE_PREFIX}\n{signed}\n{visible}\n")
}

/// Signs a report whose canonical content is `content` and whose visible part is `visible`
/// (`None` for JSON).
pub fn sign(key: &SigningKey, content: &Value, visible: Option<&str>) -> SignatureBlock {
    let canonical = canonical_json(content);
    sign_canonical(key, content, &canonical, visible)
}

/// [`sign`], when the caller already holds the canonical text of `content`.
pub fn sign_canonical(
    key: &SigningKey,
    content: &Value,
    canonical: &str,
    visible: Option<&str>,
) -> SignatureBlock {
    let signed = sha256_hex(canonical.as_bytes());
    let visible_digest = visible
        .map(|v| sha256_hex(v.as_bytes()))
        .unwrap_or_default();
    let signature = key.sign(message(&signed, &visible_digest).as_bytes());
    SignatureBlock {
        algorithm: ALGORITHM.to_owned(),
        public_key: hex::encode(key.verifying_key().as_bytes()),
        signature: hex::encode(signature.to_bytes()),
        signed,
        visible: visible_digest,
        sections: section_digests(content),
        visible_sections: visible.map(visible_chunks).unwrap_or_default(),
    }
}

/// A report file taken apart.
#[derive(Clone, Debug)]
pub struct Extracted {
    /// The embedded (or, for JSON, the data) content, parsed.
    pub content: Value,
    /// The signature block.
    pub block: SignatureBlock,
    /// The visible part; `None` for JSON.
    pub visible: Option<String>,
    /// `json`, `markdown`, `html` or `junit`.
    pub format: &'static str,
}

/// Takes a report file apart: finds the format, the embedded content, the signature block and
/// the visible part.
pub fn extract(file: &str) -> Result<Extracted, VerifyError> {
    let trimmed = file.trim_start();
    if trimmed.starts_with('{') {
        let mut content: Value = serde_json::from_str(file).map_err(|error| {
            VerifyError::Malformed(format!("JSON report does not parse: {error}"))
        })?;
        let block = content
            .as_object_mut()
            .and_then(|object| object.remove("signature"))
            .ok_or_else(|| {
                VerifyError::Unsigned("the JSON report has no `signature` field".into())
            })?;
        let block: SignatureBlock = serde_json::from_value(block)
            .map_err(|error| VerifyError::Malformed(format!("the `signature` field: {error}")))?;
        return Ok(Extracted {
            content,
            block,
            visible: None,
            format: "json",
        });
    }
    let begin = file
        .find(REGION_BEGIN)
        .ok_or_else(|| VerifyError::Unsigned("no signature region found".into()))?;
    let region_start = begin + REGION_BEGIN.len();
    let end = file[region_start..]
        .find(REGION_END)
        .map(|idx| idx + region_start)
        .ok_or_else(|| VerifyError::Malformed("the signature region is not closed".into()))?;
    let region = &file[region_start..end];
    let mut visible = String::with_capacity(file.len() - region.len());
    visible.push_str(&file[..begin]);
    visible.push_str(&file[end + REGION_END.len()..]);
    let (format, data, block) = if region.contains(HTML_DATA_OPEN) {
        (
            "html",
            between(region, HTML_DATA_OPEN, HTML_CLOSE)?.to_owned(),
            between(region, HTML_SIGNATURE_OPEN, HTML_CLOSE)?.to_owned(),
        )
    } else if region.contains(MARKDOWN_DATA_OPEN) {
        (
            "markdown",
            between(region, MARKDOWN_DATA_OPEN, MARKDOWN_CLOSE)?.to_owned(),
            between(region, MARKDOWN_SIGNATURE_OPEN, MARKDOWN_CLOSE)?.to_owned(),
        )
    } else {
        (
            "junit",
            xml_property(region, JUNIT_DATA_PROPERTY)?,
            xml_property(region, JUNIT_SIGNATURE_PROPERTY)?,
        )
    };
    let content: Value = serde_json::from_str(&data).map_err(|error| {
        VerifyError::Malformed(format!("the embedded report data does not parse: {error}"))
    })?;
    let block: SignatureBlock = serde_json::from_str(&block).map_err(|error| {
        VerifyError::Malformed(format!(
            "the embedded signature block does not parse: {error}"
        ))
    })?;
    Ok(Extracted {
        content,
        block,
        visible: Some(visible),
        format,
    })
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Result<&'a str, VerifyError> {
    let start = text
        .find(open)
        .ok_or_else(|| VerifyError::Malformed(format!("missing `{}`", open.trim())))?
        + open.len();
    let len = text[start..]
        .find(close)
        .ok_or_else(|| VerifyError::Malformed(format!("`{}` is not closed", open.trim())))?;
    Ok(&text[start..start + len])
}

fn xml_property(region: &str, name: &str) -> Result<String, VerifyError> {
    let open = format!(r#"<property name="{name}" value=""#);
    let raw = between(region, &open, "\"")?;
    Ok(xml_unescape(raw))
}

/// Undoes XML attribute escaping (`&quot;`, `&amp;`, `&lt;`, `&gt;`, `&apos;`, `&#NN;`).
pub fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(idx) = rest.find('&') {
        out.push_str(&rest[..idx]);
        rest = &rest[idx..];
        let Some(semi) = rest.find(';') else { break };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "quot" => Some('"'),
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|dec| dec.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Verifies a report file offline. With `expected_key`, also requires that key.
pub fn verify(file: &str, expected_key: Option<&VerifyingKey>) -> Result<Verified, VerifyError> {
    verify_extracted(&extract(file)?, expected_key)
}

/// [`verify`] over a file already taken apart.
pub fn verify_extracted(
    extracted: &Extracted,
    expected_key: Option<&VerifyingKey>,
) -> Result<Verified, VerifyError> {
    let Extracted {
        content,
        block,
        visible,
        format: _,
    } = extracted;
    if block.algorithm != ALGORITHM {
        return Err(VerifyError::Malformed(format!(
            "signature algorithm '{}' is not supported (expected {ALGORITHM})",
            block.algorithm
        )));
    }
    let key = parse_public_key(&block.public_key).map_err(VerifyError::Malformed)?;
    if let Some(expected) = expected_key
        && expected != &key
    {
        return Err(VerifyError::WrongKey {
            actual: block.public_key.clone(),
            actual_fingerprint: fingerprint(&key),
            expected: hex::encode(expected.as_bytes()),
            expected_fingerprint: fingerprint(expected),
        });
    }
    let mut mismatches = Vec::new();
    let signed = sha256_hex(canonical_json(content).as_bytes());
    if signed != block.signed {
        let changed: Vec<String> = section_digests(content)
            .into_iter()
            .filter(|(pointer, digest)| block.sections.get(pointer) != Some(digest))
            .map(|(pointer, _)| pointer)
            .collect();
        // Name the deepest changed parts: `/nodes/3` rather than `/nodes` as well.
        let deepest: Vec<String> = changed
            .iter()
            .filter(|pointer| {
                !changed.iter().any(|other| {
                    other.len() > pointer.len() && other.starts_with(&format!("{pointer}/"))
                })
            })
            .map(|pointer| describe_pointer(content, pointer))
            .collect();
        if deepest.is_empty() {
            mismatches.push("the report data does not match the signed content".to_owned());
        } else {
            mismatches.push(format!(
                "the report data does not match the signed content: changed {}",
                deepest.join(", ")
            ));
        }
    }
    let visible_digest = visible
        .as_deref()
        .map(|v| sha256_hex(v.as_bytes()))
        .unwrap_or_default();
    if visible_digest != block.visible {
        let chunks = visible.as_deref().map(visible_chunks).unwrap_or_default();
        let changed: Vec<String> = chunks
            .iter()
            .enumerate()
            .filter(|(idx, chunk)| block.visible_sections.get(*idx) != Some(chunk))
            .map(|(_, (name, _))| format!("`{name}`"))
            .take(5)
            .collect();
        if changed.is_empty() {
            mismatches.push("the visible report does not match the signed content".to_owned());
        } else {
            mismatches.push(format!(
                "the visible report does not match the signed content: changed the section starting {}",
                changed.join(", ")
            ));
        }
    }
    let signature_ok = hex::decode(&block.signature)
        .ok()
        .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
        .map(|bytes| Signature::from_bytes(&bytes))
        .is_some_and(|signature| {
            key.verify(
                message(&block.signed, &block.visible).as_bytes(),
                &signature,
            )
            .is_ok()
        });
    if !signature_ok {
        mismatches.push(format!(
            "the signature does not match the signed digests for key {}",
            fingerprint(&key)
        ));
    }
    if !mismatches.is_empty() {
        return Err(VerifyError::Mismatch(mismatches));
    }
    let text = |pointer: &str| {
        content
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(Verified {
        fingerprint: fingerprint(&key),
        public_key: block.public_key.clone(),
        release: text("/release/name"),
        milestone: text("/milestone"),
        decision_digest: text("/decision/digest"),
        verdict: text("/decision/verdict"),
    })
}

/// `/nodes/3` with the node's name when it has one: `/nodes/3 (node gpu-07)`.
fn describe_pointer(content: &Value, pointer: &str) -> String {
    let name = content.pointer(pointer).and_then(|value| {
        ["name", "rule_id", "run_id"]
            .iter()
            .find_map(|key| value.get(key).and_then(Value::as_str))
    });
    match name {
        Some(name) => format!("`{pointer}` ({name})"),
        None => format!("`{pointer}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn content() -> Value {
        json!({
            "schema": "tollgate.report.v1",
            "release": {"name": "r1"},
            "milestone": "lab-qual",
            "decision": {"digest": "abc", "verdict": "passed"},
            "nodes": [{"name": "n1", "temp": 71.5}, {"name": "n2", "temp": 70.0}],
        })
    }

    fn json_file(key: &SigningKey, content: &Value) -> String {
        let block = sign(key, content, None);
        let mut file = content.clone();
        file["signature"] = serde_json::to_value(block).expect("block serializes");
        file.to_string()
    }

    fn markdown_file(key: &SigningKey, content: &Value, visible: &str) -> String {
        let block = sign(key, content, Some(visible));
        format!(
            "{visible}{REGION_BEGIN}\n{MARKDOWN_DATA_OPEN}{}{MARKDOWN_CLOSE}\n{MARKDOWN_SIGNATURE_OPEN}{}{MARKDOWN_CLOSE}\n{REGION_END}",
            escape_for_embedding(&canonical_json(content)),
            serde_json::to_string(&block).expect("block serializes"),
        )
    }

    #[test]
    fn a_signed_json_report_verifies() {
        let verified = verify(&json_file(&key(1), &content()), None).expect("valid");
        assert_eq!(verified.release, "r1");
        assert_eq!(verified.milestone, "lab-qual");
        assert_eq!(verified.decision_digest, "abc");
        assert_eq!(verified.fingerprint, fingerprint(&key(1).verifying_key()));
    }

    #[test]
    fn an_edited_json_number_is_named() {
        let file = json_file(&key(1), &content()).replace("71.5", "61.5");
        let error = verify(&file, None).expect_err("edited");
        let message = error.to_string();
        assert!(message.contains("`/nodes/0` (n1)"), "{message}");
    }

    #[test]
    fn another_key_is_rejected() {
        let file = json_file(&key(1), &content());
        let error = verify(&file, Some(&key(2).verifying_key())).expect_err("wrong key");
        assert!(matches!(error, VerifyError::WrongKey { .. }), "{error}");
    }

    #[test]
    fn a_swapped_key_does_not_verify() {
        let file = json_file(&key(1), &content());
        let other = hex::encode(key(2).verifying_key().as_bytes());
        let mine = hex::encode(key(1).verifying_key().as_bytes());
        let error = verify(&file.replace(&mine, &other), None).expect_err("swapped");
        assert!(
            error.to_string().contains("signature does not match"),
            "{error}"
        );
    }

    #[test]
    fn markdown_visible_and_embedded_edits_are_caught() {
        let visible = "# Report\n\n## Nodes\n\n| n1 | 71.5 |\n";
        let file = markdown_file(&key(1), &content(), visible);
        verify(&file, None).expect("valid");
        let error = verify(&file.replacen("| 71.5 |", "| 61.5 |", 1), None).expect_err("visible");
        assert!(error.to_string().contains("`## Nodes`"), "{error}");
        let error = verify(&file.replacen("\"temp\":71.5", "\"temp\":61.5", 1), None)
            .expect_err("embedded");
        assert!(error.to_string().contains("`/nodes/0` (n1)"), "{error}");
    }

    #[test]
    fn embedding_escapes_do_not_change_the_canonical_content() {
        let content = json!({"detail": "</script> & -->"});
        let escaped = escape_for_embedding(&canonical_json(&content));
        assert!(!escaped.contains('<') && !escaped.contains('>'));
        let parsed: Value = serde_json::from_str(&escaped).expect("parses");
        assert_eq!(canonical_json(&parsed), canonical_json(&content));
    }

    #[test]
    fn xml_unescape_undoes_attribute_escaping() {
        assert_eq!(
            xml_unescape("&quot;a&quot; &amp;&lt;&#10;&#x41;"),
            "\"a\" &<\nA"
        );
    }
}
