//! The shard state machine.
//!
//! ```text
//!            lease             begin_publish(a)                commit(a)
//! Pending ──────────► Leased{a} ──────────────► Publishing{a} ──────────► Committed{a}
//!    ▲  ▲              │  │  │                        │
//!    │  └─expire/preempt/infra┘│  └─ fail(a), budget left ─┴─ abandon_publish(a) ──► Pending
//!    │                     └──── fail(a), budget spent or deterministic ──► Failed ──retry──► Pending
//!    └─────────────── retry ◄── Cancelled ◄── cancel (Pending; Leased with --now)
//! ```
//!
//! A shard that needs others (`ShardSpec.needs`: a child trained from a parent's snapshot, a
//! pair line between two runs) enters at [`Shard::gate`] instead of Pending:
//!
//! ```text
//!   every need committed ─► Pending
//!   a need failed, cancelled or held ─► Held ──(the need retried)──► Waiting ─► Pending
//!   otherwise ─► Waiting ──(the last need commits)──► Pending
//! ```
//!
//! The ledger re-gates a shard's dependants whenever the shard commits, fails, is cancelled,
//! held or retried ([`Shard::settle`]). Held shards have nothing to run until a user acts,
//! so a sweep whose only shards left are held is finished, as one with failed shards is.
//!
//! `Publishing{a}` is the intent record of exactly-once publication: it is entered in its own
//! transaction before any result is copied to its final key, it never expires and cannot be
//! cancelled, and only attempt `a` (or the coordinator rolling forward after a restart) can
//! finish it. So no two attempts ever publish, even across a crash between copy and commit.
//!
//! Every lease issues a new attempt number; that number is the fencing token. A heartbeat or
//! failure that names another attempt, or arrives after the reaper gave the lease back, is
//! refused with [`Refused::LeaseLost`] and changes nothing. A completion is refused only when its token is
//! stale, i.e. a newer attempt exists: an expired lease that nobody took over may still
//! publish. Lease expiry, preemption and infrastructure failures ([`Failure`]) are
//! interruptions and do not consume the application-failure budget; a deterministic failure
//! (the shard can never succeed) fails the shard at once.

pub use linesweep_storage::ids::Attempt;

/// Milliseconds since the Unix epoch, on the coordinator's clock only.
pub type Millis = i64;

/// Durations and budgets that govern leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    /// How long a lease lives without a heartbeat.
    pub ttl_ms: i64,
    /// Application failures a shard may have before it is marked failed.
    pub max_failures: u32,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        Self {
            ttl_ms: 60_000,
            max_failures: 3,
        }
    }
}

/// Where a shard is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardState {
    /// Waiting for a worker.
    Pending,
    /// Held by `worker` under `attempt` until `expires_at`.
    Leased {
        attempt: Attempt,
        worker: String,
        expires_at: Millis,
    },
    /// The results of `attempt` are being copied to their final keys.
    Publishing { attempt: Attempt },
    /// Results of `attempt` are the shard's results.
    Committed { attempt: Attempt },
    /// The failure budget is spent.
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// Needs shards that are not committed yet.
    Waiting,
    /// Needs a shard that failed, was cancelled or is held itself: it runs only after that
    /// shard is retried.
    Held,
}

/// The kind of a [`ShardState`], without its data: the one home of state names (the
/// ledger's `state` column, status counts on the wire, the CLI's renderer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    /// See [`ShardState::Pending`].
    Pending,
    /// See [`ShardState::Leased`].
    Leased,
    /// See [`ShardState::Publishing`].
    Publishing,
    /// See [`ShardState::Committed`].
    Committed,
    /// See [`ShardState::Failed`].
    Failed,
    /// See [`ShardState::Cancelled`].
    Cancelled,
    /// See [`ShardState::Waiting`].
    Waiting,
    /// See [`ShardState::Held`].
    Held,
}

impl StateKind {
    /// Every kind, in the order a shard moves through them.
    pub const ALL: [Self; 8] = [
        Self::Waiting,
        Self::Pending,
        Self::Leased,
        Self::Publishing,
        Self::Committed,
        Self::Failed,
        Self::Cancelled,
        Self::Held,
    ];

