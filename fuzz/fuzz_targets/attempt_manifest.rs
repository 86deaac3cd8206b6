//! The attempt manifest (`attempt.json`) and the coordinator's publish check of a staged
//! attempt, on a local results root holding the fuzzed manifest.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use linesweep_coordinator::publish;
use linesweep_storage::Storage;
use linesweep_storage::attempt::{ATTEMPT_MANIFEST, AttemptManifest};
use linesweep_storage::ids::{Attempt, ShardId, SweepName};
use linesweep_storage::layout;

struct Root {
    _dir: tempfile::TempDir,
    storage: Storage,
}

/// A results root whose staging holds a real attempt's files (fuzz/staged: a one-shard
/// sweep's results and snapshots), so that a manifest that lists them right is verified all
/// the way down to the snapshot hashes and the `runs` row.
static ROOT: LazyLock<Root> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path().to_str().unwrap()).unwrap();
    let staged = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("staged");
    let prefix = layout::staging_prefix(&sweep(), &shard(), attempt());
    for sub in ["results", "snapshots"] {
        copy_tree(&staged, &staged.join(sub), &storage, &prefix);
    }
    Root { _dir: dir, storage }
});

fn copy_tree(base: &std::path::Path, dir: &std::path::Path, storage: &Storage, prefix: &str) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            copy_tree(base, &path, storage, prefix);
        } else {
            let key = path
                .strip_prefix(base)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let bytes = std::fs::read(&path).unwrap();
            storage
                .put(&layout::placed(Some(prefix), &key), bytes)
                .unwrap();
        }
    }
}

fn sweep() -> SweepName {
    SweepName::parse("seed".to_owned()).unwrap()
}

fn shard() -> ShardId {
    ShardId::parse("4ea7dd06f9c5609b".to_owned()).unwrap()
}

fn attempt() -> Attempt {
    Attempt::new(1).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let (sweep, shard, attempt) = (sweep(), shard(), attempt());
    if let Ok(m) = serde_json::from_slice::<AttemptManifest>(data) {
        let _ = m.check(&sweep, &shard, attempt);
        let _ = m.publish_order();
    }
    let storage = &ROOT.storage;
    let prefix = layout::staging_prefix(&sweep, &shard, attempt);
    let key = layout::placed(Some(&prefix), ATTEMPT_MANIFEST);
    storage.put(&key, data.to_vec()).unwrap();
    // Refused or accepted, never a panic.
    let _ = publish::verify(storage, &sweep, &shard, attempt);
});
