//! The GPU code path on the CPU: CubeCL's kernels (autotuned and fused, compiled to WGSL)
//! run on Mesa's software Vulkan driver lavapipe (`wgpu:cpu`; Debian's
//! `mesa-vulkan-drivers`, installed by scripts/test-deps.sh) and are checked against `flex`:
//! the device check on the MLP, one whole shard, and the errors for a missing driver or
//! adapter. (The SPIR-V compiler of the `vulkan` feature crashes lavapipe, and ResNet-20's
//! convolution autotuning takes longer than CI has: docs/performance.md.)
//!
//! These need a binary built with `--features wgpu`, as the README's test command builds
//! it; without it each test fails saying so.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// `linesweep ARGS…` with a private tuning cache (so a verdict cached by another test or an
/// earlier run is not reused) and extra environment.
fn vk(args: &[&str], dir: &Path, env: &[(&str, &str)], limit: Duration) -> std::process::Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .current_dir(dir)
        .env("LINESWEEP_TUNE_CACHE", dir.join("tune-cache"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = run_with_deadline(cmd, limit);
    let err = text(&o.stderr);
    assert!(
        !err.contains("needs the `wgpu` feature"),
        "this test needs a binary built with --features wgpu (the README's test command): {err}"
    );
    assert!(
        !err.contains("panicked"),
        "a panic instead of an error:\n{err}"
    );
    o
}

#[test]
fn lavapipe_passes_the_device_check_on_the_mlp() {
    let tmp = tempfile::tempdir().unwrap();
    let o = vk(
        &["check-device", "--device", "wgpu:cpu", "--cases", "mlp"],
        tmp.path(),
        &[],
        Duration::from_secs(900),
    );
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    assert!(out.starts_with("wgpu:cpu (f32) against cpu (f32)"), "{out}");
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("mlp"))
        .unwrap_or_else(|| panic!("no line for the MLP:\n{out}"));
    assert!(line.contains(" 0 beyond tolerance"), "{line}");
    assert!(!out.contains("resnet20"), "--cases mlp ran more:\n{out}");
}

const SHARD: &str = r#"
name = "lavapipe"
seed = 5

[model]
hidden = [64]

[data]
max_train_examples = 1000

[train]
epochs = 1
lr = 0.1
batch_size = 100

[snapshot]
every = 5

[eval]
max_examples = 300
alpha_points = 21
"#;

/// `exec --json` of [`SHARD`] on `device`.
fn shard_on(device: &str, dir: &Path) -> serde_json::Value {
    let out = format!("out-{}", device.replace(':', "-"));
    let o = vk(
        &[
            "exec",
            "--config",
            "shard.toml",
            "--out",
            &out,
            "--device",
            device,
            "--json",
        ],
        dir,
        &[],
        Duration::from_secs(600),
    );
    assert!(o.status.success(), "{device}: {}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn a_shard_on_lavapipe_matches_the_same_shard_on_flex() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("shard.toml"), SHARD).unwrap();
    let gpu = shard_on("wgpu:cpu", tmp.path());
    let cpu = shard_on("cpu", tmp.path());
    assert_eq!(gpu["device"], "wgpu:cpu", "results record the device");
    assert_eq!(cpu["device"], "cpu");
    assert_eq!(gpu["steps"], cpu["steps"]);
    assert_eq!(gpu["steps"], 10);
    let relative = |path: &[&str]| {
        let get = |v: &serde_json::Value| {
            path.iter()
                .fold(v, |v, k| &v[*k])
                .as_f64()
                .unwrap_or_else(|| panic!("{path:?} missing: {v:#}"))
        };
        let (g, c) = (get(&gpu), get(&cpu));
        (g - c).abs() / c.abs().max(1e-6)
    };
    // Ten SGD steps in another summation order: the losses and distances agree to a few
    // parts in 10⁴; a wrong kernel is off by the size of an update or more.
    for path in [
        &["train", "init_loss"][..],
        &["train", "final_loss"],
        &["test", "init_loss"],
        &["test", "final_loss"],
        &["dist_init_final"],
        &["norm_init"],
        &["norm_final"],
    ] {
        let d = relative(path);
        assert!(d < 1e-3, "{path:?} differs by {d:.2e}: {gpu:#} vs {cpu:#}");
    }
    for split in ["train", "test"] {
        let (g, c) = (
            gpu[split]["final_accuracy"].as_f64().unwrap(),
            cpu[split]["final_accuracy"].as_f64().unwrap(),
        );
        // At most one example of the 300 on the other side of a decision boundary.
        assert!((g - c).abs() <= 1.0 / 300.0 + 1e-9, "{split}: {g} vs {c}");
        assert_eq!(gpu[split]["monotone"], cpu[split]["monotone"]);
    }
}

#[test]
fn no_vulkan_driver_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    // The Vulkan loader reads its drivers from these (the older and the newer name), and
    // libglvnd its EGL vendors (wgpu's OpenGL fallback) from the last; a file that does not
    // exist leaves each none, as on a machine without a driver.
    let none = tmp.path().join("no-driver.json");
    let none = none.to_str().unwrap();
    let no_drivers = [
        ("VK_ICD_FILENAMES", none),
        ("VK_DRIVER_FILES", none),
        ("__EGL_VENDOR_LIBRARY_FILENAMES", none),
    ];
    for device in ["wgpu:0", "wgpu:cpu"] {
        let o = vk(
            &["check-device", "--device", device],
            tmp.path(),
            &no_drivers,
            Duration::from_secs(60),
        );
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{err}");
        assert!(
            err.contains(&format!(
                "device `{device}`: no Vulkan or Gl adapter on this machine"
            )) && err.contains("mesa-vulkan-drivers"),
            "{err}"
        );
    }
}

#[test]
fn a_missing_adapter_lists_what_exists() {
    let tmp = tempfile::tempdir().unwrap();
    // This machine (and CI) has no GPU, only lavapipe; where a GPU exists, the 10th does not.
    let o = vk(
        &["check-device", "--device", "wgpu:9"],
        tmp.path(),
        &[],
        Duration::from_secs(60),
    );
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("device `wgpu:9`: no such adapter on Vulkan; this machine has 1: ")
            && err.contains("wgpu:cpu = software (CPU) \"llvmpipe"),
        "{err}"
    );
}
