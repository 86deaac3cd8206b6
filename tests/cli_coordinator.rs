//! `linesweep serve | submit | status` as real processes on loopback.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn submit_is_idempotent_status_counts_and_the_token_is_required() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.db");
    let (_server, url) = serve(&["--listen", "127.0.0.1:0", "--token", "tok"], &state);
    let spec = repo().join("examples/mnist-mli.toml");
    let spec = spec.to_str().unwrap();
    let run = |args: &[&str]| linesweep(args, tmp.path(), Duration::from_secs(60));

    let o = run(&["submit", spec, "--coordinator", &url, "--token", "tok"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout).trim(),
        "sweep mnist-mli: 6 shards, 6 added, 0 already known"
    );
    let o = run(&["submit", spec, "--coordinator", &url, "--token", "tok"]);
    assert_eq!(
        text(&o.stdout).trim(),
        "sweep mnist-mli: 6 shards, 0 added, 6 already known"
    );

    let o = run(&[
        "status",
        "mnist-mli",
        "--coordinator",
        &url,
        "--token",
        "tok",
    ]);
    assert!(
        text(&o.stdout).starts_with("sweep mnist-mli: 6 shards · 6 pending · 0 leased"),
        "{}",
        text(&o.stdout)
    );

    let o = run(&["status", "mnist-mli", "--coordinator", &url]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("Unauthenticated"),
        "{}",
        text(&o.stderr)
    );

    // A second coordinator on the same state file is refused, and the first keeps serving.
    let mut cmd = Command::new(bin());
    cmd.args([
        "-q",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--token",
        "x",
        "--state",
    ])
    .arg(&state);
    let second = run_with_deadline(cmd, Duration::from_secs(30));
    assert!(!second.status.success());
    assert!(
        text(&second.stderr).contains("in use by another coordinator"),
        "{}",
        text(&second.stderr)
    );
    let o = run(&[
        "status",
        "mnist-mli",
        "--coordinator",
        &url,
        "--token",
        "tok",
    ]);
    assert!(o.status.success());
}
