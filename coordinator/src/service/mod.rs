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

use crate::lease::{Attempt, Failure, Millis, Publish, Shard, ShardState};
use crate::ledger::{
    BULK_CHUNK, Bulk, Ledger, LedgerError, LedgerReader, NewShard, Reads, ShardRow, SubmitMode,
    SweepMeta, SweepStatus,
};
use crate::publish::{self, PublishError};
use linesweep_storage::attempt::AttemptManifest;
use linesweep_storage::ids::{LeaseToken, ShardId, SweepName};

mod commit;
mod publisher;
mod status;
mod summaries;
mod wire;

pub use summaries::SummaryPolicy;

use commit::{Batched, Committed};
use publisher::Gates;
use status::shard_info;
pub use status::{count, is_finished, state_of, total, wire_state};
use wire::status;

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
#[derive(Debug, Clone)]
struct Progress {
    attempt: Attempt,
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
    /// Its device check's verdict (empty: the CPU, or none reported).
    device_check: String,
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
    /// This ledger, as the owner markers of its sweeps' results locations name it.
    owner: publish::Owner,
    take_over: bool,
    heartbeat_interval_ms: u64,
    watch_interval: Duration,
    summaries: Arc<Mutex<summaries::Summaries>>,
    summary_policy: SummaryPolicy,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Coordinator {
    /// Wraps a ledger and starts its group committer (needs a tokio runtime).
    /// `default_results` is the storage root of sweeps submitted without one.
    pub fn new(ledger: Ledger, clock: Clock, default_results: String) -> Self {
        let owner = publish::Owner {
            // An id that cannot be read (a failing disk) is caught by the first commit.
            ledger: ledger.id().unwrap_or_default(),
            state: ledger.path().to_owned(),
        };
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
            owner,
            take_over: false,
            // Six heartbeats per TTL: a lease survives a few lost ones.
            heartbeat_interval_ms: (ttl / 6).max(50),
            watch_interval: Duration::from_millis(500),
            summaries: Arc::default(),
            summary_policy: SummaryPolicy::OFF,
        }
    }

    /// Rewrites per-sweep summary files as shards commit (see [`SummaryPolicy`]; off unless
    /// set).
    pub fn with_summaries(mut self, policy: SummaryPolicy) -> Self {
        self.summary_policy = policy;
        self
    }

    /// Takes over the results locations that other ledgers owned (see [`publish::claim_owner`]).
    pub fn with_take_over(mut self, take_over: bool) -> Self {
        self.take_over = take_over;
        self
    }

    /// Makes this ledger the owner of `sweep` in `results`, off the async threads.
    async fn claim_owner(&self, sweep: &SweepName, results: &str) -> Result<(), Status> {
        let storage = self.storage(results).await?;
        let (sweep, owner, take_over) = (sweep.clone(), self.owner.clone(), self.take_over);
        tokio::task::spawn_blocking(move || {
            publish::claim_owner(&storage, &sweep, &owner, take_over)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| match e {
            publish::OwnerError::Taken { .. } => Status::failed_precondition(e.to_string()),
            publish::OwnerError::Storage(_) => Status::unavailable(e.to_string()),
        })
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

    fn seen(&self, worker: &str) {
        let now = self.now();
        lock(&self.live)
            .workers
            .entry(worker.to_owned())
            .or_default()
            .last_seen = now;
    }
}
