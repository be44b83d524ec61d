//! `--print-config`: the effective configuration as TOML, one line per key with where its
//! value came from, secrets masked; and the masking itself.

use super::{Origins, is_key};
use clap::{Arg, ArgAction, ArgMatches, Command};
use toml::Value;

/// The effective configuration of `command` (`name` to a person; as parsed into `matches`)
/// as a TOML file the daemon would read back: every key, its value, and where it came from
/// as a comment. A key without a value is a comment. Secrets are masked as `***`.
pub fn render(
    name: &str,
    command: &Command,
    matches: &ArgMatches,
    origins: &Origins,
    actions: &[&str],
) -> String {
    let mut text = format!(
        "# The effective configuration of {name}: every key with where its value came from\n\
         # (flag, env NAME, file PATH or default). Secrets are masked as ***.\n"
    );
    for arg in command.get_arguments().filter(|arg| is_key(arg, actions)) {
        let Some(key) = arg.get_long() else { continue };
        let origin = origins.of(key);
        let origin = one_line(&origin.to_string());
        let raw: Vec<String> = matches
            .try_get_raw(arg.get_id().as_str())
            .ok()
            .flatten()
            .map(|values| {
                values
                    .map(|value| mask(arg, &value.to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        let value = match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse => {
                Some(Value::Boolean(raw.last().is_some_and(|on| on == "true")))
            }
            ArgAction::Append => Some(Value::Array(raw.iter().map(|value| typed(value)).collect())),
            _ => raw.last().map(|value| typed(value)),
        };
        match value {
            Some(value) => text.push_str(&format!("{key} = {value} # {origin}\n")),
            None => text.push_str(&format!("# {key} is not set # {origin}\n")),
        }
    }
    text
}

/// A value as TOML: a number where it reads back as the same text, else a string.
fn typed(value: &str) -> Value {
    if let Ok(number) = value.parse::<i64>()
        && number.to_string() == value
    {
        return Value::Integer(number);
    }
    if let Ok(number) = value.parse::<f64>()
        && number.is_finite()
        && value.contains('.')
        && number.to_string() == value
    {
        return Value::Float(number);
    }
    Value::String(value.to_owned())
}

/// A comment stays on its line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// `value` of `arg` fit to print: a secret flag's value (a token, a password, key material:
/// named so, and not a file or directory) as `***` (`NAME=***` for `NAME=SECRET`), a PEM
/// private key as `***`, and the password of any URL as `***`.
pub(super) fn mask(arg: &Arg, value: &str) -> String {
    let key = arg.get_long().unwrap_or_default();
    let secretive = key
        .split('-')
        .any(|word| matches!(word, "token" | "tokens" | "password" | "secret" | "key"));
    let names_a_path = key.ends_with("-file")
        || key.ends_with("-dir")
        || arg.get_value_names().is_some_and(|names| {
            names
                .iter()
                .any(|name| matches!(name.as_str(), "FILE" | "DIR" | "PATH"))
        });
    if secretive && !names_a_path {
        return match value.split_once('=') {
            Some((name, _)) => format!("{name}=***"),
            None => "***".to_owned(),
        };
    }
    if value.contains("PRIVATE KEY") {
        return "***".to_owned();
    }
    // A list of URLs (an agent's controller replicas) is masked URL by URL.
    value
        .split(',')
        .map(redact_url)
        .collect::<Vec<_>>()
        .join(",")
}

/// A URL with its password replaced by `***` (`postgres://user:***@host/db`, and a
/// `password=` query parameter); anything else as it is.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<&str> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("password") => "password=***",
                    _ => pair,
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}
