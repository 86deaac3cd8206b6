"""Plain PyTorch CPU baseline for the linesweep "default shard".

What it is for
--------------
linesweep trains a small MLP on MNIST, keeps parameter snapshots along the
way, evaluates the loss on the straight line between the initial and final
parameters, and projects the training trajectory onto that line.  This script
does exactly the same work in ordinary PyTorch, with no tricks, and times each
phase, so the Rust implementation can be compared against a well-known
reference on the same machine and the same number of threads.

The work ("default shard"):

* data: the MNIST IDX files in data/mnist-10k (8000 train, 2000 test images),
  normalised as (pixel/255 - 0.1307)/0.3081, flattened to 784, preloaded as
  float32 tensors;
* model: MLP 784-1024-1024-10 with ReLU and PyTorch's default nn.Linear init,
  after torch.manual_seed(seed);
* training: plain SGD (lr 0.1, no momentum, no weight decay), batch 128,
  10 epochs, reshuffled every epoch by a torch.Generator seeded from the seed,
  last partial batch kept (63 steps/epoch, 630 steps), mean cross-entropy;
  an in-memory snapshot of every state_dict tensor before the first step
  (theta_i), after every 10 optimizer steps, and at the end (theta_c);
* line: for each alpha in numpy.linspace(-0.5, 1.5, 41), evaluate
  theta(alpha) = (1 - alpha) theta_i + alpha theta_c on the full train and
  test splits (mean cross-entropy and accuracy, no_grad, eval batch 1000);
* projection (float64, all parameters): d = theta_c - theta_i, u = d/|d|; for
  each snapshot alpha_raw = (theta_t - theta_i).u, alpha_frac = alpha_raw/|d|,
  beta = |theta_t - theta_i - alpha_raw u|.

How to run it
-------------
From the repository root, with the venv described in benches/README.md:

    /work/venv-torch/bin/python benches/pytorch_baseline.py --threads 2

It prints one JSON object on stdout.  Add --matmul-bench for raw fp32 matmul
and MLP fwd+bwd GFLOP/s, and --dump-curves for the full line and projection
arrays.  A quick smoke test: --epochs 1 --alpha-points 5.
"""

import argparse
import gzip
import json
import math
import struct
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "mnist-10k"
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
LAYER_SIZES = (784, 1024, 1024, 10)


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------

def read_idx_images(path):
    """Read a gzipped IDX3 image file; returns uint8 array (n, rows*cols)."""
    with gzip.open(path, "rb") as f:
        buf = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", buf[:16])
    if magic != 2051:
        raise ValueError(f"{path}: bad image magic {magic}, expected 2051")
    pixels = np.frombuffer(buf, dtype=np.uint8, offset=16)
    if pixels.size != n * rows * cols:
        raise ValueError(f"{path}: expected {n * rows * cols} pixels, got {pixels.size}")
    return pixels.reshape(n, rows * cols)


def read_idx_labels(path):
    """Read a gzipped IDX1 label file; returns uint8 array (n,)."""
    with gzip.open(path, "rb") as f:
        buf = f.read()
    magic, n = struct.unpack(">II", buf[:8])
    if magic != 2049:
        raise ValueError(f"{path}: bad label magic {magic}, expected 2049")
    labels = np.frombuffer(buf, dtype=np.uint8, offset=8)
    if labels.size != n:
        raise ValueError(f"{path}: expected {n} labels, got {labels.size}")
    return labels


