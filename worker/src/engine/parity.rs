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
//! - every tensor after the steps, as its *change* from θ_i (‖Δ_dev − Δ_ref‖ / ‖Δ_ref‖): the
//!   update is a few per cent of the weights, so comparing the weights themselves would hide a
//!   wrong gradient;
//! - loss (relative) and accuracy (absolute) at α = 0 and α = 1 of the line between the
//!   reference's θ_i and θ_c, evaluated on each device.

use burn::module::Module;
use burn::optim::GradientsParams;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::eval::{EvalSet, cross_entropy};
use super::line::{Line, evaluate_line};
use super::train::{batch_tensors, net_from_snapshot, optimizer};
use super::{EngineError, NoProgress};
use crate::config::{Arch, BnMode, ModelConfig, OptimizerName, Precision, TrainConfig};
use crate::data::Split;
use crate::device::ComputeDevice;
use crate::model::Net;
use crate::science::AlphaGrid;
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

/// The cases the device check runs: the default MLP (Adam) and ResNet-20 with batch norm
/// (SGD, momentum, weight decay), on fixed random batches.
pub fn default_cases() -> Vec<Case> {
    let adam = TrainConfig {
        optimizer: OptimizerName::Adam,
        lr: 1e-3,
        ..TrainConfig::default()
    };
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
            train: adam,
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

/// The relative tolerance that fits a precision: f32 kernels may use TF32 tensor cores (10-bit
/// mantissa) and other summation orders; bf16 forward passes (8-bit mantissa) are compared
/// against the f32 reference. A wrong kernel differs by far more than either (order 1).
pub fn default_tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 1e-2,
        Precision::Bf16 => 1e-1,
    }
}

/// One compared quantity.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Check {
    /// The case (`mlp`, `resnet20`).
    pub case: String,
    /// What was compared, e.g. `loss at step 2`, `tensor layer1.0.conv1.weight`.
    pub what: String,
    /// The reference device's value (a norm, for tensors).
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
    /// The device's precision (the reference is always f32).
    pub precision: &'static str,
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

fn norm(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

/// Runs every case on `reference` (f32) and on `device` (in `precision`) and compares.
pub fn check(
    cases: &[Case],
    reference: &ComputeDevice,
    device: &ComputeDevice,
    precision: Precision,
    tolerance: f64,
) -> Result<Report, EngineError> {
    if !crate::model::precision::supported(&device.device, precision) {
        return Err(EngineError::Config(format!(
            "the device {} cannot compute in {}",
            device.name,
            precision.as_str()
        )));
    }
    let mut checks = Vec::new();
    for case in cases {
        checks.extend(check_case(case, reference, device, precision, tolerance)?);
    }
    Ok(Report {
        reference: reference.name.clone(),
        device: device.name.clone(),
        precision: precision.as_str(),
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
    reference: &ComputeDevice,
    device: &ComputeDevice,
    precision: Precision,
    tolerance: f64,
) -> Result<Vec<Check>, EngineError> {
    let init = initial_snapshot(case, reference)?;
    let batches = fixed_split(case, case.batch * case.steps, 1);
    let run_ref = train_steps(case, &init, &batches, reference, Precision::F32)?;
    let run_dev = train_steps(case, &init, &batches, device, precision)?;
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
    for ((t0, td), tr) in init
        .tensors
        .iter()
        .zip(&run_dev.trained.tensors)
        .zip(&run_ref.trained.tensors)
    {
        let change = norm(tr.data.iter().zip(&t0.data).map(|(r, i)| f64::from(r - i)));
        let apart = norm(tr.data.iter().zip(&td.data).map(|(r, d)| f64::from(r - d)));
        let scale = norm(tr.data.iter().map(|&r| f64::from(r)));
        let d = apart / change.max(1e-6 * scale).max(1e-12);
        let d = if d.is_nan() { f64::INFINITY } else { d };
        out.push(check(format!("tensor {}", tr.name), change, d, tolerance));
    }
    out.extend(
        line_checks(case, &init, &run_ref.trained, reference, device, precision)?
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
    ad.seed(7);
    let net = Net::new(&case.model, case.input, case.classes, &ad);
    Ok(HostSnapshot::capture(&net.valid(), 0)?)
}

/// `n` examples of uniform noise with unit variance and cyclic labels, the same on every call.
fn fixed_split(case: &Case, n: usize, salt: u64) -> Split {
    let [c, h, w] = case.input;
    let mut rng = ChaCha8Rng::seed_from_u64(0x7061_7269_7479 ^ salt);
    let a = 3f32.sqrt();
    Split {
        features: (0..n * c * h * w)
            .map(|_| rng.random_range(-a..a))
            .collect(),
        labels: (0..n).map(|i| (i % case.classes) as u16).collect(),
        shape: case.input,
    }
}

/// `case.steps` training steps from `init` on `device`, with forward passes in `precision`.
fn train_steps(
    case: &Case,
    init: &HostSnapshot,
    batches: &Split,
    device: &ComputeDevice,
    precision: Precision,
) -> Result<Run, EngineError> {
    let ad = device.device.clone().autodiff();
    let template = Net::new(&case.model, case.input, case.classes, &ad);
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
    reference: &ComputeDevice,
    device: &ComputeDevice,
    precision: Precision,
) -> Result<Vec<(String, f64, f64, bool)>, EngineError> {
    let grid = AlphaGrid::linspace(0.0, 1.0, 2)
        .map_err(|e| EngineError::Config(format!("the check's α grid: {e}")))?;
    let eval = fixed_split(case, 2 * case.batch, 2);
    let points = |dev: &ComputeDevice, precision: Precision| -> Result<_, EngineError> {
        let template = Net::new(&case.model, case.input, case.classes, &dev.device);
        let start = net_from_snapshot(&template, init)?;
        let end = net_from_snapshot(&template, last)?;
        let set = EvalSet::new(&eval, case.batch, &dev.device);
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
    let ours = points(device, precision)?;
    let theirs = points(reference, Precision::F32)?;
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

    #[test]
    fn the_cpu_agrees_with_itself_exactly() {
        let cpu = ComputeDevice::cpu();
        let r = check(&small_cases(), &cpu, &cpu, Precision::F32, 0.0).unwrap();
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

    #[test]
    fn bf16_is_within_its_tolerance_and_beyond_f32s() {
        let cpu = ComputeDevice::cpu();
        let r = check(&small_cases(), &cpu, &cpu, Precision::Bf16, 1.0).unwrap();
        let worst = r.worst().unwrap().difference;
        assert!(
            worst > 1e-4 && worst <= default_tolerance(Precision::Bf16),
            "worst bf16 difference {worst}: {:?}",
            r.worst()
        );
        let strict = check(&small_cases(), &cpu, &cpu, Precision::Bf16, 1e-5).unwrap();
        assert!(!strict.failures().is_empty());
    }

    #[test]
    fn relative_differences_treat_nan_as_infinite() {
        assert_eq!(relative(1.0, 1.0, 1e-3), 0.0);
        assert!((relative(1.01, 1.0, 1e-3) - 0.01).abs() < 1e-12);
        assert_eq!(relative(f64::NAN, 1.0, 1e-3), f64::INFINITY);
        assert_eq!(relative(1e-6, 0.0, 1e-3), 1e-3);
    }
}
