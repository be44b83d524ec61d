//! Signed customer acceptance reports: what a report's Ed25519 signature covers, where each
//! format keeps it, and offline verification. Pure computation: the controller signs with its
//! key while it writes a report, `tollgate report verify` checks a file with nothing but this
//! module.
//!
//! **Invariant:** the signature covers every byte of the file except the 128 hex digits of its
//! own value. The file is a *body* and a *signature region*. The body (every byte outside the
//! region) is cut into consecutive named *sections* (the summary, each rule, each node, ...);
//! the region is a fixed layout around the signature block, written by [`region`] and nothing
//! else. The signature covers the list of the sections' names, lengths and sha256 together with
//! the release, milestone and decision the report is about and the sha256 of the region with
//! the signature value left out (see [`signed_message`]). A writer hashes each section as it
//! writes it, so a report of any size is signed without holding it in memory; a verifier
//! re-renders the region from the block it holds and requires the file's region to be exactly
//! those bytes (naming the first byte that differs), then re-cuts the body by the listed
//! lengths and names the sections whose bytes differ.

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The only algorithm.
pub const ALGORITHM: &str = "ed25519";

/// The signature scheme: the block's `scheme` field and the first line of the signed message.
/// Bump on any change to what is signed or to the region's layout.
pub const SCHEME: &str = "tollgate.report.signature.v3";

/// The scheme before v3, which left the bytes around the signature block unsigned. Its block
/// has no `scheme` field.
pub const OLD_SCHEME: &str = "tollgate.report.signature.v2";

/// Starts the signed message.
pub const MESSAGE_PREFIX: &str = SCHEME;

/// Opens the signature region of a Markdown, HTML or JUnit report. Everything outside the
/// region is the body.
pub const REGION_BEGIN: &str = "<!-- tollgate-signature-begin -->";
/// Closes the signature region.
pub const REGION_END: &str = "<!-- tollgate-signature-end -->";
/// JSON: opens the signature region, the top-level `signature` field (always the last one);
/// the region runs to the signature object's closing brace. Its `{` is the signature block's
/// own.
pub const JSON_REGION_BEGIN: &str = ",\"signature\":{";

/// Markdown: opens the HTML comment holding the signature block.
pub const MARKDOWN_SIGNATURE_OPEN: &str = "<!-- tollgate-report-signature\n";
/// Markdown: closes it.
pub const MARKDOWN_CLOSE: &str = "\n-->";
/// HTML: opens the data block holding the signature block.
pub const HTML_SIGNATURE_OPEN: &str = r#"<script type="application/json" id="tollgate-signature">"#;
/// HTML: closes it.
pub const HTML_CLOSE: &str = "</script>";
/// JUnit: the property holding the signature block.
pub const JUNIT_SIGNATURE_PROPERTY: &str = "tollgate.signature";

/// The formats, each with its own signature region layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "kebab-case")]
pub enum Format {
    /// `tollgate.report.v1` JSON.
    Json,
    /// GitHub-flavoured Markdown.
    Markdown,
    /// One self-contained HTML page.
    Html,
    /// JUnit XML.
    Junit,
}

impl Format {
    /// `json`, `markdown`, `html` or `junit`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One section of a report's body: a named run of consecutive bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// What the section shows, for example `summary`, `rule no-xid` or `node lab-3`.
    pub name: String,
    /// Its length in bytes.
    pub n_bytes: u64,
    /// Hex sha256 of its bytes.
    pub sha256: String,
}

/// The signature of one report, embedded in every format. Serialized in this field order, as
/// `serde_json` writes it (compact): the region's bytes depend on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureBlock {
    /// Always [`SCHEME`]. Empty when the block has none: a report of the older scheme.
    #[serde(default)]
    pub scheme: String,
    /// Always `ed25519`.
    pub algorithm: String,
    /// The signing key, lowercase hex (32 bytes).
    pub public_key: String,
    /// The signature of [`signed_message`], lowercase hex (64 bytes): the only bytes of the file
    /// the signature does not cover.
    pub signature: String,
    /// The release the report is about.
    pub release: String,
    /// The milestone.
    pub milestone: String,
    /// The digest of the decision the report shows.
    pub decision_digest: String,
    /// That decision's verdict.
    pub verdict: String,
    /// Length of the body in bytes: the sum of the sections' lengths.
    pub n_bytes: u64,
    /// The body's sections, in file order.
    pub sections: Vec<Section>,
}

