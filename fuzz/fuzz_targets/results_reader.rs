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

/// libfuzzer-sys's panic hook aborts before any unwinding: the Parquet reader's own panic
/// boundary (`storage::parquet_file`, around a decoder that panics on some damaged files) must
/// be allowed to catch. A panic that escapes the target still aborts it (libfuzzer-sys
/// catches at the top), so crashes are still found.
fn unwind_to_the_reader() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

fuzz_target!(|data: &[u8]| {
    unwind_to_the_reader();
    let bytes = bytes::Bytes::copy_from_slice(data);
    let _ = read_rows(
        "results/runs/sweep=fuzz/0123456789abcdef.parquet",
        bytes,
        COLUMNS,
    );
});