    /// Kinds of a shard that still has work ahead (a sweep is finished when none is left).
    pub const UNFINISHED: [Self; 4] =
        [Self::Waiting, Self::Pending, Self::Leased, Self::Publishing];

    /// Kinds of a shard with nothing ahead until a user acts (committed, failed, cancelled,
    /// or held behind one of those).
    pub const ENDED: [Self; 4] = [Self::Committed, Self::Failed, Self::Cancelled, Self::Held];

    /// Kinds of a shard that blocks the shards that need it until it is retried.
    pub const BLOCKING: [Self; 3] = [Self::Failed, Self::Cancelled, Self::Held];

    /// The name, as stored and as sent.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Leased => "leased",
            Self::Publishing => "publishing",
            Self::Committed => "committed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Waiting => "waiting",
            Self::Held => "held",
        }
    }

    /// The kind of a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// `'a', 'b'` for an SQL `in (…)` list of these kinds (names are plain words).
    pub fn sql_list(kinds: &[Self]) -> String {
        kinds
            .iter()
            .map(|k| format!("'{}'", k.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl ShardState {
    /// Its kind.
    pub fn kind(&self) -> StateKind {
        match self {
            Self::Pending => StateKind::Pending,
            Self::Leased { .. } => StateKind::Leased,
            Self::Publishing { .. } => StateKind::Publishing,
            Self::Committed { .. } => StateKind::Committed,
            Self::Failed => StateKind::Failed,
            Self::Cancelled => StateKind::Cancelled,
            Self::Waiting => StateKind::Waiting,
            Self::Held => StateKind::Held,
        }
    }

    /// The state's name as stored in the ledger.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }
}

/// A shard's state plus its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// Current state.
    pub state: ShardState,
    /// The last attempt number issued (0 = never leased).
    pub attempts: u32,
    /// Application failures so far (reset by a user retry).
    pub failures: u32,
    /// Leases that expired or were preempted.
    pub interruptions: u32,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// The distinct workers on which an attempt failed with an infrastructure failure since
    /// the last user retry: at [`INFRASTRUCTURE_WORKERS`] the shard itself is the likely cause.
    pub infra_workers: Vec<String>,
}

/// Infrastructure failures of one shard on this many different workers fail it: a shard that
/// runs every machine out of memory or disk would otherwise be retried for ever, and one
/// broken machine (which goes unhealthy on its own) cannot fail a shard alone.
pub const INFRASTRUCTURE_WORKERS: usize = 3;

/// How a failed attempt counts against its shard (the worker's classification of its child's
/// exit, or the publisher's of a staging it could not publish).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The shard's own failure: one unit of the budget.
    Application,
    /// The machine's (storage I/O, a full disk, the OOM killer): Pending again, budget
    /// untouched, counted as an interruption.
    Infrastructure,
    /// It can never succeed (an invalid config or start, a publish conflict): Failed at once.
    Deterministic,
}

impl Failure {
    /// The event kind the ledger records.
    pub fn event(self) -> &'static str {
        match self {
            Self::Application => "failed",
            Self::Infrastructure => "infrastructure-failed",
            Self::Deterministic => "invalid",
        }
    }
}

/// What [`Shard::begin_publish`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// Enter `Publishing` (store this shard), then copy.
    Start(Shard),
    /// The same attempt was already publishing (a retried call, or a restart): copy again.
    Resume,
    /// The same attempt is already committed (a retried call whose reply was lost).
    AlreadyCommitted,
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The caller's attempt does not hold the lease (stale token, expired, or finished).
    #[error("lease lost: attempt {attempt} does not hold the shard (it is {})", state.name())]
    LeaseLost { attempt: Attempt, state: StateKind },
    /// The transition does not apply to the shard's current state.
    #[error("shard is {}: cannot {action}", state.name())]
    WrongState {
        state: StateKind,
        action: &'static str,
    },
}

/// What the shards a shard needs say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// It needs none, or all are committed: it can run.
    Met,
    /// Some are still to run.
    Unmet,
    /// One failed, was cancelled or is held: it cannot run until that one is retried.
    Blocked,
}

