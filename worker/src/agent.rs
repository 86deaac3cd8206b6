//! The worker agent: lease a shard, run it in a child process, keep the lease alive, complete.
//!
//! Each shard runs in its own child process (`linesweep exec` in staged mode) because burn's
//! random generator is process-global: two shards in one process would not be reproducible.
//! The child writes its snapshots and results under the attempt's staging prefix and prints
//! progress as JSON lines ([`ProgressLine`]) on stdout; the agent, not the training loop,
//! sends heartbeats with that progress. On exit 0 the agent asks the coordinator to publish
//! and commit; on a lost lease or a cancel it stops the child and discards the attempt.
//!
//! **Architecture invariant:** the agent never trains and never writes results itself; it owns
//! leases, child processes, heartbeats and retries.
//!
//! Faults: an unreachable coordinator means retrying with exponential backoff and a log line
//! per failure streak; staged output is kept, so nothing finished is lost. A child that sees
//! its stdin close (the agent died) exits at once. SIGTERM to the agent is passed on to the
//! children, which checkpoint and exit with [`ExitReason::Interrupted`]; the lease is then
//! released as preempted.
//!
//! How a child ended is read once, as an [`ExitReason`] (`child.rs` owns the protocol): an
//! infrastructure failure (storage I/O, a full disk, the OOM killer) gives the shard back with
//! its budget untouched and backs this worker off; after [`UNHEALTHY_AFTER`] in a row the
//! worker is unhealthy: it tells the coordinator, and takes shards again only to probe, at
//! the longest backoff (or stops, with `stop_when_unhealthy`).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::child::ProgressLine;
use crate::child::{ChildArgs, ExitReason};
use crate::storage::ids::{LeaseToken, ShardId};
use linesweep_proto::PROTOCOL_VERSION;
use linesweep_proto::client::Credentials;
use linesweep_proto::pb::{self, LeaseVerdict, worker_service_client::WorkerServiceClient};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The coordinator URL is unusable.
    #[error("bad coordinator URL `{url}`: {message}")]
    Url { url: String, message: String },
    /// The coordinator refused the worker (token, version).
    #[error("the coordinator refused this worker: {0}")]
    Refused(String),
    /// The coordinator's TLS certificate is not trusted (wrong CA, expired, another name).
    #[error("this worker cannot trust the coordinator: {0}")]
    Untrusted(String),
    /// The device computes what the CPU does not (or the check could not run): no shard may
    /// run on it.
    #[error("this worker's device is refused, and it takes no shards: {0}")]
    DeviceRefused(String),
}

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Coordinator URL, e.g. `http://head:50051`.
    pub coordinator: String,
    /// Bearer token.
    pub token: Option<String>,
    /// How an `https://` coordinator's certificate is trusted.
    pub tls: linesweep_proto::tls::ClientTls,
    /// Worker name (unique per process).
    pub name: String,
    /// Device string passed to the children (`cpu`, `wgpu:0`, …).
    pub device: String,
    /// Shards run at once.
    pub slots: usize,
    /// The `linesweep` binary the children run.
    pub program: PathBuf,
    /// `RAYON_NUM_THREADS` for each child (`None`: the machine's default).
    pub child_threads: Option<usize>,
    /// Wait between lease polls when nothing is pending.
    pub idle_poll: Duration,
    /// Longest wait between retries when the coordinator is unreachable.
    pub max_backoff: Duration,
    /// Stop once no shard is pending (the embedded mode and batch jobs).
    pub exit_when_idle: bool,
    /// How long a stopping child may take to checkpoint before it is killed.
    pub stop_grace: Duration,
    /// Optimizer steps between checkpoints in the children (0: never).
    pub checkpoint_every: u64,
    /// Stop (instead of probing at the longest backoff) once unhealthy: the embedded mode,
    /// where no other worker could take over.
    pub stop_when_unhealthy: bool,
    /// The device check to pass before the first lease (`None`: checked by the caller, as
    /// `run` does once for all its local workers).
    pub gate: Option<crate::gate::GateConfig>,
    /// On a refused device, stay registered (shown as unhealthy in `linesweep workers`)
    /// without leasing, instead of exiting with [`AgentError::DeviceRefused`].
    pub idle_if_refused: bool,
}

