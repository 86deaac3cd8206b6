//! One shard, top to bottom: seed → data → model → train with snapshots → line and
//! trajectory evaluation → metrics.
//!
//! **Architecture invariant:** the engine never touches storage, the network or result
//! formats. Snapshots leave through a [`SnapshotSink`], progress through [`Progress`], and the
//! outcome is plain data ([`ShardOutcome`]) that the caller encodes and stores.

pub mod eval;
pub mod kernels;
pub mod line;
pub mod monotone_path;
pub mod pair;
pub mod parity;
pub mod plane;
pub mod train;

use std::time::Instant;

use crate::config::{self, ShardConfig};
use crate::data::{self, DataError};
use crate::device::ComputeDevice;
use crate::science::{self, LineShape, Projector};
use crate::snapshot::SnapshotError;
pub use eval::LossAcc;
pub use line::LinePoint;
pub use monotone_path::PathRow;
pub use plane::{PcaTrajectory, PlanePoint};
pub use train::{Checkpoint, Resume, SampleMeta, SnapshotSink, TrajectorySample};

/// A shard could not run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The dataset is missing or corrupt.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A snapshot could not be captured or encoded.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The snapshot sink failed (storage).
    #[error("storing a snapshot failed: {0}")]
    Sink(String),
    /// The config is inconsistent with the data.
    #[error("invalid config: {0}")]
    Config(String),
    /// A committed shard's output that this shard reads (a parent's snapshot, a pair's θ_c)
    /// is missing, damaged or cannot be verified: deterministic until that shard is rerun.
    #[error("{0}")]
    Committed(String),
    /// A checkpoint could not be applied.
    #[error("resuming from a checkpoint: {0}")]
    Resume(String),
    /// Stopped on request ([`Progress::interrupted`]) after `step` steps.
    #[error("interrupted at step {step}")]
    Interrupted { step: u64 },
}

/// Phases that report progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Optimizer steps.
    Training,
    /// α points of the line.
    Line,
}

/// Receives progress; implemented by the CLI's progress bars and, later, by worker heartbeats.
pub trait Progress: Sync {
    /// A phase starts with `total` units of work.
    fn start(&self, phase: Phase, total: u64);
    /// `n` units done; `loss` is the latest training loss, when there is one.
    fn advance(&self, n: u64, loss: Option<f64>);
    /// The current phase is over.
    fn finish(&self);
    /// Whether the caller asked the run to stop (SIGTERM under a worker); checked between
    /// training steps.
    fn interrupted(&self) -> bool {
        false
    }
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: Phase, _: u64) {}
    fn advance(&self, _: u64, _: Option<f64>) {}
    fn finish(&self) {}
}

/// The evaluation splits, in the order of [`LinePoint::split`].
pub const SPLITS: [&str; 2] = ["train", "test"];

/// One row of the trajectory: a snapshot projected onto the init→final line.
#[derive(Debug, Clone, PartialEq)]
pub struct TrajectoryRow {
    /// Optimizer steps taken.
    pub step: u64,
    /// Fractional epoch.
    pub epoch: f64,
    /// (θ_t − θ_i)·u.
    pub alpha_raw: f64,
    /// alpha_raw/‖θ_c − θ_i‖.
    pub alpha_frac: f64,
    /// Distance of θ_t from the line.
    pub beta: f64,
    /// Mini-batch training loss at t.
    pub batch_loss: f64,
    /// Full-train-set loss at θ_t, when requested.
    pub train_loss: Option<f64>,
    /// Coordinates in the PCA plane (units of ‖θ_i − θ_c‖), when it was asked for.
    pub pca: Option<(f64, f64)>,
}

/// One line on one split, summarised: its shape and barriers.
#[derive(Debug, Clone, PartialEq)]
pub struct LineSummary {
    /// The line's start label.
    pub start: String,
    /// Batch-norm mode (`None` without batch norm).
    pub bn_mode: Option<config::BnMode>,
    /// Index of the split in [`SPLITS`].
    pub split: usize,
    /// Grid points on [0, 1].
    pub points: u64,
    /// Loss and accuracy at α = 0 and α = 1.
    pub ends: [Option<LossAcc>; 2],
    /// Δ_min and monotonicity of the loss.
    pub shape: Option<LineShape>,
    /// Barrier of the loss.
    pub loss_barrier: Option<science::Barrier>,
    /// Barrier of the error (1 − accuracy).
    pub error_barrier: Option<science::Barrier>,
}

