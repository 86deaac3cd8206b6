//! The explicit training loop: seeded init, seeded data order, snapshots, divergence.
//!
//! Determinism: on the CPU backend the same config gives bit-identical snapshots. The weights
//! come from burn's process-global generator, seeded here, so one process must never train two
//! shards at once; the data order comes from a ChaCha generator of our own, seeded from the
//! config, so it does not depend on how many random numbers the model init drew.

use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::prelude::*;
use burn::store::ModuleSnapshot;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::eval::{EvalSet, cross_entropy, evaluate, labels_tensor};
use super::{EngineError, Phase, Progress};
use crate::config::{InitFrom, OptimizerName, Schedule, ShardConfig, TrainConfig};
use crate::data::{Batch, TrainData};
use crate::model::Net;
use crate::snapshot::HostSnapshot;

/// Serialises seeding and weight initialisation within the process.
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Mixed into the seed of the data-order generator so that it differs from the weight seed.
const DATA_ORDER_SALT: u64 = 0x6461_7461_6f72_6472;

/// Receives each snapshot as soon as it is taken (θ_i, every `snapshot.every` steps, θ_c),
/// and, when the sink supports it, mid-shard checkpoints and the one to resume from.
pub trait SnapshotSink {
    /// Stores one snapshot; `epoch` is fractional (steps / steps per epoch).
    fn snapshot(
        &mut self,
        snapshot: &HostSnapshot,
        epoch: f64,
        is_final: bool,
    ) -> Result<(), EngineError>;

    /// Steps between checkpoints (0: never). Checkpoints do not change any result.
    fn checkpoint_every(&self) -> u64 {
        0
    }

    /// Stores a checkpoint. Every snapshot taken before it has already been stored.
    fn checkpoint(&mut self, _checkpoint: &Checkpoint) -> Result<(), EngineError> {
        Ok(())
    }

    /// The latest checkpoint of an earlier attempt of this shard, with the snapshots taken up
    /// to it (already stored again for this attempt), if any.
    fn resume(&mut self) -> Result<Option<Resume>, EngineError> {
        Ok(None)
    }

    /// The snapshot a run with `train.init_from` starts from: the parent shard's θ at
    /// `from.step`, read from the results root (published snapshots, never another
    /// attempt's staging). A sink without a results root cannot start such a run.
    fn parent_snapshot(&mut self, from: &InitFrom) -> Result<HostSnapshot, EngineError> {
        Err(EngineError::Config(format!(
            "train.init_from: this run has no results root to read shard {}'s snapshots from",
            from.shard
        )))
    }

    /// Stores a direction of a plane (`name`: `plane-<kind>-<axis>`) beside the snapshots, so
    /// that a point of the plane can be recomputed from the files.
    fn direction(&mut self, _name: &str, _direction: &HostSnapshot) -> Result<(), EngineError> {
        Ok(())
    }
}

/// What a snapshot contributed to the trajectory, besides its weights.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SampleMeta {
    /// Optimizer steps taken.
    pub step: u64,
    /// Fractional epoch.
    pub epoch: f64,
    /// Mini-batch loss (see [`TrajectorySample::batch_loss`]).
    pub batch_loss: f64,
    /// Full-train-set loss, when requested.
    pub train_loss: Option<f64>,
}

/// Everything needed to continue training bit for bit where it stopped.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Optimizer steps taken.
    pub step: u64,
    /// The last step's mini-batch loss.
    pub last_loss: f64,
    /// Model weights and buffers (burn names, safetensors).
    pub model: Vec<u8>,
    /// Optimizer state (burnpack), keyed by parameter id.
    pub optimizer: Vec<u8>,
    /// Parameter ids in module order: the optimizer state refers to them.
    pub param_ids: Vec<u64>,
    /// The snapshots taken so far, in step order.
    pub samples: Vec<SampleMeta>,
    /// Training images skipped so far because they did not decode.
    pub skipped_images: u64,
}

/// A checkpoint to resume from, with the snapshots its samples refer to.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// The snapshots of `checkpoint.samples`, same order.
    pub snapshots: Vec<HostSnapshot>,
}

/// One point of the training trajectory, before projection.
#[derive(Debug, Clone)]
pub struct TrajectorySample {
    /// Optimizer steps taken.
    pub step: u64,
    /// Fractional epoch.
    pub epoch: f64,
    /// Trainable parameters, concatenated (never batch-norm buffers).
    pub parameters: Vec<f32>,
    /// Training-mode loss of the mini-batch of the step that produced these weights (for θ_i:
    /// of the first mini-batch, at θ_i).
    pub batch_loss: f64,
    /// Full-train-set loss in evaluation mode, when requested.
    pub train_loss: Option<f64>,
}

