//! The shard config: one TOML file describes one training run and its evaluation.
//!
//! Every field has a default, so an empty file is a valid config (the default shard: MLP
//! 784-1024-1024-10 on the built-in `mnist-10k`, 10 epochs of SGD at lr 0.1). Unknown keys
//! and unknown enum values are refused by serde with the line and column; range checks run
//! afterwards in [`ShardConfig::validate`], and [`ConfigError`] locates the offending key in
//! the source so that every error names file, line and field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::results::SCHEMA_VERSION;
use crate::science::{AlphaGrid, GridError};
use crate::storage::ids::ShardId;

/// A shard config could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read the config: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or an unknown value (the message carries line and column).
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    /// A value out of range.
    #[error("{file}:{line}: field `{field}`: {message}")]
    Invalid {
        file: String,
        line: usize,
        field: String,
        message: String,
    },
}

/// Datasets a shard can train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    /// The 10,000-digit MNIST sample compiled into the binary (8,000 train, 2,000 test).
    #[serde(rename = "mnist-10k")]
    Mnist10k,
    /// MNIST IDX files (raw or gzip) in `data.dir`.
    Mnist,
    /// CIFAR-10 binary batches (`data_batch_1..5.bin`, `test_batch.bin`) in `data.dir`.
    Cifar10,
    /// ImageNet folders `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG` in `data.dir`.
    Imagenet,
}

impl DatasetName {
    /// The name used in configs and result tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mnist10k => "mnist-10k",
            Self::Mnist => "mnist",
            Self::Cifar10 => "cifar10",
            Self::Imagenet => "imagenet",
        }
    }
}

/// Architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Fully connected network.
    Mlp,
    /// Small convolutional network (`channels`).
    Cnn,
    /// CIFAR ResNet-20.
    Resnet20,
    /// CIFAR ResNet-32.
    Resnet32,
    /// CIFAR ResNet-44.
    Resnet44,
    /// CIFAR ResNet-56.
    Resnet56,
    /// ImageNet ResNet-18 (torchvision).
    Resnet18,
    /// ImageNet ResNet-50 (torchvision v1.5).
    Resnet50,
}

impl Arch {
    /// The name used in configs and result tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mlp => "mlp",
            Self::Cnn => "cnn",
            Self::Resnet20 => "resnet20",
            Self::Resnet32 => "resnet32",
            Self::Resnet44 => "resnet44",
            Self::Resnet56 => "resnet56",
            Self::Resnet18 => "resnet18",
            Self::Resnet50 => "resnet50",
        }
    }

    /// Residual networks have batch norm unless told otherwise; the others have none.
    pub fn default_norm(self) -> Norm {
        match self {
            Self::Mlp | Self::Cnn => Norm::None,
            _ => Norm::Batch,
        }
    }
}

/// Normalisation layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// None.
    None,
    /// Batch norm after every hidden linear layer or convolution, before the nonlinearity.
    Batch,
}

impl Norm {
    /// The name used in configs and result tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Batch => "batch",
        }
    }
}

/// How batch-norm running statistics are set at each α of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BnMode {
    /// Interpolated like the weights (loss-landscape's `states`).
    Interpolate,
    /// Reset, then re-estimated from `eval.bn_batches` training batches in training mode
    /// (Lucas et al.).
    Recompute,
    /// The end network's (θ_c's) statistics.
    Endpoint,
}

impl BnMode {
    /// The name used in configs and result tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interpolate => "interpolate",
            Self::Recompute => "recompute",
            Self::Endpoint => "endpoint",
        }
    }
}

/// Floating-point precision of training and evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats throughout.
    F32,
    /// bfloat16 compute where the device supports it; snapshots and geometry stay f32.
    Bf16,
}

impl Precision {
    /// The name used in configs and result tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

/// The most parameters a shard's network may have (8 GB of f32 weights; training holds
/// weights, gradients, optimizer state, θ_i and snapshots, several times that). A typo such
/// as `hidden = [100000000, 100000000]` is refused when the spec is planned, not by an
/// allocation failure in a worker.
pub const MAX_PARAMETERS: u128 = 2_000_000_000;

/// Where a line starts: θ_i or an intermediate snapshot (`eval.starts`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StartPoint {
    /// θ_i.
    Init,
    /// After this many optimizer steps.
    Step(u64),
    /// After this many epochs (may be fractional).
    Epoch(f64),
}

impl StartPoint {
    /// Parses `init`, `step:N` or `epoch:E`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a start: write \"init\", \"step:N\" or \"epoch:E\"");
        match s.split_once(':') {
            None if s == "init" => Ok(Self::Init),
            Some(("step", n)) => n.trim().parse().map(Self::Step).map_err(|_| bad()),
            Some(("epoch", e)) => match e.trim().parse::<f64>() {
                Ok(e) if e.is_finite() && e >= 0.0 => Ok(Self::Epoch(e)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }

    /// The optimizer step this start names, given the run's steps per epoch.
    pub fn step(self, steps_per_epoch: u64) -> u64 {
        match self {
            Self::Init => 0,
            Self::Step(n) => n,
            Self::Epoch(e) => (e * steps_per_epoch as f64).round() as u64,
        }
    }
}

/// Hidden-layer nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// tanh(x).
    Tanh,
    /// 1/(1+e^−x).
    Sigmoid,
}

impl Activation {
    /// The name used in configs and result tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Relu => "relu",
            Self::Tanh => "tanh",
            Self::Sigmoid => "sigmoid",
        }
    }
}

