//! The file, the environment and the command line merged as a daemon sees them, on a small
//! daemon of the controller's shape (and a subcommand like `serve`).

#![allow(clippy::unwrap_used)]

use super::*;
use std::ffi::OsString;
use std::io::Write as _;
use std::time::Duration;

#[derive(Debug, clap::Parser)]
#[command(name = "testd")]
struct Testd {
    #[arg(long, default_value = "127.0.0.1:7800")]
    listen: String,
    #[arg(long = "database", value_name = "URL", env = "TESTD_DATABASE_URL")]
    database: Option<String>,
    #[arg(long, default_value_t = 20)]
    rate_limit: u32,
    #[arg(long, default_value = "2s", value_parser = parse_seconds)]
    heartbeat_interval: Duration,
    #[arg(long = "hostname", value_name = "NAME")]
    hostnames: Vec<String>,
    #[arg(long = "pass-env", env = "TESTD_PASS_ENV", value_delimiter = ',')]
    pass_env: Vec<String>,
    #[arg(long)]
    insecure_loopback: bool,
    #[arg(long, value_name = "FILE", conflicts_with = "insecure_loopback")]
    tls_cert: Option<std::path::PathBuf>,
    #[arg(long = "api-token", value_name = "NAME=SECRET")]
    api_tokens: Vec<String>,
    #[arg(
        long = "api-token-file",
        visible_alias = "api-tokens-file",
        value_name = "FILE"
    )]
    api_tokens_file: Option<std::path::PathBuf>,
    #[arg(long)]
    print_inventory: bool,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds = text
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("'{text}' is not a duration like 2s"))?;
    Ok(Duration::from_secs(seconds))
}

#[derive(Debug, clap::Parser)]
#[command(name = "testctl")]
struct Testctl {
    #[command(subcommand)]
    command: TestctlCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TestctlCommand {
    Serve(Testd),
    Other {
        #[arg(long, default_value = "x")]
        dir: String,
    },
}

const DAEMON: Daemon = Daemon {
    subcommand: None,
    config_env: "TESTD_CONFIG",
    default_path: "/nonexistent/tollgate-tests/testd.toml",
    actions: &["print-inventory"],
};

const SERVE: Daemon = Daemon {
    subcommand: Some("serve"),
    ..DAEMON
};

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    move |name: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| OsString::from(value))
    }
}

struct Run {
    _dir: tempfile::TempDir,
    path: String,
    outcome: Result<Outcome<Testd>, ParseError>,
}