/// What training produced.
pub struct Trained {
    /// θ_i, without autodiff.
    pub init: Net,
    /// θ_c (the last finite weights if the run diverged), without autodiff.
    pub last: Net,
    /// The start of every line (`eval.starts`), labelled, in the config's order.
    pub starts: Vec<(String, Net)>,
    /// θ_i, periodic snapshots and θ_c, in step order, each step once.
    pub samples: Vec<TrajectorySample>,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
    /// The step whose loss was not finite, if any.
    pub diverged_at: Option<u64>,
    /// Trainable parameters.
    pub parameter_count: usize,
    /// Seconds the writer thread spent capturing and storing snapshots (overlaps training).
    pub snapshot_seconds: f64,
    /// Training images skipped because they did not decode.
    pub skipped_images: u64,
    /// Seconds of the attempt's first step, from its batch to the next loss read (which waits
    /// for the first update): kernel compilation and autotuning happen there.
    pub warmup_seconds: f64,
}

/// The learning rate at `step` (0-based) for schedule `cfg`.
pub fn learning_rate(cfg: &TrainConfig, step: u64, steps_per_epoch: u64, total_steps: u64) -> f64 {
    match cfg.schedule {
        Schedule::Constant => cfg.lr,
        Schedule::Step => {
            let epoch = step / steps_per_epoch.max(1);
            let passed = cfg
                .milestones
                .iter()
                .filter(|&&m| m as u64 <= epoch)
                .count();
            cfg.lr * cfg.gamma.powi(passed as i32)
        }
        Schedule::Cosine => {
            let t = step as f64 / total_steps.max(1) as f64;
            0.5 * cfg.lr * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

pub(crate) fn optimizer(cfg: &TrainConfig) -> burn::optim::ModuleOptimizer {
    let decay = (cfg.weight_decay > 0.0).then(|| WeightDecayConfig::new(cfg.weight_decay as f32));
    match cfg.optimizer {
        // PyTorch semantics: dampening 0 (burn's default is 0.1).
        OptimizerName::Sgd => SgdConfig::new()
            .with_momentum((cfg.momentum > 0.0).then(|| {
                MomentumConfig::new()
                    .with_momentum(cfg.momentum)
                    .with_dampening(0.0)
                    .with_nesterov(cfg.nesterov)
            }))
            .with_weight_decay(decay)
            .init(),
        // PyTorch semantics: ε = 1e-8 by default (burn's default is 1e-5).
        OptimizerName::Adam => AdamConfig::new()
            .with_beta_1(cfg.beta1 as f32)
            .with_beta_2(cfg.beta2 as f32)
            .with_epsilon(cfg.eps as f32)
            .with_weight_decay(decay)
            .init(),
    }
}

/// A snapshot on its way to the writer thread: a cheap copy of the weights (burn tensors are
/// reference-counted and immutable) plus what the trajectory row needs.
struct Pending {
    model: Net,
    step: u64,
    is_final: bool,
    batch_loss: f64,
    train_loss: Option<f64>,
}

/// A checkpoint on its way to the writer.
struct PendingCheckpoint {
    model: Net,
    optimizer: burn::optim::OptimizerRecord,
    param_ids: Vec<u64>,
    step: u64,
    last_loss: f64,
    skipped_images: u64,
}

/// Work for the writer thread, in order: a checkpoint is stored after every snapshot before it.
enum ToWriter {
    Snapshot(Pending),
    Checkpoint(PendingCheckpoint),
}

/// Gives a module the parameter ids of the run it resumes, so that the optimizer state (keyed
/// by id) applies to the same parameters.
/// A network drawn from burn's generator, seeded first when `seed` is given. The generator is
/// process-global (see the module doc), so every network is built under one lock, seeding
/// included: a template built at the same time as another shard's θ_i would take draws from
/// the middle of it. burn initialises parameters lazily, at their first use; drawn later,
/// outside the lock, another shard's draws could interleave (seen as a different θ_i when
/// tests trained in parallel), so every parameter is materialised before the lock is let go.
pub(crate) fn new_net(
    model: &crate::config::ModelConfig,
    shape: [usize; 3],
    classes: usize,
    device: &Device,
    seed: Option<u64>,
) -> Net {
    let _guard = INIT_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(seed) = seed {
        device.seed(seed);
    }
    let net = Net::new(model, shape, classes, device);
    net.visit(&mut Materialize);
    net
}

/// θ_i of a shard on `device` (returned on its autodiff device), always drawn by the CPU
/// backend from `seed`: burn's seeded initialisers draw different numbers per backend, and a
/// grid point's θ_i must not depend on which worker's device ran it. On another device the
/// CPU's draw is loaded into a template there (`net_from_snapshot`), which also makes a GPU
/// shard comparable, step for step, with the same shard on the CPU.
pub(crate) fn initial_net(
    model: &crate::config::ModelConfig,
    shape: [usize; 3],
    classes: usize,
    device: &Device,
    seed: u64,
) -> Result<Net, EngineError> {
    let ad = device.clone().autodiff();
    let cpu = Device::flex();
    if *device == cpu {
        return Ok(new_net(model, shape, classes, &ad, Some(seed)));
    }
    let drawn = new_net(model, shape, classes, &cpu.autodiff(), Some(seed));
    let snap = crate::snapshot::HostSnapshot::capture(&drawn.valid(), 0)?;
    let template = new_net(model, shape, classes, &ad, None);
    net_from_snapshot(&template, &snap)
}

/// Touches every parameter, so that a lazily initialised one draws its values now.
struct Materialize;

impl burn::module::ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        let _ = param.val();
    }
}

struct RestoreIds(std::collections::VecDeque<u64>);

impl burn::module::ModuleMapper for RestoreIds {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        match self.0.pop_front() {
            Some(id) => {
                let (_, tensor, _) = param.consume();
                burn::module::Param::initialized(burn::module::ParamId::from(id), tensor)
            }
            None => param,
        }
    }
}

