//! The key layout under a storage root: the contract between workers, which write, the
//! coordinator, which publishes, and users, who query.
//!
//! ```text
//! results/<table>/sweep=<sweep>/<shard>.parquet        published results (DuckDB reads these)
//! snapshots/<shard>/step-<8 digits>.safetensors         published snapshots, manifest.json, config.json
//! staging/<sweep>/<shard>/attempt-<n>/…                 what attempt n wrote, same layout as above,
//!                                                       plus checkpoints/ and attempt.json (the
//!                                                       attempt manifest); never read by queries
//! ```
//!
//! Results become visible only when the coordinator copies an attempt's staging to the final
//! keys (create-only) and commits that attempt; `runs` is published last.

/// The longest sweep name: it is one path component (`sweep=NAME`) of every key, and file
/// systems and object stores cap a component at 255 bytes.
pub const MAX_SWEEP_NAME: usize = 100;

/// Whether `name` is a safe hive partition value: a letter, then letters, digits, `_`, `-`, `.`
/// (so that DuckDB and Polars never infer it as a number or a date, and no key escapes the
/// layout), at most [`MAX_SWEEP_NAME`] characters. The one rule for the planner, `exec` and the
/// coordinator.
pub fn valid_sweep_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_SWEEP_NAME
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// What a valid sweep name looks like, for error messages.
pub const SWEEP_NAME_RULE: &str =
    "use a letter followed by letters, digits, `_`, `-` or `.`, at most 100 characters";

/// Key of a result table's file for a shard.
pub fn result_key(table: &str, sweep: &str, shard: &str) -> String {
    format!("results/{table}/sweep={sweep}/{shard}.parquet")
}

/// The prefix of every published file of a result table.
pub fn result_table_prefix(table: &str) -> String {
    format!("results/{table}/")
}

/// `(sweep, shard)` of a key built by [`result_key`] for `table`.
pub fn parse_result_key<'a>(table: &str, key: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = key.strip_prefix(&result_table_prefix(table))?;
    let (sweep, file) = rest.strip_prefix("sweep=")?.split_once('/')?;
    let shard = file.strip_suffix(".parquet")?;
    (valid_sweep_name(sweep) && !shard.is_empty() && !shard.contains('/')).then_some((sweep, shard))
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
pub fn snapshot_config_key(shard: &str) -> String {
    format!("{}/config.json", snapshot_dir(shard))
}

/// The list of a shard's snapshots with their steps.
pub fn snapshot_manifest_key(shard: &str) -> String {
    format!("{}/manifest.json", snapshot_dir(shard))
}

/// The `runs` file is the commit marker: it is published last.
pub const COMMIT_TABLE: &str = "runs";

#[cfg(test)]
mod tests {

    #[test]
    fn sweep_names_stay_one_plain_key_component() {
        assert!(valid_sweep_name("mnist-mli.v2_a"));
        assert!(valid_sweep_name(&"a".repeat(MAX_SWEEP_NAME)));
        for bad in ["", "..", "../x", "a/b", "a=b", "7up", "x\ny", "ü"] {
            assert!(!valid_sweep_name(bad), "{bad:?}");
        }
        assert!(!valid_sweep_name(&"a".repeat(MAX_SWEEP_NAME + 1)));
    }

    use super::*;

    #[test]
    fn result_keys_parse_back() {
        let k = result_key("runs", "sw-1", "00ff");
        assert_eq!(parse_result_key("runs", &k), Some(("sw-1", "00ff")));
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
        let staging = staging_prefix("sw", "abc", 3);
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
        let s = shard_staging("sw", "abc");
        let k = format!("{}/results/runs/x.parquet", staging_prefix("sw", "abc", 12));
        assert_eq!(attempt_of(&s, &k), Some(12));
        assert_eq!(attempt_of(&s, "staging/sw/other/attempt-1/x"), None);
        assert_eq!(attempt_of(&s, &format!("{s}/junk/x")), None);
    }
}
