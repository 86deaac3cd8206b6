"""Reads a shard's results with real DuckDB, Polars and NumPy and checks them.

Run by tests/exec_end_to_end.rs after `linesweep exec` wrote ROOT/out (check_measurements.py
checks the tables its options add). Exits non-zero with a
message on the first failed check. Checks:
- row counts of the three tables in DuckDB and in Polars;
- no nulls where none are allowed (Parquet REQUIRED columns, and metrics of a finished run);
- the α = 0 and α = 1 rows equal an independent NumPy evaluation of the θ_i and θ_c snapshots
  on the full MNIST splits (so names, layouts and the loss are all right);
- the final train loss is below ln 10;
- every SQL and Python example in docs/results.md ("## Querying") runs.
"""

import argparse
import gzip
import json
import math
import os
import re
import struct
import sys

import duckdb
import numpy as np
import polars as pl


def fail(msg):
    print(f"check failed: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dtype = {"F32": np.float32, "I64": np.int64}[info["dtype"]]
        out[name] = np.frombuffer(body[a:b], dtype=dtype).reshape(info["shape"])
    return out, header.get("__metadata__", {})


def read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = struct.unpack(">I", raw[:4])[0]
    if magic == 2051:
        n, r, c = struct.unpack(">III", raw[4:16])
        return np.frombuffer(raw[16:], dtype=np.uint8).reshape(n, r * c)
    n = struct.unpack(">I", raw[4:8])[0]
    return np.frombuffer(raw[8:], dtype=np.uint8)


def load_mnist(data):
    """The normalised train and test splits of the mnist-10k folder, as (x, y) dicts."""
    x, y = {}, {}
    for split, prefix in [("train", "train"), ("test", "t10k")]:
        x[split] = ((read_idx(f"{data}/{prefix}-images-idx3-ubyte.gz") / 255.0 - 0.1307) / 0.3081).astype(np.float64)
        y[split] = read_idx(f"{data}/{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return x, y


def mlp_loss(weights, x, y, layers):
    h = x
    for i in range(layers):
        h = h @ weights[f"layers.{i}.weight"].astype(np.float64).T + weights[f"layers.{i}.bias"]
        if i < layers - 1:
            h = np.maximum(h, 0.0)
    h = h - h.max(axis=1, keepdims=True)
    logp = h - np.log(np.exp(h).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(len(y)), y].mean()
    acc = (h.argmax(axis=1) == y).mean()
    return loss, acc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True, help="directory holding out/")
    ap.add_argument("--data", required=True, help="mnist-10k directory")
    ap.add_argument("--docs", required=True, help="docs/results.md")
    ap.add_argument("--alpha-points", type=int, required=True)
    ap.add_argument("--snapshots", type=int, required=True)
    ap.add_argument("--layers", type=int, required=True)
    args = ap.parse_args()
    os.chdir(args.root)

    con = duckdb.connect()
    q = lambda sql: con.execute(sql).fetchall()
    src = lambda t: f"read_parquet('out/results/{t}/**/*.parquet', hive_partitioning = true)"

    # Row counts.
    runs = q(f"select count(*) from {src('runs')}")[0][0]
    interp = q(f"select count(*) from {src('interpolation')}")[0][0]
    traj = q(f"select count(*) from {src('trajectory')}")[0][0]
    check(runs == 1, f"runs has {runs} rows, expected 1")
    check(interp == 2 * args.alpha_points, f"interpolation has {interp} rows, expected {2 * args.alpha_points}")
    check(traj == args.snapshots, f"trajectory has {traj} rows, expected {args.snapshots}")
    check(q(f"select count(distinct (alpha, split)) from {src('interpolation')}")[0][0] == interp, "duplicate line rows")
    check(q(f"select count(distinct step) from {src('trajectory')}")[0][0] == traj, "duplicate trajectory rows")
    check(q(f"select distinct sweep from {src('runs')}") == [("exec",)], "hive partition `sweep` missing")

    # Nulls: required Parquet columns, and the metrics of a run that finished.
    for table in ["runs", "interpolation", "trajectory"]:
        files = [r[0] for r in q(f"select file from glob('out/results/{table}/**/*.parquet')")]
        check(len(files) == 1, f"{table}: expected one file, found {files}")
        required = [
            r[0]
            for r in q(f"select name from parquet_schema('{files[0]}') where repetition_type = 'REQUIRED'")
        ]
        check(len(required) >= 5, f"{table}: too few required columns {required}")
        for col in required:
            nulls = q(f'select count(*) from {src(table)} where "{col}" is null')[0][0]
            check(nulls == 0, f"{table}.{col} has {nulls} nulls")
    must = [
        "train_monotone", "train_delta_min", "test_monotone", "test_delta_min", "dist_init_final",
        "norm_init", "norm_final", "init_train_loss", "init_test_loss", "final_train_loss",
        "final_train_acc", "final_test_loss", "final_test_acc", "init_below_ln_k", "alpha_min_train_loss",
    ]
    row = q(f"select {', '.join(must)}, diverged from {src('runs')}")[0]
    for name, v in zip(must, row):
        check(v is not None, f"runs.{name} is null in a finished run")
    check(row[-1] is False, "run marked diverged")
    check(q(f"select count(*) from {src('interpolation')} where loss is null or accuracy is null or invalid_reason is not null")[0][0] == 0, "invalid line points without batch norm")

    # The endpoints of the line are the snapshots, evaluated independently.
    shard = q(f"select shard from {src('runs')}")[0][0]
    manifest = json.load(open(f"out/snapshots/{shard}/manifest.json"))
    snaps = manifest["snapshots"]
    check(len(snaps) == args.snapshots, f"manifest lists {len(snaps)} snapshots")
    check(snaps[0]["kind"] == "init" and snaps[-1]["kind"] == "final", f"manifest kinds {snaps[0]}, {snaps[-1]}")
    x, y = load_mnist(args.data)
    for snap, alpha in [(snaps[0], 0.0), (snaps[-1], 1.0)]:
        w, meta = read_safetensors(f"out/snapshots/{shard}/{snap['file']}")
        check(json.loads(meta["linesweep"])["step"] == snap["step"], "snapshot metadata step")
        for split in ["train", "test"]:
            want_loss, want_acc = mlp_loss(w, x[split], y[split], args.layers)
            got_loss, got_acc = q(
                f"select loss, accuracy from {src('interpolation')} where alpha = {alpha} and split = '{split}'"
            )[0]
            check(abs(got_loss - want_loss) < 1e-4 * max(1.0, want_loss), f"α={alpha} {split} loss {got_loss} != numpy {want_loss}")
            check(abs(got_acc - want_acc) < 1.5 / len(y[split]), f"α={alpha} {split} acc {got_acc} != numpy {want_acc}")
    final_train = q(f"select final_train_loss from {src('runs')}")[0][0]
    check(final_train < math.log(10), f"final train loss {final_train} is not below ln 10")
    last_frac, last_beta = q(f"select alpha_frac, beta from {src('trajectory')} order by step desc limit 1")[0]
    check(abs(last_frac - 1.0) < 1e-9 and last_beta < 1e-6, f"θ_c projects to α_frac={last_frac}, β={last_beta}")
    first = q(f"select alpha_frac, beta, step from {src('trajectory')} order by step limit 1")[0]
    check(first == (0.0, 0.0, 0), f"θ_i projects to {first}")

    # Polars reads the same.
    pruns = pl.scan_parquet("out/results/runs/", hive_partitioning=True).collect()
    pinterp = pl.scan_parquet("out/results/interpolation/", hive_partitioning=True).collect()
    ptraj = pl.scan_parquet("out/results/trajectory/", hive_partitioning=True).collect()
    check((pruns.height, pinterp.height, ptraj.height) == (1, interp, traj), "polars row counts differ")
    check(pinterp["loss"].null_count() == 0, "polars sees null losses")
    check(pruns["sweep"][0] == "exec" and len(pruns["hidden"][0].to_list()) == args.layers - 1, "polars columns")

    # The documented queries run.
    doc = open(args.docs).read()
    section = doc[doc.index("## Querying") :]
    section = section[: section.find("\n## ", 5)] if "\n## " in section[5:] else section
    sqls = re.findall(r"```sql\n(.*?)```", section, re.S)
    pys = re.findall(r"```python\n(.*?)```", section, re.S)
    check(len(sqls) >= 3 and len(pys) >= 1, "docs/results.md lost its examples")
    for sql in sqls:
        rows = con.execute(sql).fetchall()
        check(len(rows) >= 1, f"documented query returned nothing:\n{sql}")
    for code in pys:
        exec(compile(code, "docs/results.md", "exec"), {})
    print(f"ok: {runs} run, {interp} line rows, {traj} trajectory rows; duckdb {duckdb.__version__}, polars {pl.__version__}")


if __name__ == "__main__":
    main()