/// Times the first step of an attempt: from its batch's arrival to the second loss read, the
/// first moment the host knows the first update has run (GPU work is asynchronous).
#[derive(Default)]
struct Warmup {
    started: Option<std::time::Instant>,
    reads: u32,
    seconds: Option<f64>,
}

impl Warmup {
    fn batch_arrived(&mut self) {
        self.started.get_or_insert_with(std::time::Instant::now);
    }

    /// A loss was read back (or training ended).
    fn loss_read(&mut self) {
        self.reads += 1;
        if self.seconds.is_none() && self.reads == 2 {
            self.seconds = self.started.map(|t| t.elapsed().as_secs_f64());
        }
    }

    fn seconds(&self) -> f64 {
        self.seconds.unwrap_or(0.0)
    }
}

/// At most this many snapshots wait for the writer; each holds one copy of the weights.
const SNAPSHOT_QUEUE: usize = 4;

/// Batches decoded ahead of the optimizer.
const PREFETCH: usize = 4;

/// Mixed into the seed of each step's augmentation randomness.
const AUGMENT_SALT: u64 = 0x6175_676d_656e_7421;

/// The augmentation seed of `step`: a function of the run's seed and the step alone, so a
/// resumed attempt replays the same batches.
fn augment_seed(seed: u64, step: u64) -> u64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ AUGMENT_SALT);
    rng.set_stream(step);
    rand::Rng::random(&mut rng)
}

/// A host batch on `device`: `[n, c, h, w]` features and `[n]` targets.
pub fn batch_tensors(
    features: Vec<f32>,
    labels: &[u16],
    shape: [usize; 3],
    device: &Device,
) -> (Tensor<4>, Tensor<1, Int>) {
    let [c, h, w] = shape;
    let x = Tensor::from_data(TensorData::new(features, [labels.len(), c, h, w]), device);
    (x, labels_tensor(labels, device))
}

/// Loads a snapshot's weights into a network of the same architecture as `template`.
pub fn net_from_snapshot(template: &Net, snap: &HostSnapshot) -> Result<Net, EngineError> {
    let bytes = snap.to_safetensors()?;
    let mut store = burn::store::SafetensorsStore::from_bytes(Some(bytes))
        .with_from_adapter(burn::store::PyTorchToBurnAdapter)
        .skip_enum_variants(true)
        .allow_partial(false);
    let mut net = template.clone();
    // A clone shares its batch-norm running states with the template (`RunningState` is an
    // `Arc`), and loading writes them in place: without fresh ones, loading a direction into
    // a clone of θ_c gave θ_c the direction's zero variances (and a resumed attempt's line
    // start, θ_i the start's statistics).
    for bn in net.norms_mut() {
        bn.running_mean = burn::module::RunningState::new(bn.running_mean.value());
        bn.running_var = burn::module::RunningState::new(bn.running_var.value());
    }
    net.load_from(&mut store)
        .map_err(|e| EngineError::Resume(format!("snapshot of step {}: {e}", snap.step)))?;
    Ok(net)
}

