//! Loss and accuracy along θ(α) = (1−α)·θ_start + α·θ_end, under one batch-norm mode.
//!
//! For the MLP the first layer's pre-activation is linear in the weights:
//! x·W(α) + b(α) = (1−α)·(x·W_s + b_s) + α·(x·W_e + b_e). Both endpoint pre-activations are
//! computed once per example and reused at every α, so a point of the line costs everything
//! but the first matmul. For the default MLP (784-1024-1024-10) that removes 43% of the
//! multiply-adds of every point. The cache holds two `[examples, width₀]` f32 matrices; above
//! [`CACHE_LIMIT_BYTES`] the pre-activations are recomputed per point instead (same numbers,
//! more time). Convolutional networks take the full forward pass at every α.

use burn::module::{Module, RunningState};
use burn::prelude::*;
use burn::tensor::FloatDType;

use super::Progress;
use super::eval::{Accumulator, EvalSet, LossAcc};
use crate::config::{BnMode, Precision};
use crate::model::Net;
use crate::science::{AlphaGrid, lerp_modules, lerp_tensor};

/// Largest total size of cached endpoint pre-activations.
pub const CACHE_LIMIT_BYTES: usize = 2 << 30;

/// Why a point of the line has no loss.
pub const NEGATIVE_VARIANCE: &str = "negative interpolated batch-norm running variance";

/// The line evaluated on one split at one α.
#[derive(Debug, Clone, PartialEq)]
pub struct LinePoint {
    /// The line's start (`init`, `step:N`, …), as listed in `eval.starts`.
    pub start: String,
    /// Batch-norm mode; `None` for networks without batch norm.
    pub bn_mode: Option<BnMode>,
    /// Index of the split in the `sets` passed to [`evaluate_line`].
    pub split: usize,
    /// Interpolation coefficient.
    pub alpha: f64,
    /// Loss and accuracy, or `None` when the point is invalid.
    pub value: Option<LossAcc>,
    /// Why the point is invalid.
    pub invalid_reason: Option<&'static str>,
}

/// One line to evaluate.
pub struct Line<'a> {
    /// Label of the start.
    pub start_label: &'a str,
    /// θ at α = 0.
    pub start: &'a Net,
    /// θ at α = 1 (θ_c).
    pub end: &'a Net,
    /// Batch-norm mode (`None` without batch norm).
    pub bn_mode: Option<BnMode>,
    /// Training batches for `recompute` (used in training mode, no gradients).
    pub bn_batches: Option<&'a EvalSet>,
    /// Arithmetic of the forward passes (the interpolation itself is always f32).
    pub precision: Precision,
}

/// Copies `from`'s running statistics into `to` (same architecture).
fn copy_running_stats(to: &mut Net, from: &Net) {
    for (dst, src) in to.norms_mut().into_iter().zip(from.norms()) {
        dst.running_mean = RunningState::new(src.running_mean.value());
        dst.running_var = RunningState::new(src.running_var.value());
    }
}

/// Resets the running statistics of `net` and re-estimates them as the plain average over
/// `batches` of the batch statistics, in training mode on an autodiff device without
/// parameter gradients, with forward passes in `precision`.
pub fn recompute_running_stats(mut net: Net, batches: &EvalSet, precision: Precision) -> Net {
    let Some((x0, _)) = batches.batches.first() else {
        return net;
    };
    let ad = x0.device().autodiff();
    let mut m = net.clone().to_device(&ad).train().no_grad();
    if precision != Precision::F32 {
        m = m.cast_weights(precision.dtype());
    }
    for bn in m.norms_mut() {
        let c = bn.running_mean.value().dims()[0];
        let dev = bn.running_mean.value().device();
        bn.running_mean = RunningState::new(Tensor::zeros([c], &dev));
        bn.running_var = RunningState::new(Tensor::ones([c], &dev));
    }
    for (k, (x, _)) in batches.batches.iter().enumerate() {
        // momentum 1/k turns the exponential average into the cumulative mean.
        for bn in m.norms_mut() {
            bn.momentum = 1.0 / (k + 1) as f64;
        }
        let _ = m.forward(x.clone().to_device(&ad).cast(precision.dtype()));
    }
    let dev = x0.device();
    copy_running_stats(&mut net, &m.valid().to_device(&dev));
    net
}