/// Wall-clock seconds per phase.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Reading and normalising the dataset.
    pub data: f64,
    /// Training, including waiting for the last snapshots to be stored.
    pub train: f64,
    /// The attempt's first training step (part of `train`): where GPU backends compile and
    /// autotune the training kernels.
    pub warmup: f64,
    /// Capturing and storing snapshots, on a writer thread that overlaps training.
    pub snapshots: f64,
    /// The interpolation line.
    pub line: f64,
    /// The trajectory projection.
    pub trajectory: f64,
    /// The 2-D planes (directions and every point).
    pub plane: f64,
    /// The Safran–Shamir path.
    pub path: f64,
    /// Everything.
    pub total: f64,
}

/// Per-run metrics (the `runs` table without the config columns).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunMetrics {
    /// Training stopped on a non-finite loss.
    pub diverged: bool,
    /// The step whose loss was not finite.
    pub diverged_step: Option<u64>,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Trainable parameters.
    pub parameters: u64,
    /// Training examples used.
    pub train_examples: u64,
    /// Examples per evaluated split: train, test.
    pub eval_examples: [u64; 2],
    /// Shape of the train and test lines on [0, 1].
    pub shape: [Option<LineShape>; 2],
    /// ‖θ_c − θ_i‖, ‖θ_i‖, ‖θ_c‖ over parameters.
    pub dist_init_final: Option<f64>,
    /// ‖θ_i‖.
    pub norm_init: Option<f64>,
    /// ‖θ_c‖.
    pub norm_final: Option<f64>,
    /// Loss and accuracy of θ_i on train and test (the α = 0 points).
    pub initial: [Option<LossAcc>; 2],
    /// Loss and accuracy of θ_c on train and test (the α = 1 points).
    pub last: [Option<LossAcc>; 2],
    /// ln K.
    pub ln_k: f64,
    /// The α of the lowest train loss on the grid.
    pub alpha_min_train_loss: Option<f64>,
    /// Training samples per second (wall time of the training phase).
    pub train_samples_per_s: f64,
    /// α points per second (each point covers every split), over all lines.
    pub line_points_per_s: f64,
    /// Images skipped because they did not decode (training and evaluation).
    pub skipped_images: u64,
    /// Fraction of the trajectory's variance along each PCA axis (with the pca plane).
    pub pca_explained: Option<[f64; 2]>,
    /// Plane points per second (each point covers every split).
    pub plane_points_per_s: Option<f64>,
    /// Phase timings.
    pub timings: Timings,
}

/// Everything one shard produced, ready to be encoded.
#[derive(Debug, Clone)]
pub struct ShardOutcome {
    /// Per-run metrics.
    pub metrics: RunMetrics,
    /// Points of the line (empty for a diverged run).
    pub line: Vec<LinePoint>,
    /// Projected snapshots (empty for a diverged run).
    pub trajectory: Vec<TrajectoryRow>,
    /// Every line per split, summarised (empty for a diverged run).
    pub lines: Vec<LineSummary>,
    /// Points of the planes (empty unless `[eval.plane]`).
    pub plane: Vec<PlanePoint>,
    /// The Safran–Shamir path (empty unless `eval.monotone_path`).
    pub path: Vec<PathRow>,
    /// Name of the device the shard ran on.
    pub device: String,
    /// The steps of the snapshots the lines use: θ_i, θ_c and each start.
    pub line_steps: Vec<u64>,
}

