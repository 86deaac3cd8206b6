//! The snapshot manifest (`snapshots/<shard>/manifest.json`): the weights a shard kept, each
//! with its size and SHA-256, computed by the worker that wrote the bytes.
//!
//! The one home of that contract: `exec` writes it, the coordinator's publish check holds its
//! hashes to the attempt manifest's (and the staged files to their sizes, without reading
//! them), and every reader of a committed snapshot (a child's θ_i, a pair's two θ_c) reads it
//! through [`SnapshotManifest::read_verified`], which checks the hash before a byte is used.
//! A damaged or missing snapshot is therefore an error naming the file, never a result.

use bytes::Bytes;

use crate::attempt::sha256_hex;
use crate::ids::ShardId;
use crate::layout::{snapshot_key, snapshot_manifest_key};
use crate::{Storage, StorageError};

/// The file format every snapshot is written in.
pub const SNAPSHOT_FORMAT: &str = "safetensors";

/// Why a snapshot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotRole {
    /// θ_i, step 0.
    Init,
    /// Every `snapshot.every` steps, and line starts.
    Periodic,
    /// θ_c, the last step of a run that finished.
    Final,
}

/// One snapshot a shard kept.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotEntry {
    /// The optimizer step whose weights it holds.
    pub step: u64,
    /// The epoch at that step.
    pub epoch: f64,
    /// Its file name in the shard's snapshot folder.
    pub file: String,
    /// Why it was taken.
    pub kind: SnapshotRole,
    /// Size in bytes (absent from manifests of versions before hashes: such a snapshot is
    /// refused by [`SnapshotManifest::read_verified`]).
    #[serde(default)]
    pub bytes: u64,
    /// SHA-256 of the file, lowercase hex (empty in manifests of versions before hashes).
    #[serde(default)]
    pub sha256: String,
}

impl SnapshotRole {
    /// The role of the snapshot of `step` (`is_final`: the last step of a finished run).
    pub fn of(step: u64, is_final: bool) -> Self {
        match (step, is_final) {
            (0, _) => Self::Init,
            (_, true) => Self::Final,
            _ => Self::Periodic,
        }
    }
}

impl SnapshotEntry {
    /// The entry of a snapshot stored as `file` (whose key's last part is its file name), with
    /// the size and hash that the staged file records.
    pub fn of(
        file: &crate::attempt::StagedFile,
        step: u64,
        epoch: f64,
        kind: SnapshotRole,
    ) -> Self {
        Self {
            step,
            epoch,
            file: file.key.rsplit('/').next().unwrap_or(&file.key).to_owned(),
            kind,
            bytes: file.bytes,
            sha256: file.sha256.clone(),
        }
    }
}

/// `snapshots/<shard>/manifest.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotManifest {
    /// The shard whose weights these are.
    pub shard: ShardId,
    /// Always [`SNAPSHOT_FORMAT`].
    pub format: String,
    /// In the order they were taken.
    pub snapshots: Vec<SnapshotEntry>,
}

