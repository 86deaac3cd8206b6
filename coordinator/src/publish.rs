//! Exactly-once publication: copy one attempt's staged output to the final keys, create-only.
//!
//! Called between the ledger's `begin_publish` (the intent) and `commit`; both copies and the
//! check for an existing identical object make a repeated call (a retried completion, a roll
//! forward after a crash) harmless. Blocking: async callers use `spawn_blocking`.
//!
//! **Architecture invariant:** the only module of the coordinator that touches storage.

use linesweep_storage::attempt::{ATTEMPT_MANIFEST, AttemptManifest, sha256_hex};
use linesweep_storage::attempt::{COMMIT_TABLES, ShardKind, all_tables};
use linesweep_storage::ids::{Attempt, ShardId, SweepName};
use linesweep_storage::layout::{shard_staging, snapshot_dir, staging_prefix, sweep_staging};
use linesweep_storage::snapshots::SnapshotManifest;
use linesweep_storage::{Storage, StorageError};

/// Why an attempt's output could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The attempt staged no attempt manifest: it did not finish.
    #[error("attempt {attempt} staged no results ({key} is missing)")]
    Incomplete { attempt: Attempt, key: String },
    /// What the attempt staged is not a valid result of its lease; nothing was published.
    #[error("attempt {attempt} cannot be published: {reason}")]
    Invalid { attempt: Attempt, reason: String },
    /// A different object already sits at a final key.
    #[error(
        "{key} already exists with other contents; the attempt's results were not published \
         (if those files are damaged or another run's, `linesweep retry SWEEP --committed \
         --shard ID` removes the shard's published files and runs it again)"
    )]
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

/// Checks what attempt `attempt` staged before any of it is published, and returns its
/// manifest: the manifest matches the lease and lists every result table and only the shard's
/// own keys; every listed object exists with its size, and the tables and JSON files (small)
/// with their SHA-256 (snapshots, hundreds of MB, by size: hashing them here would make the
/// coordinator read every byte it otherwise only links or copies server-side); every snapshot
/// the snapshot manifest names is listed; the `runs` row names the lease's shard and the
/// manifest's schema version.
pub fn verify(
    storage: &Storage,
    sweep: &SweepName,
    shard: &ShardId,
    attempt: Attempt,
) -> Result<AttemptManifest, PublishError> {
    let invalid = |reason: String| PublishError::Invalid { attempt, reason };
    let prefix = staging_prefix(sweep, shard, attempt);
    let manifest_key = linesweep_storage::layout::placed(Some(&prefix), ATTEMPT_MANIFEST);
    if storage.size(&manifest_key)?.is_none() {
        return Err(PublishError::Incomplete {
            attempt,
            key: manifest_key,
        });
    }
    let manifest: AttemptManifest = serde_json::from_slice(&storage.get(&manifest_key)?)
        .map_err(|e| invalid(format!("{ATTEMPT_MANIFEST} does not parse: {e}")))?;
    manifest.check(sweep, shard, attempt).map_err(invalid)?;
    // The small files (tables, JSON), read once: hashed here, parsed below.
    let mut small: std::collections::HashMap<&str, bytes::Bytes> = Default::default();
    for f in &manifest.files {
        let key = linesweep_storage::layout::placed(Some(&prefix), &f.key);
        match storage.size(&key)? {
            None => return Err(invalid(format!("{} is listed but was not staged", f.key))),
            Some(n) if n != f.bytes => {
                return Err(invalid(format!(
                    "{} has {n} bytes, the manifest says {}",
                    f.key, f.bytes
                )));
            }
            Some(_) => {}
        }
        if !f.key.ends_with(".safetensors") {
            let bytes = storage.get(&key)?;
            if sha256_hex(&bytes) != f.sha256 {
                return Err(invalid(format!(
                    "{}: its contents differ from the manifest",
                    f.key
                )));
            }
            small.insert(f.key.as_str(), bytes);
        }
    }
    // A pair shard trains nothing: it stages no snapshots.
    if manifest.kind == ShardKind::Run {
        check_snapshots(&small, &manifest).map_err(invalid)?;
    }
    // `check` made sure the manifest lists the marker table, so it was read above.
    let marker = small
        .remove(manifest.marker_key().as_str())
        .unwrap_or_default();
    check_runs_row(marker, manifest.kind, shard, manifest.schema_version).map_err(invalid)?;
    Ok(manifest)
}

