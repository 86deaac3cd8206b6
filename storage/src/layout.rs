//! The key layout under a storage root: the contract between workers, which write, the
//! coordinator, which publishes, and users, who query.
//!
//! ```text
//! results/<table>/sweep=<sweep>/<shard>.parquet        published results (DuckDB reads these)
//! snapshots/<shard>/step-<8 digits>.safetensors         published snapshots, manifest.json, config.json
//! summaries/<table>/sweep=<sweep>/all.parquet          every committed shard's rows of a table in one
//!                                                       file, rewritten as the sweep goes (faster
//!                                                       to query, may lag the results/ files)
//! staging/<sweep>/<shard>/attempt-<n>/…                 what attempt n wrote, same layout as above,
//!                                                       plus checkpoints/ and attempt.json (the
//!                                                       attempt manifest); never read by queries
//! ```
//!
//! Results become visible only when the coordinator copies an attempt's staging to the final
//! keys (create-only) and commits that attempt; `runs` is published last.

use crate::ids::{Attempt, ShardId, SweepName};

/// Key of a result table's file for a shard.
pub fn result_key(table: &str, sweep: &SweepName, shard: &ShardId) -> String {
    format!("results/{table}/sweep={sweep}/{shard}.parquet")
}

/// The prefix of every published file of a result table.
pub fn result_table_prefix(table: &str) -> String {
    format!("results/{table}/")
}

/// `(sweep, shard)` of a key built by [`result_key`] for `table`.
pub fn parse_result_key(table: &str, key: &str) -> Option<(SweepName, ShardId)> {
    let rest = key.strip_prefix(&result_table_prefix(table))?;
    let (sweep, file) = rest.strip_prefix("sweep=")?.split_once('/')?;
    let shard = file.strip_suffix(".parquet")?;
    Some((SweepName::parse(sweep).ok()?, ShardId::parse(shard).ok()?))
}

/// Directory of a shard's snapshots.
pub fn snapshot_dir(shard: &ShardId) -> String {
    format!("snapshots/{shard}")
}

/// Key of a snapshot file.
pub fn snapshot_key(shard: &ShardId, step: u64) -> String {
    format!("snapshots/{shard}/step-{step:08}.safetensors")
}

/// Key of a saved direction of a plane (`name` is `plane-<kind>-<axis>`), beside the
/// snapshots.
pub fn direction_key(shard: &ShardId, name: &str) -> String {
    format!("snapshots/{shard}/{name}.safetensors")
}

/// Where every shard of a sweep stages its output.
pub fn sweep_staging(sweep: &SweepName) -> String {
    format!("staging/{sweep}")
}

/// Where every attempt of a shard stages its output.
pub fn shard_staging(sweep: &SweepName, shard: &ShardId) -> String {
    format!("{}/{shard}", sweep_staging(sweep))
}

/// Where attempt `attempt` of a shard stages its output.
pub fn staging_prefix(sweep: &SweepName, shard: &ShardId, attempt: Attempt) -> String {
    format!("staging/{sweep}/{shard}/attempt-{attempt}")
}