/// What a valid signature vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The signing key's fingerprint: the first 16 hex digits of sha256 of the key.
    pub fingerprint: String,
    /// The signing key, hex.
    pub public_key: String,
    /// The release named in the signature.
    pub release: String,
    /// The milestone named in the signature.
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
    /// The signature block cannot be read.
    #[error("malformed report: {0}")]
    Malformed(String),
    /// Signed with a scheme this verifier does not accept.
    #[error("{0}")]
    Unsupported(String),
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
    /// The content, the region or the signature was changed after signing.
    #[error("{}", .0.join("; "))]
    Mismatch(Vec<String>),
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

/// Escapes JSON for embedding in HTML, Markdown or XML: `<`, `>` and `&` occur only inside
/// JSON strings, where `\u003c` and friends mean the same characters.
pub fn escape_for_embedding(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + json.len() / 64);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes compact JSON for an XML attribute value. `serde_json` writes no raw control
/// characters, so these five are all there is to escape.
fn escape_xml_attribute(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + json.len() / 4);
    for c in json.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON string literal, as `serde_json` writes it.
fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serializes")
}

/// What the Markdown and HTML notes tell a reader about the signature.
const NOTE: &str = "the signature covers every byte of this file except its own value. Check it \
offline with";

/// The signature region of a `format` report signed with `block`, byte for byte: the only
/// layout a verifier accepts. The block's own bytes are compact JSON (`serde_json`, fields in
/// [`SignatureBlock`]'s order), with `<`, `>` and `&` written as `\u003c`, `\u003e`, `\u0026`
/// in Markdown and HTML and XML-escaped in the JUnit attribute. The public key must be hex, as
/// [`sign`] writes it.
pub fn region(format: Format, block: &SignatureBlock) -> String {
    let json = serde_json::to_string(block).expect("a signature block serializes");
    let key = &block.public_key;
    match format {
        Format::Json => format!(",\"signature\":{json}"),
        Format::Markdown => format!(
            "{REGION_BEGIN}\n## Signature\n\nSigned with Ed25519 key `{key}`: {NOTE} \
             `tollgate report verify FILE --public-key KEY`; a change anywhere makes the check \
             fail, and a change above names its section.\n\n\
             {MARKDOWN_SIGNATURE_OPEN}{}{MARKDOWN_CLOSE}\n{REGION_END}",
            escape_for_embedding(&json)
        ),
        Format::Html => format!(
            "{REGION_BEGIN}\n<section id=\"signature\">\n<h2>Signature</h2>\n<p>Signed with \
             Ed25519 key <code>{key}</code>: {NOTE} <code>tollgate report verify FILE \
             --public-key KEY</code>; a change anywhere makes the check fail, and a change \
             above names its section.</p>\n</section>\n\
             {HTML_SIGNATURE_OPEN}{}{HTML_CLOSE}\n{REGION_END}",
            escape_for_embedding(&json)
        ),
        Format::Junit => format!(
            "{REGION_BEGIN}<testsuite name=\"tollgate.signature\" tests=\"0\" failures=\"0\" \
             errors=\"0\" skipped=\"0\"><properties><property name=\"{JUNIT_SIGNATURE_PROPERTY}\" \
             value=\"{}\"/></properties></testsuite>{REGION_END}",
            escape_xml_attribute(&json)
        ),
    }
}

/// The message a report's signature covers: one line per fact, then one per section, then
/// the region's.
///
/// ```text
/// tollgate.report.signature.v3
/// public_key <hex>
/// release <JSON string>
/// milestone <JSON string>
/// decision <JSON string digest> <JSON string verdict>
/// n_bytes <body length>
/// section <length> <sha256> <JSON string name>      (one per section, in file order)
/// region <length> <sha256>
/// ```
///
/// Every line ends with `\n`; JSON strings are written as `serde_json` writes them. The
/// `region` line describes `unsigned_region`, the signature region with the signature value
/// left out: the signer writes [`region`] with an empty `signature`, the verifier deletes the
/// value's hex digits from the region it found in the file, so the line covers the file's own
/// bytes.
pub fn signed_message(block: &SignatureBlock, unsigned_region: &str) -> String {
    let mut message = String::with_capacity(256 + block.sections.len() * 120);
    message.push_str(MESSAGE_PREFIX);
    message.push('\n');
    message.push_str(&format!("public_key {}\n", block.public_key));
    message.push_str(&format!("release {}\n", json_string(&block.release)));
    message.push_str(&format!("milestone {}\n", json_string(&block.milestone)));
    message.push_str(&format!(
        "decision {} {}\n",
        json_string(&block.decision_digest),
        json_string(&block.verdict)
    ));
    message.push_str(&format!("n_bytes {}\n", block.n_bytes));
    for section in &block.sections {
        message.push_str(&format!(
            "section {} {} {}\n",
            section.n_bytes,
            section.sha256,
            json_string(&section.name)
        ));
    }
    message.push_str(&format!(
        "region {} {}\n",
        unsigned_region.len(),
        sha256_hex(unsigned_region.as_bytes())
    ));
    message
}

