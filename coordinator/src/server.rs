//! Serving: the bearer-token check, the health service, the lease reaper with publish
//! roll-forward, and `serve` on a bound listener.

use std::future::Future;
use std::time::Duration;

use linesweep_proto::pb::control_service_server::ControlServiceServer;
use linesweep_proto::pb::worker_service_server::WorkerServiceServer;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tonic::{Request, Status};

use crate::ledger::Ledger;
use crate::service::{Clock, Coordinator, ShardCheck, SummaryPolicy};

/// What `serve` needs besides the ledger; durations come from here, never from `cfg!(test)`.
#[derive(Clone)]
pub struct ServeConfig {
    /// Bearer token every RPC must carry; `None` disables the check (loopback-only use).
    pub token: Option<String>,
    /// How often expired leases are returned to pending.
    pub reaper_interval: Duration,
    /// The clock.
    pub clock: Clock,
    /// Storage root for sweeps submitted without `[storage] results` (empty: none).
    pub default_results: String,
    /// Checks each submitted shard (id, canonical config JSON) with the planner's rules; the
    /// coordinator cannot itself, since shard configs are opaque to it. `None`: accept any.
    pub check_shard: Option<ShardCheck>,
    /// Take over the results locations of sweeps that another ledger owned (a ledger rebuilt
    /// with `--recover`); otherwise a submission into another ledger's location is refused.
    pub take_over: bool,
    /// Serve TLS with this certificate (`linesweep_proto::tls::server_config`); `None`: plain
    /// text (loopback, or behind a TLS-terminating proxy).
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// When per-sweep summary files are rewritten ([`SummaryPolicy::OFF`]: never).
    pub summaries: SummaryPolicy,
    /// Connections served at once (lowered to what the descriptor limit allows with headroom
    /// for storage I/O: [`crate::limits::connection_cap`]).
    pub max_connections: usize,
}

/// How long shutdown waits for open calls to end (a `watch` stream never does by itself) and
/// idle connections to close, before it closes them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Checks `authorization: Bearer <token>` in constant time. Never logs the token.
pub fn check_token(expected: Option<&str>, req: &Request<()>) -> Result<(), Status> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let given = req
        .metadata()
        .get(linesweep_proto::client::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(Status::unauthenticated(
            "missing or wrong bearer token (--token or LINESWEEP_TOKEN)",
        ))
    }
}

/// After a stall of the coordinator's own loop longer than a heartbeat interval (and than a
/// second, so that a busy machine's late timer is not taken for one: SIGSTOP, a paused VM, a
/// starved process), workers' heartbeats are queued unread: expiring leases now would throw
/// away healthy work. Every live lease first gets a fresh TTL, as after a restart.
async fn stall_grace(c: &Coordinator, stall: Duration, ttl: Duration) {
    if stall <= (ttl / 6).max(Duration::from_secs(1)) {
        return;
    }
    match c.with_ledger(|l, now| l.restart_grace(now)).await {
        Ok(Ok(n)) => tracing::warn!(
            stalled_s = stall.as_secs_f64(),
            leases = n,
            "the coordinator was stalled; live leases get a fresh TTL before any expires"
        ),
        Ok(Err(e)) => tracing::error!(error = %e, "stall grace failed"),
        Err(e) => tracing::error!(error = e.message(), "stall grace failed"),
    }
}

/// The listener's connections under the cap, after raising the descriptor limit.
fn limited_incoming(
    listener: TcpListener,
    max: usize,
) -> impl tokio_stream::Stream<Item = std::io::Result<crate::limits::Limited>> + Send + 'static {
    let descriptors = match crate::limits::raise_descriptor_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit; assuming 1024");
            1024
        }
    };
    let cap = crate::limits::connection_cap(max, descriptors);
    tracing::info!(
        connections = cap,
        open_files = descriptors,
        "serving at most this many connections at once"
    );
    crate::limits::incoming(listener, cap, crate::limits::HANDSHAKE_TIMEOUT)
}

