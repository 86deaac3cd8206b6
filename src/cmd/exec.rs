//! `linesweep exec`: one shard in this process, no coordinator; and, with the hidden staged
//! flags, the child process a worker runs for each leased shard.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use linesweep_worker::child::{ExitReason, ProgressLine};
use linesweep_worker::config::ShardConfig;
use linesweep_worker::engine::{EngineError, Phase, Progress};
use linesweep_worker::exec::{ExecError, Placement};
use linesweep_worker::storage::Storage;
use linesweep_worker::storage::ids::{Attempt, SweepName};
use linesweep_worker::{device, exec};

use crate::cli::ExecArgs;
use crate::progress::Bars;
use crate::render;

/// The run stopped on request (SIGTERM/SIGINT under a worker); `main` exits with
/// [`ExitReason::Interrupted`]'s code.
#[derive(Debug, thiserror::Error)]
#[error("interrupted at step {0}; the lease is released")]
pub struct Interrupted(pub u64);

/// A failed `exec` with its [`ExitReason`]: `main` exits with the reason's code, which is how
/// a worker agent tells a full disk from an invalid config. It prints as the whole chain of
/// causes of the error inside, and has no source of its own.
#[derive(Debug)]
pub struct Failed {
    /// Why, in the child protocol's terms.
    pub reason: ExitReason,
    error: anyhow::Error,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&super::error_line(&self.error))
    }
}

impl std::error::Error for Failed {}

/// Tags an error with its exit reason.
fn because<E: Into<anyhow::Error>>(reason: ExitReason) -> impl FnOnce(E) -> anyhow::Error {
    move |e| {
        Failed {
            reason,
            error: e.into(),
        }
        .into()
    }
}

pub fn run(args: ExecArgs) -> anyhow::Result<()> {
    let invalid = because::<anyhow::Error>(ExitReason::Deterministic);
    let (cfg, source) = load(&args).map_err(invalid)?;
    if let Some(expected) = &args.expect_shard {
        let id = cfg.shard_id();
        if expected.as_str() != id.as_str() {
            return Err(because(ExitReason::Deterministic)(anyhow::anyhow!(
                "the config hashes to shard {id}, not {expected}: the worker and the submitting linesweep disagree on the config format (upgrade both to the same version)"
            )));
        }
    }
    // The edge where `exec`'s strings become ids (bad ones are deterministic failures).
    let sweep =
        SweepName::parse(args.sweep.as_str()).map_err(because(ExitReason::Deterministic))?;
    let attempt = args
        .attempt
        .map(Attempt::new)
        .transpose()
        .map_err(because(ExitReason::Deterministic))?;
    // A device this machine lacks is the machine's problem: another worker may have it.
    let device = device::parse(&args.device).map_err(because(ExitReason::Infrastructure))?;
    let storage =
        Storage::open(&args.out).map_err(|e| because(ExitReason::of_storage_error(&e))(e))?;
    let placement = match attempt {
        Some(attempt) => Placement::Staged { attempt },
        None => Placement::Direct,
    };
    let (jsonl, bars);
    let progress: &dyn Progress = if args.progress_jsonl {
        watch_parent();
        jsonl = JsonLines::new();
        &jsonl
    } else {
        bars = Bars::default();
        &bars
    };
    let result = exec::run(
        &cfg,
        &device,
        &storage,
        &sweep,
        placement,
        args.checkpoint_every,
        progress,
    );
    let report = match result {
        Err(ExecError::Engine(EngineError::Interrupted { step })) => {
            return Err(Interrupted(step).into());
        }
        Err(e) => {
            let reason = ExitReason::of_exec_error(&e);
            let e = anyhow::Error::from(e).context(format!("shard from {source}"));
            return Err(because(reason)(e));
        }
        Ok(r) => r,
    };
    print_report(&args, &storage, &report)
}

/// The config and where it came from, validated like a config file.
fn load(args: &ExecArgs) -> anyhow::Result<(ShardConfig, String)> {
    Ok(match (&args.config, &args.config_json) {
        (Some(path), _) => (ShardConfig::from_file(path)?, path.display().to_string()),
        // The same rules as a config file: a bad value is an error here, not a panic in the
        // engine.
        (None, Some(json)) => (
            ShardConfig::from_json(json).map_err(|e| anyhow::anyhow!("--config-json: {e}"))?,
            "--config-json".to_owned(),
        ),
        (None, None) => anyhow::bail!("give --config FILE"),
    })
}

fn print_report(
    args: &ExecArgs,
    storage: &Storage,
    report: &exec::ExecReport,
) -> anyhow::Result<()> {
    if args.progress_jsonl {
        return Ok(());
    }
    if args.json {
        render::emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(&render::json(
                report.shard.as_str(),
                &args.sweep,
                &report.outcome
            ))?
        ))?;
    } else {
        render::emit(&render::summary(
            report.shard.as_str(),
            &args.sweep,
            storage.root(),
            &report.outcome,
        ))?;
    }
    Ok(())
}

/// A worker's child: when the agent dies its end of our stdin closes, and a shard nobody will
/// complete is not worth finishing (the lease expires and another attempt resumes it).
fn watch_parent() {
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                // The agent's async runtime may hand us a non-blocking pipe.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        tracing::warn!("the worker agent is gone; stopping");
        std::process::exit(ExitReason::AgentGone.code());
    });
}

/// Progress as JSON lines on stdout (at most ten a second), and SIGTERM/SIGINT as a request
/// to stop at the next step.
struct JsonLines {
    state: std::sync::Mutex<(ProgressLine, Instant)>,
    stop: Arc<AtomicBool>,
}

impl JsonLines {
    fn new() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
                tracing::warn!(error = %e, "cannot handle signals; a stop request will kill the shard");
            }
        }
        Self {
            state: std::sync::Mutex::new((
                ProgressLine {
                    phase: "start".into(),
                    done: 0,
                    total: 0,
                },
                Instant::now(),
            )),
            stop,
        }
    }

    fn print(line: &ProgressLine) {
        if let Ok(json) = serde_json::to_string(line) {
            let mut out = std::io::stdout().lock();
            // The agent reading this may be gone; the stdin watcher handles that.
            let _ = writeln!(out, "{json}");
            let _ = out.flush();
        }
    }
}

impl Progress for JsonLines {
    fn start(&self, phase: Phase, total: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 = ProgressLine {
            phase: match phase {
                Phase::Training => "train",
                Phase::Line => "line",
            }
            .into(),
            done: 0,
            total,
        };
        st.1 = Instant::now();
        Self::print(&st.0);
    }

    fn advance(&self, n: u64, _loss: Option<f64>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0.done += n;
        if st.1.elapsed().as_millis() >= 100 || st.0.done == st.0.total {
            st.1 = Instant::now();
            Self::print(&st.0);
        }
    }

    fn finish(&self) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Self::print(&st.0);
    }

    fn interrupted(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}
