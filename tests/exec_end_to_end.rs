//! `linesweep exec` as a user runs it, then the results read back by real DuckDB, Polars and
//! NumPy (tests/python/check_results.py; `.ci/run` installs the packages).

mod common;

use std::time::Duration;

use common::*;

const CONFIG: &str = r#"
name = "e2e"
seed = 3

[model]
hidden = [256, 256]

[train]
epochs = 1
lr = 0.1
batch_size = 128

[snapshot]
every = 20

[eval]
alpha_start = -0.5
alpha_stop = 1.5
alpha_points = 21
monotone_path = true

[eval.plane]
kinds = ["random", "init", "pca"]
points = 5
"#;

#[test]
fn one_epoch_shard_lands_in_duckdb_and_polars() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("shard.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let out = linesweep(
        &["exec", "--config", "shard.toml", "--out", "out"],
        tmp.path(),
        Duration::from_secs(600),
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "exec failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("monotone") && stdout.contains("duckdb -c"),
        "{stdout}"
    );

    // 8,000 / 128 → 63 steps; snapshots at 0, 20, 40, 60 and the final 63.
    let mut cmd = python();
    cmd.arg(repo().join("tests/python/check_results.py"))
        .args(["--root", tmp.path().to_str().unwrap()])
        .args(["--data", repo().join("data/mnist-10k").to_str().unwrap()])
        .args(["--docs", repo().join("docs/results.md").to_str().unwrap()])
        .args(["--alpha-points", "21", "--snapshots", "5", "--layers", "3"]);
    let check = run_with_deadline(cmd, Duration::from_secs(300));
    assert!(
        check.status.success(),
        "result check failed:\n{}\n{}",
        text(&check.stdout),
        text(&check.stderr)
    );
    let report = text(&check.stdout);
    let last = report.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ok: 1 run, 42 line rows, 5 trajectory rows"),
        "{report}"
    );

    // The barriers, the planes (a point recomputed by hand from the saved directions) and the
    // Safran–Shamir path, checked independently with NumPy.
    let mut cmd = python();
    cmd.arg(repo().join("tests/python/check_measurements.py"))
        .args(["--root", tmp.path().to_str().unwrap()])
        .args(["--data", repo().join("data/mnist-10k").to_str().unwrap()])
        .args(["--plane-points", "5", "--layers", "3"]);
    let check = run_with_deadline(cmd, Duration::from_secs(300));
    assert!(
        check.status.success(),
        "measurement check failed:\n{}\n{}",
        text(&check.stdout),
        text(&check.stderr)
    );
    assert!(
        text(&check.stdout).contains("ok: 2 lines, 150 plane rows, 11 path rows"),
        "{}",
        text(&check.stdout)
    );

    // Running the same shard again leaves the results untouched and says so.
    let runs = tmp.path().join("out/results/runs/sweep=exec");
    let before: Vec<_> = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let bytes = std::fs::read(&before[0]).unwrap();
    let again = linesweep(
        &["exec", "--config", "shard.toml", "--out", "out"],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert!(!again.status.success());
    let err = text(&again.stderr);
    assert!(
        err.contains("already has results") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(std::fs::read(&before[0]).unwrap(), bytes);
}
