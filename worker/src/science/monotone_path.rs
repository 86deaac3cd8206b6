//! The monotone path of Safran & Shamir (2016) along the line θ(α).
//!
//! Scaling the last linear layer (weight and bias) by c ≥ 0 scales the logits z by c, so the
//! loss of θ(α) with that layer scaled is g_α(c) = mean_i [logsumexp(c·z_i) − c·z_{i,y_i}]: a
//! convex function of c with g_α(0) = ln K (the uniform prediction). Its minimum m(α) over c
//! is reached at c*(α). The path's value is the non-increasing envelope
//! M(α) = max(L(θ_c), max_{α' ≥ α} m(α')) for α > 0, with M(0) = L(θ_i); at each α the scale
//! c(α) solves g_α(c) = M(α) on one side of c*(α), the side c = 1 is on at θ_c. When
//! L(θ_i) > ln K, the path from θ_i (c = 1) to θ_c (c = 1) never goes up.
//!
//! Everything here works on logits already computed at θ(α) (the engine computes them), so
//! that every formula is checked against closed forms.

/// The largest scale searched for c*: beyond it a loss that still falls is taken as
/// minimised there (every example already classified with a margin).
pub const C_MAX: f64 = 1000.0;

/// Bisection steps: [0, 1000] shrinks below 1e-15 of its width.
const STEPS: usize = 64;

/// g(c) for one set of logits.
#[derive(Debug, Clone, Copy)]
pub struct ScaledLoss<'a> {
    logits: &'a [f32],
    labels: &'a [u16],
    classes: usize,
}

/// Which side of c*(α) the path's scale is taken on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    /// c ∈ [0, c*]: g falls from ln K to m.
    Below,
    /// c ∈ [c*, C_MAX]: g rises from m.
    Above,
}

impl<'a> ScaledLoss<'a> {
    /// `logits` is row-major `[labels.len(), classes]`.
    ///
    /// # Panics
    /// When the lengths disagree or a label is not below `classes` (a programming error: the
    /// engine builds both from one evaluation set).
    pub fn new(logits: &'a [f32], labels: &'a [u16], classes: usize) -> Self {
        assert_eq!(logits.len(), labels.len() * classes, "one row per label");
        assert!(labels.iter().all(|&y| usize::from(y) < classes));
        Self {
            logits,
            labels,
            classes,
        }
    }

    fn rows(&self) -> impl Iterator<Item = (&[f32], usize)> {
        self.logits
            .chunks_exact(self.classes)
            .zip(self.labels.iter().map(|&y| usize::from(y)))
    }

    /// g(c) and g'(c): the mean cross-entropy of the scaled logits, and its derivative
    /// mean_i [Σ_j softmax(c·z_i)_j·z_ij − z_{i,y_i}].
    pub fn value_and_slope(&self, c: f64) -> (f64, f64) {
        let (mut loss, mut slope) = (0.0, 0.0);
        for (z, y) in self.rows() {
            let top = z
                .iter()
                .fold(f64::NEG_INFINITY, |m, &v| m.max(c * f64::from(v)));
            let (mut sum, mut weighted) = (0.0, 0.0);
            for &v in z {
                let e = (c * f64::from(v) - top).exp();
                sum += e;
                weighted += e * f64::from(v);
            }
            loss += top + sum.ln() - c * f64::from(z[y]);
            slope += weighted / sum - f64::from(z[y]);
        }
        let n = self.labels.len().max(1) as f64;
        (loss / n, slope / n)
    }

    /// g(c).
    pub fn loss(&self, c: f64) -> f64 {
        self.value_and_slope(c).0
    }

