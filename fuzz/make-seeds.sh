#!/usr/bin/env bash
# The text seeds come from the shipped examples, copied at each run so that they never go
# stale; the binary seeds (fuzz/seeds/*) were cut from a one-shard sweep and the built-in
# sample (fuzz/README.md says how).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p seeds/sweep_spec seeds/shard_config
for f in ../examples/*.toml; do
    cp "$f" "seeds/sweep_spec/example-$(basename "$f")"
    cp "$f" "seeds/shard_config/example-$(basename "$f")"
done
