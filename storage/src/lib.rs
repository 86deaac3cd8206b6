//! Where snapshots and results go: an `object_store` behind a location string, and the key
//! layout ([`layout`]) that workers and the coordinator agree on.
//!
//! Locations are `file:///absolute/dir`, a plain directory path (created if missing), or
//! `s3://bucket/prefix` ([`s3`]: credentials, region and endpoint from the standard AWS
//! environment variables and profile; path-style requests, so MinIO, Ceph and the like work).
//! Every location is probed when it is opened, so that a missing bucket, wrong credentials or
//! an unreachable endpoint is one clear error at start, not a failure per shard.
//! Calls are blocking: the engine is synchronous and runs on its own thread, so this wraps a
//! private current-thread runtime rather than making every caller async. Async callers (the
//! coordinator) must call it from `spawn_blocking`.

pub mod attempt;
pub mod coverage;
pub mod ids;
pub mod layout;
pub mod parquet_file;
pub mod s3;
pub mod snapshots;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};

/// A storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The location string is not usable.
    #[error("storage location `{location}`: {problem}")]
    Location { location: String, problem: String },
    /// A create-only write found the key already there.
    #[error(
        "{key} already exists in {root}; results are never overwritten (use a new output location)"
    )]
    AlreadyExists { key: String, root: String },
    /// Any other failure of the store.
    #[error("{op} {key} in {root}: {message}")]
    Store {
        op: &'static str,
        key: String,
        root: String,
        message: String,
    },
}

/// A blocking handle on one storage root.
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    root: String,
    /// The directory of a local root (`None`: an object store).
    local: Option<PathBuf>,
    /// The endpoint of an object store (`None`: a local root).
    endpoint: Option<String>,
    rt: std::mem::ManuallyDrop<tokio::runtime::Runtime>,
}

impl Drop for Storage {
    fn drop(&mut self) {
        // SAFETY: `rt` is taken exactly once, here, and never used afterwards.
        let rt = unsafe { std::mem::ManuallyDrop::take(&mut self.rt) };
        // The last handle may be dropped on an async runtime's thread (the coordinator caches
        // stores); a blocking shutdown would panic there, and there is nothing to wait for.
        rt.shutdown_background();
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("root", &self.root).finish()
    }
}

