//! One thin file per subcommand: build the inputs, call the library, render the result.

mod bench;
mod bench_coordinator;
mod bench_model;
mod check_device;
mod data;
pub(crate) mod exec;
mod plan;
mod plot;
mod remote;
mod report;
mod run;
mod worker;

pub use exec::Interrupted;

use crate::cli::{Cli, Command};

/// A config enum (architecture, precision, norm …) from its name on the command line, spelled
/// as in configs; `what` names it in the error, e.g. "precision `x` (f32 or bf16)".
pub(crate) fn config_name<T: serde::de::DeserializeOwned>(
    value: &str,
    what: &str,
) -> anyhow::Result<T> {
    use anyhow::Context;
    serde_json::from_value(serde_json::Value::String(value.to_owned()))
        .with_context(|| format!("unknown {what}"))
}

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
        Command::Run(args) => run::run(args),
        Command::Serve(args) => remote::serve(args),
        Command::Worker(args) => worker::run(args),
        Command::Submit(args) => remote::submit(args),
        Command::Status(args) => remote::status(args),
        Command::Watch(args) => remote::watch(args),
        Command::Retry(args) => remote::retry(args),
        Command::Cancel(args) => remote::cancel(args),
        Command::Workers(args) => remote::workers(args),
        Command::Gc(args) => remote::gc(args),
        Command::Summarize(args) => remote::summarize(args),
        Command::Plot(args) => plot::run(args),
        Command::Report(args) => report::run(args),
        Command::Data(args) => data::run(args),
        Command::CheckDevice(args) => check_device::run(args),
    }
}

/// One line a user can act on: an error's chain of causes, outermost first. Errors that
/// already print their source (`{source}` in their message) are not repeated.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if !line.contains(&cause) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&cause);
        }
    }
    line
}
