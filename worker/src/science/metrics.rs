//! Per-line metrics of the MLI literature.
//!
//! Δ_min (Lucas et al. 2021) is the smallest Δ ≥ 0 with L(α') ≤ L(α) + Δ for all α < α' in
//! [0, 1]; on a grid it is max over i < j of L_j − L_i, floored at 0. The reference code
//! (`eval_monotonic`) misses a rise that happens only at the last grid step; this one does not.

/// Monotonicity of a loss curve on α ∈ [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineShape {
    /// Δ_min: the largest rise L_j − L_i over grid points i < j in [0, 1]; 0 when monotone.
    pub delta_min: f64,
    /// True when the loss never rises on [0, 1] (Δ_min = 0).
    pub monotone: bool,
}

/// Δ_min and monotonicity of `losses` over the grid points with 0 ≤ α ≤ 1.
///
/// Returns `None` when any loss on [0, 1] is not finite: a NaN must not read as "monotone,
/// Δ = 0" (in most languages `max(0, NaN)` is 0).
///
/// ```
/// use linesweep_worker::science::shape_on_unit_interval;
/// let alphas = [0.0, 0.5, 1.0];
/// // A rise at the last grid step is a bump of height 0.2.
/// let s = shape_on_unit_interval(&alphas, &[2.3, 0.4, 0.6]).unwrap();
/// assert!(!s.monotone && (s.delta_min - 0.2).abs() < 1e-12);
/// ```
pub fn shape_on_unit_interval(alphas: &[f64], losses: &[f64]) -> Option<LineShape> {
    assert_eq!(alphas.len(), losses.len(), "one loss per α");
    let mut lowest_so_far = f64::INFINITY;
    let mut delta: f64 = 0.0;
    let mut any = false;
    for (&a, &l) in alphas.iter().zip(losses) {
        if !(0.0..=1.0).contains(&a) {
            continue;
        }
        if !l.is_finite() {
            return None;
        }
        any = true;
        delta = delta.max(l - lowest_so_far);
        lowest_so_far = lowest_so_far.min(l);
    }
    any.then_some(LineShape {
        delta_min: delta,
        monotone: delta == 0.0,
    })
}

/// The α of the smallest finite loss on the grid (first one on ties); `None` if none is finite.
pub fn alpha_of_min(alphas: &[f64], losses: &[f64]) -> Option<f64> {
    alphas
        .iter()
        .zip(losses)
        .filter(|(_, l)| l.is_finite())
        .fold(None, |best: Option<(f64, f64)>, (&a, &l)| match best {
            Some((_, bl)) if bl <= l => best,
            _ => Some((a, l)),
        })
        .map(|(a, _)| a)
}

/// The barrier of a curve on [0, 1]: how far it rises above the chord between its ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Barrier {
    /// max over α in [0, 1] of L(α) − ((1−α)·L(0) + α·L(1)); ≥ 0 (the chord meets the curve
    /// at both ends).
    pub height: f64,
    /// The α where it is reached (the first, on ties; 0 when the curve never rises above it).
    pub alpha: f64,
}

/// The barrier of `values` over the grid points with 0 ≤ α ≤ 1 (Entezari et al. 2021;
/// Frankle et al. 2020 measure the error's rise over the endpoints' *mean* instead, which is
/// the same number when the two ends are equal).
///
/// Returns `None` when α = 0 or α = 1 is not on the grid, or a value on [0, 1] is not finite.
///
/// ```
/// use linesweep_worker::science::barrier;
/// // Ends 2.0 and 0.0: the chord at α = 0.5 is 1.0, the curve 1.5 there.
/// let b = barrier(&[0.0, 0.5, 1.0], &[2.0, 1.5, 0.0]).unwrap();
/// assert!((b.height - 0.5).abs() < 1e-12 && b.alpha == 0.5);
/// ```
pub fn barrier(alphas: &[f64], values: &[f64]) -> Option<Barrier> {
    assert_eq!(alphas.len(), values.len(), "one value per α");
    let at = |a: f64| alphas.iter().position(|&x| x == a).map(|i| values[i]);
    let (v0, v1) = (at(0.0)?, at(1.0)?);
    let mut best = Barrier {
        height: 0.0,
        alpha: 0.0,
    };
    for (&a, &v) in alphas.iter().zip(values) {
        if !(0.0..=1.0).contains(&a) {
            continue;
        }
        if !v.is_finite() {
            return None;
        }
        let rise = v - ((1.0 - a) * v0 + a * v1);
        if rise > best.height {
            best = Barrier {
                height: rise,
                alpha: a,
            };
        }
    }
    Some(best)
}

