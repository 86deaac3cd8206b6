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

use crate::config::{InitFrom, Keep, PairOf, ShardConfig};
use crate::engine::{
    self, Checkpoint, EngineError, Progress, Resume, SampleMeta, ShardOutcome, SnapshotSink,
};
use crate::results::{self, ResultsError, RunKey};
use crate::snapshot::HostSnapshot;
use crate::storage::attempt::{
    ATTEMPT_MANIFEST, AttemptManifest, ShardKind, StagedFile, sha256_hex,
};
use crate::storage::ids::{Attempt, ShardId, SweepName};
use crate::storage::layout;
use crate::storage::snapshots::{
    SNAPSHOT_FORMAT, SnapshotEntry, SnapshotManifest, SnapshotReadError, SnapshotRole,
};
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
}

/// What [`run`] wrote and computed.
#[derive(Debug, Clone)]
pub struct ExecReport {
    /// The shard id.
    pub shard: ShardId,
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
        attempt: Attempt,
    },
}

struct StorageSink<'a> {
    storage: &'a Storage,
    shard: &'a ShardId,
    /// This attempt's staging prefix (`None`: a direct `exec` writes the final keys).
    staging: Option<&'a str>,
    entries: Vec<SnapshotEntry>,
    written: Vec<String>,
    /// Staged runs only: every file staged so far, for the attempt manifest.
    files: Vec<StagedFile>,
    /// Staged runs only: (sweep, attempt, checkpoint every N steps).
    staged: Option<(&'a SweepName, Attempt, u64)>,
    last_checkpoint: Option<String>,
}

/// The small part of a checkpoint, written last: its presence marks the checkpoint complete.
#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointState {
    step: u64,
    last_loss: f64,
    param_ids: Vec<u64>,
    samples: Vec<SampleMeta>,
    /// Absent from checkpoints of versions before it was recorded.
    #[serde(default)]
    skipped_images: u64,
    /// SHA-256 of `model.safetensors`, `optimizer.bpk` and of each sample's snapshot: a
    /// checkpoint is used only if everything it refers to still has these contents. Empty in
    /// checkpoints of versions that recorded none, which are therefore not used.
    #[serde(default)]
    model_sha256: String,
    #[serde(default)]
    optimizer_sha256: String,
    #[serde(default)]
    snapshot_sha256: Vec<String>,
}

