//! Directions in weight space for 2-D planes around θ_c (Li et al. 2018,
//! tomgoldstein/loss-landscape), as host snapshots under PyTorch names, so that they can be
//! saved beside the weights and anyone can recompute a point of a plane.
//!
//! - **Random, filter-normalised** (`--xnorm filter --xignore biasbn`): every weight tensor
//!   with more than one dimension gets N(0, 1) entries, then each filter (a slice along
//!   dimension 0: one output channel of a convolution, one row of a linear layer) is rescaled
//!   to the norm of the same filter in θ_c: d_f ← d_f·‖θ_f‖/(‖d_f‖ + 1e-10). Biases and
//!   batch-norm γ/β get 0, as do the running statistics (the plane keeps θ_c's).
//! - **PCA of the trajectory** (Li et al. §7): the top two principal axes of the rows
//!   {θ_t − θ_c}, centred as scikit-learn's PCA centres them.

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::snapshot::{HostSnapshot, NamedTensor, TensorKind};

/// What loss-landscape adds to a filter's norm before dividing by it.
const FILTER_EPS: f32 = 1e-10;

/// `base` with every value replaced by `f(tensor, index)`-style data: same names, shapes and
/// kinds, step 0.
fn like(base: &HostSnapshot, mut data: impl FnMut(&NamedTensor) -> Vec<f32>) -> HostSnapshot {
    HostSnapshot {
        step: 0,
        tensors: base
            .tensors
            .iter()
            .map(|t| NamedTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: data(t),
                kind: t.kind,
            })
            .collect(),
    }
}

/// Whether a tensor gets a direction: a weight with more than one dimension.
fn is_filtered(t: &NamedTensor) -> bool {
    t.kind == TensorKind::Parameter && t.shape.len() > 1
}

/// `count` random directions for `base` (θ_c), filter-normalised, drawn in order from one
/// ChaCha8 stream seeded with `seed` (tensors in snapshot order).
pub fn random_directions(base: &HostSnapshot, seed: u64, count: usize) -> Vec<HostSnapshot> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            like(base, |t| {
                if !is_filtered(t) {
                    return vec![0.0; t.data.len()];
                }
                let mut d: Vec<f32> = (0..t.data.len())
                    .map(|_| StandardNormal.sample(&mut rng))
                    .collect();
                let per_filter = t.data.len() / t.shape[0].max(1);
                for (df, wf) in d
                    .chunks_mut(per_filter.max(1))
                    .zip(t.data.chunks(per_filter.max(1)))
                {
                    let scale = norm(wf) / (norm(df) + FILTER_EPS);
                    df.iter_mut().for_each(|v| *v *= scale);
                }
                d
            })
        })
        .collect()
}

/// `to − from` on parameters; 0 on buffers (running statistics stay the base's).
pub fn difference(to: &HostSnapshot, from: &HostSnapshot) -> HostSnapshot {
    let mut other = to.tensors.iter();
    like(from, |t| {
        let Some(o) = other.next() else {
            return vec![0.0; t.data.len()];
        };
        if t.kind == TensorKind::Buffer {
            return vec![0.0; t.data.len()];
        }
        o.data.iter().zip(&t.data).map(|(a, b)| a - b).collect()
    })
}

/// Euclidean norm, accumulated in f64.
pub fn norm(v: &[f32]) -> f32 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt() as f32
}

/// The norm of each filter of each filtered tensor, by name: what filter normalisation
/// matches.
pub fn filter_norms(s: &HostSnapshot) -> Vec<(String, Vec<f32>)> {
    s.tensors
        .iter()
        .filter(|t| is_filtered(t))
        .map(|t| {
            let per = (t.data.len() / t.shape[0].max(1)).max(1);
            (t.name.clone(), t.data.chunks(per).map(norm).collect())
        })
        .collect()
}

/// A parameter vector in name order ([`HostSnapshot::parameter_vector`]) laid out as a
/// snapshot like `base`, with buffers 0.
pub fn from_parameter_vector(base: &HostSnapshot, v: &[f32]) -> HostSnapshot {
    let mut params: Vec<(usize, &NamedTensor)> = base
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| t.kind == TensorKind::Parameter)
        .collect();
    params.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    let mut offsets = vec![None; base.tensors.len()];
    let mut at = 0;
    for (i, t) in params {
        offsets[i] = Some(at);
        at += t.data.len();
    }
    let mut index = 0;
    like(base, |t| {
        let out = match offsets[index] {
            Some(o) => v
                .get(o..o + t.data.len())
                .map_or_else(|| vec![0.0; t.data.len()], <[f32]>::to_vec),
            None => vec![0.0; t.data.len()],
        };
        index += 1;
        out
    })
}

