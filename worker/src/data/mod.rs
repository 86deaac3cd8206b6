//! Datasets: readers that validate their files, and the in-memory splits the engine trains on.
//!
//! **Architecture invariant:** data knows nothing about models or the science; it yields
//! normalised `f32` features and `u8` labels.

pub mod idx;
pub mod mnist;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::config::{DataConfig, DatasetName};

/// A dataset file is missing, truncated or inconsistent.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct DataError {
    /// The file (or directory) at fault.
    pub file: String,
    /// What is wrong with it.
    pub problem: String,
}

/// One split held in memory: `len` examples of `dim` features each.
#[derive(Debug, Clone)]
pub struct Split {
    /// Row-major `[len, dim]` features, already normalised.
    pub features: Vec<f32>,
    /// One class label per example.
    pub labels: Vec<u8>,
    /// Features per example.
    pub dim: usize,
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

    /// A fixed subset of `n` examples (all if `n` ≥ len), the same for every run and seed, so
    /// that all shards of a sweep are evaluated on the same examples. Order is preserved.
    pub fn subset(&self, n: Option<usize>) -> Split {
        let Some(n) = n.filter(|&n| n < self.len()) else {
            return self.clone();
        };
        // A constant seed: the subset must not depend on the run's seed.
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(0x5eed_5b5e7));
        let mut keep = idx[..n].to_vec();
        keep.sort_unstable();
        let mut features = Vec::with_capacity(n * self.dim);
        for &i in &keep {
            features.extend_from_slice(&self.features[i * self.dim..(i + 1) * self.dim]);
        }
        Split {
            features,
            labels: keep.iter().map(|&i| self.labels[i]).collect(),
            dim: self.dim,
        }
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

/// Loads the dataset a config names.
pub fn load(cfg: &DataConfig) -> Result<Dataset, DataError> {
    match cfg.dataset {
        DatasetName::Mnist10k => mnist::load_builtin(),
        DatasetName::Mnist => {
            let dir = cfg.dir.as_deref().ok_or_else(|| DataError {
                file: "data.dir".into(),
                problem: "dataset \"mnist\" needs a directory".into(),
            })?;
            mnist::load_dir(dir)
        }
    }
}