impl Needs {
    /// From the states of the needed shards.
    pub fn of(needed: impl IntoIterator<Item = StateKind>) -> Self {
        let mut all_committed = true;
        for kind in needed {
            if StateKind::BLOCKING.contains(&kind) {
                return Self::Blocked;
            }
            all_committed &= kind == StateKind::Committed;
        }
        if all_committed {
            Self::Met
        } else {
            Self::Unmet
        }
    }

    fn state(self) -> ShardState {
        match self {
            Self::Met => ShardState::Pending,
            Self::Unmet => ShardState::Waiting,
            Self::Blocked => ShardState::Held,
        }
    }
}

impl Shard {
    /// A new, never-leased shard.
    pub fn new() -> Self {
        Self {
            state: ShardState::Pending,
            attempts: 0,
            failures: 0,
            interruptions: 0,
            last_error: None,
            infra_workers: Vec::new(),
        }
    }

    /// Whether `attempt` still holds the lease: the shard is leased to it. A lease past its
    /// expiry that the reaper has not yet given back is still held — its token is not stale
    /// until another attempt supersedes it — so a heartbeat that arrives late (a coordinator
    /// thawed after a stall, a long read) renews it instead of killing finished work.
    fn holds(&self, attempt: Attempt, _now: Millis) -> Result<(), Refused> {
        match &self.state {
            ShardState::Leased { attempt: a, .. } if *a == attempt => Ok(()),
            other => Err(Refused::LeaseLost {
                attempt,
                state: other.kind(),
            }),
        }
    }

    /// Fencing as Kleppmann describes it: `attempt`'s token is stale only once a newer attempt
    /// has superseded it. A lease that expired while nobody took the shard over (still
    /// `Leased`, or back to `Pending` with no newer attempt) may still publish what it
    /// finished: a stalled coordinator, or a long status read, must not throw finished work
    /// away.
    fn latest_attempt(&self, attempt: Attempt) -> Result<(), Refused> {
        match &self.state {
            ShardState::Leased { attempt: a, .. } if *a == attempt => Ok(()),
            ShardState::Pending if self.attempts == attempt.get() => Ok(()),
            other => Err(Refused::LeaseLost {
                attempt,
                state: other.kind(),
            }),
        }
    }

    /// Pending → Leased under a new attempt number.
    ///
    /// ```
    /// use linesweep_coordinator::lease::{LeasePolicy, Refused, Shard};
    /// let policy = LeasePolicy::default();
    /// let (leased, attempt) = Shard::new().lease("worker-1", 0, &policy).unwrap();
    /// // A token from another attempt is fenced off.
    /// assert!(matches!(leased.complete(attempt.next(), 10), Err(Refused::LeaseLost { .. })));
    /// assert!(leased.complete(attempt, 10).is_ok());
    /// ```
    pub fn lease(
        &self,
        worker: &str,
        now: Millis,
        policy: &LeasePolicy,
    ) -> Result<(Shard, Attempt), Refused> {
        if self.state != ShardState::Pending {
            return Err(Refused::WrongState {
                state: self.state.kind(),
                action: "lease",
            });
        }
        let attempt = Attempt::after(self.attempts);
        let state = ShardState::Leased {
            attempt,
            worker: worker.to_owned(),
            expires_at: now + policy.ttl_ms,
        };
        Ok((
            Shard {
                state,
                attempts: attempt.get(),
                ..self.clone()
            },
            attempt,
        ))
    }

    /// Renews the lease of `attempt`.
    pub fn heartbeat(
        &self,
        attempt: Attempt,
        now: Millis,
        policy: &LeasePolicy,
    ) -> Result<Shard, Refused> {
        self.holds(attempt, now)?;
        let mut next = self.clone();
        if let ShardState::Leased { expires_at, .. } = &mut next.state {
            *expires_at = now + policy.ttl_ms;
        }
        Ok(next)
    }

    /// Leased by `attempt` → Committed, for callers with nothing to publish (tests, the
    /// coordinator benchmark): [`Self::begin_publish`] and [`Self::commit`] in one step.
    pub fn complete(&self, attempt: Attempt, now: Millis) -> Result<Shard, Refused> {
        match self.begin_publish(attempt, now)? {
            Publish::Start(s) => s.commit(attempt),
            Publish::Resume => self.commit(attempt),
            Publish::AlreadyCommitted => Ok(self.clone()),
        }
    }

