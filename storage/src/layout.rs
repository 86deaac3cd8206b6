//! The key layout under a storage root: the contract between workers, which write, the
//! coordinator, which publishes, and users, who query.
//!
//! ```text
//! results/<table>/sweep=<sweep>/<shard>.parquet        published results (DuckDB reads these)
//! snapshots/<shard>/step-<8 digits>.safetensors         published snapshots, manifest.json, config.json
//! staging/<sweep>/<shard>/attempt-<n>/…                 what attempt n wrote, same layout as above,
//!                                                       plus checkpoints/; never read by queries
//! ```
//!
//! Results become visible only when the coordinator copies an attempt's staging to the final
//! keys (create-only) and commits that attempt; `runs` is published last.

/// Key of a result table's file for a shard.
pub fn result_key(table: &str, sweep: &str, shard: &str) -> String {
    format!("results/{table}/sweep={sweep}/{shard}.parquet")
}

/// Directory of a shard's snapshots.
pub fn snapshot_dir(shard: &str) -> String {
    format!("snapshots/{shard}")
}

/// Key of a snapshot file.
pub fn snapshot_key(shard: &str, step: u64) -> String {
    format!("snapshots/{shard}/step-{step:08}.safetensors")
}

/// Where every attempt of a shard stages its output.
pub fn shard_staging(sweep: &str, shard: &str) -> String {
    format!("staging/{sweep}/{shard}")
}

/// Where attempt `attempt` of a shard stages its output.
pub fn staging_prefix(sweep: &str, shard: &str, attempt: u32) -> String {
    format!("staging/{sweep}/{shard}/attempt-{attempt}")
}

/// Parses the attempt number out of a key under [`shard_staging`].
pub fn attempt_of(shard_staging: &str, key: &str) -> Option<u32> {
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

/// The `runs` file is the commit marker: it is published last.
pub const COMMIT_TABLE: &str = "runs";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_parse_back() {
        let s = shard_staging("sw", "abc");
        let k = format!("{}/results/runs/x.parquet", staging_prefix("sw", "abc", 12));
        assert_eq!(attempt_of(&s, &k), Some(12));
        assert_eq!(attempt_of(&s, "staging/sw/other/attempt-1/x"), None);
        assert_eq!(attempt_of(&s, &format!("{s}/junk/x")), None);
    }
}