/// Infrastructure failures in a row after which a worker is unhealthy.
pub const UNHEALTHY_AFTER: u32 = 3;

/// How one attempt ended, as the agent saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Published and committed.
    Committed,
    /// The child failed; the error was reported.
    Failed(String),
    /// The machine failed, not the shard (storage, disk full, OOM kill); the shard is pending
    /// again with its budget untouched.
    Infrastructure(String),
    /// The lease was lost (expired and re-leased, or fenced); nothing was committed.
    LeaseLost,
    /// The shard was cancelled by a user.
    Cancelled,
    /// The agent was stopped; the lease was released as preempted.
    Preempted,
}

/// What the agent reports while it runs (progress bars, logs).
pub trait AgentEvents: Send + Sync {
    /// Slot `slot` started the attempt of `token`.
    fn started(&self, _slot: usize, _token: &LeaseToken) {}
    /// Progress of the shard on `slot`.
    fn progress(&self, _slot: usize, _line: &ProgressLine) {}
    /// The shard on `slot` ended.
    fn finished(&self, _slot: usize, _shard: &ShardId, _outcome: &Outcome) {}
}

/// Events that go nowhere (the log lines are enough).
pub struct NoEvents;
impl AgentEvents for NoEvents {}

/// Attempts per outcome, for the caller's summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentReport {
    /// Attempts committed.
    pub committed: usize,
    /// Attempts that failed.
    pub failed: usize,
    /// Attempts that lost their lease or were cancelled.
    pub lost: usize,
    /// Attempts released on stop.
    pub preempted: usize,
    /// Attempts that hit an infrastructure failure.
    pub infrastructure: usize,
    /// Set when the agent stopped because it was unhealthy: the last failure's message.
    pub unhealthy: Option<String>,
}

/// Infrastructure failures in a row, shared by the slots of one agent (they share a machine).
#[derive(Default)]
struct Health {
    streak: u32,
    last_error: String,
}

#[derive(Clone)]
struct Client {
    url: String,
    inner: WorkerServiceClient<Channel>,
    credentials: Credentials,
    max_backoff: Duration,
}

/// Transient: the coordinator may answer next time. A refused TLS certificate arrives as
/// Unavailable too, but stays refused.
fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    ) && !linesweep_proto::tls::is_certificate_error(s)
}

impl Client {
    fn request<T>(&self, msg: T) -> Request<T> {
        self.credentials.request(msg, Duration::from_secs(30))
    }

