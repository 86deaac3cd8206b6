"""Checks a sweep's summary files against its per-shard files with DuckDB.

Usage: check_summaries.py ROOT SWEEP SHARDS
Every table's summary (ROOT/summaries/<table>/sweep=SWEEP/all.parquet) must hold exactly the
rows of the per-shard files (ROOT/results/<table>/sweep=SWEEP/*.parquet): the same number, the
same shards, no row twice, and the same values. Also runs the query docs/results.md shows.
Prints one `ok: ...` line, or fails with the first violated expectation.
"""
import sys

import duckdb

root, sweep, shards = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = duckdb.connect()


def one(sql):
    return con.execute(sql).fetchone()


report = []
for table in ["runs", "interpolation", "trajectory"]:
    shard_files = f"read_parquet('{root}/results/{table}/sweep={sweep}/*.parquet')"
    summary = f"read_parquet('{root}/summaries/{table}/sweep={sweep}/all.parquet')"
    n_files, n_shards = one(f"select count(*), count(distinct shard) from {shard_files}")
    n_sum, n_sum_shards = one(f"select count(*), count(distinct shard) from {summary}")
    assert n_shards == shards, f"{table}: {n_shards} shards in results/, expected {shards}"
    assert (n_sum, n_sum_shards) == (n_files, n_shards), (
        f"{table}: summary has {n_sum} rows of {n_sum_shards} shards, "
        f"results/ has {n_files} of {n_shards}"
    )
    # Same rows, as multisets: nothing missing, nothing extra, nothing twice.
    (diff,) = one(
        f"select count(*) from ((select * from {shard_files} except all select * from {summary}) "
        f"union all (select * from {summary} except all select * from {shard_files}))"
    )
    assert diff == 0, f"{table}: {diff} rows differ between the summary and results/"
    report.append(f"{table} {n_sum} rows")

# The query docs/results.md shows, with DIR replaced.
(runs,) = one(
    "select sum(runs) from (select optimizer, lr, count(*) as runs, avg(train_delta_min) as mean_delta_min "
    f"from read_parquet('{root}/summaries/runs/*/*.parquet', hive_partitioning = true, union_by_name = true) "
    "group by all order by all)"
)
assert runs == shards, f"the documented query counts {runs} runs"
print("ok: " + ", ".join(report))
