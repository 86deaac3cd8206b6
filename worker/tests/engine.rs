//! The engine through its library API on the CPU (`flex`) backend.

use linesweep_worker::config::ShardConfig;
use linesweep_worker::device::ComputeDevice;
use linesweep_worker::engine::{self, EngineError, NoProgress, SnapshotSink};
use linesweep_worker::snapshot::HostSnapshot;

#[derive(Default)]
struct Keep(Vec<(u64, Vec<u8>, bool)>);

impl SnapshotSink for Keep {
    fn snapshot(
        &mut self,
        s: &HostSnapshot,
        _epoch: f64,
        is_final: bool,
    ) -> Result<(), EngineError> {
        self.0.push((s.step, s.to_safetensors()?, is_final));
        Ok(())
    }
}

fn small() -> ShardConfig {
    ShardConfig::from_toml(
        r#"
seed = 11
[data]
max_train_examples = 600
[model]
hidden = [32, 16]
[train]
epochs = 2
batch_size = 50
lr = 0.05
momentum = 0.9
[snapshot]
every = 7
[eval]
max_examples = 300
alpha_points = 9
alpha_start = -1.0
alpha_stop = 1.0
trajectory_train_loss = true
"#,
        "small.toml",
    )
    .unwrap()
}

#[test]
fn same_config_twice_gives_bit_identical_snapshots_and_results() {
    let cfg = small();
    let device = ComputeDevice::cpu();
    let (mut a, mut b) = (Keep::default(), Keep::default());
    let ra = engine::run_shard(&cfg, &device, &mut a, &NoProgress).unwrap();
    let rb = engine::run_shard(&cfg, &device, &mut b, &NoProgress).unwrap();
    // 600/50 = 12 steps per epoch, 24 steps: 0, 7, 14, 21 and the final 24.
    assert_eq!(
        a.0.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![0, 7, 14, 21, 24]
    );
    assert!(a.0.last().unwrap().2 && !a.0[0].2);
    let differing: Vec<u64> =
        a.0.iter()
            .zip(&b.0)
            .filter(|(x, y)| x != y)
            .map(|(x, _)| x.0)
            .collect();
    assert!(
        differing.is_empty(),
        "snapshots at steps {differing:?} differ between identical runs"
    );
    assert_eq!(ra.line, rb.line);
    assert_eq!(ra.trajectory, rb.trajectory);

    // A different seed gives different weights.
    let mut other = cfg.clone();
    other.seed = 12;
    let mut c = Keep::default();
    engine::run_shard(&other, &device, &mut c, &NoProgress).unwrap();
    assert!(a.0[0].1 != c.0[0].1, "another seed gave the same θ_i");
}

#[test]
fn line_endpoints_metrics_and_trajectory_are_consistent() {
    let cfg = small();
    let device = ComputeDevice::cpu();
    let mut keep = Keep::default();
    let out = engine::run_shard(&cfg, &device, &mut keep, &NoProgress).unwrap();
    let m = &out.metrics;
    assert!(!m.diverged);
    assert_eq!(out.line.len(), 9 * 2);
    // α = 0 and α = 1 rows are the metrics' initial and final values.
    let at = |split, alpha| {
        out.line
            .iter()
            .find(|p| p.split == split && p.alpha == alpha)
            .unwrap()
            .value
            .unwrap()
    };
    assert_eq!(Some(at(0, 0.0)), m.initial[0]);
    assert_eq!(Some(at(1, 1.0)), m.last[1]);
    // Untrained MNIST MLP: loss near ln 10; trained: lower.
    assert!((m.initial[0].unwrap().loss - m.ln_k).abs() < 0.3);
    assert!(m.last[0].unwrap().loss < m.initial[0].unwrap().loss);
    // Trajectory: θ_i at (0, 0), θ_c at α_frac = 1 with β ≈ 0; full-train losses present and
    // equal to the line's endpoints (same weights, same examples, evaluation mode).
    let first = &out.trajectory[0];
    let last = out.trajectory.last().unwrap();
    assert_eq!(
        (first.step, first.alpha_raw, first.alpha_frac, first.beta),
        (0, 0.0, 0.0, 0.0)
    );
    assert!((last.alpha_frac - 1.0).abs() < 1e-9 && last.beta < 1e-6);
    assert!((last.alpha_raw - m.dist_init_final.unwrap()).abs() < 1e-9);
    let tl0 = first.train_loss.unwrap();
    let tl1 = last.train_loss.unwrap();
    assert!(
        (tl0 - m.initial[0].unwrap().loss).abs() < 1e-5,
        "{tl0} vs {:?}",
        m.initial[0]
    );
    assert!(
        (tl1 - m.last[0].unwrap().loss).abs() < 1e-5,
        "{tl1} vs {:?}",
        m.last[0]
    );
    assert!(
        out.trajectory
            .iter()
            .all(|r| r.batch_loss.is_finite() && r.beta >= 0.0)
    );
    // Δ_min agrees with the line it summarises.
    let train: Vec<f64> = out
        .line
        .iter()
        .filter(|p| p.split == 0 && (0.0..=1.0).contains(&p.alpha))
        .map(|p| p.value.unwrap().loss)
        .collect();
    let rise = train
        .iter()
        .enumerate()
        .flat_map(|(i, a)| train[i + 1..].iter().map(move |b| b - a))
        .fold(0.0f64, f64::max);
    assert_eq!(m.shape[0].unwrap().delta_min, rise);
    // The first step is timed on its own, and is part of training.
    let t = m.timings;
    assert!(t.warmup > 0.0 && t.warmup < t.train, "{t:?}");
}