    /// Calls `f` until it succeeds, fails with a non-transient status, or `stop` fires (then
    /// `None`). Logs once per failure streak, then at each backoff doubling.
    async fn retry<T, Fut>(
        &self,
        what: &str,
        stop: &mut watch::Receiver<bool>,
        mut f: impl FnMut(WorkerServiceClient<Channel>) -> Fut,
    ) -> Option<Result<T, Status>>
    where
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0u32;
        loop {
            // The call itself races `stop` too: a coordinator that accepts and never answers
            // must not keep a stopping worker (SIGTERM) waiting out a deadline.
            let call = tokio::select! {
                r = f(self.inner.clone()) => r,
                _ = stop.changed() => return None,
            };
            match call {
                Ok(r) => {
                    if failures > 0 {
                        tracing::info!(what, "coordinator reachable again");
                    }
                    return Some(Ok(r.into_inner()));
                }
                Err(s) if retryable(&s) => {
                    failures += 1;
                    tracing::warn!(
                        what,
                        error = linesweep_proto::tls::explain(&self.url, &s),
                        retry_in_ms = backoff.as_millis() as u64,
                        "coordinator unreachable; retrying (staged work is kept)"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return None,
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
                Err(s) => return Some(Err(s)),
            }
        }
    }
}

/// Runs the agent until `stop` becomes true (or, with `exit_when_idle`, until nothing is
/// pending). Returns how its attempts ended.
pub async fn run(
    cfg: AgentConfig,
    events: Arc<dyn AgentEvents>,
    stop: watch::Receiver<bool>,
) -> Result<AgentReport, AgentError> {
    let channel = linesweep_proto::tls::endpoint(
        &cfg.coordinator,
        &cfg.tls,
        linesweep_proto::tls::CONNECT_TIMEOUT,
    )
    .map_err(|e| AgentError::Url {
        url: cfg.coordinator.clone(),
        message: e.to_string(),
    })?
    .connect_lazy();
    let credentials =
        Credentials::new(cfg.token.as_deref()).map_err(|e| AgentError::Refused(e.to_string()))?;
    let client = Client {
        url: cfg.coordinator.clone(),
        inner: WorkerServiceClient::new(channel),
        credentials,
        max_backoff: cfg.max_backoff,
    };
    let mut stop_rx = stop.clone();
    let (device_check, refused) = match &cfg.gate {
        None => (String::new(), None),
        Some(gate) => match crate::gate::admit(gate).await {
            Ok(summary) => (summary, None),
            Err(why) if cfg.idle_if_refused => (why.clone(), Some(why)),
            Err(why) => return Err(AgentError::DeviceRefused(why)),
        },
    };
    let reg = pb::RegisterRequest {
        protocol_version: PROTOCOL_VERSION,
        worker: cfg.name.clone(),
        device: cfg.device.clone(),
        slots: cfg.slots as u32,
        unhealthy: refused
            .as_ref()
            .map_or(String::new(), |why| format!("device refused: {why}")),
        device_check,
    };
    let heartbeat = match client
        .retry("register", &mut stop_rx, |mut c| {
            let r = client.request(reg.clone());
            async move { c.register(r).await }
        })
        .await
    {
        None => return Ok(AgentReport::default()),
        // A certificate this worker does not trust stays untrusted (`retry` does not retry it).
        Some(Err(s)) if linesweep_proto::tls::is_certificate_error(&s) => {
            let why = linesweep_proto::tls::explain(&client.url, &s);
            return Err(AgentError::Untrusted(why));
        }
        Some(Err(s)) => return Err(AgentError::Refused(s.message().to_owned())),
        Some(Ok(r)) => Duration::from_millis(r.heartbeat_interval_ms.max(50)),
    };
    if refused.is_some() {
        stay_refused(&client, &reg, heartbeat, stop).await;
        return Ok(AgentReport::default());
    }
    tracing::info!(worker = %cfg.name, device = %cfg.device, slots = cfg.slots, coordinator = %cfg.coordinator, "worker ready");

    let shared = Arc::new(Shared {
        report: Mutex::default(),
        health: Mutex::default(),
        register: reg,
    });
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..cfg.slots.max(1) {
        let slot_cfg = cfg.clone();
        let (client, events, stop, shared) =
            (client.clone(), events.clone(), stop.clone(), shared.clone());
        slots.spawn(async move {
            run_slot(slot, &slot_cfg, &client, heartbeat, events, stop, &shared).await
        });
    }
    while slots.join_next().await.is_some() {}
    Ok(lock(&shared.report).clone())
}

/// A refused worker stays listed (registering again every few heartbeats, so that
/// `linesweep workers` shows why) and never leases, until it is stopped.
async fn stay_refused(
    client: &Client,
    reg: &pb::RegisterRequest,
    heartbeat: Duration,
    mut stop: watch::Receiver<bool>,
) {
    tracing::warn!(reason = %reg.unhealthy, "staying up without taking shards (--idle-if-refused)");
    loop {
        if *stop.borrow() {
            return;
        }
        let mut c = client.inner.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            c.register(client.request(reg.clone())),
        )
        .await;
        tokio::select! {
            _ = tokio::time::sleep(heartbeat * 2) => {}
            _ = stop.changed() => {}
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the slots of one agent share.
struct Shared {
    report: Mutex<AgentReport>,
    health: Mutex<Health>,
    /// How this worker registers (sent again when its health changes).
    register: pb::RegisterRequest,
}

/// What a slot does after an attempt.
enum Next {
    /// Lease again at once.
    Lease,
    /// Lease again after this pause (an infrastructure failure's backoff).
    Pause(Duration),
    /// Stop: the worker is unhealthy and `stop_when_unhealthy` is set.
    Stop,
}

impl Shared {
    /// Counts the outcome, tracks the worker's health (telling the coordinator when it
    /// changes), and says what the slot does next.
    async fn after(&self, outcome: &Outcome, cfg: &AgentConfig, client: &Client) -> Next {
        {
            let mut r = lock(&self.report);
            match outcome {
                Outcome::Committed => r.committed += 1,
                Outcome::Failed(_) => r.failed += 1,
                Outcome::Infrastructure(_) => r.infrastructure += 1,
                Outcome::LeaseLost | Outcome::Cancelled => r.lost += 1,
                Outcome::Preempted => r.preempted += 1,
            }
        }
        let (streak, changed) = {
            let mut h = lock(&self.health);
            let was_unhealthy = h.streak >= UNHEALTHY_AFTER;
            match outcome {
                Outcome::Infrastructure(e) => {
                    h.streak += 1;
                    h.last_error.clone_from(e);
                }
                // The machine ran a shard to an end of its own: it works.
                Outcome::Committed | Outcome::Failed(_) => h.streak = 0,
                _ => {}
            }
            let unhealthy = h.streak >= UNHEALTHY_AFTER;
            let reason = unhealthy.then(|| h.last_error.clone());
            (h.streak, (was_unhealthy != unhealthy).then_some(reason))
        };
        if let Some(reason) = changed {
            self.announce(client, reason.as_deref()).await;
        }
        if streak == 0 || !matches!(outcome, Outcome::Infrastructure(_)) {
            return Next::Lease;
        }
        if streak >= UNHEALTHY_AFTER {
            if cfg.stop_when_unhealthy {
                lock(&self.report).unhealthy = Some(lock(&self.health).last_error.clone());
                return Next::Stop;
            }
            return Next::Pause(cfg.max_backoff);
        }
        Next::Pause((Duration::from_secs(1) * (1 << (streak - 1))).min(cfg.max_backoff))
    }

    /// Registers again with the worker's health (`None`: healthy). Best effort: the
    /// registry is advisory.
    async fn announce(&self, client: &Client, unhealthy: Option<&str>) {
        match unhealthy {
            Some(e) => tracing::error!(
                failures = UNHEALTHY_AFTER,
                last_error = e,
                "this worker is unhealthy: infrastructure failures in a row (storage, disk, memory); shards go to other workers"
            ),
            None => tracing::info!("this worker is healthy again"),
        }
        let req = pb::RegisterRequest {
            unhealthy: unhealthy.unwrap_or_default().to_owned(),
            ..self.register.clone()
        };
        let mut c = client.inner.clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.register(client.request(req))).await;
    }
}

async fn run_slot(
    slot: usize,
    cfg: &AgentConfig,
    client: &Client,
    heartbeat: Duration,
    events: Arc<dyn AgentEvents>,
    mut stop: watch::Receiver<bool>,
    shared: &Shared,
) {
    let worker = if cfg.slots > 1 {
        format!("{}/{slot}", cfg.name)
    } else {
        cfg.name.clone()
    };
    let mut said_waiting = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let req = pb::LeaseRequest {
            protocol_version: PROTOCOL_VERSION,
            worker: worker.clone(),
        };
        let granted = match client
            .retry("lease", &mut stop, |mut c| {
                let r = client.request(req.clone());
                async move { c.lease(r).await }
            })
            .await
        {
            None => return,
            Some(Err(s)) => {
                tracing::error!(
                    error = s.message(),
                    "the coordinator refused a lease request"
                );
                return;
            }
            Some(Ok(r)) => (r.granted, r.waiting),
        };
        let (granted, waiting) = granted;
        let Some(granted) = granted else {
            // Shards waiting for others, or leases held elsewhere that may expire or fail,
            // can still become pending: not idle yet.
            if cfg.exit_when_idle && !waiting {
                return;
            }
            if cfg.exit_when_idle && !said_waiting {
                tracing::info!(
                    "nothing to lease, but shards running elsewhere (or waiting for them) may still need a worker; polling"
                );
                said_waiting = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(cfg.idle_poll) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        let Some(wire) = granted.token.clone() else {
            tracing::error!("the coordinator granted a lease without a token");
            return;
        };
        let token = match LeaseToken::try_from(wire) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "the coordinator granted an invalid lease");
                return;
            }
        };
        events.started(slot, &token);
        let outcome = attempt(
            slot,
            cfg,
            client,
            heartbeat,
            events.clone(),
            stop.clone(),
            &granted,
            &token,
        )
        .await;
        events.finished(slot, &token.shard, &outcome);
        match shared.after(&outcome, cfg, client).await {
            Next::Lease => {}
            Next::Pause(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = stop.changed() => {}
                }
            }
            Next::Stop => return,
        }
    }
}

