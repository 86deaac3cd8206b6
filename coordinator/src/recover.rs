//! Rebuilding the ledger's committed state from storage (`linesweep serve --recover`).
//!
//! Storage is the truth of what was committed: a commit marker at its final key (a `runs`
//! file; a pair shard's `pairs` file) is published last, so its presence means the shard's
//! results are complete. After a ledger is lost, the
//! rebuilt ledger knows those shards as committed, and resubmitting the sweep runs only what
//! is missing instead of retraining everything and failing on publish conflicts.

use std::collections::BTreeMap;

use linesweep_storage::attempt::{COMMIT_TABLES, ShardKind};
use linesweep_storage::layout;
use linesweep_storage::{Storage, StorageError};

use crate::lease::Millis;
use crate::ledger::{Ledger, LedgerError, RecoveredShard};
use crate::publish::read_runs_row;

/// The rebuild failed; the ledger is as it was before the failing sweep.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// Listing or reading the results root.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Writing the ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// What a rebuild found and recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Shards per sweep found committed in storage.
    pub found: BTreeMap<String, usize>,
    /// Shards the ledger did not know as committed until now.
    pub recorded: usize,
    /// `runs` files that could not be read (each logged with its reason), left alone.
    pub unreadable: usize,
}

/// Records every shard that `storage` (the results root `results`) holds committed results
/// of in `ledger`.
pub fn recover(
    ledger: &mut Ledger,
    storage: &Storage,
    results: &str,
    now: Millis,
) -> Result<Recovered, RecoverError> {
    let mut by_sweep: BTreeMap<String, Vec<RecoveredShard>> = BTreeMap::new();
    let mut out = Recovered::default();
    let markers = COMMIT_TABLES.into_iter().map(|table| {
        storage
            .list(&layout::result_table_prefix(table))
            .map(|keys| keys.into_iter().map(move |k| (table, k)))
    });
    for (table, key) in markers
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
    {
        let (Some((sweep, shard)), Some(kind)) = (
            layout::parse_result_key(table, &key),
            ShardKind::of_table(table),
        ) else {
            continue;
        };
        match read_runs_row(storage.get(&key)?, kind) {
            Ok(row) if row.shard == shard.as_str() => match (row.attempt, row.config_json) {
                (Some(attempt), Some(config_json)) => {
                    by_sweep
                        .entry(sweep.to_string())
                        .or_default()
                        .push(RecoveredShard {
                            id: shard.to_string(),
                            attempt,
                            config_json,
                        });
                }
                _ => {
                    tracing::warn!(%key, "a runs file without its attempt or config; skipped");
                    out.unreadable += 1;
                }
            },
            Ok(row) => {
                tracing::warn!(%key, row = %row.shard, "a runs file names another shard; skipped");
                out.unreadable += 1;
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "an unreadable runs file; skipped");
                out.unreadable += 1;
            }
        }
    }
    for (sweep, shards) in &by_sweep {
        out.recorded += ledger.recover(sweep, results, shards, now)?;
        out.found.insert(sweep.clone(), shards.len());
    }
    Ok(out)
}
