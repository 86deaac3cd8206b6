//! The line θ(α) = (1−α)·θ₀ + α·θ₁ and its α grid.
//!
//! The form (1−α)·a + α·b (not a + α·(b−a)) is used on purpose: at α = 0 and α = 1 it returns
//! the endpoints bit for bit, so the α = 0 and α = 1 rows of a line are exactly the initial and
//! final networks.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

/// Two grid values closer than this are the same point; also the snapping distance to 0 and 1.
const GRID_EPS: f64 = 1e-9;

/// Why an α grid was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GridError {
    /// Fewer than three points cannot show a shape.
    #[error("the α grid needs at least 3 points, got {0}")]
    TooFewPoints(usize),
    /// `stop` must lie above `start`.
    #[error("the α grid must increase: start {start} is not below stop {stop}")]
    NotIncreasing { start: f64, stop: f64 },
    /// α = 0 (the start network) or α = 1 (the end network) is not a grid point.
    #[error(
        "α = {missing} is not on the grid linspace({start}, {stop}, {points}); the endpoints of the line must be grid points"
    )]
    MissingEndpoint {
        missing: f64,
        start: f64,
        stop: f64,
        points: usize,
    },
    /// A value that is not finite.
    #[error("the α grid bounds must be finite numbers")]
    NotFinite,
}

/// An increasing α grid that contains 0 and 1 exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct AlphaGrid {
    alphas: Vec<f64>,
}

impl AlphaGrid {
    /// `linspace(start, stop, points)`, with the points nearest 0 and 1 snapped to exactly 0 and 1.
    ///
    /// ```
    /// use linesweep_worker::science::AlphaGrid;
    /// let grid = AlphaGrid::linspace(-0.5, 1.5, 41).unwrap();
    /// assert_eq!(grid.values()[10], 0.0);
    /// assert_eq!(grid.values()[30], 1.0);
    /// // The notebook grid linspace(0, 2, 10) misses α = 1 and is refused.
    /// assert!(AlphaGrid::linspace(0.0, 2.0, 10).is_err());
    /// ```
    pub fn linspace(start: f64, stop: f64, points: usize) -> Result<Self, GridError> {
        if !start.is_finite() || !stop.is_finite() {
            return Err(GridError::NotFinite);
        }
        if points < 3 {
            return Err(GridError::TooFewPoints(points));
        }
        if start >= stop {
            return Err(GridError::NotIncreasing { start, stop });
        }
        let step = (stop - start) / (points - 1) as f64;
        let mut alphas: Vec<f64> = (0..points).map(|k| start + step * k as f64).collect();
        // The last point is `stop` by definition; repeated addition may miss it by an ulp.
        alphas[points - 1] = stop;
        for target in [0.0, 1.0] {
            let tol = GRID_EPS * step.max(1.0);
            match alphas.iter_mut().find(|a| (**a - target).abs() <= tol) {
                Some(a) => *a = target,
                None => {
                    return Err(GridError::MissingEndpoint {
                        missing: target,
                        start,
                        stop,
                        points,
                    });
                }
            }
        }
        Ok(Self { alphas })
    }

    /// The grid values, increasing.
    pub fn values(&self) -> &[f64] {
        &self.alphas
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.alphas.len()
    }

    /// Always false: a grid has at least three points.
    pub fn is_empty(&self) -> bool {
        self.alphas.is_empty()
    }
}

/// (1−α)·a + α·b, elementwise.
pub fn lerp_tensor<const D: usize>(a: Tensor<D>, b: Tensor<D>, alpha: f64) -> Tensor<D> {
    a.mul_scalar(1.0 - alpha) + b.mul_scalar(alpha)
}

/// Collects every float tensor of a module, flattened, in traversal order.
struct Collect {
    out: Vec<Tensor<1>>,
}

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        self.out.push(t.reshape([n]));
    }
}

/// Replaces every float tensor `a` by (1−α)·a + α·b, taking the `b`s in traversal order.
struct Lerp {
    ends: std::vec::IntoIter<Tensor<1>>,
    alpha: f64,
}

impl ModuleMapper for Lerp {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let alpha = self.alpha;
        // Both modules come from the same config, so traversal orders and shapes agree; a
        // missing tensor would be a programming error caught by the shape check in `reshape`.
        let b = self.ends.next();
        param.map(|a| match b {
            Some(b) => {
                let shape = a.shape();
                lerp_tensor(a, b.reshape(shape), alpha)
            }
            None => a,
        })
    }
}

/// θ(α) for two modules of the same architecture: every float tensor, batch-norm running
/// statistics included, is interpolated.
pub fn lerp_modules<M: Module>(start: &M, end: &M, alpha: f64) -> M {
    let mut collect = Collect { out: Vec::new() };
    end.visit(&mut collect);
    let mut lerp = Lerp {
        ends: collect.out.into_iter(),
        alpha,
    };
    // Not `start.clone()`: a clone shares batch-norm running statistics (`RunningState` is an
    // `Arc`), and mapping writes them in place, which would move `start` itself along the line.
    // `valid()` builds fresh running states.
    start.valid().map(&mut lerp)
}

