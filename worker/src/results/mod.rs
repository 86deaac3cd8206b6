//! The three result tables (`runs`, `interpolation`, `trajectory`) as Arrow record batches
//! and zstd-compressed Parquet files.
//!
//! **Architecture invariant:** this is the only module that knows Arrow and Parquet. Each
//! table has exactly one schema, defined in [`schema`]; schemas only ever gain nullable
//! columns at the end, and every row carries [`SCHEMA_VERSION`]. Columns are documented in
//! `docs/results.md` (a test keeps the two in step).

pub mod schema;

use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder, UInt64Builder};
use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt64Array,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::config::ShardConfig;
use crate::engine::{SPLITS, ShardOutcome};

/// Version of the result schemas; bump when a column is added.
pub const SCHEMA_VERSION: i32 = 3;

/// Encoding a table failed (a schema/encoder mismatch or a Parquet error).
#[derive(Debug, thiserror::Error)]
#[error("encoding the `{table}` table: {message}")]
pub struct ResultsError {
    /// Table name.
    pub table: &'static str,
    /// What failed.
    pub message: String,
}

/// What identifies a run in every table.
#[derive(Debug, Clone)]
pub struct RunKey<'a> {
    /// Shard id.
    pub shard: &'a str,
    /// Attempt number of the shard (0 for `linesweep exec`).
    pub attempt: u32,
}

fn batch(
    table: &'static str,
    schema: arrow_schema::SchemaRef,
    cols: Vec<ArrayRef>,
) -> Result<RecordBatch, ResultsError> {
    RecordBatch::try_new(schema, cols).map_err(|e| ResultsError {
        table,
        message: e.to_string(),
    })
}

fn f64s(v: impl IntoIterator<Item = f64>) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values(v))
}
fn opt_f64s(v: impl IntoIterator<Item = Option<f64>>) -> ArrayRef {
    Arc::new(v.into_iter().collect::<Float64Array>())
}
fn strs<'a>(v: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(v.into_iter().map(Some).collect::<StringArray>())
}
fn u64s(v: impl IntoIterator<Item = u64>) -> ArrayRef {
    Arc::new(UInt64Array::from_iter_values(v))
}
fn str_list<'a>(v: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new());
    for x in v {
        b.values().append_value(x);
    }
    b.append(true);
    Arc::new(b.finish())
}
fn versions(n: usize) -> ArrayRef {
    Arc::new(Int32Array::from(vec![SCHEMA_VERSION; n]))
}

