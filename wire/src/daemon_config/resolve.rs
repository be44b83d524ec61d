//! The file, the environment and the command line into one list of arguments: each key of
//! the file and each environment variable of a flag not on the command line becomes
//! `--key=value`, checked by the flag's own value parser first so that a bad value is
//! refused with its file, line and key.

use super::{ConfigError, Env, Origin, Origins, is_key};
use clap::{Arg, ArgAction, Command};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use toml::{Spanned, Value};

/// A configuration file's path and text.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub text: String,
}

/// The arguments that stand for the environment's and the file's settings, to parse before
/// the command line's own, and where every set key came from.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub args: Vec<OsString>,
    pub origins: Origins,
}

/// The long flags on the command line (`argv`: the command's own arguments, after the
/// program and subcommand names), by key, with the values given to each. The final parse
/// is clap's; this only has to know which keys the command line sets.
pub fn given_on_command_line(
    command: &Command,
    argv: &[OsString],
) -> BTreeMap<String, Vec<OsString>> {
    let mut given: BTreeMap<String, Vec<OsString>> = BTreeMap::new();
    let mut words = argv.iter();
    while let Some(word) = words.next() {
        let Some(text) = word.to_str() else { continue };
        if text == "--" {
            break;
        }
        let found = if let Some(flag) = text.strip_prefix("--") {
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (flag, None),
            };
            command
                .get_arguments()
                .find(|arg| answers_to(arg, name))
                .map(|arg| (arg, inline.map(OsString::from)))
        } else if let Some(shorts) = text.strip_prefix('-') {
            // A cluster of short flags: the first that takes a value takes the rest.
            shorts.char_indices().find_map(|(at, short)| {
                let arg = command
                    .get_arguments()
                    .find(|arg| arg.get_short() == Some(short))?;
                let rest = &shorts[at + short.len_utf8()..];
                (arg.get_action().takes_values() || rest.is_empty())
                    .then(|| (arg, (!rest.is_empty()).then(|| OsString::from(rest))))
            })
        } else {
            None
        };
        let Some((arg, inline)) = found else { continue };
        let Some(key) = arg.get_long() else { continue };
        let values = given.entry(key.to_owned()).or_default();
        if arg.get_action().takes_values()
            && let Some(value) = inline.or_else(|| words.next().cloned())
        {
            values.push(value);
        }
    }
    given
}

/// Whether `--name` is `arg`, by its long name or an alias.
fn answers_to(arg: &Arg, name: &str) -> bool {
    arg.get_long() == Some(name)
        || arg
            .get_all_aliases()
            .is_some_and(|aliases| aliases.contains(&name))
}

/// Turns the environment and the file's settings into arguments for `command` (the daemon's
/// command, or its configured subcommand), below the command line `argv`: a key on the
/// command line keeps the command line's value, a flag's environment variable wins over the
/// file. Every key of the file is checked, even one that is overridden.
pub fn resolve(
    command: &Command,
    argv: &[OsString],
    file: Option<&ConfigFile>,
    actions: &[&str],
    env: Env<'_>,
) -> Result<Resolved, ConfigError> {
    let given = given_on_command_line(command, argv);
    let mut resolved = Resolved::default();
    for arg in command.get_arguments().filter(|arg| is_key(arg, actions)) {
        let Some(key) = arg.get_long() else { continue };
        if given.contains_key(key) {
            resolved.origins.0.insert(key.to_owned(), Origin::Flag);
            continue;
        }
        let Some((name, value)) = arg
            .get_env()
            .and_then(|name| Some((name, env(name.to_str()?)?)))
        else {
            continue;
        };
        let name = name.to_string_lossy().into_owned();
        if is_switch(arg) {
            let on = match value.to_string_lossy().to_ascii_lowercase().as_str() {
                "" | "0" | "false" | "no" | "off" => false,
                "1" | "true" | "yes" | "on" => true,
                _ => {
                    return Err(ConfigError::EnvSwitch {
                        name,
                        value: value.to_string_lossy().into_owned(),
                        key: key.to_owned(),
                    });
                }
            };
            if on == matches!(arg.get_action(), ArgAction::SetTrue) {
                resolved.args.push(format!("--{key}").into());
            }
        } else {
            let mut flag = OsString::from(format!("--{key}="));
            flag.push(&value);
            resolved.args.push(flag);
        }
        resolved.origins.0.insert(key.to_owned(), Origin::Env(name));
    }
    let Some(file) = file else {
        return Ok(resolved);
    };
    for setting in settings(command, file, actions)? {
        let key = setting.key;
        if resolved.origins.0.contains_key(key) {
            continue;
        }
        resolved
            .args
            .extend(setting.values.iter().map(|value| match value {
                Some(value) => OsString::from(format!("--{key}={value}")),
                None => OsString::from(format!("--{key}")),
            }));
        resolved.origins.0.insert(
            key.to_owned(),
            Origin::File {
                path: file.path.clone(),
                line: setting.line,
            },
        );
    }
    Ok(resolved)
}