/// Replaces every float tensor `a` by a + Σ_k c_k·d_k, taking each term's tensors in
/// traversal order.
struct Affine {
    terms: Vec<(f64, std::vec::IntoIter<Tensor<1>>)>,
}

impl ModuleMapper for Affine {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let parts: Vec<(f64, Option<Tensor<1>>)> = self
            .terms
            .iter_mut()
            .map(|(c, it)| (*c, it.next()))
            .collect();
        param.map(|a| {
            let shape = a.shape();
            parts.into_iter().fold(a, |acc, (c, d)| match d {
                Some(d) if c != 0.0 => acc + d.reshape(shape.clone()).mul_scalar(c),
                _ => acc,
            })
        })
    }
}

/// base + Σ_k c_k·d_k for modules of one architecture: every float tensor, running
/// statistics included (a direction whose statistics are 0 leaves the base's).
pub fn affine_modules<M: Module>(base: &M, terms: &[(f64, &M)]) -> M {
    let terms = terms
        .iter()
        .map(|(c, m)| {
            let mut collect = Collect { out: Vec::new() };
            m.visit(&mut collect);
            (*c, collect.out.into_iter())
        })
        .collect();
    // `valid()`, as in `lerp_modules`: fresh running states, so the base never moves.
    base.valid().map(&mut Affine { terms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_grid_has_41_points_with_exact_endpoints() {
        let g = AlphaGrid::linspace(-0.5, 1.5, 41).unwrap();
        assert_eq!(g.len(), 41);
        assert_eq!(g.values()[10], 0.0);
        assert_eq!(g.values()[30], 1.0);
        assert_eq!(g.values()[0], -0.5);
        assert_eq!(g.values()[40], 1.5);
        assert!(g.values().windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn grids_without_endpoints_or_points_are_refused() {
        assert_eq!(
            AlphaGrid::linspace(0.0, 1.0, 2),
            Err(GridError::TooFewPoints(2))
        );
        assert!(matches!(
            AlphaGrid::linspace(0.0, 2.0, 10),
            Err(GridError::MissingEndpoint { missing, .. }) if missing == 1.0
        ));
        assert!(matches!(
            AlphaGrid::linspace(0.1, 1.0, 10),
            Err(GridError::MissingEndpoint { missing, .. }) if missing == 0.0
        ));
        assert!(matches!(
            AlphaGrid::linspace(1.0, 0.0, 5),
            Err(GridError::NotIncreasing { .. })
        ));
        assert_eq!(
            AlphaGrid::linspace(f64::NAN, 1.0, 5),
            Err(GridError::NotFinite)
        );
        // linspace(0, 1, 51) is the Lucas et al. grid.
        assert_eq!(AlphaGrid::linspace(0.0, 1.0, 51).unwrap().len(), 51);
    }

    #[test]
    fn lerping_modules_leaves_both_endpoints_untouched() {
        use crate::config::ModelConfig;
        use crate::model::Net;
        let device = Device::flex();
        let cfg = ModelConfig {
            hidden: vec![3],
            norm: Some(crate::config::Norm::Batch),
            ..ModelConfig::default()
        };
        let a = Net::new(&cfg, [1, 1, 2], 2, &device);
        let b = lerp_modules(&a, &a, 3.0).map(&mut Scale(2.0));
        let before = a.min_running_var();
        let mid = lerp_modules(&a, &b, -4.0);
        assert_eq!(a.min_running_var(), before, "the start moved");
        assert_eq!(before, Some(1.0));
        // (1+4)·1 − 4·2 = −3.
        assert_eq!(mid.min_running_var(), Some(-3.0));
    }

    struct Scale(f64);
    impl ModuleMapper for Scale {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let k = self.0;
            p.map(|t| t.mul_scalar(k))
        }
    }

    #[test]
    fn lerp_returns_the_endpoints_exactly() {
        let device = Device::flex();
        let a = Tensor::<2>::from_data(
            TensorData::new(vec![0.1f32, -3.7, 1e-8, 12345.678, -0.0, 0.3], [2, 3]),
            &device,
        );
        let b = Tensor::<2>::from_data(
            TensorData::new(vec![9.9f32, 0.25, -1e-7, 3.0, 7.5, -0.3], [2, 3]),
            &device,
        );
        let at0: Vec<f32> = lerp_tensor(a.clone(), b.clone(), 0.0)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let at1: Vec<f32> = lerp_tensor(a.clone(), b.clone(), 1.0)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let a_v: Vec<f32> = a.clone().into_data().try_into_vec::<f32>().unwrap();
        let b_v: Vec<f32> = b.clone().into_data().try_into_vec::<f32>().unwrap();
        assert_eq!(at0, a_v);
        assert_eq!(at1, b_v);
        let mid: Vec<f32> = lerp_tensor(a, b, 0.5)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert!((mid[0] - 5.0).abs() < 1e-6);
    }
}