    /// `attempt` finished and wants its staged results published.
    pub fn begin_publish(&self, attempt: Attempt, _now: Millis) -> Result<Publish, Refused> {
        match &self.state {
            ShardState::Publishing { attempt: a } if *a == attempt => Ok(Publish::Resume),
            ShardState::Committed { attempt: a } if *a == attempt => Ok(Publish::AlreadyCommitted),
            _ => {
                self.latest_attempt(attempt)?;
                Ok(Publish::Start(Shard {
                    state: ShardState::Publishing { attempt },
                    ..self.clone()
                }))
            }
        }
    }

    /// Publishing{attempt} → Committed{attempt}: the copies are all in place.
    pub fn commit(&self, attempt: Attempt) -> Result<Shard, Refused> {
        match &self.state {
            ShardState::Publishing { attempt: a } if *a == attempt => Ok(Shard {
                state: ShardState::Committed { attempt },
                ..self.clone()
            }),
            other => Err(Refused::LeaseLost {
                attempt,
                state: other.kind(),
            }),
        }
    }

    /// The staged results of `attempt` cannot be published (incomplete, or in conflict with
    /// what is already at the final keys): an application failure of that attempt.
    pub fn abandon_publish(
        &self,
        attempt: Attempt,
        kind: Failure,
        error: &str,
        policy: &LeasePolicy,
    ) -> Result<Shard, Refused> {
        match &self.state {
            ShardState::Publishing { attempt: a } if *a == attempt => {
                Ok(self.failed(kind, error, policy))
            }
            other => Err(Refused::LeaseLost {
                attempt,
                state: other.kind(),
            }),
        }
    }

    /// A failure of `attempt`, counted as `kind` says: an application failure goes back to
    /// Pending while the budget lasts; an infrastructure failure goes back to Pending with the
    /// budget untouched; a deterministic one fails the shard at once.
    pub fn fail(
        &self,
        attempt: Attempt,
        kind: Failure,
        error: &str,
        now: Millis,
        policy: &LeasePolicy,
    ) -> Result<Shard, Refused> {
        self.holds(attempt, now)?;
        Ok(self.failed(kind, error, policy))
    }

    fn failed(&self, kind: Failure, error: &str, policy: &LeasePolicy) -> Shard {
        let last_error = Some(error.to_owned());
        match kind {
            Failure::Infrastructure => self.infrastructure_failed(error),
            Failure::Application | Failure::Deterministic => {
                let failures = self.failures + 1;
                let spent = kind == Failure::Deterministic || failures >= policy.max_failures;
                Shard {
                    state: if spent {
                        ShardState::Failed
                    } else {
                        ShardState::Pending
                    },
                    failures,
                    last_error,
                    ..self.clone()
                }
            }
        }
    }

    /// An infrastructure failure: Pending again with the budget untouched, unless attempts
    /// have now failed so on [`INFRASTRUCTURE_WORKERS`] different workers.
    fn infrastructure_failed(&self, error: &str) -> Shard {
        let mut infra_workers = self.infra_workers.clone();
        if let ShardState::Leased { worker, .. } = &self.state
            && !infra_workers.contains(worker)
        {
            infra_workers.push(worker.clone());
        }
        let spent = infra_workers.len() >= INFRASTRUCTURE_WORKERS;
        let last_error = if spent {
            format!(
                "infrastructure failures on {} different workers ({}), the last: {error}. The shard itself is the likely cause (does it need more memory or disk than a worker has?): fix that, then `linesweep retry`",
                infra_workers.len(),
                infra_workers.join(", ")
            )
        } else {
            error.to_owned()
        };
        Shard {
            state: if spent {
                ShardState::Failed
            } else {
                ShardState::Pending
            },
            interruptions: self.interruptions + 1,
            last_error: Some(last_error),
            infra_workers,
            ..self.clone()
        }
    }

    /// `attempt` gave its lease back (SIGTERM, spot reclaim): Pending, budget untouched.
    pub fn preempt(&self, attempt: Attempt, now: Millis) -> Result<Shard, Refused> {
        self.holds(attempt, now)?;
        Ok(Shard {
            state: ShardState::Pending,
            interruptions: self.interruptions + 1,
            ..self.clone()
        })
    }