    /// (c*, m): the minimiser of g on [0, C_MAX] and the minimum.
    pub fn minimum(&self) -> (f64, f64) {
        let slope = |c: f64| self.value_and_slope(c).1;
        if slope(0.0) >= 0.0 {
            return (0.0, self.loss(0.0));
        }
        if slope(C_MAX) <= 0.0 {
            return (C_MAX, self.loss(C_MAX));
        }
        let (mut lo, mut hi) = (0.0, C_MAX);
        for _ in 0..STEPS {
            let mid = 0.5 * (lo + hi);
            if slope(mid) < 0.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let c = 0.5 * (lo + hi);
        (c, self.loss(c))
    }

    /// The c on `branch` of `c_star` with g(c) = `target`; `None` when g does not reach it
    /// there (above ln K below c*, or above g(C_MAX) above it).
    pub fn solve(&self, target: f64, c_star: f64, branch: Branch) -> Option<f64> {
        let (mut lo, mut hi) = match branch {
            Branch::Below => (0.0, c_star),
            Branch::Above => (c_star, C_MAX),
        };
        let (g_lo, g_hi) = (self.loss(lo), self.loss(hi));
        // g is monotone on either side of c*: decreasing below, increasing above.
        let (low_end, high_end) = match branch {
            Branch::Below => (g_hi, g_lo),
            Branch::Above => (g_lo, g_hi),
        };
        let tol = 1e-12 * target.abs().max(1.0);
        if target < low_end - tol || target > high_end + tol {
            return None;
        }
        for _ in 0..STEPS {
            let mid = 0.5 * (lo + hi);
            let above_target = self.loss(mid) > target;
            // Below c*, g falls as c grows: too high means c is too small.
            if above_target == (branch == Branch::Below) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(0.5 * (lo + hi))
    }
}

/// The side of c*(1) that c = 1 is on at θ_c: below when g_1 still falls at 1.
pub fn branch_at_end(end: &ScaledLoss<'_>) -> Branch {
    if end.value_and_slope(1.0).1 <= 0.0 {
        Branch::Below
    } else {
        Branch::Above
    }
}

/// M at every grid point: `alphas` ascending from 0 to 1, `minima` the m(α) at each,
/// `init_loss` = L(θ_i), `final_loss` = L(θ_c). Non-increasing when L(θ_i) ≥ every m (which
/// L(θ_i) > ln K guarantees, since m(α) ≤ g_α(0) = ln K).
///
/// ```
/// use linesweep_worker::science::monotone_path::envelope;
/// let m = envelope(&[0.0, 0.5, 1.0], &[2.0, 1.0, 0.1], 3.0, 0.2);
/// assert_eq!(m, vec![3.0, 1.0, 0.2]);
/// ```
pub fn envelope(alphas: &[f64], minima: &[f64], init_loss: f64, final_loss: f64) -> Vec<f64> {
    assert_eq!(alphas.len(), minima.len(), "one minimum per α");
    let mut out = vec![0.0; alphas.len()];
    let mut running = final_loss;
    for i in (0..alphas.len()).rev() {
        running = running.max(minima[i]);
        out[i] = if alphas[i] == 0.0 { init_loss } else { running };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two classes, one example per row with logits (a, 0) and label 0: g(c) = ln(1 + e^(−ca)).
    #[test]
    fn scaled_loss_matches_the_closed_form() {
        let (logits, labels) = ([2.0f32, 0.0], [0u16]);
        let g = ScaledLoss::new(&logits, &labels, 2);
        for c in [0.0, 0.5, 1.0, 3.0] {
            let (v, s) = g.value_and_slope(c);
            let e = (-2.0 * c).exp();
            assert!((v - (1.0 + e).ln()).abs() < 1e-12, "g({c})");
            assert!((s - (-2.0 * e / (1.0 + e))).abs() < 1e-12, "g'({c})");
        }
        assert!((g.loss(0.0) - 2f64.ln()).abs() < 1e-12, "g(0) = ln K");
        // Always falling: the minimum sits at the cap.
        assert_eq!(g.minimum().0, C_MAX);
    }

    /// One example right with margin a, one wrong with margin b < a: g(c) =
    /// ½[ln(1+e^(−ca)) + ln(1+e^(cb))], minimised where e^(−ca)·a/(1+e^(−ca)) =
    /// e^(cb)·b/(1+e^(cb)).
    #[test]
    fn minimum_and_both_roots() {
        let logits = [3.0f32, 0.0, 1.0, 0.0];
        let labels = [0u16, 1];
        let g = ScaledLoss::new(&logits, &labels, 2);
        let closed = |c: f64| 0.5 * ((1.0 + (-3.0 * c).exp()).ln() + (1.0 + c.exp()).ln());
        let (c_star, m) = g.minimum();
        assert!((g.loss(c_star) - closed(c_star)).abs() < 1e-12);
        let slope = |c: f64| {
            let p = (-3.0 * c).exp();
            let q = c.exp();
            0.5 * (-3.0 * p / (1.0 + p) + q / (1.0 + q))
        };
        assert!(slope(c_star).abs() < 1e-9, "g'(c*) = {}", slope(c_star));
        assert!(m < 2f64.ln());
        let target = 0.5 * (m + 2f64.ln());
        let below = g.solve(target, c_star, Branch::Below).unwrap();
        let above = g.solve(target, c_star, Branch::Above).unwrap();
        assert!(below < c_star && c_star < above);
        assert!((closed(below) - target).abs() < 1e-10);
        assert!((closed(above) - target).abs() < 1e-10);
        // Below c*, g never exceeds ln K; the loss there cannot be reached.
        assert_eq!(g.solve(2f64.ln() + 0.1, c_star, Branch::Below), None);
        assert!(g.solve(m - 0.1, c_star, Branch::Above).is_none());
    }

    #[test]
    fn a_loss_rising_from_zero_has_its_minimum_at_zero() {
        // Every example wrong: g increases from ln K.
        let logits = [0.0f32, 1.0, 0.0, 2.0];
        let labels = [0u16, 0];
        let g = ScaledLoss::new(&logits, &labels, 2);
        let (c_star, m) = g.minimum();
        assert_eq!(c_star, 0.0);
        assert!((m - 2f64.ln()).abs() < 1e-12);
        assert_eq!(branch_at_end(&g), Branch::Above);
    }

    #[test]
    fn envelope_is_non_increasing_and_pins_both_ends() {
        let alphas = [0.0, 0.25, 0.5, 0.75, 1.0];
        // A bump in m at α = 0.75 holds M up from α = 0.25 on.
        let m = envelope(&alphas, &[2.3, 0.5, 0.4, 0.9, 0.1], 5.0, 0.2);
        assert_eq!(m, vec![5.0, 0.9, 0.9, 0.9, 0.2]);
        assert!(m.windows(2).all(|w| w[1] <= w[0]));
    }
}
