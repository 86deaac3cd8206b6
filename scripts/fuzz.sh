#!/usr/bin/env bash
# Builds linesweep's fuzz targets (fuzz/) and runs each for SECONDS (default 60), one after
# another, starting from the seed corpora in fuzz/seeds/<target> (examples, test data,
# files linesweep writes) and growing fuzz/corpus/<target> (not committed). A crash leaves
# its input in fuzz/artifacts/<target>/ and fails the script; every crash found becomes a
# regression test.
#
# The stable toolchain suffices: libfuzzer-sys links libFuzzer, and the coverage
# instrumentation cargo fuzz would add is passed here as stable codegen flags (no sanitizer:
# the targets are safe Rust, and a panic or abort is what is looked for; overflow checks and
# debug assertions are on in fuzz/Cargo.toml's release profile).
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
triple=$(rustc -vV | sed -n "s/^host: //p")
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(sweep_spec shard_config idx cifar snapshot attempt_manifest results_reader summary_reader)
fi

export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
# With an explicit --target the flags reach only the targets' code, not build scripts and
# proc macros (which would not link without libFuzzer).
cargo build --release --locked --manifest-path fuzz/Cargo.toml --bins --target "$triple"

bash fuzz/make-seeds.sh
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    echo "fuzzing $t for ${seconds}s"
    # -rss_limit_mb: a plan or a decoded dataset may be large; 4 GiB is a leak, not a size.
    "fuzz/target/$triple/release/$t" "fuzz/corpus/$t" "fuzz/seeds/$t" \
        -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 -max_len=262144 \
        -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 2>&1 \
        | grep -E "^(#[0-9]+ +(DONE|INITED)|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==|SUMMARY|thread .* panicked|Test unit written)" || true
    if [[ -n "$(ls -A "fuzz/artifacts/$t")" ]]; then
        echo "fuzz target $t crashed; inputs in fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
