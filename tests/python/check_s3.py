"""Queries a sweep's results over the S3 protocol with DuckDB's httpfs extension (the signed
build that the `duckdb-extension-httpfs` package carries, so nothing is downloaded): every
shard exactly once in every table, in the per-shard files and in the summaries; boto3 lists
what else is there (nothing left in staging, no probe objects). Prints `ok: N runs ...` or
raises.

usage: check_s3.py ENDPOINT BUCKET PREFIX SWEEP SHARDS
"""

import os
import sys
from urllib.parse import urlparse

import boto3
import duckdb
import duckdb_extension_httpfs

endpoint, bucket, prefix, sweep, shards = sys.argv[1:6]
shards = int(shards)
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
    aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    region_name="us-east-1",
)


def keys(under):
    out, token = [], None
    while True:
        kw = {"Bucket": bucket, "Prefix": under}
        if token:
            kw["ContinuationToken"] = token
        page = s3.list_objects_v2(**kw)
        out += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]


everything = keys(prefix + "/")
staging = [k for k in everything if k.startswith(f"{prefix}/staging/")]
assert not staging, f"staging left after every commit: {staging[:5]}"
probes = [k for k in everything if "/.linesweep-probe-" in k]
assert not probes, f"probe objects left: {probes}"

httpfs = os.path.join(
    os.path.dirname(duckdb_extension_httpfs.__file__),
    f"extensions/v{duckdb.__version__}/httpfs.duckdb_extension",
)
assert os.path.exists(httpfs), (
    f"no httpfs for DuckDB {duckdb.__version__} in duckdb-extension-httpfs: install the same "
    "version of both (scripts/test-deps.sh pins them)"
)
con = duckdb.connect()
con.execute(f"load '{httpfs}'")
url = urlparse(endpoint)
con.execute(
    f"create secret (type s3, key_id '{os.environ['AWS_ACCESS_KEY_ID']}', "
    f"secret '{os.environ['AWS_SECRET_ACCESS_KEY']}', endpoint '{url.netloc}', "
    f"url_style 'path', use_ssl {str(url.scheme == 'https').lower()}, region 'us-east-1')"
)
glob = lambda t: f"read_parquet('s3://{bucket}/{prefix}/results/{t}/sweep={sweep}/*.parquet')"
summary = lambda t: f"read_parquet('s3://{bucket}/{prefix}/summaries/{t}/sweep={sweep}/all.parquet')"
runs = con.execute(f"select count(*), count(distinct shard) from {glob('runs')}").fetchone()
assert runs == (shards, shards), f"runs: {runs} rows/shards, expected {shards}"
for table in ["runs", "interpolation", "trajectory"]:
    if table != "runs":
        per = con.execute(
            f"select count(distinct shard), count(distinct n) from "
            f"(select shard, count(*) n from {glob(table)} group by shard)"
        ).fetchone()
        assert per == (shards, 1), f"{table}: {per} (shards, distinct row counts)"
    (diff,) = con.execute(
        f"select count(*) from ((select * from {glob(table)} except all select * from {summary(table)}) "
        f"union all (select * from {summary(table)} except all select * from {glob(table)}))"
    ).fetchone()
    assert diff == 0, f"{table}: the summary on S3 differs from the per-shard files by {diff} rows"
acc = con.execute(f"select min(final_test_acc) from {glob('runs')}").fetchone()[0]
assert acc > 0.5, f"final test accuracy {acc}"
snaps = [k for k in everything if k.startswith(f"{prefix}/snapshots/")]
assert len({k.split("/")[-2] for k in snaps}) == shards, "snapshots of every shard"
print(f"ok: {shards} runs, each once in every table and in the summaries (DuckDB over S3), "
      f"min test acc {acc:.4f}, {len(snaps)} snapshot objects")