/// The one-row `runs` batch of a shard.
pub fn runs_batch(
    key: &RunKey<'_>,
    cfg: &ShardConfig,
    out: &ShardOutcome,
    finished_at_micros: i64,
) -> Result<RecordBatch, ResultsError> {
    let m = &out.metrics;
    let t = &cfg.train;
    let e = &cfg.eval;
    let one_f = |v: f64| f64s([v]);
    let one_of = |v: Option<f64>| opt_f64s([v]);
    let one_s = |v: &str| strs([v]);
    let one_u = |v: u64| u64s([v]);
    let one_ou = |v: Option<u64>| -> ArrayRef { Arc::new(UInt64Array::from(vec![v])) };
    let one_b = |v: bool| -> ArrayRef { Arc::new(BooleanArray::from(vec![v])) };
    let one_ob = |v: Option<bool>| -> ArrayRef { Arc::new(BooleanArray::from(vec![v])) };
    let list = |v: &[usize]| -> ArrayRef {
        let mut b = ListBuilder::new(UInt64Builder::new());
        b.values()
            .append_slice(&v.iter().map(|&x| x as u64).collect::<Vec<_>>());
        b.append(true);
        Arc::new(b.finish())
    };
    let shape = |i: usize| m.shape[i];
    let la = |v: Option<crate::engine::LossAcc>| (v.map(|x| x.loss), v.map(|x| x.accuracy));
    let (it_l, it_a) = la(m.initial[0]);
    let (iv_l, iv_a) = la(m.initial[1]);
    let (ft_l, ft_a) = la(m.last[0]);
    let (fv_l, fv_a) = la(m.last[1]);
    let cols: Vec<ArrayRef> = vec![
        versions(1),
        one_s(key.shard),
        Arc::new(UInt64Array::from(vec![u64::from(key.attempt)])),
        one_s(&cfg.name),
        one_s(crate::CODE_VERSION),
        one_s(&out.device),
        Arc::new(TimestampMicrosecondArray::from(vec![finished_at_micros]).with_timezone("UTC")),
        // Config.
        one_u(cfg.seed),
        one_s(cfg.data.dataset.as_str()),
        Arc::new(StringArray::from(vec![
            cfg.data.dir.as_ref().map(|d| d.display().to_string()),
        ])),
        one_ou(cfg.data.max_train_examples.map(|v| v as u64)),
        one_s(cfg.model.arch.as_str()),
        list(&cfg.model.hidden),
        one_s(cfg.model.activation.as_str()),
        one_b(cfg.model.batch_norm()),
        one_s(t.optimizer.as_str()),
        one_f(t.lr),
        one_f(t.momentum),
        one_b(t.nesterov),
        one_f(t.weight_decay),
        one_f(t.beta1),
        one_f(t.beta2),
        one_f(t.eps),
        one_u(t.batch_size as u64),
        one_u(t.epochs as u64),
        one_s(t.schedule.as_str()),
        list(&t.milestones),
        one_f(t.gamma),
        one_u(cfg.snapshot.every as u64),
        one_f(e.alpha_start),
        one_f(e.alpha_stop),
        one_u(e.alpha_points as u64),
        one_u(e.batch_size as u64),
        one_ou(e.max_examples.map(|v| v as u64)),
        one_b(e.trajectory_train_loss),
        one_s(&cfg.canonical_json()),
        // Outcome.
        one_b(m.diverged),
        one_ou(m.diverged_step),
        one_u(m.steps),
        one_u(m.parameters),
        one_u(m.train_examples),
        one_u(m.eval_examples[0]),
        one_u(m.eval_examples[1]),
        one_ob(shape(0).map(|s| s.monotone)),
        one_of(shape(0).map(|s| s.delta_min)),
        one_ob(shape(1).map(|s| s.monotone)),
        one_of(shape(1).map(|s| s.delta_min)),
        one_of(m.dist_init_final),
        one_of(m.norm_init),
        one_of(m.norm_final),
        one_of(it_l),
        one_of(it_a),
        one_of(iv_l),
        one_of(iv_a),
        one_of(ft_l),
        one_of(ft_a),
        one_of(fv_l),
        one_of(fv_a),
        one_f(m.ln_k),
        one_ob(it_l.map(|l| l < m.ln_k)),
        one_of(m.alpha_min_train_loss),
        one_f(m.train_samples_per_s),
        one_f(m.line_points_per_s),
        one_f(m.timings.data),
        one_f(m.timings.train),
        one_f(m.timings.snapshots),
        one_f(m.timings.line),
        one_f(m.timings.trajectory),
        one_f(m.timings.total),
        // Added in schema version 2.
        list(&cfg.model.channels),
        one_s(
            cfg.model
                .norm
                .unwrap_or(cfg.model.arch.default_norm())
                .as_str(),
        ),
        one_b(cfg.data.augment),
        one_u(cfg.data.image_size as u64),
        one_s(t.precision.as_str()),
        str_list(e.starts.iter().map(String::as_str)),
        str_list(e.bn_modes.iter().map(|m| m.as_str())),
        one_u(e.bn_batches as u64),
        one_u(m.skipped_images),
        // Added in schema version 3.
        one_f(m.timings.warmup),
    ];
    batch("runs", schema::runs(), cols)
}

