//! `linesweep plan`: expand a sweep spec and show its shards.

use linesweep_worker::sweep;

use crate::cli::PlanArgs;

/// The snapshot storage the sweep will leave, where every shard's training length is known.
fn storage_line(plan: &sweep::SweepPlan) -> String {
    // Pair shards train nothing and keep no snapshots.
    let sizes = plan
        .shards()
        .filter(|s| s.config.pair.is_none())
        .map(|s| s.config.snapshot_bytes_at_least())
        .try_fold((0u128, 0u128), |(total, n), size| {
            Some((total + size?, n + 1))
        });
    let Some((total, n)) = sizes else {
        return "snapshots: size unknown until the datasets are read (set data.max_train_examples to estimate)\n".into();
    };
    let per = total / n.max(1);
    format!(
        "snapshots: {} per shard, {} in all (snapshot.keep = \"lines\" keeps only θ_i, θ_c and the line starts)\n",
        human(per),
        human(total)
    )
}

fn human(bytes: u128) -> String {
    let units = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let plan = sweep::plan_file(&args.spec)?;
    if args.json {
        for s in plan.shards() {
            crate::render::emit(&format!(
                "{}\n",
                serde_json::json!({ "sweep": plan.name, "shard": s.id, "config": s.config })
            ))?;
        }
        return Ok(());
    }
    // Columns: every key that some shard sets from the grid or an include.
    // One pass over the points (cheap: no config is built) finds the columns and widths.
    let mut keys: Vec<String> = Vec::new();
    let mut widths: Vec<usize> = Vec::new();
    for (_, point) in plan.points() {
        for (k, v) in point {
            match keys.iter().position(|c| *c == k) {
                Some(i) => widths[i] = widths[i].max(v.len()),
                None => {
                    widths.push(k.len().max(v.len()));
                    keys.push(k);
                }
            }
        }
    }
    let mut header = format!("{:<16}", "shard");
    for (k, w) in keys.iter().zip(&widths) {
        header.push_str(&format!("  {k:<w$}"));
    }
    crate::render::emit(&format!("{}\n", header.trim_end()))?;
    for (id, point) in plan.points() {
        let mut row = format!("{id:<16}");
        for (k, w) in keys.iter().zip(&widths) {
            let v = point
                .iter()
                .find(|(p, _)| p == k)
                .map_or("·", |(_, v)| v.as_str());
            row.push_str(&format!("  {v:<w$}"));
        }
        crate::render::emit(&format!("{}\n", row.trim_end()))?;
    }
    crate::render::emit(&format!(
        "sweep {}: {} shards{}\n{}",
        plan.name,
        plan.len(),
        plan.results
            .as_deref()
            .map(|r| format!(", results in {r}"))
            .unwrap_or_default(),
        storage_line(&plan)
    ))?;
    Ok(())
}