/// A committed snapshot could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotReadError {
    /// The shard has no snapshot manifest at this location.
    #[error(
        "{root} has no snapshot manifest of shard {shard} ({key}): the shard is not committed there"
    )]
    NoManifest {
        root: String,
        shard: ShardId,
        key: String,
    },
    /// The manifest does not parse, or is another shard's.
    #[error("{key} in {root} does not read: {reason}")]
    BadManifest {
        root: String,
        key: String,
        reason: String,
    },
    /// The manifest lists no snapshot of that step or role.
    #[error("{key} in {root} lists no {what}; it keeps steps {kept}")]
    NotKept {
        root: String,
        key: String,
        what: String,
        kept: String,
    },
    /// The manifest records no hash for the file (written before hashes were recorded).
    #[error(
        "{key} in {root} has no recorded SHA-256 (a version before content hashes published \
         it), so it cannot be verified: rerun shard {shard} (`linesweep retry --committed`)"
    )]
    Unhashed {
        root: String,
        key: String,
        shard: ShardId,
    },
    /// The file is missing or its contents are not what was published (`why` says how,
    /// and what the manifest recorded).
    #[error("{key} in {root} is damaged: {why}")]
    Damaged {
        root: String,
        key: String,
        why: String,
    },
    /// Storage failed (the file may be fine).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl SnapshotManifest {
    /// The manifest of `shard`'s snapshots in `storage`, checked to be that shard's and to name
    /// each file by its step.
    pub fn read(storage: &Storage, shard: &ShardId) -> Result<Self, SnapshotReadError> {
        let key = snapshot_manifest_key(shard);
        let root = storage.root().to_owned();
        if !storage.exists(&key)? {
            return Err(SnapshotReadError::NoManifest {
                root,
                shard: shard.clone(),
                key,
            });
        }
        let bytes = storage.get(&key)?;
        Self::parse(&bytes, shard).map_err(|reason| SnapshotReadError::BadManifest {
            root,
            key,
            reason,
        })
    }

    /// Parses a manifest and checks it is `shard`'s, each entry naming its step's file.
    pub fn parse(bytes: &[u8], shard: &ShardId) -> Result<Self, String> {
        let m: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if m.shard != *shard {
            return Err(format!("it is shard {}'s, not shard {shard}'s", m.shard));
        }
        if m.format != SNAPSHOT_FORMAT {
            return Err(format!("format `{}` is not `{SNAPSHOT_FORMAT}`", m.format));
        }
        for e in &m.snapshots {
            if m.key_of(e) != snapshot_key(shard, e.step) {
                return Err(format!(
                    "the snapshot of step {} is named `{}`, not `{}`",
                    e.step,
                    e.file,
                    snapshot_key(shard, e.step)
                ));
            }
        }
        Ok(m)
    }

    /// The storage key of an entry's file.
    pub fn key_of(&self, e: &SnapshotEntry) -> String {
        crate::layout::placed(Some(&crate::layout::snapshot_dir(&self.shard)), &e.file)
    }

    /// The snapshot of `step`.
    pub fn at_step(&self, step: u64) -> Option<&SnapshotEntry> {
        self.snapshots.iter().find(|e| e.step == step)
    }

    /// θ_c: the snapshot marked final (none when the run diverged).
    pub fn final_entry(&self) -> Option<&SnapshotEntry> {
        self.snapshots
            .iter()
            .find(|e| e.kind == SnapshotRole::Final)
    }

    /// The steps kept, for messages (`0, 10, 20`).
    pub fn kept(&self) -> String {
        let steps: Vec<String> = self.snapshots.iter().map(|e| e.step.to_string()).collect();
        if steps.is_empty() {
            "none".into()
        } else {
            steps.join(", ")
        }
    }

    /// The error for a snapshot this manifest does not list (`what`: "snapshot at step 20").
    pub fn not_kept(&self, storage: &Storage, what: String) -> SnapshotReadError {
        SnapshotReadError::NotKept {
            root: storage.root().to_owned(),
            key: snapshot_manifest_key(&self.shard),
            what,
            kept: self.kept(),
        }
    }

    /// Reads the file of entry `e` and checks its size and SHA-256 against the manifest.
    pub fn read_verified(
        &self,
        storage: &Storage,
        e: &SnapshotEntry,
    ) -> Result<Bytes, SnapshotReadError> {
        let key = self.key_of(e);
        let root = storage.root().to_owned();
        if e.sha256.is_empty() {
            return Err(SnapshotReadError::Unhashed {
                root,
                key,
                shard: self.shard.clone(),
            });
        }
        let damaged = |found: String| SnapshotReadError::Damaged {
            root: root.clone(),
            key: key.clone(),
            why: format!(
                "{found}, but its manifest recorded {} bytes with SHA-256 {}; rerun shard {} \
                 (`linesweep retry --committed`)",
                e.bytes, e.sha256, self.shard
            ),
        };
        if storage.size(&key)?.is_none() {
            return Err(damaged("the file is missing".into()));
        }
        let bytes = storage.get(&key)?;
        let sha256 = sha256_hex(&bytes);
        if bytes.len() as u64 != e.bytes || sha256 != e.sha256 {
            return Err(damaged(format!(
                "it has {} bytes with SHA-256 {sha256}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard() -> ShardId {
        ShardId::parse("abc").unwrap()
    }

    fn entry(step: u64, contents: &[u8], kind: SnapshotRole) -> SnapshotEntry {
        let file = crate::attempt::StagedFile::of(&snapshot_key(&shard(), step), contents);
        SnapshotEntry::of(&file, step, 0.0, kind)
    }

    #[test]
    fn a_snapshot_is_used_only_with_the_contents_its_manifest_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap()).unwrap();
        let m = SnapshotManifest {
            shard: shard(),
            format: SNAPSHOT_FORMAT.into(),
            snapshots: vec![
                entry(0, b"init", SnapshotRole::Init),
                entry(10, b"final", SnapshotRole::Final),
            ],
        };
        let json = serde_json::to_vec(&m).unwrap();
        storage
            .put(&snapshot_manifest_key(&shard()), json.clone())
            .unwrap();
        storage
            .put(&snapshot_key(&shard(), 0), b"init".to_vec())
            .unwrap();
        storage
            .put(&snapshot_key(&shard(), 10), b"fin4l".to_vec())
            .unwrap();
        let back = SnapshotManifest::read(&storage, &shard()).unwrap();
        assert_eq!(back, m);
        let init = back.at_step(0).unwrap();
        assert_eq!(&back.read_verified(&storage, init).unwrap()[..], b"init");
        // Same size, one byte flipped: refused, naming the file.
        let fin = back.final_entry().unwrap();
        let err = back.read_verified(&storage, fin).unwrap_err().to_string();
        assert!(
            err.contains("step-00000010.safetensors") && err.contains("damaged"),
            "{err}"
        );
        storage.delete(&snapshot_key(&shard(), 10)).unwrap();
        let err = back.read_verified(&storage, fin).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        // A manifest of a version before hashes cannot vouch for anything.
        let mut old = back.at_step(0).unwrap().clone();
        old.sha256.clear();
        let err = back.read_verified(&storage, &old).unwrap_err().to_string();
        assert!(err.contains("no recorded SHA-256"), "{err}");
        // Another shard's manifest, or one naming a file outside its step, is refused.
        let other = ShardId::parse("abd").unwrap();
        assert!(
            SnapshotManifest::parse(&json, &other)
                .unwrap_err()
                .contains("shard abc's")
        );
        let mut renamed = m.clone();
        renamed.snapshots[1].file = "../x".into();
        let err = SnapshotManifest::parse(&serde_json::to_vec(&renamed).unwrap(), &shard());
        assert!(err.unwrap_err().contains("step 10"));
        assert!(matches!(
            SnapshotManifest::read(&storage, &other),
            Err(SnapshotReadError::NoManifest { .. })
        ));
        assert_eq!(back.kept(), "0, 10");
    }
}
