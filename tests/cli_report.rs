//! `linesweep report` (and `run --report`), checked in real headless Chromium (Debian's
//! `chromium`, installed by `scripts/test-deps.sh`): the page's DOM has every figure and a row
//! per run, its screenshot is not blank; a sweep whose shards all failed gets a page that says
//! so, with their errors; an empty results folder is a clear error.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Headless Chromium on `page`: `--dump-dom` and a screenshot `shot` of `width` × `height`.
fn chromium(page: &Path, shot: &Path, width: u32, height: u32) -> String {
    let program = std::env::var("LINESWEEP_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", page.display());
    let base = |cmd: &mut Command| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()));
    };
    let mut dom = Command::new(&program);
    base(&mut dom);
    dom.args(["--dump-dom", &url]);
    let o = run_with_deadline(dom, Duration::from_secs(120));
    assert!(
        o.status.success(),
        "{program} --dump-dom: {}",
        text(&o.stderr)
    );
    let mut snap = Command::new(&program);
    base(&mut snap);
    snap.arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url);
    let s = run_with_deadline(snap, Duration::from_secs(120));
    assert!(
        s.status.success(),
        "{program} --screenshot: {}",
        text(&s.stderr)
    );
    text(&o.stdout)
}

#[test]
fn the_report_opens_in_chromium_with_every_figure_and_a_row_per_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = tiny_grid_spec(dir, "report", "");
    let o = linesweep(
        &[
            "run",
            spec.to_str().unwrap(),
            "--workers",
            "2",
            "--report",
            "page.html",
        ],
        dir,
        Duration::from_secs(300),
    );
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}{}", text(&o.stderr));
    assert!(out.contains("report: page.html"), "{out}");
    let page = dir.join("page.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page needs no network"
    );
    let dom = chromium(&page, &dir.join("shot.png"), 1200, 2400);
    // Loss and accuracy lines, the trajectory, two heatmaps, the starts.
    assert_eq!(dom.matches("<figure>").count(), 6, "{dom}");
    assert_eq!(dom.matches("<img alt=").count(), 6);
    assert_eq!(
        dom.matches("<tr class=\"run\">").count(),
        8,
        "a row per run"
    );
    assert!(dom.contains("No failed shards."));
    assert!(dom.contains("optimizer=adam lr=0.001"), "the groups table");
    assert!(dom.contains("read_parquet("), "the DuckDB snippet");
    let (w, h, colours) = png_stats(&dir.join("shot.png"));
    assert_eq!((w, h), (1200, 2400));
    assert!(colours > 200, "a blank page? {colours} colours");

    // The page's DuckDB and Polars snippets run as they are shown.
    let snippets: Vec<String> = html
        .split("<pre>")
        .skip(1)
        .map(|p| {
            p.split("</pre>")
                .next()
                .unwrap()
                .replace("&#39;", "'")
                .replace("&quot;", "\"")
                .replace("&gt;", ">")
                .replace("&lt;", "<")
                .replace("&amp;", "&")
        })
        .collect();
    assert_eq!(snippets.len(), 2, "a DuckDB and a Polars snippet");
    let duckdb = "import duckdb, sys\ncon = duckdb.connect()\nfor q in sys.argv[1].split(';'):\n    q = '\\n'.join(l for l in q.splitlines() if not l.startswith('--')).strip()\n    if q:\n        print(len(con.execute(q).fetchall()))";
    for (code, arg) in [(duckdb, snippets[0].as_str()), (snippets[1].as_str(), "")] {
        let mut cmd = python();
        cmd.args(["-c", code, arg]).current_dir(dir);
        let o = run_with_deadline(cmd, Duration::from_secs(120));
        assert!(o.status.success(), "{code}\n{}", text(&o.stderr));
    }

    // `linesweep report` writes the same page on its own.
    let o = linesweep(
        &["report", "--out", "again.html"],
        dir,
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let again = std::fs::read_to_string(dir.join("again.html")).unwrap();
    assert_eq!(again.matches("<figure>").count(), 6);

    // Summaries that lie or are damaged: the `interpolation` summary (as many shards, 41 rows
    // each) copied over the `runs` one, and a truncated `trajectory` summary. The report
    // still has a row per run and every figure, from the per-shard files, with a warning;
    // `summarize` (the repair) rebuilds both.
    let summaries = dir.join("linesweep-results/summaries");
    let summary = |t: &str| summaries.join(format!("{t}/sweep=report/all.parquet"));
    std::fs::copy(summary("interpolation"), summary("runs")).unwrap();
    let trajectory = std::fs::read(summary("trajectory")).unwrap();
    std::fs::write(summary("trajectory"), &trajectory[..trajectory.len() / 2]).unwrap();
    let o = linesweep(
        &["report", "--out", "lied.html"],
        dir,
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("not using this summary"), "{err}");
    let lied = std::fs::read_to_string(dir.join("lied.html")).unwrap();
    assert_eq!(
        lied.matches("<tr class=\"run\">").count(),
        8,
        "a row per run"
    );
    assert_eq!(lied.matches("<figure>").count(), 6);
    let o = linesweep(
        &["summarize", "report", "--results", "linesweep-results"],
        dir,
        Duration::from_secs(120),
    );
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}{}", text(&o.stderr));
    assert!(
        out.contains("summaries/runs/sweep=report/all.parquet: 8 shards (8 added)")
            && out.contains("summaries/trajectory/sweep=report/all.parquet: 8 shards (8 added)"),
        "{out}"
    );
    let o = linesweep(
        &["report", "--out", "repaired.html"],
        dir,
        Duration::from_secs(120),
    );
    assert!(
        !text(&o.stderr).contains("not using this summary"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn a_sweep_whose_shards_all_failed_gets_a_page_that_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = tiny_grid_spec(
        dir,
        "broken",
        &format!(
            "dataset = \"mnist\"\ndir = \"{}\"",
            dir.join("mnist").display()
        ),
    );
    let o = linesweep(
        &["run", spec.to_str().unwrap(), "--workers", "2"],
        dir,
        Duration::from_secs(300),
    );
    assert!(
        text(&o.stdout).contains("8 failed"),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    // A sweep with failed shards is no success: `run` exits non-zero and says the way out.
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("8 shards of sweep broken failed")
            && text(&o.stderr).contains("--retry-failed"),
        "{}",
        text(&o.stderr)
    );
    // No sweep has a committed shard: naming none is an error that says so.
    let o = linesweep(&["report"], dir, Duration::from_secs(60));
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("no committed shard of any sweep"),
        "{}",
        text(&o.stderr)
    );
    let o = linesweep(
        &["report", "broken", "--out", "broken.html"],
        dir,
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let page = dir.join("broken.html");
    let dom = chromium(&page, &dir.join("broken.png"), 1000, 800);
    assert!(
        dom.contains("No shard of this sweep is committed yet"),
        "{dom}"
    );
    assert!(
        dom.matches(&*dir.join("mnist").display().to_string())
            .count()
            >= 8,
        "every failure with its error: {dom}"
    );
    assert_eq!(dom.matches("<figure>").count(), 0);
    // A state file that is not a ledger is named as such; a ledger without this sweep (a
    // coordinator's, here new) leaves the page drawn from the results, saying so.
    std::fs::write(dir.join("empty.db"), b"").unwrap();
    let o = linesweep(
        &["report", "broken", "--state", "empty.db", "--out", "e.html"],
        dir,
        Duration::from_secs(60),
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("empty.db") && err.contains("holds no linesweep ledger"),
        "{err}"
    );
    drop(serve(&["--listen", "127.0.0.1:0"], &dir.join("other.db")));
    let o = linesweep(
        &[
            "report",
            "broken",
            "--state",
            "other.db",
            "--out",
            "other.html",
        ],
        dir,
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let other = std::fs::read_to_string(dir.join("other.html")).unwrap();
    assert!(other.contains("has no sweep named broken"), "{other}");
    // An empty results folder.
    let empty = tempfile::tempdir().unwrap();
    let o = linesweep(
        &["report", "--results", empty.path().to_str().unwrap()],
        dir,
        Duration::from_secs(60),
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("no committed shard of any sweep"),
        "{}",
        text(&o.stderr)
    );
    // The cause fixed (the missing folder now holds MNIST files, the sample's): `run
    // --retry-failed` runs the failed shards again.
    std::fs::create_dir(dir.join("mnist")).unwrap();
    for f in std::fs::read_dir(repo().join("data/mnist-10k")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join("mnist").join(f.file_name().unwrap())).unwrap();
    }
    let again = |extra: &[&str]| {
        let mut args = vec!["run", spec.to_str().unwrap(), "--workers", "2"];
        args.extend(extra);
        linesweep(&args, dir, Duration::from_secs(300))
    };
    let o = again(&[]);
    assert!(!o.status.success(), "without the flag nothing reruns");
    let o = again(&["--retry-failed"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("8 committed"),
        "{}",
        text(&o.stdout)
    );
}
