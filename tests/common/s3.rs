//! A real S3-protocol server on loopback for the tests: `s3s-fs` (`scripts/test-deps.sh` installs it;
//! `LINESWEEP_S3S_FS` names another binary) serving a temporary folder with SigV4 keys.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Proc;

/// The keys the server accepts.
pub const ACCESS_KEY: &str = "linesweep-test";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "linesweep-test-secret";

/// A running server whose folder holds one bucket, `bucket`.
pub struct S3 {
    _proc: Proc,
    _root: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl S3 {
    /// Starts the server and waits (at most 20 s) until it accepts connections.
    pub fn start() -> S3 {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("bucket")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        S3 {
            _proc: spawn(root.path(), port),
            _root: root,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Kills the server, waits `outage`, and starts it again on the same port and folder.
    pub fn outage(&mut self, outage: Duration) {
        let _ = self._proc.0.kill();
        let _ = self._proc.0.wait();
        std::thread::sleep(outage);
        let port = self.endpoint.rsplit(':').next().unwrap().parse().unwrap();
        self._proc = spawn(self._root.path(), port);
    }

    /// The folder it serves (bucket `bucket` is its subfolder).
    pub fn root(&self) -> &Path {
        self._root.path()
    }

    /// The environment a linesweep process needs to use the server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// `cmd` with the server's environment, and a state directory of its own under `dir`
    /// (where `run` keeps the ledger of an object-store location).
    pub fn command(&self, cmd: &mut Command, dir: &Path) {
        cmd.envs(self.env())
            .env("XDG_STATE_HOME", dir.join("state"))
            .env_remove("AWS_PROFILE");
    }
}

/// `s3s-fs` serving `root` on `port`, once it accepts connections (at most 20 s).
fn spawn(root: &Path, port: u16) -> Proc {
    let program = std::env::var("LINESWEEP_S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("server.log"))
        .unwrap();
    let child = Command::new(&program)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {program} ({e}): `cargo install s3s-fs --version 0.14.1 --features binary` (scripts/test-deps.sh does)")
        });
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "s3s-fs did not listen within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    proc
}
