//! A sweep over architectures (MLP, CNN, ResNet-20 with batch norm) × seeds on a generated
//! CIFAR-10 fixture, through `linesweep run`, with the results read back by DuckDB and Polars.

mod common;

use std::time::Duration;

use common::{linesweep, python, repo, run_with_deadline, text};
use linesweep_worker::data::cifar;

#[test]
fn mlp_cnn_and_resnet20_on_cifar10_land_in_duckdb() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("cifar");
    std::fs::create_dir_all(&data).unwrap();
    for (i, name) in cifar::TRAIN_FILES.iter().enumerate() {
        std::fs::write(data.join(name), cifar::synthetic_records(20, i as u8)).unwrap();
    }
    std::fs::write(
        data.join(cifar::TEST_FILE),
        cifar::synthetic_records(40, 99),
    )
    .unwrap();
    let spec = dir.join("archs.toml");
    std::fs::write(
        &spec,
        format!(
            r#"
name = "archs"

[grid]
arch = ["mlp", "cnn", "resnet20"]
seed = [1, 2]

[data]
dataset = "cifar10"
dir = "{}"
max_train_examples = 64

[model]
hidden = [32]
channels = [8, 16]

[train]
epochs = 1
batch_size = 32
lr = 0.05
momentum = 0.9

[snapshot]
every = 1

[eval]
max_examples = 32
alpha_start = 0.0
alpha_stop = 1.0
alpha_points = 5
starts = ["init", "step:1"]
bn_modes = ["interpolate", "recompute"]
bn_batches = 1

[storage]
results = "{}"
"#,
            data.display(),
            dir.join("results").display()
        ),
    )
    .unwrap();
    let out = linesweep(
        &["run", spec.to_str().unwrap(), "--workers", "2"],
        dir,
        Duration::from_secs(600),
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "run failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("6/6 committed") || stdout.contains("6 committed"),
        "{stdout}"
    );

    let mut cmd = python();
    cmd.arg(repo().join("tests/python/check_archs.py"))
        .arg(dir.join("results"))
        .arg("archs");
    let check = run_with_deadline(cmd, Duration::from_secs(120));
    assert!(
        check.status.success(),
        "result check failed:\n{}\n{}",
        text(&check.stdout),
        text(&check.stderr)
    );
    assert!(
        text(&check.stdout).starts_with("ok: 6 runs"),
        "{}",
        text(&check.stdout)
    );
}

#[test]
fn bad_architecture_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exec = |toml: &str| {
        let cfg = dir.join("shard.toml");
        std::fs::write(&cfg, toml).unwrap();
        let out = linesweep(
            &[
                "exec",
                "--config",
                cfg.to_str().unwrap(),
                "--out",
                dir.join("out").to_str().unwrap(),
            ],
            dir,
            Duration::from_secs(120),
        );
        assert!(!out.status.success(), "{toml} was accepted");
        text(&out.stderr)
    };
    let err = exec("[model]\narch = \"resnet101\"\n");
    assert!(
        err.contains("line 2") && err.contains("resnet101") && err.contains("resnet50"),
        "{err}"
    );
    let err = exec("[eval]\nbn_modes = [\"average\"]\n");
    assert!(
        err.contains("average") && err.contains("recompute"),
        "{err}"
    );
    let err = exec("[eval]\nstarts = [\"init\", \"halfway\"]\n");
    assert!(
        err.contains("shard.toml:2: field `eval.starts`") && err.contains("halfway"),
        "{err}"
    );
    let err = exec("[data]\ndataset = \"imagenet\"\n");
    assert!(err.contains("field `data.dir`"), "{err}");

    let cifar_dir = dir.join("cifar");
    std::fs::create_dir_all(&cifar_dir).unwrap();
    for name in cifar::TRAIN_FILES {
        std::fs::write(cifar_dir.join(name), cifar::synthetic_records(2, 0)).unwrap();
    }
    std::fs::write(cifar_dir.join(cifar::TEST_FILE), vec![0u8; 3072]).unwrap();
    let err = exec(&format!(
        "[data]\ndataset = \"cifar10\"\ndir = \"{}\"\n",
        cifar_dir.display()
    ));
    assert!(
        err.contains("test_batch.bin: 3072 bytes is not a whole number"),
        "{err}"
    );

    let empty = dir.join("imagenet");
    std::fs::create_dir_all(empty.join("train/n01")).unwrap();
    std::fs::create_dir_all(empty.join("val/n01")).unwrap();
    let err = exec(&format!(
        "[data]\ndataset = \"imagenet\"\ndir = \"{}\"\n",
        empty.display()
    ));
    assert!(err.contains("no images"), "{err}");

    let out = linesweep(
        &[
            "data",
            "fetch",
            "imagenet",
            "--dir",
            dir.join("in").to_str().unwrap(),
        ],
        dir,
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot be downloaded automatically"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stderr).contains("panicked"));
}
