//! `linesweep worker`: the agent against a remote coordinator.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use linesweep_worker::agent::{self, AgentConfig, NoEvents};
use linesweep_worker::config::Precision;
use linesweep_worker::{device, gate};

use super::remote::{runtime, shutdown_signal};
use crate::cli::WorkerArgs;
use crate::render::emit;

/// `host-pid`: unique per process, readable in `linesweep workers`.
pub(crate) fn default_name() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

fn seconds(what: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("{what} must be a number of seconds ≥ 0"))
}

/// The device gate of a worker (or of `run`'s local workers) on `device`.
pub(crate) fn gate_config(
    device: &str,
    args: &crate::cli::DeviceCheckArgs,
) -> anyhow::Result<gate::GateConfig> {
    if let Some(t) = args.check_tolerance {
        anyhow::ensure!(
            t.is_finite() && t >= 0.0,
            "--check-tolerance must be a finite number ≥ 0, not {t}"
        );
    }
    let precision = match &args.check_precision {
        Some(p) => super::check_device::precision(p).context("--check-precision")?,
        None => Precision::F32,
    };
    let program = std::env::current_exe().context("locating the linesweep binary")?;
    Ok(gate::GateConfig {
        precision,
        tolerance: args.check_tolerance,
        recheck: args.recheck_device,
        ..gate::GateConfig::new(program, device)
    })
}

/// Runs the device gate once, in this process's own runtime: `Ok` when the device may take
/// shards (or is the CPU), an error with the verdict when it may not.
pub(crate) fn check_once(device: &str, args: &crate::cli::DeviceCheckArgs) -> anyhow::Result<()> {
    let cfg = gate_config(device, args)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the device check")?;
    rt.block_on(gate::admit(&cfg)).map(drop).map_err(|why| {
        anyhow::anyhow!(
            "device check of {device}: {why}\nno shard runs on a device that computes what the \
             CPU does not (see `linesweep check-device --device {device}` for every difference)"
        )
    })
}

pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    // Fail here, not in every child, when the device is unknown or not compiled in.
    device::parse(&args.device)?;
    anyhow::ensure!(args.slots >= 1, "--slots must be at least 1");
    let cfg = AgentConfig {
        coordinator: args.client.coordinator.clone(),
        token: args.client.token.clone(),
        tls: args.client.tls(),
        name: args.name.clone().unwrap_or_else(default_name),
        device: args.device.clone(),
        slots: args.slots,
        program: std::env::current_exe().context("locating the linesweep binary")?,
        child_threads: None,
        idle_poll: seconds("--idle-poll", args.idle_poll)?,
        max_backoff: seconds("--max-backoff", args.max_backoff)?,
        exit_when_idle: args.exit_when_idle,
        stop_grace: Duration::from_secs(60),
        checkpoint_every: args.checkpoint_every,
        // A batch job (`--exit-when-idle`) ends rather than probe a broken machine; a
        // long-lived worker stays, probing at the longest backoff.
        stop_when_unhealthy: args.exit_when_idle,
        gate: Some(gate_config(&args.device, &args.check)?),
        idle_if_refused: args.idle_if_refused,
    };
    let report = runtime()?.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("stopping: running shards checkpoint and give their leases back");
            let _ = tx.send(true);
        });
        agent::run(cfg, Arc::new(NoEvents), rx).await
    })?;
    emit(&format!(
        "worker done: {} committed, {} failed, {} lost or cancelled, {} released, {} infrastructure failures\n",
        report.committed, report.failed, report.lost, report.preempted, report.infrastructure
    ))?;
    if let Some(reason) = report.unhealthy {
        anyhow::bail!(
            "this worker stopped after {} infrastructure failures in a row: {reason}",
            agent::UNHEALTHY_AFTER
        );
    }
    Ok(())
}
