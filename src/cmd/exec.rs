//! `linesweep exec`: one shard in this process, no coordinator.

use anyhow::Context;
use linesweep_worker::config::ShardConfig;
use linesweep_worker::storage::Storage;
use linesweep_worker::{device, exec};

use crate::cli::ExecArgs;
use crate::progress::Bars;
use crate::render;

pub fn run(args: ExecArgs) -> anyhow::Result<()> {
    let cfg = ShardConfig::from_file(&args.config)?;
    exec::check_sweep_name(&args.sweep)?;
    let device = device::parse(&args.device)?;
    let storage = Storage::open(&args.out)?;
    let bars = Bars::default();
    let report = exec::run(&cfg, &device, &storage, &args.sweep, &bars)
        .with_context(|| format!("shard from {}", args.config.display()))?;
    if args.json {
        render::emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(&render::json(
                &report.shard,
                &args.sweep,
                &report.outcome
            ))?
        ))?;
    } else {
        render::emit(&render::summary(
            &report.shard,
            &args.sweep,
            storage.root(),
            &report.outcome,
        ))?;
    }
    Ok(())
}
