//! `linesweep plan` on the shipped example and on a broken spec.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn example_sweep_plans_six_shards() {
    let o = linesweep(
        &["plan", "examples/mnist-mli.toml"],
        &repo(),
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.lines()
            .last()
            .unwrap_or_default()
            .starts_with("sweep mnist-mli: 6 shards"),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains(" sgd ")).count(),
        3,
        "{out}"
    );
    let json = linesweep(
        &["plan", "examples/mnist-mli.toml", "--json"],
        &repo(),
        Duration::from_secs(60),
    );
    let lines: Vec<serde_json::Value> = text(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert!(
        lines
            .iter()
            .all(|l| l["sweep"] == "mnist-mli" && l["config"]["model"]["hidden"][0] == 512)
    );
}

#[test]
fn broken_spec_is_one_error_line() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("s.toml"),
        "name = \"s\"\n[grid]\nseed = [0]\nlearnin_rate = [0.1]\n",
    )
    .unwrap();
    let o = linesweep(&["plan", "s.toml"], tmp.path(), Duration::from_secs(60));
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.starts_with("error: s.toml:4: field `grid.learnin_rate`") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn what_could_only_fail_in_a_worker_is_refused_by_plan() {
    // A start after the end of training (the built-in sample has 8,000 examples: 63 steps
    // per epoch at batch 128), and a network of 10¹⁶ parameters: both used to train (or
    // abort on a 313 GB allocation) three times in a worker before the shard failed.
    let tmp = tempfile::tempdir().unwrap();
    for (body, field) in [
        (
            "[train]\nbatch_size = 128\nepochs = 2\n[eval]\nstarts = [\"init\", \"step:5000\"]\n",
            "field `eval.starts`",
        ),
        (
            "[model]\nhidden = [100000000, 100000000]\n",
            "field `model.hidden`",
        ),
    ] {
        std::fs::write(
            tmp.path().join("s.toml"),
            format!("name = \"s\"\n[grid]\nseed = [0, 1]\n{body}"),
        )
        .unwrap();
        let o = linesweep(&["plan", "s.toml"], tmp.path(), Duration::from_secs(60));
        assert!(!o.status.success());
        let err = text(&o.stderr);
        assert!(
            err.starts_with("error: s.toml") && err.contains(field) && err.lines().count() == 1,
            "{err}"
        );
    }
}

#[test]
fn architecture_examples_plan_with_normalised_configs() {
    for (file, shards) in [
        ("examples/cifar10-resnet.toml", 12),
        ("examples/imagenet-resnet50.toml", 1),
    ] {
        let o = linesweep(&["plan", file, "--json"], &repo(), Duration::from_secs(60));
        assert!(o.status.success(), "{file}: {}", text(&o.stderr));
        let plans: Vec<serde_json::Value> = text(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(plans.len(), shards, "{file}");
        for p in &plans {
            // The normalised config spells the architecture's default out.
            assert!(p["config"]["model"]["norm"].is_string(), "{p}");
        }
    }
}
