//! The result tables (`runs`, `interpolation`, `trajectory`, `lines`, and with their
//! options `plane` and `monotone_path`) as Arrow record batches and zstd-compressed Parquet
//! files.
//!
//! **Architecture invariant:** this is the only module that knows Arrow and Parquet. Each
//! table has exactly one schema, defined in [`schema`]; schemas only ever gain nullable
//! columns at the end, and every row carries [`SCHEMA_VERSION`]. Columns are documented in
//! `docs/results.md` (a test keeps the two in step).

pub mod read;
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
use crate::engine::{LinePoint, LineSummary, PathRow, SPLITS, ShardOutcome};

/// Version of the result schemas; bump when a column is added.
pub const SCHEMA_VERSION: i32 = 4;

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

/// A batch of `schema` from columns given by name: each is put where the schema has it, so a
/// column can never land in another's place (two `f64` columns swapped would still type-check
/// by position). A column missing, unknown or given twice is an error.
fn batch(
    table: &'static str,
    schema: arrow_schema::SchemaRef,
    cols: Vec<(&str, ArrayRef)>,
) -> Result<RecordBatch, ResultsError> {
    let err = |message: String| ResultsError { table, message };
    let mut by_name = std::collections::HashMap::with_capacity(cols.len());
    for (name, col) in cols {
        if by_name.insert(name, col).is_some() {
            return Err(err(format!("column `{name}` given twice")));
        }
    }
    let ordered = schema
        .fields()
        .iter()
        .map(|f| {
            by_name
                .remove(f.name().as_str())
                .ok_or_else(|| err(format!("no value for column `{}`", f.name())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(extra) = by_name.keys().next() {
        return Err(err(format!("`{extra}` is not a column of the schema")));
    }
    RecordBatch::try_new(schema, ordered).map_err(|e| err(e.to_string()))
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
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("schema_version", versions(1)),
        ("shard", one_s(key.shard)),
        (
            "attempt",
            Arc::new(UInt64Array::from(vec![u64::from(key.attempt)])),
        ),
        ("name", one_s(&cfg.name)),
        ("code_version", one_s(crate::CODE_VERSION)),
        ("device", one_s(&out.device)),
        (
            "finished_at",
            Arc::new(
                TimestampMicrosecondArray::from(vec![finished_at_micros]).with_timezone("UTC"),
            ),
        ),
        // Config.
        ("seed", one_u(cfg.seed)),
        ("dataset", one_s(cfg.data.dataset.as_str())),
        (
            "data_dir",
            Arc::new(StringArray::from(vec![
                cfg.data.dir.as_ref().map(|d| d.display().to_string()),
            ])),
        ),
        (
            "max_train_examples",
            one_ou(cfg.data.max_train_examples.map(|v| v as u64)),
        ),
        ("arch", one_s(cfg.model.arch.as_str())),
        ("hidden", list(&cfg.model.hidden)),
        ("activation", one_s(cfg.model.activation.as_str())),
        ("batch_norm", one_b(cfg.model.batch_norm())),
        ("optimizer", one_s(t.optimizer.as_str())),
        ("lr", one_f(t.lr)),
        ("momentum", one_f(t.momentum)),
        ("nesterov", one_b(t.nesterov)),
        ("weight_decay", one_f(t.weight_decay)),
        ("beta1", one_f(t.beta1)),
        ("beta2", one_f(t.beta2)),
        ("eps", one_f(t.eps)),
        ("batch_size", one_u(t.batch_size as u64)),
        ("epochs", one_u(t.epochs as u64)),
        ("schedule", one_s(t.schedule.as_str())),
        ("milestones", list(&t.milestones)),
        ("gamma", one_f(t.gamma)),
        ("snapshot_every", one_u(cfg.snapshot.every as u64)),
        ("alpha_start", one_f(e.alpha_start)),
        ("alpha_stop", one_f(e.alpha_stop)),
        ("alpha_points", one_u(e.alpha_points as u64)),
        ("eval_batch_size", one_u(e.batch_size as u64)),
        (
            "eval_max_examples",
            one_ou(e.max_examples.map(|v| v as u64)),
        ),
        ("trajectory_train_loss", one_b(e.trajectory_train_loss)),
        ("config_json", one_s(&cfg.canonical_json())),
        // Outcome.
        ("diverged", one_b(m.diverged)),
        ("diverged_step", one_ou(m.diverged_step)),
        ("steps", one_u(m.steps)),
        ("parameters", one_u(m.parameters)),
        ("train_examples", one_u(m.train_examples)),
        ("eval_train_examples", one_u(m.eval_examples[0])),
        ("eval_test_examples", one_u(m.eval_examples[1])),
        ("train_monotone", one_ob(shape(0).map(|s| s.monotone))),
        ("train_delta_min", one_of(shape(0).map(|s| s.delta_min))),
        ("test_monotone", one_ob(shape(1).map(|s| s.monotone))),
        ("test_delta_min", one_of(shape(1).map(|s| s.delta_min))),
        ("dist_init_final", one_of(m.dist_init_final)),
        ("norm_init", one_of(m.norm_init)),
        ("norm_final", one_of(m.norm_final)),
        ("init_train_loss", one_of(it_l)),
        ("init_train_acc", one_of(it_a)),
        ("init_test_loss", one_of(iv_l)),
        ("init_test_acc", one_of(iv_a)),
        ("final_train_loss", one_of(ft_l)),
        ("final_train_acc", one_of(ft_a)),
        ("final_test_loss", one_of(fv_l)),
        ("final_test_acc", one_of(fv_a)),
        ("ln_k", one_f(m.ln_k)),
        ("init_below_ln_k", one_ob(it_l.map(|l| l < m.ln_k))),
        ("alpha_min_train_loss", one_of(m.alpha_min_train_loss)),
        ("train_samples_per_s", one_f(m.train_samples_per_s)),
        ("line_points_per_s", one_f(m.line_points_per_s)),
        ("data_s", one_f(m.timings.data)),
        ("train_s", one_f(m.timings.train)),
        ("snapshot_s", one_f(m.timings.snapshots)),
        ("line_s", one_f(m.timings.line)),
        ("trajectory_s", one_f(m.timings.trajectory)),
        ("total_s", one_f(m.timings.total)),
        // Added in schema version 2.
        ("channels", list(&cfg.model.channels)),
        (
            "norm",
            one_s(
                cfg.model
                    .norm
                    .unwrap_or(cfg.model.arch.default_norm())
                    .as_str(),
            ),
        ),
        ("augment", one_b(cfg.data.augment)),
        ("image_size", one_u(cfg.data.image_size as u64)),
        ("precision", one_s(t.precision.as_str())),
        ("eval_starts", str_list(e.starts.iter().map(String::as_str))),
        ("bn_modes", str_list(e.bn_modes.iter().map(|m| m.as_str()))),
        ("bn_batches", one_u(e.bn_batches as u64)),
        ("skipped_images", one_u(m.skipped_images)),
        // Added in schema version 3.
        ("warmup_s", one_f(m.timings.warmup)),
        // Added in schema version 4.
        (
            "plane_s",
            one_of(cfg.eval.plane.is_some().then_some(m.timings.plane)),
        ),
        (
            "monotone_path_s",
            one_of(e.monotone_path.then_some(m.timings.path)),
        ),
        ("plane_points_per_s", one_of(m.plane_points_per_s)),
        ("pca_explained_x", one_of(m.pca_explained.map(|v| v[0]))),
        ("pca_explained_y", one_of(m.pca_explained.map(|v| v[1]))),
        (
            "train_loss_barrier",
            one_of(primary_barrier(out, 0, |l| l.loss_barrier)),
        ),
        (
            "test_error_barrier",
            one_of(primary_barrier(out, 1, |l| l.error_barrier)),
        ),
        ("data_seed", one_ou(t.data_seed)),
    ];
    batch("runs", schema::runs(), cols)
}

/// The barrier of the run's first line (first start, first mode) on `split`.
fn primary_barrier(
    out: &ShardOutcome,
    split: usize,
    which: fn(&LineSummary) -> Option<crate::science::Barrier>,
) -> Option<f64> {
    let first = out.lines.first()?;
    out.lines
        .iter()
        .find(|l| l.start == first.start && l.bn_mode == first.bn_mode && l.split == split)
        .and_then(which)
        .map(|b| b.height)
}

/// The `lines` batch of a shard: one row per (start, batch-norm mode, split).
pub fn lines_batch(key: &RunKey<'_>, out: &ShardOutcome) -> Result<RecordBatch, ResultsError> {
    let rows = &out.lines;
    let n = rows.len();
    let f = |g: fn(&LineSummary) -> Option<f64>| opt_f64s(rows.iter().map(g));
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("schema_version", versions(n)),
        ("shard", strs(std::iter::repeat_n(key.shard, n))),
        ("start", strs(rows.iter().map(|r| r.start.as_str()))),
        ("bn_mode", bn_modes(rows.iter().map(|r| r.bn_mode))),
        ("split", strs(rows.iter().map(|r| SPLITS[r.split]))),
        ("points", u64s(rows.iter().map(|r| r.points))),
        ("loss_start", f(|r| r.ends[0].map(|v| v.loss))),
        ("loss_end", f(|r| r.ends[1].map(|v| v.loss))),
        ("error_start", f(|r| r.ends[0].map(|v| 1.0 - v.accuracy))),
        ("error_end", f(|r| r.ends[1].map(|v| 1.0 - v.accuracy))),
        (
            "monotone",
            Arc::new(
                rows.iter()
                    .map(|r| r.shape.map(|s| s.monotone))
                    .collect::<BooleanArray>(),
            ),
        ),
        ("delta_min", f(|r| r.shape.map(|s| s.delta_min))),
        ("loss_barrier", f(|r| r.loss_barrier.map(|b| b.height))),
        ("loss_barrier_alpha", f(|r| r.loss_barrier.map(|b| b.alpha))),
        ("error_barrier", f(|r| r.error_barrier.map(|b| b.height))),
        (
            "error_barrier_alpha",
            f(|r| r.error_barrier.map(|b| b.alpha)),
        ),
    ];
    batch("lines", schema::lines(), cols)
}

/// The `pairs` batch of a pair shard: one row per (batch-norm mode, α, split) of its line,
/// each with the barriers of its (batch-norm mode, split) line.
pub fn pairs_batch(
    key: &RunKey<'_>,
    cfg: &ShardConfig,
    out: &ShardOutcome,
) -> Result<RecordBatch, ResultsError> {
    let err = |message: String| ResultsError {
        table: "pairs",
        message,
    };
    let pair = cfg
        .pair
        .as_ref()
        .ok_or_else(|| err("the shard is not a pair shard".into()))?;
    let rows = &out.line;
    let n = rows.len();
    let summary = |p: &LinePoint| {
        out.lines
            .iter()
            .find(|l| l.bn_mode == p.bn_mode && l.split == p.split)
    };
    let barrier =
        |g: fn(&LineSummary) -> Option<f64>| opt_f64s(rows.iter().map(|p| summary(p).and_then(g)));
    let config = cfg.canonical_json();
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("schema_version", versions(n)),
        ("shard", strs(std::iter::repeat_n(key.shard, n))),
        ("a", strs(std::iter::repeat_n(pair.a.as_str(), n))),
        ("b", strs(std::iter::repeat_n(pair.b.as_str(), n))),
        ("bn_mode", bn_modes(rows.iter().map(|r| r.bn_mode))),
        ("split", strs(rows.iter().map(|r| SPLITS[r.split]))),
        ("alpha", f64s(rows.iter().map(|r| r.alpha))),
        (
            "loss",
            opt_f64s(rows.iter().map(|r| r.value.map(|v| v.loss))),
        ),
        (
            "accuracy",
            opt_f64s(rows.iter().map(|r| r.value.map(|v| v.accuracy))),
        ),
        (
            "invalid_reason",
            Arc::new(
                rows.iter()
                    .map(|r| r.invalid_reason)
                    .collect::<StringArray>(),
            ),
        ),
        (
            "loss_barrier",
            barrier(|l| l.loss_barrier.map(|b| b.height)),
        ),
        (
            "loss_barrier_alpha",
            barrier(|l| l.loss_barrier.map(|b| b.alpha)),
        ),
        (
            "error_barrier",
            barrier(|l| l.error_barrier.map(|b| b.height)),
        ),
        (
            "error_barrier_alpha",
            barrier(|l| l.error_barrier.map(|b| b.alpha)),
        ),
        (
            "attempt",
            u64s(std::iter::repeat_n(u64::from(key.attempt), n)),
        ),
        ("config_json", strs(std::iter::repeat_n(config.as_str(), n))),
    ];
    batch("pairs", schema::pairs(), cols)
}

/// The `plane` batch of a shard: one row per point and split.
pub fn plane_batch(key: &RunKey<'_>, out: &ShardOutcome) -> Result<RecordBatch, ResultsError> {
    let rows = &out.plane;
    let n = rows.len();
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("schema_version", versions(n)),
        ("shard", strs(std::iter::repeat_n(key.shard, n))),
        ("plane", strs(rows.iter().map(|r| r.kind.as_str()))),
        ("x", f64s(rows.iter().map(|r| r.x))),
        ("y", f64s(rows.iter().map(|r| r.y))),
        ("split", strs(rows.iter().map(|r| SPLITS[r.split]))),
        (
            "loss",
            opt_f64s(rows.iter().map(|r| r.value.map(|v| v.loss))),
        ),
        (
            "accuracy",
            opt_f64s(rows.iter().map(|r| r.value.map(|v| v.accuracy))),
        ),
    ];
    batch("plane", schema::plane(), cols)
}

