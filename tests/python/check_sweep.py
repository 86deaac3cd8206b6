"""Reads a sweep's published results with DuckDB and checks exactly-once visibility.

Usage: check_sweep.py ROOT SWEEP SHARDS ALPHA_POINTS [PAIRS]
SHARDS counts the shards that train (one `runs` row each); PAIRS, the pair shards (their
`pairs` rows, read with DuckDB and with Polars). Prints one `ok: ...` line, or fails with the
first violated expectation.
"""
import sys

import duckdb

root, sweep, shards, points = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
pairs = int(sys.argv[5]) if len(sys.argv) > 5 else 0


def q(sql):
    return duckdb.sql(sql).fetchall()


def table(name):
    return f"read_parquet('{root}/results/{name}/**/*.parquet', hive_partitioning=true)"


runs = q(f"select count(*), count(distinct shard) from {table('runs')} where sweep = '{sweep}'")[0]
assert runs == (shards, shards), f"runs rows/distinct shards: {runs}, expected {shards}"
line = q(
    f"select count(*), count(distinct (shard, alpha, split)) from {table('interpolation')} "
    f"where sweep = '{sweep}'"
)[0]
assert line == (shards * points * 2,) * 2, f"interpolation rows/distinct: {line}"
traj = q(
    f"select count(*), count(distinct (shard, step)) from {table('trajectory')} where sweep = '{sweep}'"
)[0]
assert traj[0] == traj[1] and traj[0] >= 2 * shards, f"trajectory rows/distinct: {traj}"
# Every row names the attempt the coordinator committed (attempts start at 1 under a lease).
zero = q(f"select count(*) from {table('runs')} where sweep = '{sweep}' and attempt < 1")[0][0]
assert zero == 0, f"{zero} runs rows without a lease attempt"
staged = q(f"select count(*) from glob('{root}/results/**/*.parquet') where file like '%staging%'")[0][0]
assert staged == 0, "staging files are visible under results/"
if pairs:
    got = q(
        f"select count(*), count(distinct (shard, alpha, split)), count(distinct shard), "
        f"count(*) filter (where attempt < 1 or loss is null) from {table('pairs')} "
        f"where sweep = '{sweep}'"
    )[0]
    want = (pairs * points * 2, pairs * points * 2, pairs, 0)
    assert got == want, f"pairs rows/distinct/shards/bad: {got}, expected {want}"
    import polars as pl

    frame = pl.read_parquet(f"{root}/results/pairs/sweep={sweep}/*.parquet")
    assert frame.height == want[0], f"Polars reads {frame.height} pairs rows"
    assert set(frame.columns) >= {"shard", "a", "b", "alpha", "error_barrier"}, frame.columns
print(
    f"ok: {runs[0]} runs, {line[0]} line rows, {traj[0]} trajectory rows, "
    f"{pairs * points * 2} pair rows, no duplicates"
)
