#!/usr/bin/env bash
# Side-by-side benchmark of the default shard: linesweep against the plain PyTorch baseline,
# alternating runs so that machine noise hits both alike. Prints one JSON line per run, then
# the median of each phase and the ratio linesweep/PyTorch.
#
#   benches/compare.sh [REPEATS] [THREADS]
#
# Needs a release build (cargo build --release) and a PyTorch venv (benches/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}
threads=${2:-2}
python=${TORCH_PYTHON:-/work/venv-torch/bin/python}
out=$(mktemp)
for i in $(seq "$repeats"); do
  RAYON_NUM_THREADS=$threads ./target/release/linesweep -q bench | tee -a "$out"
  "$python" benches/pytorch_baseline.py --threads "$threads" | python3 -c 'import json,sys; d=json.load(sys.stdin); d["impl"]="pytorch"; print(json.dumps(d))' | tee -a "$out"
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ours = [r for r in rows if r["impl"] == "linesweep"]
torch = [r for r in rows if r["impl"] == "pytorch"]
med = lambda xs: statistics.median(xs)
o = {k: med([r["seconds"][k] for r in ours]) for k in ["train", "snapshots", "line", "trajectory", "total"]}
t = {k: med([r["seconds"][k] for r in torch]) for k in ["train", "line", "projection", "total"]}
print(f"runs: {len(ours)} linesweep, {len(torch)} pytorch (medians, seconds)")
print(f"linesweep: train {o['train']:.2f} (snapshots {o['snapshots']:.2f}) line {o['line']:.2f} trajectory {o['trajectory']:.2f} total {o['total']:.2f}")
print(f"pytorch:   train {t['train']:.2f} line {t['line']:.2f} projection {t['projection']:.2f} total {t['total']:.2f}")
print(f"ratio linesweep/pytorch: train {o['train']/t['train']:.2f} line {o['line']/t['line']:.2f} total {o['total']/t['total']:.2f}")
PY
