//! Loss and accuracy along θ(α) = (1−α)·θ_start + α·θ_end.
//!
//! The first layer's pre-activation is linear in the weights:
//! x·W(α) + b(α) = (1−α)·(x·W_s + b_s) + α·(x·W_e + b_e). Both endpoint pre-activations are
//! computed once per example and reused at every α, so a point of the line costs everything
//! but the first matmul. For the default MLP (784-1024-1024-10) that removes 43% of the
//! multiply-adds of every point. The cache holds two `[examples, width₀]` f32 matrices; above
//! [`CACHE_LIMIT_BYTES`] the pre-activations are recomputed per point instead (same numbers,
//! more time).

use burn::prelude::*;

use super::eval::{Accumulator, EvalSet, LossAcc};
use super::{Phase, Progress};
use crate::model::Mlp;
use crate::science::{AlphaGrid, lerp_modules, lerp_tensor};

/// Largest total size of cached endpoint pre-activations.
pub const CACHE_LIMIT_BYTES: usize = 2 << 30;

/// Why a point of the line has no loss.
pub const NEGATIVE_VARIANCE: &str = "negative interpolated batch-norm running variance";

/// The line evaluated on one split at one α.
#[derive(Debug, Clone, PartialEq)]
pub struct LinePoint {
    /// Index of the split in the `sets` passed to [`evaluate_line`].
    pub split: usize,
    /// Interpolation coefficient.
    pub alpha: f64,
    /// Loss and accuracy, or `None` when the point is invalid.
    pub value: Option<LossAcc>,
    /// Why the point is invalid.
    pub invalid_reason: Option<&'static str>,
}

/// Evaluates the line from `start` to `end` at every α of `grid` on every set, in evaluation
/// mode; batch-norm running statistics are interpolated like weights.
pub fn evaluate_line(
    start: &Mlp,
    end: &Mlp,
    grid: &AlphaGrid,
    sets: &[&EvalSet],
    progress: &dyn Progress,
) -> Vec<LinePoint> {
    let width: usize = sets
        .iter()
        .flat_map(|s| s.batches.first())
        .map(|(x, _)| start.first_layer(x.clone().narrow(0, 0, 1)).dims()[1])
        .next()
        .unwrap_or(0);
    let examples: usize = sets.iter().map(|s| s.len).sum();
    let cache = 2 * examples * width * 4 <= CACHE_LIMIT_BYTES;
    // [set][batch] -> (pre_start, pre_end), each [batch, width₀].
    let cached: Vec<Vec<(Tensor<2>, Tensor<2>)>> = if cache {
        sets.iter()
            .map(|s| {
                s.batches
                    .iter()
                    .map(|(x, _)| (start.first_layer(x.clone()), end.first_layer(x.clone())))
                    .collect()
            })
            .collect()
    } else {
        Vec::new()
    };

    progress.start(Phase::Line, grid.len() as u64);
    let mut points = Vec::with_capacity(grid.len() * sets.len());
    for &alpha in grid.values() {
        let model = lerp_modules(start, end, alpha);
        let invalid = model.min_running_var().is_some_and(|v| v < 0.0);
        for (si, set) in sets.iter().enumerate() {
            if invalid {
                points.push(LinePoint {
                    split: si,
                    alpha,
                    value: None,
                    invalid_reason: Some(NEGATIVE_VARIANCE),
                });
                continue;
            }
            let mut acc = Accumulator::default();
            for (bi, (x, y)) in set.batches.iter().enumerate() {
                let (pre_s, pre_e) = match cached.get(si) {
                    Some(c) => c[bi].clone(),
                    None => (start.first_layer(x.clone()), end.first_layer(x.clone())),
                };
                let logits = model.forward_from_first(lerp_tensor(pre_s, pre_e, alpha));
                acc.add(logits, y.clone());
            }
            let value = acc.finish();
            let ok = value.loss.is_finite();
            points.push(LinePoint {
                split: si,
                alpha,
                value: ok.then_some(value),
                invalid_reason: (!ok).then_some("non-finite loss"),
            });
        }
        progress.advance(1, None);
    }
    progress.finish();
    points
}
