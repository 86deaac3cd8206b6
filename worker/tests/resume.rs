//! Mid-shard resume through `exec::run` in staged mode, with the interruption placed exactly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use linesweep_worker::config::ShardConfig;
use linesweep_worker::device::ComputeDevice;
use linesweep_worker::engine::{Phase, Progress};
use linesweep_worker::exec::{self, ExecError, Placement};
use linesweep_worker::storage::Storage;
use linesweep_worker::storage::ids::{Attempt, SweepName};

fn sweep(name: &str) -> SweepName {
    SweepName::parse(name).unwrap()
}

/// Asks the run to stop once `at` training steps are done.
struct StopAt {
    at: u64,
    done: AtomicU64,
    training: std::sync::atomic::AtomicBool,
}

impl StopAt {
    fn new(at: u64) -> Self {
        Self {
            at,
            done: AtomicU64::new(0),
            training: false.into(),
        }
    }
}

impl Progress for StopAt {
    fn start(&self, phase: Phase, _total: u64) {
        self.training
            .store(matches!(phase, Phase::Training), Ordering::SeqCst);
    }
    fn advance(&self, n: u64, _loss: Option<f64>) {
        if self.training.load(Ordering::SeqCst) {
            self.done.fetch_add(n, Ordering::SeqCst);
        }
    }
    fn finish(&self) {}
    fn interrupted(&self) -> bool {
        self.done.load(Ordering::SeqCst) >= self.at
    }
}

fn cfg() -> ShardConfig {
    ShardConfig::from_toml(
        r#"
seed = 5
[data]
# 21 steps per epoch: snapshot epochs such as 20/21 = 0.9523809523809523 are where a float
# read back from a checkpoint without round-trip parsing lands one ULP off.
max_train_examples = 1050
[model]
hidden = [24]
[train]
epochs = 2
batch_size = 50
optimizer = "adam"
lr = 0.01
[snapshot]
every = 5
[eval]
max_examples = 200
alpha_points = 5
# A line from step 8: a resumed attempt rebuilds that start from its snapshot.
starts = ["init", "step:8"]
"#,
        "resume.toml",
    )
    .unwrap()
}

/// The `runs` row under `prefix`, every column but those that describe the attempt rather
/// than the result (its number, when it finished, how long each phase took).
fn runs_row(storage: &Storage, prefix: &str) -> Vec<(String, String)> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let key = storage
        .list(prefix)
        .unwrap()
        .into_iter()
        .find(|k| k.contains("/runs/"))
        .expect("a runs file");
    let bytes = storage.get(&key).unwrap();
    let mut reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let batch = reader.next().unwrap().unwrap();
    let attempt_columns = [
        "attempt",
        "finished_at",
        "train_samples_per_s",
        "line_points_per_s",
    ];
    batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !attempt_columns.contains(&f.name().as_str()) && !f.name().ends_with("_s"))
        .map(|(i, f)| {
            let value = arrow_cast_display(batch.column(i).as_ref());
            (f.name().clone(), value)
        })
        .collect()
}

/// A column's single value, formatted exactly (floats in full, via Debug).
fn arrow_cast_display(column: &dyn arrow_array::Array) -> String {
    format!("{column:?}")
}

/// Every file under `prefix` except checkpoints, the attempt manifest and the `runs` summary
/// (compared column by column in [`runs_row`], since it records timings).
fn outputs(storage: &Storage, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    storage
        .list(prefix)
        .unwrap()
        .into_iter()
        // The attempt manifest names its attempt and hashes the runs file: per attempt.
        .filter(|k| {
            !k.contains("/checkpoints/") && !k.contains("/runs/") && !k.ends_with("/attempt.json")
        })
        .map(|k| {
            let bytes = storage.get(&k).unwrap().to_vec();
            (k[prefix.len()..].to_owned(), bytes)
        })
        .collect()
}

/// Interrupted at `stop` steps (checkpoints every 6), resumed by attempt 2: the outputs equal
/// an uninterrupted attempt's, byte for byte.
fn interrupted_then_resumed_equals_whole(stop: u64) {
    interrupted_tampered_then_resumed_equals_whole(stop, |_, _| {});
}

/// Flips the low bit of a few bytes near the end of the object at `key` (inside the tensor
/// data of a safetensors file).
fn flip_bits(storage: &Storage, key: &str) {
    let mut bytes = storage.get(key).unwrap().to_vec();
    let n = bytes.len();
    for i in [n - 5, n - 40, n - 400] {
        bytes[i] ^= 1;
    }
    storage.put(key, bytes).unwrap();
}

