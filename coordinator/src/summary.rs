//! Per-sweep summary files: one Parquet object per result table and sweep
//! (`layout::summary_key`) holding the rows of every committed shard, so that a query over a
//! 10,000-shard sweep opens one file instead of 10,000 (each of which is mostly footer).
//!
//! The per-shard files stay the exactly-once truth; a summary is derived from them and may lag
//! them. It is rewritten whole, with one PUT (atomic on S3; a rename on local disks), so a
//! reader sees the previous summary or the new one, never a partial file. Each shard's rows
//! are in it at most once: a rewrite keeps the previous summary's rows and appends the rows of
//! the committed shards it did not hold yet. A shard counts as committed when its commit marker
//! (`runs`, or a pair shard's `pairs`) is published (it is published last). The coordinator knows Parquet only as files to
//! concatenate: the columns are whatever the workers wrote.

use std::collections::BTreeSet;

use arrow_array::{Array, RecordBatch, StringArray};
use bytes::Bytes;
use linesweep_storage::attempt::{COMMIT_TABLES, ShardKind, all_tables};
use linesweep_storage::coverage::{COVERAGE_KEY, Coverage, in_footer};
use linesweep_storage::ids::{ShardId, SweepName};
use linesweep_storage::layout;
use linesweep_storage::{Storage, StorageError};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

/// A summary could not be rewritten; the previous one (if any) is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    /// Listing, reading or writing storage.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A file that does not read as Parquet, or whose columns differ from the summary's.
    #[error("{key}: {message}")]
    Parquet { key: String, message: String },
}

/// What one rewrite did, per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewritten {
    /// (table, shards now in its summary, shards added by this rewrite).
    pub tables: Vec<(String, usize, usize)>,
}

impl Rewritten {
    /// Shards added to the summaries of the commit markers (`runs`, `pairs`): each shard
    /// has exactly one.
    pub fn added(&self) -> usize {
        self.tables
            .iter()
            .filter(|(t, ..)| COMMIT_TABLES.contains(&t.as_str()))
            .map(|(_, _, added)| *added)
            .sum()
    }
}

/// Rewrites the summary of every result table of `sweep` in `storage` (a summary that is
/// already complete is left alone).
pub fn rewrite(storage: &Storage, sweep: &SweepName) -> Result<Rewritten, SummaryError> {
    let mut committed = std::collections::HashMap::new();
    for marker in COMMIT_TABLES {
        committed.insert(marker, storage.published_shards(marker, sweep)?);
    }
    let mut out = Rewritten::default();
    for table in all_tables() {
        // Every table has a kind, and every kind a marker in COMMIT_TABLES.
        let marker = ShardKind::of_table(table)
            .unwrap_or_default()
            .commit_table();
        let committed = &committed[marker];
        let present = storage.published_shards(table, sweep)?;
        let shards: BTreeSet<&ShardId> = present.intersection(committed).collect();
        let (total, added) = rewrite_table(storage, table, sweep, &shards)?;
        out.tables.push((table.to_owned(), total, added));
    }
    Ok(out)
}

fn bad(key: &str, e: impl std::fmt::Display) -> SummaryError {
    SummaryError::Parquet {
        key: key.to_owned(),
        message: e.to_string(),
    }
}

/// Every batch of a Parquet file.
fn read_batches(key: &str, bytes: Bytes) -> Result<Vec<RecordBatch>, SummaryError> {
    Ok(read_file(key, bytes)?.0)
}

/// Every batch of a Parquet file, and the coverage record in its footer (if any).
fn read_file(key: &str, bytes: Bytes) -> Result<(Vec<RecordBatch>, Option<String>), SummaryError> {
    let file = linesweep_storage::parquet_file::read(bytes, None).map_err(|e| bad(key, e))?;
    let coverage = in_footer(file.footer.iter().map(|(k, v)| (k.as_str(), v.as_deref())));
    let batches = file.batches;
    Ok((batches, coverage))
}

