//! The device gate: a worker whose device is not `flex` runs the device check
//! (`linesweep check-device`, [`crate::engine::parity`]) once before its first lease, and
//! takes no shard on a device that computes wrong.
//!
//! The verdict is cached beside the kernel tuning cache ([`crate::device::tune_cache_dir`]),
//! keyed by the binary's SHA-256, the device name and the adapter's identity (name, PCI ids,
//! driver version): a new build, another GPU or a driver update checks again; a restart on
//! the same machine does not.
//!
//! Why a child process: the agent never touches a device (its children do), so a driver that
//! crashes or hangs in the check takes down the check, not the worker, and a timeout can end
//! it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config::Precision;
use crate::device::{self, ComputeDevice};
use crate::engine::parity::Check;

/// How a device check ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    /// The device string, e.g. `vulkan:0`.
    pub device: String,
    /// The adapter and driver it ran on.
    pub adapter: String,
    /// SHA-256 of the binary that ran it.
    pub binary: String,
    /// Whether every check was within the tolerance.
    pub passed: bool,
    /// The tolerance the checks were held to.
    pub tolerance: f64,
    /// Checks run, and how many were beyond the tolerance.
    pub checks: usize,
    /// Checks beyond the tolerance.
    pub failures: usize,
    /// The largest differences, largest first (at most [`WORST`]).
    pub worst: Vec<Check>,
    /// How long the check took, in seconds.
    pub seconds: f64,
    /// When it ran (seconds since the Unix epoch).
    pub checked_at: u64,
}

/// How many of the largest differences a verdict keeps.
pub const WORST: usize = 3;

impl Verdict {
    /// One line for logs and `linesweep workers`: `passed: largest difference 3.1e-5 (mlp
    /// loss at step 2), 0 of 42 beyond 2e-2`.
    pub fn summary(&self) -> String {
        let worst = self.worst.first().map_or(String::new(), |w| {
            format!(
                "largest difference {:.2e} ({} {}), ",
                w.difference, w.case, w.what
            )
        });
        format!(
            "{}: {worst}{} of {} checks beyond {}",
            if self.passed { "passed" } else { "FAILED" },
            self.failures,
            self.checks,
            self.tolerance
        )
    }
}

/// The check could not give a verdict.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The device string names no usable device.
    #[error(transparent)]
    Device(#[from] device::DeviceError),
    /// The binary could not be read to hash it, or the check could not be started.
    #[error("the device check could not run: {0}")]
    Io(String),
    /// The check ran but printed no report (it crashed, or the device failed to start).
    #[error("the device check on {device} ended without a verdict ({status}): {stderr}")]
    NoReport {
        device: String,
        status: String,
        stderr: String,
    },
    /// The check ran past its time.
    #[error("the device check on {device} did not finish in {seconds} s")]
    Timeout { device: String, seconds: u64 },
}

/// How to run the gate.
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// The `linesweep` binary (its hash keys the verdict; it runs the check).
    pub program: PathBuf,
    /// The worker's device string.
    pub device: String,
    /// The arithmetic checked on the device (`f32`, `bf16`), against the f32 CPU: the
    /// precision its shards will use.
    pub precision: Precision,
    /// The check's tolerance (default: the precision's, see `parity::default_tolerance`).
    pub tolerance: Option<f64>,
    /// Ignore a cached verdict and check again.
    pub recheck: bool,
    /// Longest time the check may take.
    pub timeout: Duration,
    /// Where verdicts are cached (default: `device-checks/` in the tuning cache).
    pub cache: PathBuf,
}

impl GateConfig {
    /// The gate for `device`, run by `program`, with the default cache and timeout.
    pub fn new(program: PathBuf, device: &str) -> Self {
        Self {
            program,
            device: device.to_owned(),
            precision: Precision::F32,
            tolerance: None,
            recheck: false,
            timeout: Duration::from_secs(1800),
            cache: device::tune_cache_dir().join("device-checks"),
        }
    }
}

/// What the gate decided, and whether the verdict came from the cache.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The verdict.
    pub verdict: Verdict,
    /// Read from the cache (no check ran).
    pub cached: bool,
}

