//! The gRPC services over the ledger: check the protocol version, convert wire types, apply
//! ledger transitions, answer. Completion runs the publish protocol: intent, copy, commit.
//!
//! **Architecture invariant:** no SQL and no transition rules here; a refused transition is
//! answered with `LEASE_LOST` and has changed nothing.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linesweep_proto::PROTOCOL_VERSION;
use linesweep_proto::pb::{self, LeaseVerdict};
use linesweep_storage::Storage;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::lease::{Failure, Millis, Publish, Shard, ShardState};
use crate::ledger::{
    BULK_CHUNK, Bulk, Ledger, LedgerError, LedgerReader, Reads, ShardRow, SubmitMode, SweepMeta,
    SweepStatus,
};
use crate::publish::{self, PublishError};
use linesweep_storage::attempt::AttemptManifest;

/// The coordinator's clock, injectable for tests.
pub type Clock = Arc<dyn Fn() -> Millis + Send + Sync>;

/// The wall clock in milliseconds since the Unix epoch.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as Millis)
    })
}

/// Checks a submitted shard `(id, config_json)`: `Err` is the reason it is refused.
pub type ShardCheck = Arc<dyn Fn(&str, &str) -> Result<(), String> + Send + Sync>;

/// Progress of a running attempt, from its heartbeats (memory only: it is advisory).
#[derive(Debug, Clone, Default)]
struct Progress {
    attempt: u32,
    phase: String,
    done: u64,
    total: u64,
}

/// A worker as last heard of (memory only: `linesweep workers` is a live view).
#[derive(Debug, Clone, Default)]
struct WorkerEntry {
    device: String,
    slots: u32,
    last_seen: Millis,
    /// Why it stopped taking shards (empty: healthy).
    unhealthy: String,
}

/// The ledger with its open group-commit batch.
struct Batched {
    ledger: Ledger,
    /// Id of the open batch (0: none).
    open: u64,
    /// Last batch id issued.
    next: u64,
}

/// What the committer has made durable.
#[derive(Debug, Clone, Default)]
struct Committed {
    /// Every batch up to this id is durable.
    done: u64,
    /// The first batch that could not be committed, and why: the ledger is then stopped,
    /// and that batch and every later one are refused (none was acknowledged).
    stopped: Option<(u64, String)>,
}

#[derive(Default)]
struct Live {
    progress: HashMap<(String, String), Progress>,
    workers: BTreeMap<String, WorkerEntry>,
}

/// Both services over one ledger.
#[derive(Clone)]
pub struct Coordinator {
    // A std mutex: no await happens while it is held, and every ledger call is one short
    // SQLite transaction. Storage I/O (publishing) happens outside it.
    ledger: Arc<Mutex<Batched>>,
    /// A read-only connection for status and listings (`None`: in-memory ledgers read
    /// through `ledger`): a long read must not hold the lock that leases need.
    reader: Option<Arc<Mutex<LedgerReader>>>,
    committed: Arc<tokio::sync::watch::Sender<Committed>>,
    wake: Arc<tokio::sync::Notify>,
    live: Arc<Mutex<Live>>,
    stores: Arc<Mutex<HashMap<String, Arc<Storage>>>>,
    /// One gate per shard being published: a completion and the reaper's roll-forward (or two
    /// retries of one completion) must not publish the same attempt at once, because the one
    /// that commits first removes the staging the other is still copying.
    publishing: Gates,
    clock: Clock,
    default_results: String,
    check_shard: Option<ShardCheck>,
    heartbeat_interval_ms: u64,
    watch_interval: Duration,
}

/// Publish gates by (sweep, shard).
type Gates = Arc<Mutex<HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>>;

