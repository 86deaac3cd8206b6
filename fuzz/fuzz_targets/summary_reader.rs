//! The summary reader: a summary's Parquet rows and the coverage record in its footer (what
//! sweep, table and shards it holds), checked as `plot`, `report` and `summarize` check it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linesweep_storage::coverage::Coverage;
use linesweep_storage::ids::SweepName;
use linesweep_worker::results::read::read_with_coverage;

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
    let key = "summaries/runs/sweep=fuzz/all.parquet";
    if let Ok((rows, coverage)) =
        read_with_coverage(key, bytes, &["shard", "sweep", "final_test_acc"])
    {
        if let Ok(c) = Coverage::parse(coverage.as_deref()) {
            let sweep = SweepName::parse("seed".to_owned()).unwrap();
            let named: Vec<String> = rows.iter().map(|r| r["shard"].label()).collect();
            let _ = c.check(&sweep, "runs", named.iter().map(String::as_str));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Coverage::parse(Some(text));
    }
});
