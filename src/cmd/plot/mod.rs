//! `linesweep plot KIND`: figures from a results location's Parquet alone (never retrains,
//! never needs the coordinator). The data side (which rows, which groups, which aggregates)
//! lives here; the drawing lives in [`figures`].

pub(crate) mod figures;

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use linesweep_storage::ids::SweepName;
use linesweep_worker::results::read::{self, CONFIG_COLUMNS, Row, Value};
use linesweep_worker::storage::Storage;

use crate::cli::{PlotArgs, PlotKind};
pub(crate) use figures::Figure;
use figures::{Band, Cell, Curve, Heatmap, LineFigure, Path, Surface, Trajectory};

/// Figures of `args`.
pub fn run(args: PlotArgs) -> anyhow::Result<()> {
    let storage = Storage::open(&args.results)?;
    let sweep = pick_sweep(&storage, args.sweep.as_deref(), &args.results)?;
    let data = SweepData::read(&storage, sweep)?;
    anyhow::ensure!(
        !data.runs.is_empty(),
        "sweep {} has no committed shard in {} yet: nothing to plot",
        data.sweep,
        args.results
    );
    let figure = figure(&data, &args)?;
    figures::render(&figure, &args.out, args.width, args.height)?;
    crate::render::emit(&format!("{}\n", args.out.display()))
}

/// What the figures of one sweep read: its committed `runs` rows, and its lines and
/// trajectories, each table read once, when a figure first needs it (a report draws six).
pub(crate) struct SweepData<'a> {
    storage: &'a Storage,
    pub sweep: SweepName,
    pub runs: Vec<Row>,
    lines: OnceCell<Vec<Row>>,
    trajectory: OnceCell<Vec<Row>>,
}

impl<'a> SweepData<'a> {
    /// Reads the `runs` rows of `sweep` (the other tables wait until a figure asks).
    pub fn read(storage: &'a Storage, sweep: SweepName) -> anyhow::Result<Self> {
        let runs = read::read_table(storage, "runs", &sweep, &run_columns())?;
        Ok(Self {
            storage,
            sweep,
            runs,
            lines: OnceCell::new(),
            trajectory: OnceCell::new(),
        })
    }

    fn lines(&self) -> anyhow::Result<&[Row]> {
        if let Some(rows) = self.lines.get() {
            return Ok(rows);
        }
        let cols = [
            "shard", "start", "alpha", "split", "loss", "accuracy", "bn_mode",
        ];
        let rows = read::read_table(self.storage, "interpolation", &self.sweep, &cols)?;
        Ok(self.lines.get_or_init(|| rows))
    }

    fn trajectory(&self) -> anyhow::Result<&[Row]> {
        if let Some(rows) = self.trajectory.get() {
            return Ok(rows);
        }
        let cols = ["shard", "step", "alpha_frac", "beta"];
        let rows = read::read_table(self.storage, "trajectory", &self.sweep, &cols)?;
        Ok(self.trajectory.get_or_init(|| rows))
    }
}

/// The figure `args.kind` of a sweep with at least one committed run.
pub(crate) fn figure(data: &SweepData<'_>, args: &PlotArgs) -> anyhow::Result<Figure> {
    let (runs, sweep) = (&data.runs, &data.sweep);
    let axes = varying_axes(runs);
    let title_axes = |by: &[String]| {
        if by.is_empty() {
            String::new()
        } else {
            format!(" by {}", by.join(", "))
        }
    };
    Ok(match args.kind {
        PlotKind::Line => {
            let by = group_axes(args.by.as_deref(), &axes)?;
            let title = format!("{sweep}: {}(α){}", metric_name(args)?, title_axes(&by));
            Figure::Line(line(data, &by, args, title)?)
        }
        PlotKind::Starts => Figure::Line(starts(data, args)?),
        PlotKind::Trajectory => Figure::Trajectory(trajectory(data, args)?),
        PlotKind::Heatmap => Figure::Heatmap(heatmap(runs, &axes, args, sweep)?),
        PlotKind::Plane => Figure::Surface(surface(data, args)?),
    })
}

fn run_columns() -> Vec<&'static str> {
    let mut c: Vec<&str> = CONFIG_COLUMNS.to_vec();
    c.extend([
        "shard",
        "diverged",
        "train_delta_min",
        "train_monotone",
        "final_test_acc",
        "final_train_acc",
        "dist_init_final",
        "ln_k",
        "plane_s",
        "train_loss_barrier",
        "test_error_barrier",
    ]);
    c
}