def load_split(data_dir, prefix):
    """Load one split as (float32 tensor (n, 784), int64 tensor (n,))."""
    pixels = read_idx_images(data_dir / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx_labels(data_dir / f"{prefix}-labels-idx1-ubyte.gz")
    if len(pixels) != len(labels):
        raise ValueError(f"{prefix}: {len(pixels)} images but {len(labels)} labels")
    x = (pixels.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD
    x = torch.from_numpy(x.astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


# ----------------------------------------------------------------------------
# Model and evaluation
# ----------------------------------------------------------------------------

def make_mlp():
    d_in, h1, h2, d_out = LAYER_SIZES
    return nn.Sequential(
        nn.Linear(d_in, h1),
        nn.ReLU(),
        nn.Linear(h1, h2),
        nn.ReLU(),
        nn.Linear(h2, d_out),
    )


def snapshot(model):
    """Detached in-memory copy of every state_dict tensor."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def evaluate(model, x, y, batch_size):
    """Mean cross-entropy and accuracy of `model` on (x, y)."""
    model.eval()
    total_loss = 0.0
    correct = 0
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        yb = y[start:start + batch_size]
        logits = model(xb)
        total_loss += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(dim=1) == yb).sum().item()
    return total_loss / len(x), correct / len(x)


def interpolate(theta_i, theta_c, alpha):
    """theta(alpha) = (1 - alpha) theta_i + alpha theta_c, tensor by tensor."""
    return {k: (1.0 - alpha) * theta_i[k] + alpha * theta_c[k] for k in theta_i}


# ----------------------------------------------------------------------------
# Phases
# ----------------------------------------------------------------------------

def train(model, x, y, args):
    """Plain SGD; returns (snapshots, steps, mean batch loss of last epoch)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.0, weight_decay=0.0)
    shuffle_gen = torch.Generator().manual_seed(args.seed)
    n = len(x)
    snapshots = [snapshot(model)]  # theta_i, before the first step
    steps = 0
    last_epoch_loss = float("nan")
    model.train()
    for _ in range(args.epochs):
        perm = torch.randperm(n, generator=shuffle_gen)
        loss_sum = 0.0
        batches = 0
        for start in range(0, n, args.batch_size):  # last partial batch kept
            idx = perm[start:start + args.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            loss_sum += loss.item()
            batches += 1
            if steps % args.snapshot_every == 0:
                snapshots.append(snapshot(model))
        last_epoch_loss = loss_sum / batches
    if steps % args.snapshot_every != 0:
        snapshots.append(snapshot(model))  # theta_c, unless just taken
    return snapshots, steps, last_epoch_loss


def line_sweep(theta_i, theta_c, alphas, data, eval_batch_size):
    """Evaluate theta(alpha) on both splits for every alpha."""
    model = make_mlp()
    model.eval()
    rows = []
    for alpha in alphas:
        model.load_state_dict(interpolate(theta_i, theta_c, float(alpha)))
        tr_loss, tr_acc = evaluate(model, *data["train"], eval_batch_size)
        te_loss, te_acc = evaluate(model, *data["test"], eval_batch_size)
        rows.append({"alpha": float(alpha), "train_loss": tr_loss, "train_acc": tr_acc,
                     "test_loss": te_loss, "test_acc": te_acc})
    return rows


def flatten64(state):
    """All state_dict tensors concatenated into one float64 vector."""
    return torch.cat([v.reshape(-1).to(torch.float64) for v in state.values()])


def project(snapshots):
    """Project every snapshot onto the line theta_i -> theta_c (float64)."""
    flat_i = flatten64(snapshots[0])
    flat_c = flatten64(snapshots[-1])
    d = flat_c - flat_i
    d_norm = torch.linalg.vector_norm(d).item()
    u = d / d_norm
    alpha_raw, alpha_frac, beta = [], [], []
    for state in snapshots:
        diff = flatten64(state) - flat_i
        a = torch.dot(diff, u).item()
        alpha_raw.append(a)
        alpha_frac.append(a / d_norm)
        beta.append(torch.linalg.vector_norm(diff - a * u).item())
    return {"d_norm": d_norm, "alpha_raw": alpha_raw, "alpha_frac": alpha_frac, "beta": beta}


# ----------------------------------------------------------------------------
# Optional raw-speed micro-benchmarks
# ----------------------------------------------------------------------------

def time_repeated(fn, min_seconds=1.0, warmup=2):
    """Run fn repeatedly for at least min_seconds; returns seconds per call."""
    for _ in range(warmup):
        fn()
    reps = 0
    t0 = time.perf_counter()
    while True:
        fn()
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / reps


def matmul_bench(batch_size):
    gen = torch.Generator().manual_seed(1234)
    n = 2048
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    mm_s = time_repeated(lambda: torch.mm(a, b))
    mm_gflops = 2.0 * n ** 3 / mm_s / 1e9

    model = make_mlp()
    x = torch.randn(batch_size, LAYER_SIZES[0], generator=gen)
    y = torch.randint(0, LAYER_SIZES[-1], (batch_size,), generator=gen)

    def fwd_bwd():
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()

    mlp_s = time_repeated(fwd_bwd)
    # Matmul FLOPs only: forward 2*B*in*out per layer; backward computes the
    # weight gradient of every layer and the input gradient of every layer
    # except the first (the data needs no gradient).
    layers = list(zip(LAYER_SIZES[:-1], LAYER_SIZES[1:]))
    fwd = sum(2 * batch_size * i * o for i, o in layers)
    bwd = fwd + sum(2 * batch_size * i * o for i, o in layers[1:])
    return {
        "matmul_n": n,
        "matmul_seconds": mm_s,
        "matmul_gflops": mm_gflops,
        "mlp_fwd_bwd_batch": batch_size,
        "mlp_fwd_bwd_seconds": mlp_s,
        "mlp_fwd_bwd_gflops": (fwd + bwd) / mlp_s / 1e9,
    }


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="intra- and inter-op threads")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--snapshot-every", type=int, default=10, help="optimizer steps between snapshots")
    p.add_argument("--alpha-points", type=int, default=41, help="points in linspace(-0.5, 1.5, n)")
    p.add_argument("--eval-batch-size", type=int, default=1000)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--matmul-bench", action="store_true",
                   help="also time a 2048^3 fp32 matmul and an MLP fwd+bwd at --batch-size")
    p.add_argument("--dump-curves", action="store_true",
                   help="include the full line and projection arrays in the JSON")
    return p.parse_args()


def point_at(rows, alpha):
    """The line row whose alpha equals `alpha`, or None if not on the grid."""
    for row in rows:
        if math.isclose(row["alpha"], alpha, abs_tol=1e-9):
            return row
    return None


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)

    t_start = time.perf_counter()

    t0 = time.perf_counter()
    data = {"train": load_split(args.data_dir, "train"), "test": load_split(args.data_dir, "t10k")}
    data_load_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    model = make_mlp()
    snapshots, steps, last_epoch_loss = train(model, *data["train"], args)
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    alphas = np.linspace(-0.5, 1.5, args.alpha_points)
    rows = line_sweep(snapshots[0], snapshots[-1], alphas, data, args.eval_batch_size)
    line_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    proj = project(snapshots)
    projection_s = time.perf_counter() - t0

    total_s = time.perf_counter() - t_start

    # alpha = 0 and 1 are on the default grid; if a custom grid misses them,
    # evaluate them here, outside the timed phases.
    ends = {}
    for alpha in (0.0, 1.0):
        row = point_at(rows, alpha)
        if row is None:
            row = line_sweep(snapshots[0], snapshots[-1], [alpha], data, args.eval_batch_size)[0]
        ends[alpha] = row

    n_train = len(data["train"][0])
    result = {
        "impl": "pytorch",
        "torch_version": torch.__version__,
        "threads": args.threads,
        "interop_threads": torch.get_num_interop_threads(),
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "eval_batch_size": args.eval_batch_size,
        "n_train": n_train,
        "n_test": len(data["test"][0]),
        "seconds": {
            "data_load": data_load_s,
            "train": train_s,
            "line": line_s,
            "projection": projection_s,
            "total": total_s,
        },
        "train_samples_per_s": args.epochs * n_train / train_s,
        "line_points_per_s": len(alphas) / line_s,
        "steps": steps,
        "snapshots": len(snapshots),
        "alpha_points": len(alphas),
        "last_epoch_mean_batch_loss": last_epoch_loss,
        "final_train_loss": ends[1.0]["train_loss"],
        "final_train_acc": ends[1.0]["train_acc"],
        "final_test_loss": ends[1.0]["test_loss"],
        "final_test_acc": ends[1.0]["test_acc"],
        "loss_alpha0": {"train": ends[0.0]["train_loss"], "test": ends[0.0]["test_loss"]},
        "loss_alpha1": {"train": ends[1.0]["train_loss"], "test": ends[1.0]["test_loss"]},
        "projection": {
            "d_norm": proj["d_norm"],
            "final_alpha_frac": proj["alpha_frac"][-1],
            "max_beta": max(proj["beta"]),
        },
    }
    if args.dump_curves:
        result["line"] = rows
        result["projection"].update(proj)
    if args.matmul_bench:
        result["matmul_bench"] = matmul_bench(args.batch_size)

    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
