//! Datasets: readers that validate their files, and the in-memory splits the engine trains on.
//!
//! **Architecture invariant:** data knows nothing about models or the science; it yields
//! normalised `f32` features and class labels.

pub mod augment;
pub mod cifar;
pub mod decode;
pub mod fetch;
pub mod idx;
pub mod imagenet;
pub mod mnist;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::config::{DataConfig, DatasetName};

/// The seed of every fixed subset: subsets must not depend on the run's seed.
pub(crate) const SUBSET_SEED: u64 = 0x5eed_5b5e7;

/// A dataset file is missing, truncated or inconsistent.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct DataError {
    /// The file (or directory) at fault.
    pub file: String,
    /// What is wrong with it.
    pub problem: String,
}

/// One split held in memory: `len` examples of shape `[channels, height, width]` each.
#[derive(Debug, Clone)]
pub struct Split {
    /// Row-major `[len, channels, height, width]` features, already normalised.
    pub features: Vec<f32>,
    /// One class label per example.
    pub labels: Vec<u16>,
    /// `[channels, height, width]` of one example.
    pub shape: [usize; 3],
}

/// `n` indices of `0..len` (all if `n` ≥ len), fixed for every run and seed, in increasing
/// order, so that all shards of a sweep see the same examples.
pub fn fixed_subset(len: usize, n: Option<usize>) -> Vec<usize> {
    let Some(n) = n.filter(|&n| n < len) else {
        return (0..len).collect();
    };
    let mut idx: Vec<usize> = (0..len).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(SUBSET_SEED));
    let mut keep = idx[..n].to_vec();
    keep.sort_unstable();
    keep
}

impl Split {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the split holds no example.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Features per example.
    pub fn dim(&self) -> usize {
        self.shape.iter().product()
    }

    /// The examples at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Split {
        let dim = self.dim();
        let mut features = Vec::with_capacity(idx.len() * dim);
        for &i in idx {
            features.extend_from_slice(&self.features[i * dim..(i + 1) * dim]);
        }
        Split {
            features,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            shape: self.shape,
        }
    }

    /// A fixed subset of `n` examples (see [`fixed_subset`]). Order is preserved.
    pub fn subset(&self, n: Option<usize>) -> Split {
        if n.is_none_or(|n| n >= self.len()) {
            return self.clone();
        }
        self.select(&fixed_subset(self.len(), n))
    }
}

/// A loaded dataset: both splits plus what the model needs to know about them.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Name as in the config.
    pub name: &'static str,
    /// Training split.
    pub train: Split,
    /// Test split.
    pub test: Split,
    /// Number of classes K.
    pub classes: usize,
}

/// What a shard trains and evaluates on.
pub struct Loaded {
    /// Name as in the config.
    pub name: &'static str,
    /// Number of classes K.
    pub classes: usize,
    /// Training examples (already cut to `data.max_train_examples`).
    pub train: TrainData,
    /// A fixed subset of the training examples with the evaluation transform.
    pub eval_train: Split,
    /// A fixed subset of the test (validation) split.
    pub test: Split,
    /// Evaluation images skipped because they did not decode.
    pub skipped_images: u64,
}

/// Where training batches come from.
pub enum TrainData {
    /// Held in memory; `augment` adds a random crop (padding 4) and a horizontal flip.
    Memory {
        /// The examples.
        split: Split,
        /// Crop-and-flip augmentation.
        augment: bool,
    },
    /// Image files decoded per batch.
    Folder(imagenet::Folder),
}

/// One training batch on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[n, channels, height, width]` features.
    pub features: Vec<f32>,
    /// `n` labels.
    pub labels: Vec<u16>,
    /// Examples dropped because their file could not be decoded.
    pub skipped: u64,
}

impl TrainData {
    /// Number of training examples.
    pub fn len(&self) -> usize {
        match self {
            Self::Memory { split, .. } => split.len(),
            Self::Folder(f) => f.len(),
        }
    }

    /// True without examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[channels, height, width]` of one example.
    pub fn shape(&self) -> [usize; 3] {
        match self {
            Self::Memory { split, .. } => split.shape,
            Self::Folder(f) => f.shape(),
        }
    }

    /// The examples at `idx`, augmented with randomness drawn from `seed` (the same seed gives
    /// the same batch), decoded on up to `threads` threads.
    pub fn batch(&self, idx: &[usize], seed: u64, threads: usize) -> Batch {
        match self {
            Self::Memory { split, augment } => {
                let mut b = split.select(idx);
                if *augment {
                    augment::crop_flip(&mut b, 4, seed);
                }
                Batch {
                    features: b.features,
                    labels: b.labels,
                    skipped: 0,
                }
            }
            Self::Folder(f) => f.train_batch(idx, seed, threads),
        }
    }
}

/// Loads the dataset a config names; `eval_max` caps each evaluation split.
pub fn load(cfg: &DataConfig, eval_max: Option<usize>) -> Result<Loaded, DataError> {
    let memory = |d: Dataset, augment: bool| {
        let train = d.train.subset(cfg.max_train_examples);
        Loaded {
            name: d.name,
            classes: d.classes,
            eval_train: train.subset(eval_max),
            test: d.test.subset(eval_max),
            train: TrainData::Memory {
                split: train,
                augment,
            },
            skipped_images: 0,
        }
    };
    let dir = || {
        cfg.dir.as_deref().ok_or_else(|| DataError {
            file: "data.dir".into(),
            problem: format!("dataset \"{}\" needs a directory", cfg.dataset.as_str()),
        })
    };
    Ok(match cfg.dataset {
        DatasetName::Mnist10k => memory(mnist::load_builtin()?, false),
        DatasetName::Mnist => memory(mnist::load_dir(dir()?)?, false),
        DatasetName::Cifar10 => memory(cifar::load_dir(dir()?)?, cfg.augment),
        DatasetName::Imagenet => imagenet::load(dir()?, cfg, eval_max)?,
    })
}