/// The `monotone_path` batch of a shard: one row per α in [0, 1].
pub fn monotone_path_batch(
    key: &RunKey<'_>,
    out: &ShardOutcome,
) -> Result<RecordBatch, ResultsError> {
    let rows = &out.path;
    let n = rows.len();
    let f = |g: fn(&PathRow) -> Option<f64>| opt_f64s(rows.iter().map(g));
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("schema_version", versions(n)),
        ("shard", strs(std::iter::repeat_n(key.shard, n))),
        ("bn_mode", bn_modes(rows.iter().map(|r| r.bn_mode))),
        ("alpha", f64s(rows.iter().map(|r| r.alpha))),
        ("c_star", f(|r| r.c_star)),
        ("min_loss", f(|r| r.min_loss)),
        ("scale", f(|r| r.scale)),
        ("path_loss", f(|r| r.path_loss)),
        ("check_loss", f(|r| r.check_loss)),
        (
            "init_above_ln_k",
            Arc::new(BooleanArray::from(
                rows.iter().map(|r| r.precondition).collect::<Vec<_>>(),
            )),
        ),
        (
            "invalid_reason",
            Arc::new(
                rows.iter()
                    .map(|r| r.invalid_reason)
                    .collect::<StringArray>(),
            ),
        ),
    ];
    batch("monotone_path", schema::monotone_path(), cols)
}

