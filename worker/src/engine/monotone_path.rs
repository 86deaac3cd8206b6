//! The Safran–Shamir monotone path along the line from θ_i to θ_c, on the train split: the
//! logits of θ(α) are computed on the device, the scale of the last layer is solved on the
//! host ([`crate::science::monotone_path`]), and each constructed point is evaluated again
//! with its last layer really scaled, as the check that the path is what it claims.
//!
//! Cost per α in [0, 1]: two passes over the split for the logits (before and after the
//! envelope is known) and one for the check.

use burn::prelude::*;

use super::Progress;
use super::eval::{Accumulator, EvalSet};
use super::line::{Line, point_model};
use crate::config::BnMode;
use crate::model::Autocast;
use crate::science::AlphaGrid;
use crate::science::monotone_path::{Branch, ScaledLoss, branch_at_end, envelope};

/// Why a row of the path has no scale.
pub const PRECONDITION: &str = "L(θ_i) ≤ ln K: the construction needs the initial loss above ln K";
/// Why a row of the path has no scale.
pub const UNREACHABLE: &str = "g_α does not reach M(α) on θ_c's side of c*(α)";
/// Why a row of the path has no values at all.
pub const NON_FINITE: &str = "non-finite logits at this α";

/// One α of the path.
#[derive(Debug, Clone, PartialEq)]
pub struct PathRow {
    /// Batch-norm mode of the line (`None` without batch norm).
    pub bn_mode: Option<BnMode>,
    /// Interpolation coefficient, in [0, 1].
    pub alpha: f64,
    /// argmin over c of g_α(c) on [0, C_MAX].
    pub c_star: Option<f64>,
    /// m(α) = g_α(c*).
    pub min_loss: Option<f64>,
    /// c(α): the scale of the last layer on the path.
    pub scale: Option<f64>,
    /// M(α): the path's loss.
    pub path_loss: Option<f64>,
    /// The loss of θ(α) with its last layer scaled by c(α), evaluated again.
    pub check_loss: Option<f64>,
    /// L(θ_i) > ln K held.
    pub precondition: bool,
    /// Why `scale` (or everything) is missing.
    pub invalid_reason: Option<&'static str>,
}

/// Host copies of the logits of `model` over `set`, row-major `[len, classes]`.
fn logits(model: &Autocast<'_>, set: &EvalSet) -> Option<Vec<f32>> {
    let parts: Vec<Tensor<2>> = set
        .batches
        .iter()
        .map(|(x, _)| model.forward(x.clone()))
        .collect();
    let v: Vec<f32> = Tensor::cat(parts, 0)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .ok()?;
    v.iter().all(|x| x.is_finite()).then_some(v)
}

/// The labels of `set` on the host.
fn labels(set: &EvalSet) -> Vec<u16> {
    let parts: Vec<Tensor<1, Int>> = set.batches.iter().map(|(_, y)| y.clone()).collect();
    Tensor::cat(parts, 0)
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap_or_default()
        .into_iter()
        .map(|y| y as u16)
        .collect()
}

/// The path along `line` (from θ_i) at the grid's α in [0, 1], on `set`.
pub fn evaluate_path(
    line: &Line<'_>,
    grid: &AlphaGrid,
    set: &EvalSet,
    classes: usize,
    progress: &dyn Progress,
) -> Vec<PathRow> {
    let alphas: Vec<f64> = grid
        .values()
        .iter()
        .copied()
        .filter(|a| (0.0..=1.0).contains(a))
        .collect();
    let y = labels(set);
    let at = |alpha: f64| {
        let model = point_model(line, alpha);
        logits(&model.autocast(line.precision), set)
    };
    // Pass 1: m(α) and c*(α); L(θ_i) = g_0(1), L(θ_c) = g_1(1), and θ_c's side of c*.
    let mut minima: Vec<Option<(f64, f64)>> = Vec::with_capacity(alphas.len());
    let (mut init_loss, mut final_loss, mut branch) = (f64::NAN, f64::NAN, Branch::Below);
    for &alpha in &alphas {
        let z = at(alpha);
        minima.push(
            z.as_ref()
                .map(|z| ScaledLoss::new(z, &y, classes).minimum()),
        );
        if let Some(z) = &z {
            let g = ScaledLoss::new(z, &y, classes);
            if alpha == 0.0 {
                init_loss = g.loss(1.0);
            }
            if alpha == 1.0 {
                final_loss = g.loss(1.0);
                branch = branch_at_end(&g);
            }
        }
        progress.advance(1, None);
    }
    let precondition = init_loss > crate::science::ln_k(classes);
    let m: Vec<f64> = minima
        .iter()
        .map(|v| v.map_or(f64::INFINITY, |(_, m)| m))
        .collect();
    let target = envelope(&alphas, &m, init_loss, final_loss);
    // Pass 2: c(α) on θ_c's side, and the loss of the constructed point.
    let mut rows = Vec::with_capacity(alphas.len());
    for (i, &alpha) in alphas.iter().enumerate() {
        let mut row = PathRow {
            bn_mode: line.bn_mode,
            alpha,
            c_star: minima[i].map(|(c, _)| c),
            min_loss: minima[i].map(|(_, m)| m),
            scale: None,
            path_loss: None,
            check_loss: None,
            precondition,
            invalid_reason: None,
        };
        row.invalid_reason = if minima[i].is_none() || !target[i].is_finite() {
            Some(NON_FINITE)
        } else if !precondition {
            Some(PRECONDITION)
        } else {
            None
        };
        if row.invalid_reason.is_none() {
            let scale = if alpha == 0.0 {
                Some(1.0)
            } else {
                at(alpha).and_then(|z| {
                    let c_star = minima[i].map_or(0.0, |(c, _)| c);
                    ScaledLoss::new(&z, &y, classes).solve(target[i], c_star, branch)
                })
            };
            match scale {
                Some(c) => {
                    row.scale = Some(c);
                    row.path_loss = Some(target[i]);
                    row.check_loss = Some(check(line, alpha, c, set));
                }
                None => row.invalid_reason = Some(UNREACHABLE),
            }
        }
        rows.push(row);
        progress.advance(1, None);
    }
    rows
}

