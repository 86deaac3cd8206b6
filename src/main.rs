//! `linesweep`: linear-interpolation (MLI) sweeps of neural-network training.
//!
//! The binary parses the command line, sets up logging and dispatches to `cmd::*`; the work
//! itself lives in the library crates.

mod cli;
mod cmd;
mod progress;
mod render;

use clap::Parser;
use linesweep_worker::child::ExitReason;
use tracing_subscriber::EnvFilter;

/// The GPU stack's crates log through `log` at INFO for every kernel compilation and
/// compiler pass (1.7 million lines in 5 minutes from CubeCL's CPU compiler): held at `warn`
/// unless `LINESWEEP_LOG` asks for more.
const GPU_STACK_QUIET: &str = "cubecl=warn,cubecl_runtime=warn,cubecl_core=warn,\
    cubecl_opt=warn,cubecl_wgpu=warn,cubecl_spirv=warn,cubecl_cuda=warn,cubecl_cpu=warn,\
    cubecl_cpp=warn,burn_cubecl=warn,burn_fusion=warn,burn_cubecl_fusion=warn,wgpu=warn,\
    wgpu_core=warn,wgpu_hal=warn,naga=warn";

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // Under `run` the per-shard lines of the local workers would scroll the progress bars
    // away; their warnings still show.
    let default = match (&cli.command, cli.quiet) {
        (_, true) => "warn",
        (cli::Command::Run(_), false) => "info,linesweep_worker::agent=warn",
        _ => "info",
    };
    let filter = EnvFilter::try_from_env("LINESWEEP_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},{GPU_STACK_QUIET}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    match cmd::dispatch(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<cmd::Interrupted>().is_some() => {
            tracing::warn!("{e}");
            std::process::ExitCode::from(ExitReason::Interrupted.code() as u8)
        }
        Err(e) => {
            // `exec` says why it failed in the child protocol's terms (a worker agent reads
            // the code); everything else exits 1.
            let code = e
                .downcast_ref::<cmd::exec::Failed>()
                .map_or(ExitReason::Application, |f| f.reason)
                .code();
            eprintln!("error: {}", cmd::error_line(&e));
            std::process::ExitCode::from(code as u8)
        }
    }
}
