//! One thin file per subcommand: build the inputs, call the library, render the result.

mod bench;
mod exec;
mod plan;
mod remote;

use crate::cli::{Cli, Command};

/// Runs the chosen subcommand.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Exec(args) => exec::run(args),
        Command::DefaultConfig => {
            let cfg = linesweep_worker::config::ShardConfig::default();
            crate::render::emit(&toml::to_string_pretty(&cfg)?)?;
            Ok(())
        }
        Command::Bench(args) => bench::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Serve(args) => remote::serve(args),
        Command::Submit(args) => remote::submit(args),
        Command::Status(args) => remote::status(args),
    }
}
