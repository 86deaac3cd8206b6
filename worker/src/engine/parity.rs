//! Does a device compute what the CPU computes? One θ_i, the same fixed batches, a few
//! training steps and the line's α = 0 and α = 1 rows, on a reference device (the CPU) and on
//! the device under test, compared within a tolerance.
//!
//! Why: GPU backends run autotuned and fused kernels, and fusion has had correctness bugs
//! upstream (tracel-ai/burn#5122, #5202). A wrong kernel gives numbers that look like a result.
//! A device that fails this check must not produce shards.
//!
//! What is compared, each as a relative difference:
//! - the mini-batch loss of every step;
//! - every tensor after the steps (parameters and batch-norm statistics), relative to its
//!   size;
//! - loss (relative) and accuracy (absolute) at α = 0, 0.5 and 1 of the line between the
//!   reference's θ_i and θ_c, evaluated on each device.

use burn::module::Module;
use burn::optim::GradientsParams;

use super::eval::{EvalSet, cross_entropy};
use super::line::{Line, evaluate_line};
use super::train::{batch_tensors, net_from_snapshot, new_net, optimizer};
use super::{EngineError, NoProgress};
use crate::config::{Arch, BnMode, ModelConfig, OptimizerName, Precision, TrainConfig};
use crate::data::Split;
use crate::device::ComputeDevice;
use crate::science::{AlphaGrid, projection};
use crate::snapshot::HostSnapshot;

/// One network to compare on.
#[derive(Debug, Clone)]
pub struct Case {
    /// Shown in reports.
    pub name: &'static str,
    /// The network.
    pub model: ModelConfig,
    /// `[channels, height, width]` of one example.
    pub input: [usize; 3],
    /// Classes.
    pub classes: usize,
    /// Examples per training batch.
    pub batch: usize,
    /// Training steps.
    pub steps: usize,
    /// The optimizer (SGD with momentum and weight decay, or Adam).
    pub train: TrainConfig,
}

/// The cases the device check runs: the default MLP and ResNet-20 with batch norm, SGD with
/// momentum and weight decay, on fixed batches of the built-in digits. Not Adam: its first
/// steps move every weight by about ±lr whatever the gradient's size, so the sign of a
/// near-zero gradient, which any change of summation order can flip, decides a whole step.
pub fn default_cases() -> Vec<Case> {
    let sgd = TrainConfig {
        optimizer: OptimizerName::Sgd,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..TrainConfig::default()
    };
    vec![
        Case {
            name: "mlp",
            model: ModelConfig::default(),
            input: [1, 28, 28],
            classes: 10,
            batch: 64,
            steps: 4,
            train: sgd.clone(),
        },
        Case {
            name: "resnet20",
            model: ModelConfig {
                arch: Arch::Resnet20,
                ..ModelConfig::default()
            },
            input: [3, 32, 32],
            classes: 10,
            batch: 32,
            steps: 4,
            train: sgd,
        },
    ]
}

/// The relative tolerance that fits a precision, when both devices compute in it: f32 kernels
/// may use TF32 tensor cores (10-bit mantissa) and other summation orders, bf16 ones round to
/// 8 bits. Measured on the CPU, bf16 against f32 after 2 steps differs by up to 5.8 % in a
/// weight tensor (ResNet-20's first convolution) and 1.6 % in a loss; TF32 rounds 8× finer.
/// A wrong kernel differs by the size of an update or more. Provisional until measured on GPUs
/// (`scripts/gpu-check.sh` prints the largest differences).
pub fn default_tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 2e-2,
        Precision::Bf16 => 5e-2,
    }
}

/// One compared quantity.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Check {
    /// The case (`mlp`, `resnet20`).
    pub case: String,
    /// What was compared, e.g. `loss at step 2`, `tensor layer1.0.conv1.weight`.
    pub what: String,
    /// The reference device's value (the tensor's norm, for tensors).
    pub reference: f64,
    /// The difference, relative unless `what` says otherwise.
    pub difference: f64,
    /// Whether `difference` is within the tolerance.
    pub ok: bool,
}

