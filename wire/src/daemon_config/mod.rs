//! A daemon's configuration file, for `tollgate-controller serve` and `tollgate-agent` alike.
//!
//! The file is TOML and its keys are the daemon's long flags without `--` (`listen =
//! "0.0.0.0:7800"`; `_` may stand for `-`); a repeatable flag takes an array, a switch
//! `true` or `false`. Its settings become arguments parsed before the command line's own, so
//! one clap parser checks every value whatever its source, and the precedence is: flag >
//! environment variable > file > built-in default. `--print-config` shows every key's value
//! and where it came from, with secrets masked, and exits.
//!
//! [`resolve`] (the file, the environment and the command line into arguments) and
//! [`render`] (`--print-config`) are pure: the environment is a parameter, so tests need no
//! process environment. [`try_parse_from`] finds and reads the file: the one place in this
//! crate that does I/O. [`parse`] is what a daemon's `main` calls.

mod render;
mod resolve;
#[cfg(test)]
mod tests;

pub use render::{redact_url, render};
pub use resolve::{ConfigFile, Resolved, given_on_command_line, resolve};

use clap::{Arg, ArgAction, Command};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The id of `--config FILE`, added to every configured command by [`command`].
pub const CONFIG: &str = "config";
/// The id of `--print-config`, added beside `--config`.
pub const PRINT_CONFIG: &str = "print-config";

/// Reads one environment variable: the process's in a daemon, a map in tests.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// How one daemon finds its configuration file.
#[derive(Debug, Clone, Copy)]
pub struct Daemon {
    /// The subcommand the file configures (`serve`), or `None` for the whole command; other
    /// subcommands parse as if there were no file.
    pub subcommand: Option<&'static str>,
    /// The environment variable naming the file (`TOLLGATE_AGENT_CONFIG`).
    pub config_env: &'static str,
    /// The standard location, read only if it exists (`/etc/tollgate/agent.toml`).
    pub default_path: &'static str,
    /// Long flags that are one-off actions (`print-inventory`), not settings: the file may
    /// not hold them.
    pub actions: &'static [&'static str],
}

/// Where a setting's value came from, in `--print-config`'s words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The command line.
    Flag,
    /// The environment variable named.
    Env(String),
    /// The configuration file, at this line.
    File { path: PathBuf, line: usize },
    /// The built-in default (or no value at all).
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Flag => f.write_str("flag"),
            Self::Env(name) => write!(f, "env {name}"),
            Self::File { path, .. } => write!(f, "file {}", path.display()),
            Self::Default => f.write_str("default"),
        }
    }
}

/// Where each key that was set came from; a key absent here has its default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins(pub BTreeMap<String, Origin>);

impl Origins {
    /// The origin of `key` (a long flag without `--`).
    pub fn of(&self, key: &str) -> Origin {
        self.0.get(key).cloned().unwrap_or(Origin::Default)
    }
}

/// A daemon's parsed arguments and where each setting came from.
#[derive(Debug)]
pub struct Parsed<T> {
    /// The parsed command line, configuration file and environment.
    pub cli: T,
    /// Where each setting came from (empty for a subcommand without a file).
    pub origins: Origins,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Outcome<T> {
    /// Start the daemon (or run another subcommand) with these arguments.
    Run(Parsed<T>),
    /// `--print-config`: print this and exit.
    PrintConfig(String),
}

/// A configuration the daemon must not start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "the configuration file {path} ({given_by}) does not exist; write it, or point {given_by} at one that does"
    )]
    Missing { path: PathBuf, given_by: String },
    #[error("reading the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error(
        "{path} line {line}: unknown key `{key}`; the keys are the long flags of `--help` without `--`: {keys}"
    )]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
        keys: String,
    },
    #[error(
        "{path} line {line}: `{key}` is not a setting the file can hold; pass --{key} on the command line"
    )]
    NotASetting {
        path: PathBuf,
        line: usize,
        key: String,
    },
    #[error("{path} line {line}: `{key}` is set twice (first at line {first_line})")]
    Duplicate {
        path: PathBuf,
        line: usize,
        key: String,
        first_line: usize,
    },
    #[error("{path} line {line}: `{key}` must be {expected}, not {found}")]
    WrongType {
        path: PathBuf,
        line: usize,
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{path} line {line}: `{key}` = {value} is invalid: {reason} (see --help)")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{name}={value:?} is not a switch value for --{key}: use true or false")]
    EnvSwitch {
        name: String,
        value: String,
        key: String,
    },
}