/// Trains the model of `cfg` on `train` (and, when asked, evaluates the full training set at
/// each snapshot on `train_eval`).
///
/// Snapshots are captured, encoded and handed to `sink` on a writer thread, so that slow
/// storage does not stall the optimizer; the queue between the two is bounded. Training
/// batches are built (decoded, augmented) on a loader thread, [`PREFETCH`] steps ahead.
#[allow(clippy::too_many_arguments)]
pub fn train(
    cfg: &ShardConfig,
    device: &Device,
    train: &TrainData,
    train_eval: Option<&EvalSet>,
    classes: usize,
    sink: &mut (dyn SnapshotSink + Send),
    progress: &dyn Progress,
) -> Result<Trained, EngineError> {
    let tc = &cfg.train;
    // `run_shard` has refused a precision the device lacks, naming the device.
    let precision = tc.precision;
    let ad = device.clone().autodiff();
    let shape = train.shape();
    let mut model = initial_net(&cfg.model, shape, classes, device, cfg.seed)?;
    if let Some(from) = &tc.init_from {
        // θ_i is the parent's snapshot (weights and running statistics); the optimizer
        // starts fresh. A resumed attempt then restores its checkpoint over it, as any run.
        let snap = sink.parent_snapshot(from)?;
        model = net_from_snapshot(&model, &snap).map_err(|e| {
            EngineError::Config(format!(
                "train.init_from: shard {}'s snapshot of step {} does not fit this model: {e}",
                from.shard, from.step
            ))
        })?;
    }
    let mut optim = optimizer(tc);
    let init = model.valid();
    let resume = sink.resume()?;
    if let Some(r) = &resume {
        (model, optim) = restore(model, optim, &r.checkpoint)?;
    }
    let resume_step = resume.as_ref().map_or(0, |r| r.checkpoint.step);
    let resumed_skipped = resume.as_ref().map_or(0, |r| r.checkpoint.skipped_images);
    let checkpoint_every = sink.checkpoint_every();

    let n = train.len();
    if n == 0 {
        return Err(EngineError::Config("the training set is empty".into()));
    }
    let steps_per_epoch = n.div_ceil(tc.batch_size) as u64;
    let total_steps = steps_per_epoch * tc.epochs as u64;
    let (start_steps, start_models) =
        line_starts(cfg, steps_per_epoch, total_steps, &init, resume.as_ref())?;
    let loss_at = |m: &Net| {
        train_eval.map(|set| {
            let m = m.autocast(precision);
            evaluate(set, |x| m.forward(x)).loss
        })
    };

    let init_train_loss = if resume.is_some() {
        None
    } else {
        loss_at(&init)
    };
    let (resumed_samples, last_snapshot_step, resumed_loss) = resumed_trajectory(resume);
    let threads = cfg.data.loader_threads;
    let steps = Steps {
        cfg,
        shape,
        ad: &ad,
        steps_per_epoch,
        total_steps,
        start_steps: &start_steps,
        checkpoint_every,
        resume_step,
        loss_at: &loss_at,
    };
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<ToWriter>(SNAPSHOT_QUEUE);
        let writer =
            scope.spawn(move || write_snapshots(rx, sink, steps_per_epoch, resumed_samples));
        // The data order of a resumed run is replayed, not stored: the same shuffles, and
        // the batches before the checkpoint are skipped.
        let (btx, brx) = std::sync::mpsc::sync_channel::<Batch>(PREFETCH);
        scope.spawn(move || load_batches(train, cfg, resume_step, threads, &btx));
        let mut queue = WriterQueue {
            tx,
            gone: false,
            last_step: last_snapshot_step,
        };
        let run = Loop {
            model,
            optim,
            step: resume_step,
            last_loss: resumed_loss,
            // Images skipped before a resumed checkpoint were counted by the attempt that
            // made it.
            skipped_images: resumed_skipped,
            diverged_at: None,
            // The init snapshot waits for the first batch: its batch loss is that batch's loss.
            pending_init: (resume_step == 0).then(|| Pending {
                model: init.clone(),
                step: 0,
                is_final: false,
                batch_loss: f64::NAN,
                train_loss: init_train_loss,
            }),
            start_models,
            warmup: Warmup::default(),
        };
        progress.start(Phase::Training, total_steps);
        progress.advance(resume_step, None);
        let (mut run, end) = run.run(&steps, &brx, &mut queue, progress)?;
        drop(brx);
        run.warmup.loss_read();
        progress.finish();
        if end == End::Interrupted {
            drop(queue);
            // The checkpoint must be stored before the attempt reports itself interrupted.
            join(writer)?;
            return Err(EngineError::Interrupted { step: run.step });
        }
        run.finish(&steps, queue, writer, init)
    })
}

