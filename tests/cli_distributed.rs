//! Distributed sweeps as real processes on loopback: `serve`, `worker`, `submit`, `status`,
//! `retry`, `gc`, `run`, with faults (kill -9 of a worker and of the coordinator, a worker
//! frozen past its lease). Short TTLs; every wait is bounded.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "test-token";

/// A 12-shard sweep (6 seeds × 2 optimizers); `epochs` sets how long each shard takes
/// (about 0.1 s per epoch on one core).
fn spec(dir: &Path, name: &str, epochs: u32, extra: &str) -> PathBuf {
    let results = dir.join("results");
    let text = format!(
        r#"
name = "{name}"

[grid]
optimizer = ["sgd", "adam"]
seed = [0, 1, 2, 3, 4, 5]
{extra}

[model]
hidden = [256, 256]

[data]
max_train_examples = 4000

[train]
epochs = {epochs}
lr = 0.01

[snapshot]
every = 32

[eval]
max_examples = 400
alpha_points = 11
alpha_start = 0.0
alpha_stop = 1.0

[storage]
results = "{}"
"#,
        results.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `linesweep serve` on `port` (0: any); returns it with its URL.
fn serve(state: &Path, port: u16, ttl: u32) -> (Proc, String) {
    let ttl = ttl.to_string();
    let listen = format!("127.0.0.1:{port}");
    common::serve(
        &["--token", TOKEN, "--lease-ttl", &ttl, "--listen", &listen],
        state,
    )
}

/// `linesweep worker`, logging to `log`.
fn worker(url: &str, name: &str, log: &Path) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(bin())
        .args([
            "worker",
            "--coordinator",
            url,
            "--token",
            TOKEN,
            "--name",
            name,
        ])
        .args(["--max-backoff", "0.5", "--idle-poll", "0.2"])
        .env("RAYON_NUM_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn worker");
    Proc(child)
}

fn cli(dir: &Path, url: &str, args: &[&str]) -> std::process::Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--coordinator", url, "--token", TOKEN]);
    linesweep(&all, dir, Duration::from_secs(60))
}

fn status(dir: &Path, url: &str, sweep: &str) -> Option<serde_json::Value> {
    let o = cli(dir, url, &["status", sweep, "--json"]);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).ok())
        .flatten()
}

fn count(st: &serde_json::Value, state: &str) -> u64 {
    st["counts"][state].as_u64().unwrap_or(0)
}

/// Polls `status` until `done` holds; panics after `limit`.
fn wait_for(
    dir: &Path,
    url: &str,
    sweep: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    poll_until(limit, what, || status(dir, url, sweep), done)
}

/// A worker named `victim`, returned once `sweep`'s status shows it early in training.
fn victim_mid_shard(dir: &Path, url: &str, sweep: &str) -> Proc {
    let victim = worker(url, "victim", &dir.join("victim.log"));
    wait_for(
        dir,
        url,
        sweep,
        Duration::from_secs(120),
        "victim mid-shard",
        |s| {
            s["running"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|x| x["worker"] == "victim" && early_in_training(x))
            })
        },
    );
    victim
}

/// A running shard in its first third of training: there is time left to interfere.
fn early_in_training(x: &serde_json::Value) -> bool {
    let (done, total) = (
        x["done"].as_u64().unwrap_or(0),
        x["total"].as_u64().unwrap_or(0),
    );
    x["phase"] == "train" && done > 0 && done * 3 < total
}

fn finished(st: &serde_json::Value) -> bool {
    ["waiting", "pending", "leased", "publishing"]
        .iter()
        .all(|s| count(st, s) == 0)
}

/// DuckDB over results/**: exactly `shards` runs and no duplicate rows in any table.
fn check_results(root: &Path, sweep: &str, shards: usize) -> String {
    check_sweep(root, sweep, shards, 11)
}

/// Every published file, with its bytes (to prove that a fenced attempt changed nothing).
fn published(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files_under(vec![root.join("results"), root.join("snapshots")])
}

/// Files below `dir` (empty directories do not count).
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files_under(vec![dir.to_owned()])
}