fn sink_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Sink(e.to_string())
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
        // Hashed here, where the bytes are: every later reader verifies them against the
        // snapshot manifest, and the coordinator checks only sizes.
        let file = StagedFile::of(&key, &bytes);
        self.storage
            .put(&layout::placed(self.staging, &key), bytes)
            .map_err(|e| EngineError::Sink(e.to_string()))?;
        self.entries.push(SnapshotEntry::of(
            &file,
            snap.step,
            epoch,
            SnapshotRole::of(snap.step, is_final),
        ));
        if self.staged.is_some() {
            self.files.push(file);
        }
        self.written.push(key);
        Ok(())
    }

    fn checkpoint_every(&self) -> u64 {
        self.staged.map_or(0, |(_, _, every)| every)
    }

    fn parent_snapshot(&mut self, from: &InitFrom) -> Result<HostSnapshot, EngineError> {
        let parent = ShardId::parse(from.shard.clone())
            .map_err(|e| EngineError::Config(format!("train.init_from.shard: {e}")))?;
        let listed = SnapshotManifest::read(self.storage, &parent).map_err(committed_err)?;
        // A run that diverged stops (and snapshots) early; `snapshot.keep = "lines"` drops
        // the snapshots no line needs.
        let entry = listed.at_step(from.step).ok_or_else(|| {
            committed_err(listed.not_kept(
                self.storage,
                format!(
                    "snapshot at step {} for train.init_from (a parent keeps step 0, every \
                     `snapshot.every`-th step, its line starts and its last step; \
                     `snapshot.keep = \"lines\"` drops the others)",
                    from.step
                ),
            ))
        })?;
        let bytes = listed
            .read_verified(self.storage, entry)
            .map_err(committed_err)?;
        let snap = HostSnapshot::from_safetensors(&bytes, &listed.key_of(entry))?;
        if snap.step != from.step {
            return Err(EngineError::Committed(format!(
                "{} holds step {}, not step {}",
                listed.key_of(entry),
                snap.step,
                from.step
            )));
        }
        tracing::info!(%parent, step = from.step, "θ_i is the parent's snapshot (SHA-256 verified)");
        Ok(snap)
    }

    fn direction(&mut self, name: &str, d: &HostSnapshot) -> Result<(), EngineError> {
        let key = layout::direction_key(self.shard, name);
        let bytes = d.to_safetensors()?;
        if self.staged.is_some() {
            self.files.push(StagedFile::of(&key, &bytes));
        }
        self.storage
            .put(&layout::placed(self.staging, &key), bytes)
            .map_err(sink_err)?;
        self.written.push(key);
        Ok(())
    }

    fn checkpoint(&mut self, c: &Checkpoint) -> Result<(), EngineError> {
        let (Some(staging), Some(_)) = (self.staging, self.staged) else {
            return Ok(());
        };
        let dir = layout::checkpoint_dir(staging, c.step);
        let file = |name: &str| layout::placed(Some(&dir), name);
        self.storage
            .put(&file(layout::CHECKPOINT_MODEL), c.model.clone())
            .map_err(sink_err)?;
        self.storage
            .put(&file(layout::CHECKPOINT_OPTIMIZER), c.optimizer.clone())
            .map_err(sink_err)?;
        let mut snapshot_sha256 = Vec::with_capacity(c.samples.len());
        for m in &c.samples {
            let key = snapshot_key(self.shard, m.step);
            let staged = self.files.iter().rev().find(|f| f.key == key);
            let Some(f) = staged else {
                return Err(EngineError::Sink(format!(
                    "checkpoint of step {}: the snapshot {key} was never stored",
                    c.step
                )));
            };
            snapshot_sha256.push(f.sha256.clone());
        }
        let state = CheckpointState {
            step: c.step,
            last_loss: c.last_loss,
            param_ids: c.param_ids.clone(),
            samples: c.samples.clone(),
            skipped_images: c.skipped_images,
            model_sha256: sha256_hex(&c.model),
            optimizer_sha256: sha256_hex(&c.optimizer),
            snapshot_sha256,
        };
        let json = serde_json::to_vec(&state).map_err(sink_err)?;
        self.storage
            .put(&file(layout::CHECKPOINT_STATE), json)
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
        // Complete checkpoints (state.json present) of earlier attempts, latest first.
        let mut candidates: Vec<(u64, Attempt, String)> = self
            .storage
            .list(&shard_staging)
            .map_err(sink_err)?
            .into_iter()
            .filter_map(|k| {
                let (step, _) = layout::checkpoint_of(&k)?;
                let a = layout::attempt_of(&shard_staging, &k)?;
                (a < attempt).then_some((step, a, k))
            })
            .collect();
        candidates.sort_unstable_by(|x, y| y.cmp(x));
        for (_, from, state_key) in candidates {
            match self.verified_checkpoint(sweep, from, &state_key)? {
                Ok(loaded) => return self.adopt(loaded, from).map(Some),
                Err(reason) => tracing::warn!(
                    checkpoint = %state_key,
                    %reason,
                    "discarding a checkpoint that fails verification; trying an older one or \
                     starting over"
                ),
            }
        }
        Ok(None)
    }
}

impl StorageSink<'_> {
    /// `snapshot.keep = "lines"`: removes the snapshots no line needs, now that the trajectory
    /// (which every snapshot contributed to) is computed; the manifests list what is left.
    fn keep_only(&mut self, steps: &[u64]) -> Result<(), StorageError> {
        let dropped: Vec<String> = self
            .entries
            .iter()
            .filter(|e| !steps.contains(&e.step))
            .map(|e| snapshot_key(self.shard, e.step))
            .collect();
        for key in &dropped {
            self.storage.delete(&layout::placed(self.staging, key))?;
        }
        self.entries.retain(|e| steps.contains(&e.step));
        self.files.retain(|f| !dropped.contains(&f.key));
        self.written.retain(|k| !dropped.contains(k));
        Ok(())
    }
}