impl Storage {
    /// Opens (and for local directories, creates and probes for writability) a location.
    pub fn open(location: &str) -> Result<Self, StorageError> {
        let bad = |problem: String| StorageError::Location {
            location: location.to_owned(),
            problem,
        };
        let dir: PathBuf = match location.split_once("://") {
            Some(("s3", _)) => return Self::open_s3(location),
            Some(("file", rest)) => {
                let url = url::Url::parse(location).map_err(|e| bad(e.to_string()))?;
                if !rest.starts_with('/') {
                    return Err(bad("file URLs need an absolute path: file:///dir".into()));
                }
                url.to_file_path()
                    .map_err(|_| bad("not a local path".into()))?
            }
            Some((scheme, _)) => {
                return Err(bad(format!(
                    "the `{scheme}` scheme is not supported; use a directory, file:///dir or s3://bucket/prefix"
                )));
            }
            None => PathBuf::from(location),
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| bad(format!("cannot create the directory: {e}")))?;
        probe_writable(&dir).map_err(|e| bad(format!("the directory is not writable: {e}")))?;
        let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            store: Arc::new(fs),
            root: dir.display().to_string(),
            local: Some(dir),
            endpoint: None,
            rt: std::mem::ManuallyDrop::new(io_runtime().map_err(bad)?),
        })
    }

    /// Opens `s3://bucket/prefix` and probes it: a conditional write (which exactly-once
    /// publication relies on), its refusal the second time, and a delete.
    fn open_s3(location: &str) -> Result<Self, StorageError> {
        let bad = |problem: String| StorageError::Location {
            location: location.to_owned(),
            problem,
        };
        let (store, endpoint) = s3::open(location).map_err(bad)?;
        let storage = Self {
            store,
            root: location.trim_end_matches('/').to_owned(),
            local: None,
            endpoint: Some(endpoint),
            rt: std::mem::ManuallyDrop::new(io_runtime().map_err(bad)?),
        };
        // A listing first: some stores create a missing bucket on a write.
        storage
            .rt
            .block_on(storage.store.list_with_delimiter(None))
            .map_err(|e| {
                let e = storage.err("listing", "", e);
                bad(format!("cannot list the bucket: {}", s3::explain(&e)))
            })?;
        let probe = probe_key();
        storage
            .put_create(&probe, b"probe".to_vec())
            .map_err(|e| bad(format!("cannot write to the bucket: {}", s3::explain(&e))))?;
        let second = storage.put_create(&probe, b"again".to_vec());
        let _ = storage.delete(&probe);
        match second {
            Err(StorageError::AlreadyExists { .. }) => Ok(storage),
            Ok(()) => Err(bad(
                "the store accepted a second create-only write of one key: it ignores \
                 `If-None-Match: *`, and linesweep's exactly-once publish needs it"
                    .into(),
            )),
            Err(e) => Err(bad(format!(
                "a conditional write failed: {}",
                s3::explain(&e)
            ))),
        }
    }

    /// The whole location: the root, and for an object store the endpoint it talks to (one
    /// bucket and prefix on two endpoints are two locations).
    pub fn identity(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("{} at {e}", self.root),
            None => self.root.clone(),
        }
    }

    /// The location as given (a directory, or `s3://bucket/prefix`).
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The directory of a local root; `None` for an object store.
    pub fn local_dir(&self) -> Option<&Path> {
        self.local.as_deref()
    }

    fn key(key: &str) -> Key {
        Key::from(key)
    }

    fn err(&self, op: &'static str, key: &str, e: object_store::Error) -> StorageError {
        match e {
            object_store::Error::AlreadyExists { .. } => StorageError::AlreadyExists {
                key: key.to_owned(),
                root: self.root.clone(),
            },
            other => StorageError::Store {
                op,
                key: key.to_owned(),
                root: self.root.clone(),
                message: other.to_string(),
            },
        }
    }

    /// Writes `bytes` at `key`, replacing what was there (atomic on local disks).
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        let payload = PutPayload::from(Bytes::from(bytes));
        self.rt
            .block_on(self.store.put(&Self::key(key), payload))
            .map(|_| ())
            .map_err(|e| self.err("writing", key, e))
    }

    /// Writes `bytes` at `key` only if nothing is there yet.
    pub fn put_create(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.create("creating", key, Bytes::from(bytes))
    }

    /// A create-only write of `bytes` at `key`; `op` names it in errors.
    fn create(&self, op: &'static str, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.rt
            .block_on(self.store.put_opts(
                &Self::key(key),
                PutPayload::from(bytes),
                PutMode::Create.into(),
            ))
            .map(|_| ())
            .map_err(|e| self.err(op, key, e))
    }

    /// Reads the object at `key`.
    pub fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        self.rt
            .block_on(async { self.store.get(&Self::key(key)).await?.bytes().await })
            .map_err(|e| self.err("reading", key, e))
    }

    /// The size in bytes of the object at `key`, or `None` when there is none.
    pub fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self.rt.block_on(self.store.head(&Self::key(key))) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("checking", key, e)),
        }
    }

    /// Whether an object exists at `key`.
    pub fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self.rt.block_on(self.store.head(&Self::key(key))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err("checking", key, e)),
        }
    }

    /// Copies `from` to `to` only if nothing is at `to` yet (a hard link on local disks, so the
    /// destination appears complete or not at all). On S3 a server-side copy when the store is
    /// configured for create-only copies (`AWS_COPY_IF_NOT_EXISTS`, e.g. `multipart` on AWS);
    /// otherwise the object is read and written back with a conditional put, which every store
    /// that linesweep accepts honours (the probe in [`Storage::open`] checks it).
    pub fn copy_create(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let copied = self.rt.block_on(
            self.store
                .copy_if_not_exists(&Self::key(from), &Self::key(to)),
        );
        match copied {
            Err(object_store::Error::NotSupported { .. })
            | Err(object_store::Error::NotImplemented { .. }) => {
                let bytes = self.get(from)?;
                self.create("publishing", to, bytes)
            }
            other => other.map_err(|e| self.err("publishing", to, e)),
        }
    }

    /// Deletes the object at `key` (nothing there is not an error).
    pub fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.rt.block_on(self.store.delete(&Self::key(key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("deleting", key, e)),
        }
    }

    /// Deletes every object under `prefix`; returns how many were removed.
    pub fn delete_prefix(&self, prefix: &str) -> Result<usize, StorageError> {
        let keys = self.list(prefix)?;
        for k in &keys {
            match self.rt.block_on(self.store.delete(&Self::key(k))) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.err("deleting", k, e)),
            }
        }
        if let Some(dir) = self.local_subdir(prefix) {
            // object_store deletes files, not directories; empty ones would pile up.
            remove_empty_dirs(&dir);
        }
        Ok(keys.len())
    }

    fn local_subdir(&self, prefix: &str) -> Option<PathBuf> {
        let p = self.local.as_ref()?.join(prefix.trim_matches('/'));
        p.is_dir().then_some(p)
    }

    /// The shards of `sweep` whose file of result table `table` is published (for the
    /// commit table, `runs`: the committed shards).
    pub fn published_shards(
        &self,
        table: &str,
        sweep: &ids::SweepName,
    ) -> Result<std::collections::BTreeSet<ids::ShardId>, StorageError> {
        Ok(self
            .list(&layout::result_sweep_prefix(table, sweep))?
            .iter()
            .filter_map(|k| layout::parse_result_key(table, k))
            .filter(|(s, _)| s == sweep)
            .map(|(_, shard)| shard)
            .collect())
    }

    /// Keys under `prefix`, sorted.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        use futures_util::TryStreamExt;
        let p = Self::key(prefix);
        let mut keys: Vec<String> = self
            .rt
            .block_on(
                self.store
                    .list(Some(&p))
                    .map_ok(|m| m.location.to_string())
                    .try_collect(),
            )
            .map_err(|e| self.err("listing", prefix, e))?;
        keys.sort();
        Ok(keys)
    }
}

