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
            .any(|l| l.starts_with("sweep mnist-mli: 6 shards")),
        "{out}"
    );
    // MLP 784-512-512-10 (669,706 parameters), 2.7 MB a snapshot, 191 steps × 3 epochs.
    assert!(
        out.lines()
            .last()
            .unwrap_or_default()
            .starts_with("snapshots: "),
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

/// `snapshot.keep = "lines"` keeps θ_i, θ_c and the line starts, after the trajectory used
/// every snapshot; `plan` says what a sweep will store either way.
#[test]
fn keep_lines_stores_only_what_the_lines_need_and_plan_says_how_much() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = |keep: &str| {
        format!(
            "name = \"keep\"\n[model]\nhidden = [64]\n[data]\nmax_train_examples = 1000\n\
             [train]\nepochs = 2\n[snapshot]\nevery = 5\nkeep = \"{keep}\"\n\
             [eval]\nmax_examples = 200\nstarts = [\"init\", \"epoch:1\"]\n"
        )
    };
    std::fs::write(tmp.path().join("lines.toml"), cfg("lines")).unwrap();
    std::fs::write(tmp.path().join("all.toml"), cfg("all")).unwrap();
    let plan = |f: &str| text(&linesweep(&["plan", f], tmp.path(), Duration::from_secs(60)).stdout);
    // 8 steps per epoch (batch 128) × 2; 64·(784+1)+(64+1)·10 = 50,890 f32 parameters,
    // 203.6 KB a snapshot: θ_i, steps 5, 8 (the start), 10, 15 and θ_c; or θ_i, 8 and θ_c.
    let all = plan("all.toml");
    assert!(all.contains("snapshots: 1.2 MB per shard"), "{all}");
    let lines = plan("lines.toml");
    assert!(lines.contains("snapshots: 610.7 KB per shard"), "{lines}");
    for (file, out) in [("lines.toml", "lines"), ("all.toml", "all")] {
        let o = linesweep(
            &["exec", "--config", file, "--out", out],
            tmp.path(),
            Duration::from_secs(300),
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let snapshots = |out: &str| -> Vec<String> {
        let dir = std::fs::read_dir(tmp.path().join(out).join("snapshots"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        snapshots("lines"),
        [
            "step-00000000.safetensors",
            "step-00000008.safetensors",
            "step-00000016.safetensors"
        ]
    );
    assert_eq!(snapshots("all").len(), 6);
    // The results are the same: every snapshot went into the trajectory before it was dropped.
    let query = |out: &str| {
        let sql = format!(
            "select count(*), sum(alpha_raw), sum(beta) from read_parquet('{}/results/trajectory/**/*.parquet')",
            tmp.path().join(out).display()
        );
        let o = std::process::Command::new("python3")
            .args([
                "-c",
                &format!("import duckdb; print(duckdb.connect().execute(\"{sql}\").fetchall())"),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout)
    };
    assert_eq!(query("lines"), query("all"));
    assert!(query("lines").starts_with("[(6,"), "{}", query("lines"));
}
