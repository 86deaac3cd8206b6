//! One shard end to end against storage: the unit `linesweep exec` runs, and the unit a
//! worker will run under a lease.
//!
//! Layout under the storage root:
//! - `snapshots/<shard>/config.json`: the config that produced the weights (written first);
//! - `snapshots/<shard>/step-<8 digits>.safetensors` and `snapshots/<shard>/manifest.json`;
//! - `results/<table>/sweep=<sweep>/<shard>.parquet` for `interpolation`, `trajectory` and,
//!   last, `runs`. The `runs` file is written create-only and acts as the commit marker: a
//!   shard whose `runs` file exists is complete, and it is never overwritten.

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

/// Key of a result table's file for a shard.
pub fn result_key(table: &str, sweep: &str, shard: &str) -> String {
    format!("results/{table}/sweep={sweep}/{shard}.parquet")
}

/// Key of a snapshot file.
pub fn snapshot_key(shard: &str, step: u64) -> String {
    format!("snapshots/{shard}/step-{step:08}.safetensors")
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
            .put(&key, bytes)
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
pub fn run(
    cfg: &ShardConfig,
    device: &ComputeDevice,
    storage: &Storage,
    sweep: &str,
    progress: &dyn Progress,
) -> Result<ExecReport, ExecError> {
    check_sweep_name(sweep)?;
    let shard = cfg.shard_id();
    let runs_key = result_key("runs", sweep, &shard);
    if storage.exists(&runs_key)? {
        return Err(ExecError::AlreadyDone {
            shard,
            root: storage.root().to_owned(),
            key: runs_key,
        });
    }
    tracing::info!(shard = %shard, sweep, root = storage.root(), "running shard");

    let config_key = format!("snapshots/{shard}/config.json");
    let config_json = serde_json::to_vec_pretty(cfg).unwrap_or_default();
    storage.put(&config_key, config_json)?;

    let mut sink = StorageSink {
        storage,
        shard: &shard,
        entries: Vec::new(),
        written: vec![config_key],
    };
    let outcome = engine::run_shard(cfg, device, &mut sink, progress)?;
    let manifest_key = format!("snapshots/{shard}/manifest.json");
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
        attempt: 0,
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
        let k = result_key(table, sweep, &shard);
        let bytes = results::to_parquet(table, &batch)?;
        if table == "runs" {
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