/// Optimizers, with PyTorch's semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    /// SGD with optional (Nesterov) momentum, dampening 0.
    Sgd,
    /// Adam (ε = 1e-8 by default, as in PyTorch).
    Adam,
}

impl OptimizerName {
    /// The name used in configs and result tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sgd => "sgd",
            Self::Adam => "adam",
        }
    }
}

/// Learning-rate schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// lr throughout.
    Constant,
    /// lr × gamma^(number of milestones passed), milestones in epochs (PyTorch `MultiStepLR`).
    Step,
    /// Cosine annealing from lr to 0 over all steps.
    Cosine,
}

impl Schedule {
    /// The name used in configs and result tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::Step => "step",
            Self::Cosine => "cosine",
        }
    }
}

/// One shard: everything that determines a run and its evaluation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardConfig {
    /// Free-form label, copied to the `runs` table.
    pub name: String,
    /// Fixes the initial weights and the data order.
    pub seed: u64,
    /// Training and evaluation data.
    pub data: DataConfig,
    /// Architecture.
    pub model: ModelConfig,
    /// Optimizer and schedule.
    pub train: TrainConfig,
    /// Which weights are kept.
    pub snapshot: SnapshotConfig,
    /// The line and the trajectory evaluation.
    pub eval: EvalConfig,
    /// A pair shard's two shards; `None` for a shard that trains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pair: Option<PairOf>,
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Which dataset.
    pub dataset: DatasetName,
    /// Directory of the dataset files (not used by built-in datasets). Relative paths are
    /// resolved against the config file's directory.
    pub dir: Option<PathBuf>,
    /// Train on this many training examples (a fixed, seed-independent subset); all if unset.
    pub max_train_examples: Option<usize>,
    /// Training augmentation of `cifar10` (random crop with padding 4, horizontal flip) and
    /// `imagenet` (random-resized crop, flip). Other datasets have none.
    pub augment: bool,
    /// Side of the square `imagenet` input (training crop and evaluation centre crop).
    pub image_size: usize,
    /// Threads decoding and augmenting training batches ahead of the device.
    pub loader_threads: usize,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Hidden-layer widths of the MLP.
    pub hidden: Vec<usize>,
    /// Convolution widths of the CNN (one 3×3 conv + 2×2 max-pool each).
    pub channels: Vec<usize>,
    /// Hidden nonlinearity (MLP and CNN; residual networks use ReLU).
    pub activation: Activation,
    /// Normalisation layers; unset means the architecture's default (batch norm for residual
    /// networks, none otherwise). Configs are normalised so that the default is spelled out.
    pub norm: Option<Norm>,
}

impl ModelConfig {
    /// Whether the network has batch norm.
    pub fn batch_norm(&self) -> bool {
        self.norm.unwrap_or(self.arch.default_norm()) == Norm::Batch
    }
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer.
    pub optimizer: OptimizerName,
    /// Base learning rate.
    pub lr: f64,
    /// SGD momentum (0 = plain SGD).
    pub momentum: f64,
    /// Nesterov momentum (SGD).
    pub nesterov: bool,
    /// L2 penalty added to the gradient, as PyTorch's `weight_decay`.
    pub weight_decay: f64,
    /// Adam β₁.
    pub beta1: f64,
    /// Adam β₂.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Mini-batch size; the last, partial batch of an epoch is kept.
    pub batch_size: usize,
    /// Passes over the training set.
    pub epochs: usize,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Compute precision.
    pub precision: Precision,
    /// Epochs at which the `step` schedule multiplies the lr by `gamma`.
    pub milestones: Vec<usize>,
    /// Factor of the `step` schedule.
    pub gamma: f64,
    /// Seed of the data order and the augmentation draws; the top-level `seed` when unset.
    /// Two shards with one `seed` and two `data_seed`s start from the same θ_i and see the
    /// data in different orders (Frankle et al. 2020's instability analysis).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_seed: Option<u64>,
    /// Start from another shard's snapshot instead of a fresh initialisation (the children of
    /// Frankle et al. 2020's instability analysis); the run then trains its own schedule
    /// from step 0 with a fresh optimizer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<InitFrom>,
}

/// `train.init_from`: θ_i is the snapshot of `shard` at optimizer step `step`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitFrom {
    /// The parent's shard id. Its snapshots are read from the results root, so the parent
    /// must be committed there before this shard runs (typically by an earlier sweep).
    /// (A string, not a [`ShardId`], so that a bad one is reported as a field of this
    /// config: [`ShardConfig::check_resolved`].)
    #[serde(default)]
    pub shard: String,
    /// The parent's optimizer step: 0, a multiple of its `snapshot.every`, a line start, or
    /// its last step.
    pub step: u64,
}

