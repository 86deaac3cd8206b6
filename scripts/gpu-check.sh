#!/usr/bin/env bash
# GPU check: a ResNet-20 CIFAR shard on synthetic data, on wgpu, vulkan and cuda, with a
# prepared release binary. Builds nothing; finishes in under 5 minutes.
#
#   scripts/gpu-check.sh [BINARY]     # default: target/release/linesweep
#
# Build the binary beforehand on a machine with the toolchain:
#   cargo build --release --features vulkan        (implies wgpu; add ,cuda where the CUDA
#                                                   toolkit is installed and GitHub is
#                                                   reachable: see the README)
# Prints, per device: training and evaluation images/s of `bench model` (ResNet-20, batch 128,
# 32×32; f32, then bf16 where the device supports it), the phase timings of a whole shard
# (train, line) and the peak device memory seen by nvidia-smi while it ran. Devices the binary
# was not built for are reported as skipped.
set -uo pipefail
BIN=${1:-target/release/linesweep}
[ -x "$BIN" ] || { echo "no executable at $BIN; build it first (see the header)" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$BIN" -q data synth cifar10 --dir "$WORK/cifar" --examples 2560 >/dev/null || exit 1
cat > "$WORK/shard.toml" <<TOML
seed = 1
[data]
dataset = "cifar10"
dir = "$WORK/cifar"
[model]
arch = "resnet20"
[train]
epochs = 2
batch_size = 128
lr = 0.1
momentum = 0.9
[snapshot]
every = 10
[eval]
max_examples = 512
batch_size = 256
alpha_points = 11
alpha_start = 0.0
alpha_stop = 1.0
bn_modes = ["interpolate", "recompute"]
TOML

peak_memory() { # runs "$@", prints the peak GPU memory (MiB) seen while it ran
  local log="$WORK/mem.log"; : > "$log"
  if command -v nvidia-smi >/dev/null; then
    ( while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> "$log" 2>/dev/null; sleep 0.5; done ) &
    local sampler=$!
  fi
  "$@"; local rc=$?
  [ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null
  echo "peak device memory: $(sort -n "$log" | tail -1) MiB (whole GPU, nvidia-smi)"
  return $rc
}

for dev in wgpu:0 vulkan:0 cuda:0; do
  echo "== $dev"
  if ! out=$(timeout 60 "$BIN" -q bench model --arch resnet20 --batch 128 --size 32 --steps 1 --device "$dev" 2>&1); then
    echo "skipped: $(echo "$out" | tail -1)"; continue
  fi
  peak_memory timeout 120 "$BIN" -q bench model --arch resnet20 --batch 128 --size 32 --steps 20 --device "$dev"
  # Mixed precision (bf16 forward passes over f32 weights), where the device has bf16.
  timeout 120 "$BIN" -q bench model --arch resnet20 --batch 128 --size 32 --steps 20 --device "$dev" \
    --precision bf16 2>&1 | tail -1
  peak_memory timeout 120 "$BIN" -q bench --config "$WORK/shard.toml" --device "$dev" \
    | python3 -c 'import json,sys; j=json.loads(sys.stdin.readline()); print({k: j[k] for k in j if k.endswith(("_s","per_s","device","steps","seconds")) or k.startswith("timing")})'
done
