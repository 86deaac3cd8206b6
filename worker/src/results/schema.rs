//! The Arrow schema of each result table: the single definition every writer uses.
//!
//! Evolution is additive only: new columns are nullable and appended; nothing is renamed or
//! retyped. Bump [`super::SCHEMA_VERSION`] with every addition.

use std::sync::{Arc, LazyLock};

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

fn f(name: &str, dt: DataType, nullable: bool) -> Field {
    Field::new(name, dt, nullable)
}

fn list_str() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

fn list_u64() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::UInt64, true)))
}

static RUNS: LazyLock<SchemaRef> = LazyLock::new(|| {
    use DataType::{Boolean as B, Float64 as F, Int32 as I32, UInt64 as U, Utf8 as S};
    Arc::new(Schema::new(vec![
        f("schema_version", I32, false),
        f("shard", S, false),
        f("attempt", U, false),
        f("name", S, false),
        f("code_version", S, false),
        f("device", S, false),
        f(
            "finished_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        // The shard config, one column per field.
        f("seed", U, false),
        f("dataset", S, false),
        f("data_dir", S, true),
        f("max_train_examples", U, true),
        f("arch", S, false),
        f("hidden", list_u64(), false),
        f("activation", S, false),
        f("batch_norm", B, false),
        f("optimizer", S, false),
        f("lr", F, false),
        f("momentum", F, false),
        f("nesterov", B, false),
        f("weight_decay", F, false),
        f("beta1", F, false),
        f("beta2", F, false),
        f("eps", F, false),
        f("batch_size", U, false),
        f("epochs", U, false),
        f("schedule", S, false),
        f("milestones", list_u64(), false),
        f("gamma", F, false),
        f("snapshot_every", U, false),
        f("alpha_start", F, false),
        f("alpha_stop", F, false),
        f("alpha_points", U, false),
        f("eval_batch_size", U, false),
        f("eval_max_examples", U, true),
        f("trajectory_train_loss", B, false),
        f("config_json", S, false),
        // What happened.
        f("diverged", B, false),
        f("diverged_step", U, true),
        f("steps", U, false),
        f("parameters", U, false),
        f("train_examples", U, false),
        f("eval_train_examples", U, false),
        f("eval_test_examples", U, false),
        f("train_monotone", B, true),
        f("train_delta_min", F, true),
        f("test_monotone", B, true),
        f("test_delta_min", F, true),
        f("dist_init_final", F, true),
        f("norm_init", F, true),
        f("norm_final", F, true),
        f("init_train_loss", F, true),
        f("init_train_acc", F, true),
        f("init_test_loss", F, true),
        f("init_test_acc", F, true),
        f("final_train_loss", F, true),
        f("final_train_acc", F, true),
        f("final_test_loss", F, true),
        f("final_test_acc", F, true),
        f("ln_k", F, false),
        f("init_below_ln_k", B, true),
        f("alpha_min_train_loss", F, true),
        f("train_samples_per_s", F, false),
        f("line_points_per_s", F, false),
        f("data_s", F, false),
        f("train_s", F, false),
        f("snapshot_s", F, false),
        f("line_s", F, false),
        f("trajectory_s", F, false),
        f("total_s", F, false),
        // Schema version 2.
        f("channels", list_u64(), true),
        f("norm", S, true),
        f("augment", B, true),
        f("image_size", U, true),
        f("precision", S, true),
        f("eval_starts", list_str(), true),
        f("bn_modes", list_str(), true),
        f("bn_batches", U, true),
        f("skipped_images", U, true),
        // Schema version 3.
        f("warmup_s", F, true),
        // Schema version 4.
        f("plane_s", F, true),
        f("monotone_path_s", F, true),
        f("plane_points_per_s", F, true),
        f("pca_explained_x", F, true),
        f("pca_explained_y", F, true),
        f("train_loss_barrier", F, true),
        f("test_error_barrier", F, true),
        f("data_seed", U, true),
    ]))
});

static INTERPOLATION: LazyLock<SchemaRef> = LazyLock::new(|| {
    use DataType::{Float64 as F, Int32 as I32, Utf8 as S};
    Arc::new(Schema::new(vec![
        f("schema_version", I32, false),
        f("shard", S, false),
        f("start", S, false),
        f("alpha", F, false),
        f("split", S, false),
        f("loss", F, true),
        f("accuracy", F, true),
        f("invalid_reason", S, true),
        // Schema version 2.
        f("bn_mode", S, true),
    ]))
});

static TRAJECTORY: LazyLock<SchemaRef> = LazyLock::new(|| {
    use DataType::{Float64 as F, Int32 as I32, UInt64 as U, Utf8 as S};
    Arc::new(Schema::new(vec![
        f("schema_version", I32, false),
        f("shard", S, false),
        f("step", U, false),
        f("epoch", F, false),
        f("alpha_raw", F, false),
        f("alpha_frac", F, false),
        f("beta", F, false),
        f("batch_loss", F, false),
        f("train_loss", F, true),
        // Schema version 4.
        f("pca_x", F, true),
        f("pca_y", F, true),
    ]))
});

static LINES: LazyLock<SchemaRef> = LazyLock::new(|| {
    use DataType::{Boolean as B, Float64 as F, Int32 as I32, UInt64 as U, Utf8 as S};
    Arc::new(Schema::new(vec![
        f("schema_version", I32, false),
        f("shard", S, false),
        f("start", S, false),
        f("bn_mode", S, true),
        f("split", S, false),
        f("points", U, false),
        f("loss_start", F, true),
        f("loss_end", F, true),
        f("error_start", F, true),
        f("error_end", F, true),
        f("monotone", B, true),
        f("delta_min", F, true),
        f("loss_barrier", F, true),
        f("loss_barrier_alpha", F, true),
        f("error_barrier", F, true),
        f("error_barrier_alpha", F, true),
    ]))
});

static PLANE: LazyLock<SchemaRef> = LazyLock::new(|| {
    use DataType::{Float64 as F, Int32 as I32, Utf8 as S};
    Arc::new(Schema::new(vec![
        f("schema_version", I32, false),
        f("shard", S, false),
        f("plane", S, false),
        f("x", F, false),
        f("y", F, false),
        f("split", S, false),
        f("loss", F, true),
        f("accuracy", F, true),
    ]))
});

static MONOTONE_PATH: LazyLock<SchemaRef> = LazyLock::new(|| {
    use DataType::{Boolean as B, Float64 as F, Int32 as I32, Utf8 as S};
    Arc::new(Schema::new(vec![
        f("schema_version", I32, false),
        f("shard", S, false),
        f("bn_mode", S, true),
        f("alpha", F, false),
        f("c_star", F, true),
        f("min_loss", F, true),
        f("scale", F, true),
        f("path_loss", F, true),
        f("check_loss", F, true),
        f("init_above_ln_k", B, false),
        f("invalid_reason", S, true),
    ]))
});

static PAIRS: LazyLock<SchemaRef> = LazyLock::new(|| {
    use DataType::{Float64 as F, Int32 as I32, UInt64 as U, Utf8 as S};
    Arc::new(Schema::new(vec![
        f("schema_version", I32, false),
        f("shard", S, false),
        f("a", S, false),
        f("b", S, false),
        f("bn_mode", S, true),
        f("split", S, false),
        f("alpha", F, false),
        f("loss", F, true),
        f("accuracy", F, true),
        f("invalid_reason", S, true),
        f("loss_barrier", F, true),
        f("loss_barrier_alpha", F, true),
        f("error_barrier", F, true),
        f("error_barrier_alpha", F, true),
        f("attempt", U, false),
        f("config_json", S, false),
    ]))
});

/// One row per shard: its config, its metrics and its timings.
pub fn runs() -> SchemaRef {
    RUNS.clone()
}

/// One row per (start, batch-norm mode, α, split) of the lines.
pub fn interpolation() -> SchemaRef {
    INTERPOLATION.clone()
}

/// One row per snapshot of the training trajectory.
pub fn trajectory() -> SchemaRef {
    TRAJECTORY.clone()
}

/// One row per line (start, batch-norm mode) and split: Δ_min and the barriers.
pub fn lines() -> SchemaRef {
    LINES.clone()
}

/// One row per plane point and split.
pub fn plane() -> SchemaRef {
    PLANE.clone()
}

/// One row per α in [0, 1] of the Safran–Shamir path.
pub fn monotone_path() -> SchemaRef {
    MONOTONE_PATH.clone()
}

/// One row per (batch-norm mode, α, split) of a pair shard's line, with that line's
/// barriers; the table is the pair shard's commit marker.
pub fn pairs() -> SchemaRef {
    PAIRS.clone()
}

/// Every table by name, in documentation order.
pub fn all() -> [(&'static str, SchemaRef); 7] {
    [
        ("runs", runs()),
        ("interpolation", interpolation()),
        ("trajectory", trajectory()),
        ("lines", lines()),
        ("plane", plane()),
        ("monotone_path", monotone_path()),
        ("pairs", pairs()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/results.md documents every column of every table, in a section per table.
    #[test]
    fn every_column_is_documented() {
        let doc = include_str!("../../../docs/results.md");
        for (table, schema) in all() {
            let start = doc
                .find(&format!("## `{table}`"))
                .unwrap_or_else(|| panic!("no section for {table}"));
            let section = &doc[start..];
            let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
            let section = &section[..end];
            for field in schema.fields() {
                assert!(
                    section.contains(&format!("| `{}` |", field.name())),
                    "{table}.{} is not documented",
                    field.name()
                );
            }
        }
    }
}