/// Runs one shard on `device`.
pub fn run_shard(
    cfg: &ShardConfig,
    target: &ComputeDevice,
    sink: &mut (dyn SnapshotSink + Send),
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

    let t = Instant::now();
    let trajectory_set = cfg.eval.trajectory_train_loss.then_some(&sets[0]);
    let trained = train::train(
        cfg,
        device,
        &data.train,
        trajectory_set,
        data.classes,
        sink,
        progress,
    )?;
    timings.train = t.elapsed().as_secs_f64();
    timings.snapshots = trained.snapshot_seconds;
    timings.warmup = trained.warmup_seconds;

    let mut metrics = RunMetrics {
        diverged: trained.diverged_at.is_some(),
        diverged_step: trained.diverged_at,
        steps: trained.steps,
        parameters: trained.parameter_count as u64,
        train_examples: data.train.len() as u64,
        eval_examples: [data.eval_train.len() as u64, data.test.len() as u64],
        ln_k: science::ln_k(data.classes),
        skipped_images: data.skipped_images + trained.skipped_images,
        ..RunMetrics::default()
    };
    metrics.train_samples_per_s = (trained.steps as f64 / trained.steps_per_epoch.max(1) as f64)
        * data.train.len() as f64
        / timings.train.max(1e-9);

    let measured = if metrics.diverged {
        tracing::warn!("the run diverged: no line and no trajectory are evaluated");
        Measured::default()
    } else {
        let eval = Evaluation {
            cfg,
            grid: &grid,
            sets: [&sets[0], &sets[1]],
            classes: data.classes,
            eval_train: &data.eval_train,
            device,
        };
        measure(&eval, &trained, &mut metrics, &mut timings, sink, progress)?
    };
    timings.total = t_all.elapsed().as_secs_f64();
    metrics.timings = timings;
    let mut line_steps = vec![0, trained.steps];
    line_steps.extend(
        cfg.start_points()
            .into_iter()
            .map(|(_, p)| p.step(trained.steps_per_epoch)),
    );
    Ok(ShardOutcome {
        metrics,
        line: measured.line,
        trajectory: measured.trajectory,
        lines: measured.lines,
        plane: measured.plane,
        path: measured.path,
        device: target.name.clone(),
        line_steps,
    })
}

/// What every shard reads before it computes: the α grid, the data and its evaluation sets.
struct Prepared {
    grid: science::AlphaGrid,
    data: data::Loaded,
    /// Train (the evaluation subset) and test, in [`SPLITS`]'s order.
    sets: [eval::EvalSet; 2],
    /// With the data phase filled in.
    timings: Timings,
}

/// The grid and the precision are checked before any data is read.
fn prepare(cfg: &ShardConfig, target: &ComputeDevice) -> Result<Prepared, EngineError> {
    let grid = cfg
        .alpha_grid()
        .map_err(|e| EngineError::Config(e.to_string()))?;
    supported_precision(cfg, target)?;
    let t = Instant::now();
    let data = data::load(&cfg.data, cfg.eval.max_examples)?;
    let sets = [
        eval::EvalSet::new(&data.eval_train, cfg.eval.batch_size, &target.device),
        eval::EvalSet::new(&data.test, cfg.eval.batch_size, &target.device),
    ];
    let timings = Timings {
        data: t.elapsed().as_secs_f64(),
        ..Timings::default()
    };
    tracing::info!(
        dataset = data.name,
        train = data.train.len(),
        eval_train = data.eval_train.len(),
        eval_test = data.test.len(),
        "data loaded"
    );
    Ok(Prepared {
        grid,
        data,
        sets,
        timings,
    })
}

/// Refuses a precision the device cannot compute in.
fn supported_precision(cfg: &ShardConfig, target: &ComputeDevice) -> Result<(), EngineError> {
    let precision = cfg.train.precision;
    if crate::model::precision::supported(&target.device, precision) {
        return Ok(());
    }
    Err(EngineError::Config(format!(
        "train.precision = \"{}\": the device {} cannot compute in it; use \"f32\"",
        precision.as_str(),
        target.name
    )))
}

/// The fixed set of training examples `recompute` re-estimates batch-norm statistics from,
/// in batches of the training batch size; `None` unless a mode recomputes.
fn recompute_set(
    cfg: &ShardConfig,
    modes: &[Option<config::BnMode>],
    eval_train: &data::Split,
    device: &burn::prelude::Device,
) -> Option<eval::EvalSet> {
    modes.contains(&Some(config::BnMode::Recompute)).then(|| {
        let n = (cfg.eval.bn_batches * cfg.train.batch_size).min(eval_train.len());
        let idx: Vec<usize> = (0..n).collect();
        eval::EvalSet::new(&eval_train.select(&idx), cfg.train.batch_size, device)
    })
}

