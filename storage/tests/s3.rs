//! Create-only writes and copies on a real S3-protocol server (`s3s-fs` on loopback, which
//! `.ci/run` installs): a second writer of a key gets "already exists", as on a local disk,
//! and the first contents stay.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use linesweep_storage::{Storage, StorageError};

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn create_only_writes_and_copies_are_conditional_on_s3() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("bucket")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let program = std::env::var("LINESWEEP_S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
    let _server = Server(
        Command::new(&program)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "ak", "--secret-key", "sk"])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}")),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s3s-fs did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: the only test of this binary; no other thread reads the environment yet.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "ak");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "sk");
        std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
        std::env::set_var("AWS_REGION", "us-east-1");
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
    assert!(root.path().join("bucket/some/prefix/a/b.bin").is_file());
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