fn bn_modes(v: impl Iterator<Item = Option<crate::config::BnMode>>) -> ArrayRef {
    Arc::new(v.map(|m| m.map(|m| m.as_str())).collect::<StringArray>())
}

/// The `interpolation` batch of a shard: one row per (start, batch-norm mode, α, split).
pub fn interpolation_batch(
    key: &RunKey<'_>,
    out: &ShardOutcome,
) -> Result<RecordBatch, ResultsError> {
    let n = out.line.len();
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("schema_version", versions(n)),
        ("shard", strs(std::iter::repeat_n(key.shard, n))),
        ("start", strs(out.line.iter().map(|p| p.start.as_str()))),
        ("alpha", f64s(out.line.iter().map(|p| p.alpha))),
        ("split", strs(out.line.iter().map(|p| SPLITS[p.split]))),
        (
            "loss",
            opt_f64s(out.line.iter().map(|p| p.value.map(|v| v.loss))),
        ),
        (
            "accuracy",
            opt_f64s(out.line.iter().map(|p| p.value.map(|v| v.accuracy))),
        ),
        (
            "invalid_reason",
            Arc::new(
                out.line
                    .iter()
                    .map(|p| p.invalid_reason)
                    .collect::<StringArray>(),
            ),
        ),
        (
            "bn_mode",
            Arc::new(
                out.line
                    .iter()
                    .map(|p| p.bn_mode.map(|m| m.as_str()))
                    .collect::<StringArray>(),
            ),
        ),
    ];
    batch("interpolation", schema::interpolation(), cols)
}

