"""Queries over a 10,000-shard sweep: the per-shard files against the per-sweep summaries.

Usage: query_summaries.py LINESWEEP RESULTS [--shards N] [--pairs K]

RESULTS is a results location holding at least one committed shard (for example the
quickstart's `linesweep-results`). The script copies one real shard's three files N times
(default 10,000) under a new sweep, `bench-summaries`, in a scratch folder next to nothing
else; writes the summaries with `LINESWEEP summarize`; then times the two queries of issue 11
with DuckDB, alternating the per-shard glob and the summary K times (default 3), each in a
fresh connection. Prints one JSON object. The copies keep the original shard id inside the
files, which changes nothing about the cost of reading them.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import tempfile
import time

import duckdb

TABLES = ["runs", "interpolation", "trajectory"]
SWEEP = "bench-summaries"


def layout(src_root, dst_root, n):
    first = sorted(glob.glob(f"{src_root}/results/runs/sweep=*/*.parquet"))[0]
    sweep_dir = os.path.basename(os.path.dirname(first))
    shard = os.path.basename(first)
    for table in TABLES:
        src = f"{src_root}/results/{table}/{sweep_dir}/{shard}"
        dst_dir = f"{dst_root}/results/{table}/sweep={SWEEP}"
        os.makedirs(dst_dir)
        for i in range(n):
            shutil.copyfile(src, f"{dst_dir}/{i:016x}.parquet")


def timed(sql):
    con = duckdb.connect()
    t = time.perf_counter()
    con.execute(sql).fetchall()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("linesweep")
    ap.add_argument("results")
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args()
    scratch = tempfile.mkdtemp(prefix="linesweep-bench-")
    try:
        layout(args.results, scratch, args.shards)
        t = time.perf_counter()
        subprocess.run(
            [args.linesweep, "-q", "summarize", SWEEP, "--results", scratch],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        summarize_s = time.perf_counter() - t
        per_shard = lambda table: f"read_parquet('{scratch}/results/{table}/sweep={SWEEP}/*.parquet')"
        summary = lambda table: f"read_parquet('{scratch}/summaries/{table}/sweep={SWEEP}/all.parquet')"
        queries = {
            "runs count/avg": lambda src: f"select count(*), avg(final_test_acc), avg(train_delta_min) from {src('runs')}",
            "interpolation group-by": lambda src: (
                f"select split, alpha, avg(loss), avg(accuracy) from {src('interpolation')} group by all"
            ),
        }
        out = {"shards": args.shards, "summarize_s": round(summarize_s, 2), "queries": {}}
        for name, q in queries.items():
            a, b = [], []
            for _ in range(args.pairs):
                a.append(timed(q(per_shard)))
                b.append(timed(q(summary)))
            out["queries"][name] = {
                "per_shard_s": [round(x, 3) for x in a],
                "summary_s": [round(x, 3) for x in b],
                "ratio_median": round(sorted(a)[len(a) // 2] / sorted(b)[len(b) // 2], 1),
            }
        sizes = {
            t: os.path.getsize(f"{scratch}/summaries/{t}/sweep={SWEEP}/all.parquet") for t in TABLES
        }
        out["summary_bytes"] = sizes
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
