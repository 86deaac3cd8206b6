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

/// `train.init_from`: a child shard's θ_i is its parent's snapshot at step k, read from the
/// results root the parent was committed to; a step the parent did not keep, or a parent
/// that is not there, is refused with the key it looked for.
#[test]
fn a_child_starts_from_its_parents_snapshot() {
    use linesweep_worker::snapshot::HostSnapshot;
    const PARENT: &str = "name = \"parent\"\nseed = 1\n[data]\nmax_train_examples = 1024\n\
        [model]\nhidden = [32]\n[train]\nepochs = 1\nbatch_size = 128\n[snapshot]\nevery = 4\n\
        [eval]\nmax_examples = 256\nalpha_points = 5\n";
    let tmp = tempfile::tempdir().unwrap();
    let exec = |name: &str, text: &str| {
        std::fs::write(tmp.path().join(name), text).unwrap();
        linesweep(
            &["exec", "--config", name, "--out", "out"],
            tmp.path(),
            Duration::from_secs(600),
        )
    };
    let out = exec("parent.toml", PARENT);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let snapshots = tmp.path().join("out/snapshots");
    let parent = std::fs::read_dir(&snapshots)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    let read = |shard: &str, step: u64| {
        let file = snapshots.join(format!("{shard}/step-{step:08}.safetensors"));
        HostSnapshot::from_safetensors(&std::fs::read(&file).unwrap(), "test").unwrap()
    };
    let child_of = |step: u64| {
        PARENT.replace("name = \"parent\"", "name = \"child\"").replace(
            "batch_size = 128\n",
            &format!(
                "batch_size = 128\ndata_seed = 7\ninit_from = {{ shard = \"{parent}\", step = {step} }}\n"
            ),
        )
    };
    let out = exec("child.toml", &child_of(4));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let child = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|s| *s != parent)
        .expect("the child's snapshots");
    let (theta_k, theta_i) = (read(&parent, 4), read(&child, 0));
    assert_eq!(theta_i.parameter_vector(), theta_k.parameter_vector());
    assert_ne!(
        read(&child, 8).parameter_vector(),
        read(&parent, 8).parameter_vector(),
        "the child trains on from θ_k with its own data order"
    );
    assert_ne!(
        read(&parent, 0).parameter_vector(),
        theta_i.parameter_vector()
    );

    // Step 5 was never kept (every = 4); another root does not hold the parent.
    let out = exec("bad-step.toml", &child_of(5));
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("lists no snapshot at step 5")
            && err.contains(&format!("snapshots/{parent}/manifest.json"))
            && err.contains("it keeps steps 0, 4, 8"),
        "{err}"
    );
    let out = exec("bad-id.toml", &child_of(4).replace(&parent, "not an id"));
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("train.init_from") && err.contains("not an id"),
        "{err}"
    );

    // Snapshots changed after they were committed (the last 200 floats of the parent's steps 4
    // and 8 flipped, sizes unchanged): a child forked from step 4, and a pair ending at the
    // parent's θ_c, are refused at once (exit 78: invalid shard), naming the file; nothing is
    // computed from them.
    for step in [4, 8] {
        let file = snapshots.join(format!("{parent}/step-{step:08}.safetensors"));
        let mut bytes = std::fs::read(&file).unwrap();
        let n = bytes.len();
        bytes[n - 800..].iter_mut().for_each(|b| *b ^= 0x40);
        std::fs::write(&file, &bytes).unwrap();
    }
    let pair = PARENT.replace("name = \"parent\"", "name = \"pair\"")
        + &format!("[pair]\na = \"{child}\"\nb = \"{parent}\"\n");
    for (name, config, step) in [
        (
            "damaged.toml",
            child_of(4).replace("data_seed = 7", "data_seed = 8"),
            4,
        ),
        ("pair.toml", pair, 8),
    ] {
        let out = exec(name, &config);
        let err = text(&out.stderr);
        let file = format!("snapshots/{parent}/step-{step:08}.safetensors");
        assert_eq!(out.status.code(), Some(78), "{name}: {err}");
        assert!(
            err.contains(&file) && err.contains("is damaged"),
            "{name}: {err}"
        );
    }
    let committed = std::fs::read_dir(tmp.path().join("out/results/runs/sweep=exec"));
    assert_eq!(
        committed.unwrap().count(),
        2,
        "only the parent and the first child"
    );
}
