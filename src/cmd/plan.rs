//! `linesweep plan`: expand a sweep spec and show its shards.

use linesweep_worker::sweep;

use crate::cli::PlanArgs;

/// The snapshot storage the sweep will leave, where every shard's training length is known.
fn storage_line(plan: &sweep::SweepPlan) -> String {
    // Pair shards train nothing and keep no snapshots.
    let sizes: Option<Vec<u128>> = plan
        .shards
        .iter()
        .filter(|s| s.config.pair.is_none())
        .map(|s| s.config.snapshot_bytes_at_least())
        .collect();
    let Some(sizes) = sizes else {
        return "snapshots: size unknown until the datasets are read (set data.max_train_examples to estimate)\n".into();
    };
    let total: u128 = sizes.iter().sum();
    let per = total / sizes.len().max(1) as u128;
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
        for s in &plan.shards {
            crate::render::emit(&format!(
                "{}\n",
                serde_json::json!({ "sweep": plan.name, "shard": s.id, "config": s.config })
            ))?;
        }
        return Ok(());
    }
    // Columns: every key that some shard sets from the grid or an include.
    let mut keys: Vec<&str> = Vec::new();
    for s in &plan.shards {
        for (k, _) in &s.point {
            if !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
    }
    let width = |k: &str| {
        plan.shards
            .iter()
            .filter_map(|s| s.point.iter().find(|(p, _)| p == k).map(|(_, v)| v.len()))
            .chain([k.len()])
            .max()
            .unwrap_or(k.len())
    };
    let widths: Vec<usize> = keys.iter().map(|k| width(k)).collect();
    let mut header = format!("{:<16}", "shard");
    for (k, w) in keys.iter().zip(&widths) {
        header.push_str(&format!("  {k:<w$}"));
    }
    crate::render::emit(&format!("{}\n", header.trim_end()))?;
    for s in &plan.shards {
        let mut row = format!("{:<16}", s.id);
        for (k, w) in keys.iter().zip(&widths) {
            let v = s
                .point
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
        plan.shards.len(),
        plan.results
            .as_deref()
            .map(|r| format!(", results in {r}"))
            .unwrap_or_default(),
        storage_line(&plan)
    ))?;
    Ok(())
}