fn files_under(mut stack: Vec<PathBuf>) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Pids whose parent is `pid` (Linux /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces, so split after the last `)`.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Whether `pid` runs (a zombie, or a reaped and gone process, does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn a_twelve_shards_three_workers_exactly_once_then_resubmit_and_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = spec(dir, "grid", 2, "");
    let (_server, url) = serve(&dir.join("state.db"), 0, 5);
    let o = cli(dir, &url, &["submit", spec.to_str().unwrap()]);
    assert_eq!(
        text(&o.stdout).trim(),
        format!(
            "sweep grid: 12 shards, 12 added, 0 already known; results in {}",
            dir.join("results").display()
        ),
        "{}",
        text(&o.stderr)
    );
    let _workers: Vec<Proc> = (0..3)
        .map(|i| worker(&url, &format!("w{i}"), &dir.join(format!("w{i}.log"))))
        .collect();
    let st = wait_for(
        dir,
        &url,
        "grid",
        Duration::from_secs(300),
        "12 commits",
        |s| count(s, "committed") == 12,
    );
    assert_eq!(st["failures"], 0);
    // `watch` on a finished sweep prints its final state and ends.
    let o = cli(dir, &url, &["watch", "grid"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("grid: 12/12 committed"),
        "{}",
        text(&o.stdout)
    );
    let report = check_results(&dir.join("results"), "grid", 12);
    assert!(report.starts_with("ok: 12 runs"), "{report}");
    // Staging is removed on commit.
    assert!(
        files(&dir.join("results/staging")).is_empty(),
        "staging left behind"
    );
    // The workers are listed with their devices.
    let o = cli(dir, &url, &["workers"]);
    let listed = text(&o.stdout);
    assert!(listed.contains("w0") && listed.contains("cpu"), "{listed}");
    // e) Resubmitting the same spec creates nothing.
    let o = cli(dir, &url, &["submit", spec.to_str().unwrap()]);
    assert_eq!(
        text(&o.stdout).trim(),
        format!(
            "sweep grid: 12 shards, 0 added, 12 already known; results in {}",
            dir.join("results").display()
        )
    );
    // A changed shared setting under the same name is refused with the diff …
    let changed = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("epochs = 2", "epochs = 3");
    std::fs::write(&spec, changed).unwrap();
    let o = cli(dir, &url, &["submit", spec.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("train.epochs: 2 → 3") && err.contains("--new"),
        "{err}"
    );
    assert_eq!(count(&status(dir, &url, "grid").unwrap(), "committed"), 12);
    // … unless --new.
    let o = cli(dir, &url, &["submit", spec.to_str().unwrap(), "--new"]);
    assert_eq!(
        text(&o.stdout).trim(),
        format!(
            "sweep grid: 12 shards, 12 added, 0 already known; results in {}",
            dir.join("results").display()
        )
    );
    // Cancelling stops what has not started; what runs finishes; nothing is lost.
    let o = cli(dir, &url, &["cancel", "grid"]);
    let said = text(&o.stdout);
    let cancelled: u64 = said
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    let st = wait_for(
        dir,
        &url,
        "grid",
        Duration::from_secs(120),
        "cancel settles",
        finished,
    );
    assert_eq!(count(&st, "cancelled"), cancelled, "{st:#}");
    assert_eq!(count(&st, "committed") + cancelled, 24, "{st:#}");
}

#[test]
fn b_a_worker_killed_mid_shard_is_replaced_after_the_ttl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = spec(dir, "kill", 30, "");
    let (_server, url) = serve(&dir.join("state.db"), 0, 2);
    assert!(
        cli(dir, &url, &["submit", spec.to_str().unwrap()])
            .status
            .success()
    );
    let victim = victim_mid_shard(dir, &url, "kill");
    let orphans = children_of(victim.0.id());
    assert!(!orphans.is_empty(), "the victim runs its shard in a child");
    victim.signal(libc::SIGKILL);
    drop(victim);
    // Its children stop too (PR_SET_PDEATHSIG, and their lifeline on stdin) instead of
    // training on as orphans.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while orphans.iter().any(|p| alive(*p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        orphans.iter().all(|p| !alive(*p)),
        "children of a killed worker still run: {orphans:?}"
    );
    let _rest: Vec<Proc> = ["b", "c"]
        .iter()
        .map(|n| worker(&url, n, &dir.join(format!("{n}.log"))))
        .collect();
    let st = wait_for(
        dir,
        &url,
        "kill",
        Duration::from_secs(300),
        "12 commits",
        |s| count(s, "committed") == 12,
    );
    assert!(st["interruptions"].as_u64() >= Some(1), "{st:#}");
    assert_eq!(
        st["failures"], 0,
        "an expiry must not spend the failure budget"
    );
    let report = check_results(&dir.join("results"), "kill", 12);
    assert!(report.starts_with("ok: 12 runs"), "{report}");
}

/// A worker that exits when idle does not leave while a dead worker's lease can still
/// expire: with nothing pending but one shard leased by a killed worker, it waits out the
/// TTL, runs the shard and only then exits (it used to exit at once, leaving the shard
/// pending with no worker — Slurm arrays and Indexed Jobs end that way).
#[test]
fn m_an_idle_worker_waits_for_leases_that_may_come_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = dir.join("one.toml");
    let text_spec = std::fs::read_to_string(self::spec(dir, "one", 300, "")).unwrap();
    let one = text_spec
        .replace("optimizer = [\"sgd\", \"adam\"]", "")
        .replace("seed = [0, 1, 2, 3, 4, 5]", "seed = [0]");
    std::fs::write(&spec, one).unwrap();
    let (_server, url) = serve(&dir.join("state.db"), 0, 15);
    assert!(
        cli(dir, &url, &["submit", spec.to_str().unwrap()])
            .status
            .success()
    );
    let victim = victim_mid_shard(dir, &url, "one");
    victim.signal(libc::SIGKILL);
    drop(victim);
    let mut idle = Command::new(bin());
    idle.args([
        "worker",
        "--coordinator",
        &url,
        "--token",
        TOKEN,
        "--name",
        "idle",
    ])
    .args([
        "--exit-when-idle",
        "--max-backoff",
        "0.5",
        "--idle-poll",
        "0.5",
    ])
    .env("RAYON_NUM_THREADS", "1")
    .stdin(Stdio::null());
    let o = run_with_deadline(idle, Duration::from_secs(300));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("may still need a worker"),
        "{}",
        text(&o.stderr)
    );
    let st = status(dir, &url, "one").unwrap();
    assert_eq!(count(&st, "committed"), 1, "{st:#}");
}

