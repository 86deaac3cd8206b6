//! Loss and accuracy on a 2-D plane θ(x, y) = θ_c + x·δ + y·η (`[eval.plane]`), with θ_c's
//! running statistics (the directions are 0 on them).
//!
//! As on the line, the MLP's first pre-activation is affine in the weights:
//! x·W(x, y) + b(x, y) = first_c(X) + x·first_δ(X) + y·first_η(X), where first_δ is the first
//! layer with δ's weights and bias. The three products are computed once per example, so a
//! point of the plane costs everything but the first matmul, like a point of the line.

use burn::prelude::*;
use burn::tensor::FloatDType;

use super::eval::{Accumulator, EvalSet, LossAcc};
use super::line::CACHE_LIMIT_BYTES;
use super::{EngineError, Progress, TrajectorySample};
use crate::config::{PlaneConfig, PlaneKind, Precision};
use crate::model::Net;
use crate::science::affine_modules;
use crate::science::directions::{
    TrajectoryPca, coordinate, difference, from_parameter_vector, norm, random_directions,
    trajectory_pca,
};
use crate::snapshot::HostSnapshot;

/// One point of a plane on one split.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanePoint {
    /// Which plane.
    pub kind: PlaneKind,
    /// Coefficient of δ.
    pub x: f64,
    /// Coefficient of η.
    pub y: f64,
    /// Index of the split (as in [`super::SPLITS`]).
    pub split: usize,
    /// Loss and accuracy, or `None` when the loss is not finite.
    pub value: Option<LossAcc>,
}

/// The two directions of a plane, as snapshots under PyTorch names.
#[derive(Debug, Clone)]
pub struct PlaneDirections {
    /// Which plane.
    pub kind: PlaneKind,
    /// δ (the x axis).
    pub x: HostSnapshot,
    /// η (the y axis).
    pub y: HostSnapshot,
}

/// The trajectory in the PCA plane: per sample, (x, y) in units of ‖θ_i − θ_c‖.
#[derive(Debug, Clone, PartialEq)]
pub struct PcaTrajectory {
    /// The fraction of the trajectory's variance along each axis.
    pub explained: [f64; 2],
    /// One (x, y) per trajectory sample, in sample order.
    pub coords: Vec<(f64, f64)>,
}

/// The directions of the plane `kind` around `center` (θ_c): random ones seeded by
/// `cfg.seed` (the `init` plane's η is the random plane's δ), or the trajectory's PCA axes,
/// each as long as θ_i − θ_c, with the trajectory's coordinates on them.
pub fn directions(
    kind: PlaneKind,
    cfg: &PlaneConfig,
    center: &HostSnapshot,
    init: &HostSnapshot,
    samples: &[TrajectorySample],
) -> Result<(PlaneDirections, Option<PcaTrajectory>), EngineError> {
    // Two draws, δ then η, from one stream; the init plane's η is the random plane's δ.
    let random = || {
        let mut d = random_directions(center, cfg.seed, 2).into_iter();
        let mut next = || d.next().unwrap_or_else(|| difference(center, center));
        (next(), next())
    };
    let plane = |x, y| PlaneDirections { kind, x, y };
    Ok(match kind {
        PlaneKind::Random => {
            let (x, y) = random();
            (plane(x, y), None)
        }
        PlaneKind::Init => (plane(difference(init, center), random().0), None),
        PlaneKind::Pca => {
            let theta_c = center.parameter_vector();
            let rows: Vec<&[f32]> = samples.iter().map(|s| s.parameters.as_slice()).collect();
            let pca: TrajectoryPca = trajectory_pca(&rows, &theta_c).ok_or_else(|| {
                EngineError::Config(format!(
                    "the pca plane: the {} snapshots of the trajectory do not span two directions",
                    samples.len()
                ))
            })?;
            let length = f64::from(norm(&difference(init, center).parameter_vector()));
            let scaled = |axis: &[f32]| -> Vec<f32> {
                axis.iter()
                    .map(|&v| (f64::from(v) * length) as f32)
                    .collect()
            };
            let coords = rows
                .iter()
                .map(|r| {
                    let c = |k: usize| coordinate(r, &theta_c, &pca.axes[k]) / length.max(1e-30);
                    (c(0), c(1))
                })
                .collect();
            (
                plane(
                    from_parameter_vector(center, &scaled(&pca.axes[0])),
                    from_parameter_vector(center, &scaled(&pca.axes[1])),
                ),
                Some(PcaTrajectory {
                    explained: pca.explained,
                    coords,
                }),
            )
        }
    })
}

/// `[b, c, h, w] → [b, c·h·w]`.
fn flat(x: Tensor<4>) -> Tensor<2> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c * h * w])
}

/// The cached first-layer products of the MLP: per set, per batch, (θ_c, δ, η).
type FirstLayers = Vec<Vec<[Tensor<2>; 3]>>;

fn first_layers(nets: [&Net; 3], sets: &[&EvalSet], precision: Precision) -> Option<FirstLayers> {
    let casts = nets.map(|n| n.autocast(precision));
    let mlps: Vec<_> = casts.iter().filter_map(|c| c.net().as_mlp()).collect();
    if mlps.len() != 3 {
        return None;
    }
    let dtype = precision.dtype();
    let width = sets
        .iter()
        .flat_map(|s| s.batches.first())
        .map(|(x, _)| {
            mlps[0]
                .first_layer(flat(x.clone().narrow(0, 0, 1)).cast(dtype))
                .dims()[1]
        })
        .next()?;
    let examples: usize = sets.iter().map(|s| s.len).sum();
    if 3 * examples * width * 4 > CACHE_LIMIT_BYTES {
        return None;
    }
    Some(
        sets.iter()
            .map(|set| {
                set.batches
                    .iter()
                    .map(|(x, _)| {
                        let x = flat(x.clone()).cast(dtype);
                        [0, 1, 2].map(|k| mlps[k].first_layer(x.clone()).cast(FloatDType::F32))
                    })
                    .collect()
            })
            .collect(),
    )
}

