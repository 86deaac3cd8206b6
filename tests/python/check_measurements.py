"""Checks the `lines`, `plane` and `monotone_path` tables and the plane directions of one
MLP shard with real DuckDB, Polars and NumPy, independently of the Rust code.

Run by tests/exec_end_to_end.rs after `linesweep exec` wrote ROOT/out with `[eval.plane]`
(kinds random, init, pca) and `eval.monotone_path = true`. Checks:
- the barriers of `lines` against the barrier recomputed from the `interpolation` rows;
- a point of the random plane recomputed by hand from θ_c and the saved directions;
- every filter of the random directions has θ_c's norm, and biases get 0;
- the init plane's δ is θ_i − θ_c;
- the Safran–Shamir path never rises, starts and ends at scale 1, and its re-evaluated loss
  equals M(α);
- the PCA trajectory columns and explained variances;
- Polars reads the three tables with the same row counts.
"""

import argparse
import json
import os
import sys

import duckdb
import numpy as np
import polars as pl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_results import check, load_mnist, mlp_loss, read_safetensors  # noqa: E402


def barrier(alphas, values):
    v0 = values[alphas.index(0.0)]
    v1 = values[alphas.index(1.0)]
    return max(v - ((1 - a) * v0 + a * v1) for a, v in zip(alphas, values))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--plane-points", type=int, required=True)
    ap.add_argument("--layers", type=int, required=True)
    args = ap.parse_args()
    os.chdir(args.root)
    con = duckdb.connect()
    q = lambda sql: con.execute(sql).fetchall()
    src = lambda t: f"read_parquet('out/results/{t}/**/*.parquet', hive_partitioning = true)"
    shard = q(f"select shard from {src('runs')}")[0][0]
    snaps = json.load(open(f"out/snapshots/{shard}/manifest.json"))["snapshots"]
    load = lambda name: read_safetensors(f"out/snapshots/{shard}/{name}")[0]
    theta_i, theta_c = load(snaps[0]["file"]), load(snaps[-1]["file"])

    # Barriers, from the interpolation rows on [0, 1].
    lines = q(f"select split, loss_barrier, error_barrier, loss_start, loss_end, points from {src('lines')} order by split")
    check(len(lines) == 2, f"lines has {len(lines)} rows, expected 2")
    for split, lb, eb, l0, l1, points in lines:
        pts = q(
            f"select alpha, loss, accuracy from {src('interpolation')} "
            f"where split = '{split}' and alpha between 0 and 1 order by alpha"
        )
        check(points == len(pts), f"{split}: points {points} != {len(pts)}")
        alphas = [p[0] for p in pts]
        want_l = barrier(alphas, [p[1] for p in pts])
        want_e = barrier(alphas, [1 - p[2] for p in pts])
        check(abs(lb - want_l) < 1e-12 and abs(eb - want_e) < 1e-12, f"{split} barriers {lb}, {eb} != {want_l}, {want_e}")
        check(lb >= 0 and eb >= 0, "negative barrier")
        check((l0, l1) == (pts[0][1], pts[-1][1]), f"{split} endpoint losses")
    runs_barrier = q(f"select train_loss_barrier from {src('runs')}")[0][0]
    check(runs_barrier == [r for r in lines if r[0] == "train"][0][1], "runs.train_loss_barrier != lines")

    # Planes.
    n = args.plane_points
    counts = dict(q(f"select plane, count(*) from {src('plane')} group by plane"))
    check(counts == {"random": 2 * n * n, "init": 2 * n * n, "pca": 2 * n * n}, f"plane rows {counts}")
    dx, dy = load("plane-random-x.safetensors"), load("plane-random-y.safetensors")
    for name, w in theta_c.items():
        if w.ndim > 1:
            for d in (dx, dy):
                got = np.linalg.norm(d[name].reshape(len(w), -1).astype(np.float64), axis=1)
                want = np.linalg.norm(w.reshape(len(w), -1).astype(np.float64), axis=1)
                check(np.allclose(got, want, rtol=1e-4), f"{name}: filter norms {got[:3]} != θ_c's {want[:3]}")
        elif name.endswith("bias"):
            check(not dx[name].any() and not dy[name].any(), f"{name} has a non-zero direction")
    x, y = load_mnist(args.data)
    grid = np.linspace(-1, 1, n)
    px, py = float(grid[n - 1]), float(grid[1])
    point = {k: theta_c[k].astype(np.float64) + px * dx[k] + py * dy[k] for k in theta_c}
    for split in ["train", "test"]:
        want_loss, want_acc = mlp_loss(point, x[split], y[split], args.layers)
        got = q(
            f"select loss, accuracy from {src('plane')} where plane = 'random' and split = '{split}' "
            f"and abs(x - {px}) < 1e-12 and abs(y - {py}) < 1e-12"
        )
        check(len(got) == 1, f"no plane row at ({px}, {py})")
        check(abs(got[0][0] - want_loss) < 1e-4 * max(1, want_loss), f"plane ({px}, {py}) {split}: {got[0][0]} != numpy {want_loss}")
        check(abs(got[0][1] - want_acc) < 1.5 / len(y[split]), f"plane accuracy {got[0][1]} != {want_acc}")
    init_x = load("plane-init-x.safetensors")
    for k in theta_c:
        if not k.endswith("num_batches_tracked"):
            check(np.allclose(init_x[k], theta_i[k] - theta_c[k], atol=1e-6), f"init plane δ[{k}] != θ_i − θ_c")

    # The Safran–Shamir path.
    path = q(f"select alpha, scale, path_loss, check_loss, init_above_ln_k from {src('monotone_path')} order by alpha")
    check(len(path) == lines[0][5], f"monotone_path has {len(path)} rows")
    check(all(r[4] for r in path), "the precondition L(θ_i) > ln K did not hold for this seed")
    values = [r[2] for r in path]
    check(all(b <= a + 1e-12 for a, b in zip(values, values[1:])), f"the path rises: {values}")
    check(all(abs(r[3] - r[2]) < 1e-4 for r in path), f"re-evaluated losses differ: {path}")
    check(path[0][1] == 1.0 and abs(path[-1][1] - 1.0) < 1e-6, f"scales at the ends {path[0][1]}, {path[-1][1]}")

    # PCA.
    traj = q(f"select pca_x, pca_y from {src('trajectory')} order by step")
    check(all(a is not None and b is not None for a, b in traj), "null PCA coordinates")
    check(traj[-1] == (0.0, 0.0) and traj[0][0] > 0, f"θ_c / θ_i in the PCA plane: {traj[-1]}, {traj[0]}")
    ex, ey = q(f"select pca_explained_x, pca_explained_y from {src('runs')}")[0]
    check(0 < ey <= ex and ex + ey <= 1 + 1e-9, f"explained variance {ex}, {ey}")

    # Polars.
    for table, rows in [("lines", 2), ("plane", 6 * n * n), ("monotone_path", len(path))]:
        df = pl.scan_parquet(f"out/results/{table}/", hive_partitioning=True).collect()
        check(df.height == rows, f"polars reads {df.height} rows of {table}, expected {rows}")
    print(f"ok: 2 lines, {6 * n * n} plane rows, {len(path)} path rows; pca explains {ex:.3f} + {ey:.3f}")


if __name__ == "__main__":
    main()