#[test]
fn c_the_coordinator_killed_mid_sweep_restarts_on_the_same_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = spec(dir, "crash", 3, "");
    let state = dir.join("state.db");
    let port = free_port();
    let (server, url) = serve(&state, port, 3);
    assert!(
        cli(dir, &url, &["submit", spec.to_str().unwrap()])
            .status
            .success()
    );
    let _workers: Vec<Proc> = (0..2)
        .map(|i| worker(&url, &format!("w{i}"), &dir.join(format!("w{i}.log"))))
        .collect();
    wait_for(
        dir,
        &url,
        "crash",
        Duration::from_secs(120),
        "some commits",
        |s| count(s, "committed") >= 2 && count(s, "committed") < 12,
    );
    server.signal(libc::SIGKILL);
    drop(server);
    std::thread::sleep(Duration::from_millis(1500));
    // The workers keep training and retry; the restarted coordinator gives their leases a
    // fresh TTL and takes their completions.
    let (_server, url2) = serve(&state, port, 3);
    assert_eq!(url, url2);
    let st = wait_for(
        dir,
        &url,
        "crash",
        Duration::from_secs(300),
        "12 commits",
        |s| count(s, "committed") == 12,
    );
    assert_eq!(st["failures"], 0, "{st:#}");
    let report = check_results(&dir.join("results"), "crash", 12);
    assert!(report.starts_with("ok: 12 runs"), "{report}");
}