/// Evaluates the plane spanned by `dirs` (as networks) around `center` on `cfg`'s grid, on
/// every set.
pub fn evaluate_plane(
    center: &Net,
    dirs: [&Net; 2],
    kind: PlaneKind,
    cfg: &PlaneConfig,
    sets: &[&EvalSet],
    precision: Precision,
    progress: &dyn Progress,
) -> Vec<PlanePoint> {
    let cached = first_layers([center, dirs[0], dirs[1]], sets, precision);
    let dtype = precision.dtype();
    let (xs, ys) = (cfg.axis(cfg.x), cfg.axis(cfg.y));
    let mut points = Vec::with_capacity(xs.len() * ys.len() * sets.len());
    for &y in &ys {
        for &x in &xs {
            let model = affine_modules(center, &[(x, dirs[0]), (y, dirs[1])]);
            let model = model.autocast(precision);
            for (si, set) in sets.iter().enumerate() {
                let mut acc = Accumulator::default();
                for (bi, (input, target)) in set.batches.iter().enumerate() {
                    let logits = match (model.net().as_mlp(), &cached) {
                        (Some(m), Some(c)) => {
                            let [pc, pd, pe] = c[si][bi].clone();
                            let pre = pc + pd.mul_scalar(x) + pe.mul_scalar(y);
                            m.forward_from_first(pre.cast(dtype)).cast(FloatDType::F32)
                        }
                        _ => model.forward(input.clone()),
                    };
                    acc.add(logits, target.clone());
                }
                let value = acc.finish();
                points.push(PlanePoint {
                    kind,
                    x,
                    y,
                    split: si,
                    value: value.loss.is_finite().then_some(value),
                });
            }
            progress.advance(1, None);
        }
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelConfig, Norm};
    use crate::data::Split;
    use crate::engine::NoProgress;
    use crate::engine::train::net_from_snapshot;

    fn set(device: &Device) -> EvalSet {
        let n = 7;
        let split = Split {
            features: (0..n * 6)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
                .collect(),
            labels: (0..n).map(|i| (i % 3) as u16).collect(),
            shape: [1, 2, 3],
        };
        EvalSet::new(&split, 3, device)
    }

    /// The cached MLP path and the plain forward pass give the same plane, and a point equals
    /// the network built from θ_c + x·δ + y·η by hand from the saved snapshots.
    #[test]
    fn a_plane_point_is_the_network_at_that_point() {
        let device = Device::flex();
        device.seed(5);
        for norm in [Norm::None, Norm::Batch] {
            let cfg = ModelConfig {
                hidden: vec![4],
                norm: Some(norm),
                ..ModelConfig::default()
            };
            let center = Net::new(&cfg, [1, 2, 3], 3, &device);
            let init = Net::new(&cfg, [1, 2, 3], 3, &device);
            let c_snap = HostSnapshot::capture(&center, 9).unwrap();
            let i_snap = HostSnapshot::capture(&init, 0).unwrap();
            let pc = PlaneConfig {
                points: 3,
                ..PlaneConfig::default()
            };
            let (dirs, _) = directions(PlaneKind::Init, &pc, &c_snap, &i_snap, &[]).unwrap();
            let dx = net_from_snapshot(&center, &dirs.x).unwrap();
            let dy = net_from_snapshot(&center, &dirs.y).unwrap();
            let s = set(&device);
            let pts = evaluate_plane(
                &center,
                [&dx, &dy],
                PlaneKind::Init,
                &pc,
                &[&s],
                Precision::F32,
                &NoProgress,
            );
            assert_eq!(pts.len(), 9);
            // (x, y) = (1, −1), by hand from the three snapshots.
            let mut by_hand = c_snap.clone();
            for ((t, d), e) in by_hand
                .tensors
                .iter_mut()
                .zip(&dirs.x.tensors)
                .zip(&dirs.y.tensors)
            {
                for ((v, a), b) in t.data.iter_mut().zip(&d.data).zip(&e.data) {
                    *v += a - b;
                }
            }
            let net = net_from_snapshot(&center, &by_hand).unwrap();
            let want = super::super::eval::evaluate(&s, |x| net.forward(x));
            let got = pts.iter().find(|p| p.x == 1.0 && p.y == -1.0).unwrap();
            let got = got.value.unwrap();
            assert!(
                (got.loss - want.loss).abs() < 1e-5,
                "{norm:?}: {got:?} vs {want:?}"
            );
            assert_eq!(got.accuracy, want.accuracy);
            // (0, 0) is θ_c.
            let c = super::super::eval::evaluate(&s, |x| center.forward(x));
            let origin = pts.iter().find(|p| p.x == 0.0 && p.y == 0.0).unwrap();
            assert!((origin.value.unwrap().loss - c.loss).abs() < 1e-5);
            // The init plane's (1, 0) is θ_i's weights (with θ_c's running statistics).
            if norm == Norm::None {
                let i = super::super::eval::evaluate(&s, |x| init.forward(x));
                let p = pts.iter().find(|p| p.x == 1.0 && p.y == 0.0).unwrap();
                assert!((p.value.unwrap().loss - i.loss).abs() < 1e-5);
            }
        }
    }
}
