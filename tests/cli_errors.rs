//! Bad input: one clear error line naming the file/field, a non-zero exit, nothing written.

mod common;

use std::time::Duration;

use common::*;

fn exec_err(config: &str, out: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("c.toml"), config).unwrap();
    let o = linesweep(
        &["exec", "--config", "c.toml", "--out", out],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert!(!o.status.success(), "expected failure for {config:?}");
    let err = text(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{err}");
    assert!(
        !tmp.path().join(out).join("results").exists(),
        "results written despite the error"
    );
    lines[0].to_owned()
}

#[test]
fn malformed_toml() {
    let e = exec_err("[train\nlr = 0.1\n", "out");
    assert!(e.contains("c.toml") && e.contains("line 1"), "{e}");
}

#[test]
fn unknown_key_names_key_and_line() {
    let e = exec_err("[train]\nlr = 0.1\nlearnin_rate = 0.2\n", "out");
    assert!(
        e.contains("c.toml") && e.contains("line 3") && e.contains("learnin_rate"),
        "{e}"
    );
}

#[test]
fn grid_without_endpoints_or_points() {
    let e = exec_err(
        "[eval]\nalpha_start = 0.1\nalpha_stop = 1.0\nalpha_points = 10\n",
        "out",
    );
    assert!(
        e.contains("c.toml:2: field `eval.alpha_start`") && e.contains("α = 0"),
        "{e}"
    );
    let e = exec_err("[eval]\nalpha_points = 2\n", "out");
    assert!(e.contains("c.toml:2: field `eval.alpha_points`"), "{e}");
}

#[test]
fn unknown_names_list_the_valid_ones() {
    let e = exec_err("[model]\nactivation = \"swish\"\n", "out");
    assert!(
        e.contains("swish") && e.contains("relu") && e.contains("line 2"),
        "{e}"
    );
    let e = exec_err("[train]\noptimizer = \"rmsprop\"\n", "out");
    assert!(e.contains("rmsprop") && e.contains("sgd"), "{e}");
    let e = exec_err("[data]\ndataset = \"cifar100\"\n", "out");
    assert!(e.contains("cifar100") && e.contains("mnist-10k"), "{e}");
}

#[test]
fn missing_and_corrupt_dataset_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnist");
    std::fs::create_dir(&dir).unwrap();
    let cfg = format!("[data]\ndataset = \"mnist\"\ndir = \"{}\"\n", dir.display());
    let e = exec_err(&cfg, "out");
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("missing"),
        "{e}"
    );
    for f in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        std::fs::copy(repo().join("data/mnist-10k").join(f), dir.join(f)).unwrap();
    }
    // Truncate the test images: gzip then fails its length check or the IDX size check.
    let victim = dir.join("t10k-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let e = exec_err(&cfg, "out");
    assert!(e.contains("t10k-images-idx3-ubyte.gz"), "{e}");
}

#[test]
fn unwritable_output_and_unknown_device() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("out");
    let e = exec_err("", out.to_str().unwrap());
    assert!(
        e.contains("cannot create the directory") && e.contains("plain-file"),
        "{e}"
    );

    std::fs::write(tmp.path().join("c.toml"), "").unwrap();
    let o = linesweep(
        &[
            "exec", "--config", "c.toml", "--out", "o", "--device", "tpu:0",
        ],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("unknown device `tpu:0`"),
        "{}",
        text(&o.stderr)
    );
    // The child protocol: a device this machine lacks is the machine's failure (74), so a
    // worker agent gives the shard back without spending its budget.
    assert_eq!(o.status.code(), Some(74), "{}", text(&o.stderr));
}

#[test]
fn missing_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let o = linesweep(
        &["exec", "--config", "nope.toml", "--out", "o"],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("nope.toml: cannot read the config"), "{err}");
    // The cause once, not once per error in the chain that prints it.
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn config_json_is_validated_like_a_file() {
    // The worker agent passes configs this way; `batch_size = 0` used to panic in the engine.
    let tmp = tempfile::tempdir().unwrap();
    let o = linesweep(
        &[
            "exec",
            "--config-json",
            r#"{"train": {"batch_size": 0}}"#,
            "--out",
            "out",
        ],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("--config-json: field `train.batch_size`") && !err.contains("panicked"),
        "{err}"
    );
    // An invalid config can never succeed: the deterministic exit (78), which fails the
    // shard at once instead of spending three attempts.
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(!tmp.path().join("out/results").exists());
}

/// `run` refuses, before anything runs, a child whose parent (named by id, outside the sweep)
/// has no snapshot at that step in the results root; `plan` refuses a selector that matches
/// no parent, naming the field and the line.
#[test]
fn a_parent_that_is_not_there_is_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let spec =
        "name = \"orphan\"\n[train]\ninit_from = { shard = \"0123456789abcdef\", step = 0 }\n";
    std::fs::write(tmp.path().join("o.toml"), spec).unwrap();
    let o = linesweep(
        &["run", "o.toml", "--out", "out"],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("0123456789abcdef, which is not in the sweep")
            && err.contains("snapshots/0123456789abcdef/step-00000000.safetensors"),
        "{err}"
    );
    assert!(!tmp.path().join("out/results").exists(), "nothing ran");
    let spec = "name = \"orphan\"\n[grid]\ninit_from = [{ step = 0 }]\n";
    std::fs::write(tmp.path().join("p.toml"), spec).unwrap();
    let o = linesweep(&["plan", "p.toml"], tmp.path(), Duration::from_secs(60));
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("p.toml:3")
            && err.contains("train.init_from")
            && err.contains("matches no shard"),
        "{err}"
    );
}