/// The previous summary at `key` and the shards it holds, when it can be trusted: it reads,
/// its coverage record says it is `table` of `sweep` with exactly the shards its rows name, and
/// all of them are committed. Anything else is set aside with a warning (the per-shard files
/// rebuild it): a summary is derived data, and a damaged one must not block its repair.
fn previous(
    storage: &Storage,
    key: &str,
    table: &str,
    sweep: &SweepName,
    committed: &BTreeSet<&ShardId>,
) -> Result<(Vec<RecordBatch>, BTreeSet<String>), SummaryError> {
    if storage.size(key)?.is_none() {
        return Ok(Default::default());
    }
    let trusted = read_file(key, storage.get(key)?).and_then(|(batches, coverage)| {
        let held = shards_in(key, &batches)?;
        let coverage = Coverage::parse(coverage.as_deref()).map_err(|e| bad(key, e))?;
        coverage
            .check(sweep, table, held.iter().map(String::as_str))
            .map_err(|e| bad(key, e))?;
        if let Some(s) = held
            .iter()
            .find(|s| !committed.iter().any(|c| c.as_str() == *s))
        {
            return Err(bad(
                key,
                format!("it holds shard {s}, which is not committed"),
            ));
        }
        Ok((batches, held))
    });
    Ok(trusted.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "setting a summary aside; rebuilding it from the per-shard files");
        Default::default()
    }))
}

/// The distinct values of the `shard` column.
fn shards_in(key: &str, batches: &[RecordBatch]) -> Result<BTreeSet<String>, SummaryError> {
    let mut out = BTreeSet::new();
    for b in batches {
        let col = b
            .column_by_name("shard")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| bad(key, "no `shard` column of strings"))?;
        out.extend(
            (0..col.len())
                .filter(|&i| col.is_valid(i))
                .map(|i| col.value(i).to_owned()),
        );
    }
    Ok(out)
}

