//! Reading result tables back for figures: only the columns asked for (Parquet projection),
//! as plain values, from a sweep's per-shard files or its summary file.

use std::collections::BTreeMap;

use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int32Array, ListArray, StringArray, UInt64Array,
};
use linesweep_storage::coverage::{Coverage, in_footer};
use linesweep_storage::ids::SweepName;
use linesweep_storage::layout;
use linesweep_storage::{Storage, StorageError};

/// The config columns of `runs` that a grid can vary (the axes figures group by).
pub const CONFIG_COLUMNS: [&str; 33] = [
    "seed",
    "data_seed",
    "dataset",
    "max_train_examples",
    "arch",
    "hidden",
    "activation",
    "batch_norm",
    "optimizer",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "beta1",
    "beta2",
    "eps",
    "batch_size",
    "epochs",
    "schedule",
    "milestones",
    "gamma",
    "snapshot_every",
    "alpha_points",
    "eval_max_examples",
    "channels",
    "norm",
    "augment",
    "image_size",
    "precision",
    "eval_starts",
    "bn_modes",
    "bn_batches",
    "trajectory_train_loss",
];

/// One cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A missing value (or a column the file does not have).
    Null,
    /// Text.
    Str(String),
    /// A number.
    Num(f64),
    /// A flag.
    Bool(bool),
    /// A list, as text (`[512, 512]`).
    List(String),
}

impl Value {
    /// The value as a number, if it is one.
    pub fn num(&self) -> Option<f64> {
        match self {
            Value::Num(x) => Some(*x),
            _ => None,
        }
    }

    /// The value as text, as a label shows it.
    pub fn label(&self) -> String {
        match self {
            Value::Null => "-".into(),
            Value::Str(s) | Value::List(s) => s.clone(),
            Value::Num(x) => format!("{x}"),
            Value::Bool(b) => b.to_string(),
        }
    }
}

/// One row of a table: column name → value. A column that was not read reads as
/// [`Value::Null`] rather than panicking.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row(BTreeMap<String, Value>);

static NULL: Value = Value::Null;

impl std::ops::Index<&str> for Row {
    type Output = Value;

    fn index(&self, column: &str) -> &Value {
        self.0.get(column).unwrap_or(&NULL)
    }
}

/// A table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Listing or reading storage.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A file that is not Parquet.
    #[error("{key}: {message}")]
    Parquet { key: String, message: String },
}

fn cell(col: &ArrayRef, i: usize) -> Value {
    if col.is_null(i) {
        return Value::Null;
    }
    let any = col.as_any();
    if let Some(a) = any.downcast_ref::<StringArray>() {
        Value::Str(a.value(i).to_owned())
    } else if let Some(a) = any.downcast_ref::<Float64Array>() {
        Value::Num(a.value(i))
    } else if let Some(a) = any.downcast_ref::<UInt64Array>() {
        Value::Num(a.value(i) as f64)
    } else if let Some(a) = any.downcast_ref::<Int32Array>() {
        Value::Num(a.value(i) as f64)
    } else if let Some(a) = any.downcast_ref::<BooleanArray>() {
        Value::Bool(a.value(i))
    } else if let Some(a) = any.downcast_ref::<ListArray>() {
        let inner = a.value(i);
        let items: Vec<String> = (0..inner.len()).map(|j| cell(&inner, j).label()).collect();
        Value::List(format!("[{}]", items.join(", ")))
    } else {
        Value::Null
    }
}

/// The rows of one Parquet file, only `columns` (absent ones read as `Null`).
pub fn read_rows(key: &str, bytes: bytes::Bytes, columns: &[&str]) -> Result<Vec<Row>, ReadError> {
    Ok(read_file(key, bytes, columns)?.0)
}

/// The rows of a summary file (only `columns`) and the coverage record in its footer, if any,
/// read as [`read_table`] reads them before it checks the record.
pub fn read_with_coverage(
    key: &str,
    bytes: bytes::Bytes,
    columns: &[&str],
) -> Result<(Vec<Row>, Option<String>), ReadError> {
    read_file(key, bytes, columns)
}