/// `pair` (planned from a spec's `[[pairs]]`, never written by hand): the shard trains
/// nothing and evaluates the line between the final weights of two committed shards of its
/// sweep, `a` at α = 0 and `b` at α = 1, with this config's `[eval]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairOf {
    /// The shard at α = 0.
    pub a: ShardId,
    /// The shard at α = 1.
    pub b: ShardId,
}

/// `[snapshot]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Keep θ_t every this many optimizer steps (θ_i and θ_c are always kept); 0 = never.
    pub every: usize,
    /// Which snapshot files stay in storage once the trajectory is computed.
    #[serde(skip_serializing_if = "Keep::is_all")]
    pub keep: Keep,
}

impl Keep {
    fn is_all(&self) -> bool {
        *self == Keep::All
    }
}

/// `snapshot.keep`: the storage budget of a shard's snapshots. The trajectory is computed
/// from every snapshot either way; this only decides which files outlive the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// Every snapshot (θ_i, each θ_t, θ_c).
    #[default]
    All,
    /// Only what a line needs: θ_i, θ_c and each line start (`eval.starts`).
    Lines,
}

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// First α of the line.
    pub alpha_start: f64,
    /// Last α of the line.
    pub alpha_stop: f64,
    /// Number of α points; 0 and 1 must be among them.
    pub alpha_points: usize,
    /// Examples per evaluation forward pass.
    pub batch_size: usize,
    /// Evaluate each split on this many examples (a fixed subset); the full split if unset.
    pub max_examples: Option<usize>,
    /// Also compute the full-train-set loss at every snapshot (costs one pass per snapshot).
    pub trajectory_train_loss: bool,
    /// Where lines start: `init` (θ_i), `step:N`, `epoch:E`; every line ends at θ_c. A
    /// snapshot is taken at every listed step.
    pub starts: Vec<String>,
    /// Batch-norm handling along the line, one line per mode (networks with batch norm).
    pub bn_modes: Vec<BnMode>,
    /// Training batches that re-estimate the statistics at each α in `recompute` mode.
    pub bn_batches: usize,
    /// 2-D planes around θ_c (`[eval.plane]`); none when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plane: Option<PlaneConfig>,
    /// Also build the Safran–Shamir monotone path along the line from θ_i (the `monotone_path`
    /// table): one more pass over the train split per α in [0, 1], and one to check it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub monotone_path: bool,
}

/// Which plane `[eval.plane]` spans around θ_c.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlaneKind {
    /// θ_c + x·δ + y·η: two seeded Gaussian directions, filter-normalised (Li et al. 2018).
    Random,
    /// θ_c + x·(θ_i − θ_c) + y·η: the plane that contains the line.
    Init,
    /// The top two principal directions of the trajectory {θ_t − θ_c} (Li et al. §7), each
    /// as long as θ_i − θ_c.
    Pca,
}

impl PlaneKind {
    /// The name used in configs and result tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::Init => "init",
            Self::Pca => "pca",
        }
    }
}

/// `[eval.plane]`: loss and accuracy on a grid of θ(x, y) = θ_c + x·δ + y·η.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlaneConfig {
    /// The planes to evaluate, each on the same grid.
    pub kinds: Vec<PlaneKind>,
    /// Grid points per axis.
    pub points: usize,
    /// The range of x, `[first, last]`.
    pub x: [f64; 2],
    /// The range of y, `[first, last]`.
    pub y: [f64; 2],
    /// Seed of the random directions (loss-landscape seeds with 123).
    pub seed: u64,
}

impl Default for PlaneConfig {
    fn default() -> Self {
        Self {
            kinds: vec![PlaneKind::Random],
            points: 21,
            x: [-1.0, 1.0],
            y: [-1.0, 1.0],
            seed: 123,
        }
    }
}

