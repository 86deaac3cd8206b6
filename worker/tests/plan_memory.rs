//! A million-shard plan fits in a small, bounded amount of memory (issue 24 item 12: it used
//! to hold every shard's full config, about 7.7 KB a shard, 7.7 GB for 10⁶ shards).
//!
//! Its own test binary, because it counts every allocation through a global allocator: the
//! peak of live heap bytes while planning, which is what the plan itself costs (the process's
//! RSS adds the allocator's slack; docs/performance.md has both).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use linesweep_worker::sweep;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn a_million_shard_plan_stays_under_half_a_gigabyte() {
    const SHARDS: usize = 1_000_000;
    let seeds: Vec<String> = (0..SHARDS).map(|i| i.to_string()).collect();
    let spec = format!(
        "name = \"big\"\n[train]\nepochs = 1\n[grid]\nseed = [{}]\n",
        seeds.join(", ")
    );
    drop(seeds);
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let plan = sweep::plan(&spec, "big.toml").expect("the spec plans");
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let held = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(plan.len(), SHARDS);
    eprintln!(
        "planning {SHARDS} shards: peak {peak} bytes, {} held a shard",
        held / SHARDS
    );
    // The target is 1 GB for plan and submit together. Parsing the 7 MB spec is most of the
    // peak (the toml crate peaks at 331 MB for it); the plan holds about 170 bytes a shard.
    assert!(
        peak < 500_000_000,
        "planning {SHARDS} shards peaked at {peak} bytes"
    );
    assert!(
        held / SHARDS < 250,
        "the plan holds {} bytes a shard",
        held / SHARDS
    );
    // The configs are rebuilt on demand, as planned: the last shard's id is its config's hash.
    let last = plan.shards().next_back().expect("a shard");
    assert_eq!(last.config.seed, (SHARDS - 1) as u64);
    assert_eq!(last.config.shard_id(), last.id);
    assert_eq!(plan.ids().last(), Some(&last.id));
}