    /// A lease past its expiry goes back to Pending (budget untouched); `None` if nothing to do.
    pub fn expire(&self, now: Millis) -> Option<Shard> {
        match self.state {
            ShardState::Leased { expires_at, .. } if now >= expires_at => Some(Shard {
                state: ShardState::Pending,
                interruptions: self.interruptions + 1,
                ..self.clone()
            }),
            _ => None,
        }
    }

    /// Leased → Pending as an interruption (its worker died with the process that held it:
    /// the embedded mode starting again); `None` otherwise.
    pub fn release(&self) -> Option<Shard> {
        matches!(self.state, ShardState::Leased { .. }).then(|| Shard {
            state: ShardState::Pending,
            interruptions: self.interruptions + 1,
            ..self.clone()
        })
    }

    /// After a coordinator restart: every live lease gets at least one fresh TTL, so that
    /// workers can reconnect before anything expires.
    pub fn restart_grace(&self, now: Millis, policy: &LeasePolicy) -> Shard {
        let mut next = self.clone();
        if let ShardState::Leased { expires_at, .. } = &mut next.state {
            *expires_at = (*expires_at).max(now + policy.ttl_ms);
        }
        next
    }

    /// Storage holds committed results of `attempt` (a ledger rebuilt from the results root):
    /// a shard that is not running or publishing becomes Committed{attempt}, with its attempt
    /// counter at least `attempt`; `None` otherwise (nothing to change, or a live attempt that
    /// will find the results already there).
    pub fn recover(&self, attempt: Attempt) -> Option<Shard> {
        matches!(
            self.state,
            ShardState::Pending
                | ShardState::Failed
                | ShardState::Cancelled
                | ShardState::Waiting
                | ShardState::Held
        )
        .then(|| Shard {
            state: ShardState::Committed { attempt },
            attempts: self.attempts.max(attempt.get()),
            ..self.clone()
        })
    }

    /// A shard that is about to run (new, retried, or released by what it needs) in the state
    /// its needs allow: Pending, Waiting or Held. Other states are left as they are.
    pub fn gate(&self, needs: Needs) -> Shard {
        match self.state {
            ShardState::Pending | ShardState::Waiting | ShardState::Held => Shard {
                state: needs.state(),
                ..self.clone()
            },
            _ => self.clone(),
        }
    }

    /// A Waiting or Held shard whose needs changed: its new state, or `None` if it stays
    /// (a Pending shard is never taken back: what it needed was committed, and commits are
    /// final).
    pub fn settle(&self, needs: Needs) -> Option<Shard> {
        let next = match self.state {
            ShardState::Waiting | ShardState::Held => self.gate(needs),
            _ => return None,
        };
        (next.state != self.state).then_some(next)
    }

    /// A user retry: Failed or Cancelled → Pending with a fresh budget; `None` otherwise
    /// (committed shards are never rerun). A shard with needs is then [gated](Self::gate).
    pub fn retry(&self) -> Option<Shard> {
        matches!(self.state, ShardState::Failed | ShardState::Cancelled).then(|| Shard {
            state: ShardState::Pending,
            failures: 0,
            infra_workers: Vec::new(),
            ..self.clone()
        })
    }

    /// A shard to run again from nothing (`retry --committed`, or a commit whose marker is
    /// missing from the results location): Committed, Failed or Cancelled → Pending with a
    /// fresh budget; `None` otherwise. Its published files must be gone first (the new attempt
    /// publishes create-only): that is also the way out for a failed shard whose publish met
    /// other contents at its keys.
    pub fn rerun(&self) -> Option<Shard> {
        let ended = matches!(
            self.state,
            ShardState::Committed { .. } | ShardState::Failed | ShardState::Cancelled
        );
        ended.then(|| Shard {
            state: ShardState::Pending,
            failures: 0,
            infra_workers: Vec::new(),
            ..self.clone()
        })
    }

