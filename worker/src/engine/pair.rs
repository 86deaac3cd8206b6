//! A pair shard: the line between the final weights of two trained shards (linear mode
//! connectivity, Frankle et al. 2020), on train and test under each batch-norm mode, with
//! its barriers. Nothing is trained; the two endpoints arrive as host snapshots.

use std::time::Instant;

use super::{
    EngineError, Phase, Prepared, Progress, SPLITS, ShardOutcome, line, line_metrics, prepare,
    recompute_set, summarize_lines, train,
};
use crate::config::ShardConfig;
use crate::device::ComputeDevice;
use crate::science;
use crate::snapshot::HostSnapshot;

/// The start label of a pair's line in the outcome (α = 0 is the pair's `a`).
pub const PAIR_START: &str = "pair";

/// Evaluates the line from `ends[0]` (α = 0) to `ends[1]` (α = 1) with `cfg`'s model, data
/// and `[eval]` settings. The outcome holds the line and its summaries; the run metrics
/// describe the first batch-norm mode's line.
pub fn run_pair(
    cfg: &ShardConfig,
    target: &ComputeDevice,
    ends: [&HostSnapshot; 2],
    progress: &dyn Progress,
) -> Result<ShardOutcome, EngineError> {
    let t_all = Instant::now();
    let device = &target.device;
    let Prepared {
        grid,
        data,
        sets,
        mut timings,
    } = prepare(cfg, target)?;
    let template = train::new_net(&cfg.model, data.train.shape(), data.classes, device, None);
    let a = train::net_from_snapshot(&template, ends[0])?;
    let b = train::net_from_snapshot(&template, ends[1])?;
    let modes: Vec<Option<crate::config::BnMode>> = if a.has_batch_norm() {
        cfg.eval.bn_modes.iter().copied().map(Some).collect()
    } else {
        vec![None]
    };
    let bn_set = recompute_set(cfg, &modes, &data.eval_train, device);
    let t = Instant::now();
    progress.start(Phase::Line, (grid.len() * modes.len()) as u64);
    let mut points = Vec::new();
    for &bn_mode in &modes {
        let spec = line::Line {
            start_label: PAIR_START,
            start: &a,
            end: &b,
            bn_mode,
            bn_batches: bn_set.as_ref(),
            precision: cfg.train.precision,
        };
        points.extend(line::evaluate_line(
            &spec,
            &grid,
            &[&sets[0], &sets[1]],
            progress,
        ));
    }
    progress.finish();
    timings.line = t.elapsed().as_secs_f64();
    let mut metrics = super::RunMetrics {
        parameters: ends[0].parameter_count() as u64,
        eval_examples: [data.eval_train.len() as u64, data.test.len() as u64],
        ln_k: science::ln_k(data.classes),
        line_points_per_s: points.len() as f64 / SPLITS.len() as f64 / timings.line.max(1e-9),
        ..Default::default()
    };
    let primary: Vec<line::LinePoint> = points
        .iter()
        .filter(|p| p.bn_mode == modes[0])
        .cloned()
        .collect();
    line_metrics(&mut metrics, &grid, &primary);
    let lines = summarize_lines(&grid, &points);
    timings.total = t_all.elapsed().as_secs_f64();
    metrics.timings = timings;
    Ok(ShardOutcome {
        metrics,
        line: points,
        trajectory: Vec::new(),
        lines,
        plane: Vec::new(),
        path: Vec::new(),
        device: target.name.clone(),
        line_steps: Vec::new(),
    })
}
