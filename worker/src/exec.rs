//! One shard end to end against storage: the unit `linesweep exec` runs, and the unit a
//! worker runs (in a child process) under a lease.
//!
//! Layout under the storage root (see [`crate::storage::layout`]):
//! - `snapshots/<shard>/config.json`: the config that produced the weights (written first);
//! - `snapshots/<shard>/step-<8 digits>.safetensors` and `snapshots/<shard>/manifest.json`;
//! - `results/<table>/sweep=<sweep>/<shard>.parquet` for `interpolation`, `trajectory` and,
//!   last, `runs`. The `runs` file is written create-only and acts as the commit marker: a
//!   shard whose `runs` file exists is complete, and it is never overwritten.
//!
//! Under a lease ([`Placement::Staged`]) the same layout is written below the attempt's
//! staging prefix instead, and the coordinator publishes it on commit.

use crate::device::ComputeDevice;
use serde::Serialize;

use crate::config::ShardConfig;
use crate::engine::{
    self, Checkpoint, EngineError, Progress, Resume, SampleMeta, ShardOutcome, SnapshotSink,
};
use crate::results::{self, ResultsError, RunKey};
use crate::snapshot::HostSnapshot;
use crate::storage::layout;
use crate::storage::{Storage, StorageError};

/// Running a shard against storage failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Reading or writing storage.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Encoding results failed.
    #[error(transparent)]
    Results(#[from] ResultsError),
    /// The shard already has committed results at this location.
    #[error(
        "shard {shard} already has results in {root} ({key}); they are left untouched — use another --out to run it again"
    )]
    AlreadyDone {
        shard: String,
        root: String,
        key: String,
    },
    /// The sweep name is not usable as a partition value.
    #[error("invalid sweep name `{0}`: use a letter followed by letters, digits, `_`, `-` or `.`")]
    SweepName(String),
}

/// What [`run`] wrote and computed.
#[derive(Debug, Clone)]
pub struct ExecReport {
    /// The shard id.
    pub shard: String,
    /// The engine's outcome.
    pub outcome: ShardOutcome,
    /// Keys written, relative to the storage root.
    pub written: Vec<String>,
}

pub use crate::storage::layout::{result_key, snapshot_key};

/// Where a shard's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Straight to the final keys (`linesweep exec`); the `runs` file is created only once.
    Direct,
    /// Under the staging prefix of this attempt of a lease; the coordinator publishes it.
    Staged {
        /// The lease's attempt number (the fencing token).
        attempt: u32,
    },
}

/// Checks that a sweep name is a safe, non-numeric hive partition value (so that DuckDB and
/// Polars never infer it as a number or a date).
pub fn check_sweep_name(name: &str) -> Result<(), ExecError> {
    if crate::sweep::valid_sweep_name(name) {
        Ok(())
    } else {
        Err(ExecError::SweepName(name.to_owned()))
    }
}

#[derive(Serialize)]
struct ManifestEntry {
    step: u64,
    epoch: f64,
    file: String,
    kind: &'static str,
}

#[derive(Serialize)]
struct Manifest<'a> {
    shard: &'a str,
    format: &'static str,
    snapshots: &'a [ManifestEntry],
}

struct StorageSink<'a> {
    storage: &'a Storage,
    shard: &'a str,
    prefix: &'a str,
    entries: Vec<ManifestEntry>,
    written: Vec<String>,
    /// Staged runs only: (sweep, attempt, checkpoint every N steps).
    staged: Option<(&'a str, u32, u64)>,
    last_checkpoint: Option<String>,
}

/// The small part of a checkpoint, written last: its presence marks the checkpoint complete.
#[derive(Serialize, serde::Deserialize)]
struct CheckpointState {
    step: u64,
    last_loss: f64,
    param_ids: Vec<u64>,
    samples: Vec<SampleMeta>,
    /// Absent from checkpoints of versions before it was recorded.
    #[serde(default)]
    skipped_images: u64,
}

fn sink_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Sink(e.to_string())
}

