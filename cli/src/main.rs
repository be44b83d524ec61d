//! `tollgate`: the release manager's and lab operator's command line. A gRPC client of the
//! controller (plus `plan validate` and `gate validate`, which work offline), and `tollgate demo`,
//! which runs the real controller and agent binaries as child processes.

mod args;
mod client;
mod clock;
mod commands;
mod demo;
mod json;
mod output;

use clap::Parser;
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
    let cli = args::Cli::parse();
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
            if error.downcast_ref::<Reported>().is_none() {
                eprintln!("error: {error:#}");
            }
            ExitCode::from(code)
        }
    }
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