/// What a report is about, signed with its sections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The release.
    pub release: String,
    /// The milestone.
    pub milestone: String,
    /// The decision's digest.
    pub decision_digest: String,
    /// The decision's verdict.
    pub verdict: String,
}

/// Signs a `format` report whose body consists of `sections`, in file order. The caller
/// writes [`region`] of the returned block where the region belongs.
pub fn sign(
    key: &SigningKey,
    format: Format,
    subject: Subject,
    sections: Vec<Section>,
) -> SignatureBlock {
    let Subject {
        release,
        milestone,
        decision_digest,
        verdict,
    } = subject;
    let mut block = SignatureBlock {
        scheme: SCHEME.to_owned(),
        algorithm: ALGORITHM.to_owned(),
        public_key: hex::encode(key.verifying_key().as_bytes()),
        signature: String::new(),
        release,
        milestone,
        decision_digest,
        verdict,
        n_bytes: sections.iter().map(|section| section.n_bytes).sum(),
        sections,
    };
    // The value is still empty: this is the region with the value left out.
    let unsigned_region = region(format, &block);
    block.signature = hex::encode(
        key.sign(signed_message(&block, &unsigned_region).as_bytes())
            .to_bytes(),
    );
    block
}

/// Hashes sections as they are written: feed bytes, then close the section with its name.
#[derive(Clone, Debug, Default)]
pub struct SectionHasher {
    hasher: Sha256,
    n_bytes: u64,
}

impl SectionHasher {
    /// Adds bytes to the open section.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.n_bytes += bytes.len() as u64;
    }

    /// Closes the open section as `name` and starts the next one.
    pub fn finish(&mut self, name: impl Into<String>) -> Section {
        let hasher = std::mem::take(&mut self.hasher);
        let n_bytes = std::mem::take(&mut self.n_bytes);
        Section {
            name: name.into(),
            n_bytes,
            sha256: hex::encode(hasher.finalize()),
        }
    }
}

/// The section of `bytes`, named `name`.
pub fn section(name: impl Into<String>, bytes: &[u8]) -> Section {
    let mut hasher = SectionHasher::default();
    hasher.update(bytes);
    hasher.finish(name)
}

/// A report file taken apart.
#[derive(Clone, Debug)]
pub struct Extracted<'a> {
    /// The body: the file outside the signature region, as two parts (before and after it).
    pub body: (&'a [u8], &'a [u8]),
    /// The signature region's bytes, as found in the file.
    pub region: &'a str,
    /// The signature block.
    pub block: SignatureBlock,
    /// The format, as told by the region.
    pub format: Format,
}