/// `None` for `flex` in f32 (the reference itself: nothing to check); otherwise the
/// verdict, from the cache or from a fresh check.
pub async fn check(cfg: &GateConfig) -> Result<Option<Gate>, GateError> {
    let target = device::parse(&cfg.device)?;
    if target.is_flex() && cfg.precision == Precision::F32 {
        return Ok(None);
    }
    let binary = hash_file(&cfg.program)
        .map_err(|e| GateError::Io(format!("reading {}: {e}", cfg.program.display())))?;
    let file = cfg
        .cache
        .join(format!("{}.json", cache_key(&binary, &target, cfg)));
    if !cfg.recheck
        && let Some(verdict) = read_cached(&file)
    {
        return Ok(Some(Gate {
            verdict,
            cached: true,
        }));
    }
    let verdict = run_check(cfg, &target, binary).await?;
    if let Err(e) = write_cached(&file, &verdict) {
        tracing::warn!(file = %file.display(), error = %e, "cannot cache the device check's verdict; the next start checks again");
    }
    Ok(Some(Gate {
        verdict,
        cached: false,
    }))
}

impl Gate {
    /// The verdict as `linesweep workers` and the logs show it: `passed: … (cached verdict;
    /// ADAPTER)`.
    pub fn line(&self) -> String {
        let v = &self.verdict;
        let from = if self.cached {
            "cached verdict".to_owned()
        } else {
            format!("checked in {:.1} s", v.seconds)
        };
        format!("{} ({from}; {})", v.summary(), v.adapter)
    }
}

/// Runs the gate and decides: `Ok` with the verdict's line (empty for the unchecked CPU)
/// when the device may take shards, `Err` with the reason when it may not. Logs either way.
pub async fn admit(cfg: &GateConfig) -> Result<String, String> {
    match check(cfg).await {
        Ok(None) => Ok(String::new()),
        Ok(Some(g)) if g.verdict.passed => {
            tracing::info!(device = %g.verdict.device, verdict = %g.line(), "device check");
            Ok(g.line())
        }
        Ok(Some(g)) => {
            tracing::error!(device = %g.verdict.device, verdict = %g.line(), worst = ?g.verdict.worst, "device check failed: this device computes what the CPU does not");
            Err(g.line())
        }
        Err(e) => {
            tracing::error!(error = %e, "device check");
            Err(e.to_string())
        }
    }
}

/// SHA-256 of a file, streamed.
fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

/// What a verdict depends on: the binary, the device, its adapter and driver, the precision
/// and the tolerance.
fn cache_key(binary: &str, target: &ComputeDevice, cfg: &GateConfig) -> String {
    let mut h = Sha256::new();
    for part in [
        binary,
        &target.name,
        &target.adapter,
        &format!("{} {:?}", cfg.precision.as_str(), cfg.tolerance),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!("{:x}", h.finalize())[..32].to_owned()
}

/// A cached verdict, if one is there and reads back; anything else checks again.
fn read_cached(file: &Path) -> Option<Verdict> {
    let bytes = std::fs::read(file).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "ignoring an unreadable cached device verdict");
            None
        }
    }
}

/// Writes through a temporary file and a rename, so that a reader never sees half a verdict.
fn write_cached(file: &Path, verdict: &Verdict) -> std::io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&tmp, verdict)?;
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

/// What `check-device --json` prints that the verdict needs.
#[derive(serde::Deserialize)]
struct Printed {
    tolerance: f64,
    checks: Vec<Check>,
}