/// A checkpoint read back and verified, not yet adopted by this attempt.
struct Loaded {
    state: CheckpointState,
    model: Vec<u8>,
    optimizer: Vec<u8>,
    /// Each sample's snapshot: its key, file bytes and decoded weights.
    snapshots: Vec<(String, bytes::Bytes, HostSnapshot)>,
}

impl StorageSink<'_> {
    /// Reads the checkpoint at `state_key` (of attempt `from`) and everything it refers to, and
    /// checks their hashes. `Ok(Err(reason))`: it cannot be used; `Err`: storage failed.
    fn verified_checkpoint(
        &self,
        sweep: &SweepName,
        from: Attempt,
        state_key: &str,
    ) -> Result<Result<Loaded, String>, EngineError> {
        let dir = layout::checkpoint_of(state_key).map_or(state_key, |(_, d)| d);
        let state: CheckpointState =
            match serde_json::from_slice(&self.storage.get(state_key).map_err(sink_err)?) {
                Ok(s) => s,
                Err(e) => return Ok(Err(format!("state.json does not parse: {e}"))),
            };
        if state.model_sha256.is_empty() || state.snapshot_sha256.len() != state.samples.len() {
            return Ok(Err(
                "it records no content hashes (an older version wrote it)".into(),
            ));
        }
        // A file that is gone (`snapshot.keep = "lines"` deleted it before a kill) makes the
        // checkpoint unusable, like one whose contents changed: never a storage failure, which
        // would be retried forever as the machine's fault.
        let read = |key: &str| -> Result<Option<bytes::Bytes>, EngineError> {
            if self.storage.size(key).map_err(sink_err)?.is_none() {
                return Ok(None);
            }
            self.storage.get(key).map(Some).map_err(sink_err)
        };
        let gone = |key: &str| Ok(Err(format!("{key} is gone")));
        let model_key = layout::placed(Some(dir), layout::CHECKPOINT_MODEL);
        let Some(model) = read(&model_key)? else {
            return gone(&model_key);
        };
        if sha256_hex(&model) != state.model_sha256 {
            return Ok(Err("model.safetensors does not match its hash".into()));
        }
        let optimizer_key = layout::placed(Some(dir), layout::CHECKPOINT_OPTIMIZER);
        let Some(optimizer) = read(&optimizer_key)? else {
            return gone(&optimizer_key);
        };
        if sha256_hex(&optimizer) != state.optimizer_sha256 {
            return Ok(Err("optimizer.bpk does not match its hash".into()));
        }
        let (model, optimizer) = (model.to_vec(), optimizer.to_vec());
        let old_prefix = layout::staging_prefix(sweep, self.shard, from);
        let mut snapshots = Vec::with_capacity(state.samples.len());
        for (m, hash) in state.samples.iter().zip(&state.snapshot_sha256) {
            let key = snapshot_key(self.shard, m.step);
            let Some(bytes) = read(&layout::placed(Some(&old_prefix), &key))? else {
                return gone(&key);
            };
            if sha256_hex(&bytes) != *hash {
                return Ok(Err(format!("the snapshot {key} does not match its hash")));
            }
            match HostSnapshot::from_safetensors(&bytes, &key) {
                Ok(snap) => snapshots.push((key, bytes, snap)),
                Err(e) => return Ok(Err(e.to_string())),
            }
        }
        Ok(Ok(Loaded {
            state,
            model,
            optimizer,
            snapshots,
        }))
    }

    /// Makes a verified checkpoint this attempt's: its snapshots are stored again here.
    fn adopt(&mut self, loaded: Loaded, from: Attempt) -> Result<Resume, EngineError> {
        let Loaded {
            state,
            model,
            optimizer,
            snapshots: files,
        } = loaded;
        let mut snapshots = Vec::with_capacity(files.len());
        for ((key, bytes, snap), m) in files.into_iter().zip(&state.samples) {
            let file = StagedFile::of(&key, &bytes);
            self.storage
                .put(&layout::placed(self.staging, &key), bytes.to_vec())
                .map_err(sink_err)?;
            self.entries.push(SnapshotEntry::of(
                &file,
                m.step,
                m.epoch,
                SnapshotRole::of(m.step, false),
            ));
            self.files.push(file);
            self.written.push(key);
            snapshots.push(snap);
        }
        tracing::info!(
            step = state.step,
            from_attempt = from.get(),
            "resuming from a verified checkpoint"
        );
        Ok(Resume {
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
        })
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
    sweep: &SweepName,
    placement: Placement,
    checkpoint_every: u64,
    progress: &dyn Progress,
) -> Result<ExecReport, ExecError> {
    let shard = cfg.shard_id();
    let kind = if cfg.pair.is_some() {
        ShardKind::Pair
    } else {
        ShardKind::Run
    };
    let (staging, attempt) = match placement {
        Placement::Direct => {
            let runs_key = result_key(kind.commit_table(), sweep, &shard);
            if storage.exists(&runs_key)? {
                return Err(ExecError::AlreadyDone {
                    shard: shard.to_string(),
                    root: storage.root().to_owned(),
                    key: runs_key,
                });
            }
            (None, 0)
        }
        Placement::Staged { attempt } => (
            Some(layout::staging_prefix(sweep, &shard, attempt)),
            attempt.get(),
        ),
    };
    let staging = staging.as_deref();
    tracing::info!(%shard, %sweep, root = storage.root(), attempt, "running shard");
    let at = Target {
        storage,
        sweep,
        shard: &shard,
        staging,
        placement,
    };
    if let Some(pair) = &cfg.pair {
        return run_pair(cfg, pair, device, &at, progress);
    }

    check_shared_snapshots(storage, &shard, cfg)?;
    let staged = matches!(placement, Placement::Staged { .. });
    let mut files = Vec::new();
    // Stores `bytes` at `key` (relative to the results root) under this attempt's prefix and,
    // when staged, lists it for the attempt manifest.
    let put = |files: &mut Vec<StagedFile>, key: &str, bytes: Vec<u8>| {
        if staged {
            files.push(StagedFile::of(key, &bytes));
        }
        storage.put(&layout::placed(staging, key), bytes)
    };
    let config_rel = layout::snapshot_config_key(&shard);
    let config_key = layout::placed(staging, &config_rel);
    put(
        &mut files,
        &config_rel,
        serde_json::to_vec_pretty(cfg).unwrap_or_default(),
    )?;

    let mut sink = StorageSink {
        storage,
        shard: &shard,
        staging,
        entries: Vec::new(),
        written: vec![config_key],
        files,
        staged: match placement {
            Placement::Direct => None,
            Placement::Staged { attempt } => Some((sweep, attempt, checkpoint_every)),
        },
        last_checkpoint: None,
    };
    let outcome = engine::run_shard(cfg, device, &mut sink, progress)?;
    if cfg.snapshot.keep == Keep::Lines {
        sink.keep_only(&outcome.line_steps)?;
    }
    let manifest_rel = layout::snapshot_manifest_key(&shard);
    let manifest = SnapshotManifest {
        shard: shard.clone(),
        format: SNAPSHOT_FORMAT.into(),
        snapshots: std::mem::take(&mut sink.entries),
    };
    let mut files = sink.files;
    put(
        &mut files,
        &manifest_rel,
        serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
    )?;
    let mut written = sink.written;
    written.push(layout::placed(staging, &manifest_rel));

    let key = RunKey {
        shard: shard.as_str(),
        attempt,
    };
    let finished = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    // In RESULT_TABLES's order: `runs`, the commit marker, last.
    let mut tables = vec![
        (
            "interpolation",
            results::interpolation_batch(&key, &outcome)?,
        ),
        ("trajectory", results::trajectory_batch(&key, &outcome)?),
        ("lines", results::lines_batch(&key, &outcome)?),
    ];
    if cfg.eval.plane.is_some() {
        tables.push(("plane", results::plane_batch(&key, &outcome)?));
    }
    if cfg.eval.monotone_path {
        tables.push((
            "monotone_path",
            results::monotone_path_batch(&key, &outcome)?,
        ));
    }
    tables.push(("runs", results::runs_batch(&key, cfg, &outcome, finished)?));
    for (table, batch) in tables {
        let rel = result_key(table, sweep, &shard);
        let bytes = results::to_parquet(table, &batch)?;
        if table == "runs" && placement == Placement::Direct {
            storage.put_create(&rel, bytes)?;
        } else {
            // Leftovers of a run that died before its commit marker are replaced.
            put(&mut files, &rel, bytes)?;
        }
        written.push(layout::placed(staging, &rel));
    }
    written.extend(at.attempt_manifest(ShardKind::Run, files)?);
    Ok(ExecReport {
        shard,
        outcome,
        written,
    })
}

