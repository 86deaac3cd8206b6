//! Terminal rendering of results: the run summary table and a small plot of the line.

use std::fmt::Write;
use std::io::Write as _;

use linesweep_coordinator::lease::StateKind;
use linesweep_proto::pb;
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
        "time: data {:.2}s · train {:.2}s ({:.0} samples/s; first step {:.2}s; snapshots {:.2}s) · line {:.2}s ({:.2} α/s) · trajectory {:.2}s · total {:.2}s",
        t.data,
        t.train,
        m.train_samples_per_s,
        t.warmup,
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
            "data": t.data, "train": t.train, "warmup": t.warmup, "snapshots": t.snapshots, "line": t.line,
            "trajectory": t.trajectory, "total": t.total,
        },
    })
}

use linesweep_coordinator::service::{count, state_of, total};

/// A shard's state as users read it.
fn state_name(wire: i32) -> &'static str {
    state_of(wire).map_or("unknown", StateKind::name)
}

fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// One line of sweep progress (for `watch`).
pub fn status_line(sweep: &str, st: &pb::StatusReply) -> String {
    let total = total(st);
    let mut line = format!(
        "{sweep}: {}/{total} committed",
        count(st, StateKind::Committed)
    );
    for state in [
        StateKind::Leased,
        StateKind::Pending,
        StateKind::Waiting,
        StateKind::Failed,
        StateKind::Held,
        StateKind::Cancelled,
    ] {
        let n = count(st, state);
        if n > 0 {
            let name = match state {
                StateKind::Leased => "running",
                other => other.name(),
            };
            let _ = write!(line, " · {n} {name}");
        }
    }
    if st.commits_per_minute > 0.0 {
        let _ = write!(line, " · {:.1}/min", st.commits_per_minute);
    }
    if let Some(eta) = st.eta_s {
        let _ = write!(line, " · eta {}", duration(eta));
    }
    line
}

/// The full status of a sweep: counts, counters, running and failed shards.
pub fn status(sweep: &str, st: &pb::StatusReply) -> String {
    let total = total(st);
    let mut s = format!("sweep {sweep}: {total} shards");
    for state in StateKind::ALL {
        // Waiting and held exist only in sweeps whose shards need others.
        let n = count(st, state);
        if n > 0 || !matches!(state, StateKind::Waiting | StateKind::Held) {
            let _ = write!(s, " · {n} {}", state.name());
        }
    }
    s.push('\n');
    let _ = writeln!(
        s,
        "failures {} (retried automatically up to the budget) · interruptions {} (lease expiries, preemptions, infrastructure failures)",
        st.failures, st.interruptions
    );
    if st.commits_per_minute > 0.0 {
        let _ = writeln!(
            s,
            "throughput {:.2} shards/min{}",
            st.commits_per_minute,
            st.eta_s
                .map_or_else(String::new, |e| format!(" · eta {}", duration(e)))
        );
    }
    for r in &st.running {
        let progress = if r.total > 0 {
            format!("{} {}/{}", r.phase, r.done, r.total)
        } else if r.phase.is_empty() {
            "starting".to_owned()
        } else {
            r.phase.clone()
        };
        let _ = writeln!(
            s,
            "  running {} attempt {} on {}: {progress}",
            r.id,
            r.attempts,
            if r.worker.is_empty() {
                "—"
            } else {
                &r.worker
            }
        );
    }
    for r in &st.failed {
        let _ = writeln!(
            s,
            "  failed  {} after {} attempts: {}",
            r.id, r.attempts, r.last_error
        );
    }
    for r in &st.held {
        let _ = writeln!(s, "  held    {}: {}", r.id, r.held_by);
    }
    if !st.failed.is_empty() {
        let _ = writeln!(s, "rerun failed shards with: linesweep retry {sweep}");
    }
    if !st.results.is_empty() {
        let _ = writeln!(s, "results: {}/results", st.results.trim_end_matches('/'));
    }
    s
}

/// Every shard of a sweep, one per line.
pub fn shard_table(shards: &[pb::ShardInfo]) -> String {
    let mut s = format!(
        "{:<18}{:<12}{:>9}{:>10}{:>14}  {}\n",
        "shard", "state", "attempts", "failures", "interruptions", "worker / last error"
    );
    for r in shards {
        let _ = writeln!(
            s,
            "{:<18}{:<12}{:>9}{:>10}{:>14}  {}",
            r.id,
            state_name(r.state),
            r.attempts,
            r.failures,
            r.interruptions,
            if r.worker.is_empty() {
                &r.last_error
            } else {
                &r.worker
            }
        );
    }
    s
}

