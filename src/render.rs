//! Terminal rendering of results: the run summary table and a small plot of the line.

use std::fmt::Write;
use std::io::Write as _;

use linesweep_worker::engine::{LinePoint, SPLITS, ShardOutcome};

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".to_owned(), |x| format!("{x:.digits$}"))
}

/// The human summary of one shard.
pub fn summary(shard: &str, sweep: &str, out_root: &str, o: &ShardOutcome) -> String {
    let m = &o.metrics;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "shard {shard} (sweep {sweep}) on {}: {} steps, {} parameters{}",
        o.device,
        m.steps,
        m.parameters,
        if m.diverged {
            format!(", DIVERGED at step {}", m.diverged_step.unwrap_or(0))
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "{:<7}{:>11}{:>11}{:>10}{:>10}{:>11}",
        "split", "loss θ_i", "loss θ_c", "acc θ_c", "monotone", "Δ_min"
    );
    for (i, split) in SPLITS.iter().enumerate() {
        let shape = m.shape[i];
        let _ = writeln!(
            s,
            "{:<7}{:>11}{:>11}{:>10}{:>10}{:>11}",
            split,
            opt(m.initial[i].map(|v| v.loss), 4),
            opt(m.last[i].map(|v| v.loss), 4),
            m.last[i].map_or_else(|| "—".into(), |v| format!("{:.2}%", 100.0 * v.accuracy)),
            shape.map_or("—", |x| if x.monotone { "yes" } else { "no" }),
            opt(shape.map(|x| x.delta_min), 5),
        );
    }
    let _ = writeln!(
        s,
        "‖θ_c−θ_i‖ = {}   ‖θ_i‖ = {}   ‖θ_c‖ = {}   ln K = {:.4}",
        opt(m.dist_init_final, 3),
        opt(m.norm_init, 3),
        opt(m.norm_final, 3),
        m.ln_k
    );
    let t = &m.timings;
    let _ = writeln!(
        s,
        "time: data {:.2}s · train {:.2}s ({:.0} samples/s; snapshots {:.2}s) · line {:.2}s ({:.2} α/s) · trajectory {:.2}s · total {:.2}s",
        t.data,
        t.train,
        m.train_samples_per_s,
        t.snapshots,
        t.line,
        m.line_points_per_s,
        t.trajectory,
        t.total
    );
    if !o.line.is_empty() {
        s.push_str(&plot(&o.line));
    }
    let _ = writeln!(
        s,
        "results: {out_root}/results   snapshots: {out_root}/snapshots/{shard}"
    );
    let _ = writeln!(
        s,
        "query:   duckdb -c \"select alpha, split, loss from read_parquet('{out_root}/results/interpolation/**/*.parquet', hive_partitioning=true) order by split, alpha\""
    );
    s
}

/// A text plot of loss against α: `*` train, `o` test, `#` both. The y range covers the
/// losses on [0, 1] with some head-room; points beyond it are drawn at the edge as `^`.
pub fn plot(line: &[LinePoint]) -> String {
    const ROWS: usize = 10;
    let mut alphas: Vec<f64> = line.iter().map(|p| p.alpha).collect();
    alphas.sort_by(f64::total_cmp);
    alphas.dedup();
    let inner: Vec<f64> = line
        .iter()
        .filter(|p| (0.0..=1.0).contains(&p.alpha))
        .filter_map(|p| p.value.map(|v| v.loss))
        .collect();
    let (Some(lo), Some(hi)) = (
        inner.iter().copied().reduce(f64::min),
        inner.iter().copied().reduce(f64::max),
    ) else {
        return String::new();
    };
    let lo = lo.min(0.0);
    let hi = if hi > lo { hi * 1.15 } else { lo + 1.0 };
    let mut grid = vec![vec![' '; alphas.len()]; ROWS];
    for p in line {
        let Some(v) = p.value else { continue };
        let Ok(col) = alphas.binary_search_by(|a| a.total_cmp(&p.alpha)) else {
            continue;
        };
        let (row, mark) = if v.loss > hi {
            (0, '^')
        } else {
            let frac = (v.loss - lo) / (hi - lo);
            (
                ROWS - 1 - ((frac * (ROWS - 1) as f64).round() as usize).min(ROWS - 1),
                if p.split == 0 { '*' } else { 'o' },
            )
        };
        let cell = &mut grid[row][col];
        *cell = match (*cell, mark) {
            (' ', m) => m,
            ('^', _) | (_, '^') => '^',
            (a, b) if a != b => '#',
            (a, _) => a,
        };
    }
    let mut s = String::from("loss along θ(α)   * train  o test  # both  ^ above the plot\n");
    for (r, row) in grid.iter().enumerate() {
        let y = hi - (hi - lo) * r as f64 / (ROWS - 1) as f64;
        let _ = writeln!(s, "{y:>8.3} |{}", row.iter().collect::<String>());
    }
    let mut axis: Vec<char> = vec!['-'; alphas.len()];
    for (i, a) in alphas.iter().enumerate() {
        if *a == 0.0 || *a == 1.0 {
            axis[i] = '+';
        }
    }
    let _ = writeln!(s, "{:>8} +{}", "", axis.iter().collect::<String>());
    let _ = writeln!(
        s,
        "{:>8}  α from {} to {} (+ marks α = 0 and α = 1)",
        "",
        alphas.first().copied().unwrap_or(0.0),
        alphas.last().copied().unwrap_or(1.0)
    );
    s
}

/// The machine-readable summary of one shard (`--json`, `linesweep bench`).
pub fn json(shard: &str, sweep: &str, o: &ShardOutcome) -> serde_json::Value {
    let m = &o.metrics;
    let t = &m.timings;
    let split = |i: usize| {
        serde_json::json!({
            "init_loss": m.initial[i].map(|v| v.loss),
            "init_accuracy": m.initial[i].map(|v| v.accuracy),
            "final_loss": m.last[i].map(|v| v.loss),
            "final_accuracy": m.last[i].map(|v| v.accuracy),
            "monotone": m.shape[i].map(|s| s.monotone),
            "delta_min": m.shape[i].map(|s| s.delta_min),
        })
    };
    serde_json::json!({
        "shard": shard,
        "sweep": sweep,
        "device": o.device,
        "diverged": m.diverged,
        "diverged_step": m.diverged_step,
        "steps": m.steps,
        "parameters": m.parameters,
        "train": split(0),
        "test": split(1),
        "dist_init_final": m.dist_init_final,
        "norm_init": m.norm_init,
        "norm_final": m.norm_final,
        "alpha_min_train_loss": m.alpha_min_train_loss,
        "train_samples_per_s": m.train_samples_per_s,
        "line_points_per_s": m.line_points_per_s,
        "seconds": {
            "data": t.data, "train": t.train, "snapshots": t.snapshots, "line": t.line,
            "trajectory": t.trajectory, "total": t.total,
        },
    })
}

/// Writes command output to stdout. A closed pipe (`linesweep plan … | head`) ends the output
/// quietly instead of panicking the way `println!` does.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
