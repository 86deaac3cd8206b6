//! Every shipped example is exercised by a test: a broken example is a broken product.

mod common;

use std::time::Duration;

use common::*;

/// The README's single-shard command, exactly as it reads there.
#[test]
fn the_readme_single_shard_example_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let example = repo().join("examples/shard-mnist-mlp.toml");
    let o = linesweep(
        &[
            "exec",
            "--config",
            example.to_str().unwrap(),
            "--out",
            "out",
        ],
        tmp.path(),
        Duration::from_secs(600),
    );
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let runs = tmp.path().join("out/results/runs/sweep=exec");
    assert_eq!(std::fs::read_dir(runs).unwrap().count(), 1);
}

/// A shard config is also a sweep spec of one shard: `plan` lists it.
#[test]
fn the_single_shard_example_plans_as_one_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let example = repo().join("examples/shard-mnist-mlp.toml");
    let o = linesweep(
        &["plan", example.to_str().unwrap(), "--json"],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let shards: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(shards.len(), 1, "{out}");
    assert_eq!(shards[0]["sweep"], "mnist-mlp");
}

/// The example says every field is the default: it must be the same shard as an empty file.
#[test]
fn the_single_shard_example_is_the_default_config() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("empty.toml"), "name = \"mnist-mlp\"\n").unwrap();
    let plan = |file: &str| {
        linesweep_worker::config::ShardConfig::from_file(std::path::Path::new(file))
            .unwrap()
            .shard_id()
    };
    let example = repo().join("examples/shard-mnist-mlp.toml");
    assert_eq!(
        plan(example.to_str().unwrap()),
        plan(tmp.path().join("empty.toml").to_str().unwrap())
    );
}

/// Each file in examples/ is named by at least one test.
#[test]
fn every_example_is_named_by_a_test() {
    let mut sources = String::new();
    for entry in std::fs::read_dir(repo().join("tests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            sources += &std::fs::read_to_string(path).unwrap();
        }
    }
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            sources.contains(&format!("examples/{name}")),
            "examples/{name} is exercised by no test"
        );
    }
}