impl StorageSink<'_> {
    fn entry(&mut self, key: &str, step: u64, epoch: f64, is_final: bool) {
        let kind = if step == 0 {
            "init"
        } else if is_final {
            "final"
        } else {
            "periodic"
        };
        let file = key.rsplit('/').next().unwrap_or(key).to_owned();
        self.entries.push(ManifestEntry {
            step,
            epoch,
            file,
            kind,
        });
    }
}

impl SnapshotSink for StorageSink<'_> {
    fn snapshot(
        &mut self,
        snap: &HostSnapshot,
        epoch: f64,
        is_final: bool,
    ) -> Result<(), EngineError> {
        let key = snapshot_key(self.shard, snap.step);
        let bytes = snap.to_safetensors()?;
        self.storage
            .put(&format!("{}{key}", self.prefix), bytes)
            .map_err(|e| EngineError::Sink(e.to_string()))?;
        self.entry(&key, snap.step, epoch, is_final);
        self.written.push(key);
        Ok(())
    }

    fn checkpoint_every(&self) -> u64 {
        self.staged.map_or(0, |(_, _, every)| every)
    }

    fn checkpoint(&mut self, c: &Checkpoint) -> Result<(), EngineError> {
        if self.staged.is_none() {
            return Ok(());
        }
        let dir = format!("{}checkpoints/step-{:08}", self.prefix, c.step);
        self.storage
            .put(&format!("{dir}/model.safetensors"), c.model.clone())
            .map_err(sink_err)?;
        self.storage
            .put(&format!("{dir}/optimizer.bpk"), c.optimizer.clone())
            .map_err(sink_err)?;
        let state = CheckpointState {
            step: c.step,
            last_loss: c.last_loss,
            param_ids: c.param_ids.clone(),
            samples: c.samples.clone(),
            skipped_images: c.skipped_images,
        };
        let json = serde_json::to_vec(&state).map_err(sink_err)?;
        self.storage
            .put(&format!("{dir}/state.json"), json)
            .map_err(sink_err)?;
        // Only the latest checkpoint is ever resumed from. An interruption right after a
        // periodic checkpoint rewrites the same step: that directory must not be deleted.
        if let Some(old) = self.last_checkpoint.replace(dir.clone())
            && old != dir
        {
            self.storage.delete_prefix(&old).map_err(sink_err)?;
        }
        tracing::debug!(step = c.step, "checkpoint stored");
        Ok(())
    }

    fn resume(&mut self) -> Result<Option<Resume>, EngineError> {
        let Some((sweep, attempt, _)) = self.staged else {
            return Ok(None);
        };
        let shard_staging = layout::shard_staging(sweep, self.shard);
        // The latest complete checkpoint (state.json present) of an earlier attempt.
        let best = self
            .storage
            .list(&shard_staging)
            .map_err(sink_err)?
            .into_iter()
            .filter(|k| k.ends_with("/state.json") && k.contains("/checkpoints/step-"))
            .filter_map(|k| {
                let a = layout::attempt_of(&shard_staging, &k)?;
                let step: u64 = k.rsplit('/').nth(1)?.strip_prefix("step-")?.parse().ok()?;
                (a < attempt).then_some((step, a, k))
            })
            .max();
        let Some((_, from, state_key)) = best else {
            return Ok(None);
        };
        let dir = state_key.trim_end_matches("/state.json");
        let state: CheckpointState =
            serde_json::from_slice(&self.storage.get(&state_key).map_err(sink_err)?)
                .map_err(|e| EngineError::Resume(format!("{state_key}: {e}")))?;
        let model = self
            .storage
            .get(&format!("{dir}/model.safetensors"))
            .map_err(sink_err)?
            .to_vec();
        let optimizer = self
            .storage
            .get(&format!("{dir}/optimizer.bpk"))
            .map_err(sink_err)?
            .to_vec();
        // The snapshots taken before the checkpoint become this attempt's too.
        let old_prefix = layout::staging_prefix(sweep, self.shard, from);
        let mut snapshots = Vec::with_capacity(state.samples.len());
        for m in &state.samples {
            let key = snapshot_key(self.shard, m.step);
            let bytes = self
                .storage
                .get(&format!("{old_prefix}/{key}"))
                .map_err(sink_err)?;
            let snap = HostSnapshot::from_safetensors(&bytes, &key)?;
            self.storage
                .put(&format!("{}{key}", self.prefix), bytes.to_vec())
                .map_err(sink_err)?;
            self.entry(&key, m.step, m.epoch, false);
            self.written.push(key);
            snapshots.push(snap);
        }
        tracing::info!(
            step = state.step,
            from_attempt = from,
            "resuming from a checkpoint"
        );
        Ok(Some(Resume {
            checkpoint: Checkpoint {
                step: state.step,
                last_loss: state.last_loss,
                model,
                optimizer,
                param_ids: state.param_ids,
                samples: state.samples,
                skipped_images: state.skipped_images,
            },
            snapshots,
        }))
    }
}