/// The `trajectory` batch of a shard: one row per snapshot.
pub fn trajectory_batch(key: &RunKey<'_>, out: &ShardOutcome) -> Result<RecordBatch, ResultsError> {
    let rows = &out.trajectory;
    let n = rows.len();
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("schema_version", versions(n)),
        ("shard", strs(std::iter::repeat_n(key.shard, n))),
        ("step", u64s(rows.iter().map(|r| r.step))),
        ("epoch", f64s(rows.iter().map(|r| r.epoch))),
        ("alpha_raw", f64s(rows.iter().map(|r| r.alpha_raw))),
        ("alpha_frac", f64s(rows.iter().map(|r| r.alpha_frac))),
        ("beta", f64s(rows.iter().map(|r| r.beta))),
        ("batch_loss", f64s(rows.iter().map(|r| r.batch_loss))),
        ("train_loss", opt_f64s(rows.iter().map(|r| r.train_loss))),
        ("pca_x", opt_f64s(rows.iter().map(|r| r.pca.map(|p| p.0)))),
        ("pca_y", opt_f64s(rows.iter().map(|r| r.pca.map(|p| p.1)))),
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

/// The barriers of one line of a pair shard, as its `pairs` rows carry them.
#[derive(Debug, Clone, PartialEq)]
pub struct PairBarrier {
    /// `train` or `test`.
    pub split: String,
    /// Batch-norm mode (`None` without batch norm).
    pub bn_mode: Option<String>,
    /// Loss barrier.
    pub loss_barrier: Option<f64>,
    /// Error barrier.
    pub error_barrier: Option<f64>,
}

/// One [`PairBarrier`] per (split, batch-norm mode) of a pair shard's `pairs` file, in the
/// order of its rows.
pub fn read_pair_barriers(bytes: bytes::Bytes) -> Result<Vec<PairBarrier>, ResultsError> {
    use arrow_array::Array;
    let err = |message: String| ResultsError {
        table: "pairs",
        message,
    };
    let reader = crate::storage::parquet_file::read(bytes, None)
        .map_err(err)?
        .batches;
    let mut out: Vec<PairBarrier> = Vec::new();
    for batch in reader {
        let text = |name: &str| -> Result<StringArray, ResultsError> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
                .ok_or_else(|| err(format!("no string column `{name}`")))
        };
        let float = |name: &str| -> Result<Float64Array, ResultsError> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<Float64Array>().cloned())
                .ok_or_else(|| err(format!("no float column `{name}`")))
        };
        let (split, mode) = (text("split")?, text("bn_mode")?);
        let (loss, error) = (float("loss_barrier")?, float("error_barrier")?);
        for i in 0..batch.num_rows() {
            let get = |a: &Float64Array| (!a.is_null(i)).then(|| a.value(i));
            let row = PairBarrier {
                split: split.value(i).to_owned(),
                bn_mode: (!mode.is_null(i)).then(|| mode.value(i).to_owned()),
                loss_barrier: get(&loss),
                error_barrier: get(&error),
            };
            if !out
                .iter()
                .any(|p| p.split == row.split && p.bn_mode == row.bn_mode)
            {
                out.push(row);
            }
        }
    }
    Ok(out)
}