/// Everything the check measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The reference device.
    pub reference: String,
    /// The device under test.
    pub device: String,
    /// The device's precision.
    pub precision: &'static str,
    /// The reference's precision.
    pub reference_precision: &'static str,
    /// The tolerance every check was held to.
    pub tolerance: f64,
    /// Every comparison.
    pub checks: Vec<Check>,
}

impl Report {
    /// The checks beyond tolerance.
    pub fn failures(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.ok).collect()
    }

    /// The largest difference, and what it was.
    pub fn worst(&self) -> Option<&Check> {
        self.checks
            .iter()
            .max_by(|a, b| a.difference.total_cmp(&b.difference))
    }
}

/// `|a − b| / max(|b|, floor)`; NaN anywhere is an infinite difference.
fn relative(a: f64, b: f64, floor: f64) -> f64 {
    let d = (a - b).abs() / b.abs().max(floor);
    if d.is_nan() { f64::INFINITY } else { d }
}

/// ‖a − b‖ in f64.
fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// A device and the arithmetic of its forward passes.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// The device.
    pub device: &'a ComputeDevice,
    /// f32, or bf16 forward passes over f32 weights.
    pub precision: Precision,
}

/// Runs every case on `reference` and on `device` and compares.
pub fn check(
    cases: &[Case],
    reference: Side,
    device: Side,
    tolerance: f64,
) -> Result<Report, EngineError> {
    for side in [reference, device] {
        if !crate::model::precision::supported(&side.device.device, side.precision) {
            return Err(EngineError::Config(format!(
                "the device {} cannot compute in {}",
                side.device.name,
                side.precision.as_str()
            )));
        }
    }
    let mut checks = Vec::new();
    for case in cases {
        checks.extend(check_case(case, reference, device, tolerance)?);
    }
    Ok(Report {
        reference: reference.device.name.clone(),
        device: device.device.name.clone(),
        precision: device.precision.as_str(),
        reference_precision: reference.precision.as_str(),
        tolerance,
        checks,
    })
}

/// What one device produced for a case.
struct Run {
    losses: Vec<f64>,
    trained: HostSnapshot,
}

fn check_case(
    case: &Case,
    reference: Side,
    device: Side,
    tolerance: f64,
) -> Result<Vec<Check>, EngineError> {
    let init = initial_snapshot(case, reference.device)?;
    let digits = crate::data::mnist::load_builtin()?.train;
    let needed = case.batch * (case.steps + 2);
    if needed > digits.len() {
        return Err(EngineError::Config(format!(
            "the check of {} needs {needed} examples ({} steps of {} and 2 evaluation batches); \
             the built-in sample has {}: use fewer steps",
            case.name,
            case.steps,
            case.batch,
            digits.len()
        )));
    }
    let batches = fixed_split(case, &digits, 0, case.batch * case.steps);
    let run_ref = train_steps(case, &init, &batches, reference)?;
    let run_dev = train_steps(case, &init, &batches, device)?;
    let check = |what: String, reference: f64, difference: f64, limit: f64| Check {
        case: case.name.to_owned(),
        what,
        reference,
        difference,
        ok: difference <= limit,
    };
    let mut out = Vec::new();
    for (i, (a, b)) in run_dev.losses.iter().zip(&run_ref.losses).enumerate() {
        let d = relative(*a, *b, 1e-3);
        out.push(check(format!("loss at step {}", i + 1), *b, d, tolerance));
    }
    // Weights relative to their own size. A tensor that starts at zero (biases) holds only
    // its updates, which rounding changes by tens of per cent in a network with batch norm
    // (the gradient of a weight before a batch norm is a near-cancelling sum): it is measured
    // against the size a tensor of its length has in this network instead.
    let all = run_ref.trained.parameter_vector();
    let rms = projection::norm(&all) / (all.len().max(1) as f64).sqrt();
    for (td, tr) in run_dev.trained.tensors.iter().zip(&run_ref.trained.tensors) {
        let apart = distance(&tr.data, &td.data);
        let size = projection::norm(&tr.data);
        let typical = rms * (tr.data.len() as f64).sqrt();
        let d = apart / size.max(typical).max(1e-12);
        let d = if d.is_nan() { f64::INFINITY } else { d };
        out.push(check(format!("tensor {}", tr.name), size, d, tolerance));
    }
    let eval = fixed_split(case, &digits, case.batch * case.steps, 2 * case.batch);
    out.extend(
        line_checks(case, &init, &run_ref.trained, &eval, reference, device)?
            .into_iter()
            .map(|(what, r, d, absolute)| {
                let limit = if absolute {
                    tolerance.max(1.5 / (2 * case.batch) as f64)
                } else {
                    tolerance
                };
                check(what, r, d, limit)
            }),
    );
    Ok(out)
}