    /// A user cancel: Pending, Waiting or Held → Cancelled, and with `running` also Leased → Cancelled (its
    /// next heartbeat is told to stop); `None` otherwise. Publishing shards always finish.
    pub fn cancel(&self, running: bool) -> Option<Shard> {
        let applies = match self.state {
            ShardState::Pending | ShardState::Waiting | ShardState::Held => true,
            ShardState::Leased { .. } => running,
            _ => false,
        };
        applies.then(|| Shard {
            state: ShardState::Cancelled,
            ..self.clone()
        })
    }
}

impl Default for Shard {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(n: u32) -> Attempt {
        Attempt::new(n).unwrap()
    }

    const P: LeasePolicy = LeasePolicy {
        ttl_ms: 1_000,
        max_failures: 2,
    };

    #[test]
    fn needs_gate_a_shard_and_settle_only_waiting_or_held_ones() {
        use StateKind::{Cancelled, Committed, Failed, Held, Leased, Pending};
        assert_eq!(Needs::of([]), Needs::Met);
        assert_eq!(Needs::of([Committed, Committed]), Needs::Met);
        assert_eq!(Needs::of([Committed, Leased]), Needs::Unmet);
        for blocking in [Failed, Cancelled, Held] {
            assert_eq!(Needs::of([Pending, blocking]), Needs::Blocked);
        }
        let waiting = Shard::new().gate(Needs::Unmet);
        assert_eq!(waiting.state, ShardState::Waiting);
        assert!(
            waiting.lease("w", 0, &P).is_err(),
            "a waiting shard is not leased"
        );
        assert_eq!(waiting.settle(Needs::Unmet), None);
        let held = waiting.settle(Needs::Blocked).unwrap();
        assert_eq!(held.state, ShardState::Held);
        assert_eq!(
            held.settle(Needs::Unmet).unwrap().state,
            ShardState::Waiting
        );
        assert_eq!(held.settle(Needs::Met).unwrap().state, ShardState::Pending);
        // What already runs, or ended, is never taken back by its needs.
        let (leased, _) = Shard::new().lease("w", 0, &P).unwrap();
        assert_eq!(leased.settle(Needs::Blocked), None);
        assert_eq!(leased.gate(Needs::Blocked), leased);
        assert_eq!(Shard::new().settle(Needs::Blocked), None);
        // Cancelling covers waiting and held shards; a recovered one is committed.
        assert_eq!(held.cancel(false).unwrap().state, ShardState::Cancelled);
        assert!(matches!(
            waiting.recover(at(3)).unwrap().state,
            ShardState::Committed { .. }
        ));
    }

    #[test]
    fn lease_heartbeat_complete() {
        let (s, a) = Shard::new().lease("w1", 0, &P).unwrap();
        assert_eq!(a, at(1));
        let s = s.heartbeat(at(1), 900, &P).unwrap();
        assert_eq!(
            s.state,
            ShardState::Leased {
                attempt: at(1),
                worker: "w1".into(),
                expires_at: 1_900
            }
        );
        let s = s.complete(at(1), 1_800).unwrap();
        assert_eq!(s.state, ShardState::Committed { attempt: at(1) });
        // Committed shards cannot be leased, retried or completed by another attempt; the
        // same attempt completing again (a lost reply) is answered and changes nothing.
        assert!(s.lease("w2", 2_000, &P).is_err());
        assert!(s.retry().is_none());
        assert_eq!(
            s.complete(at(2), 1_900),
            Err(Refused::LeaseLost {
                attempt: at(2),
                state: StateKind::Committed
            })
        );
        assert_eq!(s.complete(at(1), 1_900), Ok(s.clone()));
    }

    #[test]
    fn stale_attempts_are_fenced_off() {
        let (s, _) = Shard::new().lease("w1", 0, &P).unwrap();
        // w1 stalls past its TTL; the reaper expires it; w2 takes attempt 2.
        let s = s.expire(1_000).unwrap();
        assert_eq!(
            (s.state.clone(), s.interruptions, s.failures),
            (ShardState::Pending, 1, 0)
        );
        let (s, a2) = s.lease("w2", 1_001, &P).unwrap();
        assert_eq!(a2, at(2));
        // w1 wakes up: every call with attempt 1 is refused and changes nothing.
        assert!(matches!(
            s.heartbeat(at(1), 1_002, &P),
            Err(Refused::LeaseLost { attempt, .. }) if attempt == at(1)
        ));
        assert!(matches!(
            s.complete(at(1), 1_002),
            Err(Refused::LeaseLost { .. })
        ));
        assert!(matches!(
            s.fail(at(1), Failure::Application, "x", 1_002, &P),
            Err(Refused::LeaseLost { .. })
        ));
        let done = s.complete(at(2), 1_500).unwrap();
        assert_eq!(done.state, ShardState::Committed { attempt: at(2) });
    }