/// Where one shard's output goes.
struct Target<'a> {
    storage: &'a Storage,
    sweep: &'a SweepName,
    shard: &'a ShardId,
    staging: Option<&'a str>,
    placement: Placement,
}

impl Target<'_> {
    /// The attempt number rows carry (0 for `linesweep exec`).
    fn placement_attempt(&self) -> u32 {
        match self.placement {
            Placement::Direct => 0,
            Placement::Staged { attempt } => attempt.get(),
        }
    }

    /// Under a lease, the attempt manifest listing `files`, written last: the coordinator
    /// publishes what it lists, after checking it. Returns its key.
    fn attempt_manifest(
        &self,
        kind: ShardKind,
        files: Vec<StagedFile>,
    ) -> Result<Option<String>, ExecError> {
        let Placement::Staged { attempt } = self.placement else {
            return Ok(None);
        };
        let manifest = AttemptManifest {
            sweep: self.sweep.clone(),
            shard: self.shard.clone(),
            attempt,
            schema_version: results::SCHEMA_VERSION,
            kind,
            files,
        };
        let key = layout::placed(self.staging, ATTEMPT_MANIFEST);
        self.storage.put(
            &key,
            serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
        )?;
        Ok(Some(key))
    }
}

/// A pair shard: the line between the final weights of its two committed shards, read from
/// the results root, written as its `pairs` table (its commit marker; nothing else).
fn run_pair(
    cfg: &ShardConfig,
    pair: &PairOf,
    device: &ComputeDevice,
    at: &Target<'_>,
    progress: &dyn Progress,
) -> Result<ExecReport, ExecError> {
    let ends = [
        final_snapshot(at.storage, &pair.a)?,
        final_snapshot(at.storage, &pair.b)?,
    ];
    let outcome = engine::pair::run_pair(cfg, device, [&ends[0], &ends[1]], progress)?;
    let key = RunKey {
        shard: at.shard.as_str(),
        attempt: at.placement_attempt(),
    };
    let rel = result_key("pairs", at.sweep, at.shard);
    let bytes = results::to_parquet("pairs", &results::pairs_batch(&key, cfg, &outcome)?)?;
    let mut files = Vec::new();
    match at.placement {
        Placement::Direct => at.storage.put_create(&rel, bytes)?,
        Placement::Staged { .. } => {
            files.push(StagedFile::of(&rel, &bytes));
            at.storage.put(&layout::placed(at.staging, &rel), bytes)?;
        }
    }
    let mut written = vec![layout::placed(at.staging, &rel)];
    written.extend(at.attempt_manifest(ShardKind::Pair, files)?);
    Ok(ExecReport {
        shard: at.shard.clone(),
        outcome,
        written,
    })
}

