//! One thin file per subcommand: build the inputs, call the library, render the result.

mod bench;
mod exec;

use crate::cli::{Cli, Command};

/// Runs the chosen subcommand.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Exec(args) => exec::run(args),
        Command::DefaultConfig => {
            let cfg = linesweep_worker::config::ShardConfig::default();
            print!("{}", toml::to_string_pretty(&cfg)?);
            Ok(())
        }
        Command::Bench(args) => bench::run(args),
    }
}