/// The private runtime that the blocking calls run on.
fn io_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the I/O runtime: {e}"))
}

/// A key no other call uses: threads of one process open the same location at once.
fn probe_key() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".linesweep-probe-{}-{nanos}-{n}", std::process::id())
}

/// Removes `dir` and the empty directories below it, bottom up; leaves anything non-empty.
fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Creates and removes a uniquely named file in `dir`. The name must be unique per call, not
/// per process: threads of one process (a coordinator's concurrent requests) open the same
/// location at once, and a shared name let one remove the other's probe.
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    tempfile::Builder::new()
        .prefix(".linesweep-probe-")
        .tempfile_in(dir)?
        .close()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_only_refuses_a_second_write() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Storage::open(tmp.path().to_str().unwrap()).unwrap();
        s.put_create("a/b.bin", vec![1, 2]).unwrap();
        let err = s.put_create("a/b.bin", vec![3]).unwrap_err();
        assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
        assert_eq!(s.get("a/b.bin").unwrap().as_ref(), &[1, 2]);
        assert!(s.exists("a/b.bin").unwrap());
        assert!(!s.exists("a/c.bin").unwrap());
        s.put("a/c.bin", vec![9]).unwrap();
        assert_eq!(s.list("a").unwrap(), vec!["a/b.bin", "a/c.bin"]);
        // Publishing is create-only too, and a failed publish leaves the target alone.
        s.copy_create("a/c.bin", "p/c.bin").unwrap();
        let err = s.copy_create("a/b.bin", "p/c.bin").unwrap_err();
        assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
        assert_eq!(s.get("p/c.bin").unwrap().as_ref(), &[9]);
        assert_eq!(s.delete_prefix("a").unwrap(), 2);
        assert!(s.list("a").unwrap().is_empty());
        assert!(
            !tmp.path().join("a").exists(),
            "empty directories are removed too"
        );
        assert_eq!(s.list("p").unwrap(), vec!["p/c.bin"]);
    }

    #[test]
    fn file_urls_and_bad_locations() {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("file://{}/sub", tmp.path().display());
        let s = Storage::open(&url).unwrap();
        assert!(s.root().ends_with("sub"));
        let err = Storage::open("gs://bucket/x").unwrap_err().to_string();
        assert!(err.contains("`gs` scheme is not supported"), "{err}");
        let err = Storage::open("file://relative/x").unwrap_err().to_string();
        assert!(err.contains("absolute path"), "{err}");
    }
}