/// The PCA of a trajectory around θ_c.
#[derive(Debug, Clone, PartialEq)]
pub struct TrajectoryPca {
    /// The two principal axes, unit vectors in name order.
    pub axes: [Vec<f32>; 2],
    /// The fraction of the variance each explains.
    pub explained: [f64; 2],
}

/// The top two principal axes of the rows `samples[t] − center`, centred on their mean as
/// scikit-learn's PCA does. Each axis's sign makes the first sample's coordinate ≥ 0. `None`
/// with fewer than three samples or a trajectory that does not span two dimensions.
///
/// The eigenproblem is solved on the t × t Gram matrix (t snapshots, a few hundred at most)
/// rather than on the parameter covariance, which would be p × p.
pub fn trajectory_pca(samples: &[&[f32]], center: &[f32]) -> Option<TrajectoryPca> {
    let t = samples.len();
    if t < 3 {
        return None;
    }
    let p = center.len();
    // a_i = θ_i − center is never materialised (t·p values, a gigabyte for a large MLP).
    let a = |i: usize, k: usize| f64::from(samples[i][k] - center[k]);
    let mut mean = vec![0.0f64; p];
    for (k, m) in mean.iter_mut().enumerate() {
        *m = (0..t).map(|i| a(i, k)).sum::<f64>() / t as f64;
    }
    let dot_mean: Vec<f64> = (0..t)
        .map(|i| (0..p).map(|k| a(i, k) * mean[k]).sum())
        .collect();
    let mm: f64 = mean.iter().map(|m| m * m).sum();
    // (a_i − m)·(a_j − m) = a_i·a_j − a_i·m − a_j·m + m·m.
    let mut gram = nalgebra::DMatrix::<f64>::zeros(t, t);
    for i in 0..t {
        for j in 0..=i {
            let aa: f64 = (0..p).map(|k| a(i, k) * a(j, k)).sum();
            let g = aa - dot_mean[i] - dot_mean[j] + mm;
            gram[(i, j)] = g;
            gram[(j, i)] = g;
        }
    }
    let eig = nalgebra::SymmetricEigen::new(gram);
    let total: f64 = eig.eigenvalues.iter().map(|v| v.max(0.0)).sum();
    let mut order: Vec<usize> = (0..t).collect();
    order.sort_by(|&x, &y| eig.eigenvalues[y].total_cmp(&eig.eigenvalues[x]));
    let mut axes: [Vec<f32>; 2] = [Vec::new(), Vec::new()];
    let mut explained = [0.0; 2];
    for (slot, &i) in order.iter().take(2).enumerate() {
        let lambda = eig.eigenvalues[i];
        if lambda.is_nan() || lambda <= 1e-12 * total {
            return None;
        }
        // u = Σ_j v_j·(a_j − m) / √λ is a unit principal axis.
        let v = eig.eigenvectors.column(i);
        let v_sum: f64 = v.iter().sum();
        let mut u: Vec<f64> = mean.iter().map(|m| -v_sum * m).collect();
        for (j, &vj) in v.iter().enumerate() {
            for (k, uk) in u.iter_mut().enumerate() {
                *uk += vj * a(j, k);
            }
        }
        let first: f64 = (0..p).map(|k| a(0, k) * u[k]).sum();
        let scale = if first < 0.0 { -1.0 } else { 1.0 } / lambda.sqrt();
        axes[slot] = u.iter().map(|&x| (x * scale) as f32).collect();
        explained[slot] = lambda / total;
    }
    Some(TrajectoryPca { axes, explained })
}

