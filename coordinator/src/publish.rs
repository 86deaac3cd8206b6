//! Exactly-once publication: copy one attempt's staged output to the final keys, create-only.
//!
//! Called between the ledger's `begin_publish` (the intent) and `commit`; both copies and the
//! check for an existing identical object make a repeated call (a retried completion, a roll
//! forward after a crash) harmless. Blocking: async callers use `spawn_blocking`.
//!
//! **Architecture invariant:** the only module of the coordinator that touches storage.

use linesweep_storage::layout::{
    COMMIT_TABLE, checkpoint_prefix, result_key, shard_staging, staging_prefix,
};
use linesweep_storage::{Storage, StorageError};

/// Why an attempt's output could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The attempt staged no `runs` file: it did not finish.
    #[error("attempt {attempt} staged no results ({key} is missing)")]
    Incomplete { attempt: u32, key: String },
    /// A different object already sits at a final key.
    #[error("{key} already exists with other contents; the attempt's results were not published")]
    Conflict { key: String },
    /// Storage failed; the publish can be repeated.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl PublishError {
    /// Whether repeating the publish later may succeed (storage trouble), as opposed to an
    /// attempt whose output can never be published.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Storage(_))
    }
}

/// The staged keys of an attempt that get published, `runs` last; checks that `runs` is there.
pub fn staged(
    storage: &Storage,
    sweep: &str,
    shard: &str,
    attempt: u32,
) -> Result<Vec<String>, PublishError> {
    let prefix = staging_prefix(sweep, shard, attempt);
    let checkpoints = checkpoint_prefix(&prefix);
    let commit_key = format!("{prefix}/{}", result_key(COMMIT_TABLE, sweep, shard));
    let mut keys: Vec<String> = storage
        .list(&prefix)?
        .into_iter()
        .filter(|k| !k.starts_with(&checkpoints))
        .collect();
    let Some(pos) = keys.iter().position(|k| *k == commit_key) else {
        return Err(PublishError::Incomplete {
            attempt,
            key: commit_key,
        });
    };
    let last = keys.remove(pos);
    keys.push(last);
    Ok(keys)
}

/// Copies attempt `attempt`'s staged output to its final keys; returns how many objects were
/// newly published (0 when a previous call already did it all).
pub fn publish(
    storage: &Storage,
    sweep: &str,
    shard: &str,
    attempt: u32,
) -> Result<usize, PublishError> {
    let prefix = format!("{}/", staging_prefix(sweep, shard, attempt));
    let mut published = 0;
    for key in staged(storage, sweep, shard, attempt)? {
        let Some(target) = key.strip_prefix(&prefix) else {
            continue;
        };
        match storage.copy_create(&key, target) {
            Ok(()) => published += 1,
            Err(StorageError::AlreadyExists { .. }) => {
                // A repeated publish of the same attempt finds its own copies (hard links of
                // the same bytes); anything else is a conflict and is never overwritten.
                if storage.get(&key)? != storage.get(target)? {
                    return Err(PublishError::Conflict {
                        key: target.to_owned(),
                    });
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(published)
}

/// Removes every attempt's staging of a shard (after its commit, or by `gc`).
pub fn clean(storage: &Storage, sweep: &str, shard: &str) -> Result<usize, StorageError> {
    storage.delete_prefix(&shard_staging(sweep, shard))
}

/// Shard ids that have staging under `sweep`.
pub fn staged_shards(storage: &Storage, sweep: &str) -> Result<Vec<String>, StorageError> {
    let root = format!("staging/{sweep}/");
    let mut ids: Vec<String> = storage
        .list(&root)?
        .iter()
        .filter_map(|k| k.strip_prefix(&root)?.split('/').next().map(str::to_owned))
        .collect();
    ids.dedup();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(s: &Storage, attempt: u32, runs: &[u8]) {
        let p = staging_prefix("sw", "abc", attempt);
        s.put(
            &format!("{p}/snapshots/abc/step-00000000.safetensors"),
            vec![1],
        )
        .unwrap();
        s.put(&format!("{p}/checkpoints/step-5/model.bin"), vec![2])
            .unwrap();
        s.put(
            &format!("{p}/{}", result_key("runs", "sw", "abc")),
            runs.to_vec(),
        )
        .unwrap();
    }

    #[test]
    fn publish_is_create_only_idempotent_and_skips_checkpoints() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Storage::open(tmp.path().to_str().unwrap()).unwrap();
        assert!(matches!(
            publish(&s, "sw", "abc", 1),
            Err(PublishError::Incomplete { .. })
        ));
        stage(&s, 1, b"one");
        assert_eq!(publish(&s, "sw", "abc", 1).unwrap(), 2);
        assert_eq!(
            publish(&s, "sw", "abc", 1).unwrap(),
            0,
            "a repeat is harmless"
        );
        assert!(!s.exists("checkpoints/step-5/model.bin").unwrap());
        // Another attempt with other bytes cannot replace what is published.
        stage(&s, 2, b"two");
        let err = publish(&s, "sw", "abc", 2).unwrap_err();
        assert!(matches!(err, PublishError::Conflict { .. }), "{err}");
        assert_eq!(
            s.get(&result_key("runs", "sw", "abc")).unwrap().as_ref(),
            b"one"
        );
        assert_eq!(staged_shards(&s, "sw").unwrap(), vec!["abc"]);
        assert_eq!(clean(&s, "sw", "abc").unwrap(), 6);
        assert!(staged_shards(&s, "sw").unwrap().is_empty());
    }
}