#[test]
fn d_a_frozen_worker_past_its_lease_is_fenced_off_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = spec(dir, "freeze", 30, "");
    let (_server, url) = serve(&dir.join("state.db"), 0, 2);
    assert!(
        cli(dir, &url, &["submit", spec.to_str().unwrap()])
            .status
            .success()
    );
    let log = dir.join("frozen.log");
    let frozen = worker(&url, "frozen", &log);
    let held = wait_for(
        dir,
        &url,
        "freeze",
        Duration::from_secs(120),
        "frozen mid-shard",
        |s| {
            s["running"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|x| x["worker"] == "frozen" && early_in_training(x))
            })
        },
    );
    let shard = held["running"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["worker"] == "frozen")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Freeze the agent: no heartbeats, so its lease expires; its child trains on and stages
    // its output under its own attempt.
    frozen.signal(libc::SIGSTOP);
    let other = worker(&url, "other", &dir.join("other.log"));
    let st = wait_for(
        dir,
        &url,
        "freeze",
        Duration::from_secs(300),
        "12 commits",
        |s| count(s, "committed") == 12,
    );
    assert!(st["interruptions"].as_u64() >= Some(1), "{st:#}");
    let before = published(&dir.join("results"));
    frozen.signal(libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("commit refused: lease lost")
    {
        assert!(
            Instant::now() < deadline,
            "the thawed worker never tried to commit:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(other);
    drop(frozen);
    assert_eq!(
        published(&dir.join("results")),
        before,
        "a fenced attempt changed results"
    );
    let o = cli(dir, &url, &["status", "freeze", "--json", "--shards"]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == shard.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["state"], "committed");
    assert!(row["committed_attempt"].as_u64() >= Some(2), "{row:#}");
    let report = check_results(&dir.join("results"), "freeze", 12);
    assert!(report.starts_with("ok: 12 runs"), "{report}");
    // The zombie's staging is garbage that gc removes.
    let o = cli(dir, &url, &["gc", "freeze"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        files(&dir.join("results/staging")).is_empty(),
        "gc left staging behind"
    );
}

#[test]
fn h_a_coordinator_stopped_past_the_ttl_keeps_its_healthy_leases() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = spec(dir, "stall", 30, "");
    let (server, url) = serve(&dir.join("state.db"), 0, 2);
    assert!(
        cli(dir, &url, &["submit", spec.to_str().unwrap()])
            .status
            .success()
    );
    let _w = worker(&url, "w", &dir.join("w.log"));
    wait_for(
        dir,
        &url,
        "stall",
        Duration::from_secs(120),
        "mid-shard",
        |s| {
            s["running"]
                .as_array()
                .is_some_and(|r| r.iter().any(early_in_training))
        },
    );
    // The coordinator freezes for 2.5 TTLs while the worker trains on. Its heartbeats wait
    // unread; when it thaws, its lease is healthy, not expired.
    server.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(5));
    server.signal(libc::SIGCONT);
    let st = wait_for(
        dir,
        &url,
        "stall",
        Duration::from_secs(300),
        "12 commits",
        |s| count(s, "committed") == 12,
    );
    assert_eq!(
        (st["interruptions"].as_u64(), st["failures"].as_u64()),
        (Some(0), Some(0)),
        "a stall of the coordinator expired a healthy lease: {st:#}"
    );
    let o = cli(dir, &url, &["status", "stall", "--json", "--shards"]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let retrained: Vec<&serde_json::Value> = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["attempts"] != 1)
        .collect();
    assert!(retrained.is_empty(), "{retrained:#?}");
}

#[test]
fn e_retry_reruns_only_failed_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // One grid point reads a dataset directory that does not exist: it fails at run time.
    let spec = spec(
        dir,
        "flaky",
        1,
        r#"[[include]]
seed = 99
"data.dataset" = "mnist"
"data.dir" = "/nonexistent/mnist""#,
    );
    let (_server, url) = serve(&dir.join("state.db"), 0, 5);
    let o = cli(dir, &url, &["submit", spec.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let _w = worker(&url, "w", &dir.join("w.log"));
    let st = wait_for(
        dir,
        &url,
        "flaky",
        Duration::from_secs(300),
        "all done",
        finished,
    );
    assert_eq!(
        (count(&st, "committed"), count(&st, "failed")),
        (12, 1),
        "{st:#}"
    );
    let failed = &st["failed"][0];
    assert_eq!(
        failed["attempts"], 3,
        "the budget is three application failures"
    );
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/mnist"),
        "{failed:#}"
    );
    let before = published(&dir.join("results"));
    let o = cli(dir, &url, &["retry", "flaky"]);
    assert!(
        text(&o.stdout).starts_with("sweep flaky: 1 shards pending again"),
        "{}",
        text(&o.stdout)
    );
    let st = wait_for(
        dir,
        &url,
        "flaky",
        Duration::from_secs(120),
        "the retry ends",
        |s| finished(s) && s["failed"][0]["attempts"].as_u64() == Some(6),
    );
    assert_eq!(
        count(&st, "committed"),
        12,
        "committed shards are never rerun"
    );
    assert_eq!(published(&dir.join("results")), before);
    // gc keeps what a failed shard staged (a retry resumes from its checkpoints) unless told.
    let o = cli(dir, &url, &["gc", "flaky"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let staged = files(&dir.join("results/staging"));
    assert!(
        !staged.is_empty()
            && staged
                .iter()
                .all(|(f, _)| f.to_string_lossy().contains("/flaky/")),
        "{:?}",
        staged.iter().map(|(f, _)| f).collect::<Vec<_>>()
    );
    let o = cli(dir, &url, &["gc", "flaky", "--failed"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        files(&dir.join("results/staging")).is_empty(),
        "gc --failed left a failed shard's staging behind"
    );
}

#[test]
fn g_failures_are_classified_full_disk_oom_kill_and_invalid_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let results = dir.join("results");
    std::fs::create_dir_all(&results).unwrap();
    // Two shards that can run, and one whose start lies beyond its training: the folder
    // dataset's size is unknown when the spec is planned, so only the engine can tell.
    let mnist = repo().join("data/mnist-10k");
    let body = format!(
        r#"
name = "cls"

[grid]
seed = [0, 1]
"data.max_train_examples" = [4000]

[[include]]
seed = 7
"data.dataset" = "mnist"
"data.dir" = "{}"
"eval.starts" = ["init", "step:100000"]

[model]
hidden = [256, 256]

[train]
epochs = 100
lr = 0.01

[snapshot]
every = 32

[eval]
max_examples = 400
alpha_points = 11
alpha_start = 0.0
alpha_stop = 1.0

[storage]
results = "{}"
"#,
        mnist.display(),
        results.display()
    );
    let spec = dir.join("cls.toml");
    std::fs::write(&spec, body).unwrap();
    let (_server, url) = serve(&dir.join("state.db"), 0, 5);
    let o = cli(dir, &url, &["submit", spec.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    // 1. A worker whose results disk is full: its own mount namespace with a 64 KiB tmpfs
    // over the results folder (nothing outside sees it). It must give every shard back
    // untouched, and stop as unhealthy after three infrastructure failures in a row.
    let log = dir.join("full.log");
    let full = Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            r#"mount -t tmpfs -o size=64k tmpfs "$0" && exec "$@""#,
        ])
        .arg(&results)
        .arg(bin())
        .args([
            "worker",
            "--coordinator",
            &url,
            "--token",
            TOKEN,
            "--name",
            "full",
        ])
        .args([
            "--max-backoff",
            "0.5",
            "--idle-poll",
            "0.2",
            "--exit-when-idle",
        ])
        .env("RAYON_NUM_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("unshare runs (util-linux; mount namespaces need root or CAP_SYS_ADMIN)");
    let ended = wait_exit(&mut Proc(full).0, Duration::from_secs(120));
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(!err.contains("mount:"), "could not mount the tmpfs:\n{err}");
    assert!(!ended.success(), "{err}");
    assert!(
        err.contains("infrastructure failures in a row") && err.contains("No space left on device"),
        "{err}"
    );
    // Every shard, the invalid one included, failed on this disk before it could say more
    // (a shard writes its config next to its snapshots first): all pending, no budget spent.
    let st = status(dir, &url, "cls").expect("status");
    assert_eq!(
        st["failures"], 0,
        "a full disk spent failure budget: {st:#}"
    );
    assert!(st["interruptions"].as_u64() >= Some(3), "{st:#}");
    assert_eq!(count(&st, "pending"), 3, "{st:#}");
    // It told the coordinator why it stopped taking shards.
    let o = cli(dir, &url, &["workers"]);
    assert!(
        text(&o.stdout).contains("UNHEALTHY: ") && text(&o.stdout).contains("No space left"),
        "{}",
        text(&o.stdout)
    );

    // 2. A healthy worker. The OOM killer's SIGKILL of its child is the machine's doing too:
    // the shard resumes and commits, its budget untouched.
    let w = worker(&url, "w", &dir.join("w.log"));
    wait_for(
        dir,
        &url,
        "cls",
        Duration::from_secs(120),
        "a shard mid-training",
        |s| {
            s["running"].as_array().is_some_and(|r| {
                r.iter().any(|x| {
                    let done = x["done"].as_u64().unwrap_or(0);
                    x["phase"] == "train" && done > 0 && done * 2 < x["total"].as_u64().unwrap_or(0)
                })
            })
        },
    );
    let children = children_of(w.0.id());
    assert_eq!(children.len(), 1, "one child per slot: {children:?}");
    // SAFETY: kill(2) on a pid this test just read from /proc.
    unsafe {
        libc::kill(children[0] as libc::pid_t, libc::SIGKILL);
    }
    let st = wait_for(
        dir,
        &url,
        "cls",
        Duration::from_secs(300),
        "the sweep ends",
        finished,
    );
    assert_eq!(
        (count(&st, "committed"), count(&st, "failed")),
        (2, 1),
        "{st:#}"
    );
    // Only the invalid start spent budget, and one unit of it: it failed at its first report
    // from a machine that could run it, with the reason.
    assert_eq!(st["failures"], 1, "a killed child spent no budget: {st:#}");
    let bad = &st["failed"][0];
    assert_eq!(bad["failures"], 1, "{bad:#}");
    assert!(
        bad["last_error"].as_str().unwrap().contains("step:100000"),
        "{bad:#}"
    );
    let o = cli(dir, &url, &["status", "cls", "--shards", "--json"]);
    let shards: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)));
    let killed = shards["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("killed"))
        })
        .unwrap_or_else(|| panic!("no shard records the kill: {shards:#}"));
    assert_eq!(
        (killed["state"].as_str(), killed["failures"].as_u64()),
        (Some("committed"), Some(0)),
        "{killed:#}"
    );
}

