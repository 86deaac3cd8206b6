//! The gRPC services over the ledger: check the protocol version, convert wire types, apply
//! one ledger transition, answer.
//!
//! **Architecture invariant:** no SQL and no transition rules here; a refused transition is
//! answered with `LEASE_LOST` and has changed nothing.

use std::sync::{Arc, Mutex};

use linesweep_proto::PROTOCOL_VERSION;
use linesweep_proto::pb::{self, LeaseVerdict};
use tonic::{Request, Response, Status};

use crate::lease::{Millis, ShardState};
use crate::ledger::{Ledger, LedgerError};

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

/// Both services over one ledger.
#[derive(Clone)]
pub struct Coordinator {
    // A std mutex: no await happens while it is held, and every ledger call is one short
    // SQLite transaction.
    ledger: Arc<Mutex<Ledger>>,
    clock: Clock,
}

impl Coordinator {
    /// Wraps a ledger.
    pub fn new(ledger: Ledger, clock: Clock) -> Self {
        Self {
            ledger: Arc::new(Mutex::new(ledger)),
            clock,
        }
    }

    /// Runs `f` on the ledger at the current time.
    pub fn with_ledger<T>(&self, f: impl FnOnce(&mut Ledger, Millis) -> T) -> T {
        let now = (self.clock)();
        let mut guard = self
            .ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard, now)
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
        LedgerError::UnknownShard { .. } => Status::not_found(e.to_string()),
        LedgerError::Refused(_) => Status::aborted(e.to_string()),
        LedgerError::Locked { .. } => Status::unavailable(e.to_string()),
        LedgerError::Corrupt { .. } | LedgerError::Sqlite(_) => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for Coordinator {
    async fn lease(
        &self,
        req: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        if req.worker.is_empty() {
            return Err(Status::invalid_argument("worker name is empty"));
        }
        let (lease, ttl) =
            self.with_ledger(|l, now| (l.lease(&req.worker, now), l.policy().ttl_ms));
        let granted = lease.map_err(status)?.map(|l| pb::Granted {
            token: Some(pb::Token {
                sweep: l.sweep,
                shard: l.shard,
                attempt: l.attempt,
            }),
            config_json: l.config_json,
            lease_ttl_ms: ttl as u64,
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
        let v =
            verdict(self.with_ledger(|l, now| l.heartbeat(&t.sweep, &t.shard, t.attempt, now)))?;
        Ok(Response::new(pb::HeartbeatReply { verdict: v.into() }))
    }

    async fn complete(
        &self,
        req: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let t = token(req.token)?;
        let v = verdict(self.with_ledger(|l, now| l.complete(&t.sweep, &t.shard, t.attempt, now)))?;
        Ok(Response::new(pb::CompleteReply { verdict: v.into() }))
    }

    async fn fail(&self, req: Request<pb::FailRequest>) -> Result<Response<pb::FailReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let t = token(req.token)?;
        let result = self.with_ledger(|l, now| {
            if req.preempted {
                l.preempt(&t.sweep, &t.shard, t.attempt, now)
                    .map(|()| ShardState::Pending)
            } else {
                l.fail(&t.sweep, &t.shard, t.attempt, &req.error, now)
            }
        });
        let (v, state) = match result {
            Ok(s) => (LeaseVerdict::Ok, s.name().to_owned()),
            Err(e) => (verdict(Err(e))?, String::new()),
        };
        Ok(Response::new(pb::FailReply {
            verdict: v.into(),
            state,
        }))
    }
}

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
        let shards: Vec<(String, String)> = req
            .shards
            .into_iter()
            .map(|s| (s.id, s.config_json))
            .collect();
        let r = self
            .with_ledger(|l, now| l.submit(&req.sweep, &shards, now))
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
        let counts = self
            .with_ledger(|l, _| l.counts(&req.sweep))
            .map_err(status)?;
        if counts.is_empty() {
            return Err(Status::not_found(format!("no sweep named {}", req.sweep)));
        }
        Ok(Response::new(pb::StatusReply {
            counts: counts.into_iter().collect(),
        }))
    }

    async fn retry(
        &self,
        req: Request<pb::RetryRequest>,
    ) -> Result<Response<pb::RetryReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let only = (!req.shards.is_empty()).then_some(req.shards.as_slice());
        let n = self
            .with_ledger(|l, now| l.retry(&req.sweep, only, now))
            .map_err(status)?;
        Ok(Response::new(pb::RetryReply { retried: n as u64 }))
    }

    async fn cancel(
        &self,
        req: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let n = self
            .with_ledger(|l, now| l.cancel(&req.sweep, now))
            .map_err(status)?;
        Ok(Response::new(pb::CancelReply {
            cancelled: n as u64,
        }))
    }
}