/// ln K: the cross-entropy of the all-zero (uniform) predictor over K classes.
pub fn ln_k(classes: usize) -> f64 {
    (classes as f64).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRID: [f64; 7] = [-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5];

    #[test]
    fn decreasing_curve_is_monotone() {
        let s = shape_on_unit_interval(&GRID, &[9.0, 2.3, 1.5, 1.0, 0.5, 0.1, 5.0]).unwrap();
        assert_eq!(
            s,
            LineShape {
                delta_min: 0.0,
                monotone: true
            }
        );
    }

    #[test]
    fn flat_curve_is_monotone() {
        let s = shape_on_unit_interval(&GRID, &[0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]).unwrap();
        assert!(s.monotone && s.delta_min == 0.0);
    }

    #[test]
    fn bump_height_is_measured_from_the_lowest_earlier_point() {
        // Falls to 1.0, rises to 1.8, falls again: Δ = 0.8. Points outside [0,1] are ignored.
        let s = shape_on_unit_interval(&GRID, &[0.0, 2.0, 1.0, 1.8, 0.9, 0.2, 99.0]).unwrap();
        assert!((s.delta_min - 0.8).abs() < 1e-12);
        assert!(!s.monotone);
    }

    #[test]
    fn rise_at_the_last_grid_step_counts() {
        // The published eval_monotonic misses exactly this case.
        let s = shape_on_unit_interval(&GRID, &[0.0, 2.0, 1.5, 1.0, 0.5, 0.75, 0.0]).unwrap();
        assert!((s.delta_min - 0.25).abs() < 1e-12);
        assert!(!s.monotone);
    }

    #[test]
    fn largest_of_several_bumps_wins() {
        let s = shape_on_unit_interval(&GRID, &[0.0, 1.0, 1.3, 0.5, 0.9, 0.6, 0.0]).unwrap();
        assert!((s.delta_min - 0.4).abs() < 1e-12);
    }

    #[test]
    fn non_finite_loss_in_unit_interval_gives_no_verdict() {
        assert_eq!(
            shape_on_unit_interval(&GRID, &[0.0, 2.0, f64::NAN, 1.0, 0.5, 0.1, 0.0]),
            None
        );
        // NaN outside [0,1] (e.g. negative batch-norm variance at α < 0) does not matter.
        assert!(
            shape_on_unit_interval(&GRID, &[f64::NAN, 2.0, 1.5, 1.0, 0.5, 0.1, f64::NAN]).is_some()
        );
    }

    #[test]
    fn barrier_is_the_largest_rise_above_the_chord() {
        // Chord from 2.0 to 0.0; the curve is 1.6 at α = 0.25 (chord 1.5) and 1.4 at α = 0.5
        // (chord 1.0): the barrier is 0.4 at α = 0.5. Points outside [0, 1] do not count.
        let b = barrier(&GRID, &[99.0, 2.0, 1.6, 1.4, 0.4, 0.0, 99.0]).unwrap();
        assert!((b.height - 0.4).abs() < 1e-12, "{b:?}");
        assert_eq!(b.alpha, 0.5);
    }

    #[test]
    fn a_curve_below_its_chord_has_no_barrier() {
        // Convex and decreasing (the usual MLI line): never above the chord.
        let b = barrier(&GRID, &[5.0, 2.3, 1.0, 0.5, 0.2, 0.1, 0.5]).unwrap();
        assert_eq!(
            b,
            Barrier {
                height: 0.0,
                alpha: 0.0
            }
        );
        // A straight line is its own chord.
        let b = barrier(&GRID, &[0.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]).unwrap();
        assert!(b.height.abs() < 1e-12);
    }

    #[test]
    fn a_monotone_curve_can_still_have_a_barrier() {
        // Flat until late (Frankle 2020): monotone, Δ_min = 0, but high above the chord.
        let losses = [9.0, 2.3, 2.3, 2.3, 2.2, 0.1, 9.0];
        assert!(shape_on_unit_interval(&GRID, &losses).unwrap().monotone);
        let b = barrier(&GRID, &losses).unwrap();
        // At α = 0.75 the chord is 0.25·2.3 + 0.75·0.1 = 0.65.
        assert!((b.height - (2.2 - 0.65)).abs() < 1e-12, "{b:?}");
        assert_eq!(b.alpha, 0.75);
    }

    #[test]
    fn barrier_needs_both_ends_and_finite_values() {
        assert_eq!(barrier(&[0.0, 0.5], &[1.0, 2.0]), None);
        assert_eq!(barrier(&[0.5, 1.0], &[1.0, 2.0]), None);
        assert_eq!(
            barrier(&GRID, &[0.0, 1.0, f64::NAN, 0.5, 0.2, 0.1, 0.0]),
            None
        );
        // Non-finite outside [0, 1] is ignored, as for Δ_min.
        assert!(barrier(&GRID, &[f64::NAN, 1.0, 0.5, 0.4, 0.2, 0.1, f64::INFINITY]).is_some());
    }

    #[test]
    fn argmin_and_ln_k() {
        assert_eq!(
            alpha_of_min(&GRID, &[3.0, 2.0, 1.0, 0.5, 0.5, 0.7, f64::NAN]),
            Some(0.5)
        );
        assert_eq!(alpha_of_min(&[0.0], &[f64::NAN]), None);
        assert!((ln_k(10) - std::f64::consts::LN_10).abs() < 1e-15);
    }
}