/// `exec` in staged mode as a worker runs it: stdin held open (the agent's lifeline), JSON
/// progress on stdout.
fn staged_exec(dir: &Path, config_json: &str, out: &str, attempt: u32) -> Child {
    Command::new(bin())
        .args([
            "-q",
            "exec",
            "--progress-jsonl",
            "--config-json",
            config_json,
        ])
        .args([
            "--out",
            out,
            "--sweep",
            "resume",
            "--attempt",
            &attempt.to_string(),
        ])
        .args(["--checkpoint-every", "25"])
        .env("RAYON_NUM_THREADS", "1")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn exec")
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "exec did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn f_a_shard_resumed_from_a_checkpoint_equals_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = spec(dir, "resume", 20, "");
    let o = linesweep(
        &["plan", spec.to_str().unwrap(), "--json"],
        dir,
        Duration::from_secs(30),
    );
    let plan = text(&o.stdout);
    // Adam: its per-parameter state (moments, step count) must survive the checkpoint too.
    let first: serde_json::Value = plan
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["config"]["train"]["optimizer"] == "adam")
        .unwrap();
    let config = first["config"].to_string();

    let mut whole = staged_exec(dir, &config, "whole", 1);
    assert!(wait_exit(&mut whole, Duration::from_secs(120)).success());

    // Interrupted mid-training with SIGTERM (a preemption): it checkpoints and exits 75.
    let mut first_try = staged_exec(dir, &config, "parts", 1);
    let stdout = first_try.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = lines
            .next()
            .expect("exec ended before mid-training")
            .unwrap();
        let p: serde_json::Value = serde_json::from_str(&line).unwrap();
        if p["phase"] == "train" && p["done"].as_u64() >= Some(60) {
            break;
        }
        assert!(Instant::now() < deadline, "no training progress");
    }
    // SAFETY: kill(2) on our child.
    unsafe {
        libc::kill(first_try.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = wait_exit(&mut first_try, Duration::from_secs(60));
    assert_eq!(status.code(), Some(75), "an interrupted shard exits 75");
    let shard = first["shard"].as_str().unwrap();
    let staged = |root: &str, attempt: u32| {
        dir.join(root)
            .join(format!("staging/resume/{shard}/attempt-{attempt}"))
    };
    let checkpoints = files(&staged("parts", 1).join("checkpoints"));
    assert!(
        checkpoints.iter().any(|(p, _)| p.ends_with("state.json")),
        "no checkpoint was written"
    );

    // Attempt 2 resumes from attempt 1's checkpoint …
    let mut second = staged_exec(dir, &config, "parts", 2);
    let mut err = String::new();
    let mut stderr = second.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        std::io::Read::read_to_string(&mut stderr, &mut err).ok();
        err
    });
    assert!(wait_exit(&mut second, Duration::from_secs(120)).success());
    drop(second);
    let _ = reader.join();
    // … and every snapshot, the manifest, the line and the trajectory are byte-identical.
    let strip = |root: &Path| -> Vec<(String, Vec<u8>)> {
        files(root)
            .into_iter()
            .filter(|(p, _)| {
                let s = p.to_string_lossy();
                !s.contains("/checkpoints/")
                    && !s.contains("/results/runs/")
                    && !s.ends_with("/attempt.json")
            })
            .map(|(p, b)| (p.strip_prefix(root).unwrap().display().to_string(), b))
            .collect()
    };
    let a = strip(&staged("whole", 1));
    let b = strip(&staged("parts", 2));
    assert!(a.len() >= 10, "{} files", a.len());
    assert_eq!(
        a.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        b.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for ((p, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{p} differs after resuming");
    }
}

/// `snapshot.keep = "lines"` deletes the snapshots no line needs once the trajectory is
/// computed; a kill -9 between that deletion and `attempt.json` leaves a checkpoint whose
/// snapshots are gone. The next attempt discards it with a warning the user sees and starts
/// over, instead of failing forever as a storage error.
#[test]
fn l_a_checkpoint_whose_snapshots_were_dropped_is_discarded_not_a_dead_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = spec(dir, "lines", 4, "");
    let o = linesweep(
        &["plan", spec.to_str().unwrap(), "--json"],
        dir,
        Duration::from_secs(30),
    );
    let mut first: serde_json::Value =
        serde_json::from_str(text(&o.stdout).lines().next().unwrap()).unwrap();
    first["config"]["snapshot"]["keep"] = "lines".into();
    let config = first["config"].to_string();
    let mut one = staged_exec(dir, &config, "out", 1);
    assert!(wait_exit(&mut one, Duration::from_secs(120)).success());
    let shard = first["shard"].as_str().unwrap();
    let attempt = |n: u32| dir.join(format!("out/staging/resume/{shard}/attempt-{n}"));
    // The kill: attempt 1 got as far as dropping its snapshots, not to its manifest.
    std::fs::remove_file(attempt(1).join("attempt.json")).unwrap();
    let kept = std::fs::read_dir(attempt(1).join(format!("snapshots/{shard}")))
        .unwrap()
        .count();
    assert!(
        kept < 5,
        "keep = lines dropped some snapshots ({kept} files left)"
    );
    let mut two = staged_exec(dir, &config, "out", 2);
    let (mut stdout, mut stderr) = (two.stdout.take().unwrap(), two.stderr.take().unwrap());
    let drain = std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let reader = std::thread::spawn(move || {
        let mut err = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut err).ok();
        err
    });
    let status = wait_exit(&mut two, Duration::from_secs(120));
    drop(two);
    let err = reader.join().unwrap();
    let _ = drain.join();
    assert!(status.success(), "{status}: {err}");
    assert!(
        err.contains("discarding a checkpoint") && err.contains("is gone"),
        "{err}"
    );
    assert!(attempt(2).join("attempt.json").is_file());
}

