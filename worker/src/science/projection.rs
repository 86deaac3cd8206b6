//! Goodfellow et al.'s projection of the training trajectory onto the init→final line.
//!
//! With d = θ_c − θ_i and u = d/‖d‖, a snapshot θ_t projects to
//! `alpha_raw = (θ_t − θ_i)·u` (distance along the line), `alpha_frac = alpha_raw/‖d‖`
//! (comparable to the interpolation coefficient α) and `beta = ‖θ_t − θ_i − alpha_raw·u‖`
//! (the distance from the line, not its square). Everything accumulates in f64 because the
//! sums run over millions of f32 parameters.
//!
//! Callers pass parameters only: batch-norm running statistics are buffers, not coordinates.

/// Where one snapshot sits relative to the init→final line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    /// (θ_t − θ_i)·u, in parameter-space units.
    pub alpha_raw: f64,
    /// alpha_raw/‖θ_c − θ_i‖: 0 at θ_i, 1 at θ_c. NaN when θ_c = θ_i.
    pub alpha_frac: f64,
    /// ‖θ_t − θ_i − alpha_raw·u‖.
    pub beta: f64,
}

/// Projects points onto the line through `theta_i` and `theta_c`.
///
/// ```
/// use linesweep_worker::science::Projector;
/// let p = Projector::new(&[0.0, 0.0], &[2.0, 0.0]);
/// let q = p.project(&[1.0, 3.0]);
/// assert_eq!((q.alpha_raw, q.alpha_frac, q.beta), (1.0, 0.5, 3.0));
/// ```
#[derive(Debug, Clone)]
pub struct Projector<'a> {
    theta_i: &'a [f32],
    /// u = (θ_c − θ_i)/‖θ_c − θ_i‖, or all zeros when the two coincide.
    unit: Vec<f64>,
    distance: f64,
}

impl<'a> Projector<'a> {
    /// Builds the line from θ_i to θ_c. Both slices hold the same parameters in the same order.
    pub fn new(theta_i: &'a [f32], theta_c: &[f32]) -> Self {
        assert_eq!(
            theta_i.len(),
            theta_c.len(),
            "θ_i and θ_c must have the same length"
        );
        let diff: Vec<f64> = theta_i
            .iter()
            .zip(theta_c)
            .map(|(&a, &c)| f64::from(c) - f64::from(a))
            .collect();
        let distance = diff.iter().map(|x| x * x).sum::<f64>().sqrt();
        let unit = if distance > 0.0 {
            diff.into_iter().map(|x| x / distance).collect()
        } else {
            vec![0.0; theta_i.len()]
        };
        Self {
            theta_i,
            unit,
            distance,
        }
    }

    /// ‖θ_c − θ_i‖.
    pub fn distance(&self) -> f64 {
        self.distance
    }

    /// Projects θ_t.
    pub fn project(&self, theta_t: &[f32]) -> Projection {
        assert_eq!(
            theta_t.len(),
            self.theta_i.len(),
            "θ_t must have the length of θ_i"
        );
        let delta = || {
            self.theta_i
                .iter()
                .zip(theta_t)
                .map(|(&a, &t)| f64::from(t) - f64::from(a))
        };
        let alpha_raw: f64 = delta().zip(&self.unit).map(|(d, u)| d * u).sum();
        // The residual is summed directly instead of as ‖δ‖² − α², which cancels
        // catastrophically for points close to the line.
        let beta = delta()
            .zip(&self.unit)
            .map(|(d, u)| {
                let r = d - alpha_raw * u;
                r * r
            })
            .sum::<f64>()
            .sqrt();
        let alpha_frac = if self.distance > 0.0 {
            alpha_raw / self.distance
        } else {
            f64::NAN
        };
        Projection {
            alpha_raw,
            alpha_frac,
            beta,
        }
    }
}

/// Euclidean norm in f64.
pub fn norm(x: &[f32]) -> f64 {
    x.iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * (1.0 + b.abs())
    }

    #[test]
    fn endpoints_and_points_on_the_line() {
        let ti = [1.0f32, 2.0, 3.0];
        let tc = [4.0f32, 6.0, 3.0]; // d = (3, 4, 0), ‖d‖ = 5
        let p = Projector::new(&ti, &tc);
        assert!(close(p.distance(), 5.0));
        let at_i = p.project(&ti);
        assert_eq!(
            (at_i.alpha_raw, at_i.alpha_frac, at_i.beta),
            (0.0, 0.0, 0.0)
        );
        let at_c = p.project(&tc);
        assert!(close(at_c.alpha_raw, 5.0) && close(at_c.alpha_frac, 1.0) && at_c.beta < 1e-12);
        // A point on the line beyond θ_c: α_frac = 2, β = 0.
        let far = p.project(&[7.0, 10.0, 3.0]);
        assert!(close(far.alpha_frac, 2.0) && far.beta < 1e-12);
    }

    #[test]
    fn off_line_point_has_distance_not_squared_distance() {
        let ti = [0.0f32, 0.0, 0.0];
        let tc = [2.0f32, 0.0, 0.0];
        let p = Projector::new(&ti, &tc);
        // (1, 3, 4): 1 along the line (α_frac = 0.5), 5 away from it (not 25).
        let q = p.project(&[1.0, 3.0, 4.0]);
        assert!(close(q.alpha_raw, 1.0));
        assert!(close(q.alpha_frac, 0.5));
        assert!(close(q.beta, 5.0));
        // Behind the start: negative α.
        let back = p.project(&[-1.0, 0.0, 0.0]);
        assert!(close(back.alpha_frac, -0.5) && back.beta < 1e-12);
    }

    #[test]
    fn degenerate_line_gives_nan_fraction_and_plain_distance() {
        let ti = [1.0f32, 1.0];
        let p = Projector::new(&ti, &ti);
        let q = p.project(&[4.0, 5.0]);
        assert_eq!(q.alpha_raw, 0.0);
        assert!(q.alpha_frac.is_nan());
        assert!(close(q.beta, 5.0));
    }

    #[test]
    fn norm_is_euclidean() {
        assert!(close(norm(&[3.0, 4.0]), 5.0));
    }
}
