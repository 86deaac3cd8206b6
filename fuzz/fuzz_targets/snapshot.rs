//! The snapshot loader (safetensors with linesweep's metadata) and the snapshot manifest that
//! records each snapshot's size and SHA-256.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linesweep_storage::ids::ShardId;
use linesweep_storage::snapshots::SnapshotManifest;
use linesweep_worker::snapshot::HostSnapshot;

fuzz_target!(|data: &[u8]| {
    if let Ok(snap) = HostSnapshot::from_safetensors(data, "fuzz.safetensors") {
        let _ = snap.parameter_vector();
        // What loads saves and loads again unchanged.
        let bytes = snap.to_safetensors().expect("a loaded snapshot saves");
        let again = HostSnapshot::from_safetensors(&bytes, "again").expect("and loads");
        assert_eq!(again.parameter_count(), snap.parameter_count());
    }
    let shard = ShardId::parse("4ea7dd06f9c5609b".to_owned()).unwrap();
    if let Ok(m) = SnapshotManifest::parse(data, &shard) {
        let _ = m.final_entry();
        let _ = m.kept();
    }
});