/// Every snapshot that `snapshots/<shard>/manifest.json` names is in the attempt manifest with
/// the same size and SHA-256: the hash every later reader of the snapshot verifies is the one
/// the worker computed from the bytes it wrote (whose staged size `verify` checked).
fn check_snapshots(
    small: &std::collections::HashMap<&str, bytes::Bytes>,
    m: &AttemptManifest,
) -> Result<(), String> {
    let key = linesweep_storage::layout::snapshot_manifest_key(&m.shard);
    let Some(bytes) = small.get(key.as_str()) else {
        return Err(format!("the attempt staged no snapshot manifest ({key})"));
    };
    let snaps = SnapshotManifest::parse(bytes, &m.shard).map_err(|e| format!("{key}: {e}"))?;
    for s in &snaps.snapshots {
        let want = snaps.key_of(s);
        let Some(staged) = m.files.iter().find(|f| f.key == want) else {
            return Err(format!(
                "{key} names {want:?}, which the attempt did not stage"
            ));
        };
        if (staged.bytes, staged.sha256.as_str()) != (s.bytes, s.sha256.as_str()) {
            return Err(format!(
                "{key} records {} bytes with SHA-256 {:?} for {want}, the attempt manifest {} \
                 bytes with SHA-256 {}",
                s.bytes, s.sha256, staged.bytes, staged.sha256
            ));
        }
    }
    Ok(())
}

/// The staged marker (`runs`, `pairs`) is this shard's, in the manifest's schema. (The rows
/// hold no sweep name: the sweep is the key's partition, which the manifest check pins.)
fn check_runs_row(
    bytes: bytes::Bytes,
    kind: ShardKind,
    shard: &ShardId,
    schema_version: i32,
) -> Result<(), String> {
    let row = read_runs_row(bytes, kind)?;
    if (row.shard.as_str(), row.schema_version) != (shard.as_str(), schema_version) {
        return Err(format!(
            "the runs row is shard {} in schema {}, not shard {shard} in schema {schema_version}",
            row.shard, row.schema_version
        ));
    }
    Ok(())
}

/// What the coordinator reads of a `runs` file (it knows nothing else of the results).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunsRow {
    /// The shard id.
    pub shard: String,
    /// The results schema the row was written in.
    pub schema_version: i32,
    /// The attempt that wrote it.
    pub attempt: Option<Attempt>,
    /// The shard's canonical config JSON.
    pub config_json: Option<String>,
}

/// Reads the row of a commit marker, by column name: the one row of a `runs` file, or the
/// first of a `pairs` file, whose every row must name the same shard, schema, attempt and
/// config.
pub fn read_runs_row(bytes: bytes::Bytes, kind: ShardKind) -> Result<RunsRow, String> {
    let what = |e: &dyn std::fmt::Display| format!("the marker file does not read: {e}");
    let batches = linesweep_storage::parquet_file::read(bytes, None)
        .map_err(|e| what(&e))?
        .batches;
    let mut first: Option<RunsRow> = None;
    let mut rows = 0usize;
    for batch in batches {
        for i in 0..batch.num_rows() {
            let row = marker_row(&batch, i)?;
            match &first {
                None => first = Some(row),
                Some(f) if *f != row => {
                    return Err(format!(
                        "the marker file's rows disagree: shard {} and shard {}",
                        f.shard, row.shard
                    ));
                }
                Some(_) => {}
            }
            rows += 1;
        }
    }
    let first = first.ok_or("the marker file has no rows")?;
    if rows != 1 && kind == ShardKind::Run {
        return Err("the runs file must hold exactly one row".into());
    }
    Ok(first)
}

/// Row `i` of a marker batch.
fn marker_row(batch: &arrow_array::RecordBatch, i: usize) -> Result<RunsRow, String> {
    use arrow_array::{Array, Int32Array, StringArray, UInt64Array};
    let text = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .filter(|c| c.is_valid(i))
            .map(|c| c.value(i).to_owned())
            .ok_or(format!("the marker row has no `{name}`"))
    };
    let schema_version = batch
        .column_by_name("schema_version")
        .and_then(|c| c.as_any().downcast_ref::<Int32Array>())
        .filter(|c| c.is_valid(i))
        .map(|c| c.value(i))
        .ok_or("the marker row has no `schema_version`")?;
    let attempt = batch
        .column_by_name("attempt")
        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
        .filter(|c| c.is_valid(i))
        .and_then(|c| u32::try_from(c.value(i)).ok())
        .and_then(|n| Attempt::new(n).ok());
    Ok(RunsRow {
        shard: text("shard")?,
        schema_version,
        attempt,
        config_json: text("config_json").ok(),
    })
}