/// The rows of one Parquet file (only `columns`), and the summary coverage record in its
/// footer, if any.
fn read_file(
    key: &str,
    bytes: bytes::Bytes,
    columns: &[&str],
) -> Result<(Vec<Row>, Option<String>), ReadError> {
    let bad = |e: &dyn std::fmt::Display| ReadError::Parquet {
        key: key.to_owned(),
        message: e.to_string(),
    };
    let file = crate::storage::parquet_file::read(bytes, Some(columns)).map_err(|e| bad(&e))?;
    let coverage = in_footer(file.footer.iter().map(|(k, v)| (k.as_str(), v.as_deref())));
    let mut rows = Vec::new();
    for batch in file.batches {
        for i in 0..batch.num_rows() {
            let row = columns
                .iter()
                .map(|c| {
                    let v = batch.column_by_name(c).map_or(Value::Null, |a| cell(a, i));
                    ((*c).to_owned(), v)
                })
                .collect();
            rows.push(Row(row));
        }
    }
    Ok((rows, coverage))
}

/// `columns` of every committed row of `table` in `sweep`: from the summary file when its
/// coverage record says it is this sweep's `table` holding exactly the committed shards that
/// have the table, else (with a warning when a summary was set aside) from the per-shard
/// files, each of which must hold only its own shard's rows.
pub fn read_table(
    storage: &Storage,
    table: &str,
    sweep: &SweepName,
    columns: &[&str],
) -> Result<Vec<Row>, ReadError> {
    // A table's shards are committed when their kind's marker is published (`runs`, or a
    // pair shard's `pairs`, which is its own marker).
    let kind = crate::storage::attempt::ShardKind::of_table(table).unwrap_or_default();
    let committed = storage.published_shards(kind.commit_table(), sweep)?;
    // The committed shards with a file of this table: every one for the required tables,
    // those that asked for it for an optional one (`plane`, `monotone_path`).
    let present = storage.published_shards(table, sweep)?;
    let expected: Vec<_> = present.intersection(&committed).collect();
    let mut with_shard: Vec<&str> = columns.to_vec();
    if !with_shard.contains(&"shard") {
        with_shard.push("shard");
    }
    let summary = layout::summary_key(table, sweep);
    if storage.size(&summary)?.is_some() {
        let expected = expected.iter().map(|s| s.as_str());
        match read_summary(storage, &summary, (sweep, table), &with_shard, expected) {
            Ok(Some(rows)) => return Ok(rows),
            Ok(None) => {}
            Err(why) => tracing::warn!(
                %summary,
                %why,
                "not using this summary (`linesweep summarize` rebuilds it); reading the \
                 per-shard files"
            ),
        }
    }
    let mut rows = Vec::new();
    for shard in expected {
        let key = layout::result_key(table, sweep, shard);
        let file = read_rows(&key, storage.get(&key)?, &with_shard)?;
        if let Some(other) = file.iter().find(|r| r["shard"].label() != shard.as_str()) {
            return Err(ReadError::Parquet {
                key,
                message: format!(
                    "it holds a row of shard {}, not of shard {shard}",
                    other["shard"].label()
                ),
            });
        }
        rows.extend(file);
    }
    Ok(rows)
}

/// The rows of a summary that can be trusted. `Ok(None)`: it is sound but does not cover
/// `expected` yet (it lags the commits); `Err`: it cannot be used (unreadable, or not what it
/// claims).
fn read_summary<'a>(
    storage: &Storage,
    key: &str,
    (sweep, table): (&SweepName, &str),
    columns: &[&str],
    expected: impl IntoIterator<Item = &'a str>,
) -> Result<Option<Vec<Row>>, String> {
    let bytes = storage.get(key).map_err(|e| e.to_string())?;
    let (rows, coverage) = read_file(key, bytes, columns).map_err(|e| e.to_string())?;
    let coverage = Coverage::parse(coverage.as_deref())?;
    let labels: Vec<String> = rows.iter().map(|r| r["shard"].label()).collect();
    coverage.check(sweep, table, labels.iter().map(String::as_str))?;
    Ok(coverage.covers(expected).then_some(rows))
}

/// The sweeps with at least one committed shard in `storage`.
pub fn sweeps(storage: &Storage) -> Result<Vec<SweepName>, ReadError> {
    let mut out: Vec<SweepName> = storage
        .list(&layout::result_table_prefix(layout::COMMIT_TABLE))?
        .iter()
        .filter_map(|k| layout::parse_result_key(layout::COMMIT_TABLE, k))
        .map(|(s, _)| s)
        .collect();
    out.dedup();
    Ok(out)
}
