//! `linesweep report`: one self-contained HTML page per sweep (figures inlined as PNG data
//! URIs, no script, no network): the status from the ledger when there is one, a summary per
//! config group, the figures, every run, and the queries that reproduce the tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine as _;
use linesweep_coordinator::ledger::{LedgerError, LedgerReader, SweepStatus};
use linesweep_storage::ids::SweepName;
use linesweep_storage::layout;
use linesweep_worker::results::read::{Row, Value};
use linesweep_worker::storage::Storage;

use super::plot::{self, figures};
use crate::cli::{PlotArgs, PlotKind, ReportArgs};

/// Writes the report of `args`.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let html = page(&args.results, args.sweep.as_deref(), args.state.as_deref())?;
    std::fs::write(&args.out, html).with_context(|| format!("writing {}", args.out.display()))?;
    crate::render::emit(&format!("{}\n", args.out.display()))
}

/// The ledger `linesweep run` keeps for `storage` (`run::state_dir`), if it is there.
fn default_state(storage: &Storage) -> Option<PathBuf> {
    let p = super::run::state_dir(storage)
        .ok()?
        .join(super::run::STATE_FILE);
    p.exists().then_some(p)
}

/// Escapes text for HTML (five characters; a crate for them would be larger than this).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The whole page.
pub(crate) fn page(
    results: &str,
    sweep: Option<&str>,
    state: Option<&Path>,
) -> anyhow::Result<String> {
    // Absolute, so that the page's paths and queries work from anywhere.
    let results = &super::remote::absolute_location(results)?;
    let storage = Storage::open(results)?;
    let state = state
        .map(Path::to_owned)
        .or_else(|| default_state(&storage));
    let ledger = match &state {
        Some(p) => {
            Some(LedgerReader::open(p).with_context(|| format!("the ledger {}", p.display()))?)
        }
        None => None,
    };
    let sweep = match sweep {
        Some(s) => SweepName::parse(s.to_owned())?,
        None => plot::pick_sweep(&storage, None, results)?,
    };
    let status = match (&ledger, &state) {
        (Some(l), Some(path)) => match l.reads().status(sweep.as_str()) {
            Ok(st) => Status::Found(st, path),
            // Results without their sweep in this ledger (another ledger's, or one rebuilt):
            // the page is still drawn from the results.
            Err(LedgerError::UnknownSweep(_)) => Status::NotInLedger(path),
            Err(e) => return Err(e).with_context(|| format!("sweep {sweep} in the ledger")),
        },
        _ => Status::NoLedger,
    };
    let data = plot::SweepData::read(&storage, sweep.clone())?;
    let runs = &data.runs;
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>linesweep: {s}</title><style>{CSS}</style></head><body><h1>Sweep {s}</h1><p class=\"where\">results in <code>{r}</code></p>",
        s = esc(sweep.as_str()),
        r = esc(storage.root())
    );
    status_section(&mut html, &status, &sweep, runs.len());
    if runs.is_empty() {
        html.push_str("<p class=\"empty\">No shard of this sweep is committed yet: there is nothing to summarise or draw.</p>");
    } else {
        groups_section(&mut html, runs);
        figures_section(&mut html, &data, results);
        runs_section(&mut html, runs, &storage, &sweep);
    }
    queries_section(&mut html, storage.root(), &sweep);
    html.push_str("</body></html>\n");
    Ok(html)
}

