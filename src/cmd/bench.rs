//! `linesweep bench`: the default shard (or a given one), timed per phase.
//!
//! Speed is measured here and never in tests. Each repetition is a full `exec` into a fresh
//! temporary directory, so snapshot and Parquet writes are included in the totals.

use anyhow::Context;
use linesweep_worker::config::ShardConfig;
use linesweep_worker::engine::NoProgress;
use linesweep_worker::storage::Storage;
use linesweep_worker::{device, exec};

use crate::cli::BenchArgs;
use crate::render;

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        Some(crate::cli::BenchWhat::Coordinator(c)) => return super::bench_coordinator::run(c),
        Some(crate::cli::BenchWhat::Model(m)) => return super::bench_model::model(m),
        Some(crate::cli::BenchWhat::Decode(d)) => return super::bench_model::decode(d),
        None => {}
    }
    if args.kernels {
        let device = device::parse(&args.device)?;
        let k = linesweep_worker::engine::kernels::measure(&device.device);
        crate::render::emit(&format!(
            "{}\n",
            serde_json::to_string(&serde_json::json!({
                "impl": "linesweep", "device": device.name,
                "matmul_n": k.matmul_n, "matmul_gflops": k.matmul_gflops,
                "mlp_fwd_bwd_batch": k.mlp_batch, "mlp_fwd_bwd_gflops": k.mlp_gflops,
            }))?
        ))?;
        return Ok(());
    }
    let cfg = match &args.config {
        Some(path) => ShardConfig::from_file(path)?,
        None => ShardConfig::default(),
    };
    let device = device::parse(&args.device)?;
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let sweep = linesweep_worker::storage::ids::SweepName::parse("bench")?;
    for rep in 0..args.repeat.max(1) {
        let dir = tempfile::tempdir().context("creating a scratch directory")?;
        let storage = Storage::open(&dir.path().display().to_string())?;
        let started = std::time::Instant::now();
        let report = exec::run(
            &cfg,
            &device,
            &storage,
            &sweep,
            exec::Placement::Direct,
            0,
            &NoProgress,
        )?;
        let wall = started.elapsed().as_secs_f64();
        let mut j = render::json(report.shard.as_str(), "bench", &report.outcome);
        j["repetition"] = rep.into();
        j["threads"] = threads.into();
        j["wall_seconds"] = wall.into();
        j["impl"] = "linesweep".into();
        crate::render::emit(&format!("{}\n", serde_json::to_string(&j)?))?;
    }
    Ok(())
}
