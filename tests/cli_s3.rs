//! Results on S3: the quickstart sweep, a distributed sweep with a kill -9 mid-shard that
//! resumes from a checkpoint stored on S3, `gc`, and bad locations, all against a real
//! S3-protocol server (`s3s-fs`) on loopback. Results are read back over the S3 protocol and
//! queried with DuckDB.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::s3::S3;
use common::*;

const TOKEN: &str = "s3-token";

fn linesweep_s3(s3: &S3, dir: &Path, args: &[&str], limit: Duration) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).current_dir(dir);
    s3.command(&mut cmd, dir);
    run_with_deadline(cmd, limit)
}

/// `check_s3.py` once: (passed, stdout and stderr).
fn try_check_s3(s3: &S3, prefix: &str, sweep: &str, shards: usize) -> (bool, String) {
    let mut cmd = python();
    cmd.arg(repo().join("tests/python/check_s3.py"))
        .args([&s3.endpoint, "bucket", prefix, sweep, &shards.to_string()])
        .envs(s3.env());
    let out = run_with_deadline(cmd, Duration::from_secs(120));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    (out.status.success(), all)
}

/// `check_s3.py`: every shard of `sweep` exactly once in every table and in the summaries,
/// read over S3 by DuckDB. `run` writes the summaries before it exits.
fn check_s3(s3: &S3, prefix: &str, sweep: &str, shards: usize) -> String {
    let (ok, out) = try_check_s3(s3, prefix, sweep, shards);
    assert!(ok, "S3 result check failed:\n{out}");
    out
}

/// [`check_s3`] against a `serve` coordinator, which rewrites the summaries within a reaper
/// tick of the sweep's end: retried for at most 30 s.
fn check_s3_served(s3: &S3, prefix: &str, sweep: &str, shards: usize) -> String {
    poll_until(
        Duration::from_secs(30),
        "the S3 result check (summaries written at the sweep's end)",
        || Some(try_check_s3(s3, prefix, sweep, shards)),
        |(ok, _)| *ok,
    )
    .1
}

#[test]
fn the_quickstart_sweep_runs_with_its_results_on_s3() {
    let s3 = S3::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = repo().join("examples/mnist-mli.toml");
    let args = [
        "run",
        spec.to_str().unwrap(),
        "--workers",
        "2",
        "--out",
        "s3://bucket/qs",
    ];
    let out = linesweep_s3(&s3, dir, &args, Duration::from_secs(600));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("results in s3://bucket/qs"), "{stdout}");
    assert!(stdout.contains("6 committed"), "{stdout}");
    let report = check_s3(&s3, "qs", "mnist-mli", 6);
    assert!(report.starts_with("ok: 6 runs"), "{report}");
    // Run again: the state (under XDG_STATE_HOME, since S3 holds no SQLite file) knows
    // every shard is done; nothing is trained or published twice.
    let again = linesweep_s3(&s3, dir, &args, Duration::from_secs(120));
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("6 committed"));
    assert!(check_s3(&s3, "qs", "mnist-mli", 6).starts_with("ok: 6 runs"));
    // The same bucket and prefix on another, empty endpoint is another location: its state is
    // its own, so the sweep runs there (it used to report "6 committed" and write nothing).
    let other = S3::start();
    let there = linesweep_s3(&other, dir, &args, Duration::from_secs(600));
    let stdout = text(&there.stdout);
    assert!(there.status.success(), "{stdout}\n{}", text(&there.stderr));
    assert!(stdout.contains("6 committed"), "{stdout}");
    let report = check_s3(&other, "qs", "mnist-mli", 6);
    assert!(report.starts_with("ok: 6 runs"), "{report}");
}

fn spec(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("s3sweep.toml");
    std::fs::write(
        &path,
        r#"
name = "s3sweep"

[grid]
seed = [0, 1, 2]

[model]
hidden = [128]

[data]
max_train_examples = 4000

[train]
epochs = 30

[snapshot]
every = 64

[eval]
max_examples = 400
alpha_points = 11
alpha_start = 0.0
alpha_stop = 1.0
"#,
    )
    .unwrap();
    path
}

fn worker(s3: &S3, dir: &Path, url: &str, name: &str) -> Proc {
    let mut cmd = Command::new(bin());
    cmd.args([
        "worker",
        "--coordinator",
        url,
        "--token",
        TOKEN,
        "--name",
        name,
    ])
    .args(["--max-backoff", "0.5", "--idle-poll", "0.2"])
    .args(["--checkpoint-every", "50"])
    .env("RAYON_NUM_THREADS", "1")
    // The children log at info (they inherit it), and the agent passes their lines on.
    .env("LINESWEEP_LOG", "info,linesweep_worker::agent=debug")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap());
    s3.command(&mut cmd, dir);
    Proc(cmd.spawn().expect("spawn worker"))
}

fn status(s3: &S3, dir: &Path, url: &str) -> Option<serde_json::Value> {
    let args = [
        "status",
        "s3sweep",
        "--json",
        "--coordinator",
        url,
        "--token",
        TOKEN,
    ];
    let o = linesweep_s3(s3, dir, &args, Duration::from_secs(30));
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).ok())
        .flatten()
}

fn wait_for(
    s3: &S3,
    dir: &Path,
    url: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    poll_until(
        Duration::from_secs(300),
        what,
        || status(s3, dir, url),
        done,
    )
}