const CSS: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f2f2f2}td.t,th.t{text-align:left}figure{margin:1.5em 0}img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow-x:auto}.empty,.note{color:#a33}";

/// What the ledger says of the sweep.
enum Status<'a> {
    /// No ledger was given or found.
    NoLedger,
    /// The ledger does not know the sweep.
    NotInLedger(&'a Path),
    /// The sweep's status, and the ledger it comes from.
    Found(SweepStatus, &'a Path),
}

fn status_section(html: &mut String, status: &Status<'_>, sweep: &SweepName, committed: usize) {
    html.push_str("<section id=\"status\"><h2>Status</h2>");
    let (st, state) = match status {
        Status::Found(st, state) => (st, *state),
        Status::NoLedger => {
            let _ = write!(
                html,
                "<p class=\"note\">No ledger found beside the results (pass <code>--state</code>): {committed} shards are committed; pending and failed shards are not known here.</p></section>"
            );
            return;
        }
        Status::NotInLedger(state) => {
            let _ = write!(
                html,
                "<p class=\"note\">The ledger <code>{}</code> has no sweep named {}: {committed} shards are committed in the results; pending and failed shards are not known here.</p></section>",
                esc(&state.display().to_string()),
                esc(sweep.as_str())
            );
            return;
        }
    };
    html.push_str("<table><tr>");
    for k in st.counts.keys() {
        let _ = write!(html, "<th>{}</th>", esc(k));
    }
    html.push_str("</tr><tr>");
    for v in st.counts.values() {
        let _ = write!(html, "<td>{v}</td>");
    }
    let _ = write!(
        html,
        "</tr></table><p>failures {} (retried up to the budget), interruptions {}; ledger <code>{}</code></p>",
        st.failures,
        st.interruptions,
        esc(&state.display().to_string())
    );
    if st.failed.is_empty() {
        html.push_str("<p>No failed shards.</p>");
    } else {
        html.push_str("<table id=\"failed\"><tr><th class=\"t\">failed shard</th><th>attempts</th><th class=\"t\">last error</th></tr>");
        for r in &st.failed {
            let _ = write!(
                html,
                "<tr><td class=\"t\"><code>{}</code></td><td>{}</td><td class=\"t\">{}</td></tr>",
                esc(&r.id),
                r.shard.attempts,
                esc(r.shard.last_error.as_deref().unwrap_or("-"))
            );
        }
        html.push_str("</table>");
    }
    html.push_str("</section>");
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn fmt(v: Option<f64>, pct: bool) -> String {
    match v {
        Some(x) if pct => format!("{:.2}%", 100.0 * x),
        Some(x) => format!("{x:.4}"),
        None => "-".into(),
    }
}

fn groups_section(html: &mut String, runs: &[Row]) {
    let axes = plot::varying_axes(runs);
    let mut groups: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in runs {
        groups
            .entry(plot::group_label(r, &axes))
            .or_default()
            .push(r);
    }
    html.push_str("<section id=\"groups\"><h2>Per config group</h2><table><tr><th class=\"t\">group</th><th>runs</th><th>diverged</th><th>monotone</th><th>mean Δ_min</th><th>train acc</th><th>test acc</th><th>‖θ_c−θ_i‖</th></tr>");
    for (label, rows) in &groups {
        let ok: Vec<&&Row> = rows
            .iter()
            .filter(|r| r["diverged"] != Value::Bool(true))
            .collect();
        let col = |c: &str| -> Vec<f64> { ok.iter().filter_map(|r| r[c].num()).collect() };
        let monotone: Vec<f64> = ok
            .iter()
            .filter_map(|r| match r["train_monotone"] {
                Value::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
                _ => None,
            })
            .collect();
        let _ = write!(
            html,
            "<tr><td class=\"t\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(label),
            rows.len(),
            rows.len() - ok.len(),
            fmt(mean(&monotone), true),
            fmt(mean(&col("train_delta_min")), false),
            fmt(mean(&col("final_train_acc")), true),
            fmt(mean(&col("final_test_acc")), true),
            fmt(mean(&col("dist_init_final")), false),
        );
    }
    html.push_str("</table></section>");
}

/// The figures of the grid's natural groupings; one that cannot be drawn says why instead.
fn figures_section(html: &mut String, data: &plot::SweepData<'_>, results: &str) {
    let (sweep, runs) = (&data.sweep, &data.runs);
    html.push_str("<section id=\"figures\"><h2>Figures</h2>");
    let axes = plot::varying_axes(runs);
    let mut kinds = vec![
        (
            PlotKind::Line,
            Some("loss"),
            "Loss along the line θ(α), train solid and test dashed, a min–max band over seeds",
        ),
        (PlotKind::Line, Some("accuracy"), "Accuracy along the line"),
        (
            PlotKind::Trajectory,
            None,
            "The trajectory projected on the line, coloured by step",
        ),
    ];
    if axes.len() >= 2 {
        kinds.push((
            PlotKind::Heatmap,
            Some("delta-min"),
            "Mean Δ_min over the first two grid axes",
        ));
        kinds.push((
            PlotKind::Heatmap,
            Some("test-acc"),
            "Final test accuracy over the first two grid axes",
        ));
    }
    kinds.push((
        PlotKind::Starts,
        None,
        "The first run's lines from every start to θ_c",
    ));
    if runs.iter().any(|r| r["plane_s"].num().is_some()) {
        kinds.push((
            PlotKind::Plane,
            None,
            "The first run's first 2-D plane around θ_c (train loss)",
        ));
    }
    for (kind, metric, caption) in kinds {
        let args = PlotArgs {
            kind,
            results: results.to_owned(),
            sweep: Some(sweep.to_string()),
            out: PathBuf::from("report.png"),
            metric: metric.map(str::to_owned),
            by: None,
            bn_mode: None,
            start: None,
            plane: None,
            split: "train".into(),
            shard: None,
            x: None,
            y: None,
            width: 900,
            height: 560,
        };
        match plot::figure(data, &args).and_then(|f| figures::png_bytes(&f, 900, 560)) {
            Ok(png) => {
                let data = base64::engine::general_purpose::STANDARD.encode(png);
                let _ = write!(
                    html,
                    "<figure><img alt=\"{c}\" src=\"data:image/png;base64,{data}\"><figcaption>{c}</figcaption></figure>",
                    c = esc(caption)
                );
            }
            Err(e) => {
                let _ = write!(
                    html,
                    "<p class=\"note\">{}: {}</p>",
                    esc(caption),
                    esc(&e.to_string())
                );
            }
        }
    }
    html.push_str("</section>");
}

fn runs_section(html: &mut String, runs: &[Row], storage: &Storage, sweep: &SweepName) {
    let axes = plot::varying_axes(runs);
    let _ = write!(
        html,
        "<section id=\"runs\"><h2>Every run ({})</h2><table id=\"run-table\"><tr><th class=\"t\">shard</th><th class=\"t\">group</th><th>seed</th><th>diverged</th><th>Δ_min</th><th>loss barrier</th><th>test error barrier</th><th>test acc</th><th class=\"t\">snapshots</th></tr>",
        runs.len()
    );
    let mut sorted: Vec<&Row> = runs.iter().collect();
    sorted.sort_by_key(|r| (plot::group_label(r, &axes), r["seed"].label()));
    for r in sorted {
        let shard = r["shard"].label();
        let snapshots = linesweep_storage::ids::ShardId::parse(shard.clone())
            .map(|id| {
                format!(
                    "{}/{}",
                    storage.root().trim_end_matches('/'),
                    layout::snapshot_dir(&id)
                )
            })
            .unwrap_or_default();
        let _ = write!(
            html,
            "<tr class=\"run\"><td class=\"t\"><code>{}</code></td><td class=\"t\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"t\"><code>{}</code></td></tr>",
            esc(&shard),
            esc(&plot::group_label(r, &axes)),
            esc(&r["seed"].label()),
            esc(&r["diverged"].label()),
            fmt(r["train_delta_min"].num(), false),
            fmt(r["train_loss_barrier"].num(), false),
            fmt(r["test_error_barrier"].num(), false),
            fmt(r["final_test_acc"].num(), true),
            esc(&snapshots)
        );
    }
    let _ = write!(
        html,
        "</table><p>Sweep {} in every table: <code>shard</code> joins them.</p></section>",
        esc(sweep.as_str())
    );
}

fn queries_section(html: &mut String, root: &str, sweep: &SweepName) {
    let root = root.trim_end_matches('/');
    let t = |table: &str| format!("{root}/summaries/{table}/sweep={sweep}/all.parquet");
    let duckdb = format!(
        "-- per config group (the table above)\nselect optimizer, lr, count(*) as runs, avg(case when train_monotone then 1 else 0 end) as monotone,\n       avg(train_delta_min) as mean_delta_min, avg(final_test_acc) as test_acc, avg(dist_init_final) as dist\nfrom read_parquet('{}') where not diverged group by all order by all;\n\n-- the lines of every run\nselect shard, start, bn_mode, split, alpha, loss, accuracy from read_parquet('{}') order by all;\n\n-- up to this instant (the summaries lag by up to a minute while a sweep runs)\nselect count(*) from read_parquet('{root}/results/runs/sweep={sweep}/*.parquet');",
        t("runs"),
        t("interpolation")
    );
    let polars = format!(
        "import polars as pl\nruns = pl.read_parquet(\"{}\")\nline = pl.read_parquet(\"{}\")\nprint(runs.group_by(\"optimizer\", \"lr\").agg(pl.len(), pl.col(\"train_delta_min\").mean(), pl.col(\"final_test_acc\").mean()))",
        t("runs"),
        t("interpolation")
    );
    let _ = write!(
        html,
        "<section id=\"queries\"><h2>Reproduce the tables</h2><h3>DuckDB</h3><pre>{}</pre><h3>Polars</h3><pre>{}</pre></section>",
        esc(&duckdb),
        esc(&polars)
    );
}