/// Why the arguments were refused: a bad configuration file, or clap's own verdict (which
/// is also how `--help` and `--version` arrive), with notes on the settings that came from
/// the file or the environment rather than the command line.
#[derive(Debug)]
pub enum ParseError {
    Config(ConfigError),
    Command {
        error: clap::Error,
        notes: Vec<String>,
    },
}

impl From<ConfigError> for ParseError {
    fn from(error: ConfigError) -> Self {
        Self::Config(error)
    }
}

/// The daemon's command with `--config` and `--print-config` added where the file applies.
pub fn command<T: clap::CommandFactory>(daemon: &Daemon) -> Command {
    let add = |command: Command| {
        command
            .arg(
                Arg::new(CONFIG)
                    .long(CONFIG)
                    .env(daemon.config_env)
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help(format!(
                        "Configuration file (TOML): every long flag is a key, without `--`; \
                         flags and environment variables override it [default: {}, if it exists]",
                        daemon.default_path
                    )),
            )
            .arg(
                Arg::new(PRINT_CONFIG)
                    .long(PRINT_CONFIG)
                    .action(ArgAction::SetTrue)
                    .help(
                        "Print the effective configuration as TOML, with where each value came \
                         from and secrets masked, and exit",
                    ),
            )
    };
    match daemon.subcommand {
        Some(name) => T::command().mut_subcommand(name, add),
        None => add(T::command()),
    }
}

/// Parses the process's arguments and environment for `daemon`: prints the effective
/// configuration and exits for `--print-config`, prints the error and exits on a bad file
/// or bad arguments, and otherwise returns the arguments to run with.
pub fn parse<T: clap::Parser>(daemon: &Daemon) -> Parsed<T> {
    let env = |name: &str| std::env::var_os(name);
    match try_parse_from::<T>(daemon, std::env::args_os().collect(), &env) {
        Ok(Outcome::Run(parsed)) => parsed,
        Ok(Outcome::PrintConfig(text)) => {
            print!("{text}");
            std::process::exit(0);
        }
        Err(ParseError::Config(error)) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
        Err(ParseError::Command { error, notes }) => {
            if notes.is_empty() || !error.use_stderr() {
                error.exit();
            }
            // Printing to a closed stderr is not worth a second error.
            let _ = error.print();
            for note in notes {
                eprintln!("note: {note}");
            }
            std::process::exit(error.exit_code());
        }
    }
}