/// What stays fixed while the optimizer loop runs.
struct Steps<'a> {
    cfg: &'a ShardConfig,
    shape: [usize; 3],
    /// The autodiff device.
    ad: &'a Device,
    steps_per_epoch: u64,
    total_steps: u64,
    /// The steps the lines start at, labelled.
    start_steps: &'a [(String, u64)],
    checkpoint_every: u64,
    resume_step: u64,
    /// The full-train-set loss of a network, when the config asks for it.
    loss_at: &'a dyn Fn(&Net) -> Option<f64>,
}

/// The queue to the writer thread.
struct WriterQueue {
    tx: std::sync::mpsc::SyncSender<ToWriter>,
    /// The writer stopped (its error surfaces when it is joined).
    gone: bool,
    /// The step of the last snapshot sent.
    last_step: Option<u64>,
}

impl WriterQueue {
    /// Sends a snapshot; false once the writer is gone.
    fn snapshot(&mut self, p: Pending) -> bool {
        self.last_step = Some(p.step);
        self.gone |= self.tx.send(ToWriter::Snapshot(p)).is_err();
        !self.gone
    }

    /// Sends a checkpoint of the loop's state; false once the writer is gone.
    fn checkpoint(&self, run: &Loop) -> bool {
        let job = PendingCheckpoint {
            model: run.model.valid(),
            optimizer: run.optim.to_record(),
            param_ids: burn::module::list_param_ids(&run.model)
                .iter()
                .map(|id| id.val())
                .collect(),
            step: run.step,
            last_loss: run.last_loss,
            skipped_images: run.skipped_images,
        };
        self.tx.send(ToWriter::Checkpoint(job)).is_ok()
    }
}

/// What the optimizer loop changes, step by step.
struct Loop {
    model: Net,
    optim: burn::optim::ModuleOptimizer,
    /// Optimizer steps taken.
    step: u64,
    /// The last step's mini-batch loss.
    last_loss: f64,
    skipped_images: u64,
    diverged_at: Option<u64>,
    /// θ_i's snapshot until the first batch gives it its batch loss.
    pending_init: Option<Pending>,
    /// The line starts taken so far: `(label, step, weights)`.
    start_models: Vec<(String, u64, Net)>,
    warmup: Warmup,
}

/// How the optimizer loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Every step was taken.
    Finished,
    /// The loss was not finite, or the writer stopped.
    Stopped,
    /// Asked to stop (a preemption); the checkpoint is on its way to the writer.
    Interrupted,
}

impl Loop {
    /// Takes steps until training ends, diverges, is interrupted or the writer stops.
    fn run(
        mut self,
        s: &Steps<'_>,
        batches: &std::sync::mpsc::Receiver<Batch>,
        queue: &mut WriterQueue,
        progress: &dyn Progress,
    ) -> Result<(Self, End), EngineError> {
        while self.step < s.total_steps {
            let Ok(batch) = batches.recv() else {
                return Err(EngineError::Data(crate::data::DataError {
                    file: "training data".into(),
                    problem: "the batch loader stopped early".into(),
                }));
            };
            let end;
            (self, end) = self.step_on(s, batch, queue, progress);
            if let Some(end) = end {
                return Ok((self, end));
            }
        }
        Ok((self, End::Finished))
    }

    /// One optimizer step on `batch`, then the snapshot and checkpoint due after it; `Some`
    /// ends the loop. (By value: the optimizer consumes the model, and a model shared with
    /// `self` would keep burn from updating its tensors in place.)
    fn step_on(
        mut self,
        s: &Steps<'_>,
        batch: Batch,
        queue: &mut WriterQueue,
        progress: &dyn Progress,
    ) -> (Self, Option<End>) {
        self.warmup.batch_arrived();
        // Counted once the step is taken: an interrupted attempt's last batch is loaded again
        // by the attempt that resumes it.
        let batch_skipped = batch.skipped;
        let Ok(loss) = self.batch_loss(s, batch) else {
            return (self, Some(End::Stopped));
        };
        let step_loss = loss.as_ref().map_or(f64::NAN, |(_, v)| *v);
        if let Some(mut p) = self.pending_init.take() {
            p.batch_loss = step_loss;
            if !queue.snapshot(p) {
                return (self, Some(End::Stopped));
            }
        }
        if progress.interrupted() {
            let stored = s.checkpoint_every > 0 && self.step.is_multiple_of(s.checkpoint_every);
            if self.step > s.resume_step && !stored {
                // A failed send means the writer died; its error surfaces when it is joined.
                let _ = queue.checkpoint(&self);
            }
            return (self, Some(End::Interrupted));
        }
        self.skipped_images += batch_skipped;
        if let Some((loss, loss_value)) = loss {
            let lr = learning_rate(&s.cfg.train, self.step, s.steps_per_epoch, s.total_steps);
            let grads = GradientsParams::from_grads(loss.backward(), &self.model);
            self.model = self.optim.step(lr, self.model, grads);
            self.last_loss = loss_value;
        }
        self.step += 1;
        progress.advance(1, (step_loss.is_finite()).then_some(step_loss));
        let end = (!self.after_step(s, queue)).then_some(End::Stopped);
        (self, end)
    }