/// `serve` with results under `s3://bucket/PREFIX` and the 3-shard spec submitted to it;
/// returns the server and its URL.
fn serve_and_submit(s3: &S3, dir: &Path, prefix: &str) -> (Proc, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["-q", "serve", "--token", TOKEN, "--lease-ttl", "2"])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--results",
            &format!("s3://bucket/{prefix}"),
        ])
        .arg("--state")
        .arg(dir.join("state.db"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    s3.command(&mut cmd, dir);
    let mut child = cmd.spawn().expect("spawn serve");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let server = Proc(child);
    let url = line
        .trim()
        .strip_prefix("coordinator on ")
        .expect("address line")
        .to_owned();
    let spec = spec(dir);
    let submit = [
        "submit",
        spec.to_str().unwrap(),
        "--coordinator",
        &url,
        "--token",
        TOKEN,
    ];
    let o = linesweep_s3(s3, dir, &submit, Duration::from_secs(30));
    assert!(o.status.success(), "{}", text(&o.stderr));
    (server, url)
}

/// Whether a shard of `worker` is training and between `steps` done.
fn training(s: &serde_json::Value, worker: &str, steps: std::ops::Range<u64>) -> bool {
    s["running"].as_array().is_some_and(|r| {
        r.iter().any(|x| {
            let done = x["done"].as_u64().unwrap_or(0);
            x["worker"] == worker && x["phase"] == "train" && steps.contains(&done)
        })
    })
}

#[test]
fn a_worker_killed_mid_shard_resumes_from_its_checkpoint_on_s3() {
    let s3 = S3::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_server, url) = serve_and_submit(&s3, dir, "dist");
    let victim = worker(&s3, dir, &url, "victim");
    // Past its first checkpoint (step 50) and well before the end (about 950 steps).
    wait_for(&s3, dir, &url, "victim past a checkpoint", |s| {
        training(s, "victim", 120..400)
    });
    victim.signal(libc::SIGKILL);
    drop(victim);
    let _rescuer = worker(&s3, dir, &url, "rescuer");
    let st = wait_for(&s3, dir, &url, "3 commits", |s| {
        s["counts"]["committed"].as_u64() == Some(3)
    });
    assert!(st["interruptions"].as_u64() >= Some(1), "{st:#}");
    assert_eq!(st["failures"], 0, "{st:#}");
    let log = std::fs::read_to_string(dir.join("rescuer.log")).unwrap();
    assert!(
        log.contains("resuming from a verified checkpoint"),
        "the rescuer did not resume from the S3 checkpoint:\n{log}"
    );
    let gc = ["gc", "s3sweep", "--coordinator", &url, "--token", TOKEN];
    let o = linesweep_s3(&s3, dir, &gc, Duration::from_secs(60));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let report = check_s3_served(&s3, "dist", "s3sweep", 3);
    assert!(report.starts_with("ok: 3 runs"), "{report}");
}

#[test]
fn an_s3_outage_mid_sweep_spends_no_failure_budget() {
    let mut s3 = S3::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_server, url) = serve_and_submit(&s3, dir, "outage");
    let _worker = worker(&s3, dir, &url, "w");
    wait_for(&s3, dir, &url, "a shard mid-training", |s| {
        training(s, "w", 60..400)
    });
    // Snapshots and checkpoints are written every few hundred milliseconds: several writes
    // fail, past object_store's own retries.
    s3.outage(Duration::from_secs(5));
    let st = wait_for(&s3, dir, &url, "3 commits", |s| {
        s["counts"]["committed"].as_u64() == Some(3)
    });
    assert_eq!(st["failures"], 0, "an outage spent failure budget: {st:#}");
    assert!(
        st["interruptions"].as_u64() >= Some(1),
        "the outage went unnoticed: {st:#}"
    );
    let report = check_s3_served(&s3, "outage", "s3sweep", 3);
    assert!(report.starts_with("ok: 3 runs"), "{report}");
}

#[test]
fn bad_s3_locations_are_one_clear_error_at_start() {
    let s3 = S3::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = repo().join("examples/mnist-mli.toml");
    let run = |out: &str, fix: &dyn Fn(&mut Command)| {
        let mut cmd = Command::new(bin());
        cmd.args(["run", spec.to_str().unwrap(), "--out", out])
            .current_dir(dir);
        s3.command(&mut cmd, dir);
        fix(&mut cmd);
        let started = Instant::now();
        let o = run_with_deadline(cmd, Duration::from_secs(60));
        assert!(!o.status.success());
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "{out}: slow refusal"
        );
        text(&o.stderr)
    };
    let err = run("s3://nobucket/x", &|_| {});
    assert!(err.contains("the bucket does not exist"), "{err}");
    let err = run("s3://bucket/x", &|c| {
        c.env("AWS_SECRET_ACCESS_KEY", "wrong");
    });
    assert!(err.contains("the credentials were refused"), "{err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = run("s3://bucket/x", &|c| {
        c.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{closed}"));
    });
    assert!(err.contains("the endpoint cannot be reached"), "{err}");
    // `serve` checks its default results location before it listens.
    let mut cmd = Command::new(bin());
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--results",
        "s3://nobucket/r",
    ])
    .arg("--state")
    .arg(dir.join("serve.db"));
    s3.command(&mut cmd, dir);
    let o = run_with_deadline(cmd, Duration::from_secs(60));
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("--results") && err.contains("bucket does not exist"),
        "{err}"
    );
}