/// Copies attempt `attempt`'s staged output to its final keys; returns how many objects were
/// newly published (0 when a previous call already did it all).
pub fn publish(
    storage: &Storage,
    sweep: &SweepName,
    shard: &ShardId,
    attempt: Attempt,
) -> Result<usize, PublishError> {
    publish_verified(storage, &verify(storage, sweep, shard, attempt)?)
}

/// Copies the files of a manifest that [`verify`] returned to their final keys.
pub fn publish_verified(
    storage: &Storage,
    manifest: &AttemptManifest,
) -> Result<usize, PublishError> {
    let prefix = staging_prefix(&manifest.sweep, &manifest.shard, manifest.attempt);
    let mut published = 0;
    for file in manifest.publish_order() {
        let (key, target) = (
            linesweep_storage::layout::placed(Some(&prefix), &file.key),
            file.key.as_str(),
        );
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

/// The ledger that publishes a sweep in a results location, as its owner marker records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    /// The ledger's id ([`crate::ledger::Ledger::id`]).
    pub ledger: String,
    /// Its state file, for the error that names it.
    pub state: String,
}

/// Why a sweep's results location cannot be claimed.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// Another ledger publishes this sweep here.
    #[error(
        "sweep `{sweep}` in {root} belongs to another ledger (state file {}, id {}): submit it to \
         that coordinator, or use another sweep name or results location; if that ledger is \
         lost, start this coordinator with `serve --recover --results {root}`",
        .owner.state, .owner.ledger
    )]
    Taken {
        sweep: SweepName,
        root: String,
        owner: Owner,
    },
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The owner marker of `sweep` in `storage`: `None` when there is none or it does not read
/// (an unreadable marker is nobody's).
pub fn read_owner(storage: &Storage, sweep: &SweepName) -> Result<Option<Owner>, StorageError> {
    let key = linesweep_storage::layout::owner_key(sweep);
    if !storage.exists(&key)? {
        return Ok(None);
    }
    Ok(serde_json::from_slice(&storage.get(&key)?).ok())
}

