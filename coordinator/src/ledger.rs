//! The SQLite ledger: sweeps, shards and an append-only event log.
//!
//! **Architecture invariant:** this is the only SQL in the repository, and every state change
//! is one savepoint: load the shard, apply a [`crate::lease`] transition, write the shard and
//! an event row, release. A refused transition rolls back and changes nothing. Outside a batch
//! a savepoint is its own durable transaction; inside one ([`Ledger::begin_batch`]) the
//! service commits many of them with one fsync (group commit) before answering any. The database is opened in WAL mode with an exclusive lock held for the life of the
//! connection, so a second coordinator on the same file is refused instead of corrupting it.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::lease::{LeasePolicy, Millis, Publish, Refused, Shard, ShardState};

/// The ledger refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A fenced-off or out-of-place transition; nothing changed.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The shard is not in the ledger.
    #[error("no shard {shard} in sweep {sweep}")]
    UnknownShard { sweep: String, shard: String },
    /// The sweep is not in the ledger.
    #[error("no sweep named {0}")]
    UnknownSweep(String),
    /// A resubmission changed the sweep's shared settings; `old` and `new` are their JSON.
    #[error("sweep {sweep} already exists with other settings")]
    Changed {
        sweep: String,
        old: String,
        new: String,
    },
    /// A resubmission names another results location.
    #[error("sweep {sweep} writes its results to {old}, not {new}")]
    ResultsMoved {
        sweep: String,
        old: String,
        new: String,
    },
    /// Another process holds the state file.
    #[error("{path} is in use by another coordinator")]
    Locked { path: String },
    /// The state file is not a ledger, or a row is inconsistent; nothing was overwritten.
    #[error("{path}: corrupt coordinator state: {message}")]
    Corrupt { path: String, message: String },
    /// Any other SQLite failure.
    #[error("coordinator state: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// A lease handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Sweep name.
    pub sweep: String,
    /// Shard id.
    pub shard: String,
    /// The fencing token: every later call names it.
    pub attempt: u32,
    /// The shard's canonical config JSON.
    pub config_json: String,
}

/// A sweep's own settings, as submitted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepMeta {
    /// Storage root of the results (empty: none; only the coordinator benchmark does that).
    pub results: String,
    /// The spec's shared settings as canonical JSON: a resubmission that changes them is
    /// refused unless the user says so.
    pub base_json: String,
}

/// How a submission relates to what the ledger has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitMode {
    /// The first (or only) message of a submission.
    Start {
        /// Accept changed shared settings (`submit --new`).
        allow_changed: bool,
    },
    /// A further message of a large submission: the sweep must exist.
    Continuation,
}

/// One shard as listed for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRow {
    /// Shard id.
    pub id: String,
    /// State and counters.
    pub shard: Shard,
}

/// A sweep's state in one read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepStatus {
    /// Shards per state name.
    pub counts: BTreeMap<String, u64>,
    /// Application failures, all shards.
    pub failures: u64,
    /// Expiries and preemptions, all shards.
    pub interruptions: u64,
    /// Failed shards.
    pub failed: Vec<ShardRow>,
    /// Leased and publishing shards.
    pub running: Vec<ShardRow>,
    /// Number of commits, and the times of the first and last.
    pub commits: (u64, Millis, Millis),
    /// The sweep's results location.
    pub results: String,
}

/// What a submission changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// Shards new to the ledger.
    pub added: usize,
    /// Shards it already had (left as they are).
    pub existing: usize,
}

const SCHEMA: &str = "
create table if not exists sweeps (
    name text primary key,
    created_ms integer not null,
    results text not null,
    base_json text not null
);
create table if not exists shards (
    sweep text not null references sweeps(name),
    id text not null,
    config_json text not null,
    state text not null,
    attempts integer not null default 0,
    worker text,
    expires_at integer,
    -- the attempt being published (state 'publishing') or committed (state 'committed')
    committed_attempt integer,
    failures integer not null default 0,
    interruptions integer not null default 0,
    last_error text,
    primary key (sweep, id)
);
create index if not exists shards_by_state on shards(state);
create table if not exists events (
    seq integer primary key autoincrement,
    at_ms integer not null,
    sweep text not null,
    shard text not null,
    attempt integer not null,
    kind text not null,
    detail text
);
";

/// The durable ledger.
pub struct Ledger {
    conn: Connection,
    policy: LeasePolicy,
    path: String,
}