/// The README's quickstart command, exactly as it reads there: six shards, results in
/// `./linesweep-results` (where users look, not under /tmp where they vanish on reboot).
#[test]
fn the_readme_quickstart_runs_into_linesweep_results() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = repo().join("examples/mnist-mli.toml");
    let o = linesweep(
        &["run", spec.to_str().unwrap(), "--workers", "2"],
        tmp.path(),
        Duration::from_secs(600),
    );
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    let root = tmp.path().join("linesweep-results");
    assert!(
        out.contains(&format!("results in {}", root.display())),
        "{out}"
    );
    assert!(out.contains("6 committed"), "{out}");
    let runs = root.join("results/runs/sweep=mnist-mli");
    assert_eq!(std::fs::read_dir(runs).unwrap().count(), 6);
    assert!(root.join("owners/sweep=mnist-mli.json").is_file());
    // The sweep ended, so its summary files hold every shard, once.
    let mut check = python();
    check
        .arg(repo().join("tests/python/check_summaries.py"))
        .arg(&root)
        .args(["mnist-mli", "6"]);
    let o = run_with_deadline(check, Duration::from_secs(120));
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(
        text(&o.stdout).starts_with("ok: runs 6 rows"),
        "{}",
        text(&o.stdout)
    );
    // The README's figure command, in the same folder.
    let o = linesweep(
        &["plot", "line", "--out", "line.png"],
        tmp.path(),
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let png = std::fs::read(tmp.path().join("line.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000);
    // By hand: nothing to add to a complete summary; a sweep with nothing committed is an error.
    let results = root.to_str().unwrap();
    let o = linesweep(
        &["summarize", "mnist-mli", "--results", results],
        tmp.path(),
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("summaries/runs/sweep=mnist-mli/all.parquet: 6 shards (0 added)"),
        "{out}"
    );
    let o = linesweep(
        &["summarize", "no-such-sweep", "--results", results],
        tmp.path(),
        Duration::from_secs(120),
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("no committed shard of sweep no-such-sweep"),
        "{err}"
    );
}

/// The README's landscape commands, as they read there: `examples/mnist-landscape.toml`
/// measures barriers, three planes and the monotone path, and `plot plane` draws the PCA one.
#[test]
fn the_landscape_example_measures_planes_and_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let example = repo().join("examples/mnist-landscape.toml");
    // It is a sweep spec of one shard too: `plan` takes the nested [eval.plane].
    let o = linesweep(
        &["plan", example.to_str().unwrap()],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("1 shard"), "{}", text(&o.stdout));
    let o = linesweep(
        &[
            "exec",
            "--config",
            example.to_str().unwrap(),
            "--out",
            "out",
        ],
        tmp.path(),
        Duration::from_secs(600),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = linesweep(
        &[
            "plot",
            "plane",
            "--results",
            "out",
            "--plane",
            "pca",
            "--out",
            "plane.png",
        ],
        tmp.path(),
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (_, _, colours) = png_stats(&tmp.path().join("plane.png"));
    assert!(colours > 40, "blank plane figure");
    let src = |t: &str| {
        format!(
            "read_parquet('{}/out/results/{t}/**/*.parquet')",
            tmp.path().display()
        )
    };
    let rows = duckdb_value(&format!(
        "select count(*) from {} where plane = 'pca' and split = 'train'",
        src("plane")
    ));
    assert_eq!(rows, "441");
    // The path never rises, and every point re-evaluates to its value.
    let bad = duckdb_value(&format!(
        "select count(*) from (select path_loss, check_loss, lag(path_loss) over (order by alpha) as before from {}) \
         where path_loss > before + 1e-12 or abs(path_loss - check_loss) > 1e-4 or path_loss is null",
        src("monotone_path")
    ));
    assert_eq!(bad, "0");
    let barriers = duckdb_value(&format!(
        "select count(*) from {} where loss_barrier >= 0 and error_barrier >= 0",
        src("lines")
    ));
    assert_eq!(barriers, "2");
}

/// The README's linear-mode-connectivity command: parents, children forked at four steps, and
/// pair lines between siblings; the children wait for their parents and the pairs for their
/// children inside `linesweep run`. As in Frankle et al. (2020), the pairs' error barrier is
/// large when the children fork at initialisation and falls as the fork moves later.
#[test]
fn the_lmc_example_runs_children_after_parents_and_pairs_after_children() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = repo().join("examples/mnist-lmc.toml");
    let o = linesweep(
        &["run", spec.to_str().unwrap(), "--out", "lmc"],
        tmp.path(),
        Duration::from_secs(900),
    );
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    assert!(out.contains("26 committed"), "{out}");
    // The summary has a row of pairs per spawn step (the data order is what a pair varies).
    for k in [0, 50, 200, 600] {
        let group = format!("init_from={{ step = {k} }}");
        let pairs = out
            .lines()
            .find_map(|l| l.strip_prefix(group.as_str()))
            .and_then(|rest| rest.split_whitespace().next());
        assert_eq!(pairs, Some("2"), "no pair row for k = {k}:\n{out}");
    }
    let root = tmp.path().join("lmc");
    let report = check_sweep_with_pairs(&root, "mnist-lmc", 18, 11, 8);
    assert!(report.starts_with("ok: 18 runs"), "{report}");
    let barrier = |k: u64| -> f64 {
        duckdb_value(&format!(
            "select avg(error_barrier) from read_parquet('{}/results/pairs/*/*.parquet') \
             where split = 'test' and alpha = 0 \
             and json_extract(config_json, '$.train.init_from.step')::int = {k}",
            root.display()
        ))
        .parse()
        .unwrap()
    };
    let (early, late) = (barrier(0), barrier(600));
    assert!(
        early > 0.01 && late < early / 3.0,
        "test error barrier {early} at k = 0, {late} at k = 600"
    );
    // docs/results.md's instability query, as it reads there: one row per spawn step.
    let doc = std::fs::read_to_string(repo().join("docs/results.md")).unwrap();
    let section = &doc[doc.find("## `pairs`").unwrap()..];
    let sql = section
        .split("```sql\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap()
        .replace("'out/results", &format!("'{}/results", root.display()));
    let rows = duckdb_value(&format!(
        "select count(*) from ({})",
        sql.trim().trim_end_matches(';')
    ));
    assert_eq!(rows, "4", "{sql}");
}