pub(crate) fn pick_sweep(
    storage: &Storage,
    asked: Option<&str>,
    results: &str,
) -> anyhow::Result<SweepName> {
    if let Some(s) = asked {
        return Ok(SweepName::parse(s.to_owned())?);
    }
    let all = read::sweeps(storage)?;
    match all.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!("{results} holds no committed shard of any sweep: nothing to plot"),
        many => anyhow::bail!(
            "{results} holds several sweeps ({}): name one with --sweep",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The config columns whose values differ between runs, seed excepted.
pub(crate) fn varying_axes(runs: &[Row]) -> Vec<String> {
    CONFIG_COLUMNS
        .iter()
        .filter(|c| **c != "seed")
        .filter(|c| {
            let values: BTreeSet<String> = runs.iter().map(|r| r[**c].label()).collect();
            values.len() > 1
        })
        .map(|c| (*c).to_owned())
        .collect()
}

fn check_axis(axis: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        CONFIG_COLUMNS.contains(&axis),
        "`{axis}` is not a config column of `runs` (one of: {})",
        CONFIG_COLUMNS.join(", ")
    );
    Ok(())
}

fn group_axes(by: Option<&str>, varying: &[String]) -> anyhow::Result<Vec<String>> {
    let Some(by) = by else {
        return Ok(varying.to_vec());
    };
    let axes: Vec<String> = by
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    for a in &axes {
        check_axis(a)?;
    }
    Ok(axes)
}

/// `axis=value …` of a run for the axes `by` (`all runs` when there are none).
pub(crate) fn group_label(run: &Row, by: &[String]) -> String {
    if by.is_empty() {
        return "all runs".into();
    }
    by.iter()
        .map(|a| format!("{a}={}", run[a.as_str()].label()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn metric_name(args: &PlotArgs) -> anyhow::Result<&'static str> {
    match args.metric.as_deref().unwrap_or("loss") {
        "loss" => Ok("loss"),
        "accuracy" => Ok("accuracy"),
        other => anyhow::bail!("--metric {other}: a line plots `loss` or `accuracy`"),
    }
}

/// Interpolation rows of the chosen start and batch-norm mode.
fn line_rows<'d>(
    data: &'d SweepData<'_>,
    args: &PlotArgs,
    any_start: bool,
) -> anyhow::Result<Vec<&'d Row>> {
    let rows = data.lines()?;
    let modes: BTreeSet<String> = rows.iter().map(|r| r["bn_mode"].label()).collect();
    let mode = match &args.bn_mode {
        Some(m) => {
            anyhow::ensure!(
                modes.contains(m),
                "--bn-mode {m}: the lines have {}",
                join(&modes)
            );
            m.clone()
        }
        None => modes.iter().next().cloned().unwrap_or_default(),
    };
    let starts: BTreeSet<String> = rows.iter().map(|r| r["start"].label()).collect();
    let start = args.start.clone().unwrap_or_else(|| "init".into());
    anyhow::ensure!(
        any_start || starts.contains(&start),
        "--start {start}: the lines start at {}",
        join(&starts)
    );
    Ok(rows
        .iter()
        .filter(|r| r["bn_mode"].label() == mode && (any_start || r["start"].label() == start))
        .collect())
}

fn join(s: &BTreeSet<String>) -> String {
    s.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// Values per (curve, split) and α (in units of 1e-9, so that α is a key).
type Points = BTreeMap<(String, String), BTreeMap<i64, Vec<f64>>>;

/// Bands over seeds: per (curve, split) and α, the min, mean and max of the values. The test
/// split is drawn dashed, in its curve's colour.
fn bands(points: Points) -> Vec<Curve> {
    points
        .into_iter()
        .map(|((group, split), by_alpha)| Curve {
            label: format!("{group} ({split})"),
            dashed: split == "test",
            group,
            points: by_alpha
                .into_iter()
                .map(|(a, v)| Band {
                    x: a as f64 / 1e9,
                    min: v.iter().copied().fold(f64::INFINITY, f64::min),
                    mean: v.iter().sum::<f64>() / v.len() as f64,
                    max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                })
                .collect(),
        })
        .collect()
}

fn alpha_key(r: &Row) -> Option<i64> {
    r["alpha"].num().map(|a| (a * 1e9).round() as i64)
}

fn line(
    data: &SweepData<'_>,
    by: &[String],
    args: &PlotArgs,
    title: String,
) -> anyhow::Result<LineFigure> {
    let (runs, sweep) = (&data.runs, &data.sweep);
    let metric = metric_name(args)?;
    let run_of: BTreeMap<String, &Row> = runs.iter().map(|r| (r["shard"].label(), r)).collect();
    let mut points = Points::new();
    for r in line_rows(data, args, false)? {
        let (Some(run), Some(a), Some(v)) = (
            run_of.get(&r["shard"].label()),
            alpha_key(r),
            r[metric].num(),
        ) else {
            continue;
        };
        if v.is_finite() {
            let key = (group_label(run, by), r["split"].label());
            points.entry(key).or_default().entry(a).or_default().push(v);
        }
    }
    anyhow::ensure!(
        !points.is_empty(),
        "sweep {sweep} has no finite {metric} on its lines (every run diverged?)"
    );
    let ln_k = runs
        .iter()
        .find_map(|r| r["ln_k"].num())
        .filter(|_| metric == "loss");
    Ok(LineFigure {
        title,
        x_label: "α (θ_i → θ_c)".into(),
        y_label: metric.into(),
        curves: bands(points),
        reference: ln_k.map(|v| ("ln K".to_owned(), v)),
        marks: vec![0.0, 1.0],
    })
}

/// The lines of one shard from every start to θ_c (Frankle's figure).
fn starts(data: &SweepData<'_>, args: &PlotArgs) -> anyhow::Result<LineFigure> {
    let sweep = &data.sweep;
    let metric = metric_name(args)?;
    let shard = match (&args.shard, data.runs.first()) {
        (Some(s), _) => s.clone(),
        (None, Some(first)) => first["shard"].label(),
        (None, None) => anyhow::bail!("sweep {sweep} has no committed run to draw the starts of"),
    };
    let mut points = Points::new();
    for r in line_rows(data, args, true)? {
        if r["shard"].label() != shard {
            continue;
        }
        if let (Some(a), Some(v)) = (alpha_key(r), r[metric].num()) {
            let key = (format!("from {}", r["start"].label()), r["split"].label());
            points.entry(key).or_default().entry(a).or_default().push(v);
        }
    }
    anyhow::ensure!(
        !points.is_empty(),
        "shard {shard} has no lines in sweep {sweep}"
    );
    Ok(LineFigure {
        title: format!("{sweep}: {metric} from each start to θ_c, shard {shard}"),
        x_label: "α (start → θ_c)".into(),
        y_label: metric.into(),
        curves: bands(points),
        reference: None,
        marks: vec![0.0, 1.0],
    })
}

fn trajectory(data: &SweepData<'_>, args: &PlotArgs) -> anyhow::Result<Trajectory> {
    let sweep = &data.sweep;
    let mut paths: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for r in data.trajectory()? {
        let shard = r["shard"].label();
        if args.shard.as_ref().is_some_and(|s| *s != shard) {
            continue;
        }
        if let (Some(s), Some(a), Some(b)) =
            (r["step"].num(), r["alpha_frac"].num(), r["beta"].num())
        {
            paths.entry(shard).or_default().push((s, a, b));
        }
    }
    anyhow::ensure!(!paths.is_empty(), "sweep {sweep} has no trajectory rows");
    let max_step = paths
        .values()
        .flatten()
        .map(|p| p.0)
        .fold(0.0, f64::max)
        .max(1.0);
    Ok(Trajectory {
        title: format!(
            "{sweep}: trajectory projected on the line ({} runs)",
            paths.len()
        ),
        max_step,
        paths: paths
            .into_values()
            .map(|mut p| {
                p.sort_by(|a, b| a.0.total_cmp(&b.0));
                Path { points: p }
            })
            .collect(),
    })
}

fn heatmap_metric(args: &PlotArgs) -> anyhow::Result<(&'static str, &'static str)> {
    Ok(match args.metric.as_deref().unwrap_or("delta-min") {
        "delta-min" => ("train_delta_min", "mean Δ_min (train)"),
        "non-monotone" => ("train_monotone", "non-monotone fraction (train)"),
        "test-acc" => ("final_test_acc", "final test accuracy"),
        "distance" => ("dist_init_final", "‖θ_c − θ_i‖"),
        other => anyhow::bail!(
            "--metric {other}: a heatmap shows delta-min, non-monotone, test-acc or distance"
        ),
    })
}

/// One shard's plane: `args.plane` (or the first measured) on `args.split`.
fn surface(data: &SweepData<'_>, args: &PlotArgs) -> anyhow::Result<Surface> {
    let sweep = &data.sweep;
    let metric = metric_name(args)?;
    anyhow::ensure!(
        ["train", "test"].contains(&args.split.as_str()),
        "--split {}: a plane is measured on `train` or `test`",
        args.split
    );
    let cols = ["shard", "plane", "x", "y", "split", metric];
    let rows = read::read_table(data.storage, "plane", sweep, &cols)?;
    anyhow::ensure!(
        !rows.is_empty(),
        "sweep {sweep} has no plane data: add [eval.plane] to the spec (docs/results.md, `plane`)"
    );
    let shard = match &args.shard {
        Some(s) => s.clone(),
        None => rows[0]["shard"].label(),
    };
    let of_shard: Vec<&Row> = rows
        .iter()
        .filter(|r| r["shard"].label() == shard)
        .collect();
    anyhow::ensure!(
        !of_shard.is_empty(),
        "shard {shard} of sweep {sweep} has no plane data"
    );
    let kinds: BTreeSet<String> = of_shard.iter().map(|r| r["plane"].label()).collect();
    let kind = match &args.plane {
        Some(k) if kinds.contains(k) => k.clone(),
        Some(k) => anyhow::bail!("--plane {k}: shard {shard} measured {}", join(&kinds)),
        None => of_shard[0]["plane"].label(),
    };
    let cells: Vec<(f64, f64, f64)> = of_shard
        .iter()
        .filter(|r| r["plane"].label() == kind && r["split"].label() == args.split)
        .filter_map(|r| Some((r["x"].num()?, r["y"].num()?, r[metric].num()?)))
        .collect();
    anyhow::ensure!(
        !cells.is_empty(),
        "plane {kind} of shard {shard} has no finite {metric}"
    );
    let path = if kind == "pca" {
        let cols = ["shard", "step", "pca_x", "pca_y"];
        let mut pts: Vec<(f64, f64, f64)> =
            read::read_table(data.storage, "trajectory", sweep, &cols)?
                .iter()
                .filter(|r| r["shard"].label() == shard)
                .filter_map(|r| Some((r["step"].num()?, r["pca_x"].num()?, r["pca_y"].num()?)))
                .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts.into_iter().map(|(_, x, y)| (x, y)).collect()
    } else {
        Vec::new()
    };
    let mut marks = vec![("θ_c".to_owned(), (0.0, 0.0))];
    if kind == "init" {
        marks.push(("θ_i".to_owned(), (1.0, 0.0)));
    }
    Ok(Surface {
        title: format!(
            "{sweep}: {metric} on the {kind} plane of {shard} ({})",
            args.split
        ),
        metric: metric.to_owned(),
        cells,
        path,
        marks,
    })
}

fn heatmap(
    runs: &[Row],
    axes: &[String],
    args: &PlotArgs,
    sweep: &SweepName,
) -> anyhow::Result<Heatmap> {
    let (column, what) = heatmap_metric(args)?;
    let pick = |given: &Option<String>, n: usize, flag: &str| -> anyhow::Result<String> {
        match given {
            Some(a) => check_axis(a).map(|()| a.clone()),
            None => axes.get(n).cloned().with_context(|| {
                format!("{flag}: the sweep varies {} axis(es) besides the seed; name the heatmap's axes with --x and --y", axes.len())
            }),
        }
    };
    let (x, y) = (pick(&args.x, 0, "--x")?, pick(&args.y, 1, "--y")?);
    let mut cells: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r["diverged"] != Value::Bool(true)) {
        let v = match &r[column] {
            Value::Bool(b) => Some(if *b { 0.0 } else { 1.0 }),
            v => v.num(),
        };
        if let Some(v) = v {
            cells
                .entry((r[x.as_str()].label(), r[y.as_str()].label()))
                .or_default()
                .push(v);
        }
    }
    anyhow::ensure!(!cells.is_empty(), "no run of sweep {sweep} has a {what}");
    let sorted = |labels: BTreeSet<String>| {
        let mut v: Vec<String> = labels.into_iter().collect();
        v.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(p), Ok(q)) => p.total_cmp(&q),
            _ => a.cmp(b),
        });
        v
    };
    let xs = sorted(cells.keys().map(|k| k.0.clone()).collect());
    let ys = sorted(cells.keys().map(|k| k.1.clone()).collect());
    Ok(Heatmap {
        title: format!("{sweep}: {what} over {x} × {y}, mean over seeds"),
        cells: cells
            .into_iter()
            .map(|((a, b), v)| Cell {
                x: xs.iter().position(|s| *s == a).unwrap_or(0),
                y: ys.iter().position(|s| *s == b).unwrap_or(0),
                value: v.iter().sum::<f64>() / v.len() as f64,
                runs: v.len(),
            })
            .collect(),
        x_label: x,
        y_label: y,
        xs,
        ys,
    })
}