    #[test]
    fn an_expired_lease_may_commit_until_a_newer_attempt_supersedes_it() {
        let (s, a) = Shard::new().lease("w1", 0, &P).unwrap();
        assert!(s.expire(999).is_none());
        // Expired, not yet reaped: still the latest attempt.
        let done = s.complete(a, 5_000).unwrap();
        assert_eq!(done.state, ShardState::Committed { attempt: a });
        // Reaped back to Pending, nobody has leased it again: still the latest attempt.
        let pending = s.expire(1_000).unwrap();
        let done = pending.complete(a, 5_000).unwrap();
        assert_eq!(done.state, ShardState::Committed { attempt: a });
        // Leased again: the old token is stale and refused.
        let (again, a2) = pending.lease("w2", 1_001, &P).unwrap();
        assert!(matches!(
            again.complete(a, 1_002),
            Err(Refused::LeaseLost { .. })
        ));
        assert!(again.complete(a2, 1_002).is_ok());
        // A token no attempt ever had is refused.
        assert!(matches!(
            Shard::new().complete(Attempt::FIRST, 1),
            Err(Refused::LeaseLost { .. })
        ));
        assert!(matches!(
            pending.complete(a.next(), 1),
            Err(Refused::LeaseLost { .. })
        ));
    }

    #[test]
    fn failures_spend_the_budget_interruptions_do_not() {
        let (s, a) = Shard::new().lease("w", 0, &P).unwrap();
        let s = s.preempt(a, 10).unwrap();
        let (s, a) = s.lease("w", 20, &P).unwrap();
        let s = s.expire(2_000).unwrap();
        assert_eq!((s.failures, s.interruptions), (0, 2));
        let (s, a2) = s.lease("w", 2_001, &P).unwrap();
        assert_eq!((a, a2), (at(2), at(3)));
        let s = s.fail(a2, Failure::Application, "nan", 2_002, &P).unwrap();
        assert_eq!((s.state.clone(), s.failures), (ShardState::Pending, 1));
        let (s, a3) = s.lease("w", 2_003, &P).unwrap();
        let s = s.fail(a3, Failure::Application, "oom", 2_004, &P).unwrap();
        assert_eq!(s.state, ShardState::Failed);
        assert_eq!(s.last_error.as_deref(), Some("oom"));
        // A user retry resets the budget; attempt numbers keep growing.
        let s = s.retry().unwrap();
        let (_, a4) = s.lease("w", 3_000, &P).unwrap();
        assert_eq!(a4, at(5));
    }

    #[test]
    fn restart_grace_extends_but_never_shortens() {
        let (s, _) = Shard::new().lease("w", 0, &P).unwrap();
        let g = s.restart_grace(500, &P);
        assert!(matches!(
            g.state,
            ShardState::Leased {
                expires_at: 1_500,
                ..
            }
        ));
        let g2 = g.restart_grace(100, &P);
        assert!(matches!(
            g2.state,
            ShardState::Leased {
                expires_at: 1_500,
                ..
            }
        ));
        assert_eq!(Shard::new().restart_grace(10, &P), Shard::new());
    }

