//! The Parquet reader behind `plot` and `report`: a per-shard results file, every column of
//! every table.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linesweep_worker::results::read::read_rows;

const COLUMNS: &[&str] = &[
    "shard",
    "sweep",
    "seed",
    "optimizer",
    "lr",
    "alpha",
    "loss",
    "accuracy",
    "split",
    "start",
    "train_monotone",
    "train_delta_min",
    "final_test_acc",
    "diverged",
    "step",
    "beta",
    "barrier",
    "config_json",
    "attempt",
    "schema_version",
    "hidden",
];

fuzz_target!(|data: &[u8]| {
    let bytes = bytes::Bytes::copy_from_slice(data);
    let _ = read_rows(
        "results/runs/sweep=fuzz/0123456789abcdef.parquet",
        bytes,
        COLUMNS,
    );
});