/// Refuses, before anything is submitted, a shard whose `train.init_from` names by id a
/// parent outside its sweep (`shards`) that has no snapshot at that step in `storage`: such a
/// parent must already be committed there, by an earlier sweep. Parents inside the sweep are
/// the coordinator's to wait for.
pub fn check_outside_parents(
    plan: &crate::sweep::SweepPlan,
    storage: &Storage,
) -> Result<(), ExecError> {
    if !plan.has_children() {
        return Ok(());
    }
    let inside: std::collections::HashSet<&ShardId> = plan.ids().collect();
    for s in plan.shards() {
        let Some(from) = &s.config.train.init_from else {
            continue;
        };
        let Ok(parent) = ShardId::parse(from.shard.clone()) else {
            continue;
        };
        let key = snapshot_key(&parent, from.step);
        if !inside.contains(&parent) && !storage.exists(&key)? {
            return Err(ExecError::Engine(EngineError::Config(format!(
                "shard {}: train.init_from names shard {parent}, which is not in the sweep, and \
                 {} has no snapshot of it at step {} ({key}); commit the parent there first",
                s.id,
                storage.root(),
                from.step
            ))));
        }
    }
    Ok(())
}

/// Refuses, before training, a shard whose snapshots another sweep of this results root
/// already published with other settings. Snapshots are keyed by shard id, which leaves out
/// what does not change the training (`snapshot.keep`, say): two sweeps that share a shard
/// share its snapshots, and this attempt could never publish its own over them.
fn check_shared_snapshots(
    storage: &Storage,
    shard: &ShardId,
    cfg: &ShardConfig,
) -> Result<(), ExecError> {
    let key = layout::snapshot_config_key(shard);
    if !storage.exists(&key)? {
        return Ok(());
    }
    let published: serde_json::Value = match serde_json::from_slice(&storage.get(&key)?) {
        Ok(v) => v,
        // Not ours to judge here: the publish check compares bytes and says what to do.
        Err(_) => return Ok(()),
    };
    let mine = serde_json::to_value(cfg).unwrap_or_default();
    let mut changed = Vec::new();
    differences(Some(&published), Some(&mine), "", &mut changed);
    if changed.is_empty() {
        return Ok(());
    }
    Err(ExecError::Engine(EngineError::Config(format!(
        "shard {shard}: another sweep in {} already published this shard's snapshots ({key}) \
         with other settings ({}); the sweeps of one results root share a shard's snapshots, so \
         give this sweep the same settings there, or another results root",
        storage.root(),
        changed.join("; ")
    ))))
}