    #[test]
    fn publishing_is_an_intent_only_its_attempt_can_finish() {
        let (s, a) = Shard::new().lease("w1", 0, &P).unwrap();
        let Ok(Publish::Start(p)) = s.begin_publish(a, 10) else {
            panic!("a live lease starts publishing")
        };
        assert_eq!(p.state, ShardState::Publishing { attempt: a });
        // It never expires, cannot be cancelled, and survives long past the TTL.
        assert!(p.expire(1_000_000).is_none());
        assert!(p.cancel(true).is_none());
        assert_eq!(p.begin_publish(a, 1_000_000), Ok(Publish::Resume));
        assert!(matches!(
            p.begin_publish(a.next(), 20),
            Err(Refused::LeaseLost { .. })
        ));
        assert!(p.commit(a.next()).is_err());
        let c = p.commit(a).unwrap();
        assert_eq!(c.state, ShardState::Committed { attempt: a });
        // A retried completion whose reply was lost is answered, and changes nothing.
        assert_eq!(c.begin_publish(a, 30), Ok(Publish::AlreadyCommitted));
        assert_eq!(c.complete(a, 30), Ok(c.clone()));
        // Abandoning a publish is an application failure of that attempt.
        let Ok(Publish::Start(p)) = s.begin_publish(a, 10) else {
            panic!()
        };
        let back = p
            .abandon_publish(a, Failure::Application, "no runs file", &P)
            .unwrap();
        assert_eq!((back.state, back.failures), (ShardState::Pending, 1));
        let conflict = p
            .abandon_publish(a, Failure::Deterministic, "conflict", &P)
            .unwrap();
        assert_eq!(conflict.state, ShardState::Failed);
    }

    #[test]
    fn infrastructure_failures_keep_the_budget_and_deterministic_ones_fail_at_once() {
        let mut s = Shard::new();
        // A full disk five times over: never failed, every time pending again.
        for i in 0..5 {
            let (leased, a) = s.lease("w", i, &P).unwrap();
            s = leased
                .fail(a, Failure::Infrastructure, "No space left on device", i, &P)
                .unwrap();
            assert_eq!(s.state, ShardState::Pending);
        }
        assert_eq!((s.failures, s.interruptions), (0, 5));
        assert_eq!(s.last_error.as_deref(), Some("No space left on device"));
        // An invalid start cannot succeed on a retry: failed with the first report.
        let (leased, a) = s.lease("w", 10, &P).unwrap();
        let f = leased
            .fail(a, Failure::Deterministic, "eval.starts: step 9999", 10, &P)
            .unwrap();
        assert_eq!((f.state, f.failures), (ShardState::Failed, 1));
    }

    #[test]
    fn infrastructure_failures_on_enough_different_workers_fail_the_shard() {
        let mut s = Shard::new();
        let mut now = 0;
        let mut fail_on = |s: &Shard, worker: &str| {
            now += 1;
            let (leased, a) = s.lease(worker, now, &P).unwrap();
            leased
                .fail(
                    a,
                    Failure::Infrastructure,
                    "out of memory (killed)",
                    now,
                    &P,
                )
                .unwrap()
        };
        // One machine failing it again and again does not fail it...
        for _ in 0..5 {
            s = fail_on(&s, "w1");
        }
        s = fail_on(&s, "w2");
        assert_eq!(s.state, ShardState::Pending);
        // ... a third machine does, saying why and with the budget untouched.
        s = fail_on(&s, "w3");
        assert_eq!((s.state.clone(), s.failures), (ShardState::Failed, 0));
        let why = s.last_error.clone().unwrap();
        assert!(
            why.contains("3 different workers (w1, w2, w3)")
                && why.contains("out of memory (killed)"),
            "{why}"
        );
        // A user retry starts the count again.
        s = s.retry().unwrap();
        assert!(s.infra_workers.is_empty());
        s = fail_on(&s, "w3");
        assert_eq!(s.state, ShardState::Pending);
    }

    #[test]
    fn cancel_and_retry() {
        let (s, a) = Shard::new().lease("w", 0, &P).unwrap();
        assert!(
            s.cancel(false).is_none(),
            "running shards finish unless --now"
        );
        assert_eq!(
            Shard::new().cancel(false).unwrap().state,
            ShardState::Cancelled
        );
        let c = s.cancel(true).unwrap();
        assert_eq!(c.state, ShardState::Cancelled);
        assert!(matches!(
            c.heartbeat(a, 1, &P),
            Err(Refused::LeaseLost {
                state: StateKind::Cancelled,
                ..
            })
        ));
        assert!(c.cancel(true).is_none());
        assert_eq!(c.retry().unwrap().state, ShardState::Pending);
    }
}