    /// The training-mode loss of `batch` at the current weights, as a tensor and its value;
    /// `None` for a batch whose every image failed to decode (it trains nothing but still
    /// counts as a step, so that step numbers and the data order stay those of the config).
    /// `Err` when the loss is not finite: the run diverged at the next step.
    #[allow(clippy::type_complexity)]
    fn batch_loss(&mut self, s: &Steps<'_>, batch: Batch) -> Result<Option<(Tensor<1>, f64)>, ()> {
        if batch.labels.is_empty() {
            return Ok(None);
        }
        let (x, y) = batch_tensors(batch.features, &batch.labels, s.shape, s.ad);
        let precision = s.cfg.train.precision;
        let loss = cross_entropy(self.model.autocast(precision).forward(x), y).mean();
        let loss_value = f64::from(loss.clone().into_scalar::<f32>());
        self.warmup.loss_read();
        if !loss_value.is_finite() {
            self.diverged_at = Some(self.step + 1);
            tracing::warn!(
                step = self.step + 1,
                loss = loss_value,
                "training loss is not finite; stopping the run as diverged"
            );
            return Err(());
        }
        Ok(Some((loss, loss_value)))
    }

    /// The periodic or line-start snapshot and the checkpoint due after a step (θ_c is taken
    /// by [`Loop::finish`]); false when the writer stopped.
    fn after_step(&mut self, s: &Steps<'_>, queue: &mut WriterQueue) -> bool {
        let step = self.step;
        let periodic = s.cfg.snapshot.every > 0 && step.is_multiple_of(s.cfg.snapshot.every as u64);
        let is_start = s.start_steps.iter().find(|(_, at)| *at == step);
        if (periodic || is_start.is_some()) && step != s.total_steps {
            let m = self.model.valid();
            if let Some((label, _)) = is_start {
                self.start_models.push((label.clone(), step, m.clone()));
            }
            let train_loss = (s.loss_at)(&m);
            let p = Pending {
                model: m,
                step,
                is_final: false,
                batch_loss: self.last_loss,
                train_loss,
            };
            if !queue.snapshot(p) {
                return false;
            }
        }
        let due = s.checkpoint_every > 0
            && step.is_multiple_of(s.checkpoint_every)
            && step != s.total_steps;
        !due || queue.checkpoint(self)
    }

    /// After the last step: θ_c's snapshot, the writer's samples, and what training produced.
    fn finish(
        mut self,
        s: &Steps<'_>,
        mut queue: WriterQueue,
        writer: std::thread::ScopedJoinHandle<'_, WriterResult>,
        init: Net,
    ) -> Result<Trained, EngineError> {
        if let Some(p) = self.pending_init.take() {
            // Diverged on the very first batch.
            queue.snapshot(p);
        }
        let last = self.model.valid();
        // θ_c is stored once; a run that diverged right after a periodic snapshot (or before
        // its first step) already has its last finite weights on record.
        if queue.last_step != Some(self.step) {
            let p = Pending {
                model: last.clone(),
                step: self.step,
                is_final: true,
                batch_loss: self.last_loss,
                train_loss: (s.loss_at)(&last),
            };
            queue.snapshot(p);
        }
        drop(queue);
        let (samples, seconds) = join(writer)?;
        let parameter_count = samples.first().map_or(0, |s| s.parameters.len());
        // Lines in the order the config lists their starts.
        let mut starts = self.start_models;
        starts.sort_by_key(|(label, _, _)| s.start_steps.iter().position(|(l, _)| l == label));
        Ok(Trained {
            init,
            last,
            starts: starts.into_iter().map(|(label, _, m)| (label, m)).collect(),
            samples,
            steps: self.step,
            steps_per_epoch: s.steps_per_epoch,
            diverged_at: self.diverged_at,
            parameter_count,
            snapshot_seconds: seconds,
            skipped_images: self.skipped_images,
            warmup_seconds: self.warmup.seconds(),
        })
    }
}

