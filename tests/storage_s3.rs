//! Create-only writes and copies on a real S3-protocol server (`common::s3`): a second writer
//! of a key gets "already exists", as on a local disk, and the first contents stay. Its own
//! test binary: it sets the process environment the store reads.

mod common;

use common::s3::S3;
use linesweep_storage::{Storage, StorageError};

#[test]
fn create_only_writes_and_copies_are_conditional_on_s3() {
    let s3 = S3::start();
    // SAFETY: the only test of this binary; no other thread reads the environment yet.
    unsafe {
        for (k, v) in s3.env() {
            std::env::set_var(k, v);
        }
        std::env::remove_var("AWS_PROFILE");
    }
    let s = Storage::open("s3://bucket/some/prefix").unwrap();
    assert_eq!(s.root(), "s3://bucket/some/prefix");
    assert!(s.local_dir().is_none());
    s.put_create("a/b.bin", vec![1, 2]).unwrap();
    let err = s.put_create("a/b.bin", vec![3]).unwrap_err();
    assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
    assert_eq!(s.get("a/b.bin").unwrap().as_ref(), &[1, 2]);
    // The prefix is a real prefix of the bucket's keys.
    assert!(s3.root().join("bucket/some/prefix/a/b.bin").is_file());
    s.put("a/c.bin", vec![9]).unwrap();
    s.copy_create("a/c.bin", "p/c.bin").unwrap();
    let err = s.copy_create("a/b.bin", "p/c.bin").unwrap_err();
    assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
    assert_eq!(s.get("p/c.bin").unwrap().as_ref(), &[9]);
    assert_eq!(s.size("p/c.bin").unwrap(), Some(1));
    assert_eq!(s.list("a").unwrap(), vec!["a/b.bin", "a/c.bin"]);
    assert_eq!(s.delete_prefix("a").unwrap(), 2);
    assert!(s.list("a").unwrap().is_empty());
    assert!(!s.exists("a/b.bin").unwrap());
    // Nothing of the open probes is left behind.
    assert_eq!(s.list("").unwrap(), vec!["p/c.bin"]);
}
