//! The shard config, as a TOML file (`exec --config`) and as the canonical JSON a worker
//! leases: parse, validate, and the id of what parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linesweep_worker::config::{ShardConfig, check_submitted};

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = ShardConfig::from_toml(src, "fuzz.toml") {
        let _ = cfg.validate();
        let json = cfg.canonical_json();
        // The canonical form reads back as the same shard.
        let again = ShardConfig::from_json(&json).expect("canonical JSON reads back");
        assert_eq!(again.shard_id(), cfg.shard_id());
        let _ = cfg.alpha_grid();
        let _ = cfg.snapshot_bytes_at_least();
    }
    if let Ok(cfg) = ShardConfig::from_json(src) {
        let _ = cfg.validate();
        let _ = check_submitted(cfg.shard_id().as_str(), src);
    }
});