/// The last lines of a child's stderr, for error reports.
#[derive(Default)]
struct Tail(Mutex<std::collections::VecDeque<String>>);

impl Tail {
    fn push(&self, line: String) {
        let mut t = lock(&self.0);
        if t.len() == 20 {
            t.pop_front();
        }
        t.push_back(line);
    }

    /// The child's `error:` line if it printed one, else its last line.
    fn error(&self) -> Option<String> {
        let t = lock(&self.0);
        t.iter()
            .rev()
            .find(|l| l.starts_with("error:"))
            .or_else(|| t.back())
            .cloned()
    }
}

/// A line of a child's stderr in the agent's log: the child's warnings (a discarded
/// checkpoint, a skipped image) are the user's to see; its other lines only at debug.
fn relay_child_line(shard: &impl std::fmt::Display, line: &str) {
    if line.contains(" WARN ") || line.contains(" ERROR ") {
        tracing::warn!(%shard, "child: {line}");
    } else {
        tracing::debug!(%shard, "child: {line}");
    }
}

#[allow(clippy::too_many_arguments)]
async fn attempt(
    slot: usize,
    cfg: &AgentConfig,
    client: &Client,
    heartbeat: Duration,
    events: Arc<dyn AgentEvents>,
    mut stop: watch::Receiver<bool>,
    granted: &pb::Granted,
    token: &LeaseToken,
) -> Outcome {
    let (sweep, shard, attempt_no) = (&token.sweep, &token.shard, token.attempt.get());
    let argv = ChildArgs {
        config_json: granted.config_json.clone(),
        token: token.clone(),
        results: granted.results.clone(),
        device: cfg.device.clone(),
        checkpoint_every: cfg.checkpoint_every,
    }
    .argv();
    let mut cmd = tokio::process::Command::new(&cfg.program);
    cmd.args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // If the agent dies (kill -9, the OOM killer), the child is asked to stop as at a
    // preemption (SIGTERM: checkpoint, exit) instead of training on as an orphan whose results
    // nobody will complete. The stdin lifeline (`exec`'s watcher) covers other platforms.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    if let Some(n) = cfg.child_threads {
        cmd.env("RAYON_NUM_THREADS", n.to_string());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot start {}: {e}", cfg.program.display());
            return report_failure(client, token, ExitReason::Infrastructure, &msg, &mut stop)
                .await;
        }
    };
    tracing::info!(%sweep, %shard, attempt = attempt_no, "shard started");
    let started = Instant::now();
    let progress = Arc::new(Mutex::new(ProgressLine {
        phase: "start".into(),
        done: 0,
        total: 0,
    }));
    let tail = Arc::new(Tail::default());
    // The child exits when this pipe closes (we died); `Child::wait` would close it, so it is
    // held here for the whole attempt.
    let _lifeline = child.stdin.take();
    let mut readers = tokio::task::JoinSet::new();
    if let Some(out) = child.stdout.take() {
        let (progress, events) = (progress.clone(), events.clone());
        readers.spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(p) = serde_json::from_str::<ProgressLine>(&line) {
                    events.progress(slot, &p);
                    *lock(&progress) = p;
                }
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let tail = tail.clone();
        let shard = shard.clone();
        readers.spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                relay_child_line(&shard, &line);
                tail.push(line);
            }
        });
    }
    let ended = watch_child(client, heartbeat, &mut stop, &mut child, token, &progress).await;
    let outcome = match ended {
        Ended::Exited(status) => {
            // Drain the readers so that the last stderr lines are in the tail.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while readers.join_next().await.is_some() {}
            })
            .await;
            match ExitReason::of_status(&status) {
                ExitReason::Done => complete(client, token, &tail).await,
                ExitReason::Interrupted => release(client, token).await,
                reason => {
                    let msg = match (tail.error(), reason) {
                        // Killed from outside: its last line is not the reason.
                        (_, ExitReason::Infrastructure) if status.code().is_none() => {
                            format!("the shard process was killed ({status}; the OOM killer?)")
                        }
                        (Some(line), _) => line,
                        (None, _) => format!("the shard process ended with {status}"),
                    };
                    report_failure(client, token, reason, &msg, &mut stop).await
                }
            }
        }
        Ended::Verdict(v) => {
            stop_child(&mut child, Duration::ZERO).await;
            if v == LeaseVerdict::Cancel {
                tracing::warn!(%sweep, %shard, attempt = attempt_no, "shard cancelled; stopped");
                Outcome::Cancelled
            } else {
                tracing::warn!(%sweep, %shard, attempt = attempt_no, "lease lost (it expired and the shard went to another attempt); this attempt's output is discarded");
                Outcome::LeaseLost
            }
        }
        Ended::Stopping => {
            tracing::info!(%shard, "stopping: asking the shard to checkpoint");
            stop_child(&mut child, cfg.stop_grace).await;
            release(client, token).await
        }
    };
    readers.abort_all();
    tracing::info!(%sweep, %shard, attempt = attempt_no, seconds = started.elapsed().as_secs_f64(), ?outcome, "attempt ended");
    outcome
}