impl Ledger {
    /// Opens (creating if needed) the state file at `path`.
    pub fn open(path: &Path, policy: LeasePolicy) -> Result<Self, LedgerError> {
        let name = path.display().to_string();
        // SQLite takes an empty file for a new database; for a coordinator it means a ledger
        // lost (truncated, or replaced by a failed copy). Starting afresh would forget every
        // committed shard, so it is refused like any corrupt file. A new ledger is a file that
        // does not exist yet.
        if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0) {
            return Err(LedgerError::Corrupt {
                path: name,
                message: "the file is empty (a lost ledger?); remove it to start a new one".into(),
            });
        }
        let conn = Connection::open(path)?;
        Self::init(conn, policy, name)
    }

    /// A ledger that lives in memory (tests, benchmarks).
    pub fn in_memory(policy: LeasePolicy) -> Result<Self, LedgerError> {
        Self::init(Connection::open_in_memory()?, policy, ":memory:".into())
    }

    fn init(conn: Connection, policy: LeasePolicy, path: String) -> Result<Self, LedgerError> {
        let classify = |e: rusqlite::Error, path: &str| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                LedgerError::Locked {
                    path: path.to_owned(),
                }
            }
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
                LedgerError::Corrupt {
                    path: path.to_owned(),
                    message: e.to_string(),
                }
            }
            _ => LedgerError::Sqlite(e),
        };
        // A second coordinator should be told at once, not after SQLite's default 5 s wait.
        conn.busy_timeout(std::time::Duration::from_millis(200))
            .map_err(|e| classify(e, &path))?;
        // Exclusive locking keeps the write lock for the connection's life: a second
        // coordinator fails here instead of interleaving writes.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(|e| classify(e, &path))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| classify(e, &path))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| classify(e, &path))?;
        conn.execute_batch("begin exclusive; commit;")
            .map_err(|e| classify(e, &path))?;
        let ok: String = conn
            .query_row("pragma quick_check", [], |r| r.get(0))
            .map_err(|e| classify(e, &path))?;
        if ok != "ok" {
            return Err(LedgerError::Corrupt { path, message: ok });
        }
        conn.execute_batch(SCHEMA).map_err(|e| classify(e, &path))?;
        Ok(Self { conn, policy, path })
    }

    /// Opens a group-commit batch: the operations that follow are savepoints inside one
    /// transaction, made durable together by [`Self::commit_batch`] (one fsync for many
    /// operations). Callers must not report an operation's outcome before that commit.
    pub fn begin_batch(&mut self) -> Result<(), LedgerError> {
        if self.conn.is_autocommit() {
            self.conn.execute_batch("begin immediate")?;
        }
        Ok(())
    }

    /// Commits the open batch, if any.
    pub fn commit_batch(&mut self) -> Result<(), LedgerError> {
        if !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("commit")
        {
            // Leave no half-open transaction behind: the batch is lost as a whole.
            let _ = self.conn.execute_batch("rollback");
            return Err(e.into());
        }
        Ok(())
    }

    /// The lease policy in force.
    pub fn policy(&self) -> &LeasePolicy {
        &self.policy
    }

    /// [`Self::submit_sweep`] with empty settings (tests and the coordinator benchmark).
    pub fn submit(
        &mut self,
        sweep: &str,
        shards: &[(String, String)],
        now: Millis,
    ) -> Result<Submitted, LedgerError> {
        let mode = SubmitMode::Start {
            allow_changed: false,
        };
        self.submit_sweep(sweep, &SweepMeta::default(), mode, shards, now)
    }

    /// Adds a sweep's shards; shards already present are left untouched (resubmitting the same
    /// spec creates nothing; adding seeds adds only the new shards). A sweep whose shared
    /// settings changed is refused ([`LedgerError::Changed`]) unless `allow_changed`.
    pub fn submit_sweep(
        &mut self,
        sweep: &str,
        meta: &SweepMeta,
        mode: SubmitMode,
        shards: &[(String, String)],
        now: Millis,
    ) -> Result<Submitted, LedgerError> {
        let tx = self.conn.savepoint()?;
        let known: Option<(String, String)> = tx
            .query_row(
                "select results, base_json from sweeps where name = ?1",
                [sweep],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match (known, mode) {
            (None, SubmitMode::Continuation) => {
                return Err(LedgerError::UnknownSweep(sweep.into()));
            }
            (None, SubmitMode::Start { .. }) => {
                tx.execute(
                    "insert into sweeps(name, created_ms, results, base_json) values (?1, ?2, ?3, ?4)",
                    params![sweep, now, meta.results, meta.base_json],
                )?;
            }
            (Some((results, _)), _) if results != meta.results => {
                return Err(LedgerError::ResultsMoved {
                    sweep: sweep.into(),
                    old: results,
                    new: meta.results.clone(),
                });
            }
            (Some((_, base)), SubmitMode::Start { allow_changed }) if base != meta.base_json => {
                if !allow_changed {
                    return Err(LedgerError::Changed {
                        sweep: sweep.into(),
                        old: base,
                        new: meta.base_json.clone(),
                    });
                }
                tx.execute(
                    "update sweeps set base_json = ?2 where name = ?1",
                    params![sweep, meta.base_json],
                )?;
            }
            (Some(_), _) => {}
        }
        let mut added = 0;
        {
            let mut insert = tx.prepare(
                "insert or ignore into shards(sweep, id, config_json, state) values (?1, ?2, ?3, 'pending')",
            )?;
            for (id, config) in shards {
                added += insert.execute(params![sweep, id, config])?;
            }
        }
        tx.commit()?;
        Ok(Submitted {
            added,
            existing: shards.len() - added,
        })
    }

    /// Leases the oldest pending shard to `worker`, or `None` when nothing is pending.
    pub fn lease(&mut self, worker: &str, now: Millis) -> Result<Option<Lease>, LedgerError> {
        let policy = self.policy;
        let tx = self.conn.savepoint()?;
        let next: Option<(String, String, String)> = tx
            .query_row(
                "select sweep, id, config_json from shards where state = 'pending' order by rowid limit 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((sweep, shard, config_json)) = next else {
            return Ok(None);
        };
        let current = load(&tx, &self.path, &sweep, &shard)?;
        let (leased, attempt) = current.lease(worker, now, &policy)?;
        store(&tx, &sweep, &shard, &leased)?;
        event(&tx, now, &sweep, &shard, attempt, "leased", Some(worker))?;
        tx.commit()?;
        Ok(Some(Lease {
            sweep,
            shard,
            attempt,
            config_json,
        }))
    }

    fn transition(
        &mut self,
        (sweep, shard, attempt): (&str, &str, u32),
        now: Millis,
        logged: Option<(&str, Option<&str>)>,
        f: impl FnOnce(&Shard) -> Result<Shard, Refused>,
    ) -> Result<Shard, LedgerError> {
        let tx = self.conn.savepoint()?;
        let current = load(&tx, &self.path, sweep, shard)?;
        let next = f(&current)?;
        store(&tx, sweep, shard, &next)?;
        if let Some((kind, detail)) = logged {
            event(&tx, now, sweep, shard, attempt, kind, detail)?;
        }
        tx.commit()?;
        Ok(next)
    }

    /// Renews the lease of `attempt`.
    pub fn heartbeat(
        &mut self,
        sweep: &str,
        shard: &str,
        attempt: u32,
        now: Millis,
    ) -> Result<(), LedgerError> {
        let policy = self.policy;
        // Heartbeats are frequent and say nothing new: no event row.
        self.transition((sweep, shard, attempt), now, None, |s| {
            s.heartbeat(attempt, now, &policy)
        })
        .map(|_| ())
    }

    /// Commits the results of `attempt` with nothing to publish (tests, benchmark).
    pub fn complete(
        &mut self,
        sweep: &str,
        shard: &str,
        attempt: u32,
        now: Millis,
    ) -> Result<(), LedgerError> {
        // A repeated completion of the committed attempt is answered without a second event.
        if self.shard(sweep, shard)?.state == (ShardState::Committed { attempt }) {
            return Ok(());
        }
        self.transition(
            (sweep, shard, attempt),
            now,
            Some(("committed", None)),
            |s| s.complete(attempt, now),
        )
        .map(|_| ())
    }

    /// Records the intent to publish `attempt`'s staged results (see [`Shard::begin_publish`]).
    /// The returned [`Publish::Start`] has already been stored.
    pub fn begin_publish(
        &mut self,
        sweep: &str,
        shard: &str,
        attempt: u32,
        now: Millis,
    ) -> Result<Publish, LedgerError> {
        let tx = self.conn.savepoint()?;
        let current = load(&tx, &self.path, sweep, shard)?;
        let decision = current.begin_publish(attempt, now)?;
        if let Publish::Start(next) = &decision {
            store(&tx, sweep, shard, next)?;
            event(&tx, now, sweep, shard, attempt, "publishing", None)?;
        }
        tx.commit()?;
        Ok(decision)
    }

    /// The copies of `attempt` are in place: Publishing → Committed.
    pub fn commit(
        &mut self,
        sweep: &str,
        shard: &str,
        attempt: u32,
        now: Millis,
    ) -> Result<(), LedgerError> {
        self.transition(
            (sweep, shard, attempt),
            now,
            Some(("committed", None)),
            |s| s.commit(attempt),
        )
        .map(|_| ())
    }

    /// `attempt`'s staged results cannot be published; counts as an application failure.
    pub fn abandon_publish(
        &mut self,
        sweep: &str,
        shard: &str,
        attempt: u32,
        error: &str,
        now: Millis,
    ) -> Result<ShardState, LedgerError> {
        let policy = self.policy;
        self.transition(
            (sweep, shard, attempt),
            now,
            Some(("publish-failed", Some(error))),
            |s| s.abandon_publish(attempt, error, &policy),
        )
        .map(|s| s.state)
    }

    /// Shards caught between intent and commit (after a crash): `(sweep, shard, attempt)`.
    pub fn publishing(&self) -> Result<Vec<(String, String, u32)>, LedgerError> {
        let mut q = self.conn.prepare(
            "select sweep, id, committed_attempt from shards where state = 'publishing' order by rowid",
        )?;
        let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The results location of a sweep.
    pub fn results(&self, sweep: &str) -> Result<String, LedgerError> {
        self.conn
            .query_row("select results from sweeps where name = ?1", [sweep], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| LedgerError::UnknownSweep(sweep.into()))
    }

    /// Records an application failure of `attempt`; returns the shard's new state.
    pub fn fail(
        &mut self,
        sweep: &str,
        shard: &str,
        attempt: u32,
        error: &str,
        now: Millis,
    ) -> Result<ShardState, LedgerError> {
        let policy = self.policy;
        self.transition(
            (sweep, shard, attempt),
            now,
            Some(("failed", Some(error))),
            |s| s.fail(attempt, error, now, &policy),
        )
        .map(|s| s.state)
    }

    /// `attempt` released its lease (preempted); the budget is untouched.
    pub fn preempt(
        &mut self,
        sweep: &str,
        shard: &str,
        attempt: u32,
        now: Millis,
    ) -> Result<(), LedgerError> {
        self.transition(
            (sweep, shard, attempt),
            now,
            Some(("preempted", None)),
            |s| s.preempt(attempt, now),
        )
        .map(|_| ())
    }

    /// Returns every lease past its expiry to pending; reports `(sweep, shard, attempt)`.
    pub fn expire_leases(
        &mut self,
        now: Millis,
    ) -> Result<Vec<(String, String, u32)>, LedgerError> {
        let tx = self.conn.savepoint()?;
        let due: Vec<(String, String)> = {
            let mut q = tx.prepare(
                "select sweep, id from shards where state = 'leased' and expires_at <= ?1",
            )?;
            q.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        let mut expired = Vec::new();
        for (sweep, shard) in due {
            let current = load(&tx, &self.path, &sweep, &shard)?;
            if let Some(next) = current.expire(now) {
                store(&tx, &sweep, &shard, &next)?;
                event(&tx, now, &sweep, &shard, current.attempts, "expired", None)?;
                expired.push((sweep, shard, current.attempts));
            }
        }
        tx.commit()?;
        Ok(expired)
    }

    /// Returns every lease to pending as an interruption (budget untouched): for the embedded
    /// mode, whose workers died with the process that held the leases. Returns how many.
    pub fn release_all(&mut self, now: Millis) -> Result<usize, LedgerError> {
        let tx = self.conn.savepoint()?;
        let held: Vec<(String, String)> = {
            let mut q = tx.prepare("select sweep, id from shards where state = 'leased'")?;
            q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        for (sweep, shard) in &held {
            let current = load(&tx, &self.path, sweep, shard)?;
            let next = Shard {
                state: ShardState::Pending,
                interruptions: current.interruptions + 1,
                ..current.clone()
            };
            store(&tx, sweep, shard, &next)?;
            event(&tx, now, sweep, shard, current.attempts, "released", None)?;
        }
        tx.commit()?;
        Ok(held.len())
    }

    /// After a restart: gives every live lease at least one fresh TTL. Returns how many.
    pub fn restart_grace(&mut self, now: Millis) -> Result<usize, LedgerError> {
        let policy = self.policy;
        let tx = self.conn.savepoint()?;
        let n = tx.execute(
            "update shards set expires_at = max(expires_at, ?1) where state = 'leased'",
            [now + policy.ttl_ms],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// Reruns failed and cancelled shards of `sweep` (all of them, or only those in `only`).
    /// Committed shards are never rerun. Returns how many shards went back to pending.
    pub fn retry(
        &mut self,
        sweep: &str,
        only: Option<&[String]>,
        now: Millis,
    ) -> Result<usize, LedgerError> {
        self.bulk(sweep, only, now, "retried", &Shard::retry)
    }

    /// Cancels the pending shards of `sweep`, and with `running` the leased ones too.
    /// Returns how many.
    pub fn cancel(
        &mut self,
        sweep: &str,
        running: bool,
        now: Millis,
    ) -> Result<usize, LedgerError> {
        self.bulk(sweep, None, now, "cancelled", &|s: &Shard| {
            s.cancel(running)
        })
    }

    fn bulk(
        &mut self,
        sweep: &str,
        only: Option<&[String]>,
        now: Millis,
        kind: &str,
        f: &dyn Fn(&Shard) -> Option<Shard>,
    ) -> Result<usize, LedgerError> {
        let tx = self.conn.savepoint()?;
        let exists: bool = tx.query_row(
            "select exists(select 1 from sweeps where name = ?1)",
            [sweep],
            |r| r.get(0),
        )?;
        if !exists {
            return Err(LedgerError::UnknownSweep(sweep.into()));
        }
        let ids: Vec<String> = {
            let mut q = tx.prepare("select id from shards where sweep = ?1 order by rowid")?;
            q.query_map([sweep], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        if let Some(wanted) = only
            && let Some(missing) = wanted.iter().find(|w| !ids.contains(w))
        {
            return Err(LedgerError::UnknownShard {
                sweep: sweep.into(),
                shard: missing.clone(),
            });
        }
        let mut changed = 0;
        for id in ids.iter().filter(|id| only.is_none_or(|w| w.contains(id))) {
            let current = load(&tx, &self.path, sweep, id)?;
            if let Some(next) = f(&current) {
                store(&tx, sweep, id, &next)?;
                event(&tx, now, sweep, id, current.attempts, kind, None)?;
                changed += 1;
            }
        }
        tx.commit()?;
        Ok(changed)
    }

    /// One shard's state and counters.
    pub fn shard(&self, sweep: &str, shard: &str) -> Result<Shard, LedgerError> {
        load(&self.conn, &self.path, sweep, shard)
    }

    /// Shards of `sweep` per state name.
    pub fn counts(&self, sweep: &str) -> Result<BTreeMap<String, u64>, LedgerError> {
        let mut q = self
            .conn
            .prepare("select state, count(*) from shards where sweep = ?1 group by state")?;
        let rows = q.query_map([sweep], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every shard of `sweep`, in submission order.
    pub fn shards(&self, sweep: &str) -> Result<Vec<ShardRow>, LedgerError> {
        self.rows(sweep, "1")
    }

    fn rows(&self, sweep: &str, filter: &str) -> Result<Vec<ShardRow>, LedgerError> {
        let ids: Vec<String> = {
            let mut q = self.conn.prepare(&format!(
                "select id from shards where sweep = ?1 and ({filter}) order by rowid"
            ))?;
            q.query_map([sweep], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        ids.into_iter()
            .map(|id| {
                let shard = load(&self.conn, &self.path, sweep, &id)?;
                Ok(ShardRow { id, shard })
            })
            .collect()
    }

    /// Leased shards per worker, as `sweep/shard`.
    pub fn leases_by_worker(&self) -> Result<BTreeMap<String, Vec<String>>, LedgerError> {
        let mut q = self.conn.prepare(
            "select worker, sweep, id from shards where state = 'leased' order by rowid",
        )?;
        let rows = q.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in rows {
            let (w, sweep, id) = row?;
            out.entry(w).or_default().push(format!("{sweep}/{id}"));
        }
        Ok(out)
    }

    /// Counts, counters, failed and running shards, and the commit rate of `sweep`.
    pub fn status(&self, sweep: &str) -> Result<SweepStatus, LedgerError> {
        let results = self.results(sweep)?;
        let (failures, interruptions): (i64, i64) = self.conn.query_row(
            "select coalesce(sum(failures), 0), coalesce(sum(interruptions), 0) from shards where sweep = ?1",
            [sweep],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let commits: (i64, Option<i64>, Option<i64>) = self.conn.query_row(
            "select count(*), min(at_ms), max(at_ms) from events where sweep = ?1 and kind = 'committed'",
            [sweep],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok(SweepStatus {
            counts: self.counts(sweep)?,
            failures: failures as u64,
            interruptions: interruptions as u64,
            failed: self.rows(sweep, "state = 'failed'")?,
            running: self.rows(sweep, "state in ('leased', 'publishing')")?,
            commits: (
                commits.0 as u64,
                commits.1.unwrap_or(0),
                commits.2.unwrap_or(0),
            ),
            results,
        })
    }

    /// Number of events recorded for a shard of a given kind (audits: "why did it run twice").
    pub fn events(&self, sweep: &str, shard: &str, kind: &str) -> Result<u64, LedgerError> {
        let n: i64 = self.conn.query_row(
            "select count(*) from events where sweep = ?1 and shard = ?2 and kind = ?3",
            params![sweep, shard, kind],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }
}

fn load(conn: &Connection, path: &str, sweep: &str, shard: &str) -> Result<Shard, LedgerError> {
    type Row = (
        String,
        u32,
        Option<String>,
        Option<i64>,
        Option<u32>,
        u32,
        u32,
        Option<String>,
    );
    let row: Option<Row> = conn
        .query_row(
            "select state, attempts, worker, expires_at, committed_attempt, failures, interruptions, last_error
             from shards where sweep = ?1 and id = ?2",
            [sweep, shard],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)),
        )
        .optional()?;
    let Some((state, attempts, worker, expires_at, committed, failures, interruptions, last_error)) =
        row
    else {
        return Err(LedgerError::UnknownShard {
            sweep: sweep.into(),
            shard: shard.into(),
        });
    };
    let corrupt = |what: &str| LedgerError::Corrupt {
        path: path.into(),
        message: format!("shard {sweep}/{shard}: {what}"),
    };
    let state = match (state.as_str(), worker, expires_at, committed) {
        ("pending", ..) => ShardState::Pending,
        ("leased", Some(worker), Some(expires_at), _) => ShardState::Leased {
            attempt: attempts,
            worker,
            expires_at,
        },
        ("publishing", _, _, Some(attempt)) => ShardState::Publishing { attempt },
        ("committed", _, _, Some(attempt)) => ShardState::Committed { attempt },
        ("failed", ..) => ShardState::Failed,
        ("cancelled", ..) => ShardState::Cancelled,
        (other, ..) => return Err(corrupt(&format!("inconsistent state `{other}`"))),
    };
    Ok(Shard {
        state,
        attempts,
        failures,
        interruptions,
        last_error,
    })
}

fn store(conn: &Connection, sweep: &str, shard: &str, s: &Shard) -> Result<(), LedgerError> {
    let (worker, expires_at, committed) = match &s.state {
        ShardState::Leased {
            worker, expires_at, ..
        } => (Some(worker.as_str()), Some(*expires_at), None),
        ShardState::Publishing { attempt } | ShardState::Committed { attempt } => {
            (None, None, Some(*attempt))
        }
        _ => (None, None, None),
    };
    conn.execute(
        "update shards set state = ?3, attempts = ?4, worker = ?5, expires_at = ?6, committed_attempt = ?7,
         failures = ?8, interruptions = ?9, last_error = ?10 where sweep = ?1 and id = ?2",
        params![sweep, shard, s.state.name(), s.attempts, worker, expires_at, committed, s.failures, s.interruptions, s.last_error],
    )?;
    Ok(())
}

fn event(
    conn: &Connection,
    now: Millis,
    sweep: &str,
    shard: &str,
    attempt: u32,
    kind: &str,
    detail: Option<&str>,
) -> Result<(), LedgerError> {
    conn.execute(
        "insert into events(at_ms, sweep, shard, attempt, kind, detail) values (?1, ?2, ?3, ?4, ?5, ?6)",
        params![now, sweep, shard, attempt, kind, detail],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: LeasePolicy = LeasePolicy {
        ttl_ms: 1_000,
        max_failures: 2,
    };

    fn shards(n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("s{i}"), format!("{{\"seed\":{i}}}")))
            .collect()
    }

    #[test]
    fn an_empty_state_file_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.db");
        std::fs::write(&path, b"").unwrap();
        let err = Ledger::open(&path, P).err().expect("refused").to_string();
        assert!(err.contains("state.db") && err.contains("empty"), "{err}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        // A file that does not exist yet is a new ledger.
        std::fs::remove_file(&path).unwrap();
        assert!(Ledger::open(&path, P).is_ok());
    }

    #[test]
    fn resubmission_creates_nothing_and_new_seeds_add_only_themselves() {
        let mut l = Ledger::in_memory(P).unwrap();
        assert_eq!(
            l.submit("sw", &shards(3), 0).unwrap(),
            Submitted {
                added: 3,
                existing: 0
            }
        );
        assert_eq!(
            l.submit("sw", &shards(3), 1).unwrap(),
            Submitted {
                added: 0,
                existing: 3
            }
        );
        assert_eq!(
            l.submit("sw", &shards(5), 2).unwrap(),
            Submitted {
                added: 2,
                existing: 3
            }
        );
        assert_eq!(l.counts("sw").unwrap().get("pending"), Some(&5));
    }

    #[test]
    fn every_shard_is_leased_once_then_committed_once() {
        let mut l = Ledger::in_memory(P).unwrap();
        l.submit("sw", &shards(3), 0).unwrap();
        let mut leases = Vec::new();
        while let Some(lease) = l.lease("w", 10).unwrap() {
            leases.push(lease);
        }
        assert_eq!(leases.len(), 3);
        for lease in &leases {
            l.complete(&lease.sweep, &lease.shard, lease.attempt, 20)
                .unwrap();
            // A second completion by another attempt (duplicate publisher) is refused; the same
            // attempt retrying after a lost reply is answered and changes nothing.
            assert!(matches!(
                l.complete(&lease.sweep, &lease.shard, lease.attempt + 1, 21),
                Err(LedgerError::Refused(Refused::LeaseLost { .. }))
            ));
            l.complete(&lease.sweep, &lease.shard, lease.attempt, 21)
                .unwrap();
            assert_eq!(
                l.events(&lease.sweep, &lease.shard, "committed").unwrap(),
                1
            );
        }
        assert_eq!(l.counts("sw").unwrap().get("committed"), Some(&3));
        assert!(l.lease("w", 30).unwrap().is_none());
    }

    #[test]
    fn expired_lease_is_released_and_the_zombie_is_fenced() {
        let mut l = Ledger::in_memory(P).unwrap();
        l.submit("sw", &shards(1), 0).unwrap();
        let first = l.lease("w1", 0).unwrap().unwrap();
        assert_eq!(l.expire_leases(999).unwrap().len(), 0);
        assert_eq!(
            l.expire_leases(1_000).unwrap(),
            vec![("sw".into(), "s0".into(), 1)]
        );
        let second = l.lease("w2", 1_001).unwrap().unwrap();
        assert_eq!(second.attempt, 2);
        assert!(matches!(
            l.heartbeat("sw", "s0", first.attempt, 1_002),
            Err(LedgerError::Refused(_))
        ));
        assert!(matches!(
            l.complete("sw", "s0", first.attempt, 1_002),
            Err(LedgerError::Refused(_))
        ));
        l.complete("sw", "s0", second.attempt, 1_500).unwrap();
        let s = l.shard("sw", "s0").unwrap();
        assert_eq!(
            (s.state, s.interruptions, s.failures),
            (ShardState::Committed { attempt: 2 }, 1, 0)
        );
        assert_eq!(l.events("sw", "s0", "committed").unwrap(), 1);
    }

    #[test]
    fn retry_reruns_only_failed_shards() {
        let mut l = Ledger::in_memory(P).unwrap();
        l.submit("sw", &shards(2), 0).unwrap();
        let a = l.lease("w", 0).unwrap().unwrap();
        let b = l.lease("w", 0).unwrap().unwrap();
        l.complete("sw", &a.shard, a.attempt, 1).unwrap();
        assert_eq!(
            l.fail("sw", &b.shard, b.attempt, "nan loss", 1).unwrap(),
            ShardState::Pending
        );
        let b2 = l.lease("w", 2).unwrap().unwrap();
        assert_eq!(
            l.fail("sw", &b2.shard, b2.attempt, "nan loss", 3).unwrap(),
            ShardState::Failed
        );
        assert_eq!(l.retry("sw", None, 4).unwrap(), 1);
        let again = l.lease("w", 5).unwrap().unwrap();
        assert_eq!((again.shard.as_str(), again.attempt), (b.shard.as_str(), 3));
        assert!(matches!(
            l.retry("sw", Some(&["nope".into()]), 6),
            Err(LedgerError::UnknownShard { .. })
        ));
    }

    #[test]
    fn changed_settings_are_refused_unless_allowed_and_results_cannot_move() {
        let mut l = Ledger::in_memory(P).unwrap();
        let meta = |base: &str| SweepMeta {
            results: "/r".into(),
            base_json: base.into(),
        };
        let start = SubmitMode::Start {
            allow_changed: false,
        };
        l.submit_sweep("sw", &meta("{\"a\":1}"), start, &shards(2), 0)
            .unwrap();
        let err = l
            .submit_sweep("sw", &meta("{\"a\":2}"), start, &shards(3), 1)
            .unwrap_err();
        assert!(matches!(err, LedgerError::Changed { .. }), "{err}");
        assert_eq!(l.shards("sw").unwrap().len(), 2, "a refusal adds nothing");
        let allowed = SubmitMode::Start {
            allow_changed: true,
        };
        let r = l
            .submit_sweep("sw", &meta("{\"a\":2}"), allowed, &shards(3), 2)
            .unwrap();
        assert_eq!(r.added, 1);
        let moved = SweepMeta {
            results: "/elsewhere".into(),
            ..meta("{\"a\":2}")
        };
        assert!(matches!(
            l.submit_sweep("sw", &moved, start, &shards(3), 3),
            Err(LedgerError::ResultsMoved { .. })
        ));
        assert!(matches!(
            l.submit_sweep("nope", &meta("{}"), SubmitMode::Continuation, &shards(1), 4),
            Err(LedgerError::UnknownSweep(_))
        ));
    }

    #[test]
    fn a_publish_interrupted_by_a_crash_is_found_again_and_never_expires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut l = Ledger::open(&path, P).unwrap();
            l.submit("sw", &shards(1), 0).unwrap();
            let a = l.lease("w", 0).unwrap().unwrap();
            assert!(matches!(
                l.begin_publish("sw", "s0", a.attempt, 10).unwrap(),
                Publish::Start(_)
            ));
        }
        let mut l = Ledger::open(&path, P).unwrap();
        assert!(l.expire_leases(1_000_000).unwrap().is_empty());
        assert_eq!(l.publishing().unwrap(), vec![("sw".into(), "s0".into(), 1)]);
        assert_eq!(l.cancel("sw", true, 5).unwrap(), 0);
        l.commit("sw", "s0", 1, 1_000_001).unwrap();
        assert!(l.publishing().unwrap().is_empty());
        let st = l.status("sw").unwrap();
        assert_eq!(st.counts.get("committed"), Some(&1));
        assert_eq!(st.commits.0, 1);
    }

    #[test]
    fn state_survives_reopening_with_restart_grace_and_a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut l = Ledger::open(&path, P).unwrap();
            l.submit("sw", &shards(2), 0).unwrap();
            l.lease("w", 0).unwrap().unwrap();
            assert!(matches!(
                Ledger::open(&path, P),
                Err(LedgerError::Locked { .. })
            ));
        }
        let mut l = Ledger::open(&path, P).unwrap();
        // Down for 10 s: without the grace the lease would expire at once.
        assert_eq!(l.restart_grace(10_000).unwrap(), 1);
        assert!(l.expire_leases(10_500).unwrap().is_empty());
        l.heartbeat("sw", "s0", 1, 10_900).unwrap();
        assert_eq!(l.counts("sw").unwrap().get("leased"), Some(&1));
    }

    #[test]
    fn a_file_that_is_not_a_ledger_is_reported_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let junk = b"this is not sqlite, but somebody's precious notes".repeat(100);
        std::fs::write(&path, &junk).unwrap();
        let err = Ledger::open(&path, P).err().expect("junk must be refused");
        assert!(matches!(err, LedgerError::Corrupt { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), junk);
    }
}