/// Takes a report file apart: finds the format, the signature region, its block and the body.
/// The region is only located here; [`verify_extracted`] checks its every byte.
pub fn extract(file: &str) -> Result<Extracted<'_>, VerifyError> {
    // A JSON report starts with `{`; one whose first byte was edited is still read as JSON
    // when it has no Markdown, HTML or JUnit region, so the edit is named as a section's.
    let json = file.trim_start().starts_with('{')
        || (!file.contains(REGION_BEGIN) && file.contains(JSON_REGION_BEGIN));
    if json {
        let begin = file.rfind(JSON_REGION_BEGIN).ok_or_else(|| {
            VerifyError::Unsigned("the JSON report has no `signature` field".into())
        })?;
        // The signature object is the last field: the region runs to its closing brace, found
        // by parsing it, and what follows (the report object's `}`) is the section `end`.
        let block_start = begin + JSON_REGION_BEGIN.len() - 1;
        let mut blocks =
            serde_json::Deserializer::from_str(&file[block_start..]).into_iter::<SignatureBlock>();
        let block = match blocks.next() {
            Some(Ok(block)) => block,
            Some(Err(error)) => return Err(block_error(&error, Some(block_start))),
            None => {
                return Err(VerifyError::Malformed(
                    "the JSON report's `signature` field is empty".into(),
                ));
            }
        };
        let end = block_start + blocks.byte_offset();
        return Ok(Extracted {
            body: (&file.as_bytes()[..begin], &file.as_bytes()[end..]),
            region: &file[begin..end],
            block,
            format: Format::Json,
        });
    }
    // The last region is the signature's: text in the body is escaped, but a log tail in a
    // Markdown code block could quote the markers.
    let begin = file
        .rfind(REGION_BEGIN)
        .ok_or_else(|| VerifyError::Unsigned("no signature region found".into()))?;
    let region_start = begin + REGION_BEGIN.len();
    let end = file[region_start..]
        .find(REGION_END)
        .map(|idx| idx + region_start + REGION_END.len())
        .ok_or_else(|| VerifyError::Malformed("the signature region is not closed".into()))?;
    let region = &file[begin..end];
    let body = (&file.as_bytes()[..begin], &file.as_bytes()[end..]);
    let (format, block) = if let Some((start, text)) =
        between(region, HTML_SIGNATURE_OPEN, HTML_CLOSE)
    {
        (Format::Html, parse_block(text, Some(begin + start))?)
    } else if let Some((start, text)) = between(region, MARKDOWN_SIGNATURE_OPEN, MARKDOWN_CLOSE) {
        (Format::Markdown, parse_block(text, Some(begin + start))?)
    } else {
        let open = format!(r#"<property name="{JUNIT_SIGNATURE_PROPERTY}" value=""#);
        let (_, raw) = between(region, &open, "\"").ok_or_else(|| {
            VerifyError::Malformed(format!(
                "the signature region at byte {begin} holds no signature block"
            ))
        })?;
        // Unescaped, the block's bytes no longer line up with the file's.
        (Format::Junit, parse_block(&xml_unescape(raw), None)?)
    };
    Ok(Extracted {
        body,
        region,
        block,
        format,
    })
}

/// Parses a signature block; `start` is its byte offset in the file when its text is the
/// file's own bytes, to say where a syntax error is.
fn parse_block(text: &str, start: Option<usize>) -> Result<SignatureBlock, VerifyError> {
    serde_json::from_str(text).map_err(|error| block_error(&error, start))
}

/// Why a signature block does not parse, and where when its text starts at byte `start`.
fn block_error(error: &serde_json::Error, start: Option<usize>) -> VerifyError {
    // The block is one line, so the column is the byte offset within it.
    let at = start
        .filter(|_| error.line() == 1)
        .map(|start| format!(" at byte {}", start + error.column().saturating_sub(1)))
        .unwrap_or_default();
    VerifyError::Malformed(format!("the signature block{at} does not parse: {error}"))
}

/// The text between the first `open` in `text` and the first `close` after it, with its
/// offset in `text`.
fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<(usize, &'a str)> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some((start, &text[start..start + len]))
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

/// The body's bytes in `range`, read across its two parts.
struct Body<'a> {
    parts: (&'a [u8], &'a [u8]),
}

impl Body<'_> {
    fn len(&self) -> u64 {
        (self.parts.0.len() + self.parts.1.len()) as u64
    }

    /// sha256 of bytes `start..start + n` (both within the body).
    fn digest(&self, start: u64, n: u64) -> String {
        let (first, second) = self.parts;
        let split = first.len() as u64;
        let mut hasher = Sha256::new();
        let end = start + n;
        if start < split {
            hasher.update(&first[start as usize..end.min(split) as usize]);
        }
        if end > split {
            hasher.update(
                &second[start.max(split).saturating_sub(split) as usize..(end - split) as usize],
            );
        }
        hex::encode(hasher.finalize())
    }
}