/// Resolves [`SHUTDOWN_GRACE`] after `closing` turns true (never, if it never does).
async fn grace_after(mut closing: tokio::sync::watch::Receiver<bool>) {
    if closing.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(SHUTDOWN_GRACE).await;
}

/// Serves both services (and `grpc.health.v1`, without a token, for probes) on `listener`
/// until `shutdown` resolves. On start every live lease gets one fresh TTL (restart grace) and
/// interrupted publishes are finished; a reaper then expires leases on its own timer.
pub async fn serve(
    listener: TcpListener,
    mut ledger: Ledger,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let graced = ledger.restart_grace((config.clock)())?;
    let ttl = Duration::from_millis(ledger.policy().ttl_ms.max(1) as u64);
    if graced > 0 {
        tracing::info!(
            leases = graced,
            "restart grace: live leases extended by one TTL"
        );
    }
    let coordinator = Coordinator::new(ledger, config.clock.clone(), config.default_results)
        .with_shard_check(config.check_shard)
        .with_take_over(config.take_over)
        .with_summaries(config.summaries);
    coordinator.roll_forward().await;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let reaper = {
        let c = coordinator.clone();
        let interval = config.reaper_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            let mut last = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let gap = std::mem::replace(&mut last, tokio::time::Instant::now()).elapsed();
                        stall_grace(&c, gap.saturating_sub(interval), ttl).await;
                        match c.with_ledger(|l, now| l.expire_leases(now)).await {
                            Ok(Ok(expired)) => for (sweep, shard, attempt) in expired {
                                tracing::warn!(%sweep, %shard, %attempt, "lease expired; the shard is pending again");
                            },
                            Ok(Err(e)) => tracing::error!(error = %e, "lease reaper failed"),
                            Err(e) => tracing::error!(error = e.message(), "lease reaper failed"),
                        }
                        c.roll_forward().await;
                        c.tick_summaries().await;
                    }
                    _ = stop_rx.changed() => break,
                }
            }
        })
    };
    let flusher = coordinator.clone();
    let token = config.token.clone();
    let t1 = token.clone();
    let worker =
        WorkerServiceServer::with_interceptor(coordinator.clone(), move |r: Request<()>| {
            check_token(t1.as_deref(), &r).map(|()| r)
        });
    let stopped = {
        let c = coordinator.clone();
        async move { c.stopped().await }
    };
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<String>();
    let shutdown = async move {
        tokio::select! {
            _ = shutdown => {}
            why = stopped => { let _ = fatal_tx.send(why); }
        }
    };
    let control = ControlServiceServer::with_interceptor(coordinator, move |r: Request<()>| {
        check_token(token.as_deref(), &r).map(|()| r)
    });
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<WorkerServiceServer<Coordinator>>()
        .await;
    health
        .set_serving::<ControlServiceServer<Coordinator>>()
        .await;
    let incoming = limited_incoming(listener, config.max_connections);
    let mut builder = tonic::transport::Server::builder()
        // Idle connections are pinged; one whose peer stopped answering is closed.
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = config.tls {
        builder = builder.tls_config(tls.timeout(crate::limits::HANDSHAKE_TIMEOUT))?;
    }
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = closing_tx.send(true);
    };
    let serving = builder
        .add_service(health_service)
        .add_service(worker)
        .add_service(control)
        .serve_with_incoming_shutdown(incoming, shutdown);
    let result = tokio::select! {
        r = serving => r,
        () = grace_after(closing) => {
            tracing::warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "calls or connections were still open after the grace period; closing them");
            Ok(())
        }
    };
    let _ = stop_tx.send(true);
    let _ = reaper.await;
    // What committed since the last rewrite reaches the summaries before the process ends.
    flusher.flush_summaries(Duration::from_secs(30)).await;
    result?;
    match fatal_rx.await {
        Ok(why) => Err(format!("the ledger cannot commit ({why}); the coordinator stopped. Nothing acknowledged was lost: free space or fix the disk, then start it again").into()),
        Err(_) => Ok(()),
    }
}