impl PlaneConfig {
    /// The grid values of one axis (`range` validated: points ≥ 2, first < last).
    pub fn axis(&self, range: [f64; 2]) -> Vec<f64> {
        let n = self.points.max(2);
        (0..n)
            .map(|i| {
                if i + 1 == n {
                    range[1]
                } else {
                    range[0] + (range[1] - range[0]) * i as f64 / (n - 1) as f64
                }
            })
            .collect()
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.kinds.is_empty() {
            return Err(("kinds", "list at least one plane, e.g. [\"random\"]".into()));
        }
        for (i, k) in self.kinds.iter().enumerate() {
            if self.kinds[..i].contains(k) {
                return Err(("kinds", format!("`{}` is listed twice", k.as_str())));
            }
        }
        if self.points < 2 {
            return Err((
                "points",
                format!(
                    "a plane needs at least 2 points per axis, got {}",
                    self.points
                ),
            ));
        }
        if self.points > 401 {
            return Err((
                "points",
                format!(
                    "at most 401 points per axis (160,801 evaluations), got {}",
                    self.points
                ),
            ));
        }
        for (key, [a, b]) in [("x", self.x), ("y", self.y)] {
            if !(a.is_finite() && b.is_finite()) {
                return Err((key, format!("the range must be finite, got [{a}, {b}]")));
            }
            if a >= b {
                return Err((
                    key,
                    format!(
                        "the range [{a}, {b}] has no width: give [first, last] with first < last"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetName::Mnist10k,
            dir: None,
            max_train_examples: None,
            augment: true,
            image_size: 224,
            loader_threads: 2,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            arch: Arch::Mlp,
            hidden: vec![1024, 1024],
            channels: vec![32, 64],
            activation: Activation::Relu,
            norm: None,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            optimizer: OptimizerName::Sgd,
            lr: 0.1,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            batch_size: 128,
            epochs: 10,
            schedule: Schedule::Constant,
            precision: Precision::F32,
            milestones: Vec::new(),
            gamma: 0.1,
            data_seed: None,
            init_from: None,
        }
    }
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            every: 10,
            keep: Keep::All,
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            alpha_start: -0.5,
            alpha_stop: 1.5,
            alpha_points: 41,
            batch_size: 1000,
            max_examples: None,
            trajectory_train_loss: false,
            starts: vec!["init".into()],
            bn_modes: vec![BnMode::Interpolate],
            bn_batches: 10,
            plane: None,
            monotone_path: false,
        }
    }
}

/// A range violation found by [`ShardConfig::validate`], before it is located in a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// TOML section, e.g. `train` (empty for top-level keys).
    pub section: &'static str,
    /// Key inside the section.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

impl Violation {
    /// The dotted field, as errors name it (`train.lr`; `seed` at the top level).
    pub fn field(&self) -> String {
        if self.section.is_empty() {
            self.key.to_owned()
        } else {
            format!("{}.{}", self.section, self.key)
        }
    }
}

impl ShardConfig {
    /// Reads, parses and validates a config file; relative `data.dir` is resolved against the
    /// file's directory.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let mut cfg = Self::from_toml(&src, &file)?;
        if let Some(dir) = &cfg.data.dir
            && dir.is_relative()
        {
            let base = path.parent().unwrap_or_else(|| Path::new("."));
            cfg.data.dir = Some(base.join(dir));
        }
        Ok(cfg)
    }

    /// Parses, normalises and validates config JSON (how a worker hands a leased shard to its
    /// child, and how shards are submitted), with the same rules as a file.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let cfg: Self = serde_json::from_str(json)
            .map_err(|e| format!("the config is not a shard config: {e}"))?;
        let cfg = cfg.normalized();
        cfg.validate()
            .and_then(|()| cfg.check_resolved())
            .map_err(|v| format!("field `{}`: {}", v.field(), v.message))?;
        Ok(cfg)
    }

    /// Parses and validates TOML text; `file` names the source in errors.
    pub fn from_toml(src: &str, file: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(src).map_err(|e| toml_error(src, file, &e))?;
        let cfg = cfg.normalized();
        if let Err(v) = cfg.validate().and_then(|()| cfg.check_resolved()) {
            let line = locate_key(src, v.section, v.key).unwrap_or(1);
            return Err(ConfigError::Invalid {
                file: file.to_owned(),
                line,
                field: v.field(),
                message: v.message,
            });
        }
        Ok(cfg)
    }

    /// Spells out defaults that depend on other fields (the architecture's normalisation), so
    /// that two configs meaning the same run have the same shard id.
    pub fn normalized(mut self) -> Self {
        if self.model.norm.is_none() {
            self.model.norm = Some(self.model.arch.default_norm());
        }
        self
    }

