//! Ways out of states that used to be dead ends: results deleted under a sweep state that
//! recorded them as committed, and a committed shard that has to run again
//! (`retry --committed`), as real processes.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// The shard ids with a published `runs` file in `root`.
fn committed(root: &Path, sweep: &str) -> Vec<String> {
    let dir = root.join(format!("results/runs/sweep={sweep}"));
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.trim_end_matches(".parquet").to_owned()
            })
            .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// `linesweep run` a second time after `results/` was deleted: the state's commits are
/// checked against the location, the missing ones reported and trained again — never
/// "8 committed" over an empty folder.
#[test]
fn results_deleted_under_the_sweep_state_are_rerun_not_reported_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = tiny_grid_spec(dir, "gone", "");
    let run = || {
        linesweep(
            &["run", spec.to_str().unwrap(), "--workers", "2"],
            dir,
            Duration::from_secs(300),
        )
    };
    let o = run();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("8 committed"),
        "{}",
        text(&o.stdout)
    );
    let root = dir.join("linesweep-results");
    let before = committed(&root, "gone");
    assert_eq!(before.len(), 8);
    std::fs::remove_dir_all(root.join("results")).unwrap();
    let o = run();
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{out}{err}");
    assert!(
        err.contains("records commits whose results are not in the results location"),
        "{err}"
    );
    assert!(out.contains("8 committed"), "{out}");
    assert_eq!(
        committed(&root, "gone"),
        before,
        "every shard published again"
    );
}

/// Modification times of the published `runs` files: equal before and after means nothing
/// was trained or published again.
fn runs_mtimes(root: &Path, sweep: &str) -> Vec<std::time::SystemTime> {
    committed(root, sweep)
        .iter()
        .map(|id| {
            let f = root.join(format!("results/runs/sweep={sweep}/{id}.parquet"));
            std::fs::metadata(f).unwrap().modified().unwrap()
        })
        .collect()
}

/// A results folder moved elsewhere is resumed by `run` where it is now: with the sweep state
/// kept inside it (which follows the folder), and without it (rebuilt from the results,
/// taking over from the lost ledger its owner marker names). Nothing is trained again.
#[test]
fn a_moved_results_folder_resumes_with_or_without_its_sweep_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = tiny_grid_spec(dir, "moved", "");
    let run = |out: &Path| {
        let args = ["run", spec.to_str().unwrap(), "--workers", "2", "--out"];
        let mut args = args.to_vec();
        args.push(out.to_str().unwrap());
        linesweep(&args, dir, Duration::from_secs(300))
    };
    let (a, b) = (dir.join("a"), dir.join("b"));
    let o = run(&a);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let published = runs_mtimes(&a, "moved");
    assert_eq!(published.len(), 8);
    std::fs::rename(&a, &b).unwrap();
    let o = run(&b);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("8 committed"), "{out}");
    assert!(err.contains("the results folder was moved"), "{err}");
    assert_eq!(runs_mtimes(&b, "moved"), published);
    // The sweep state lost as well: rebuilt from the results, it takes over.
    std::fs::remove_dir_all(b.join(".linesweep")).unwrap();
    let o = run(&b);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("8 committed"), "{out}");
    assert_eq!(runs_mtimes(&b, "moved"), published);
}

/// `retry --committed --shard X` on a coordinator: X's published results and snapshots are
/// removed, X runs again and is published exactly once more; the other shards are untouched.
#[test]
fn retry_committed_reruns_a_committed_shard_and_publishes_it_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let root = dir.join("results");
    let (_server, url) = serve(
        &[
            "--listen",
            "127.0.0.1:0",
            "--token",
            "tok",
            "--results",
            root.to_str().unwrap(),
        ],
        &dir.join("state.db"),
    );
    let client = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--coordinator", &url, "--token", "tok"]);
        linesweep(&all, dir, Duration::from_secs(60))
    };
    let work = || {
        let mut w = Command::new(bin());
        w.args(["worker", "--coordinator", &url, "--token", "tok"])
            .args(["--exit-when-idle", "--max-backoff", "0.5"])
            .current_dir(dir);
        let o = run_with_deadline(w, Duration::from_secs(300));
        assert!(o.status.success(), "{}", text(&o.stderr));
    };
    let spec = tiny_grid_spec(dir, "again", "");
    let o = client(&["submit", spec.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    work();
    let before = committed(&root, "again");
    assert_eq!(before.len(), 8);
    let x = before[3].clone();
    let runs_x = root.join(format!("results/runs/sweep=again/{x}.parquet"));
    let other = root.join(format!("results/runs/sweep=again/{}.parquet", before[0]));
    let untouched = std::fs::read(&other).unwrap();

    // Without naming shards: refused (clap), nothing changes.
    let o = client(&["retry", "again", "--committed"]);
    assert!(!o.status.success() && text(&o.stderr).contains("--shard"));
    let o = client(&["retry", "again", "--committed", "--shard", &x]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("1 shards pending again"),
        "{}",
        text(&o.stdout)
    );
    assert!(!runs_x.exists() && !root.join(format!("snapshots/{x}")).exists());
    work();
    assert_eq!(committed(&root, "again"), before);
    assert_eq!(std::fs::read(&other).unwrap(), untouched);
    let attempt = duckdb_value(&format!(
        "select attempt from read_parquet('{}')",
        runs_x.display()
    ));
    assert_eq!(attempt, "2", "the rerun is the shard's second attempt");
    let o = client(&["status", "again"]);
    assert!(
        text(&o.stdout).contains("8 committed"),
        "{}",
        text(&o.stdout)
    );
}

/// Two sweeps in one results root that share shards but differ in `snapshot.keep` (which is
/// not part of a shard id): the second sweep's shards fail at once, before training, saying
/// which setting differs and what to do — not as a publish conflict with a misleading way out.
#[test]
fn a_shard_shared_by_two_sweeps_with_other_snapshot_settings_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let all = tiny_grid_spec(dir, "keepall", "");
    let text_all = std::fs::read_to_string(&all).unwrap();
    let lines = dir.join("keeplines.toml");
    std::fs::write(
        &lines,
        text_all.replace("name = \"keepall\"", "name = \"keeplines\"")
            + "\n[snapshot]\nkeep = \"lines\"\n",
    )
    .unwrap();
    let run = |spec: &Path| {
        linesweep(
            &["run", spec.to_str().unwrap(), "--workers", "2"],
            dir,
            Duration::from_secs(300),
        )
    };
    let o = run(&all);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = run(&lines);
    assert!(!o.status.success(), "{}", text(&o.stdout));
    assert!(text(&o.stdout).contains("8 failed"), "{}", text(&o.stdout));
    let o = linesweep(
        &["report", "keeplines", "--out", "r.html"],
        dir,
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let page = std::fs::read_to_string(dir.join("r.html")).unwrap();
    assert_eq!(
        page.matches("another sweep in").count(),
        8,
        "every shard says why: {page}"
    );
    assert!(
        page.contains("snapshot.keep: default published, &quot;lines&quot; here"),
        "{page}"
    );
    assert!(!page.contains("retry SWEEP --committed"), "{page}");
}
