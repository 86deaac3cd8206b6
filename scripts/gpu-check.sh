#!/usr/bin/env bash
# GPU check, in one call on a GPU machine, with a prepared release binary (builds nothing):
#   1. correctness: `linesweep check-device` on every device the binary has, in f32 and (where
#      the device has it) bf16: the same θ_i and batches trained a few steps on the GPU and on
#      the CPU (an MLP and ResNet-20 with batch norm), losses, every updated tensor and the
#      line's α = 0 / α = 1 rows compared within tolerance. A device that fails is reported,
#      gets no benchmark, and makes the script exit non-zero: its shards cannot be trusted.
#   2. speed: `bench model` training and evaluation images/s, warm-up excluded, for ResNet-20
#      (batch 128, 32×32) and ResNet-50 (224×224, batch 32 and 128), f32 and bf16;
#   3. a whole ResNet-20 CIFAR shard on synthetic data: phase timings (the first-step warm-up,
#      where kernels are tuned, on its own), and the peak device memory seen by nvidia-smi.
#
#   scripts/gpu-check.sh [BINARY]      # default: target/release/linesweep
#   DEVICES="cuda:0" SKIP_RESNET50=1 scripts/gpu-check.sh ./linesweep
#
# Build the binary beforehand on a machine with the toolchain (the GPU machine has none):
#   scripts/setup-llvm.sh                                    # once, for cuda
#   cargo build --release --features vulkan,cuda && strip -o linesweep target/release/linesweep
#   xz -6 -k linesweep                                       # ~36 MB: fits a 64 MiB carry
# Devices the binary was not built for, or that this machine lacks, are reported as skipped.
set -uo pipefail
BIN=${1:-target/release/linesweep}
DEVICES=${DEVICES:-wgpu:0 vulkan:0 cuda:0}
STEPS=${STEPS:-10}
[ -x "$BIN" ] || { echo "no executable at $BIN; build it first (see the header)" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# A fresh tuning cache, so that the shard's warm-up shows what tuning costs on first contact.
export LINESWEEP_TUNE_CACHE="$WORK/tune"
FAILED=""

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
  local log="$WORK/mem.log" sampler=""; : > "$log"
  if command -v nvidia-smi >/dev/null; then
    ( while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> "$log" 2>/dev/null; sleep 0.5; done ) &
    sampler=$!
  fi
  "$@"; local rc=$?
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  echo "peak device memory: $(sort -n "$log" | tail -1) MiB (whole GPU, nvidia-smi)"
  return $rc
}

bench() { # dev precision arch batch size
  timeout 180 "$BIN" -q bench model --device "$1" --precision "$2" --arch "$3" --batch "$4" \
    --size "$5" --steps "$STEPS" 2>&1 | tail -1
}

for dev in $DEVICES; do
  echo "== $dev"
  if ! out=$(timeout 60 "$BIN" -q bench model --arch mlp --batch 8 --size 28 --steps 1 --device "$dev" 2>&1); then
    echo "skipped: $(echo "$out" | tail -1)"; continue
  fi
  precisions="f32"
  if timeout 60 "$BIN" -q bench model --arch mlp --batch 8 --size 28 --steps 1 --device "$dev" --precision bf16 >/dev/null 2>&1; then
    precisions="f32 bf16"
  fi
  ok=1
  for p in $precisions; do
    if ! timeout 300 "$BIN" -q check-device --device "$dev" --precision "$p"; then
      echo "FAILED: $dev $p disagrees with the CPU" >&2; FAILED="$FAILED $dev/$p"; ok=0
    fi
  done
  [ "$ok" = 1 ] || { echo "no benchmarks on $dev: its numbers are wrong"; continue; }
  for p in $precisions; do
    bench "$dev" "$p" resnet20 128 32
    if [ -z "${SKIP_RESNET50:-}" ]; then
      bench "$dev" "$p" resnet50 32 224
      bench "$dev" "$p" resnet50 128 224
    fi
  done
  peak_memory timeout 240 "$BIN" -q bench --config "$WORK/shard.toml" --device "$dev" \
    | python3 -c 'import json,sys; j=json.loads(sys.stdin.readline()); print({k: j[k] for k in j if k.endswith(("_s","per_s","device","steps","seconds")) or k.startswith("timing")})'
done

if [ -n "$FAILED" ]; then
  echo "gpu-check: FAILED on$FAILED: do not trust shards computed there" >&2
  exit 1
fi
echo "gpu-check: every checked device agrees with the CPU"