/// The loss of θ(α) with its last layer multiplied by `c`, from a fresh forward pass.
fn check(line: &Line<'_>, alpha: f64, c: f64, set: &EvalSet) -> f64 {
    let model = point_model(line, alpha).scale_output(c);
    let model = model.autocast(line.precision);
    let mut acc = Accumulator::default();
    for (x, y) in &set.batches {
        acc.add(model.forward(x.clone()), y.clone());
    }
    acc.finish().loss
}

/// Work units of [`evaluate_path`] on `grid` (for a progress bar).
pub fn work(grid: &AlphaGrid) -> u64 {
    2 * grid
        .values()
        .iter()
        .filter(|a| (0.0..=1.0).contains(*a))
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelConfig, Precision};
    use crate::data::Split;
    use crate::engine::NoProgress;
    use crate::engine::train::net_from_snapshot;
    use crate::model::Net;
    use crate::science::affine_modules;
    use crate::snapshot::HostSnapshot;

    /// A linear model on 2 inputs and 3 classes with the given output weights `[3, 2]` and
    /// bias: g_α(c) is then the closed-form cross-entropy of c·(W(α)x + b(α)).
    fn linear(template: &Net, w: [f32; 6], b: [f32; 3]) -> Net {
        let mut snap = HostSnapshot::capture(template, 0).unwrap();
        for t in &mut snap.tensors {
            t.data = if t.name.ends_with("weight") {
                w.to_vec()
            } else {
                b.to_vec()
            };
        }
        net_from_snapshot(template, &snap).unwrap()
    }

    /// A linear model on 2 inputs and 3 classes, and θ_c: the centres' directions as class
    /// weights.
    fn template_and_end() -> (Net, Net) {
        let cfg = ModelConfig {
            hidden: vec![],
            ..ModelConfig::default()
        };
        let template = Net::new(&cfg, [1, 1, 2], 3, &Device::flex());
        let end = linear(&template, [2.0, 0.0, -1.0, 1.7, -1.0, -1.7], [0.0; 3]);
        (template, end)
    }

    /// The path from `start` to `end` on `grid`, f32, without batch norm.
    fn path(start: &Net, end: &Net, grid: &AlphaGrid, set: &EvalSet) -> Vec<PathRow> {
        let line = Line {
            start_label: "init",
            start,
            end,
            bn_mode: None,
            bn_batches: None,
            precision: Precision::F32,
        };
        evaluate_path(&line, grid, set, 3, &NoProgress)
    }

    fn points() -> (EvalSet, Vec<[f32; 2]>, Vec<u16>) {
        // Twelve points around three centres; the label is the centre's.
        let centres = [[2.0f32, 0.0], [-1.0, 1.7], [-1.0, -1.7]];
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for (k, c) in centres.iter().enumerate() {
            for d in [[0.3f32, 0.1], [-0.2, 0.4], [0.1, -0.3], [-0.4, -0.2]] {
                xs.push([c[0] + d[0] + if k == 0 { -1.9 } else { 0.0 }, c[1] + d[1]]);
                ys.push(k as u16);
            }
        }
        let split = Split {
            features: xs.iter().flatten().copied().collect(),
            labels: ys.clone(),
            shape: [1, 1, 2],
        };
        (EvalSet::new(&split, 5, &Device::flex()), xs, ys)
    }

    #[test]
    fn the_path_never_rises_and_its_points_are_what_it_claims() {
        // One point of class 0 is misplaced near the origin, so the loss at θ_c has a finite
        // minimiser in c. θ_i: a confident wrong classifier, loss well above ln 3.
        let (template, end) = template_and_end();
        let wrong = linear(&template, [-1.0, 1.7, -1.0, -1.7, 2.0, 0.0], [0.0; 3]);
        let start = affine_modules(&wrong, &[(2.0, &wrong)]);
        let (set, xs, ys) = points();
        let grid = AlphaGrid::linspace(-0.5, 1.5, 21).unwrap();
        let rows = path(&start, &end, &grid, &set);
        assert_eq!(rows.len(), 11, "α = 0, 0.1, …, 1");
        assert!(
            rows.iter()
                .all(|r| r.precondition && r.invalid_reason.is_none())
        );

        // g_α(c) by hand: W(α) = (1−α)·W_i + α·W_c, no bias.
        let w_i = [-3.0f64, 5.1, -3.0, -5.1, 6.0, 0.0];
        let w_c = [2.0f64, 0.0, -1.0, 1.7, -1.0, -1.7];
        let g = |alpha: f64, c: f64| {
            let mut total = 0.0;
            for (x, &y) in xs.iter().zip(&ys) {
                let z: Vec<f64> = (0..3)
                    .map(|k| {
                        let w = |j: usize| (1.0 - alpha) * w_i[2 * k + j] + alpha * w_c[2 * k + j];
                        c * (w(0) * f64::from(x[0]) + w(1) * f64::from(x[1]))
                    })
                    .collect();
                let top = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = top + z.iter().map(|v| (v - top).exp()).sum::<f64>().ln();
                total += lse - z[usize::from(y)];
            }
            total / xs.len() as f64
        };
        // Halfway, θ(α) is worse than uniform: c* = 0 and m = ln 3, so the path passes
        // through the uniform predictor there.
        let mid = &rows[5];
        assert_eq!((mid.alpha, mid.c_star), (0.5, Some(0.0)));
        assert!((mid.min_loss.unwrap() - 3f64.ln()).abs() < 1e-9);
        assert!(g(0.5, 0.05) > g(0.5, 0.0));
        // Near θ_c the minimiser is inside (0, C_MAX): a minimum of the closed form.
        let late = &rows[9];
        let (c_star, m) = (late.c_star.unwrap(), late.min_loss.unwrap());
        assert!(c_star > 0.1 && c_star < 100.0, "{late:?}");
        assert!(
            (g(0.9, c_star) - m).abs() < 1e-5,
            "m(0.9) = {m}, by hand {}",
            g(0.9, c_star)
        );
        assert!(g(0.9, c_star - 0.05) >= m - 1e-6 && g(0.9, c_star + 0.05) >= m - 1e-6);
        for r in &rows[1..] {
            let want = r.path_loss.unwrap();
            assert!((g(r.alpha, r.scale.unwrap()) - want).abs() < 1e-5, "{r:?}");
        }

        let path: Vec<f64> = rows.iter().map(|r| r.path_loss.unwrap()).collect();
        assert!(path.windows(2).all(|w| w[1] <= w[0] + 1e-12), "{path:?}");
        for r in &rows {
            let (want, got) = (r.path_loss.unwrap(), r.check_loss.unwrap());
            assert!(
                (want - got).abs() < 1e-4,
                "α = {}: M = {want}, re-evaluated {got}",
                r.alpha
            );
        }
        // Both ends are the networks themselves: c = 1.
        assert_eq!(rows[0].scale, Some(1.0));
        assert!(
            (rows[10].scale.unwrap() - 1.0).abs() < 1e-6,
            "{:?}",
            rows[10]
        );
        assert!(path[0] > 3f64.ln() && path[1] <= 3f64.ln() + 1e-9);
    }

    #[test]
    fn without_the_precondition_no_path_is_invented() {
        let (template, end) = template_and_end();
        // θ_i predicts uniformly: L(θ_i) = ln 3 exactly, not above it.
        let start = linear(&template, [0.0; 6], [0.0; 3]);
        let (set, _, _) = points();
        let grid = AlphaGrid::linspace(0.0, 1.0, 5).unwrap();
        let rows = path(&start, &end, &grid, &set);
        assert_eq!(rows.len(), 5);
        for r in rows {
            assert!(!r.precondition);
            assert_eq!(r.invalid_reason, Some(PRECONDITION));
            assert!(r.scale.is_none() && r.path_loss.is_none() && r.check_loss.is_none());
            assert!(r.c_star.is_some() && r.min_loss.is_some());
        }
    }
}
