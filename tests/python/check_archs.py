"""Checks the architecture sweep of tests/cli_architectures.rs with DuckDB and Polars.

Usage: check_archs.py ROOT SWEEP
Prints one `ok: ...` line, or fails with the first violated expectation.
"""
import sys

import duckdb
import polars as pl

root, sweep = sys.argv[1], sys.argv[2]


def table(name):
    return f"read_parquet('{root}/results/{name}/**/*.parquet', hive_partitioning=true)"


def q(sql):
    return duckdb.sql(sql).fetchall()


runs = q(
    f"select arch, count(*), min(schema_version), bool_and(batch_norm = (arch = 'resnet20')) "
    f"from {table('runs')} where sweep = '{sweep}' group by arch order by arch"
)
assert [(a, n) for a, n, _, _ in runs] == [("cnn", 2), ("mlp", 2), ("resnet20", 2)], runs
assert all(v == 4 and bn for _, _, v, bn in runs), runs
# Schema 3: the first step is timed on its own, within training.
warm = q(f"select count(*) from {table('runs')} where sweep = '{sweep}' and warmup_s > 0 and warmup_s < train_s")
assert warm == [(6,)], warm
# Lines: 2 starts × 5 α × 2 splits, times 2 batch-norm modes for the ResNet only.
lines = q(
    f"select r.arch, count(*), count(distinct (i.shard, i.start, i.bn_mode, i.alpha, i.split)), "
    f"list(distinct i.bn_mode order by i.bn_mode), list(distinct i.start order by i.start) "
    f"from {table('interpolation')} i join {table('runs')} r using (shard) "
    f"where i.sweep = '{sweep}' group by r.arch order by r.arch"
)
expected = {"cnn": 40, "mlp": 40, "resnet20": 80}
for arch, n, distinct, modes, starts in lines:
    assert n == distinct == expected[arch], (arch, n, distinct)
    assert starts == ["init", "step:1"], (arch, starts)
    want = ["interpolate", "recompute"] if arch == "resnet20" else [None]
    assert modes == want, (arch, modes)
# Inside [0, 1] every point has a finite loss and an accuracy in [0, 1].
bad = q(
    f"select count(*) from {table('interpolation')} where sweep = '{sweep}' "
    f"and (loss is null or not isfinite(loss) or accuracy < 0 or accuracy > 1)"
)[0][0]
assert bad == 0, f"{bad} invalid points on [0, 1]"
# The MLP's θ_i predicts nearly uniformly: its loss is near ln 10.
init = q(
    f"select max(abs(i.loss - ln(10))) from {table('interpolation')} i join {table('runs')} r "
    f"using (shard) where i.sweep = '{sweep}' and r.arch = 'mlp' and i.start = 'init' "
    f"and i.alpha = 0"
)[0][0]
assert init < 1.0, init
# The same files read with Polars.
df = pl.read_parquet(f"{root}/results/interpolation/sweep={sweep}/*.parquet")
assert df.height == sum(expected.values()) and "bn_mode" in df.columns, df.shape
print(f"ok: {sum(n for _, n, _, _ in runs)} runs, {df.height} line rows over {len(lines)} architectures")
