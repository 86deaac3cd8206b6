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
use crate::engine::{self, EngineError, Progress, ShardOutcome, SnapshotSink};
use crate::results::{self, ResultsError, RunKey};
use crate::snapshot::HostSnapshot;
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
        let kind = if snap.step == 0 {
            "init"
        } else if is_final {
            "final"
        } else {
            "periodic"
        };
        let file = key.rsplit('/').next().unwrap_or(&key).to_owned();
        self.entries.push(ManifestEntry {
            step: snap.step,
            epoch,
            file,
            kind,
        });
        self.written.push(key);
        Ok(())
    }
}

/// Runs `cfg` on `device`, writing snapshots and results to `storage` under `sweep`.
/// Returned keys are relative to the storage root (staged keys include the staging prefix).
pub fn run(
    cfg: &ShardConfig,
    device: &ComputeDevice,
    storage: &Storage,
    sweep: &str,
    placement: Placement,
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
            results::interpolation_batch(&key, "init", &outcome)?,
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