/// One key of the file, checked: the flag's long name, the line, and its arguments (a
/// switch's `--key` is `None`).
struct Setting<'c> {
    key: &'c str,
    line: usize,
    values: Vec<Option<String>>,
}

/// Every key of the file, in the file's order, each checked against its flag.
fn settings<'c>(
    command: &'c Command,
    file: &ConfigFile,
    actions: &[&str],
) -> Result<Vec<Setting<'c>>, ConfigError> {
    let table: BTreeMap<Spanned<String>, Spanned<Value>> =
        toml::from_str(&file.text).map_err(|error| ConfigError::Syntax {
            path: file.path.clone(),
            message: error.to_string().trim_end().to_owned(),
        })?;
    let mut entries: Vec<_> = table.into_iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    let line_of = |at: usize| file.text[..at.min(file.text.len())].matches('\n').count() + 1;
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut settings = Vec::new();
    for (written, value) in entries {
        let line = line_of(written.span().start);
        let path = || file.path.clone();
        let name = written.get_ref().replace('_', "-");
        let Some(arg) = command
            .get_arguments()
            .find(|arg| arg.get_long().is_some() && answers_to(arg, &name))
        else {
            let keys: Vec<&str> = command
                .get_arguments()
                .filter(|arg| is_key(arg, actions))
                .filter_map(Arg::get_long)
                .collect();
            return Err(ConfigError::UnknownKey {
                path: path(),
                line,
                key: written.into_inner(),
                keys: keys.join(", "),
            });
        };
        let Some(key) = arg.get_long().filter(|_| is_key(arg, actions)) else {
            return Err(ConfigError::NotASetting {
                path: path(),
                line,
                key: name,
            });
        };
        if let Some(first_line) = seen.insert(key, line) {
            return Err(ConfigError::Duplicate {
                path: path(),
                line,
                key: key.to_owned(),
                first_line,
            });
        }
        let wrong = |expected: &'static str, found: &Value| ConfigError::WrongType {
            path: path(),
            line,
            key: key.to_owned(),
            expected,
            found: found.type_str(),
        };
        let values = match (arg.get_action(), value.get_ref()) {
            (action, Value::Boolean(on)) if is_switch(arg) => (*on
                == matches!(action, ArgAction::SetTrue))
            .then_some(None)
            .into_iter()
            .collect(),
            (_, found) if is_switch(arg) => return Err(wrong("true or false", found)),
            (ArgAction::Append, Value::Array(items)) => items
                .iter()
                .map(|item| {
                    scalar(item)
                        .map(Some)
                        .ok_or_else(|| wrong("a list of values", item))
                })
                .collect::<Result<Vec<_>, _>>()?,
            (ArgAction::Set, found @ Value::Array(_)) => {
                return Err(wrong("one value (the flag is not repeatable)", found));
            }
            (ArgAction::Set | ArgAction::Append, found) => {
                vec![Some(scalar(found).ok_or_else(|| {
                    wrong("a value (string, number or boolean)", found)
                })?)]
            }
            (_, found) => return Err(wrong("given on the command line", found)),
        };
        check(arg, &values).map_err(|reason| ConfigError::Invalid {
            path: path(),
            line,
            key: key.to_owned(),
            value: super::render::mask(arg, &value.get_ref().to_string()),
            reason,
        })?;
        settings.push(Setting { key, line, values });
    }
    Ok(settings)
}

/// Whether `arg` is a switch (`--insecure-loopback`), set by `true` or `false`.
fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// A TOML scalar as the command line would spell it; `None` for a table or an array.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Integer(number) => Some(number.to_string()),
        Value::Float(number) => Some(number.to_string()),
        Value::Boolean(on) => Some(on.to_string()),
        Value::Datetime(at) => Some(at.to_string()),
        Value::Array(_) | Value::Table(_) => None,
    }
}

/// Parses `values` with `arg`'s own value parser, alone (its relations to other flags are
/// clap's to check once everything is merged); the reason clap gives on failure.
fn check(arg: &Arg, values: &[Option<String>]) -> Result<(), String> {
    if is_switch(arg) {
        return Ok(());
    }
    let mut probe = Arg::new("value")
        .long("value")
        .action(arg.get_action().clone())
        .value_parser(arg.get_value_parser().clone());
    if let Some(delimiter) = arg.get_value_delimiter() {
        probe = probe.value_delimiter(delimiter);
    }
    if let Some(n_args) = arg.get_num_args() {
        probe = probe.num_args(n_args);
    }
    let args = values
        .iter()
        .flatten()
        .map(|value| format!("--value={value}"));
    Command::new("check")
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from(args)
        .map(drop)
        .map_err(|error| reason(&error))
}

/// What a value parser said, without clap's framing.
fn reason(error: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    if let Some(source) = std::error::Error::source(error) {
        return source.to_string();
    }
    if let Some(ContextValue::Strings(valid)) = error.get(ContextKind::ValidValue) {
        return format!("expected one of {}", valid.join(", "));
    }
    let text = error.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}