/// Runs `program check-device --json` on the device, in a child, within the timeout.
async fn run_check(
    cfg: &GateConfig,
    target: &ComputeDevice,
    binary: String,
) -> Result<Verdict, GateError> {
    let mut cmd = tokio::process::Command::new(&cfg.program);
    cmd.args(["check-device", "--json", "--device", &cfg.device]);
    cmd.args(["--reference-precision", "f32"]);
    cmd.args(["--precision", cfg.precision.as_str()]);
    if let Some(t) = cfg.tolerance {
        cmd.arg(format!("--tolerance={t}"));
    }
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    tracing::info!(device = %cfg.device, adapter = %target.adapter, "checking the device against the CPU before taking shards");
    let started = Instant::now();
    let out = match tokio::time::timeout(cfg.timeout, cmd.output()).await {
        Err(_) => {
            return Err(GateError::Timeout {
                device: cfg.device.clone(),
                seconds: cfg.timeout.as_secs(),
            });
        }
        Ok(r) => r.map_err(|e| GateError::Io(format!("{}: {e}", cfg.program.display())))?,
    };
    let seconds = started.elapsed().as_secs_f64();
    let Ok(printed) = serde_json::from_slice::<Printed>(&out.stdout) else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(GateError::NoReport {
            device: cfg.device.clone(),
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    };
    Ok(verdict(cfg, target, binary, printed, seconds))
}

fn verdict(
    cfg: &GateConfig,
    target: &ComputeDevice,
    binary: String,
    printed: Printed,
    seconds: f64,
) -> Verdict {
    let failures = printed.checks.iter().filter(|c| !c.ok).count();
    let mut worst = printed.checks.clone();
    worst.sort_by(|a, b| b.difference.total_cmp(&a.difference));
    worst.truncate(WORST);
    Verdict {
        device: cfg.device.clone(),
        adapter: target.adapter.clone(),
        binary,
        // An empty report checked nothing: that is no pass.
        passed: failures == 0 && !printed.checks.is_empty(),
        tolerance: printed.tolerance,
        checks: printed.checks.len(),
        failures,
        worst,
        seconds,
        checked_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(what: &str, difference: f64, ok: bool) -> Check {
        Check {
            case: "mlp".into(),
            what: what.into(),
            reference: 1.0,
            difference,
            ok,
        }
    }

    #[test]
    fn a_verdict_keeps_the_worst_and_fails_on_any_failure_or_nothing() {
        let cfg = GateConfig::new("linesweep".into(), "vulkan:0");
        let target = ComputeDevice::cpu();
        let printed = Printed {
            tolerance: 0.02,
            checks: vec![
                check("a", 1e-5, true),
                check("b", 0.5, false),
                check("c", 1e-3, true),
                check("d", 1e-7, true),
            ],
        };
        let v = verdict(&cfg, &target, "h".into(), printed, 1.0);
        assert!(!v.passed);
        assert_eq!((v.checks, v.failures), (4, 1));
        let names: Vec<&str> = v.worst.iter().map(|c| c.what.as_str()).collect();
        assert_eq!(names, ["b", "c", "a"]);
        assert!(
            v.summary()
                .starts_with("FAILED: largest difference 5.00e-1 (mlp b), 1 of 4")
        );
        let empty = Printed {
            tolerance: 0.02,
            checks: vec![],
        };
        assert!(!verdict(&cfg, &target, "h".into(), empty, 1.0).passed);
    }

    #[test]
    fn the_key_changes_with_binary_adapter_and_tolerance() {
        let mut a = ComputeDevice::cpu();
        a.name = "vulkan:0".into();
        let cfg = GateConfig::new("linesweep".into(), "vulkan:0");
        let k = cache_key("bin", &a, &cfg);
        assert_ne!(k, cache_key("bin2", &a, &cfg));
        let tight = GateConfig {
            tolerance: Some(1e-3),
            ..cfg.clone()
        };
        assert_ne!(k, cache_key("bin", &a, &tight));
        let bf16 = GateConfig {
            precision: Precision::Bf16,
            ..cfg.clone()
        };
        assert_ne!(k, cache_key("bin", &a, &bf16));
        let mut b = a.clone();
        b.adapter = "NVIDIA H100 driver 560".into();
        assert_ne!(k, cache_key("bin", &b, &cfg));
        assert_eq!(k, cache_key("bin", &a, &cfg));
    }

    #[test]
    fn verdicts_round_trip_and_junk_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub").join("k.json");
        let cfg = GateConfig::new("linesweep".into(), "vulkan:0");
        let printed = Printed {
            tolerance: 0.02,
            checks: vec![check("a", 1e-5, true)],
        };
        let v = verdict(&cfg, &ComputeDevice::cpu(), "h".into(), printed, 2.0);
        write_cached(&file, &v).unwrap();
        assert_eq!(read_cached(&file), Some(v));
        std::fs::write(&file, b"{ half").unwrap();
        assert_eq!(read_cached(&file), None);
    }
}