#[test]
fn divergence_is_recorded_not_crashed() {
    let mut cfg = small();
    cfg.train.lr = 1e12;
    cfg.train.momentum = 0.0;
    let mut keep = Keep::default();
    let out = engine::run_shard(&cfg, &ComputeDevice::cpu(), &mut keep, &NoProgress).unwrap();
    assert!(out.metrics.diverged, "lr 1e12 should diverge");
    assert!(out.metrics.diverged_step.is_some());
    assert!(out.line.is_empty() && out.trajectory.is_empty());
    assert_eq!(out.metrics.shape, [None, None]);
    assert!(!keep.0.is_empty() && keep.0[0].0 == 0);
}

#[test]
fn batch_norm_line_marks_negative_variance_points_invalid() {
    let mut cfg = small();
    cfg.model.norm = Some(linesweep_worker::config::Norm::Batch);
    cfg.eval.alpha_start = -3.0;
    cfg.eval.alpha_stop = 4.0;
    cfg.eval.alpha_points = 15; // step 0.5: 0 and 1 are on the grid
    let out = engine::run_shard(
        &cfg,
        &ComputeDevice::cpu(),
        &mut Keep::default(),
        &NoProgress,
    )
    .unwrap();
    for p in &out.line {
        if (0.0..=1.0).contains(&p.alpha) {
            assert!(
                p.value.is_some(),
                "α={} must be valid inside [0,1]",
                p.alpha
            );
        }
        assert_eq!(p.value.is_none(), p.invalid_reason.is_some());
    }
    assert!(out.metrics.shape[0].is_some());
    // With α down to −3 and up to 4, some interpolated running variance goes negative.
    assert!(
        out.line
            .iter()
            .any(|p| p.invalid_reason == Some(linesweep_worker::engine::line::NEGATIVE_VARIANCE))
    );
}