#[test]
fn run_embedded_resumes_after_ctrl_c_and_after_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = spec(dir, "embedded", 12, "");
    let spec = spec.to_str().unwrap();
    let runs_dir = dir.join("results/results/runs/sweep=embedded");
    let out = dir.join("results");
    let out = out.to_str().unwrap();
    let committed = || std::fs::read_dir(&runs_dir).map_or(0, |d| d.count());
    // Started, then stopped once `at_least` shards are committed.
    let interrupt = |at_least: usize, sig: i32| {
        let mut run = Command::new(bin())
            .args(["run", spec, "--workers", "2", "--out", out])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(180);
        while committed() < at_least {
            assert!(Instant::now() < deadline, "no commits within 180 s");
            assert!(run.try_wait().unwrap().is_none(), "run ended early");
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: kill(2) on our child.
        unsafe {
            libc::kill(run.id() as libc::pid_t, sig);
        }
        let status = wait_exit(&mut run, Duration::from_secs(90));
        assert!(
            !status.success(),
            "an interrupted run must not report success"
        );
        let mut said = String::new();
        std::io::Read::read_to_string(&mut run.stdout.take().unwrap(), &mut said).unwrap();
        said
    };
    // Ctrl-C: running shards checkpoint and give their leases back; the run says how to resume.
    let said = interrupt(2, libc::SIGINT);
    assert!(
        said.contains("run the same command again to resume"),
        "{said}"
    );
    let first = files(&runs_dir);
    // kill -9: nothing gets a chance to clean up.
    interrupt(first.len() + 2, libc::SIGKILL);
    let before = files(&runs_dir);
    assert!(
        before.len() < 12,
        "{} committed before the last run",
        before.len()
    );
    // Running the same command again finishes the sweep without rerunning committed shards.
    let o = linesweep(
        &["run", spec, "--workers", "2", "--out", out],
        dir,
        Duration::from_secs(300),
    );
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", text(&o.stderr));
    assert!(stdout.contains("12 committed"), "{stdout}");
    assert!(
        stdout.contains("monotone") && stdout.contains("duckdb -c"),
        "{stdout}"
    );
    assert!(
        stdout.contains("optimizer=sgd") && stdout.contains("optimizer=adam"),
        "{stdout}"
    );
    let after = files(&runs_dir);
    for (path, bytes) in &before {
        let now = after
            .iter()
            .find(|(p, _)| p == path)
            .expect("a committed run vanished");
        assert_eq!(&now.1, bytes, "{} was rewritten", path.display());
    }
    let report = check_results(&dir.join("results"), "embedded", 12);
    assert!(report.starts_with("ok: 12 runs"), "{report}");
}