/// What a shard evaluates after training, and on what.
struct Evaluation<'a> {
    cfg: &'a ShardConfig,
    grid: &'a science::AlphaGrid,
    sets: [&'a eval::EvalSet; 2],
    classes: usize,
    eval_train: &'a data::Split,
    device: &'a burn::prelude::Device,
}

/// Everything measured on a trained (not diverged) network.
#[derive(Default)]
struct Measured {
    line: Vec<LinePoint>,
    trajectory: Vec<TrajectoryRow>,
    lines: Vec<LineSummary>,
    plane: Vec<PlanePoint>,
    path: Vec<PathRow>,
}

/// The lines, their summaries, the trajectory, and when asked the planes and the monotone
/// path.
fn measure(
    ev: &Evaluation<'_>,
    trained: &train::Trained,
    metrics: &mut RunMetrics,
    timings: &mut Timings,
    sink: &mut (dyn SnapshotSink + Send),
    progress: &dyn Progress,
) -> Result<Measured, EngineError> {
    let cfg = ev.cfg;
    let t = Instant::now();
    let modes: Vec<Option<config::BnMode>> = if trained.last.has_batch_norm() {
        cfg.eval.bn_modes.iter().copied().map(Some).collect()
    } else {
        vec![None]
    };
    let recompute_set = recompute_set(cfg, &modes, ev.eval_train, ev.device);
    let plane_points = cfg
        .eval
        .plane
        .as_ref()
        .map_or(0, |p| (p.points * p.points * p.kinds.len()) as u64);
    let path_work = if cfg.eval.monotone_path {
        monotone_path::work(ev.grid)
    } else {
        0
    };
    progress.start(
        Phase::Line,
        (ev.grid.len() * trained.starts.len() * modes.len()) as u64 + plane_points + path_work,
    );
    let mut line = Vec::new();
    for (label, start) in &trained.starts {
        for &bn_mode in &modes {
            let spec = line::Line {
                start_label: label,
                start,
                end: &trained.last,
                bn_mode,
                bn_batches: recompute_set.as_ref(),
                precision: cfg.train.precision,
            };
            line.extend(line::evaluate_line(&spec, ev.grid, &ev.sets, progress));
        }
    }
    timings.line = t.elapsed().as_secs_f64();
    metrics.line_points_per_s = line.len() as f64 / 2.0 / timings.line.max(1e-9);
    // The run's line metrics describe the first line: first start, first mode.
    let primary: Vec<LinePoint> = match trained.starts.first() {
        Some((label, _)) => line
            .iter()
            .filter(|p| p.start == *label && p.bn_mode == modes[0])
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    line_metrics(metrics, ev.grid, &primary);
    let lines = summarize_lines(ev.grid, &line);

    let t = Instant::now();
    let path = if cfg.eval.monotone_path {
        let spec = line::Line {
            start_label: "init",
            start: &trained.init,
            end: &trained.last,
            bn_mode: modes[0],
            bn_batches: recompute_set.as_ref(),
            precision: cfg.train.precision,
        };
        monotone_path::evaluate_path(&spec, ev.grid, ev.sets[0], ev.classes, progress)
    } else {
        Vec::new()
    };
    timings.path = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut trajectory = project(&trained.samples);
    if let (Some(first), Some(last)) = (trained.samples.first(), trained.samples.last()) {
        let projector = Projector::new(&first.parameters, &last.parameters);
        metrics.dist_init_final = Some(projector.distance());
        metrics.norm_init = Some(science::projection::norm(&first.parameters));
        metrics.norm_final = Some(science::projection::norm(&last.parameters));
    }
    timings.trajectory = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut plane = Vec::new();
    if let Some(pc) = &cfg.eval.plane {
        let center = crate::snapshot::HostSnapshot::capture(&trained.last, trained.steps)?;
        let init = crate::snapshot::HostSnapshot::capture(&trained.init, 0)?;
        for &kind in &pc.kinds {
            let (dirs, pca) = plane::directions(kind, pc, &center, &init, &trained.samples)?;
            if let Some(pca) = pca {
                metrics.pca_explained = Some(pca.explained);
                for (row, xy) in trajectory.iter_mut().zip(pca.coords) {
                    row.pca = Some(xy);
                }
            }
            let name = |axis: &str| format!("plane-{}-{axis}", kind.as_str());
            sink.direction(&name("x"), &dirs.x)?;
            sink.direction(&name("y"), &dirs.y)?;
            let dx = train::net_from_snapshot(&trained.last, &dirs.x)?;
            let dy = train::net_from_snapshot(&trained.last, &dirs.y)?;
            plane.extend(plane::evaluate_plane(
                &trained.last,
                [&dx, &dy],
                kind,
                pc,
                &ev.sets,
                cfg.train.precision,
                progress,
            ));
        }
        timings.plane = t.elapsed().as_secs_f64();
        metrics.plane_points_per_s = Some(plane.len() as f64 / 2.0 / timings.plane.max(1e-9));
    }
    progress.finish();
    Ok(Measured {
        line,
        trajectory,
        lines,
        plane,
        path,
    })
}

/// One [`LineSummary`] per (start, batch-norm mode, split), in the order the line has them.
fn summarize_lines(grid: &science::AlphaGrid, line: &[LinePoint]) -> Vec<LineSummary> {
    let mut keys: Vec<(&str, Option<config::BnMode>, usize)> = Vec::new();
    for p in line {
        let key = (p.start.as_str(), p.bn_mode, p.split);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .map(|(start, bn_mode, split)| {
            let pts: Vec<&LinePoint> = line
                .iter()
                .filter(|p| p.start == start && p.bn_mode == bn_mode && p.split == split)
                .collect();
            let alphas: Vec<f64> = pts.iter().map(|p| p.alpha).collect();
            let of = |f: fn(&LossAcc) -> f64| -> Vec<f64> {
                pts.iter()
                    .map(|p| p.value.as_ref().map_or(f64::NAN, f))
                    .collect()
            };
            let (loss, error) = (of(|v| v.loss), of(|v| 1.0 - v.accuracy));
            let at = |a: f64| pts.iter().find(|p| p.alpha == a).and_then(|p| p.value);
            LineSummary {
                start: start.to_owned(),
                bn_mode,
                split,
                points: grid
                    .values()
                    .iter()
                    .filter(|a| (0.0..=1.0).contains(*a))
                    .count() as u64,
                ends: [at(0.0), at(1.0)],
                shape: science::shape_on_unit_interval(&alphas, &loss),
                loss_barrier: science::barrier(&alphas, &loss),
                error_barrier: science::barrier(&alphas, &error),
            }
        })
        .collect()
}

fn line_metrics(m: &mut RunMetrics, grid: &science::AlphaGrid, line: &[LinePoint]) {
    for split in 0..SPLITS.len() {
        let pts: Vec<&LinePoint> = line.iter().filter(|p| p.split == split).collect();
        let losses: Vec<f64> = pts
            .iter()
            .map(|p| p.value.map_or(f64::NAN, |v| v.loss))
            .collect();
        m.shape[split] = science::shape_on_unit_interval(grid.values(), &losses);
        let at = |a: f64| pts.iter().find(|p| p.alpha == a).and_then(|p| p.value);
        m.initial[split] = at(0.0);
        m.last[split] = at(1.0);
        if split == 0 {
            m.alpha_min_train_loss = science::alpha_of_min(grid.values(), &losses);
        }
    }
}

/// Projects every snapshot onto the line from the first (θ_i) to the last (θ_c).
fn project(samples: &[TrajectorySample]) -> Vec<TrajectoryRow> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Vec::new();
    };
    let projector = Projector::new(&first.parameters, &last.parameters);
    samples
        .iter()
        .map(|s| {
            let p = projector.project(&s.parameters);
            TrajectoryRow {
                step: s.step,
                epoch: s.epoch,
                alpha_raw: p.alpha_raw,
                alpha_frac: p.alpha_frac,
                beta: p.beta,
                batch_loss: s.batch_loss,
                train_loss: s.train_loss,
                pca: None,
            }
        })
        .collect()
}