/// The `interpolation` batch of a shard: one row per (start, batch-norm mode, α, split).
pub fn interpolation_batch(
    key: &RunKey<'_>,
    out: &ShardOutcome,
) -> Result<RecordBatch, ResultsError> {
    let n = out.line.len();
    let cols: Vec<ArrayRef> = vec![
        versions(n),
        strs(std::iter::repeat_n(key.shard, n)),
        strs(out.line.iter().map(|p| p.start.as_str())),
        f64s(out.line.iter().map(|p| p.alpha)),
        strs(out.line.iter().map(|p| SPLITS[p.split])),
        opt_f64s(out.line.iter().map(|p| p.value.map(|v| v.loss))),
        opt_f64s(out.line.iter().map(|p| p.value.map(|v| v.accuracy))),
        Arc::new(
            out.line
                .iter()
                .map(|p| p.invalid_reason)
                .collect::<StringArray>(),
        ),
        Arc::new(
            out.line
                .iter()
                .map(|p| p.bn_mode.map(|m| m.as_str()))
                .collect::<StringArray>(),
        ),
    ];
    batch("interpolation", schema::interpolation(), cols)
}

/// The `trajectory` batch of a shard: one row per snapshot.
pub fn trajectory_batch(key: &RunKey<'_>, out: &ShardOutcome) -> Result<RecordBatch, ResultsError> {
    let rows = &out.trajectory;
    let n = rows.len();
    let cols: Vec<ArrayRef> = vec![
        versions(n),
        strs(std::iter::repeat_n(key.shard, n)),
        u64s(rows.iter().map(|r| r.step)),
        f64s(rows.iter().map(|r| r.epoch)),
        f64s(rows.iter().map(|r| r.alpha_raw)),
        f64s(rows.iter().map(|r| r.alpha_frac)),
        f64s(rows.iter().map(|r| r.beta)),
        f64s(rows.iter().map(|r| r.batch_loss)),
        opt_f64s(rows.iter().map(|r| r.train_loss)),
    ];
    batch("trajectory", schema::trajectory(), cols)
}

/// Encodes a batch as a zstd-compressed Parquet file in memory, so that it can be published
/// with a single create-only put.
pub fn to_parquet(table: &'static str, batch: &RecordBatch) -> Result<Vec<u8>, ResultsError> {
    let err = |e: parquet::errors::ParquetError| ResultsError {
        table,
        message: e.to_string(),
    };
    let level = ZstdLevel::try_new(3).map_err(err)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).map_err(err)?;
    w.write(batch).map_err(err)?;
    w.close().map_err(err)?;
    Ok(buf)
}

/// The few `runs` columns a sweep summary needs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Shard id.
    pub shard: String,
    /// Training stopped on a non-finite loss.
    pub diverged: bool,
    /// Whether the train loss is monotone along the line.
    pub train_monotone: Option<bool>,
    /// Δ_min of the train line.
    pub train_delta_min: Option<f64>,
    /// Test accuracy at θ_c.
    pub final_test_acc: Option<f64>,
}

/// Reads the summary columns of every row of a `runs` Parquet file.
pub fn read_run_summaries(bytes: bytes::Bytes) -> Result<Vec<RunSummary>, ResultsError> {
    use arrow_array::Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let err = |message: String| ResultsError {
        table: "runs",
        message,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| err(e.to_string()))?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| err(format!("no column `{name}`")))
        };
        let shard = col("shard")?;
        let shard = shard
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| err("`shard` is not a string column".into()))?;
        let bools = |name: &str| -> Result<BooleanArray, ResultsError> {
            col(name)?
                .as_any()
                .downcast_ref::<BooleanArray>()
                .cloned()
                .ok_or_else(|| err(format!("`{name}` is not a boolean column")))
        };
        let floats = |name: &str| -> Result<Float64Array, ResultsError> {
            col(name)?
                .as_any()
                .downcast_ref::<Float64Array>()
                .cloned()
                .ok_or_else(|| err(format!("`{name}` is not a float column")))
        };
        let (diverged, monotone) = (bools("diverged")?, bools("train_monotone")?);
        let (delta, acc) = (floats("train_delta_min")?, floats("final_test_acc")?);
        for i in 0..batch.num_rows() {
            let get_f = |a: &Float64Array| (!a.is_null(i)).then(|| a.value(i));
            out.push(RunSummary {
                shard: shard.value(i).to_owned(),
                diverged: !diverged.is_null(i) && diverged.value(i),
                train_monotone: (!monotone.is_null(i)).then(|| monotone.value(i)),
                train_delta_min: get_f(&delta),
                final_test_acc: get_f(&acc),
            });
        }
    }
    Ok(out)
}