/// What the writer thread returns: the trajectory samples and its seconds.
type WriterResult = Result<(Vec<TrajectorySample>, f64), EngineError>;

/// Waits for the writer thread.
fn join(writer: std::thread::ScopedJoinHandle<'_, WriterResult>) -> WriterResult {
    writer
        .join()
        .map_err(|_| EngineError::Sink("the snapshot writer thread panicked".into()))?
}

/// Loads a checkpoint's weights (with their parameter ids, which the optimizer state is keyed
/// by) and optimizer state into a freshly built model.
fn restore(
    mut model: Net,
    optim: burn::optim::ModuleOptimizer,
    c: &Checkpoint,
) -> Result<(Net, burn::optim::ModuleOptimizer), EngineError> {
    let mut store = burn::store::SafetensorsStore::from_bytes(Some(c.model.clone()));
    model
        .load_from(&mut store)
        .map_err(|e| EngineError::Resume(format!("model weights: {e}")))?;
    let ids = burn::module::list_param_ids(&model);
    if ids.len() != c.param_ids.len() {
        return Err(EngineError::Resume(format!(
            "the checkpoint has {} parameters, the model {}",
            c.param_ids.len(),
            ids.len()
        )));
    }
    let model = model.map(&mut RestoreIds(c.param_ids.iter().copied().collect()));
    let record = burn::optim::OptimizerRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(
        c.optimizer.clone(),
    ))
    .map_err(|e| EngineError::Resume(format!("optimizer state: {e}")))?;
    tracing::info!(
        step = c.step,
        "resuming from a checkpoint of an earlier attempt"
    );
    Ok((model, optim.load_record(record)))
}

/// The steps the lines start at (`eval.starts`), and the start networks already known: θ_i,
/// and those a resumed attempt rebuilds from its snapshots.
#[allow(clippy::type_complexity)]
fn line_starts(
    cfg: &ShardConfig,
    steps_per_epoch: u64,
    total_steps: u64,
    init: &Net,
    resume: Option<&Resume>,
) -> Result<(Vec<(String, u64)>, Vec<(String, u64, Net)>), EngineError> {
    let resume_step = resume.map_or(0, |r| r.checkpoint.step);
    // Lines start at θ_i or at intermediate snapshots, each taken at its step.
    let mut start_steps: Vec<(String, u64)> = Vec::new();
    for (label, point) in cfg.start_points() {
        let s = point.step(steps_per_epoch);
        if s >= total_steps {
            return Err(EngineError::Config(format!(
                "eval.starts: `{label}` is step {s}, but training ends at step {total_steps} \
                 ({steps_per_epoch} steps per epoch); a line must start before θ_c"
            )));
        }
        start_steps.push((label, s));
    }
    let mut start_models: Vec<(String, u64, Net)> = Vec::new();
    for (label, s) in &start_steps {
        if *s == 0 {
            start_models.push((label.clone(), 0, init.clone()));
        } else if *s <= resume_step {
            let snap = resume
                .and_then(|r| r.snapshots.iter().find(|x| x.step == *s))
                .ok_or_else(|| {
                    EngineError::Resume(format!(
                        "no snapshot of step {s} (start `{label}`) to resume with"
                    ))
                })?;
            start_models.push((label.clone(), *s, net_from_snapshot(init, snap)?));
        }
    }
    Ok((start_steps, start_models))
}

/// The trajectory of a resumed attempt so far, its last snapshot's step and its last loss.
fn resumed_trajectory(resume: Option<Resume>) -> (Vec<TrajectorySample>, Option<u64>, f64) {
    let Some(r) = resume else {
        return (Vec::new(), None, f64::NAN);
    };
    let samples: Vec<TrajectorySample> = r
        .checkpoint
        .samples
        .iter()
        .zip(&r.snapshots)
        .map(|(m, snap)| TrajectorySample {
            step: m.step,
            epoch: m.epoch,
            parameters: snap.parameter_vector(),
            batch_loss: m.batch_loss,
            train_loss: m.train_loss,
        })
        .collect();
    let last = samples.last().map(|s| s.step);
    (samples, last, r.checkpoint.last_loss)
}

/// The loader thread: the data order of every epoch (a pure function of the seed, so a
/// resumed run replays it and skips the batches before its checkpoint), each step's batch
/// built and sent ahead of the optimizer.
fn load_batches(
    train: &TrainData,
    cfg: &ShardConfig,
    resume_step: u64,
    threads: usize,
    btx: &std::sync::mpsc::SyncSender<Batch>,
) {
    let (seed, batch_size) = (cfg.data_order_seed(), cfg.train.batch_size);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ DATA_ORDER_SALT);
    let mut step = 0u64;
    for _ in 0..cfg.train.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(batch_size) {
            if step >= resume_step {
                let b = train.batch(chunk, augment_seed(seed, step), threads);
                if btx.send(b).is_err() {
                    return;
                }
            }
            step += 1;
        }
    }
}

