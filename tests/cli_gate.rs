//! The device gate as a user meets it: `linesweep worker` on a device (here the CPU checked
//! in bf16 against the f32 CPU, which CI has; on a GPU the same code checks it in f32) runs
//! the device check before its first lease, refuses a device that disagrees (exit non-zero,
//! or staying up without leasing with `--idle-if-refused`, shown by `linesweep workers`),
//! leases on one that agrees, and reuses its cached verdict on the next start.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const TOKEN: &str = "gate-token";

fn sweep_spec(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("gate.toml");
    std::fs::write(
        &path,
        format!(
            r#"
name = "gate"

[grid]
seed = [1, 2]

[model]
hidden = [32]

[data]
max_train_examples = 500

[train]
epochs = 1
batch_size = 100

[eval]
max_examples = 100
alpha_points = 5

[storage]
results = "{}"
"#,
            dir.join("results").display()
        ),
    )
    .unwrap();
    path
}

fn client(dir: &Path, url: &str, args: &[&str]) -> std::process::Output {
    let mut full = args.to_vec();
    full.extend(["--coordinator", url, "--token", TOKEN]);
    linesweep(&full, dir, Duration::from_secs(60))
}

fn worker(dir: &Path, url: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args([
        "worker",
        "--coordinator",
        url,
        "--token",
        TOKEN,
        "--device",
        "cpu",
        "--check-precision",
        "bf16",
        "--idle-poll",
        "0.2",
        "--exit-when-idle",
    ])
    .args(extra)
    .current_dir(dir)
    .env("LINESWEEP_TUNE_CACHE", dir.join("tune-cache"))
    .env("RAYON_NUM_THREADS", "1")
    .stdin(Stdio::null());
    cmd
}

#[test]
fn the_worker_gate_refuses_a_device_that_disagrees_and_passes_one_that_agrees() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_serve, url) = serve(
        &["--token", TOKEN, "--listen", "127.0.0.1:0"],
        &dir.join("state.db"),
    );
    let spec = sweep_spec(dir);
    let o = client(dir, &url, &["submit", spec.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    // 1. A tolerance that bf16 arithmetic cannot meet against f32, as a wrong kernel would
    // not: the check fails, the worker exits non-zero with the verdict, and no shard was
    // leased.
    let o = run_with_deadline(
        worker(dir, &url, &["--check-tolerance", "1e-6"]),
        Duration::from_secs(600),
    );
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("device is refused") && err.contains("FAILED: largest difference"),
        "{err}"
    );
    let st = client(dir, &url, &["status", "gate", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["counts"]["pending"], 2, "{st:#}");
    assert_eq!(st["interruptions"], 0, "{st:#}");
    assert_eq!(st["failures"], 0, "{st:#}");

    // 2. The same, staying up: `workers` says why it takes nothing.
    let mut idle = worker(
        dir,
        &url,
        &["--check-tolerance", "1e-6", "--idle-if-refused"],
    );
    let idle = Proc(
        idle.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let seen = poll_until(
        Duration::from_secs(60),
        "the refused worker listed",
        || Some(text(&client(dir, &url, &["workers"]).stdout)),
        |w| w.contains("UNHEALTHY: device refused: FAILED"),
    );
    assert!(seen.contains("cpu"), "{seen}");
    drop(idle);

    // 3. A tolerance bf16 meets: it passes, says so, and the shards commit. A second start
    // reuses the cached verdict.
    for expect in ["checked in", "cached verdict"] {
        let o = run_with_deadline(
            worker(dir, &url, &["--check-tolerance", "0.2"]),
            Duration::from_secs(600),
        );
        let err = text(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(
            err.contains("device check")
                && err.contains("passed: largest difference")
                && err.contains(expect),
            "{err}"
        );
    }
    let st = client(dir, &url, &["status", "gate", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["counts"]["committed"], 2, "{st:#}");
}