/// θ_i of the case, drawn on the reference device from a fixed seed.
fn initial_snapshot(case: &Case, reference: &ComputeDevice) -> Result<HostSnapshot, EngineError> {
    let ad = reference.device.clone().autodiff();
    let net = new_net(&case.model, case.input, case.classes, &ad, Some(7));
    Ok(HostSnapshot::capture(&net.valid(), 0)?)
}

/// Examples `from..from + n` of the built-in MNIST sample, as the case's input: real digits,
/// so that the gradients are coherent (on noise with random labels they are sums of
/// near-cancelling terms, where any rounding is a large relative change). For 3×32×32 inputs
/// each digit is padded with its background and repeated over the channels.
fn fixed_split(case: &Case, digits: &Split, from: usize, n: usize) -> Split {
    let [c, h, w] = case.input;
    let mut features = Vec::with_capacity(n * c * h * w);
    for i in from..from + n {
        let digit = &digits.features[i * 28 * 28..(i + 1) * 28 * 28];
        let background = digit[0];
        let (top, left) = (h.saturating_sub(28) / 2, w.saturating_sub(28) / 2);
        for _ in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let (sy, sx) = (y.wrapping_sub(top), x.wrapping_sub(left));
                    features.push(if sy < 28 && sx < 28 {
                        digit[sy * 28 + sx]
                    } else {
                        background
                    });
                }
            }
        }
    }
    Split {
        features,
        labels: digits.labels[from..from + n]
            .iter()
            .map(|&l| l % case.classes as u16)
            .collect(),
        shape: case.input,
    }
}

/// `case.steps` training steps from `init` on `device`, with forward passes in `precision`.
fn train_steps(
    case: &Case,
    init: &HostSnapshot,
    batches: &Split,
    side: Side,
) -> Result<Run, EngineError> {
    let precision = side.precision;
    let ad = side.device.device.clone().autodiff();
    let template = new_net(&case.model, case.input, case.classes, &ad, None);
    let mut net = net_from_snapshot(&template, init)?;
    let mut optim = optimizer(&case.train);
    let per = case.input.iter().product::<usize>();
    let mut losses = Vec::with_capacity(case.steps);
    for step in 0..case.steps {
        let rows = step * case.batch..(step + 1) * case.batch;
        let x = batches.features[rows.start * per..rows.end * per].to_vec();
        let (x, y) = batch_tensors(x, &batches.labels[rows], case.input, &ad);
        let loss = cross_entropy(net.autocast(precision).forward(x), y).mean();
        losses.push(f64::from(loss.clone().into_scalar::<f32>()));
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(case.train.lr, net, grads);
    }
    let trained = HostSnapshot::capture(&net.valid(), case.steps as u64)?;
    Ok(Run { losses, trained })
}

