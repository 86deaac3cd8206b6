"""Reads a sweep's results back over the S3 protocol (boto3 against the test's server),
then queries them with DuckDB: every shard exactly once in every table, nothing left in
staging. Prints `ok: N runs ...` or raises.

usage: check_s3.py ENDPOINT BUCKET PREFIX SWEEP SHARDS
"""

import os
import sys
import tempfile

import boto3
import duckdb

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

with tempfile.TemporaryDirectory() as tmp:
    for k in keys(f"{prefix}/results/"):
        path = os.path.join(tmp, k[len(prefix) + 1 :])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, k, path)
    con = duckdb.connect()
    glob = lambda t: f"read_parquet('{tmp}/results/{t}/sweep={sweep}/*.parquet')"
    runs = con.execute(f"select count(*), count(distinct shard) from {glob('runs')}").fetchone()
    assert runs == (shards, shards), f"runs: {runs} rows/shards, expected {shards}"
    for table in ["interpolation", "trajectory"]:
        per = con.execute(
            f"select count(distinct shard), count(distinct n) from "
            f"(select shard, count(*) n from {glob(table)} group by shard)"
        ).fetchone()
        assert per == (shards, 1), f"{table}: {per} (shards, distinct row counts)"
    acc = con.execute(f"select min(final_test_acc) from {glob('runs')}").fetchone()[0]
    assert acc > 0.5, f"final test accuracy {acc}"
    snaps = [k for k in everything if k.startswith(f"{prefix}/snapshots/")]
    assert len({k.split("/")[-2] for k in snaps}) == shards, "snapshots of every shard"
    print(f"ok: {shards} runs, each once in every table, min test acc {acc:.4f}, "
          f"{len(snaps)} snapshot objects")