#[test]
fn i_a_lost_ledger_is_rebuilt_from_the_results_root() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = spec(dir, "lost", 1, "");
    let spec = spec.to_str().unwrap();
    let root = dir.join("results");
    let out = root.to_str().unwrap();
    let run = || linesweep(&["run", spec, "--out", out], dir, Duration::from_secs(600));
    let o = run();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let before = published(&root);
    assert!(!before.is_empty());
    // `run` with its state file gone: the results are the truth; nothing trains again.
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(root.join(".linesweep").join(f));
    }
    let o = run();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("12 committed"),
        "{}",
        text(&o.stdout)
    );
    assert!(
        text(&o.stderr).contains("ledger rebuilt from the results root"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(published(&root), before, "a committed shard ran again");

    // A coordinator whose ledger is lost: `serve --recover` rebuilds it from --results, and
    // the resubmission adds nothing to run.
    let (_server, url) = common::serve(
        &[
            "--token",
            TOKEN,
            "--listen",
            "127.0.0.1:0",
            "--results",
            out,
            "--recover",
        ],
        &dir.join("new-state.db"),
    );
    let o = cli(dir, &url, &["submit", spec]);
    assert_eq!(
        text(&o.stdout).trim(),
        format!(
            "sweep lost: 12 shards, 0 added, 12 already known; results in {}",
            dir.join("results").display()
        ),
        "{}",
        text(&o.stderr)
    );
    let st = status(dir, &url, "lost").expect("status");
    assert_eq!(count(&st, "committed"), 12, "{st:#}");
    assert!(finished(&st), "{st:#}");
    // The rebuilt ledger knows the sweep's settings from that submission: a change is refused.
    let changed = std::fs::read_to_string(spec)
        .unwrap()
        .replace("epochs = 1", "epochs = 2");
    std::fs::write(spec, changed).unwrap();
    let o = cli(dir, &url, &["submit", spec]);
    assert!(
        !o.status.success() && text(&o.stderr).contains("train.epochs: 1 → 2"),
        "{}",
        text(&o.stderr)
    );
}

/// Distinct shards in the `runs` summary of `sweep` under `results` (`None`: no summary yet).
fn summary_shards(results: &Path, sweep: &str) -> Option<u64> {
    let file = results.join(format!("summaries/runs/sweep={sweep}/all.parquet"));
    if !file.exists() {
        return None;
    }
    let sql = format!(
        "select count(distinct shard) from read_parquet('{}')",
        file.display()
    );
    duckdb_value(&sql).parse().ok()
}

#[test]
fn summaries_are_rewritten_after_n_commits_and_after_t_seconds() {
    for (flags, why) in [
        (
            ["--summary-commits", "1", "--summary-every", "3600"],
            "after 1 commit",
        ),
        (
            ["--summary-commits", "1000", "--summary-every", "1"],
            "after 1 s",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut args = vec![
            "--token",
            TOKEN,
            "--lease-ttl",
            "5",
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend(flags);
        let (_server, url) = common::serve(&args, &dir.join("state.db"));
        let spec = spec(dir, "summ", 10, "");
        let o = cli(dir, &url, &["submit", spec.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let w = worker(&url, "w", &dir.join("w.log"));
        wait_for(
            dir,
            &url,
            "summ",
            Duration::from_secs(120),
            "a commit",
            |s| count(s, "committed") >= 1,
        );
        // With its only worker gone the sweep cannot end, so the end-of-sweep rewrite cannot
        // be what writes the summary: only the trigger under test can.
        w.signal(libc::SIGKILL);
        drop(w);
        let results = dir.join("results");
        poll_until(
            Duration::from_secs(30),
            &format!("a summary {why} holding every committed shard"),
            || {
                let st = status(dir, &url, "summ")?;
                Some((
                    count(&st, "committed"),
                    count(&st, "pending") + count(&st, "leased"),
                    summary_shards(&results, "summ"),
                ))
            },
            |(committed, unfinished, summary)| *unfinished > 0 && *summary == Some(*committed),
        );
    }
}

/// A family in `NAME.toml`: one parent (seed 0), two children forked from its snapshot at
/// `step` with data orders 1 and 2, and the pair line between the children. `data` goes into
/// `[data]`; `rest` is more TOML (sections of its own).
fn family_spec(dir: &Path, name: &str, data: &str, rest: &str, step: u64) -> PathBuf {
    let text = format!(
        r#"
name = "{name}"
[model]
hidden = [256, 256]
[data]
{data}
{rest}
[grid]
data_seed = [1, 2]
init_from = [{{ step = {step} }}]
[[include]]
seed = 0
[[pairs]]
a = {{ data_seed = 1 }}
b = {{ data_seed = 2 }}
[storage]
results = "{}"
"#,
        dir.join("results").display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A parent, two children forked from its step-16 snapshot with two data orders, and the pair
/// line between the children: the children and the pair wait for what they need, and a
/// worker killed (kill -9) while it evaluates the pair's line leaves exactly one `pairs` file.
#[test]
fn j_dependent_shards_wait_and_a_pair_killed_mid_line_ends_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = family_spec(
        dir,
        "lmc",
        "max_train_examples = 4000",
        "[train]\nepochs = 2\nlr = 0.05\n[snapshot]\nevery = 16\n[eval]\nalpha_points = 161\nalpha_start = 0.0\nalpha_stop = 1.0",
        16,
    );
    let (_server, url) = serve(&dir.join("state.db"), 0, 2);
    let o = cli(dir, &url, &["submit", spec.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Before any worker: the parent is pending, the children and the pair wait.
    let st = status(dir, &url, "lmc").unwrap();
    assert_eq!(
        (count(&st, "pending"), count(&st, "waiting")),
        (1, 3),
        "{st:#}"
    );
    let victim = worker(&url, "victim", &dir.join("victim.log"));
    // The pair is the last shard to become runnable; kill its worker a third into its line.
    let st = wait_for(
        dir,
        &url,
        "lmc",
        Duration::from_secs(300),
        "the pair mid-line",
        |s| {
            count(s, "committed") == 3
                && s["running"].as_array().is_some_and(|r| {
                    r.iter().any(|x| {
                        let (done, total) = (x["done"].as_u64(), x["total"].as_u64());
                        x["phase"] == "line" && done.is_some_and(|d| d > 0 && Some(d * 3) < total)
                    })
                })
        },
    );
    assert_eq!(count(&st, "waiting"), 0, "{st:#}");
    victim.signal(libc::SIGKILL);
    drop(victim);
    let _rescuer = worker(&url, "rescuer", &dir.join("rescuer.log"));
    let st = wait_for(
        dir,
        &url,
        "lmc",
        Duration::from_secs(300),
        "4 commits",
        |s| count(s, "committed") == 4,
    );
    assert!(st["interruptions"].as_u64() >= Some(1), "{st:#}");
    let report = check_sweep_with_pairs(&dir.join("results"), "lmc", 3, 161, 1);
    assert!(report.starts_with("ok: 3 runs"), "{report}");
    let attempt = duckdb_value(&format!(
        "select min(attempt) from read_parquet('{}/results/results/pairs/**/*.parquet')",
        dir.display()
    ));
    assert_eq!(attempt, "2", "the rescuer's attempt is the one published");
}

/// A parent that cannot run (its dataset is missing) holds its children and, through them,
/// their pair: `status` says which shard holds them, a worker that exits when idle does not
/// wait for them, and `retry` of the parent sends them back to waiting.
#[test]
fn k_a_failed_parent_holds_its_dependants_until_it_is_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = format!(
        "dataset = \"mnist\"\ndir = \"{}\"",
        dir.join("no-mnist-here").display()
    );
    let spec = family_spec(dir, "held", &data, "", 0);
    let (_server, url) = serve(&dir.join("state.db"), 0, 2);
    let o = cli(dir, &url, &["submit", spec.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut idle = Command::new(bin());
    idle.args(["worker", "--coordinator", &url, "--token", TOKEN])
        .args(["--name", "idle", "--exit-when-idle", "--max-backoff", "0.5"])
        .stdin(Stdio::null());
    let o = run_with_deadline(idle, Duration::from_secs(120));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let st = status(dir, &url, "held").unwrap();
    assert_eq!((count(&st, "failed"), count(&st, "held")), (1, 3), "{st:#}");
    let parent = st["failed"][0]["id"].as_str().unwrap().to_owned();
    let held: Vec<&str> = st["held"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["held_by"].as_str().unwrap())
        .collect();
    assert_eq!(held.len(), 3, "{st:#}");
    let by_parent = format!("needs {parent} (failed)");
    assert_eq!(
        held.iter().filter(|h| h.contains(&by_parent)).count(),
        2,
        "{held:?}"
    );
    assert!(
        held.iter().any(|h| h.contains("(held)")),
        "the pair is held by its children"
    );
    let o = cli(dir, &url, &["status", "held"]);
    let shown = text(&o.stdout);
    assert!(
        shown.contains("3 held") && shown.contains(&by_parent),
        "{shown}"
    );
    let o = cli(dir, &url, &["retry", "held"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let st = status(dir, &url, "held").unwrap();
    assert_eq!(
        (count(&st, "pending"), count(&st, "waiting")),
        (1, 3),
        "{st:#}"
    );
}