/// The line from the reference's θ_i to its θ_c at α = 0 and 1 on both devices: `(what,
/// reference value, difference, whether the difference is absolute)`.
fn line_checks(
    case: &Case,
    init: &HostSnapshot,
    last: &HostSnapshot,
    eval: &Split,
    reference: Side,
    device: Side,
) -> Result<Vec<(String, f64, f64, bool)>, EngineError> {
    let grid = AlphaGrid::linspace(0.0, 1.0, 3)
        .map_err(|e| EngineError::Config(format!("the check's α grid: {e}")))?;
    let points = |side: Side| -> Result<_, EngineError> {
        let (dev, precision) = (side.device, side.precision);
        let template = new_net(&case.model, case.input, case.classes, &dev.device, None);
        let start = net_from_snapshot(&template, init)?;
        let end = net_from_snapshot(&template, last)?;
        let set = EvalSet::new(eval, case.batch, &dev.device);
        let line = Line {
            start_label: "init",
            start: &start,
            end: &end,
            bn_mode: end.has_batch_norm().then_some(BnMode::Interpolate),
            bn_batches: None,
            precision,
        };
        Ok(evaluate_line(&line, &grid, &[&set], &NoProgress))
    };
    let ours = points(device)?;
    let theirs = points(reference)?;
    let mut out = Vec::new();
    for (p, r) in ours.iter().zip(&theirs) {
        let (Some(pv), Some(rv)) = (p.value, r.value) else {
            let what = format!("line α = {}: a point has no value", r.alpha);
            out.push((what, f64::NAN, f64::INFINITY, false));
            continue;
        };
        out.push((
            format!("line loss at α = {}", r.alpha),
            rv.loss,
            relative(pv.loss, rv.loss, 1e-3),
            false,
        ));
        out.push((
            format!("line accuracy at α = {} (absolute)", r.alpha),
            rv.accuracy,
            (pv.accuracy - rv.accuracy).abs(),
            true,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_cases() -> Vec<Case> {
        let mut cases = default_cases();
        cases[0].model.hidden = vec![32];
        cases[0].steps = 2;
        cases[1].batch = 4;
        cases[1].steps = 2;
        cases
    }

    fn cpu(precision: Precision) -> Side<'static> {
        static CPU: std::sync::LazyLock<ComputeDevice> =
            std::sync::LazyLock::new(ComputeDevice::cpu);
        Side {
            device: &CPU,
            precision,
        }
    }

    #[test]
    fn the_cpu_agrees_with_itself_exactly() {
        for p in [Precision::F32, Precision::Bf16] {
            let r = check(&small_cases(), cpu(p), cpu(p), 0.0).unwrap();
            assert!(r.checks.len() > 20, "{}", r.checks.len());
            assert!(r.failures().is_empty(), "{:?}", r.failures());
            // Every kind of quantity is compared, for both networks.
            for case in ["mlp", "resnet20"] {
                for what in [
                    "loss at step 2",
                    "tensor ",
                    "line loss at α = 1",
                    "line accuracy",
                ] {
                    assert!(
                        r.checks
                            .iter()
                            .any(|c| c.case == case && c.what.starts_with(what)),
                        "{case}: no `{what}` check"
                    );
                }
            }
            assert!(r.checks.iter().any(|c| c.what.contains("running_var")));
        }
    }

    #[test]
    fn bf16_against_f32_is_a_measured_disagreement() {
        let r = check(
            &small_cases(),
            cpu(Precision::F32),
            cpu(Precision::Bf16),
            1.0,
        )
        .unwrap();
        assert_eq!((r.precision, r.reference_precision), ("bf16", "f32"));
        let worst = r.worst().unwrap().difference;
        assert!(worst > 1e-4 && worst < 0.5, "{:?}", r.worst());
        let strict = check(
            &small_cases(),
            cpu(Precision::F32),
            cpu(Precision::Bf16),
            1e-5,
        );
        assert!(!strict.unwrap().failures().is_empty());
    }

    #[test]
    fn relative_differences_treat_nan_as_infinite() {
        assert_eq!(relative(1.0, 1.0, 1e-3), 0.0);
        assert!((relative(1.01, 1.0, 1e-3) - 0.01).abs() < 1e-12);
        assert_eq!(relative(f64::NAN, 1.0, 1e-3), f64::INFINITY);
        assert_eq!(relative(1e-6, 0.0, 1e-3), 1e-3);
    }
}