/// Runs `testd --config FILE ARGS...` with `text` as FILE and `env` as the environment.
fn testd(text: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("testd.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let path = path.to_str().unwrap().to_owned();
    let argv: Vec<OsString> = ["testd", "--config", &path]
        .iter()
        .chain(args)
        .map(OsString::from)
        .collect();
    let outcome = try_parse_from::<Testd>(&DAEMON, argv, &env_of(env));
    Run {
        _dir: dir,
        path,
        outcome,
    }
}

fn parsed(run: Run) -> Parsed<Testd> {
    match run.outcome {
        Ok(Outcome::Run(parsed)) => parsed,
        other => panic!("expected arguments to run with, got {other:?}"),
    }
}

fn printed(run: &Run) -> String {
    match &run.outcome {
        Ok(Outcome::PrintConfig(text)) => text.clone(),
        other => panic!("expected a printed configuration, got {other:?}"),
    }
}

fn refused(run: &Run) -> String {
    match &run.outcome {
        Err(ParseError::Config(error)) => error.to_string(),
        other => panic!("expected a refused configuration, got {other:?}"),
    }
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let file = "listen = \"0.0.0.0:7800\"\nrate-limit = 5\ndatabase = \"postgres://file/db\"\n\
                hostname = [\"from-file\"]\n";
    let run = testd(
        file,
        &["--rate-limit", "7", "--hostname=from-flag"],
        &[("TESTD_DATABASE_URL", "postgres://env/db")],
    );
    let path = run.path.clone();
    let parsed = parsed(run);
    let cli = &parsed.cli;
    assert_eq!(cli.listen, "0.0.0.0:7800", "file over default");
    assert_eq!(
        cli.database.as_deref(),
        Some("postgres://env/db"),
        "env over file"
    );
    assert_eq!(cli.rate_limit, 7, "flag over file");
    assert_eq!(
        cli.hostnames,
        ["from-flag"],
        "a flag replaces the file's list"
    );
    assert_eq!(cli.heartbeat_interval, Duration::from_secs(2), "default");
    let origins = &parsed.origins;
    assert_eq!(
        origins.of("listen"),
        Origin::File {
            path: path.into(),
            line: 1
        }
    );
    assert_eq!(
        origins.of("database"),
        Origin::Env("TESTD_DATABASE_URL".into())
    );
    assert_eq!(origins.of("rate-limit"), Origin::Flag);
    assert_eq!(origins.of("hostname"), Origin::Flag);
    assert_eq!(origins.of("heartbeat-interval"), Origin::Default);
}

#[test]
fn the_environment_beats_the_file_for_a_list_too() {
    let run = testd(
        "pass-env = [\"A\", \"B\"]\n",
        &[],
        &[("TESTD_PASS_ENV", "C,D")],
    );
    assert_eq!(parsed(run).cli.pass_env, ["C", "D"]);
}

#[test]
fn an_unknown_key_is_refused_with_its_file_line_and_the_valid_keys() {
    let run = testd(
        "listen = \"127.0.0.1:1\"\n\n  contoller = \"x\"\n",
        &[],
        &[],
    );
    let error = refused(&run);
    assert!(
        error.starts_with(&format!("{} line 3: unknown key `contoller`", run.path)),
        "{error}"
    );
    assert!(error.contains("listen, database, rate-limit"), "{error}");
    assert!(error.contains("--help"), "{error}");
    assert!(
        !error.contains("print-inventory"),
        "actions are not keys: {error}"
    );
}

#[test]
fn a_value_of_the_wrong_type_is_refused_with_its_line_and_key() {
    let cases = [
        (
            "insecure-loopback = \"yes\"\n",
            "`insecure-loopback` must be true or false, not string",
        ),
        (
            "rate-limit = 1\nlisten = [\"a:1\", \"b:2\"]\n",
            "line 2: `listen` must be one value",
        ),
        (
            "hostname = { a = 1 }\n",
            "line 1: `hostname` must be a value",
        ),
        (
            "hostname = [[\"a\"]]\n",
            "line 1: `hostname` must be a list of values, not array",
        ),
        ("[serve]\nlisten = \"a:1\"\n", "line 1: unknown key `serve`"),
    ];
    for (text, expected) in cases {
        let error = refused(&testd(text, &[], &[]));
        assert!(error.contains(expected), "{text:?}: {error}");
    }
}

#[test]
fn an_invalid_value_is_refused_with_the_parsers_reason_even_when_a_flag_overrides_it() {
    let run = testd(
        "\nheartbeat-interval = \"soon\"\n",
        &["--heartbeat-interval", "3s"],
        &[],
    );
    let error = refused(&run);
    assert_eq!(
        error,
        format!(
            "{} line 2: `heartbeat-interval` = \"soon\" is invalid: 'soon' is not a duration \
             like 2s (see --help)",
            run.path
        )
    );
    let error = refused(&testd("rate-limit = -1\n", &[], &[]));
    assert!(
        error.contains("line 1: `rate-limit` = -1 is invalid"),
        "{error}"
    );
}

#[test]
fn underscores_stand_for_dashes_and_aliases_are_keys_but_a_key_is_set_once() {
    let run = testd("rate_limit = 9\napi_tokens_file = \"/etc/t\"\n", &[], &[]);
    let cli = parsed(run).cli;
    assert_eq!(cli.rate_limit, 9);
    assert_eq!(cli.api_tokens_file, Some("/etc/t".into()));
    let error = refused(&testd("rate-limit = 1\n\nrate_limit = 2\n", &[], &[]));
    assert!(
        error.ends_with("line 3: `rate-limit` is set twice (first at line 1)"),
        "{error}"
    );
}

#[test]
fn repeatable_flags_take_arrays_or_one_value_and_switches_take_booleans() {
    let cli = parsed(testd(
        "hostname = [\"a\", \"-b\"]\napi-token = \"ci=x\"\ninsecure-loopback = true\n",
        &[],
        &[],
    ))
    .cli;
    assert_eq!(cli.hostnames, ["a", "-b"], "a value may start with a dash");
    assert_eq!(cli.api_tokens, ["ci=x"]);
    assert!(cli.insecure_loopback);
    let cli = parsed(testd("insecure-loopback = false\n", &[], &[])).cli;
    assert!(!cli.insecure_loopback);
}

#[test]
fn actions_and_the_config_flag_itself_are_not_settings() {
    for key in ["print-inventory", "config", "print-config"] {
        let error = refused(&testd(&format!("{key} = true\n"), &[], &[]));
        assert!(
            error.ends_with(&format!(
                "line 1: `{key}` is not a setting the file can hold; pass --{key} on the command line"
            )),
            "{error}"
        );
    }
}

#[test]
fn a_missing_file_named_explicitly_is_an_error_naming_it_and_the_standard_one_is_optional() {
    let argv = |args: &[&str]| args.iter().map(OsString::from).collect::<Vec<_>>();
    let missing = "/nonexistent/tollgate-tests/given.toml";
    for (args, env) in [
        (argv(&["testd", "--config", missing]), env_of(&[])),
        (argv(&["testd"]), env_of(&[("TESTD_CONFIG", missing)])),
    ] {
        match try_parse_from::<Testd>(&DAEMON, args, &env) {
            Err(ParseError::Config(error @ ConfigError::Missing { .. })) => {
                assert!(error.to_string().contains(missing), "{error}");
            }
            other => panic!("expected a missing file, got {other:?}"),
        }
    }
    match try_parse_from::<Testd>(&DAEMON, argv(&["testd"]), &env_of(&[])) {
        Ok(Outcome::Run(parsed)) => assert_eq!(parsed.cli.listen, "127.0.0.1:7800"),
        other => panic!("expected defaults, got {other:?}"),
    }
}

#[test]
fn bad_toml_is_refused_with_its_place() {
    let error = refused(&testd("listen = \"a:1\"\nrate-limit = \n", &[], &[]));
    assert!(error.contains("is not valid TOML"), "{error}");
    assert!(error.contains("line 2"), "{error}");
}

#[test]
fn print_config_shows_every_key_its_origin_and_masks_secrets() {
    let run = testd(
        "database = \"postgres://tg:s3cret@db:5432/tollgate\"\napi-token = [\"ci:viewer=tok123\"]\n\
         api-token-file = \"/etc/tollgate/tokens\"\n",
        &["--print-config", "--listen", "0.0.0.0:7800"],
        &[],
    );
    let text = printed(&run);
    let file = format!("# file {}", run.path);
    for line in [
        "listen = \"0.0.0.0:7800\" # flag".to_owned(),
        format!("database = \"postgres://tg:***@db:5432/tollgate\" {file}"),
        "rate-limit = 20 # default".to_owned(),
        "heartbeat-interval = \"2s\" # default".to_owned(),
        "hostname = [] # default".to_owned(),
        "insecure-loopback = false # default".to_owned(),
        format!("api-token = [\"ci:viewer=***\"] {file}"),
        format!("api-token-file = \"/etc/tollgate/tokens\" {file}"),
    ] {
        assert!(
            text.lines().any(|printed| printed == line),
            "{line:?} in\n{text}"
        );
    }
    assert!(
        !text.contains("s3cret") && !text.contains("tok123"),
        "{text}"
    );
    assert!(!text.contains("print-inventory"), "{text}");

    let text = printed(&testd(
        "",
        &["--print-config"],
        &[(
            "TESTD_DATABASE_URL",
            "postgres://u:pw@h/db?sslmode=require&password=pw2",
        )],
    ));
    assert!(
        text.contains(
            "database = \"postgres://u:***@h/db?sslmode=require&password=***\" # env TESTD_DATABASE_URL"
        ),
        "{text}"
    );
}

#[test]
fn the_printed_configuration_reads_back_as_the_same_configuration() {
    let first = printed(&testd(
        "rate-limit = 3\nhostname = [\"a\", \"b\"]\ninsecure-loopback = true\n",
        &["--print-config", "--heartbeat-interval", "5s"],
        &[],
    ));
    let again = printed(&testd(&first, &["--print-config"], &[]));
    let values = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| line.split(" # ").next().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(values(&first), values(&again), "{first}\n{again}");
}

#[test]
fn only_the_configured_subcommand_reads_the_file() {
    let argv = |args: &[&str]| args.iter().map(OsString::from).collect::<Vec<_>>();
    let env = env_of(&[("TESTD_CONFIG", "/nonexistent/tollgate-tests/given.toml")]);
    match try_parse_from::<Testctl>(&SERVE, argv(&["testctl", "other"]), &env) {
        Ok(Outcome::Run(parsed)) => {
            assert!(matches!(parsed.cli.command, TestctlCommand::Other { .. }))
        }
        other => panic!("expected `other` to run without a file, got {other:?}"),
    }
    match try_parse_from::<Testctl>(&SERVE, argv(&["testctl", "serve"]), &env) {
        Err(ParseError::Config(ConfigError::Missing { .. })) => {}
        other => panic!("expected `serve` to read the file, got {other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.toml");
    std::fs::write(&path, "listen = \"0.0.0.0:1\"\n").unwrap();
    let args = argv(&["testctl", "serve", "--config", path.to_str().unwrap()]);
    match try_parse_from::<Testctl>(&SERVE, args, &env_of(&[])) {
        Ok(Outcome::Run(Parsed {
            cli: Testctl {
                command: TestctlCommand::Serve(serve),
            },
            ..
        })) => assert_eq!(serve.listen, "0.0.0.0:1"),
        other => panic!("expected `serve` with the file's listen, got {other:?}"),
    }
}

#[test]
fn clap_refusing_a_file_setting_with_a_flag_notes_where_the_setting_came_from() {
    let run = testd(
        "\ntls-cert = \"/etc/cert.pem\"\n",
        &["--insecure-loopback"],
        &[],
    );
    match &run.outcome {
        Err(ParseError::Command { error, notes }) => {
            assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
            assert_eq!(
                notes,
                &[format!("--tls-cert came from {} line 2", run.path)]
            );
        }
        other => panic!("expected clap's conflict, got {other:?}"),
    }
}

#[test]
fn help_ignores_a_broken_file() {
    let run = testd("nonsense = 1\n", &["--help"], &[]);
    match &run.outcome {
        Err(ParseError::Command { error, .. }) => {
            assert_eq!(error.kind(), clap::error::ErrorKind::DisplayHelp);
            let help = error.render().to_string();
            assert!(help.contains("--config <FILE>"), "{help}");
            assert!(help.contains("--print-config"), "{help}");
        }
        other => panic!("expected the help, got {other:?}"),
    }
}