/// Why the agent stopped waiting for the child.
enum Ended {
    Exited(std::process::ExitStatus),
    Verdict(LeaseVerdict),
    Stopping,
}

/// Waits for the child while heartbeating the lease with its progress.
async fn watch_child(
    client: &Client,
    heartbeat: Duration,
    stop: &mut watch::Receiver<bool>,
    child: &mut tokio::process::Child,
    token: &LeaseToken,
    progress: &Mutex<ProgressLine>,
) -> Ended {
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut failures = 0u32;
    loop {
        // Biased: a child that has finished is completed even if a heartbeat is also due, so
        // that a worker thawed after its lease expired asks to commit and is told no.
        tokio::select! {
            biased;
            status = child.wait() => return match status {
                Ok(s) => Ended::Exited(s),
                Err(e) => {
                    tracing::error!(error = %e, "lost track of the shard process");
                    Ended::Verdict(LeaseVerdict::LeaseLost)
                }
            },
            _ = stop.changed() => return Ended::Stopping,
            _ = tick.tick() => {
                let p = lock(progress).clone();
                let req = client.request(pb::HeartbeatRequest {
                    protocol_version: PROTOCOL_VERSION,
                    token: Some(token.clone().into()),
                    phase: p.phase,
                    done: p.done,
                    total: p.total,
                });
                // One try per tick: a heartbeat that fails is replaced by the next one.
                match client.inner.clone().heartbeat(req).await {
                    Ok(r) => {
                        failures = 0;
                        let v = LeaseVerdict::try_from(r.into_inner().verdict)
                            .unwrap_or(LeaseVerdict::Ok);
                        if v != LeaseVerdict::Ok {
                            // A child that already finished is offered for commit anyway
                            // (the coordinator refuses it): the answer is then recorded.
                            if let Ok(Some(status)) = child.try_wait() {
                                return Ended::Exited(status);
                            }
                            return Ended::Verdict(v);
                        }
                    }
                    Err(s) => {
                        failures += 1;
                        if failures.is_power_of_two() {
                            tracing::warn!(shard = %token.shard, error = s.message(), "heartbeat failed; training goes on");
                        }
                    }
                }
            }
        }
    }
}