/// The sections whose bytes differ from the signed ones. When the body's length is unchanged
/// each section is checked in place; otherwise the intact sections are matched from the start
/// and from the end, and the ones in between are named.
fn changed_sections(body: &Body<'_>, sections: &[Section]) -> Vec<usize> {
    let total = body.len();
    let signed_total: u64 = sections.iter().map(|s| s.n_bytes).sum();
    let fits = |start: u64, section: &Section| start + section.n_bytes <= total;
    if total == signed_total {
        let mut start = 0;
        let mut changed = Vec::new();
        for (idx, section) in sections.iter().enumerate() {
            if body.digest(start, section.n_bytes) != section.sha256 {
                changed.push(idx);
            }
            start += section.n_bytes;
        }
        return changed;
    }
    // From the start: the first section that does not match.
    let mut first = sections.len();
    let mut start = 0;
    for (idx, section) in sections.iter().enumerate() {
        if !fits(start, section) || body.digest(start, section.n_bytes) != section.sha256 {
            first = idx;
            break;
        }
        start += section.n_bytes;
    }
    // From the end: the last section that does not match, not before `first`.
    let mut last = first;
    let mut end = total;
    for (idx, section) in sections.iter().enumerate().rev() {
        if idx <= first {
            break;
        }
        if section.n_bytes > end
            || end - section.n_bytes < start
            || body.digest(end - section.n_bytes, section.n_bytes) != section.sha256
        {
            last = idx;
            break;
        }
        end -= section.n_bytes;
    }
    if first == sections.len() {
        // Every signed section is intact: bytes were added at the end.
        return sections.len().checked_sub(1).into_iter().collect();
    }
    (first..=last.min(sections.len() - 1)).collect()
}