/// Parses the attempt number out of a key under [`shard_staging`].
pub fn attempt_of(shard_staging: &str, key: &str) -> Option<Attempt> {
    key.strip_prefix(shard_staging)?
        .strip_prefix("/attempt-")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// Mid-shard checkpoints of an attempt (model, optimizer, position), never published.
pub fn checkpoint_prefix(staging: &str) -> String {
    format!("{staging}/checkpoints")
}

/// The checkpoint of an attempt after `step` optimizer steps.
pub fn checkpoint_dir(staging: &str, step: u64) -> String {
    format!("{}/step-{step:08}", checkpoint_prefix(staging))
}

/// The files of a checkpoint: the model, the optimizer state, and `state.json` (the position
/// and the content hashes), written last.
pub const CHECKPOINT_MODEL: &str = "model.safetensors";
/// See [`CHECKPOINT_MODEL`].
pub const CHECKPOINT_OPTIMIZER: &str = "optimizer.bpk";
/// See [`CHECKPOINT_MODEL`].
pub const CHECKPOINT_STATE: &str = "state.json";

/// `(step, checkpoint dir)` of a key that is a checkpoint's `state.json`.
pub fn checkpoint_of(key: &str) -> Option<(u64, &str)> {
    let dir = key.strip_suffix(CHECKPOINT_STATE)?.strip_suffix('/')?;
    let (parent, last) = dir.rsplit_once('/')?;
    if !parent.ends_with("/checkpoints") {
        return None;
    }
    Some((last.strip_prefix("step-")?.parse().ok()?, dir))
}

/// Where a final key `rel` is written: as it is (a direct `exec`), or under an attempt's
/// `staging` prefix.
pub fn placed(staging: Option<&str>, rel: &str) -> String {
    match staging {
        Some(s) => format!("{s}/{rel}"),
        None => rel.to_owned(),
    }
}

/// The config a shard's snapshots were trained with.
pub fn snapshot_config_key(shard: &ShardId) -> String {
    format!("{}/config.json", snapshot_dir(shard))
}

/// The list of a shard's snapshots with their steps.
pub fn snapshot_manifest_key(shard: &ShardId) -> String {
    format!("{}/manifest.json", snapshot_dir(shard))
}

/// The owner marker of a sweep in a results location: which ledger publishes it (written
/// create-only at its first submission; see the coordinator's `publish::claim_owner`).
pub fn owner_key(sweep: &SweepName) -> String {
    format!("owners/sweep={sweep}.json")
}

/// The per-sweep summary of a result table: every committed shard's rows in one file, rewritten
/// by the coordinator (see its `summary` module). A prefix of its own, so that no glob over
/// `results/` sees a row twice.
pub fn summary_key(table: &str, sweep: &SweepName) -> String {
    format!("summaries/{table}/sweep={sweep}/all.parquet")
}

/// The folder of every result table's file of `sweep` (`results/<table>/sweep=<sweep>/`).
pub fn result_sweep_prefix(table: &str, sweep: &SweepName) -> String {
    format!("{}sweep={sweep}/", result_table_prefix(table))
}

/// The `runs` file is a training shard's commit marker: it is published last (a pair
/// shard's is `pairs`: `attempt::ShardKind::commit_table`).
pub const COMMIT_TABLE: &str = "runs";

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (SweepName, ShardId) {
        (
            SweepName::parse("sw").unwrap(),
            ShardId::parse("abc").unwrap(),
        )
    }

    #[test]
    fn result_keys_parse_back() {
        let (sweep, shard) = (
            SweepName::parse("sw-1").unwrap(),
            ShardId::parse("00ff").unwrap(),
        );
        let k = result_key("runs", &sweep, &shard);
        assert_eq!(parse_result_key("runs", &k), Some((sweep, shard)));
        assert_eq!(parse_result_key("interpolation", &k), None);
        for bad in [
            "results/runs/sweep=../x/00ff.parquet",
            "results/runs/sw/00ff.parquet",
            "results/runs/sweep=sw/a/b.parquet",
            "results/runs/sweep=sw/00ff.json",
        ] {
            assert_eq!(parse_result_key("runs", bad), None, "{bad}");
        }
    }

    #[test]
    fn checkpoint_keys_parse_back() {
        let (sweep, shard) = ids();
        let staging = staging_prefix(&sweep, &shard, Attempt::new(3).unwrap());
        let dir = checkpoint_dir(&staging, 1200);
        let key = placed(Some(&dir), CHECKPOINT_STATE);
        assert_eq!(checkpoint_of(&key), Some((1200, dir.as_str())));
        assert_eq!(checkpoint_of(&placed(Some(&dir), CHECKPOINT_MODEL)), None);
        assert_eq!(
            checkpoint_of("staging/sw/abc/attempt-3/x/step-1/state.json"),
            None
        );
        assert_eq!(placed(None, "results/x"), "results/x");
    }

    #[test]
    fn attempts_parse_back() {
        let (sweep, shard) = ids();
        let s = shard_staging(&sweep, &shard);
        let twelve = Attempt::new(12).unwrap();
        let k = format!(
            "{}/results/runs/x.parquet",
            staging_prefix(&sweep, &shard, twelve)
        );
        assert_eq!(attempt_of(&s, &k), Some(twelve));
        assert_eq!(attempt_of(&s, &format!("{s}/attempt-0/x")), None);
        assert_eq!(attempt_of(&s, "staging/sw/other/attempt-1/x"), None);
        assert_eq!(attempt_of(&s, &format!("{s}/junk/x")), None);
    }
}