/// Makes `me` the owner of `sweep` in `storage`: a create-only marker, so that two ledgers
/// never publish one sweep into one location (each would refuse the other's results as
/// conflicts, after training them). The marker is `me`'s already when it names `me`'s id, or
/// `me`'s state file (a ledger recreated where it was); `take_over` (a ledger rebuilt with
/// `--recover`) replaces any other.
pub fn claim_owner(
    storage: &Storage,
    sweep: &SweepName,
    me: &Owner,
    take_over: bool,
) -> Result<(), OwnerError> {
    let key = linesweep_storage::layout::owner_key(sweep);
    let mine = serde_json::to_vec_pretty(me).unwrap_or_default();
    match storage.put_create(&key, mine.clone()) {
        Ok(()) => return Ok(()),
        Err(StorageError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    // An unreadable marker is nobody's: it is replaced.
    let current: Option<Owner> = serde_json::from_slice(&storage.get(&key)?).ok();
    match current {
        Some(o) if o.ledger == me.ledger => Ok(()),
        Some(o) if o.state != me.state && !take_over => Err(OwnerError::Taken {
            sweep: sweep.clone(),
            root: storage.root().to_owned(),
            owner: o,
        }),
        previous => {
            tracing::warn!(%sweep, root = storage.root(), ?previous, "this ledger takes over the sweep's results location");
            storage.put(&key, mine)?;
            Ok(())
        }
    }
}

/// Removes what a committed shard published, so that it can run again and publish exactly
/// once more: its commit markers first (from then on the location says "not committed"),
/// then its other tables and its snapshots. Returns how many objects were removed. A crash
/// part-way leaves a ledger commit without a marker, which [`missing_commits`] finds.
pub fn unpublish(
    storage: &Storage,
    sweep: &SweepName,
    shard: &ShardId,
) -> Result<usize, StorageError> {
    let tables = COMMIT_TABLES
        .into_iter()
        .chain(all_tables().filter(|t| !COMMIT_TABLES.contains(t)));
    let mut removed = 0;
    for table in tables {
        let key = linesweep_storage::layout::result_key(table, sweep, shard);
        if storage.size(&key)?.is_some() {
            storage.delete(&key)?;
            removed += 1;
        }
    }
    removed += storage.delete_prefix(&format!("{}/", snapshot_dir(shard)))?;
    Ok(removed)
}

/// Of `committed` (the ledger's committed shards of `sweep`), those whose commit marker is
/// not in `storage`: one listing per marker table.
pub fn missing_commits(
    storage: &Storage,
    sweep: &SweepName,
    committed: &[String],
) -> Result<Vec<String>, StorageError> {
    let mut published = std::collections::HashSet::new();
    for table in COMMIT_TABLES {
        let shards = storage.published_shards(table, sweep)?;
        published.extend(shards.into_iter().map(|s| s.as_str().to_owned()));
    }
    Ok(committed
        .iter()
        .filter(|id| !published.contains(id.as_str()))
        .cloned()
        .collect())
}

/// Removes every attempt's staging of a shard (after its commit, or by `gc`).
pub fn clean(storage: &Storage, sweep: &SweepName, shard: &ShardId) -> Result<usize, StorageError> {
    storage.delete_prefix(&shard_staging(sweep, shard))
}

/// Shard ids that have staging under `sweep`.
pub fn staged_shards(storage: &Storage, sweep: &SweepName) -> Result<Vec<ShardId>, StorageError> {
    let root = format!("{}/", sweep_staging(sweep));
    let mut ids: Vec<ShardId> = storage
        .list(&root)?
        .iter()
        .filter_map(|k| ShardId::parse(k.strip_prefix(&root)?.split('/').next()?).ok())
        .collect();
    ids.dedup();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use linesweep_storage::attempt::StagedFile;
    use linesweep_storage::layout::{result_key, snapshot_key};
    use linesweep_storage::snapshots::{SNAPSHOT_FORMAT, SnapshotEntry, SnapshotRole};

    fn sw() -> SweepName {
        SweepName::parse("sw").unwrap()
    }

    fn abc() -> ShardId {
        ShardId::parse("abc").unwrap()
    }

    fn at(n: u32) -> Attempt {
        Attempt::new(n).unwrap()
    }

    /// A one-row `runs` file naming `shard`, in `schema`.
    fn runs_file(shard: &str, schema: i32, extra: &str) -> Vec<u8> {
        use arrow_array::{ArrayRef, Int32Array, RecordBatch, StringArray};
        let batch = RecordBatch::try_from_iter([
            (
                "schema_version",
                std::sync::Arc::new(Int32Array::from(vec![schema])) as ArrayRef,
            ),
            (
                "shard",
                std::sync::Arc::new(StringArray::from(vec![shard])) as ArrayRef,
            ),
            (
                "extra",
                std::sync::Arc::new(StringArray::from(vec![extra])) as ArrayRef,
            ),
        ])
        .unwrap();
        let mut out = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        out
    }

    /// Stages a complete attempt of shard `abc` of sweep `sw`, with `runs` as its runs file;
    /// `tamper` may change the manifest before it is written.
    fn stage(
        s: &Storage,
        attempt: Attempt,
        runs: Vec<u8>,
        tamper: impl FnOnce(&mut AttemptManifest),
    ) {
        let p = staging_prefix(&sw(), &abc(), attempt);
        let snap = StagedFile::of(&snapshot_key(&abc(), 0), &[1u8]);
        let snaps = serde_json::to_vec(&SnapshotManifest {
            shard: abc(),
            format: SNAPSHOT_FORMAT.into(),
            snapshots: vec![SnapshotEntry::of(&snap, 0, 0.0, SnapshotRole::Init)],
        })
        .unwrap();
        let mut files = Vec::new();
        for (key, bytes) in [
            (snap.key, vec![1u8]),
            ("snapshots/abc/manifest.json".to_owned(), snaps),
            (result_key("interpolation", &sw(), &abc()), b"i".to_vec()),
            (result_key("trajectory", &sw(), &abc()), b"t".to_vec()),
            (result_key("lines", &sw(), &abc()), b"l".to_vec()),
            (result_key("runs", &sw(), &abc()), runs),
        ] {
            files.push(StagedFile::of(&key, &bytes));
            s.put(&format!("{p}/{key}"), bytes).unwrap();
        }
        s.put(&format!("{p}/checkpoints/step-5/model.bin"), vec![2])
            .unwrap();
        let mut m = AttemptManifest {
            sweep: sw(),
            shard: abc(),
            attempt,
            schema_version: 3,
            kind: ShardKind::Run,
            files,
        };
        tamper(&mut m);
        s.put(
            &format!("{p}/{ATTEMPT_MANIFEST}"),
            serde_json::to_vec(&m).unwrap(),
        )
        .unwrap();
    }

    fn store() -> (tempfile::TempDir, Storage) {
        let tmp = tempfile::tempdir().unwrap();
        let s = Storage::open(tmp.path().to_str().unwrap()).unwrap();
        (tmp, s)
    }

    #[test]
    fn publish_is_create_only_idempotent_and_skips_checkpoints() {
        let (_tmp, s) = store();
        assert!(matches!(
            publish(&s, &sw(), &abc(), at(1)),
            Err(PublishError::Incomplete { .. })
        ));
        let one = runs_file("abc", 3, "one");
        stage(&s, at(1), one.clone(), |_| {});
        assert_eq!(publish(&s, &sw(), &abc(), at(1)).unwrap(), 6);
        assert_eq!(
            publish(&s, &sw(), &abc(), at(1)).unwrap(),
            0,
            "a repeat is harmless"
        );
        assert!(!s.exists("checkpoints/step-5/model.bin").unwrap());
        assert!(!s.exists(ATTEMPT_MANIFEST).unwrap());
        // Another attempt with other bytes cannot replace what is published.
        stage(&s, at(2), runs_file("abc", 3, "two"), |_| {});
        let err = publish(&s, &sw(), &abc(), at(2)).unwrap_err();
        assert!(matches!(err, PublishError::Conflict { .. }), "{err}");
        assert_eq!(
            s.get(&result_key("runs", &sw(), &abc())).unwrap().to_vec(),
            one
        );
        assert_eq!(staged_shards(&s, &sw()).unwrap(), vec![abc()]);
        assert_eq!(clean(&s, &sw(), &abc()).unwrap(), 16);
        assert!(staged_shards(&s, &sw()).unwrap().is_empty());
    }

    /// Each way a staging folder can lie is refused with its reason, and nothing is published.
    #[test]
    fn an_attempt_that_does_not_match_its_lease_is_never_published() {
        type Tamper = Box<dyn FnOnce(&mut AttemptManifest)>;
        let cases: Vec<(&str, Vec<u8>, Tamper, &str)> = vec![
            (
                "another shard's runs row",
                runs_file("xyz", 3, ""),
                Box::new(|_| {}),
                "shard xyz",
            ),
            (
                "an old schema",
                runs_file("abc", 2, ""),
                Box::new(|_| {}),
                "schema 2",
            ),
            (
                "not parquet",
                b"runs".to_vec(),
                Box::new(|_| {}),
                "does not read",
            ),
            (
                "a missing table",
                runs_file("abc", 3, ""),
                Box::new(|m| {
                    m.files.retain(|f| !f.key.contains("trajectory"));
                }),
                "no `trajectory` table",
            ),
            (
                "another lease",
                runs_file("abc", 3, ""),
                Box::new(|m| m.attempt = at(9)),
                "attempt 9",
            ),
            (
                "a changed size",
                runs_file("abc", 3, ""),
                Box::new(|m| m.files[0].bytes = 7),
                "the manifest says 7",
            ),
            (
                "a changed hash",
                runs_file("abc", 3, ""),
                Box::new(|m| m.files[1].sha256 = "00".into()),
                "differ from the manifest",
            ),
            (
                "a snapshot whose hash the snapshot manifest does not record",
                runs_file("abc", 3, ""),
                Box::new(|m| {
                    let f = m.files.iter_mut().find(|f| f.key.ends_with(".safetensors"));
                    *f.unwrap() = StagedFile::of("snapshots/abc/step-00000000.safetensors", &[2]);
                }),
                "records 1 bytes with SHA-256",
            ),
            (
                "an unstaged file",
                runs_file("abc", 3, ""),
                Box::new(|m| {
                    m.files.push(StagedFile::of(
                        "snapshots/abc/step-00000009.safetensors",
                        b"x",
                    ));
                }),
                "not staged",
            ),
        ];
        for (what, runs, tamper, reason) in cases {
            let (_tmp, s) = store();
            stage(&s, at(1), runs, tamper);
            let err = publish(&s, &sw(), &abc(), at(1)).unwrap_err();
            assert!(
                matches!(&err, PublishError::Invalid { .. }) && err.to_string().contains(reason),
                "{what}: {err}"
            );
            assert!(!err.is_transient());
            assert!(
                s.list("results").unwrap().is_empty(),
                "{what}: something was published"
            );
            assert!(
                s.list("snapshots").unwrap().is_empty(),
                "{what}: something was published"
            );
        }
    }
}
