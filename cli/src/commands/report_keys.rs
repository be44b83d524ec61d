//! The deployment's report signing keys as a file a verifier keeps: what `tollgate report
//! public-key --all` prints, in text or JSON, and what `report verify --public-keys-from` reads
//! back (either form).
//!
//! The text form is one key per line, oldest first, after `#` comment lines:
//!
//! ```text
//! # public key (hex)  fingerprint  active from  retired at
//! 2152f8d1...  9f86d081884c7d65  2026-01-01T00:00:00Z  2026-06-01T00:00:00Z
//! 3d4017c3...  2c26b46b68ffc68f  2026-06-01T00:00:00Z  current
//! ```

use serde_json::json;
use tollgate_domain::Timestamp;
use tollgate_domain::report_key::{ReportKey, format_time};
use tollgate_domain::report_signature::{ALGORITHM, fingerprint, parse_public_key};

/// The word the text form puts in the "retired at" column of the current key.
const CURRENT: &str = "current";

/// The text form of `keys`.
pub fn to_text(keys: &[ReportKey]) -> String {
    let mut text = String::from(
        "# The report signing keys of this deployment, oldest first. Verify a report signed \
         with any of them:\n#   tollgate report verify REPORT --public-keys-from THIS-FILE\n",
    );
    // Aligned with the lines below: a key is 64 hex digits, a fingerprint 16, a time 20.
    text.push_str(&format!(
        "# {:<62}  {:<16}  {:<20}  retired at\n",
        "public key (hex)", "fingerprint", "active from"
    ));
    for key in keys {
        text.push_str(&format!(
            "{}  {}  {}  {}\n",
            key.hex(),
            key.fingerprint(),
            format_time(key.active_from),
            key.retired_at
                .map_or_else(|| CURRENT.to_owned(), format_time)
        ));
    }
    text
}

/// The JSON form of `keys`.
pub fn to_json(keys: &[ReportKey]) -> serde_json::Value {
    json!({
        "algorithm": ALGORITHM,
        "keys": keys.iter().map(key_json).collect::<Vec<_>>(),
    })
}

/// One key in JSON, as `verify -o json` also names the key that signed.
pub fn key_json(key: &ReportKey) -> serde_json::Value {
    json!({
        "public_key": key.hex(),
        "fingerprint": key.fingerprint(),
        "active_from": key.active_from.to_rfc3339(),
        "retired_at": key.retired_at.map(|at| at.to_rfc3339()),
        "current": key.is_current(),
    })
}

/// Reads a key list in either form; the error names the line or entry that is wrong.
pub fn parse(text: &str) -> Result<Vec<ReportKey>, String> {
    let keys = if text.trim_start().starts_with('{') {
        parse_json(text)?
    } else {
        parse_text(text)?
    };
    if keys.is_empty() {
        return Err("it lists no key".to_owned());
    }
    Ok(keys)
}

fn parse_text(text: &str) -> Result<Vec<ReportKey>, String> {
    let mut keys = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at_line = |message: String| format!("line {}: {message}", idx + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [public_key, fingerprint, active_from, retired_at] = fields[..] else {
            return Err(at_line(format!(
                "expected PUBLIC-KEY FINGERPRINT ACTIVE-FROM RETIRED-AT|{CURRENT}, found {} \
                 fields",
                fields.len()
            )));
        };
        let retired_at = (retired_at != CURRENT).then_some(retired_at);
        keys.push(key(public_key, fingerprint, active_from, retired_at).map_err(at_line)?);
    }
    Ok(keys)
}

fn parse_json(text: &str) -> Result<Vec<ReportKey>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
    let entries = value
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or("no \"keys\" list")?;
    entries
        .iter()
        .enumerate()
        .map(|(idx, entry)| {
            let field = |name: &str| entry.get(name).and_then(serde_json::Value::as_str);
            key(
                field("public_key").unwrap_or_default(),
                field("fingerprint").unwrap_or_default(),
                field("active_from").unwrap_or_default(),
                field("retired_at"),
            )
            .map_err(|message| format!("keys[{idx}]: {message}"))
        })
        .collect()
}

/// One listed key, checked: a valid key whose fingerprint is its own, and valid times.
fn key(
    public_key: &str,
    listed_fingerprint: &str,
    active_from: &str,
    retired_at: Option<&str>,
) -> Result<ReportKey, String> {
    let public_key = parse_public_key(public_key)?;
    let own = fingerprint(&public_key);
    if listed_fingerprint != own {
        return Err(format!(
            "fingerprint '{listed_fingerprint}' is not the key's, {own}: the list was changed"
        ));
    }
    Ok(ReportKey {
        public_key,
        active_from: time("active from", active_from)?,
        retired_at: retired_at.map(|at| time("retired at", at)).transpose()?,
    })
}

fn time(what: &str, text: &str) -> Result<Timestamp, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|at| at.to_utc())
        .map_err(|error| format!("{what} '{text}' is not an RFC 3339 time: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<ReportKey> {
        let at =
            |secs: i64| chrono::DateTime::from_timestamp(1_767_225_600 + secs, 0).expect("time");
        vec![
            ReportKey {
                public_key: ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key(),
                active_from: at(0),
                retired_at: Some(at(100)),
            },
            ReportKey {
                public_key: ed25519_dalek::SigningKey::from_bytes(&[2; 32]).verifying_key(),
                active_from: at(100),
                retired_at: None,
            },
        ]
    }

    #[test]
    fn both_forms_read_back() {
        assert_eq!(parse(&to_text(&keys())), Ok(keys()));
        let json = serde_json::to_string_pretty(&to_json(&keys())).expect("JSON");
        assert_eq!(parse(&json), Ok(keys()));
        let text = to_text(&keys());
        let line = text.lines().nth(4).expect("the current key's line");
        assert!(line.ends_with("2026-01-01T00:01:40Z  current"), "{line}");
    }

    #[test]
    fn a_changed_list_names_its_line() {
        let text = to_text(&keys());
        let edited = text.replacen(&keys()[0].fingerprint(), "0123456789abcdef", 1);
        let error = parse(&edited).expect_err("changed");
        assert!(
            error.starts_with("line 4: fingerprint '0123456789abcdef'"),
            "{error}"
        );
        assert!(
            parse("# nothing\n")
                .expect_err("empty")
                .contains("lists no key")
        );
        let error = parse("abc def\n").expect_err("short");
        assert!(error.starts_with("line 1: expected"), "{error}");
    }
}