/// (θ − center)·axis.
pub fn coordinate(theta: &[f32], center: &[f32], axis: &[f32]) -> f64 {
    theta
        .iter()
        .zip(center)
        .zip(axis)
        .map(|((&x, &c), &a)| f64::from(x - c) * f64::from(a))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, shape: &[usize], data: Vec<f32>, kind: TensorKind) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            shape: shape.to_vec(),
            data,
            kind,
        }
    }

    fn base() -> HostSnapshot {
        HostSnapshot {
            step: 7,
            tensors: vec![
                tensor(
                    "conv.weight",
                    &[2, 1, 2, 2],
                    vec![1.0, 2.0, 2.0, 4.0, 0.0, 0.0, 3.0, 4.0],
                    TensorKind::Parameter,
                ),
                tensor("conv.bias", &[2], vec![0.5, -0.5], TensorKind::Parameter),
                tensor("bn.weight", &[2], vec![1.0, 1.0], TensorKind::Parameter),
                tensor("bn.running_var", &[2], vec![2.0, 3.0], TensorKind::Buffer),
                tensor(
                    "fc.weight",
                    &[3, 2],
                    vec![3.0, 4.0, 0.0, 1.0, 6.0, 8.0],
                    TensorKind::Parameter,
                ),
            ],
        }
    }

    #[test]
    fn random_directions_match_each_filters_norm_and_skip_biases_and_bn() {
        let b = base();
        let dirs = random_directions(&b, 123, 2);
        assert_eq!(dirs.len(), 2);
        for d in &dirs {
            for ((name, want), (_, got)) in filter_norms(&b).iter().zip(filter_norms(d)) {
                for (w, g) in want.iter().zip(&got) {
                    assert!((w - g).abs() < 1e-5 * w.max(1.0), "{name}: {w} vs {g}");
                }
            }
            for t in &d.tensors {
                if t.shape.len() <= 1 {
                    assert!(t.data.iter().all(|&v| v == 0.0), "{} is not 0", t.name);
                }
            }
        }
        assert_ne!(dirs[0], dirs[1], "x and y are different draws");
        assert_eq!(random_directions(&b, 123, 2), dirs, "seeded");
        assert_ne!(random_directions(&b, 124, 1)[0], dirs[0]);
    }

    #[test]
    fn difference_and_parameter_vectors_round_trip() {
        let b = base();
        let mut other = b.clone();
        other.tensors[0].data[0] = 5.0;
        other.tensors[3].data[0] = 9.0;
        let d = difference(&other, &b);
        assert_eq!(d.tensors[0].data[0], 4.0);
        assert_eq!(d.tensors[3].data, vec![0.0, 0.0], "buffers stay the base's");
        let v = other.parameter_vector();
        let back = from_parameter_vector(&b, &v);
        for (a, t) in back.tensors.iter().zip(&other.tensors) {
            if t.kind == TensorKind::Parameter {
                assert_eq!(a.data, t.data, "{}", a.name);
            } else {
                assert!(a.data.iter().all(|&x| x == 0.0));
            }
        }
    }

    #[test]
    fn pca_finds_the_axes_of_a_planar_trajectory() {
        // Points on the x/y plane of R³ around the centre, spread more along x.
        let center = [1.0f32, 1.0, 1.0];
        let pts: Vec<[f32; 3]> = vec![
            [5.0, 1.0, 1.0],
            [3.0, 2.0, 1.0],
            [1.0, 0.5, 1.0],
            [-1.0, 1.5, 1.0],
            [1.0, 1.0, 1.0],
        ];
        let rows: Vec<&[f32]> = pts.iter().map(|p| p.as_slice()).collect();
        let pca = trajectory_pca(&rows, &center).unwrap();
        let [u, v] = &pca.axes;
        assert!((norm(u) - 1.0).abs() < 1e-5 && (norm(v) - 1.0).abs() < 1e-5);
        let dot: f32 = u.iter().zip(v).map(|(a, b)| a * b).sum();
        assert!(dot.abs() < 1e-5, "orthogonal");
        // Nothing along z; the first axis is mostly x and points at the first sample.
        assert!(u[2].abs() < 1e-6 && v[2].abs() < 1e-6);
        assert!(u[0] > 0.9, "{u:?}");
        assert!(coordinate(rows[0], &center, u) > 0.0);
        assert!((pca.explained[0] + pca.explained[1] - 1.0).abs() < 1e-9);
        assert!(pca.explained[0] > pca.explained[1]);
        // Collinear: no second axis.
        let line: Vec<[f32; 3]> = (0..4).map(|i| [i as f32, 1.0, 1.0]).collect();
        let rows: Vec<&[f32]> = line.iter().map(|p| p.as_slice()).collect();
        assert_eq!(trajectory_pca(&rows, &center), None);
    }
}