/// The writer thread: captures each pending snapshot to the host, stores it, and keeps the
/// parameter vector for the trajectory. Returns the samples and the seconds spent.
fn write_snapshots(
    rx: std::sync::mpsc::Receiver<ToWriter>,
    sink: &mut (dyn SnapshotSink + Send),
    steps_per_epoch: u64,
    resumed: Vec<TrajectorySample>,
) -> WriterResult {
    let mut samples = resumed;
    let mut seconds = 0.0;
    for job in rx {
        let started = std::time::Instant::now();
        let p = match job {
            ToWriter::Snapshot(p) => p,
            ToWriter::Checkpoint(c) => {
                let mut store = burn::store::SafetensorsStore::from_bytes(None);
                c.model
                    .save_into(&mut store)
                    .map_err(|e| EngineError::Sink(format!("checkpoint weights: {e}")))?;
                let model = store
                    .get_bytes()
                    .map_err(|e| EngineError::Sink(format!("checkpoint weights: {e}")))?;
                let optimizer = c
                    .optimizer
                    .into_bytes()
                    .map_err(|e| EngineError::Sink(format!("checkpoint optimizer: {e}")))?
                    .to_vec();
                let checkpoint = Checkpoint {
                    step: c.step,
                    last_loss: c.last_loss,
                    model,
                    optimizer,
                    param_ids: c.param_ids,
                    skipped_images: c.skipped_images,
                    samples: samples
                        .iter()
                        .map(|s| SampleMeta {
                            step: s.step,
                            epoch: s.epoch,
                            batch_loss: s.batch_loss,
                            train_loss: s.train_loss,
                        })
                        .collect(),
                };
                sink.checkpoint(&checkpoint)?;
                seconds += started.elapsed().as_secs_f64();
                continue;
            }
        };
        let snap = HostSnapshot::capture(&p.model, p.step)?;
        let epoch = p.step as f64 / steps_per_epoch.max(1) as f64;
        sink.snapshot(&snap, epoch, p.is_final)?;
        samples.push(TrajectorySample {
            step: p.step,
            epoch,
            parameters: snap.parameter_vector(),
            batch_loss: p.batch_loss,
            train_loss: p.train_loss,
        });
        seconds += started.elapsed().as_secs_f64();
    }
    Ok((samples, seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let mut c = TrainConfig {
            lr: 0.1,
            ..TrainConfig::default()
        };
        assert_eq!(learning_rate(&c, 500, 10, 1000), 0.1);
        c.schedule = Schedule::Step;
        c.milestones = vec![2, 4];
        c.gamma = 0.5;
        assert_eq!(learning_rate(&c, 19, 10, 100), 0.1);
        assert_eq!(learning_rate(&c, 20, 10, 100), 0.05);
        assert_eq!(learning_rate(&c, 45, 10, 100), 0.025);
        c.schedule = Schedule::Cosine;
        assert_eq!(learning_rate(&c, 0, 10, 100), 0.1);
        assert!((learning_rate(&c, 50, 10, 100) - 0.05).abs() < 1e-12);
        assert!(learning_rate(&c, 100, 10, 100).abs() < 1e-12);
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;
    use crate::config::{ModelConfig, Norm};

    /// Loading a snapshot into a network leaves the template as it was, running statistics
    /// included (a clone shares them, and loading used to overwrite the template's: a resumed
    /// attempt's `step:N` start gave θ_i its statistics).
    #[test]
    fn loading_a_snapshot_leaves_the_template_alone() {
        let device = Device::flex();
        device.seed(2);
        let cfg = ModelConfig {
            hidden: vec![3],
            norm: Some(Norm::Batch),
            ..ModelConfig::default()
        };
        let template = Net::new(&cfg, [1, 1, 2], 2, &device);
        let before = HostSnapshot::capture(&template, 0).unwrap();
        let mut other = before.clone();
        for t in &mut other.tensors {
            t.data.iter_mut().for_each(|v| *v = 7.0);
        }
        let loaded = net_from_snapshot(&template, &other).unwrap();
        assert_eq!(loaded.min_running_var(), Some(7.0));
        assert_eq!(HostSnapshot::capture(&template, 0).unwrap(), before);
    }
}
