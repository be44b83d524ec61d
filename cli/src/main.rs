//! `tollgate`: the release manager's and lab operator's command line. A gRPC client of the
//! controller (plus `plan validate` and `gate validate`, which work offline), and `tollgate demo`,
//! which runs the real controller and agent binaries as child processes.

mod args;
mod client;
mod clock;
mod commands;
mod credentials;
mod demo;
mod output;
mod pages;

use std::process::ExitCode;

/// An error whose message was already printed; only its exit code is left to apply.
#[derive(Debug)]
pub struct Reported(pub u8);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "failed with exit code {}", self.0)
    }
}

impl std::error::Error for Reported {}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = args::Cli::command().get_matches();
    // Read before the command runs, so an error can be printed the way the caller asked for.
    let format = output::requested_format(&matches);
    let cli = match args::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = exit_code(&error);
            if error.downcast_ref::<Reported>().is_some() {
                // Its message was already printed.
            } else if format == output::Format::Json {
                // Scripts read stdout: the error is JSON there too, with the same exit code.
                println!("{}", error_json(&error, code));
            } else {
                eprintln!("error: {error:#}");
            }
            ExitCode::from(code)
        }
    }
}

/// `{"error": {"code", "message", "fields", "exit_code"}}`: `code` is the controller's gRPC
/// status in snake case (`invalid_argument`, `failed_precondition`, `not_found`, ...),
/// `invalid_file` for a plan or gate file with problems, `error` for anything else; `fields`
/// lists each bad field with what is wrong (file problems name `FILE:LINE:COLUMN FIELD`).
fn error_json(error: &anyhow::Error, exit_code: u8) -> serde_json::Value {
    let mut code = "error".to_owned();
    let mut fields = Vec::new();
    for cause in error.chain() {
        if let Some(rpc) = cause.downcast_ref::<client::RpcError>() {
            code = client::code_name(rpc.code).to_owned();
            fields = rpc
                .fields
                .iter()
                .map(|f| serde_json::json!({"field": f.field, "message": f.message}))
                .collect();
            break;
        }
        if let Some(problems) = cause.downcast_ref::<tollgate_domain::spec::SpecErrors>() {
            code = "invalid_file".to_owned();
            fields = problems
                .0
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "field": p.field,
                        "file": p.file,
                        "line": p.line,
                        "column": p.column,
                        "message": p.message,
                    })
                })
                .collect();
            break;
        }
    }
    serde_json::json!({
        "error": {
            "code": code,
            "message": format!("{error:#}"),
            "fields": fields,
            "exit_code": exit_code,
        }
    })
}

/// The exit code an error maps to: the code of an already reported error, the gRPC status
/// mapping for a controller answer, 1 for everything else.
fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(Reported(code)) = cause.downcast_ref::<Reported>() {
            return *code;
        }
        if let Some(rpc) = cause.downcast_ref::<client::RpcError>() {
            return client::exit_code_for(rpc.code);
        }
    }
    1
}