/// `status --json`.
pub fn status_json(
    sweep: &str,
    st: &pb::StatusReply,
    shards: &[pb::ShardInfo],
) -> serde_json::Value {
    let info = |r: &pb::ShardInfo| {
        serde_json::json!({
            "id": r.id, "state": state_name(r.state), "attempts": r.attempts, "failures": r.failures,
            "interruptions": r.interruptions, "last_error": r.last_error, "worker": r.worker,
            "phase": r.phase, "done": r.done, "total": r.total,
            "committed_attempt": r.committed_attempt, "held_by": r.held_by,
        })
    };
    serde_json::json!({
        "sweep": sweep,
        "counts": StateKind::ALL
            .iter()
            .filter(|k| count(st, **k) > 0)
            .map(|k| (k.name(), count(st, *k)))
            .collect::<std::collections::BTreeMap<_, _>>(),
        "failures": st.failures,
        "interruptions": st.interruptions,
        "commits_per_minute": st.commits_per_minute,
        "eta_s": st.eta_s,
        "results": st.results,
        "running": st.running.iter().map(info).collect::<Vec<_>>(),
        "failed": st.failed.iter().map(info).collect::<Vec<_>>(),
        "held": st.held.iter().map(info).collect::<Vec<_>>(),
        "shards": shards.iter().map(info).collect::<Vec<_>>(),
    })
}

/// `linesweep workers`.
pub fn workers(list: &[pb::WorkerInfo]) -> String {
    if list.is_empty() {
        return "no live workers\n".into();
    }
    let mut s = format!(
        "{:<28}{:<10}{:>6}{:>12}  {}\n",
        "worker", "device", "slots", "last seen", "shards"
    );
    for w in list {
        let _ = writeln!(
            s,
            "{:<28}{:<10}{:>6}{:>12}  {}",
            w.name,
            w.device,
            w.slots,
            format!("{:.1}s ago", w.last_seen_ms as f64 / 1000.0),
            match (w.shards.is_empty(), w.unhealthy.is_empty()) {
                (true, true) => "idle".to_owned(),
                (_, false) => format!("UNHEALTHY: {}", w.unhealthy),
                (false, true) => w.shards.join(", "),
            }
        );
        if !w.device_check.is_empty() && w.unhealthy.is_empty() {
            let _ = writeln!(s, "{:<28}device check {}", "", w.device_check);
        }
    }
    s
}

/// One row of a sweep summary: a config group (every grid point but the seed).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    /// The group's grid values, e.g. `optimizer=sgd, train.lr=0.05`.
    pub group: String,
    /// Runs with results.
    pub runs: usize,
    /// Runs that diverged.
    pub diverged: usize,
    /// Fraction of runs whose train line is monotone.
    pub monotone: Option<f64>,
    /// Mean Δ_min of the train line.
    pub delta_min: Option<f64>,
    /// Mean final test accuracy.
    pub test_acc: Option<f64>,
}

/// The sweep summary table.
pub fn sweep_summary(rows: &[GroupRow]) -> String {
    let width = rows.iter().map(|r| r.group.len()).max().unwrap_or(5).max(5) + 2;
    let mut s = format!(
        "{:<width$}{:>6}{:>10}{:>11}{:>13}{:>12}\n",
        "group", "runs", "diverged", "monotone", "mean Δ_min", "test acc"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<width$}{:>6}{:>10}{:>11}{:>13}{:>12}",
            r.group,
            r.runs,
            r.diverged,
            r.monotone
                .map_or_else(|| "—".into(), |m| format!("{:.0}%", 100.0 * m)),
            opt(r.delta_min, 5),
            r.test_acc
                .map_or_else(|| "—".into(), |a| format!("{:.2}%", 100.0 * a)),
        );
    }
    s
}

/// One row of a sweep's pair summary: the pair shards of one group (their grid point but
/// the seed and the keys their two ends differ in), with mean barriers of their lines under
/// the first batch-norm mode.
#[derive(Debug, Clone, PartialEq)]
pub struct PairGroupRow {
    /// The group's values, e.g. `init_from={ step = 50 }`.
    pub group: String,
    /// Pair shards with results.
    pub pairs: usize,
    /// Mean error barrier on test and on train.
    pub error_barrier: [Option<f64>; 2],
    /// Mean loss barrier on test.
    pub test_loss_barrier: Option<f64>,
}

/// The pair summary table (linear mode connectivity: a barrier near 0 means connected).
pub fn pairs_summary(rows: &[PairGroupRow]) -> String {
    let width = rows
        .iter()
        .map(|r| r.group.len())
        .max()
        .unwrap_or(5)
        .max(10)
        + 2;
    let mut s = format!(
        "{:<width$}{:>7}{:>20}{:>21}{:>19}\n",
        "pairs of", "pairs", "test error barrier", "train error barrier", "test loss barrier"
    );
    let pct = |v: Option<f64>| v.map_or_else(|| "—".into(), |v| format!("{:.2}%", 100.0 * v));
    for r in rows {
        let _ = writeln!(
            s,
            "{:<width$}{:>7}{:>20}{:>21}{:>19}",
            r.group,
            r.pairs,
            pct(r.error_barrier[0]),
            pct(r.error_barrier[1]),
            opt(r.test_loss_barrier, 4),
        );
    }
    s
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