/// Rewrites one table's summary to hold `shards`; returns (shards in it, shards added).
fn rewrite_table(
    storage: &Storage,
    table: &str,
    sweep: &SweepName,
    shards: &BTreeSet<&ShardId>,
) -> Result<(usize, usize), SummaryError> {
    let key = layout::summary_key(table, sweep);
    let (mut batches, held) = previous(storage, &key, table, sweep, shards)?;
    let missing: Vec<&&ShardId> = shards
        .iter()
        .filter(|s| !held.contains(s.as_str()))
        .collect();
    if missing.is_empty() {
        return Ok((held.len(), 0));
    }
    for shard in &missing {
        let file = layout::result_key(table, sweep, shard);
        let new = read_batches(&file, storage.get(&file)?)?;
        // A file holding rows of another shard (or sweep: shard ids are the config's) under
        // this shard's name is refused, never folded in.
        if let Some(other) = shards_in(&file, &new)?
            .iter()
            .find(|s| *s != shard.as_str())
        {
            return Err(bad(
                &file,
                format!(
                    "it holds rows of shard {other}, not only of shard {shard}; the summary keeps its previous contents"
                ),
            ));
        }
        if let (Some(first), Some(b)) = (batches.first(), new.first())
            && first.schema().fields() != b.schema().fields()
        {
            return Err(bad(
                &file,
                format!(
                    "its columns differ from the summary's ({key}); the summary keeps its previous contents"
                ),
            ));
        }
        batches.extend(new);
    }
    let Some(schema) = batches.first().map(RecordBatch::schema) else {
        return Ok((0, 0));
    };
    let columns = schema.fields().iter().map(|f| f.name().clone()).collect();
    let all = held
        .iter()
        .map(String::as_str)
        .chain(missing.iter().map(|s| s.as_str()));
    let coverage = Coverage::of(sweep, table, columns, all);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            COVERAGE_KEY.to_owned(),
            coverage.to_json(),
        )]))
        .build();
    let mut bytes = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut bytes, schema.clone(), Some(props)).map_err(|e| bad(&key, e))?;
    for b in &batches {
        // One schema for every batch (files may differ in metadata only).
        let b =
            RecordBatch::try_new(schema.clone(), b.columns().to_vec()).map_err(|e| bad(&key, e))?;
        writer.write(&b).map_err(|e| bad(&key, e))?;
    }
    writer.close().map_err(|e| bad(&key, e))?;
    storage.put(&key, bytes)?;
    Ok((held.len() + missing.len(), missing.len()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array};

    use super::*;
    use linesweep_storage::attempt::{OPTIONAL_TABLES, RESULT_TABLES};
    use linesweep_storage::layout::COMMIT_TABLE;

    fn file(shard: &str, rows: i64, extra: bool) -> Vec<u8> {
        let mut cols: Vec<(&str, ArrayRef)> = vec![
            (
                "shard",
                Arc::new(StringArray::from(vec![shard; rows as usize])),
            ),
            (
                "step",
                Arc::new(Int64Array::from((0..rows).collect::<Vec<_>>())),
            ),
        ];
        if extra {
            cols.push(("other", Arc::new(Int64Array::from(vec![0; rows as usize]))));
        }
        let batch = RecordBatch::try_from_iter(cols).unwrap();
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        out
    }

    /// Publishes `shard` with `rows` rows in every table (`committed`: with its `runs` file);
    /// shard `b2` did not ask for the optional tables.
    fn publish(storage: &Storage, sweep: &SweepName, shard: &str, committed: bool) {
        let id = ShardId::parse(shard).unwrap();
        for table in RESULT_TABLES {
            if shard == "b2" && OPTIONAL_TABLES.contains(&table) {
                continue;
            }
            if table != COMMIT_TABLE || committed {
                let rows = if table == COMMIT_TABLE { 1 } else { 3 };
                let key = layout::result_key(table, sweep, &id);
                storage.put(&key, file(shard, rows, false)).unwrap();
            }
        }
    }

    fn rows(storage: &Storage, table: &str, sweep: &SweepName) -> Vec<String> {
        let key = layout::summary_key(table, sweep);
        let batches = read_batches(&key, storage.get(&key).unwrap()).unwrap();
        let mut out = Vec::new();
        for b in &batches {
            let c = b
                .column_by_name("shard")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            out.extend((0..c.len()).map(|i| c.value(i).to_owned()));
        }
        out.sort();
        out
    }

    #[test]
    fn a_summary_holds_each_committed_shard_once_and_grows() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap()).unwrap();
        let sweep = SweepName::parse("s").unwrap();
        let other = SweepName::parse("t").unwrap();
        publish(&storage, &sweep, "a1", true);
        publish(&storage, &sweep, "b2", true);
        // Not committed yet: its other tables are published, its runs file is not.
        publish(&storage, &sweep, "c3", false);
        publish(&storage, &other, "d4", true);
        let done = rewrite(&storage, &sweep).unwrap();
        assert_eq!(done.added(), 2);
        assert_eq!(rows(&storage, "runs", &sweep), ["a1", "b2"]);
        assert_eq!(rows(&storage, "interpolation", &sweep).len(), 6);

        // Nothing new: nothing rewritten, nothing doubled.
        assert_eq!(rewrite(&storage, &sweep).unwrap().added(), 0);
        publish(&storage, &sweep, "c3", true);
        let done = rewrite(&storage, &sweep).unwrap();
        assert_eq!(
            done.tables,
            [
                ("interpolation".to_owned(), 3, 1),
                ("trajectory".to_owned(), 3, 1),
                ("lines".to_owned(), 3, 1),
                ("plane".to_owned(), 2, 1),
                ("monotone_path".to_owned(), 2, 1),
                ("runs".to_owned(), 3, 1),
                ("pairs".to_owned(), 0, 0),
            ]
        );
        // A pair shard's `pairs` file is its own commit marker.
        let pair = ShardId::parse("e5").unwrap();
        let key = layout::result_key("pairs", &sweep, &pair);
        storage.put(&key, file("e5", 4, false)).unwrap();
        assert_eq!(rewrite(&storage, &sweep).unwrap().added(), 1);
        assert_eq!(rows(&storage, "pairs", &sweep), ["e5"; 4]);
        assert_eq!(rows(&storage, "runs", &sweep), ["a1", "b2", "c3"]);
        let traj = rows(&storage, "trajectory", &sweep);
        assert_eq!(traj.iter().filter(|s| *s == "c3").count(), 3, "{traj:?}");
        assert!(!traj.contains(&"d4".to_owned()));
    }

    #[test]
    fn a_shard_with_other_columns_leaves_the_summary_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap()).unwrap();
        let sweep = SweepName::parse("s").unwrap();
        publish(&storage, &sweep, "a1", true);
        rewrite(&storage, &sweep).unwrap();
        let id = ShardId::parse("b2").unwrap();
        storage
            .put(
                &layout::result_key("runs", &sweep, &id),
                file("b2", 1, true),
            )
            .unwrap();
        let e = rewrite(&storage, &sweep).unwrap_err();
        assert!(e.to_string().contains("columns differ"), "{e}");
        assert_eq!(rows(&storage, "runs", &sweep), ["a1"]);
    }

    /// A summary that does not read, that is another table's or sweep's, or that records no
    /// coverage is set aside and rebuilt from the per-shard files; a per-shard file holding
    /// another shard's rows is refused.
    #[test]
    fn a_damaged_or_foreign_summary_is_rebuilt_and_foreign_rows_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap()).unwrap();
        let sweep = SweepName::parse("s").unwrap();
        publish(&storage, &sweep, "a1", true);
        publish(&storage, &sweep, "b2", true);
        rewrite(&storage, &sweep).unwrap();
        let summary = |t: &str| layout::summary_key(t, &sweep);
        let interpolation = storage.get(&summary("interpolation")).unwrap();
        for (what, bytes) in [
            ("junk", b"junk".to_vec()),
            ("empty", Vec::new()),
            (
                "truncated",
                interpolation[..interpolation.len() / 2].to_vec(),
            ),
            ("another table's", interpolation.to_vec()),
            ("without coverage", file("a1", 1, false)),
        ] {
            storage.put(&summary("runs"), bytes).unwrap();
            rewrite(&storage, &sweep).unwrap();
            assert_eq!(rows(&storage, "runs", &sweep), ["a1", "b2"], "{what}");
        }
        // Another sweep's summary of the same table, with the same shards.
        let other = SweepName::parse("t").unwrap();
        publish(&storage, &other, "a1", true);
        publish(&storage, &other, "b2", true);
        rewrite(&storage, &other).unwrap();
        let theirs = storage.get(&layout::summary_key("runs", &other)).unwrap();
        storage.put(&summary("runs"), theirs.to_vec()).unwrap();
        rewrite(&storage, &sweep).unwrap();
        let bytes = storage.get(&summary("runs")).unwrap();
        let (_, coverage) = read_file("x", bytes).unwrap();
        let coverage = Coverage::parse(coverage.as_deref()).unwrap();
        assert_eq!((coverage.sweep, coverage.shards), (sweep.clone(), 2));
        // A runs file of shard c3 holding shard zz's row is never folded in.
        let c3 = ShardId::parse("c3").unwrap();
        storage
            .put(
                &layout::result_key("runs", &sweep, &c3),
                file("zz", 1, false),
            )
            .unwrap();
        let e = rewrite(&storage, &sweep).unwrap_err().to_string();
        assert!(
            e.contains("rows of shard zz") && e.contains("c3.parquet"),
            "{e}"
        );
        assert_eq!(rows(&storage, "runs", &sweep), ["a1", "b2"]);
    }
}
