//! One module per command group; each holds the calls it makes and its pure text formatting.

pub mod audit;
pub mod gate;
pub mod issue;
pub mod maintenance;
pub mod node;
pub mod pdf;
pub mod plan;
pub mod promote;
pub mod release;
pub mod report;
pub mod report_keys;
pub mod rollout;
pub mod run;
pub mod status;
pub mod telemetry;
pub mod token;
pub mod waiver;

use crate::args::{Cli, Command, GateCommand, PlanCommand, ReleaseCommand, RolloutCommand};
use crate::client::Controller;

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli {
        controller,
        token,
        token_file,
        ca_file,
        command,
    } = cli;
    let (url, config_ca_file) =
        settle_controller_and_token(controller, token, token_file, &command)?;
    // --ca-file (or TOLLGATE_CA_FILE) wins over the config file's ca_file.
    let target = crate::client::Target {
        url,
        ca_file: ca_file.or(config_ca_file),
    };
    // Offline commands and the demo never touch --controller, so they work without one.
    match command {
        Command::Plan(PlanCommand::Validate { file, output }) => {
            plan::validate(&file, output.output)
        }
        Command::Gate(GateCommand::Validate { file, output }) => {
            gate::validate(&file, output.output)
        }
        Command::Rollout(RolloutCommand::Validate { file, output }) => {
            rollout::validate(&file, output.output)
        }
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "tollgate", &mut std::io::stdout());
            Ok(())
        }
        Command::Node(command) => node::run(&Controller::connect(&target).await?, command).await,
        Command::Maintenance(command) => {
            maintenance::run(&Controller::connect(&target).await?, command).await
        }
        Command::Release(ReleaseCommand::Create {
            name,
            components,
            description,
            file,
            output,
        }) => {
            let (request, plan) =
                release::create_request(name, &components, description, file.as_deref())?;
            let created =
                release::create(&Controller::connect(&target).await?, request, plan).await?;
            release::print_release(&created, output.output)
        }
        Command::Release(command) => {
            release::run(&Controller::connect(&target).await?, command).await
        }
        Command::Plan(command) => plan::run(&Controller::connect(&target).await?, command).await,
        Command::Gate(command) => gate::run(&Controller::connect(&target).await?, command).await,
        Command::Run(command) => run::run(&Controller::connect(&target).await?, command).await,
        Command::Rollout(command) => {
            rollout::run(&Controller::connect(&target).await?, command).await
        }
        Command::Promote(args) => promote::run(&Controller::connect(&target).await?, args).await,
        Command::Waive(args) => waiver::waive(&Controller::connect(&target).await?, args).await,
        Command::Waiver(command) => {
            waiver::run(&Controller::connect(&target).await?, command).await
        }
        Command::Demote(args) => waiver::demote(&Controller::connect(&target).await?, args).await,
        Command::Halt(args) => waiver::halt(&Controller::connect(&target).await?, args).await,
        Command::Resume(args) => waiver::resume(&Controller::connect(&target).await?, args).await,
        Command::Audit(command) => audit::run(&Controller::connect(&target).await?, command).await,
        Command::Issue(command) => issue::run(&Controller::connect(&target).await?, command).await,
        Command::Token(command) => token::run(&Controller::connect(&target).await?, command).await,
        Command::Status(args) => status::report(&Controller::connect(&target).await?, args).await,
        Command::Note(command) => status::note(&Controller::connect(&target).await?, command).await,
        // `report verify` is offline: a customer checks a file without any controller.
        Command::Report(args) => report::dispatch(&target, args).await,
    }
}

/// The controller URL (`--controller`, `TOLLGATE_CONTROLLER`, the config file, the default)
/// and, for a command that calls the controller, the API token every call carries; with the
/// config file's `ca_file`, if any.
fn settle_controller_and_token(
    controller: Option<String>,
    token: Option<String>,
    token_file: Option<std::path::PathBuf>,
    command: &Command,
) -> anyhow::Result<(String, Option<std::path::PathBuf>)> {
    // Offline commands and the demo read neither the config file nor a token: a bad one must
    // not stop them.
    let offline = matches!(
        command,
        Command::Plan(PlanCommand::Validate { .. })
            | Command::Gate(GateCommand::Validate { .. })
            | Command::Rollout(RolloutCommand::Validate { .. })
            | Command::Demo(_)
            | Command::Completions { .. }
            | Command::Report(crate::args::ReportArgs {
                command: Some(crate::args::ReportCommand::Verify(_)),
                ..
            })
    );
    let config_path = crate::credentials::config_path(
        std::env::var("XDG_CONFIG_HOME").ok().as_deref(),
        std::env::var("HOME").ok().as_deref(),
    );
    let config = match &config_path {
        Some(path) if !offline => crate::credentials::read_config(path)?,
        _ => crate::credentials::Config::default(),
    };
    let url = controller
        .or(config.controller)
        .unwrap_or_else(|| crate::args::DEFAULT_CONTROLLER.to_owned());
    if !offline {
        crate::client::set_token(crate::credentials::resolve_token(
            crate::credentials::Sources {
                flag: token,
                env: std::env::var("TOLLGATE_TOKEN").ok(),
                file: token_file,
                config_file: config.token_file,
            },
        )?);
    }
    Ok((url, config.ca_file))
}

/// Prints what `plan validate` or `gate validate` found in `file_name`: the summary of what
/// parsed (`json` or `text`), or every located problem (on stderr with a count, exit code 1;
/// with `-o json`, on stdout as the JSON error, one field each).
fn print_validated<T>(
    file_name: &str,
    parsed: Result<T, tollgate_domain::spec::SpecErrors>,
    format: crate::output::Format,
    json: impl Fn(&T) -> serde_json::Value,
    text: impl Fn(&str, &T) -> String,
) -> anyhow::Result<()> {
    use crate::output::Format;
    match parsed {
        Ok(parsed) => match format {
            Format::Json => crate::output::print_json(&json(&parsed)),
            Format::Text => {
                print!("{}", text(file_name, &parsed));
                Ok(())
            }
        },
        Err(errors) if format == Format::Json => Err(errors.into()),
        Err(errors) => {
            eprintln!("{errors}");
            let n_errors = errors.0.len();
            eprintln!(
                "{file_name}: {n_errors} problem{}",
                if n_errors == 1 { "" } else { "s" }
            );
            Err(crate::Reported(1).into())
        }
    }
}
