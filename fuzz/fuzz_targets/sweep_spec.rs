//! The sweep spec: TOML text → plan (grid, includes, excludes, `[[pairs]]`, `train.init_from`).
//! Any input either plans or is refused with an error; none panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Grid points a spec asks for: the product of its grid lists (nested tables included).
fn points(v: &toml::Value) -> usize {
    match v {
        toml::Value::Array(a) => a.len().max(1),
        toml::Value::Table(t) => t.values().map(points).fold(1, usize::saturating_mul),
        _ => 1,
    }
}

/// Plans too large to expand quickly are skipped: the planner's size limit (`max_shards`) is
/// tested elsewhere, and memory, not correctness, would be what a huge plan exercises here.
fn too_big(doc: &toml::Table) -> bool {
    let grid = doc.get("grid").map_or(1, points);
    let includes = doc
        .get("include")
        .and_then(|v| v.as_array())
        .map_or(0, Vec::len);
    let shards = grid.saturating_add(includes);
    let limit = if doc.contains_key("pairs") { 64 } else { 4096 };
    shards > limit
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match toml::from_str::<toml::Table>(src) {
        Ok(doc) if too_big(&doc) => return,
        _ => {}
    }
    if let Ok(plan) = linesweep_worker::sweep::plan(src, "fuzz.toml") {
        // Every config rebuilt from the compact plan hashes to the id planned for it.
        for shard in plan.shards() {
            // What submit sends: the canonical JSON, which the coordinator's check re-reads.
            let json = shard.config.canonical_json();
            assert_eq!(shard.config.shard_id(), shard.id);
            let _ = linesweep_worker::config::check_submitted(shard.id.as_str(), &json);
        }
    }
});