#[test]
fn a_resnet20_training_step_lowers_the_loss() {
    use burn::module::Module;
    use burn::optim::{GradientsParams, SgdConfig};
    use burn::prelude::*;
    use linesweep_worker::config::{Arch, ModelConfig};
    use linesweep_worker::engine::eval::{cross_entropy, labels_tensor};
    use linesweep_worker::model::Net;

    let device = Device::flex().autodiff();
    device.seed(5);
    let cfg = ModelConfig {
        arch: Arch::Resnet20,
        ..ModelConfig::default()
    };
    let mut net = Net::new(&cfg, [3, 32, 32], 10, &device);
    let x = Tensor::<4>::random(
        [16, 3, 32, 32],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let labels: Vec<u16> = (0..16).map(|i| (i % 10) as u16).collect();
    let y = labels_tensor(&labels, &device);
    let mut optim = SgdConfig::new().init();
    let loss_of = |net: &Net| -> f32 {
        cross_entropy(
            net.valid().forward(x.clone().to_device(&Device::flex())),
            y.clone().to_device(&Device::flex()),
        )
        .mean()
        .into_scalar()
    };
    // Evaluation mode uses running statistics; train a few steps on the same batch first so
    // that they describe it.
    let before = cross_entropy(net.forward(x.clone()), y.clone())
        .mean()
        .into_scalar::<f32>();
    for _ in 0..5 {
        let loss = cross_entropy(net.forward(x.clone()), y.clone()).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(0.05, net, grads);
    }
    let after = cross_entropy(net.forward(x.clone()), y.clone())
        .mean()
        .into_scalar::<f32>();
    assert!(after < before, "training-mode loss {before} → {after}");
    assert!(loss_of(&net).is_finite());
}

fn bn_shard() -> ShardConfig {
    ShardConfig::from_toml(
        r#"
seed = 3
[data]
max_train_examples = 256
[model]
arch = "resnet20"
[train]
epochs = 1
batch_size = 64
lr = 0.05
momentum = 0.9
[snapshot]
every = 0
[eval]
max_examples = 128
batch_size = 64
alpha_start = 0.0
alpha_stop = 1.0
alpha_points = 5
starts = ["init", "step:2"]
bn_modes = ["interpolate", "recompute", "endpoint"]
bn_batches = 2
"#,
        "bn.toml",
    )
    .unwrap()
}

#[test]
fn batch_norm_modes_and_intermediate_starts_give_their_own_lines() {
    let cfg = bn_shard();
    let mut keep = Keep::default();
    let out = engine::run_shard(&cfg, &ComputeDevice::cpu(), &mut keep, &NoProgress).unwrap();
    // 2 starts × 3 modes × 5 α × 2 splits.
    assert_eq!(out.line.len(), 60);
    // The step-2 start forced a snapshot at step 2 (no periodic snapshots configured).
    assert_eq!(
        keep.0.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![0, 2, 4]
    );
    use linesweep_worker::config::BnMode;
    let loss = |start: &str, mode: BnMode, alpha: f64| {
        out.line
            .iter()
            .find(|p| {
                p.start == start && p.bn_mode == Some(mode) && p.alpha == alpha && p.split == 0
            })
            .and_then(|p| p.value)
            .map(|v| v.loss)
            .unwrap()
    };
    for start in ["init", "step:2"] {
        let i = loss(start, BnMode::Interpolate, 0.5);
        let r = loss(start, BnMode::Recompute, 0.5);
        assert!(
            (i - r).abs() > 1e-6,
            "{start}: recompute {r} = interpolate {i}"
        );
        // At α = 1 the interpolated statistics are θ_c's own.
        assert_eq!(
            loss(start, BnMode::Interpolate, 1.0),
            loss(start, BnMode::Endpoint, 1.0)
        );
    }
    // Both lines end at θ_c; their α = 0 points are different networks.
    assert_eq!(
        loss("init", BnMode::Interpolate, 1.0),
        loss("step:2", BnMode::Interpolate, 1.0)
    );
    assert_ne!(
        loss("init", BnMode::Interpolate, 0.0),
        loss("step:2", BnMode::Interpolate, 0.0)
    );

    // A start after the end of training is an error, not a panic.
    let mut late = cfg.clone();
    late.eval.starts = vec!["step:4".into()];
    let err = engine::run_shard(
        &late,
        &ComputeDevice::cpu(),
        &mut Keep::default(),
        &NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("eval.starts: `step:4`") && err.contains("training ends at step 4"),
        "{err}"
    );
}

#[test]
fn a_snapshot_loads_back_into_its_network() {
    use burn::prelude::*;
    use linesweep_worker::config::{Arch, ModelConfig};
    use linesweep_worker::engine::train::net_from_snapshot;
    use linesweep_worker::model::Net;
    let device = Device::flex();
    let cfg = ModelConfig {
        arch: Arch::Resnet20,
        ..ModelConfig::default()
    };
    device.seed(1);
    let a = Net::new(&cfg, [3, 32, 32], 10, &device);
    device.seed(2);
    let b = Net::new(&cfg, [3, 32, 32], 10, &device);
    let snap = HostSnapshot::capture(&a, 7).unwrap();
    let loaded = net_from_snapshot(&b, &snap).unwrap();
    assert_eq!(HostSnapshot::capture(&loaded, 7).unwrap(), snap);
}

#[test]
fn bf16_training_keeps_f32_snapshots_and_tracks_the_f32_run() {
    use linesweep_worker::config::Precision;
    let mut cfg = ShardConfig::from_toml(
        r#"
seed = 5
[data]
max_train_examples = 400
[model]
arch = "cnn"
channels = [8, 16]
norm = "batch"
[train]
epochs = 4
batch_size = 50
lr = 0.1
momentum = 0.9
[snapshot]
every = 4
[eval]
max_examples = 200
alpha_points = 5
bn_modes = ["interpolate", "recompute"]
bn_batches = 2
trajectory_train_loss = true
"#,
        "bf16.toml",
    )
    .unwrap();
    let full = engine::run_shard(
        &cfg,
        &ComputeDevice::cpu(),
        &mut Keep::default(),
        &NoProgress,
    )
    .unwrap();
    cfg.train.precision = Precision::Bf16;
    let mut keep = Keep::default();
    let half = engine::run_shard(&cfg, &ComputeDevice::cpu(), &mut keep, &NoProgress).unwrap();

    // Snapshots stay f32 safetensors of the same tensors as an f32 run.
    for (step, bytes, _) in &keep.0 {
        let s = HostSnapshot::from_safetensors(bytes, "bf16").unwrap();
        assert_eq!(s.step, *step);
        assert!(
            s.tensors
                .iter()
                .all(|t| t.data.iter().all(|v| v.is_finite()))
        );
    }
    assert_eq!(keep.0.len(), full.trajectory.len());
    assert_eq!(half.line.len(), full.line.len());
    let (f, h) = (&full.metrics, &half.metrics);
    assert!(!h.diverged);
    // It trained: the final loss is well below the initial one.
    let (h0, h1) = (h.initial[0].unwrap().loss, h.last[0].unwrap().loss);
    assert!(h1 < 0.8 * h0, "bf16 training loss {h0} → {h1}");
    // It really computed in bf16 (different numbers) but follows the f32 run closely: same
    // initial weights, same batches, 32 steps.
    let (f0, f1) = (f.initial[0].unwrap().loss, f.last[0].unwrap().loss);
    assert_ne!(h0, f0);
    assert!(
        (h0 - f0).abs() < 0.02 * f0,
        "initial loss bf16 {h0} vs f32 {f0}"
    );
    assert!(
        (h1 - f1).abs() < 0.05 * f1,
        "final loss bf16 {h1} vs f32 {f1}"
    );
    // Geometry is f32 either way; the distances travelled agree to a few per cent.
    let (dh, df) = (h.dist_init_final.unwrap(), f.dist_init_final.unwrap());
    assert!(
        (dh - df).abs() < 0.03 * df,
        "‖θ_c − θ_i‖ bf16 {dh} vs f32 {df}"
    );
}

/// `train.data_seed` changes the data order only: the same θ_i, another θ_c. Unset, it is
/// `seed`, so an explicit `data_seed = seed` is the same run.
#[test]
fn a_data_seed_changes_the_order_not_the_initialisation() {
    let device = ComputeDevice::cpu();
    let run = |data_seed: Option<u64>| {
        let mut cfg = small();
        cfg.train.data_seed = data_seed;
        let mut sink = Keep::default();
        let out = engine::run_shard(&cfg, &device, &mut sink, &NoProgress).unwrap();
        (sink.0, out)
    };
    let (plain, plain_out) = run(None);
    let (same, _) = run(Some(11));
    let (other, other_out) = run(Some(12));
    assert_eq!(plain[0].1, other[0].1, "θ_i is drawn from `seed` alone");
    assert_ne!(
        plain.last().unwrap().1,
        other.last().unwrap().1,
        "θ_c differs"
    );
    assert_eq!(plain.last().unwrap().1, same.last().unwrap().1);
    assert_eq!(plain_out.metrics.initial, other_out.metrics.initial);
    assert_ne!(plain_out.metrics.last, other_out.metrics.last);
    let mut cfg = small();
    cfg.train.data_seed = Some(12);
    assert_ne!(cfg.shard_id(), small().shard_id());
}