/// [`parse`] on given arguments (the program name first) and environment, without exiting.
pub fn try_parse_from<T: clap::Parser>(
    daemon: &Daemon,
    argv: Vec<OsString>,
    env: Env<'_>,
) -> Result<Outcome<T>, ParseError> {
    let full = command::<T>(daemon);
    let prefix = usize::from(daemon.subcommand.is_some()) + 1;
    let configured = match daemon.subcommand {
        Some(name) => argv
            .get(1)
            .is_some_and(|word| word.as_os_str() == name)
            .then(|| full.find_subcommand(name).cloned())
            .flatten(),
        None => Some(full.clone()),
    };
    let asks_for_help = argv.iter().skip(prefix).any(|word| {
        ["--help", "-h", "--version", "-V"].contains(&word.to_str().unwrap_or_default())
    });
    let Some(target) = configured.filter(|_| !asks_for_help) else {
        // Another subcommand, or help: no file, clap as usual.
        let matches = full.try_get_matches_from(argv).map_err(no_notes)?;
        let cli = T::from_arg_matches(&matches).map_err(no_notes)?;
        return Ok(Outcome::Run(Parsed {
            cli,
            origins: Origins::default(),
        }));
    };
    let own = argv.get(prefix..).unwrap_or_default();
    let given = given_on_command_line(&target, own);
    let file = read_file(daemon, &given, env)?;
    let resolved = resolve(&target, own, file.as_ref(), daemon.actions, env)?;

    // The environment was read into `resolved` already: clap must not read it again (in
    // tests it is not the process's).
    let without_env = |command: Command| command.mut_args(|arg| arg.env(None));
    let parser = match daemon.subcommand {
        Some(name) => full.mut_subcommand(name, without_env),
        None => without_env(full),
    };
    let args = argv
        .iter()
        .take(prefix)
        .chain(&resolved.args)
        .chain(own)
        .cloned();
    let noted = |error: clap::Error| ParseError::Command {
        notes: notes(&error, &resolved.origins),
        error,
    };
    let matches = parser.try_get_matches_from(args).map_err(noted)?;
    let own_matches = match daemon.subcommand {
        Some(name) => matches.subcommand_matches(name).unwrap_or(&matches),
        None => &matches,
    };
    if own_matches.get_flag(PRINT_CONFIG) {
        let name = match daemon.subcommand {
            Some(name) => format!("{} {name}", parser_name(&argv)),
            None => parser_name(&argv),
        };
        return Ok(Outcome::PrintConfig(render(
            &name,
            &target,
            own_matches,
            &resolved.origins,
            daemon.actions,
        )));
    }
    let cli = T::from_arg_matches(&matches).map_err(noted)?;
    Ok(Outcome::Run(Parsed {
        cli,
        origins: resolved.origins,
    }))
}

/// The program's name as it was called, without its directory.
fn parser_name(argv: &[OsString]) -> String {
    argv.first()
        .map(Path::new)
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn no_notes(error: clap::Error) -> ParseError {
    ParseError::Command {
        error,
        notes: Vec::new(),
    }
}

/// The configuration file, if there is one: `--config`, else the environment variable, else
/// the standard location when it exists. A file named explicitly must exist.
fn read_file(
    daemon: &Daemon,
    given: &BTreeMap<String, Vec<OsString>>,
    env: Env<'_>,
) -> Result<Option<ConfigFile>, ConfigError> {
    let explicit = match given.get(CONFIG).and_then(|values| values.last()) {
        Some(path) => Some((PathBuf::from(path), format!("--{CONFIG}"))),
        None => {
            env(daemon.config_env).map(|path| (PathBuf::from(path), daemon.config_env.to_owned()))
        }
    };
    let (path, given_by) = match explicit {
        Some(found) => found,
        None if Path::new(daemon.default_path).exists() => (
            PathBuf::from(daemon.default_path),
            "the standard location".to_owned(),
        ),
        None => return Ok(None),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(ConfigFile { path, text })),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(ConfigError::Missing { path, given_by })
        }
        Err(source) => Err(ConfigError::Read { path, source }),
    }
}

/// A note for each setting from the file or the environment that clap's error names, since
/// the person reading it did not type that flag.
fn notes(error: &clap::Error, origins: &Origins) -> Vec<String> {
    let text = error.render().to_string();
    origins
        .0
        .iter()
        .filter(|(key, origin)| **origin != Origin::Flag && text.contains(&format!("--{key}")))
        .map(|(key, origin)| match origin {
            Origin::File { path, line } => {
                format!("--{key} came from {} line {line}", path.display())
            }
            _ => format!("--{key} came from {origin}"),
        })
        .collect()
}

/// Whether `arg` is a key of the configuration file: a long option that is neither
/// `--config`, `--print-config`, help, version nor one of `actions`.
fn is_key(arg: &Arg, actions: &[&str]) -> bool {
    let Some(long) = arg.get_long() else {
        return false;
    };
    !arg.is_positional()
        && ![CONFIG, PRINT_CONFIG].contains(&long)
        && !actions.contains(&long)
        && !matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
}