/// `key: a published, b here` for each leaf where `a` and `b` differ, objects compared key by
/// key; an absent key (a setting left at its default, which is not written) reads "default".
fn differences(
    a: Option<&serde_json::Value>,
    b: Option<&serde_json::Value>,
    at: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    if let (Some(Value::Object(x)), Some(Value::Object(y))) = (a, b) {
        let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
        for k in keys {
            let path = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            differences(x.get(k), y.get(k), &path, out);
        }
    } else if a != b {
        let show = |v: Option<&Value>| v.map_or("default".to_owned(), Value::to_string);
        out.push(format!("{at}: {} published, {} here", show(a), show(b)));
    }
}

/// A committed snapshot that cannot be used. Storage trouble stays the machine's
/// (infrastructure); anything else (missing, damaged, unverifiable) fails the shard at once.
fn committed_err(e: SnapshotReadError) -> EngineError {
    match e {
        SnapshotReadError::Storage(s) => EngineError::Sink(s.to_string()),
        other => EngineError::Committed(other.to_string()),
    }
}

/// The final weights (θ_c) of a committed shard: the snapshot its manifest marks final,
/// verified against the hash recorded when it was published.
fn final_snapshot(storage: &Storage, shard: &ShardId) -> Result<HostSnapshot, ExecError> {
    let listed = SnapshotManifest::read(storage, shard).map_err(committed_err)?;
    let entry = listed.final_entry().ok_or_else(|| {
        committed_err(listed.not_kept(storage, "final snapshot (did the run diverge?)".into()))
    })?;
    let bytes = listed
        .read_verified(storage, entry)
        .map_err(committed_err)?;
    let snap =
        HostSnapshot::from_safetensors(&bytes, &listed.key_of(entry)).map_err(EngineError::from)?;
    Ok(snap)
}