/// Reads the summary columns of every row of a `runs` Parquet file.
pub fn read_run_summaries(bytes: bytes::Bytes) -> Result<Vec<RunSummary>, ResultsError> {
    use arrow_array::Array;
    let err = |message: String| ResultsError {
        table: "runs",
        message,
    };
    let reader = crate::storage::parquet_file::read(bytes, None)
        .map_err(err)?
        .batches;
    let mut out = Vec::new();
    for batch in reader {
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

#[cfg(test)]
mod by_name_tests {
    use super::*;

    fn trajectory_cols() -> Vec<(&'static str, ArrayRef)> {
        vec![
            ("schema_version", versions(1)),
            ("shard", strs(["s"])),
            ("step", u64s([7])),
            ("epoch", f64s([0.5])),
            ("alpha_raw", f64s([0.1])),
            ("alpha_frac", f64s([0.2])),
            ("beta", f64s([0.3])),
            ("batch_loss", f64s([0.4])),
            ("train_loss", opt_f64s([None])),
            ("pca_x", opt_f64s([None])),
            ("pca_y", opt_f64s([None])),
        ]
    }

    #[test]
    fn columns_land_where_the_schema_names_them() {
        // Given in reverse order, every value still lands in its own column.
        let mut cols = trajectory_cols();
        cols.reverse();
        let b = batch("trajectory", schema::trajectory(), cols).unwrap();
        let f = |name: &str| {
            b.column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .value(0)
        };
        assert_eq!(
            (f("alpha_raw"), f("alpha_frac"), f("beta")),
            (0.1, 0.2, 0.3)
        );
        let mut missing = trajectory_cols();
        missing.retain(|(n, _)| *n != "beta");
        let e = batch("trajectory", schema::trajectory(), missing).unwrap_err();
        assert!(e.to_string().contains("`beta`"), "{e}");
        let mut extra = trajectory_cols();
        extra.push(("gamma", f64s([1.0])));
        let e = batch("trajectory", schema::trajectory(), extra).unwrap_err();
        assert!(e.to_string().contains("`gamma`"), "{e}");
    }
}