/// θ(α) of `line`, with its running statistics set by the line's batch-norm mode (in f32).
pub fn point_model(line: &Line<'_>, alpha: f64) -> Net {
    let mut model = lerp_modules(line.start, line.end, alpha);
    match line.bn_mode {
        Some(BnMode::Endpoint) => copy_running_stats(&mut model, line.end),
        Some(BnMode::Recompute) => {
            if let Some(b) = line.bn_batches {
                model = recompute_running_stats(model, b, line.precision);
            }
        }
        Some(BnMode::Interpolate) | None => {}
    }
    model
}

/// Evaluates `line` at every α of `grid` on every set, in evaluation mode.
pub fn evaluate_line(
    line: &Line<'_>,
    grid: &AlphaGrid,
    sets: &[&EvalSet],
    progress: &dyn Progress,
) -> Vec<LinePoint> {
    let dtype = line.precision.dtype();
    // Only the MLP's first-layer cache runs the endpoints themselves: cast them just then.
    let is_mlp = line.start.as_mlp().is_some() && line.end.as_mlp().is_some();
    let ends = is_mlp.then(|| {
        (
            line.start.autocast(line.precision),
            line.end.autocast(line.precision),
        )
    });
    let mlps = ends
        .as_ref()
        .and_then(|(s, e)| s.net().as_mlp().zip(e.net().as_mlp()));
    let width: usize = match mlps {
        Some((s, _)) => sets
            .iter()
            .flat_map(|set| set.batches.first())
            .map(|(x, _)| {
                s.first_layer(flat(x.clone().narrow(0, 0, 1)).cast(dtype))
                    .dims()[1]
            })
            .next()
            .unwrap_or(0),
        None => 0,
    };
    let examples: usize = sets.iter().map(|s| s.len).sum();
    let cache = mlps.is_some() && 2 * examples * width * 4 <= CACHE_LIMIT_BYTES;
    // [set][batch] -> (pre_start, pre_end), each [batch, width₀].
    let cached: Vec<Vec<(Tensor<2>, Tensor<2>)>> = match mlps.filter(|_| cache) {
        Some((s, e)) => sets
            .iter()
            .map(|set| {
                set.batches
                    .iter()
                    .map(|(x, _)| {
                        // Cached in f32: the interpolation of the pre-activations is f32
                        // like that of the weights.
                        let x = flat(x.clone()).cast(dtype);
                        (
                            s.first_layer(x.clone()).cast(FloatDType::F32),
                            e.first_layer(x).cast(FloatDType::F32),
                        )
                    })
                    .collect()
            })
            .collect(),
        None => Vec::new(),
    };

    let mut points = Vec::with_capacity(grid.len() * sets.len());
    for &alpha in grid.values() {
        let model = point_model(line, alpha);
        let invalid = model.min_running_var().is_some_and(|v| v < 0.0);
        let model = model.autocast(line.precision);
        for (si, set) in sets.iter().enumerate() {
            let point = |value: Option<LossAcc>, reason: Option<&'static str>| LinePoint {
                start: line.start_label.to_owned(),
                bn_mode: line.bn_mode,
                split: si,
                alpha,
                value,
                invalid_reason: reason,
            };
            if invalid {
                points.push(point(None, Some(NEGATIVE_VARIANCE)));
                continue;
            }
            let mut acc = Accumulator::default();
            for (bi, (x, y)) in set.batches.iter().enumerate() {
                let logits = match (model.net().as_mlp(), cached.get(si)) {
                    (Some(m), Some(c)) => {
                        let (pre_s, pre_e) = c[bi].clone();
                        m.forward_from_first(lerp_tensor(pre_s, pre_e, alpha).cast(dtype))
                            .cast(FloatDType::F32)
                    }
                    _ => model.forward(x.clone()),
                };
                acc.add(logits, y.clone());
            }
            let value = acc.finish();
            let ok = value.loss.is_finite();
            points.push(point(
                ok.then_some(value),
                (!ok).then_some("non-finite loss"),
            ));
        }
        progress.advance(1, None);
    }
    points
}

/// `[b, c, h, w] → [b, c·h·w]`.
fn flat(x: Tensor<4>) -> Tensor<2> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c * h * w])
}