/// Exclusive right to publish one shard; its map entry goes with the last holder or waiter.
struct Gate {
    gates: Gates,
    key: (String, String),
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Gate {
    fn drop(&mut self) {
        let mut gates = lock(&self.gates);
        if let Some(guard) = self.guard.take() {
            // The map's reference and the guard's: nobody waits, and a new caller needs the
            // map lock held here.
            if Arc::strong_count(tokio::sync::OwnedMutexGuard::mutex(&guard)) == 2 {
                gates.remove(&self.key);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Coordinator {
    /// Wraps a ledger and starts its group committer (needs a tokio runtime).
    /// `default_results` is the storage root of sweeps submitted without one.
    pub fn new(ledger: Ledger, clock: Clock, default_results: String) -> Self {
        let ttl = ledger.policy().ttl_ms.max(1) as u64;
        let reader = match ledger.reader() {
            Ok(r) => r.map(|r| Arc::new(Mutex::new(r))),
            Err(e) => {
                tracing::warn!(error = %e, "no separate read connection; status reads share the writer's");
                None
            }
        };
        let ledger = Arc::new(Mutex::new(Batched {
            ledger,
            open: 0,
            next: 0,
        }));
        let committed = Arc::new(tokio::sync::watch::channel(Committed::default()).0);
        let wake = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(Self::committer(
            ledger.clone(),
            wake.clone(),
            committed.clone(),
        ));
        Self {
            ledger,
            reader,
            committed,
            wake,
            live: Arc::default(),
            stores: Arc::default(),
            publishing: Arc::default(),
            clock,
            default_results,
            check_shard: None,
            // Six heartbeats per TTL: a lease survives a few lost ones.
            heartbeat_interval_ms: (ttl / 6).max(50),
            watch_interval: Duration::from_millis(500),
        }
    }

    /// Refuses submitted shards that `check` refuses.
    pub fn with_shard_check(mut self, check: Option<ShardCheck>) -> Self {
        self.check_shard = check;
        self
    }

    /// Runs every submitted shard through the shard check, off the async threads (a large
    /// submission is thousands of JSON parses and hashes).
    async fn check_shards(&self, shards: &[pb::ShardSpec]) -> Result<(), Status> {
        let Some(check) = self.check_shard.clone() else {
            return Ok(());
        };
        let shards: Vec<(String, String)> = shards
            .iter()
            .map(|s| (s.id.clone(), s.config_json.clone()))
            .collect();
        tokio::task::spawn_blocking(move || {
            for (id, json) in &shards {
                if let Err(reason) = check(id, json) {
                    return Err(Status::invalid_argument(format!("shard {id}: {reason}")));
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }

    /// Runs the state change `f` on the ledger at the current time, inside the open
    /// group-commit batch, and returns once that batch is durable (one fsync for every
    /// operation that joined it). Nothing is reported to a caller before its commit.
    pub async fn with_ledger<T>(
        &self,
        f: impl FnOnce(&mut Ledger, Millis) -> T,
    ) -> Result<T, Status> {
        let mut rx = self.committed.subscribe();
        let (r, batch) = self.join_batch(f)?;
        loop {
            {
                let c = rx.borrow_and_update();
                if c.done >= batch {
                    return Ok(r);
                }
                if let Some((from, why)) = &c.stopped
                    && batch >= *from
                {
                    return Err(Status::unavailable(format!(
                        "the coordinator stopped: its state file cannot commit ({why}); nothing of this call was recorded"
                    )));
                }
            }
            rx.changed()
                .await
                .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
        }
    }

    /// Runs a state change whose durability does not matter (a heartbeat: after a restart
    /// every lease gets a fresh TTL anyway) in the open batch, without waiting for its commit.
    fn with_ledger_unsynced<T>(
        &self,
        f: impl FnOnce(&mut Ledger, Millis) -> T,
    ) -> Result<T, Status> {
        self.join_batch(f).map(|(r, _)| r)
    }

    /// Runs `f` in the open batch (opening one if needed), wakes the committer, and returns
    /// the batch id the change will be durable with.
    fn join_batch<T>(&self, f: impl FnOnce(&mut Ledger, Millis) -> T) -> Result<(T, u64), Status> {
        if let Some((_, why)) = &self.committed.borrow().stopped {
            return Err(Status::unavailable(format!(
                "the coordinator stopped: its state file cannot commit ({why})"
            )));
        }
        let now = self.now();
        let joined = {
            let mut g = lock(&self.ledger);
            if g.open == 0 {
                g.ledger.begin_batch().map_err(status)?;
                g.next += 1;
                g.open = g.next;
            }
            (f(&mut g.ledger, now), g.open)
        };
        self.wake.notify_one();
        Ok(joined)
    }

    /// Reads what is committed, on the read connection, off the async threads: status and
    /// listings, which may scan a million rows, never hold up a lease.
    pub async fn read_committed<T: Send + 'static>(
        &self,
        f: impl FnOnce(Reads<'_>) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, Status> {
        let Some(reader) = self.reader.clone() else {
            return self.read_ledger(|l, _| f(l.reads())).map_err(status);
        };
        tokio::task::spawn_blocking(move || f(lock(&reader).reads()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status)
    }

    /// A bulk retry or cancel of every shard of `sweep`, one chunk per transaction, so that
    /// leases and heartbeats are served between chunks. Returns how many shards changed.
    async fn bulk(&self, sweep: &str, op: Bulk) -> Result<usize, Status> {
        let (mut changed, mut after) = (0, Some(0));
        while let Some(from) = after {
            let (n, next) = self
                .with_ledger(|l, now| l.bulk_chunk(sweep, op, from, BULK_CHUNK, now))
                .await?
                .map_err(status)?;
            changed += n;
            after = next;
        }
        Ok(changed)
    }

    /// Reads the ledger (no commit to wait for).
    pub fn read_ledger<T>(&self, f: impl FnOnce(&Ledger, Millis) -> T) -> T {
        let now = self.now();
        f(&lock(&self.ledger).ledger, now)
    }

    /// The group committer: commits the open batch whenever an operation joined it.
    async fn committer(
        ledger: Arc<Mutex<Batched>>,
        wake: Arc<tokio::sync::Notify>,
        committed: Arc<tokio::sync::watch::Sender<Committed>>,
    ) {
        loop {
            wake.notified().await;
            let cell = ledger.clone();
            let done = tokio::task::spawn_blocking(move || {
                let mut g = lock(&cell);
                let id = std::mem::take(&mut g.open);
                (id != 0).then(|| (id, g.ledger.commit_batch()))
            })
            .await;
            let Ok(Some((id, result))) = done else {
                continue;
            };
            match result {
                Ok(()) => committed.send_modify(|c| c.done = id),
                Err(e) => {
                    // A full disk or a failing device does not heal between two batches:
                    // one clear error, and the server stops (`Coordinator::stopped`) instead
                    // of answering every later call with the same failure.
                    tracing::error!(error = %e, "the ledger cannot commit; the coordinator stops (nothing acknowledged is lost; free space or fix the disk, then start it again)");
                    committed.send_modify(|c| c.stopped = Some((id, e.to_string())));
                    return;
                }
            }
        }
    }

    /// Resolves, with the reason, once the ledger cannot commit any more.
    pub async fn stopped(&self) -> String {
        let mut rx = self.committed.subscribe();
        match rx.wait_for(|c| c.stopped.is_some()).await {
            Ok(c) => c
                .stopped
                .as_ref()
                .map(|(_, why)| why.clone())
                .unwrap_or_default(),
            Err(_) => "the coordinator shut down".into(),
        }
    }

    fn now(&self) -> Millis {
        (self.clock)()
    }

    async fn storage(&self, location: &str) -> Result<Arc<Storage>, Status> {
        if let Some(s) = lock(&self.stores).get(location) {
            return Ok(s.clone());
        }
        let loc = location.to_owned();
        let opened = tokio::task::spawn_blocking(move || Storage::open(&loc))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::unavailable(format!("results storage: {e}")))?;
        let s = Arc::new(opened);
        lock(&self.stores).insert(location.to_owned(), s.clone());
        Ok(s)
    }

    fn gate_mutex(&self, sweep: &str, shard: &str) -> Arc<tokio::sync::Mutex<()>> {
        let key = (sweep.to_owned(), shard.to_owned());
        lock(&self.publishing).entry(key).or_default().clone()
    }

    /// Waits for the right to publish `shard`.
    async fn publish_gate(&self, sweep: &str, shard: &str) -> Gate {
        let guard = self.gate_mutex(sweep, shard).lock_owned().await;
        Gate {
            gates: self.publishing.clone(),
            key: (sweep.to_owned(), shard.to_owned()),
            guard: Some(guard),
        }
    }

    /// The right to publish `shard`, unless a call holds it now.
    fn try_publish_gate(&self, sweep: &str, shard: &str) -> Option<Gate> {
        let guard = self.gate_mutex(sweep, shard).try_lock_owned().ok()?;
        Some(Gate {
            gates: self.publishing.clone(),
            key: (sweep.to_owned(), shard.to_owned()),
            guard: Some(guard),
        })
    }

    /// Publishes and commits `attempt` (the ledger must be at `Publishing{attempt}`, and the
    /// caller must hold the shard's [`Gate`]); returns how many objects were newly published.
    /// `verified`: the manifest the caller already checked under the same gate (else it is
    /// checked here). A permanent publish failure is recorded as an application failure of
    /// the attempt.
    async fn finish_publish(
        &self,
        sweep: &str,
        shard: &str,
        attempt: u32,
        results: &str,
        verified: Option<AttemptManifest>,
        _gate: &Gate,
    ) -> Result<u64, Status> {
        let storage = self.storage(results).await?;
        let (sw, sh) = (sweep.to_owned(), shard.to_owned());
        let st = storage.clone();
        let copied = tokio::task::spawn_blocking(move || match verified {
            Some(m) => publish::publish_verified(&st, &m),
            None => publish::publish(&st, &sw, &sh, attempt),
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        match copied {
            Ok(n) => {
                match self
                    .with_ledger(|l, now| l.commit(sweep, shard, attempt, now))
                    .await?
                {
                    Ok(()) => {}
                    // A concurrent call of the same attempt committed first.
                    Err(LedgerError::Refused(_))
                        if self
                            .read_ledger(|l, _| l.shard(sweep, shard))
                            .is_ok_and(|s| s.state == ShardState::Committed { attempt }) => {}
                    Err(e) => return Err(status(e)),
                }
                lock(&self.live)
                    .progress
                    .remove(&(sweep.to_owned(), shard.to_owned()));
                let (sw, sh) = (sweep.to_owned(), shard.to_owned());
                // Staging of every attempt of a committed shard is garbage; a failure here
                // only leaves work for `gc`.
                let cleaned =
                    tokio::task::spawn_blocking(move || publish::clean(&storage, &sw, &sh)).await;
                if let Ok(Err(e)) = cleaned {
                    tracing::warn!(%sweep, %shard, error = %e, "could not remove staging; `linesweep gc` will");
                }
                Ok(n as u64)
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(%sweep, %shard, attempt, error = %e, "publishing failed; it will be retried");
                Err(Status::unavailable(e.to_string()))
            }
            Err(e) => {
                tracing::error!(%sweep, %shard, attempt, error = %e, "the attempt's results cannot be published");
                // Other contents at a final key stay there whoever retries: the shard fails
                // at once. An incomplete or invalid staging is this attempt's failure.
                let kind = match e {
                    PublishError::Conflict { .. } => Failure::Deterministic,
                    _ => Failure::Application,
                };
                self.with_ledger(|l, now| {
                    l.abandon_publish(sweep, shard, attempt, (kind, &e.to_string()), now)
                })
                .await?
                .map_err(status)?;
                Err(Status::failed_precondition(e.to_string()))
            }
        }
    }

    /// Finishes publishes that a crash interrupted (called by the server at start and on the
    /// reaper's timer). Returns how many were committed.
    pub async fn roll_forward(&self) -> usize {
        let pending = match self.read_ledger(|l, _| l.publishing()) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot list interrupted publishes");
                return 0;
            }
        };
        let mut done = 0;
        for (sweep, shard, attempt) in pending {
            // A completion is publishing it right now; it is not stuck.
            let Some(gate) = self.try_publish_gate(&sweep, &shard) else {
                continue;
            };
            let Ok(results) = self.read_ledger(|l, _| l.results(&sweep)) else {
                continue;
            };
            // It may have been committed since the list was read.
            if self
                .read_ledger(|l, _| l.shard(&sweep, &shard))
                .is_ok_and(|s| s.state != ShardState::Publishing { attempt })
            {
                continue;
            }
            let outcome = if results.is_empty() {
                match self
                    .with_ledger(|l, now| l.commit(&sweep, &shard, attempt, now))
                    .await
                {
                    Ok(r) => r.map(|()| 0).map_err(status),
                    Err(e) => Err(e),
                }
            } else {
                self.finish_publish(&sweep, &shard, attempt, &results, None, &gate)
                    .await
            };
            match outcome {
                Ok(_) => {
                    tracing::info!(%sweep, %shard, attempt, "interrupted publish rolled forward");
                    done += 1;
                }
                Err(e) => {
                    tracing::warn!(%sweep, %shard, attempt, error = e.message(), "rolling a publish forward failed")
                }
            }
        }
        done
    }

    /// Removes staging that no live attempt needs: shards that are committed or cancelled,
    /// and shards the ledger does not know. Returns how many objects were deleted.
    pub async fn gc(&self, sweep: &str, include_failed: bool) -> Result<u64, Status> {
        let results = self.read_ledger(|l, _| l.results(sweep)).map_err(status)?;
        if results.is_empty() {
            return Ok(0);
        }
        let sw = sweep.to_owned();
        let rows = self.read_committed(move |r| r.shards(&sw)).await?;
        let states: HashMap<String, Shard> = rows.into_iter().map(|r| (r.id, r.shard)).collect();
        let storage = self.storage(&results).await?;
        let sw = sweep.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut deleted = 0;
            for id in publish::staged_shards(&storage, &sw)? {
                let dead = states.get(&id).is_none_or(|s| match s.state {
                    ShardState::Committed { .. } | ShardState::Cancelled => true,
                    ShardState::Failed => include_failed,
                    _ => false,
                });
                if dead {
                    deleted += publish::clean(&storage, &sw, &id)?;
                }
            }
            Ok::<_, linesweep_storage::StorageError>(deleted as u64)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::unavailable(e.to_string()))
    }

    fn seen(&self, worker: &str) {
        let now = self.now();
        lock(&self.live)
            .workers
            .entry(worker.to_owned())
            .or_default()
            .last_seen = now;
    }

    async fn status_reply(&self, sweep: &str) -> Result<pb::StatusReply, Status> {
        let sw = sweep.to_owned();
        let st: SweepStatus = self.read_committed(move |r| r.status(&sw)).await?;
        let live = lock(&self.live);
        let info = |r: &ShardRow| {
            let mut i = shard_info(r);
            if let Some(p) = live.progress.get(&(sweep.to_owned(), r.id.clone()))
                && p.attempt == r.shard.attempts
            {
                i.phase = p.phase.clone();
                i.done = p.done;
                i.total = p.total;
            }
            i
        };
        let (n, first, last) = st.commits;
        let per_minute = if n >= 2 && last > first {
            (n - 1) as f64 * 60_000.0 / (last - first) as f64
        } else {
            0.0
        };
        let remaining: u64 = ["pending", "leased", "publishing"]
            .iter()
            .map(|k| st.counts.get(*k).copied().unwrap_or(0))
            .sum();
        let eta_s =
            (per_minute > 0.0 && remaining > 0).then(|| remaining as f64 * 60.0 / per_minute);
        Ok(pb::StatusReply {
            counts: st.counts.into_iter().collect(),
            failures: st.failures,
            interruptions: st.interruptions,
            failed: st.failed.iter().map(info).collect(),
            running: st.running.iter().map(info).collect(),
            commits_per_minute: per_minute,
            eta_s,
            results: st.results,
        })
    }
}

fn shard_info(r: &ShardRow) -> pb::ShardInfo {
    let s = &r.shard;
    pb::ShardInfo {
        id: r.id.clone(),
        state: s.state.name().to_owned(),
        attempts: s.attempts,
        failures: s.failures,
        interruptions: s.interruptions,
        last_error: s.last_error.clone().unwrap_or_default(),
        worker: match &s.state {
            ShardState::Leased { worker, .. } => worker.clone(),
            _ => String::new(),
        },
        committed_attempt: match s.state {
            ShardState::Committed { attempt } => attempt,
            _ => 0,
        },
        ..Default::default()
    }
}

/// Whether a sweep has nothing left to run.
pub fn is_finished(reply: &pb::StatusReply) -> bool {
    ["pending", "leased", "publishing"]
        .iter()
        .all(|k| reply.counts.get(*k).copied().unwrap_or(0) == 0)
}

/// The wire's failure kind; a worker must name one.
fn failure_kind(kind: i32) -> Result<Failure, Status> {
    match pb::FailureKind::try_from(kind) {
        Ok(pb::FailureKind::Application) => Ok(Failure::Application),
        Ok(pb::FailureKind::Infrastructure) => Ok(Failure::Infrastructure),
        Ok(pb::FailureKind::Deterministic) => Ok(Failure::Deterministic),
        Ok(pb::FailureKind::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
            "a failure needs its kind (application, infrastructure or deterministic), got {kind}"
        ))),
    }
}

fn check_version(v: u32) -> Result<(), Status> {
    if v == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!(
            "protocol version {v} (0 = unset); this coordinator speaks {PROTOCOL_VERSION}"
        )))
    }
}

fn token(t: Option<pb::Token>) -> Result<pb::Token, Status> {
    t.filter(|t| !t.sweep.is_empty() && !t.shard.is_empty() && t.attempt > 0)
        .ok_or_else(|| {
            Status::invalid_argument("missing or incomplete token (sweep, shard, attempt)")
        })
}

/// The one place ledger errors become gRPC answers: a refusal is a verdict, not an error.
fn verdict(r: Result<(), LedgerError>) -> Result<LeaseVerdict, Status> {
    match r {
        Ok(()) => Ok(LeaseVerdict::Ok),
        Err(LedgerError::Refused(crate::lease::Refused::LeaseLost {
            state: "cancelled", ..
        })) => Ok(LeaseVerdict::Cancel),
        Err(LedgerError::Refused(_)) => Ok(LeaseVerdict::LeaseLost),
        Err(e) => Err(status(e)),
    }
}

fn status(e: LedgerError) -> Status {
    match e {
        LedgerError::UnknownShard { .. } | LedgerError::UnknownSweep(_) => {
            Status::not_found(e.to_string())
        }
        LedgerError::Changed { sweep, old, new } => Status::failed_precondition(format!(
            "sweep {sweep} already exists with other settings; pass --new to add the changed shards anyway, or give the sweep another name. Changed: {}",
            diff(&old, &new)
        )),
        LedgerError::ResultsMoved { .. } => Status::failed_precondition(e.to_string()),
        LedgerError::Refused(_) => Status::aborted(e.to_string()),
        LedgerError::Locked { .. } => Status::unavailable(e.to_string()),
        LedgerError::Corrupt { .. } | LedgerError::Sqlite(_) => Status::internal(e.to_string()),
    }
}

/// `key: old → new` for every setting that differs between two flat JSON objects.
fn diff(old: &str, new: &str) -> String {
    let parse = |s: &str| -> BTreeMap<String, serde_json::Value> {
        serde_json::from_str(s).unwrap_or_default()
    };
    let (a, b) = (parse(old), parse(new));
    let show = |v: Option<&serde_json::Value>| v.map_or("(unset)".to_owned(), |v| v.to_string());
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let lines: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} → {}", show(a.get(k)), show(b.get(k))))
        .collect();
    if lines.is_empty() {
        "(no setting differs)".into()
    } else {
        lines.join("; ")
    }
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for Coordinator {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        if req.worker.is_empty() {
            return Err(Status::invalid_argument("worker name is empty"));
        }
        let now = self.now();
        lock(&self.live).workers.insert(
            req.worker.clone(),
            WorkerEntry {
                device: req.device.clone(),
                slots: req.slots,
                last_seen: now,
                unhealthy: req.unhealthy.clone(),
            },
        );
        if req.unhealthy.is_empty() {
            tracing::info!(worker = %req.worker, device = %req.device, slots = req.slots, "worker registered");
        } else {
            tracing::warn!(worker = %req.worker, reason = %req.unhealthy, "worker unhealthy: it takes no shards until it recovers");
        }
        Ok(Response::new(pb::RegisterReply {
            heartbeat_interval_ms: self.heartbeat_interval_ms,
        }))
    }

    async fn lease(
        &self,
        req: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        if req.worker.is_empty() {
            return Err(Status::invalid_argument("worker name is empty"));
        }
        self.seen(&req.worker);
        let (lease, ttl) = self
            .with_ledger(|l, now| {
                let lease = l.lease(&req.worker, now).and_then(|lease| match lease {
                    Some(lease) => {
                        let results = l.results(&lease.sweep)?;
                        Ok(Some((lease, results)))
                    }
                    None => Ok(None),
                });
                (lease, l.policy().ttl_ms)
            })
            .await?;
        let granted = lease.map_err(status)?.map(|(l, results)| pb::Granted {
            token: Some(pb::Token {
                sweep: l.sweep,
                shard: l.shard,
                attempt: l.attempt,
            }),
            config_json: l.config_json,
            lease_ttl_ms: ttl as u64,
            results,
        });
        Ok(Response::new(pb::LeaseReply { granted }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let t = token(req.token)?;
        let v = verdict(
            self.with_ledger_unsynced(|l, now| l.heartbeat(&t.sweep, &t.shard, t.attempt, now))?,
        )?;
        if v == LeaseVerdict::Ok {
            let mut live = lock(&self.live);
            live.progress.insert(
                (t.sweep.clone(), t.shard.clone()),
                Progress {
                    attempt: t.attempt,
                    phase: req.phase,
                    done: req.done,
                    total: req.total,
                },
            );
        }
        Ok(Response::new(pb::HeartbeatReply { verdict: v.into() }))
    }

    async fn complete(
        &self,
        req: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let t = token(req.token)?;
        let (sweep, shard, attempt) = (t.sweep.as_str(), t.shard.as_str(), t.attempt);
        let results = self.read_ledger(|l, _| l.results(sweep)).map_err(status)?;
        if results.is_empty() {
            let v = verdict(
                self.with_ledger(|l, now| l.complete(sweep, shard, attempt, now))
                    .await?,
            )?;
            return Ok(Response::new(pb::CompleteReply {
                verdict: v.into(),
                published: 0,
            }));
        }
        // One call at a time per shard from here: a retry after a lost reply, or the reaper's
        // roll-forward, waits, then finds the attempt committed.
        let gate = self.publish_gate(sweep, shard).await;
        // Check the staged output before recording any intent: an attempt that staged nothing
        // is told so and the shard is left as it is (the worker reports the failure).
        let holds = self.read_ledger(|l, now| {
            l.shard(sweep, shard)
                .map(|s| matches!(s.begin_publish(attempt, now), Ok(Publish::Start(_))))
        });
        let mut verified = None;
        if holds.map_err(status)? {
            let storage = self.storage(&results).await?;
            let (sw, sh) = (sweep.to_owned(), shard.to_owned());
            let check =
                tokio::task::spawn_blocking(move || publish::verify(&storage, &sw, &sh, attempt))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
            match check {
                Ok(m) => verified = Some(m),
                Err(e @ PublishError::Storage(_)) => {
                    return Err(Status::unavailable(e.to_string()));
                }
                Err(e) => return Err(Status::failed_precondition(e.to_string())),
            }
        }
        let decision = self
            .with_ledger(|l, now| l.begin_publish(sweep, shard, attempt, now))
            .await?;
        let published = match decision {
            Ok(Publish::AlreadyCommitted) => 0,
            Ok(Publish::Start(_) | Publish::Resume) => {
                self.finish_publish(sweep, shard, attempt, &results, verified, &gate)
                    .await?
            }
            Err(e) => {
                let v = verdict(Err(e))?;
                return Ok(Response::new(pb::CompleteReply {
                    verdict: v.into(),
                    published: 0,
                }));
            }
        };
        tracing::info!(%sweep, %shard, attempt, published, "shard committed");
        Ok(Response::new(pb::CompleteReply {
            verdict: LeaseVerdict::Ok.into(),
            published,
        }))
    }

    async fn fail(&self, req: Request<pb::FailRequest>) -> Result<Response<pb::FailReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let t = token(req.token)?;
        let kind = if req.preempted {
            None
        } else {
            Some(failure_kind(req.kind)?)
        };
        let result = self
            .with_ledger(|l, now| match kind {
                None => l
                    .preempt(&t.sweep, &t.shard, t.attempt, now)
                    .map(|()| ShardState::Pending),
                Some(kind) => l.fail(&t.sweep, &t.shard, t.attempt, (kind, &req.error), now),
            })
            .await?;
        let (v, state) = match result {
            Ok(s) => {
                lock(&self.live)
                    .progress
                    .remove(&(t.sweep.clone(), t.shard.clone()));
                (LeaseVerdict::Ok, s.name().to_owned())
            }
            Err(e) => (verdict(Err(e))?, String::new()),
        };
        Ok(Response::new(pb::FailReply {
            verdict: v.into(),
            state,
        }))
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::StatusReply, Status>> + Send>>;

#[tonic::async_trait]
impl pb::control_service_server::ControlService for Coordinator {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        if req.sweep.is_empty() || req.shards.is_empty() {
            return Err(Status::invalid_argument(
                "a submission needs a sweep name and at least one shard",
            ));
        }
        if !linesweep_storage::layout::valid_sweep_name(&req.sweep) {
            return Err(Status::invalid_argument(format!(
                "`{}` is not a sweep name: {}",
                req.sweep.escape_debug(),
                linesweep_storage::layout::SWEEP_NAME_RULE
            )));
        }
        if let Some(bad) = req.shards.iter().find(|s| {
            s.id.is_empty() || !s.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }) {
            return Err(Status::invalid_argument(format!(
                "shard id `{}` is not a plain identifier",
                bad.id
            )));
        }
        self.check_shards(&req.shards).await?;
        let results = if req.results.is_empty() {
            self.default_results.clone()
        } else {
            req.results.clone()
        };
        if results.is_empty() {
            return Err(Status::invalid_argument(
                "the sweep names no results location ([storage] results) and the coordinator has no default (serve --results)",
            ));
        }
        let meta = SweepMeta {
            results,
            base_json: req.base_json,
        };
        let mode = if req.continuation {
            SubmitMode::Continuation
        } else {
            SubmitMode::Start {
                allow_changed: req.allow_changed,
            }
        };
        let shards: Vec<(String, String)> = req
            .shards
            .into_iter()
            .map(|s| (s.id, s.config_json))
            .collect();
        let r = self
            .with_ledger(|l, now| l.submit_sweep(&req.sweep, &meta, mode, &shards, now))
            .await?
            .map_err(status)?;
        Ok(Response::new(pb::SubmitReply {
            added: r.added as u64,
            existing: r.existing as u64,
        }))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        Ok(Response::new(self.status_reply(&req.sweep).await?))
    }

    type WatchStream = StatusStream;

    async fn watch(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let first = self.status_reply(&req.sweep).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let mut last = first;
            let mut finished = is_finished(&last);
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            while !finished {
                tokio::time::sleep(this.watch_interval).await;
                let next = match this.status_reply(&req.sweep).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                finished = is_finished(&next);
                if next != last || finished {
                    if tx.send(Ok(next.clone())).await.is_err() {
                        return;
                    }
                    last = next;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn retry(
        &self,
        req: Request<pb::RetryRequest>,
    ) -> Result<Response<pb::RetryReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let n = if req.shards.is_empty() {
            self.bulk(&req.sweep, Bulk::Retry).await?
        } else {
            self.with_ledger(|l, now| l.retry(&req.sweep, Some(&req.shards), now))
                .await?
                .map_err(status)?
        };
        Ok(Response::new(pb::RetryReply { retried: n as u64 }))
    }

    async fn cancel(
        &self,
        req: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let n = self
            .bulk(&req.sweep, Bulk::Cancel { running: req.now })
            .await?;
        Ok(Response::new(pb::CancelReply {
            cancelled: n as u64,
        }))
    }

    async fn list_shards(
        &self,
        req: Request<pb::ListShardsRequest>,
    ) -> Result<Response<pb::ListShardsReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let sweep = req.sweep.clone();
        let rows = self
            .read_committed(move |r| {
                r.results(&sweep)?;
                r.shards(&sweep)
            })
            .await?;
        Ok(Response::new(pb::ListShardsReply {
            shards: rows.iter().map(shard_info).collect(),
        }))
    }

    async fn list_workers(
        &self,
        req: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersReply>, Status> {
        check_version(req.into_inner().protocol_version)?;
        let now = self.now();
        let ttl = self.read_ledger(|l, _| l.policy().ttl_ms);
        let held = self.read_committed(|r| r.leases_by_worker()).await?;
        let live = lock(&self.live);
        let workers = live
            .workers
            .iter()
            // A worker silent for three TTLs is gone (its leases have expired by then).
            .filter(|(_, w)| now - w.last_seen <= 3 * ttl)
            .map(|(name, w)| pb::WorkerInfo {
                name: name.clone(),
                device: w.device.clone(),
                slots: w.slots,
                last_seen_ms: (now - w.last_seen).max(0) as u64,
                shards: held.get(name).cloned().unwrap_or_default(),
                unhealthy: w.unhealthy.clone(),
            })
            .collect();
        Ok(Response::new(pb::ListWorkersReply { workers }))
    }

    async fn gc(&self, req: Request<pb::GcRequest>) -> Result<Response<pb::GcReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let deleted = Coordinator::gc(self, &req.sweep, req.include_failed).await?;
        Ok(Response::new(pb::GcReply { deleted }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_name_each_changed_setting() {
        let d = diff(
            r#"{"train.epochs":3,"model.hidden":[512]}"#,
            r#"{"train.epochs":5,"model.hidden":[512],"train.lr":0.1}"#,
        );
        assert_eq!(d, "train.epochs: 3 → 5; train.lr: (unset) → 0.1");
    }
}