/// As above, with `tamper(storage, attempt-1 staging prefix)` run between the interruption
/// and the resume.
fn interrupted_tampered_then_resumed_equals_whole(stop: u64, tamper: impl Fn(&Storage, &str)) {
    let tmp = tempfile::tempdir().unwrap();
    let open = |root: &str| Storage::open(tmp.path().join(root).to_str().unwrap()).unwrap();
    // The same sweep name under two roots, so that the keys compare equal.
    let (whole_root, storage) = (open("whole"), open("parts"));
    let cfg = cfg();
    let device = ComputeDevice::cpu();
    let shard = cfg.shard_id();
    let staged = |n| Placement::Staged {
        attempt: Attempt::new(n).unwrap(),
    };
    exec::run(
        &cfg,
        &device,
        &whole_root,
        &sweep("s"),
        staged(1),
        6,
        &StopAt::new(u64::MAX),
    )
    .unwrap();

    let err = exec::run(
        &cfg,
        &device,
        &storage,
        &sweep("s"),
        staged(1),
        6,
        &StopAt::new(stop),
    )
    .expect_err("the run was asked to stop");
    assert!(
        matches!(err, ExecError::Engine(linesweep_worker::engine::EngineError::Interrupted { step }) if step == stop),
        "{err}"
    );
    let attempt1 = format!("staging/s/{shard}/attempt-1/");
    let checkpoints: Vec<String> = storage
        .list(&attempt1)
        .unwrap()
        .into_iter()
        .filter(|k| k.ends_with("/state.json"))
        .collect();
    assert_eq!(
        checkpoints,
        vec![format!("{attempt1}checkpoints/step-{stop:08}/state.json")],
        "exactly one checkpoint, at the interruption"
    );
    tamper(&storage, &attempt1);

    exec::run(
        &cfg,
        &device,
        &storage,
        &sweep("s"),
        staged(2),
        6,
        &StopAt::new(u64::MAX),
    )
    .unwrap();
    let whole = outputs(&whole_root, &format!("staging/s/{shard}/attempt-1/"));
    let parts = outputs(&storage, &format!("staging/s/{shard}/attempt-2/"));
    assert!(whole.len() >= 8, "{} files", whole.len());
    assert_eq!(
        whole.keys().collect::<Vec<_>>(),
        parts.keys().collect::<Vec<_>>()
    );
    for (k, v) in &whole {
        assert!(
            parts[k] == *v,
            "{k} differs after resuming from step {stop}"
        );
    }
    let (a, b) = (
        runs_row(&whole_root, &format!("staging/s/{shard}/attempt-1/")),
        runs_row(&storage, &format!("staging/s/{shard}/attempt-2/")),
    );
    assert!(a.len() > 60, "{} columns", a.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x, y, "runs.{name} differs after resuming from step {stop}");
    }
}

#[test]
fn interrupted_right_after_a_periodic_checkpoint_keeps_it() {
    // 12 is a multiple of checkpoint_every = 6: the periodic checkpoint is the one to keep.
    interrupted_then_resumed_equals_whole(12);
}

#[test]
fn interrupted_between_checkpoints_writes_one_at_the_stop() {
    interrupted_then_resumed_equals_whole(14);
}

/// A checkpoint whose weights changed on disk is never resumed from: the next attempt starts
/// over, and so ends exactly where an uninterrupted run does (resuming the flipped weights
/// changed every interpolation and trajectory row).
#[test]
fn a_corrupted_checkpoint_is_discarded_not_resumed() {
    interrupted_tampered_then_resumed_equals_whole(12, |st, prefix| {
        flip_bits(
            st,
            &format!("{prefix}checkpoints/step-00000012/model.safetensors"),
        );
    });
}

/// The same for a snapshot that the checkpoint's trajectory refers to.
#[test]
fn a_checkpoint_whose_snapshot_changed_is_discarded() {
    interrupted_tampered_then_resumed_equals_whole(12, |st, prefix| {
        let shard = cfg().shard_id();
        flip_bits(
            st,
            &format!("{prefix}snapshots/{shard}/step-00000005.safetensors"),
        );
    });
}

#[test]
fn a_resumed_attempt_counts_the_images_skipped_before_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("imagenet");
    linesweep_worker::data::imagenet::write_synthetic(&data, 2, 6, 2, 24).unwrap();
    // Two undecodable training images: every epoch meets both.
    for f in [
        "train/n00000001/img0000.JPEG",
        "train/n00000002/img0003.JPEG",
    ] {
        std::fs::write(data.join(f), b"not a jpeg").unwrap();
    }
    let cfg = ShardConfig::from_toml(
        &format!(
            r#"
seed = 2
[data]
dataset = "imagenet"
dir = "{}"
image_size = 16
loader_threads = 1
[model]
hidden = [8]
[train]
epochs = 2
batch_size = 4
lr = 0.01
[snapshot]
every = 0
[eval]
max_examples = 8
alpha_points = 5
"#,
            data.display()
        ),
        "skipped.toml",
    )
    .unwrap();
    let storage = Storage::open(tmp.path().join("out").to_str().unwrap()).unwrap();
    let device = ComputeDevice::cpu();
    let staged = |n| Placement::Staged {
        attempt: Attempt::new(n).unwrap(),
    };
    let whole = exec::run(
        &cfg,
        &device,
        &storage,
        &sweep("w"),
        staged(1),
        2,
        &StopAt::new(u64::MAX),
    )
    .unwrap()
    .outcome
    .metrics
    .skipped_images;
    // 12 training images, 3 steps per epoch: stopped after step 3 (one epoch, both bad
    // images met), resumed for the second.
    exec::run(
        &cfg,
        &device,
        &storage,
        &sweep("r"),
        staged(1),
        2,
        &StopAt::new(3),
    )
    .expect_err("the run was asked to stop");
    let resumed = exec::run(
        &cfg,
        &device,
        &storage,
        &sweep("r"),
        staged(2),
        2,
        &StopAt::new(u64::MAX),
    )
    .unwrap()
    .outcome
    .metrics
    .skipped_images;
    // 2 per epoch in training, plus those in the decoded evaluation subset of the train split.
    assert!(whole >= 4, "{whole}");
    assert_eq!(resumed, whole);
}