/// Says where the signature region found in a file first differs from the one its block
/// signs: the byte offset in the file, its line and column, and what stands there instead.
fn region_difference(before: &[u8], found: &str, signed: &str) -> String {
    let mut at = found
        .bytes()
        .zip(signed.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    while !(found.is_char_boundary(at) && signed.is_char_boundary(at)) {
        at -= 1;
    }
    let offset = before.len() + at;
    let newlines = |bytes: &[u8]| bytes.iter().filter(|&&byte| byte == b'\n').count();
    let line = newlines(before) + newlines(&found.as_bytes()[..at]) + 1;
    let line_start = found.as_bytes()[..at]
        .iter()
        .rposition(|&byte| byte == b'\n')
        .map(|idx| before.len() + idx + 1)
        .or_else(|| {
            before
                .iter()
                .rposition(|&byte| byte == b'\n')
                .map(|idx| idx + 1)
        })
        .unwrap_or(0);
    let column = offset - line_start + 1;
    let excerpt = |text: &str| -> String {
        let rest = &text[at..];
        if rest.is_empty() {
            "the end of the region".to_owned()
        } else {
            format!(
                "`{}`",
                rest.chars().take(32).collect::<String>().escape_debug()
            )
        }
    };
    format!(
        "the signature region was changed at byte {offset} (line {line}, column {column}): it has \
         {} where the signed layout has {}; the region must be exactly its fixed layout around the \
         signature block",
        excerpt(found),
        excerpt(signed)
    )
}

/// [`verify`] over a file already taken apart.
pub fn verify_extracted(
    extracted: &Extracted<'_>,
    expected_key: Option<&VerifyingKey>,
) -> Result<Verified, VerifyError> {
    let Extracted {
        body,
        region: found_region,
        block,
        format,
    } = extracted;
    if block.scheme != SCHEME {
        let scheme = if block.scheme.is_empty() {
            OLD_SCHEME
        } else {
            &block.scheme
        };
        return Err(VerifyError::Unsupported(format!(
            "the report is signed with the scheme {scheme}, which this verifier does not accept \
             (it accepts {SCHEME}, where the signature covers every byte of the file but its own \
             value): re-issue the report with `tollgate report` from a current controller"
        )));
    }
    if block.algorithm != ALGORITHM {
        return Err(VerifyError::Malformed(format!(
            "signature algorithm '{}' is not supported (expected {ALGORITHM})",
            block.algorithm
        )));
    }
    let key = parse_public_key(&block.public_key).map_err(VerifyError::Malformed)?;
    if block.public_key != hex::encode(key.as_bytes()) {
        return Err(VerifyError::Malformed(format!(
            "the signature block's public key '{}' is not written as lowercase hex",
            block.public_key
        )));
    }
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
    let signed_region = region(*format, block);
    if *found_region != signed_region {
        mismatches.push(region_difference(body.0, found_region, &signed_region));
    }
    let sections_total: u64 = block.sections.iter().map(|s| s.n_bytes).sum();
    if sections_total != block.n_bytes {
        mismatches.push(format!(
            "the signature block's sections add up to {sections_total} bytes, not the {} it states",
            block.n_bytes
        ));
    }
    let body = Body { parts: *body };
    let changed = changed_sections(&body, &block.sections);
    if !changed.is_empty() || body.len() != block.n_bytes {
        let names: Vec<String> = changed
            .iter()
            .take(5)
            .map(|&idx| format!("`{}`", block.sections[idx].name))
            .collect();
        let mut message = if names.is_empty() {
            "the report does not match its signature".to_owned()
        } else {
            format!(
                "the report does not match its signature: changed section {}",
                names.join(", ")
            )
        };
        if changed.len() > names.len() {
            message.push_str(&format!(" and {} more", changed.len() - names.len()));
        }
        if body.len() != block.n_bytes {
            message.push_str(&format!(
                " ({} bytes outside the signature, signed {})",
                body.len(),
                block.n_bytes
            ));
        }
        mismatches.push(message);
    }
    if !mismatches.is_empty() {
        // The bytes already differ from what the block lists: rejected without the costlier
        // Ed25519 check, which could only add that the block was edited too.
        return Err(VerifyError::Mismatch(mismatches));
    }
    // The region as found, less the value: its first occurrence is the block's `signature`
    // field, as nothing before it in the layout holds 128 hex digits.
    let unsigned_region = if block.signature.is_empty() {
        (*found_region).to_owned()
    } else {
        found_region.replacen(block.signature.as_str(), "", 1)
    };
    let signature_ok = hex::decode(&block.signature)
        .ok()
        .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
        .map(|bytes| Signature::from_bytes(&bytes))
        .is_some_and(|signature| {
            key.verify(
                signed_message(block, &unsigned_region).as_bytes(),
                &signature,
            )
            .is_ok()
        });
    if !signature_ok {
        mismatches.push(format!(
            "the signature does not match the signature block for key {}: the release, milestone or decision it names, its section digests, the signature region or the signature value were changed",
            fingerprint(&key)
        ));
    }
    if !mismatches.is_empty() {
        return Err(VerifyError::Mismatch(mismatches));
    }
    Ok(Verified {
        fingerprint: fingerprint(&key),
        public_key: block.public_key.clone(),
        release: block.release.clone(),
        milestone: block.milestone.clone(),
        decision_digest: block.decision_digest.clone(),
        verdict: block.verdict.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn subject() -> Subject {
        Subject {
            release: "r1".into(),
            milestone: "lab-qual".into(),
            decision_digest: "abc".into(),
            verdict: "passed".into(),
        }
    }

    const PARTS: [(&str, &str); 4] = [
        ("summary", "# Report\n\nverdict passed\n"),
        ("node n1", "## Node n1\n\n| 71.5 |\n"),
        ("node n2", "## Node n2\n\n| 70.0 |\n"),
        ("footer", "---\n"),
    ];

    fn markdown_file(key: &SigningKey) -> String {
        let sections = PARTS
            .iter()
            .map(|(name, text)| section(*name, text.as_bytes()))
            .chain([section("end", b"\n")])
            .collect();
        let block = sign(key, Format::Markdown, subject(), sections);
        let body: String = PARTS.iter().map(|(_, text)| *text).collect();
        format!("{body}{}\n", region(Format::Markdown, &block))
    }

    fn json_file(key: &SigningKey) -> String {
        let body = r#"{"schema":"x","nodes":[{"name":"n1","temp":71.5}]"#;
        let block = sign(
            key,
            Format::Json,
            subject(),
            vec![section("all", body.as_bytes()), section("end", b"}\n")],
        );
        format!("{body}{}}}\n", region(Format::Json, &block))
    }

    /// A Markdown report as the v2 scheme wrote it: its block has no `scheme`, and the
    /// signature does not cover the region.
    fn v2_markdown_file(key: &SigningKey) -> String {
        let sections: Vec<Section> = PARTS
            .iter()
            .map(|(name, text)| section(*name, text.as_bytes()))
            .collect();
        let mut block = sign(key, Format::Markdown, subject(), sections);
        block.scheme.clear();
        let mut json: serde_json::Value = serde_json::to_value(&block).expect("serializes");
        json.as_object_mut().expect("an object").remove("scheme");
        let body: String = PARTS.iter().map(|(_, text)| *text).collect();
        format!(
            "{body}{REGION_BEGIN}\n{MARKDOWN_SIGNATURE_OPEN}{json}{MARKDOWN_CLOSE}\n{REGION_END}"
        )
    }

    #[test]
    fn a_signed_report_verifies() {
        for file in [markdown_file(&key(1)), json_file(&key(1))] {
            let verified = verify(&file, None).expect("valid");
            assert_eq!(verified.release, "r1");
            assert_eq!(verified.milestone, "lab-qual");
            assert_eq!(verified.decision_digest, "abc");
            assert_eq!(verified.fingerprint, fingerprint(&key(1).verifying_key()));
        }
        let json: serde_json::Value = serde_json::from_str(&json_file(&key(1))).expect("parses");
        assert_eq!(json["signature"]["release"], "r1");
    }

    #[test]
    fn an_edit_names_its_section_whatever_its_length() {
        let file = markdown_file(&key(1));
        for (from, to) in [("71.5", "61.5"), ("71.5", "1.5"), ("71.5", "171.5")] {
            let error = verify(&file.replacen(from, to, 1), None).expect_err("edited");
            let message = error.to_string();
            assert!(message.contains("changed section `node n1`"), "{message}");
            assert!(!message.contains("node n2"), "{message}");
        }
        let error = verify(&file.replacen("---", "--", 1), None).expect_err("edited");
        assert!(error.to_string().contains("`footer`"), "{error}");
        let error = verify(
            &file.replacen("71.5", "61.5", 1).replacen("70.0", "60.0", 1),
            None,
        )
        .expect_err("edited");
        assert!(
            error.to_string().contains("`node n1`, `node n2`"),
            "{error}"
        );
        let error =
            verify(&json_file(&key(1)).replacen("71.5", "61.5", 1), None).expect_err("edited");
        assert!(error.to_string().contains("`all`"), "{error}");
    }

    #[test]
    fn another_key_is_rejected() {
        let file = markdown_file(&key(1));
        let error = verify(&file, Some(&key(2).verifying_key())).expect_err("wrong key");
        assert!(matches!(error, VerifyError::WrongKey { .. }), "{error}");
    }

    #[test]
    fn a_swapped_key_or_an_edited_block_does_not_verify() {
        let file = markdown_file(&key(1));
        let other = hex::encode(key(2).verifying_key().as_bytes());
        let mine = hex::encode(key(1).verifying_key().as_bytes());
        let error = verify(&file.replace(&mine, &other), None).expect_err("swapped");
        assert!(
            error.to_string().contains("signature does not match"),
            "{error}"
        );
        let error = verify(&file.replace("\"passed\"", "\"failed\""), None).expect_err("verdict");
        assert!(
            error.to_string().contains("signature does not match"),
            "{error}"
        );
    }

    #[test]
    fn every_byte_of_the_region_but_the_value_is_fixed() {
        for (format, file) in [
            (Format::Markdown, markdown_file(&key(1))),
            (Format::Json, json_file(&key(1))),
        ] {
            let extracted = extract(&file).expect("signed");
            assert_eq!(extracted.format, format);
            let begin = file
                .find(extracted.region)
                .expect("the region is the file's");
            // A byte added anywhere in the region, whitespace or not, is not taken for an
            // edit of the body.
            for at in [
                1,
                30,
                extracted.region.len() / 2,
                extracted.region.len() - 1,
            ] {
                let at = begin + at;
                for edit in [" ", "\n", "\r", "X"] {
                    let edited = format!("{}{edit}{}", &file[..at], &file[at..]);
                    let error = verify(&edited, Some(&key(1).verifying_key()))
                        .expect_err("an edited region")
                        .to_string();
                    assert!(
                        !error.contains("changed section"),
                        "{format:?}: {edit:?} at {at} is not in the body: {error}"
                    );
                }
            }
            // Where the block still parses, the first byte that differs is named.
            let (at, forgery) = match format {
                Format::Markdown => (begin + REGION_BEGIN.len(), "<b>FORGED</b>\n"),
                _ => (begin + JSON_REGION_BEGIN.len(), " "),
            };
            let edited = format!("{}{forgery}{}", &file[..at], &file[at..]);
            let error = verify(&edited, None).expect_err("forged").to_string();
            assert!(
                error.contains(&format!("the signature region was changed at byte {at} ")),
                "{format:?}: {error}"
            );
            assert!(
                error.contains(&format!("it has `{}", forgery.escape_debug())),
                "{format:?}: {error}"
            );
        }
    }

    #[test]
    fn the_signed_message_covers_the_region_without_the_value() {
        let file = markdown_file(&key(1));
        let extracted = extract(&file).expect("signed");
        let without_value = extracted
            .region
            .replacen(extracted.block.signature.as_str(), "", 1);
        let unsigned = SignatureBlock {
            signature: String::new(),
            ..extracted.block.clone()
        };
        assert_eq!(without_value, region(Format::Markdown, &unsigned));
        let message = signed_message(&extracted.block, &without_value);
        let signature = Signature::from_bytes(
            &hex::decode(&extracted.block.signature)
                .expect("hex")
                .try_into()
                .expect("64 bytes"),
        );
        key(1)
            .verifying_key()
            .verify(message.as_bytes(), &signature)
            .expect("the signature is over this message");
        assert!(
            message.ends_with(&format!(
                "region {} {}\n",
                without_value.len(),
                sha256_hex(without_value.as_bytes())
            )),
            "{message}"
        );
        assert!(message.starts_with("tollgate.report.signature.v3\n"));
    }

    /// The report format documentation, where a customer reads the region's exact bytes.
    const FORMAT_DOC: &str = include_str!("../../docs/report-format.md");

    /// The region layouts the documentation gives, in its order (JSON, Markdown, HTML, JUnit),
    /// with `⏎` made a newline and the list's indentation removed.
    fn documented_layouts() -> Vec<String> {
        let part = FORMAT_DOC
            .split("**The region, byte for byte.**")
            .nth(1)
            .expect("the documentation gives the region's bytes")
            .split("**Verifying.**")
            .next()
            .expect("split yields at least one part");
        part.split("```text\n")
            .skip(1)
            .map(|chunk| {
                chunk
                    .split("  ```")
                    .next()
                    .expect("split yields at least one part")
                    .lines()
                    .map(|line| line.strip_prefix("  ").expect("indented in its list item"))
                    .map(|line| line.replace('⏎', "\n"))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_documented_region_layouts_are_the_written_ones() {
        let layouts = documented_layouts();
        assert_eq!(layouts.len(), 4, "{layouts:#?}");
        let tricky = Subject {
            release: "r<1> & 'q' \"x\"".into(),
            ..subject()
        };
        let block = sign(
            &key(1),
            Format::Html,
            tricky,
            vec![section("node <&>", b"x")],
        );
        let json = serde_json::to_string(&block).expect("serializes");
        let xml = json
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&apos;");
        let formats = [Format::Json, Format::Markdown, Format::Html, Format::Junit];
        for (format, layout) in formats.into_iter().zip(layouts) {
            let embedded = match format {
                Format::Json => json.clone(),
                Format::Markdown | Format::Html => escape_for_embedding(&json),
                Format::Junit => xml.clone(),
            };
            let documented = layout
                .replace("{KEY}", &block.public_key)
                .replace("{BLOCK}", &embedded);
            assert_eq!(region(format, &block), documented, "{format:?}");
        }
    }

    #[test]
    fn an_older_scheme_is_refused_with_what_to_do() {
        let error =
            verify(&v2_markdown_file(&key(1)), Some(&key(1).verifying_key())).expect_err("v2");
        assert!(matches!(error, VerifyError::Unsupported(_)), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("tollgate.report.signature.v2") && message.contains("re-issue"),
            "{message}"
        );
    }

    #[test]
    fn a_file_without_a_region_is_unsigned() {
        assert!(matches!(
            verify("# Report\n", None),
            Err(VerifyError::Unsigned(_))
        ));
        assert!(matches!(
            verify("{\"schema\":1}\n", None),
            Err(VerifyError::Unsigned(_))
        ));
    }

    #[test]
    fn embedding_escapes_leave_no_markup() {
        let json = serde_json::to_string("</script> & -->").expect("serializes");
        let escaped = escape_for_embedding(&json);
        assert!(!escaped.contains('<') && !escaped.contains('>'));
        let parsed: String = serde_json::from_str(&escaped).expect("parses");
        assert_eq!(parsed, "</script> & -->");
    }

    #[test]
    fn xml_unescape_undoes_attribute_escaping() {
        assert_eq!(
            xml_unescape("&quot;a&quot; &amp;&lt;&#10;&#x41;"),
            "\"a\" &<\nA"
        );
    }
}