/// SIGTERM (so that the child checkpoints), then SIGKILL after `grace`.
async fn stop_child(child: &mut tokio::process::Child, grace: Duration) {
    #[cfg(unix)]
    if let Some(pid) = child.id()
        && !grace.is_zero()
    {
        // SAFETY: kill(2) on a pid we own; no memory is touched.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

async fn complete(client: &Client, token: &LeaseToken, tail: &Tail) -> Outcome {
    let req = pb::CompleteRequest {
        protocol_version: PROTOCOL_VERSION,
        token: Some(token.clone().into()),
    };
    // Completion is retried even while stopping: the work is done and only needs publishing.
    let (_keep, mut never) = watch::channel(false);
    match client
        .retry("complete", &mut never, |mut c| {
            let r = client.request(req.clone());
            async move { c.complete(r).await }
        })
        .await
    {
        Some(Ok(r)) => match LeaseVerdict::try_from(r.verdict).unwrap_or(LeaseVerdict::LeaseLost) {
            LeaseVerdict::Ok => {
                tracing::info!(sweep = %token.sweep, shard = %token.shard, attempt = token.attempt.get(), published = r.published, "shard committed");
                Outcome::Committed
            }
            LeaseVerdict::Cancel => Outcome::Cancelled,
            _ => {
                tracing::warn!(sweep = %token.sweep, shard = %token.shard, attempt = token.attempt.get(), "commit refused: lease lost (another attempt holds or finished the shard); nothing changed");
                Outcome::LeaseLost
            }
        },
        Some(Err(s)) if s.code() == Code::FailedPrecondition => {
            let msg = format!(
                "{} ({})",
                s.message(),
                tail.error().unwrap_or_else(|| "no output".into())
            );
            let (_keep, mut never) = watch::channel(false);
            report_failure(client, token, ExitReason::Application, &msg, &mut never).await
        }
        Some(Err(s)) => {
            tracing::error!(error = s.message(), "completion refused");
            Outcome::Failed(s.message().to_owned())
        }
        None => Outcome::LeaseLost,
    }
}

/// Reports a failed attempt as `reason` classifies it.
async fn report_failure(
    client: &Client,
    token: &LeaseToken,
    reason: ExitReason,
    error: &str,
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    let kind = match reason {
        ExitReason::Infrastructure => pb::FailureKind::Infrastructure,
        ExitReason::Deterministic => pb::FailureKind::Deterministic,
        _ => pb::FailureKind::Application,
    };
    let what = reason.describe();
    if kind == pb::FailureKind::Infrastructure {
        tracing::warn!(sweep = %token.sweep, shard = %token.shard, attempt = token.attempt.get(), error, "{what}: the shard goes back to pending (its failure budget is untouched)");
    } else {
        tracing::error!(sweep = %token.sweep, shard = %token.shard, attempt = token.attempt.get(), error, "shard failed ({what})");
    }
    let req = pb::FailRequest {
        protocol_version: PROTOCOL_VERSION,
        token: Some(token.clone().into()),
        error: error.to_owned(),
        preempted: false,
        kind: kind.into(),
    };
    let _ = client
        .retry("fail", stop, |mut c| {
            let r = client.request(req.clone());
            async move { c.fail(r).await }
        })
        .await;
    if kind == pb::FailureKind::Infrastructure {
        Outcome::Infrastructure(error.to_owned())
    } else {
        Outcome::Failed(error.to_owned())
    }
}

async fn release(client: &Client, token: &LeaseToken) -> Outcome {
    let req = pb::FailRequest {
        protocol_version: PROTOCOL_VERSION,
        token: Some(token.clone().into()),
        error: String::new(),
        preempted: true,
        kind: pb::FailureKind::Unspecified.into(),
    };
    // A short, bounded try: if the coordinator is away the lease simply expires.
    let mut r = client.inner.clone();
    let sent = tokio::time::timeout(Duration::from_secs(5), r.fail(client.request(req))).await;
    match sent {
        Ok(Ok(_)) => tracing::info!(shard = %token.shard, "lease released (preempted)"),
        _ => tracing::warn!(shard = %token.shard, "could not release the lease; it will expire"),
    }
    Outcome::Preempted
}