    /// What every shard config must also satisfy, besides [`validate`](Self::validate):
    /// `train.init_from.shard` is a shard id.
    pub fn check_resolved(&self) -> Result<(), Violation> {
        match &self.train.init_from {
            Some(from) if ShardId::parse(from.shard.clone()).is_err() => Err(Violation {
                section: "train",
                key: "init_from",
                message: format!(
                    "`shard` must be the id of a shard whose snapshots are in the results \
                     root (as `linesweep status` or the `runs` table name it), got {:?}; \
                     selecting a parent in the same sweep by its keys is not supported yet",
                    from.shard
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The shards that must be committed before this one runs: the parent it starts from,
    /// or the two ends of its pair line.
    pub fn needs(&self) -> Vec<ShardId> {
        let parent = self.train.init_from.as_ref();
        let parent = parent.and_then(|f| ShardId::parse(f.shard.clone()).ok());
        let pair = self.pair.iter().flat_map(|p| [p.a.clone(), p.b.clone()]);
        parent.into_iter().chain(pair).collect()
    }

    /// Whether a shard of this config keeps a snapshot at optimizer step `step` that another
    /// shard can start from (`train.init_from`): θ_i, θ_c, its line starts, and with
    /// `snapshot.keep = "all"` every multiple of `snapshot.every`. `Err` says what it keeps.
    /// Steps are checked against the training length where it is known before training.
    pub fn keeps_snapshot(&self, step: u64) -> Result<(), String> {
        let Some((per_epoch, total)) = self.steps_at_most() else {
            return Ok(());
        };
        let starts: Vec<u64> = self
            .start_points()
            .into_iter()
            .map(|(_, p)| p.step(per_epoch))
            .collect();
        let every = self.snapshot.every as u64;
        let on_grid = self.snapshot.keep == Keep::All && every > 0 && step.is_multiple_of(every);
        if step > total {
            return Err(format!(
                "step {step} is beyond the parent's training, which ends at step {total}"
            ));
        }
        if step == 0 || step == total || on_grid || starts.contains(&step) {
            return Ok(());
        }
        let grid = if self.snapshot.keep == Keep::All && every > 0 {
            format!(", every multiple of {every}")
        } else {
            String::new()
        };
        Err(format!(
            "the parent keeps no snapshot at step {step}: it keeps steps 0 and {total}{grid}, \
             and its line starts {starts:?}"
        ))
    }

    /// The seed of the data order and augmentation: `train.data_seed`, else `seed`.
    pub fn data_order_seed(&self) -> u64 {
        self.train.data_seed.unwrap_or(self.seed)
    }

    /// The parsed `eval.starts` (valid after [`validate`](Self::validate)).
    pub fn start_points(&self) -> Vec<(String, StartPoint)> {
        self.eval
            .starts
            .iter()
            .filter_map(|s| StartPoint::parse(s).ok().map(|p| (s.clone(), p)))
            .collect()
    }

    /// Range checks that serde cannot express.
    pub fn validate(&self) -> Result<(), Violation> {
        let bad = |section, key, message: String| {
            Err(Violation {
                section,
                key,
                message,
            })
        };
        let t = &self.train;
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return bad(
                "train",
                "lr",
                format!("must be a positive number, got {}", t.lr),
            );
        }
        if !(0.0..1.0).contains(&t.momentum) {
            return bad(
                "train",
                "momentum",
                format!("must be in [0, 1), got {}", t.momentum),
            );
        }
        if t.nesterov && t.momentum == 0.0 {
            return bad(
                "train",
                "nesterov",
                "Nesterov momentum needs momentum > 0".into(),
            );
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return bad(
                "train",
                "weight_decay",
                format!("must be ≥ 0, got {}", t.weight_decay),
            );
        }
        for (key, v) in [("beta1", t.beta1), ("beta2", t.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad("train", key, format!("must be in [0, 1), got {v}"));
            }
        }
        if !(t.eps.is_finite() && t.eps > 0.0) {
            return bad("train", "eps", format!("must be > 0, got {}", t.eps));
        }
        if t.batch_size == 0 {
            return bad("train", "batch_size", "must be at least 1".into());
        }
        if t.epochs == 0 {
            return bad("train", "epochs", "must be at least 1".into());
        }
        if !(t.gamma.is_finite() && t.gamma > 0.0) {
            return bad("train", "gamma", format!("must be > 0, got {}", t.gamma));
        }
        if t.schedule == Schedule::Step && t.milestones.is_empty() {
            return bad(
                "train",
                "milestones",
                "the step schedule needs at least one milestone epoch".into(),
            );
        }
        if t.milestones.windows(2).any(|w| w[0] >= w[1]) {
            return bad(
                "train",
                "milestones",
                "milestones must be strictly increasing".into(),
            );
        }
        let m = &self.model;
        if m.hidden.contains(&0) {
            return bad("model", "hidden", "hidden widths must be at least 1".into());
        }
        if m.arch == Arch::Cnn && (m.channels.is_empty() || m.channels.contains(&0)) {
            return bad(
                "model",
                "channels",
                "the CNN needs at least one convolution width, each at least 1".into(),
            );
        }
        let what = match self.data.dataset {
            DatasetName::Mnist => Some("the folder of its IDX files"),
            DatasetName::Cifar10 => Some("the folder of data_batch_1.bin … test_batch.bin"),
            DatasetName::Imagenet => Some("the folder holding train/ and val/"),
            DatasetName::Mnist10k => None,
        };
        if let Some(what) = what
            && self.data.dir.is_none()
        {
            return bad(
                "data",
                "dir",
                format!(
                    "dataset \"{}\" needs `dir`, {what}",
                    self.data.dataset.as_str()
                ),
            );
        }
        if self.data.image_size < 8 {
            return bad("data", "image_size", "must be at least 8".into());
        }
        if self.data.loader_threads == 0 {
            return bad("data", "loader_threads", "must be at least 1".into());
        }
        if self.data.max_train_examples == Some(0) {
            return bad("data", "max_train_examples", "must be at least 1".into());
        }
        let e = &self.eval;
        if let Err(err) = AlphaGrid::linspace(e.alpha_start, e.alpha_stop, e.alpha_points) {
            let key = match err {
                GridError::TooFewPoints(_) => "alpha_points",
                GridError::NotIncreasing { .. } | GridError::NotFinite => "alpha_stop",
                GridError::MissingEndpoint { missing, .. } => {
                    if missing == 0.0 {
                        "alpha_start"
                    } else {
                        "alpha_stop"
                    }
                }
            };
            return bad("eval", key, err.to_string());
        }
        if e.batch_size == 0 {
            return bad("eval", "batch_size", "must be at least 1".into());
        }
        if e.max_examples == Some(0) {
            return bad("eval", "max_examples", "must be at least 1".into());
        }
        if e.starts.is_empty() {
            return bad(
                "eval",
                "starts",
                "list at least one start, e.g. [\"init\"]".into(),
            );
        }
        for (i, s) in e.starts.iter().enumerate() {
            if let Err(msg) = StartPoint::parse(s) {
                return bad("eval", "starts", msg);
            }
            if e.starts[..i].contains(s) {
                return bad("eval", "starts", format!("`{s}` is listed twice"));
            }
        }
        if let Err(msg) = self.starts_fit_training() {
            return bad("eval", "starts", msg);
        }
        if let Some(p) = self.parameters_at_least()
            && p > MAX_PARAMETERS
        {
            let key = if m.arch == Arch::Cnn {
                "channels"
            } else {
                "hidden"
            };
            return bad(
                "model",
                key,
                format!(
                    "the network has at least {:.3e} parameters ({:.3e} bytes of f32 weights, several times that to train); the limit is {:.1e}",
                    p as f64,
                    p as f64 * 4.0,
                    MAX_PARAMETERS as f64
                ),
            );
        }
        if e.bn_modes.is_empty() {
            return bad(
                "eval",
                "bn_modes",
                "list at least one mode, e.g. [\"interpolate\"]".into(),
            );
        }
        if e.bn_batches == 0 && e.bn_modes.contains(&BnMode::Recompute) {
            return bad(
                "eval",
                "bn_batches",
                "recompute needs at least 1 batch".into(),
            );
        }
        if let Some(plane) = &e.plane {
            if let Err((key, message)) = plane.check() {
                return bad("eval.plane", key, message);
            }
            let every = self.snapshot.every as u64;
            let total = self.steps_at_most().map_or(u64::MAX, |(_, t)| t);
            if plane.kinds.contains(&PlaneKind::Pca) && (every == 0 || total <= every) {
                return bad(
                    "eval.plane",
                    "kinds",
                    format!(
                        "the pca plane needs a snapshot between θ_i and θ_c: snapshot.every is {every}, training takes {} steps",
                        self.steps_at_most()
                            .map_or("an unknown number of".into(), |(_, t)| t.to_string())
                    ),
                );
            }
        }
        Ok(())
    }

    /// Training examples, when known before the data is read: the built-in sample's 8,000,
    /// or at most `max_train_examples`.
    fn train_examples_at_most(&self) -> Option<usize> {
        let builtin = (self.data.dataset == DatasetName::Mnist10k).then_some(8_000);
        match (builtin, self.data.max_train_examples) {
            (Some(n), Some(m)) => Some(n.min(m)),
            (n, m) => n.or(m),
        }
    }

    /// Steps per epoch and in all, when the training set's size is known before it is read.
    fn steps_at_most(&self) -> Option<(u64, u64)> {
        let per_epoch =
            (self.train_examples_at_most()? as u64).div_ceil(self.train.batch_size.max(1) as u64);
        Some((per_epoch, per_epoch * self.train.epochs as u64))
    }

    /// Every start must come before θ_c. `epoch:E` is checked against `train.epochs` always;
    /// `step:N` wherever the training set's size is known (the engine checks the rest once it
    /// has read the data), so that a plan or a submission refuses it before anything runs.
    fn starts_fit_training(&self) -> Result<(), String> {
        let epochs = self.train.epochs as u64;
        let max_steps = self.steps_at_most().map(|(_, total)| total);
        for (label, point) in self.start_points() {
            let too_late = match point {
                StartPoint::Init => false,
                StartPoint::Epoch(e) => e >= epochs as f64,
                StartPoint::Step(n) => max_steps.is_some_and(|m| n >= m),
            };
            if too_late {
                let end = max_steps.map_or(format!("after {epochs} epochs"), |m| {
                    format!("at step {m} or before ({epochs} epochs)")
                });
                return Err(format!(
                    "`{label}` is not before the end of training, which ends {end}; a line must start before θ_c"
                ));
            }
        }
        Ok(())
    }

    /// A lower bound on the network's parameter count where widths are configurable (MLP,
    /// CNN), computed without building it; `None` for the residual networks (fixed sizes).
    /// Bytes of snapshot files one shard leaves in storage, where the training-set size is
    /// known (the built-in sample, or `max_train_examples`): f32 weights per snapshot, times
    /// the snapshots `snapshot.every` and `snapshot.keep` make.
    pub fn snapshot_bytes_at_least(&self) -> Option<u128> {
        let (per_epoch, total) = self.steps_at_most()?;
        // Line starts strictly inside training (θ_i and θ_c are counted on their own).
        let starts: std::collections::BTreeSet<u64> = self
            .start_points()
            .into_iter()
            .map(|(_, p)| p.step(per_epoch))
            .filter(|s| (1..total).contains(s))
            .collect();
        let every = self.snapshot.every as u64;
        let count = match self.snapshot.keep {
            Keep::All if every > 0 => {
                let off_grid = starts.iter().filter(|s| !s.is_multiple_of(every)).count();
                2 + total.saturating_sub(1) / every + off_grid as u64
            }
            Keep::All | Keep::Lines => 2 + starts.len() as u64,
        };
        Some(self.parameters_at_least()? * 4 * u128::from(count))
    }

    pub fn parameters_at_least(&self) -> Option<u128> {
        let (channels, side, classes): (u128, u128, u128) = match self.data.dataset {
            DatasetName::Mnist10k | DatasetName::Mnist => (1, 28, 10),
            DatasetName::Cifar10 => (3, 32, 10),
            // The class count is the number of folders; two is the fewest that trains.
            DatasetName::Imagenet => (3, self.data.image_size as u128, 2),
        };
        let dense =
            |widths: &[u128]| -> u128 { widths.windows(2).map(|w| (w[0] + 1) * w[1]).sum() };
        match self.model.arch {
            Arch::Mlp => {
                let mut widths = vec![channels * side * side];
                widths.extend(self.model.hidden.iter().map(|&h| h as u128));
                widths.push(classes);
                Some(dense(&widths))
            }
            Arch::Cnn => {
                let mut widths = vec![channels];
                widths.extend(self.model.channels.iter().map(|&c| c as u128));
                let convs: u128 = widths.windows(2).map(|w| 9 * w[0] * w[1] + w[1]).sum();
                let last = *widths.last().unwrap_or(&channels);
                Some(convs + dense(&[last, classes]))
            }
            _ => None,
        }
    }

    /// The α grid of the line (valid after [`validate`](Self::validate)).
    pub fn alpha_grid(&self) -> Result<AlphaGrid, GridError> {
        AlphaGrid::linspace(
            self.eval.alpha_start,
            self.eval.alpha_stop,
            self.eval.alpha_points,
        )
    }

    /// Canonical JSON of the config: field order fixed by the struct, no whitespace.
    pub fn canonical_json(&self) -> String {
        // Serializing plain structs of numbers, strings and vectors cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Stable shard id: a hash of the canonical config and the result-schema version, so that
    /// the same config under the same schema always lands in the same place. The environment
    /// is left out (`data.dir`: where this machine mounts the dataset; `data.loader_threads`:
    /// how fast it decodes): the same experiment on another mount is the same shard.
    pub fn shard_id(&self) -> ShardId {
        let mut experiment = self.clone();
        experiment.data.dir = None;
        experiment.data.loader_threads = DataConfig::default().loader_threads;
        // Which files outlive the shard is a storage budget, not part of the experiment: the
        // results are the same (and the default is not even serialized, so ids of configs
        // written before it existed are unchanged).
        experiment.snapshot.keep = Keep::All;
        let mut h = Sha256::new();
        h.update(experiment.canonical_json().as_bytes());
        h.update(format!("|schema={SCHEMA_VERSION}").as_bytes());
        ShardId::of_digest(&h.finalize()[..8])
    }
}

/// The coordinator's check of a submitted shard (`serve` hands it this function): the JSON is
/// a shard config that passes [`ShardConfig::validate`], in canonical form, and `id` is its
/// shard id. The same rules as `plan`, so that a raw gRPC client cannot submit what a worker
/// would refuse.
pub fn check_submitted(id: &str, json: &str) -> Result<(), String> {
    let cfg = ShardConfig::from_json(json)?;
    if cfg.canonical_json() != json {
        return Err(
            "the config is not in canonical form (submit it with `linesweep submit`)".into(),
        );
    }
    let actual = cfg.shard_id();
    if actual.as_str() != id {
        return Err(format!("the config hashes to shard {actual}, not {id}"));
    }
    Ok(())
}

/// A one-line parse error: toml's `Display` draws a multi-line excerpt, errors here are one line.
pub(crate) fn toml_error(src: &str, file: &str, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map(|span| {
        let before = &src[..span.start.min(src.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("line {line}, column {col}: ")
    });
    ConfigError::Parse {
        file: file.to_owned(),
        message: format!(
            "{}{}",
            at.unwrap_or_default(),
            e.message().trim().replace('\n', " ")
        ),
    }
}

/// Line (1-based) of `key` inside `[section]` (or the top level when `section` is empty).
pub(crate) fn locate_key(src: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    let mut section_line = None;
    for (i, raw) in src.lines().enumerate() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix('[') {
            current = rest.trim_end_matches(']').trim().to_owned();
            if current == section {
                section_line = Some(i + 1);
            }
            continue;
        }
        if current == section
            && let Some((k, _)) = line.split_once('=')
            && k.trim().trim_matches('"') == key
        {
            return Some(i + 1);
        }
    }
    section_line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default_shard() {
        let cfg = ShardConfig::from_toml("", "empty.toml").unwrap();
        assert_eq!(cfg, ShardConfig::default().normalized());
        assert_eq!(cfg.model.hidden, vec![1024, 1024]);
        assert_eq!(cfg.train.eps, 1e-8);
        assert_eq!(cfg.alpha_grid().unwrap().len(), 41);
    }

    #[test]
    fn bad_planes_are_refused_with_file_line_and_field() {
        let err = |toml: &str| {
            ShardConfig::from_toml(toml, "p.toml")
                .unwrap_err()
                .to_string()
        };
        let e = err("[eval]\nmonotone_path = true\n[eval.plane]\npoints = 1\n");
        assert!(e.starts_with("p.toml:4: "), "{e}");
        assert!(
            e.contains("eval.plane.points") && e.contains("at least 2"),
            "{e}"
        );
        let e = err("[eval.plane]\nx = [0.5, 0.5]\n");
        assert!(e.contains("eval.plane.x") && e.contains("no width"), "{e}");
        let e = err("[eval.plane]\ny = [1.0, -1.0]\n");
        assert!(e.contains("eval.plane.y"), "{e}");
        let e = err("[eval.plane]\nkinds = [\"init\", \"init\"]\n");
        assert!(e.contains("listed twice"), "{e}");
        let e = err("[eval.plane]\nkinds = [\"sideways\"]\n");
        assert!(e.contains("line 2") && e.contains("sideways"), "{e}");
        let e = err("[snapshot]\nevery = 0\n[eval.plane]\nkinds = [\"pca\"]\n");
        assert!(
            e.contains("eval.plane.kinds") && e.contains("snapshot"),
            "{e}"
        );
        let ok = ShardConfig::from_toml(
            "[eval.plane]\nkinds = [\"random\", \"init\", \"pca\"]\n",
            "p.toml",
        )
        .unwrap();
        let plane = ok.eval.plane.as_ref().unwrap();
        assert_eq!(plane.points, 21);
        let axis = plane.axis(plane.x);
        assert_eq!(
            (axis.len(), axis[0], axis[10], axis[20]),
            (21, -1.0, 0.0, 1.0)
        );
        // Without the options, the canonical JSON does not mention them.
        let plain = ShardConfig::default().canonical_json();
        assert!(
            !plain.contains("plane") && !plain.contains("monotone_path"),
            "{plain}"
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err =
            ShardConfig::from_toml("seed = 1\n[train]\nlr = 0.1\nlearning_rate = 3\n", "a.toml")
                .unwrap_err()
                .to_string();
        assert!(err.starts_with("a.toml: "), "{err}");
        assert!(
            err.contains("line 4, column 1: unknown field `learning_rate`"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn unknown_values_list_the_valid_ones() {
        let err = ShardConfig::from_toml("[model]\nactivation = \"gelu\"\n", "b.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("gelu") && err.contains("relu"),
            "{err}"
        );
        let err = ShardConfig::from_toml("[train]\noptimizer = \"lion\"\n", "b.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lion") && err.contains("adam"), "{err}");
        let err = ShardConfig::from_toml("[data]\ndataset = \"svhn\"\n", "b.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("svhn") && err.contains("mnist-10k"), "{err}");
    }

    #[test]
    fn malformed_toml_is_reported_with_position() {
        let err = ShardConfig::from_toml("[train\nlr = 1\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("c.toml: ") && err.contains("line 1"),
            "{err}"
        );
    }

    #[test]
    fn range_errors_name_file_line_and_field() {
        let src = "seed = 3\n\n[eval]\nalpha_start = 0.1\nalpha_points = 10\n";
        let err = ShardConfig::from_toml(src, "d.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("d.toml:4: field `eval.alpha_start`"),
            "{err}"
        );
        let err = ShardConfig::from_toml("[eval]\nalpha_points = 2\n", "d.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("d.toml:2: field `eval.alpha_points`"),
            "{err}"
        );
        let err = ShardConfig::from_toml("[train]\nbatch_size = 1\nlr = -1\n", "d.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("d.toml:3: field `train.lr`"), "{err}");
        let err = ShardConfig::from_toml("[data]\ndataset = \"mnist\"\n", "d.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("field `data.dir`"), "{err}");
    }

    #[test]
    fn shard_id_is_stable_and_config_sensitive() {
        let a = ShardConfig::default();
        let mut b = a.clone();
        assert_eq!(a.shard_id(), b.shard_id());
        assert_eq!(a.shard_id().as_str().len(), 16);
        b.seed = 1;
        assert_ne!(a.shard_id(), b.shard_id());
        // Where the data is mounted and how many threads decode it are not the experiment.
        let mut c = a.clone();
        c.data.dir = Some("/mnt/other/mnist".into());
        c.data.loader_threads = 16;
        assert_eq!(a.shard_id(), c.shard_id());
        c.data.max_train_examples = Some(100);
        assert_ne!(a.shard_id(), c.shard_id());
    }

    #[test]
    fn starts_after_training_and_huge_networks_are_refused_before_anything_runs() {
        let mut c = ShardConfig::default();
        // The built-in sample: 8,000 examples, 125 steps per epoch at batch 64.
        c.train.batch_size = 64;
        c.train.epochs = 2;
        c.eval.starts = vec!["init".into(), "step:249".into(), "epoch:1.5".into()];
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        for late in ["step:250", "epoch:2"] {
            c.eval.starts = vec!["init".into(), late.into()];
            let v = c.validate().unwrap_err();
            assert_eq!((v.section, v.key), ("eval", "starts"), "{late}");
            assert!(
                v.message.contains(late) && v.message.contains("250"),
                "{}",
                v.message
            );
        }
        // A folder dataset of unknown size: steps are checked by the engine, epochs here.
        c.data.dataset = DatasetName::Mnist;
        c.data.dir = Some("/data/mnist".into());
        c.eval.starts = vec!["step:100000".into()];
        assert!(c.validate().is_ok());
        c.eval.starts = vec!["epoch:3".into()];
        assert!(c.validate().is_err());

        let mut m = ShardConfig::default();
        assert_eq!(
            m.parameters_at_least(),
            Some(785 * 1024 + 1025 * 1024 + 1025 * 10)
        );
        m.model.hidden = vec![100_000_000, 100_000_000];
        let v = m.validate().unwrap_err();
        assert_eq!((v.section, v.key), ("model", "hidden"));
        assert!(v.message.contains("1.000e16 parameters"), "{}", v.message);
    }
}
