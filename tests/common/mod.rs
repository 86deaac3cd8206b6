//! Helpers shared by the end-to-end tests: run the built binary with a deadline.

#![allow(dead_code)]

pub mod s3;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `linesweep` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_linesweep"))
}

/// Repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` to completion or kills it after `limit`; panics on timeout.
pub fn run_with_deadline(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    // Drain pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).ok();
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).ok();
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// `linesweep ARGS…` with a deadline.
pub fn linesweep(args: &[&str], cwd: &Path, limit: Duration) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).current_dir(cwd);
    run_with_deadline(cmd, limit)
}

/// Calls `probe` every 100 ms until `done` holds for what it returns; panics after `limit`
/// with the last value it saw.
pub fn poll_until<T: std::fmt::Debug>(
    limit: Duration,
    what: &str,
    probe: impl Fn() -> Option<T>,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + limit;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(v) = probe() {
            if done(&v) {
                return v;
            }
            last = Some(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not reached within {limit:?}; last seen {last:#?}");
}

/// Text of an output stream.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A child process killed when the test ends, whatever happens.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Sends `sig` to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we spawned.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, sig);
        }
    }
}

/// Starts `linesweep -q serve ARGS…` and returns it with the URL from its first stdout line.
pub fn serve(args: &[&str], state: &Path) -> (Proc, String) {
    let mut child = Command::new(bin())
        .args(["-q", "serve"])
        .args(args)
        .arg("--state")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let proc = Proc(child);
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("serve printed no address within 20 s");
    let addr = line
        .trim()
        .strip_prefix("coordinator on ")
        .expect("address line")
        .to_owned();
    (proc, addr)
}

/// (width, height, distinct colours) of a PNG.
pub fn png_stats(path: &Path) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    (info.width, info.height, colours.len())
}

/// The Python with DuckDB, Polars and NumPy (`LINESWEEP_PYTHON`, default `python3`).
pub fn python() -> Command {
    Command::new(std::env::var("LINESWEEP_PYTHON").unwrap_or_else(|_| "python3".into()))
}

/// The first value of one DuckDB query, as text (panics with Python's error otherwise).
pub fn duckdb_value(sql: &str) -> String {
    let mut cmd = python();
    cmd.args([
        "-c",
        "import duckdb, sys; print(duckdb.connect().execute(sys.argv[1]).fetchone()[0])",
        sql,
    ]);
    let o = run_with_deadline(cmd, Duration::from_secs(60));
    assert!(o.status.success(), "{sql}: {}", text(&o.stderr));
    text(&o.stdout).trim().to_owned()
}

/// `tests/python/check_sweep.py` over the results location `root`: exactly `shards` runs of
/// `sweep` and no duplicate row in any table (lines of `points` α each). Returns its report.
pub fn check_sweep(root: &Path, sweep: &str, shards: usize, points: usize) -> String {
    check_sweep_with_pairs(root, sweep, shards, points, 0)
}

/// [`check_sweep`] of a sweep that also has `pairs` pair shards: their `pairs` rows, once each,
/// read with DuckDB and Polars.
pub fn check_sweep_with_pairs(
    root: &Path,
    sweep: &str,
    shards: usize,
    points: usize,
    pairs: usize,
) -> String {
    let mut cmd = python();
    cmd.arg(repo().join("tests/python/check_sweep.py"))
        .arg(root)
        .args([sweep, &shards.to_string(), &points.to_string()])
        .arg(pairs.to_string());
    let out = run_with_deadline(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "result check failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A tiny 8-shard sweep spec, `NAME.toml` in `dir`: optimizer × lr × 2 seeds of a 32-unit
/// MLP, a second or so per shard; `extra` goes into its `[data]` table.
pub fn tiny_grid_spec(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
name = "{name}"

[grid]
optimizer = ["sgd", "adam"]
lr = [0.01, 0.001]
seed = [0, 1]

[model]
hidden = [32]

[data]
max_train_examples = 1000
{extra}

[train]
epochs = 1

[eval]
max_examples = 200
"#
        ),
    )
    .unwrap();
    path
}