/// Runs `cfg` on `device`, writing snapshots and results to `storage` under `sweep`.
/// Returned keys are relative to the storage root (staged keys include the staging prefix).
/// A staged run checkpoints every `checkpoint_every` steps (0: never) and resumes from the
/// latest checkpoint of an earlier attempt of the shard.
pub fn run(
    cfg: &ShardConfig,
    device: &ComputeDevice,
    storage: &Storage,
    sweep: &str,
    placement: Placement,
    checkpoint_every: u64,
    progress: &dyn Progress,
) -> Result<ExecReport, ExecError> {
    check_sweep_name(sweep)?;
    let shard = cfg.shard_id();
    let (prefix, attempt) = match placement {
        Placement::Direct => {
            let runs_key = result_key("runs", sweep, &shard);
            if storage.exists(&runs_key)? {
                return Err(ExecError::AlreadyDone {
                    shard,
                    root: storage.root().to_owned(),
                    key: runs_key,
                });
            }
            (String::new(), 0)
        }
        Placement::Staged { attempt } => (
            format!(
                "{}/",
                crate::storage::layout::staging_prefix(sweep, &shard, attempt)
            ),
            attempt,
        ),
    };
    tracing::info!(shard = %shard, sweep, root = storage.root(), attempt, "running shard");

    let config_key = format!("{prefix}snapshots/{shard}/config.json");
    let config_json = serde_json::to_vec_pretty(cfg).unwrap_or_default();
    storage.put(&config_key, config_json)?;

    let mut sink = StorageSink {
        storage,
        shard: &shard,
        prefix: &prefix,
        entries: Vec::new(),
        written: vec![config_key],
        staged: match placement {
            Placement::Direct => None,
            Placement::Staged { attempt } => Some((sweep, attempt, checkpoint_every)),
        },
        last_checkpoint: None,
    };
    let outcome = engine::run_shard(cfg, device, &mut sink, progress)?;
    let manifest_key = format!("{prefix}snapshots/{shard}/manifest.json");
    let manifest = Manifest {
        shard: &shard,
        format: "safetensors",
        snapshots: &sink.entries,
    };
    storage.put(
        &manifest_key,
        serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
    )?;
    let mut written = sink.written;
    written.push(manifest_key);

    let key = RunKey {
        shard: &shard,
        attempt,
    };
    let finished = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let tables = [
        (
            "interpolation",
            results::interpolation_batch(&key, &outcome)?,
        ),
        ("trajectory", results::trajectory_batch(&key, &outcome)?),
        ("runs", results::runs_batch(&key, cfg, &outcome, finished)?),
    ];
    for (table, batch) in tables {
        let k = format!("{prefix}{}", result_key(table, sweep, &shard));
        let bytes = results::to_parquet(table, &batch)?;
        if table == "runs" && placement == Placement::Direct {
            storage.put_create(&k, bytes)?;
        } else {
            // Leftovers of a run that died before its commit marker are replaced.
            storage.put(&k, bytes)?;
        }
        written.push(k);
    }
    Ok(ExecReport {
        shard,
        outcome,
        written,
    })
}
