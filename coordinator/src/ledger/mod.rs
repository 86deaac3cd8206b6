//! The SQLite ledger: sweeps, shards and an append-only event log.
//!
//! **Architecture invariant:** this is the only SQL in the repository, and every state change
//! is one savepoint: load the shard, apply a [`crate::lease`] transition, write the shard and
//! an event row, release. A refused transition rolls back and changes nothing. Outside a batch
//! a savepoint is its own durable transaction; inside one ([`Ledger::begin_batch`]) the
//! service commits many of them with one fsync (group commit) before answering any.
//!
//! The database is in WAL mode, and the process holds an exclusive lock on `<state>.lock` for
//! the ledger's life, so a second coordinator on the same file is refused instead of
//! interleaving writes. WAL lets a second connection of the same process read while the
//! writer commits: [`LedgerReader`] (`read.rs`) answers status and listings from it.

mod configs;
mod deps;
mod read;

pub use read::{LedgerReader, Reads, STATUS_LIST_LIMIT};
use read::{SHARD_COLUMNS, load};

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::lease::{
    Attempt, Failure, LeasePolicy, Millis, Publish, Refused, Shard, ShardState, StateKind,
};

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
    /// A submitted shard needs a shard the sweep does not have (parents are submitted
    /// before their children, or in the same message).
    #[error("shard {shard} of sweep {sweep} needs {need}, which the sweep does not have")]
    UnknownNeed {
        sweep: String,
        shard: String,
        need: String,
    },
    /// Submitted shards need each other in a cycle; nothing was submitted.
    #[error("shards need each other in a cycle (among {})", shards.join(", "))]
    Cycle { shards: Vec<String> },
    /// Another process holds the state file.
    #[error("{path} is in use by another coordinator")]
    Locked { path: String },
    /// The state file is not a ledger, or a row is inconsistent; nothing was overwritten.
    #[error("{path}: corrupt coordinator state: {message}")]
    Corrupt { path: String, message: String },
    /// The disk holding the state file is full; nothing was changed.
    #[error("{path}: the disk holding it is full ({message}): free space there, then start again")]
    Full { path: String, message: String },
    /// Any other SQLite failure.
    #[error("coordinator state: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// A SQLite error of the state file `path` as what it means to the user: in use, corrupt, a
/// full disk, or anything else.
fn classify(e: rusqlite::Error, path: &str) -> LedgerError {
    match e.sqlite_error_code() {
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
        Some(rusqlite::ErrorCode::DiskFull) => LedgerError::Full {
            path: path.to_owned(),
            message: e.to_string(),
        },
        _ => LedgerError::Sqlite(e),
    }
}

/// A lease handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Sweep name.
    pub sweep: String,
    /// Shard id.
    pub shard: String,
    /// The fencing token: every later call names it.
    pub attempt: Attempt,
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

/// A shard as submitted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewShard {
    /// Shard id.
    pub id: String,
    /// Canonical config JSON.
    pub config_json: String,
    /// Shards of the same sweep that must be committed before it runs.
    pub needs: Vec<String>,
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
    /// Held shards, each with why ([`deps`]: the needs that block it).
    pub held: Vec<(ShardRow, String)>,
    /// Leased and publishing shards.
    pub running: Vec<ShardRow>,
    /// Number of commits, and the times of the first and last.
    pub commits: (u64, Millis, Millis),
    /// The sweep's results location.
    pub results: String,
}

/// A shard whose committed results were found in storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredShard {
    /// Shard id.
    pub id: String,
    /// The attempt whose results are published.
    pub attempt: Attempt,
    /// Its canonical config JSON (from the `runs` row).
    pub config_json: String,
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
-- `id`: this ledger's identity, random at creation; it names the owner of a sweep's results
create table if not exists ledger_meta (
    key text primary key,
    value text not null
);
create table if not exists sweeps (
    name text primary key,
    created_ms integer not null,
    results text not null,
    base_json text not null
);
create table if not exists shards (
    sweep text not null references sweeps(name),
    id text not null,
    -- empty when config_z holds the config (configs.rs)
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
    config_z blob,
    -- JSON list of the workers an attempt failed on with an infrastructure failure
    infra_workers text,
    primary key (sweep, id)
);
create index if not exists shards_by_state on shards(state);
-- status counts and bulk retry/cancel of one sweep read this index, not the sweep's rows
create index if not exists shards_by_sweep_state on shards(sweep, state);
-- the dictionary each sweep's configs are compressed against (configs.rs)
create table if not exists sweep_dicts (
    sweep text primary key,
    dict blob not null
);
-- one row per sweep: the commit rate without counting events
create table if not exists sweep_commits (
    sweep text primary key,
    n integer not null,
    first_ms integer not null,
    last_ms integer not null
);
-- `child` runs only after `parent` is committed (deps.rs)
create table if not exists deps (
    sweep text not null,
    child text not null,
    parent text not null,
    primary key (sweep, child, parent)
);
create index if not exists deps_by_parent on deps(sweep, parent);
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

/// The path of an in-memory ledger.
const IN_MEMORY: &str = ":memory:";

/// The durable ledger.
pub struct Ledger {
    conn: Connection,
    policy: LeasePolicy,
    path: String,
    /// `<state>.lock`, locked exclusively while the ledger is open (`None` in memory).
    _lock: Option<std::fs::File>,
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
        let lock = Self::lock(path)?;
        let conn = Connection::open(path)?;
        let mut ledger = Self::init(conn, policy, name)?;
        ledger._lock = Some(lock);
        Ok(ledger)
    }

    /// This ledger's identity (random, created with the file): the owner that a results
    /// location's owner marker names.
    pub fn id(&self) -> Result<String, LedgerError> {
        let fresh = format!("{:032x}", rand::random::<u128>());
        self.conn.execute(
            "insert or ignore into ledger_meta(key, value) values ('id', ?1)",
            [fresh],
        )?;
        Ok(self
            .conn
            .query_row("select value from ledger_meta where key = 'id'", [], |r| {
                r.get(0)
            })?)
    }

    /// The state file's path, as given.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Takes the exclusive lock of the ledger at `path` (held until the file is closed).
    fn lock(path: &Path) -> Result<std::fs::File, LedgerError> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = std::path::PathBuf::from(lock_path);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| LedgerError::Corrupt {
                path: lock_path.display().to_string(),
                message: format!("cannot open the lock file: {e}"),
            })?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(LedgerError::Locked {
                path: path.display().to_string(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(LedgerError::Corrupt {
                path: lock_path.display().to_string(),
                message: format!("cannot lock: {e}"),
            }),
        }
    }

    /// A ledger that lives in memory (tests, benchmarks).
    pub fn in_memory(policy: LeasePolicy) -> Result<Self, LedgerError> {
        Self::init(Connection::open_in_memory()?, policy, IN_MEMORY.into())
    }

    fn init(conn: Connection, policy: LeasePolicy, path: String) -> Result<Self, LedgerError> {
        // Readers of this process (status) may hold the WAL briefly; nobody else writes.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| classify(e, &path))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| classify(e, &path))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| classify(e, &path))?;
        let ok: String = conn
            .query_row("pragma quick_check", [], |r| r.get(0))
            .map_err(|e| classify(e, &path))?;
        if ok != "ok" {
            return Err(LedgerError::Corrupt { path, message: ok });
        }
        conn.execute_batch(SCHEMA).map_err(|e| classify(e, &path))?;
        migrate(&conn).map_err(|e| classify(e, &path))?;
        // A ledger written before `sweep_commits` existed: its rates, from its events, once.
        conn.execute(
            "insert or ignore into sweep_commits(sweep, n, first_ms, last_ms)
             select sweep, count(*), min(at_ms), max(at_ms) from events
             where kind = ?1 and not exists (select 1 from sweep_commits)
             group by sweep",
            [COMMITTED_EVENT],
        )
        .map_err(|e| classify(e, &path))?;
        Ok(Self {
            conn,
            policy,
            path,
            _lock: None,
        })
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
        let shards: Vec<NewShard> = shards
            .iter()
            .map(|(id, config_json)| NewShard {
                id: id.clone(),
                config_json: config_json.clone(),
                needs: Vec::new(),
            })
            .collect();
        self.submit_sweep(sweep, &SweepMeta::default(), mode, &shards, now)
    }

    /// Adds a sweep's shards; shards already present are left untouched (resubmitting the same
    /// spec creates nothing; adding seeds adds only the new shards). A sweep whose shared
    /// settings changed is refused ([`LedgerError::Changed`]) unless `allow_changed`. New
    /// shards with needs start Waiting, Pending or Held as those needs say; a need the sweep
    /// does not have, or a cycle, refuses the whole message.
    pub fn submit_sweep(
        &mut self,
        sweep: &str,
        meta: &SweepMeta,
        mode: SubmitMode,
        shards: &[NewShard],
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
                // A sweep rebuilt from storage has no recorded settings: the first
                // submission's are adopted.
                if !allow_changed && !base.is_empty() {
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
        let mut needing: Vec<(&str, &[String])> = Vec::new();
        if let Some(first) = shards.first() {
            let mut packer = configs::Packer::of(&tx, sweep, &first.config_json)?;
            let mut insert = tx.prepare(
                "insert or ignore into shards(sweep, id, config_json, config_z, state) values (?1, ?2, '', ?3, ?4)",
            )?;
            let pending = StateKind::Pending.name();
            for s in shards {
                let packed = packer.pack(sweep, &s.config_json)?;
                let new = insert.execute(params![sweep, s.id, packed, pending])?;
                if new == 1 && !s.needs.is_empty() {
                    needing.push((&s.id, &s.needs));
                }
                added += new;
            }
        }
        deps::record(&tx, &self.path, sweep, &needing, now)?;
        tx.commit()?;
        Ok(Submitted {
            added,
            existing: shards.len() - added,
        })
    }

    /// Records shards that storage holds committed results of (`linesweep serve --recover`):
    /// unknown ones are added as committed, known ones that are not running become committed
    /// ([`Shard::recover`]). The sweep is created if unknown, with no recorded settings (its
    /// next submission's are adopted). Returns how many shards changed.
    pub fn recover(
        &mut self,
        sweep: &str,
        results: &str,
        found: &[RecoveredShard],
        now: Millis,
    ) -> Result<usize, LedgerError> {
        let tx = self.conn.savepoint()?;
        let known: Option<String> = tx
            .query_row("select results from sweeps where name = ?1", [sweep], |r| {
                r.get(0)
            })
            .optional()?;
        match known {
            None => {
                tx.execute(
                    "insert into sweeps(name, created_ms, results, base_json) values (?1, ?2, ?3, '')",
                    params![sweep, now, results],
                )?;
            }
            Some(old) if old != results => {
                return Err(LedgerError::ResultsMoved {
                    sweep: sweep.into(),
                    old,
                    new: results.into(),
                });
            }
            Some(_) => {}
        }
        let mut changed = 0;
        if let Some(first) = found.first() {
            let mut packer = configs::Packer::of(&tx, sweep, &first.config_json)?;
            for f in found {
                let packed = packer.pack(sweep, &f.config_json)?;
                let mut recovered = tx.execute(
                    "insert or ignore into shards(sweep, id, config_json, config_z, state, attempts, committed_attempt)
                     values (?1, ?2, '', ?3, ?5, ?4, ?4)",
                    params![sweep, f.id, packed, f.attempt.get(), StateKind::Committed.name()],
                )? == 1;
                if !recovered
                    && let Some(next) = load(&tx, &self.path, sweep, &f.id)?.recover(f.attempt)
                {
                    store(&tx, sweep, &f.id, &next)?;
                    recovered = true;
                }
                if recovered {
                    event(&tx, now, sweep, &f.id, f.attempt.get(), "recovered", None)?;
                    deps::settle(&tx, &self.path, sweep, &f.id, now)?;
                    changed += 1;
                }
            }
        }
        tx.commit()?;
        Ok(changed)
    }

    /// Leases the oldest pending shard to `worker`, or `None` when nothing is pending.
    pub fn lease(&mut self, worker: &str, now: Millis) -> Result<Option<Lease>, LedgerError> {
        let policy = self.policy;
        let tx = self.conn.savepoint()?;
        type Next = (String, String, String, Option<Vec<u8>>);
        let next: Option<Next> = tx
            .query_row(
                "select sweep, id, config_json, config_z from shards where state = ?1 order by rowid limit 1",
                [StateKind::Pending.name()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((sweep, shard, plain, packed)) = next else {
            return Ok(None);
        };
        let config_json = configs::unpack(&tx, &sweep, plain, packed)?;
        let current = load(&tx, &self.path, &sweep, &shard)?;
        let (leased, attempt) = current.lease(worker, now, &policy)?;
        store(&tx, &sweep, &shard, &leased)?;
        event(
            &tx,
            now,
            &sweep,
            &shard,
            attempt.get(),
            "leased",
            Some(worker),
        )?;
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
        (sweep, shard, attempt): (&str, &str, Attempt),
        now: Millis,
        logged: Option<(&str, Option<&str>)>,
        f: impl FnOnce(&Shard) -> Result<Shard, Refused>,
    ) -> Result<Shard, LedgerError> {
        let tx = self.conn.savepoint()?;
        let current = load(&tx, &self.path, sweep, shard)?;
        let next = f(&current)?;
        store(&tx, sweep, shard, &next)?;
        if let Some((kind, detail)) = logged {
            event(&tx, now, sweep, shard, attempt.get(), kind, detail)?;
        }
        if deps::matters(current.state.kind(), next.state.kind()) {
            deps::settle(&tx, &self.path, sweep, shard, now)?;
        }
        tx.commit()?;
        Ok(next)
    }

    /// Renews the lease of `attempt`.
    pub fn heartbeat(
        &mut self,
        sweep: &str,
        shard: &str,
        attempt: Attempt,
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
        attempt: Attempt,
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
        attempt: Attempt,
        now: Millis,
    ) -> Result<Publish, LedgerError> {
        let tx = self.conn.savepoint()?;
        let current = load(&tx, &self.path, sweep, shard)?;
        let decision = current.begin_publish(attempt, now)?;
        if let Publish::Start(next) = &decision {
            store(&tx, sweep, shard, next)?;
            event(&tx, now, sweep, shard, attempt.get(), "publishing", None)?;
        }
        tx.commit()?;
        Ok(decision)
    }

    /// The copies of `attempt` are in place: Publishing → Committed.
    pub fn commit(
        &mut self,
        sweep: &str,
        shard: &str,
        attempt: Attempt,
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

    /// `attempt`'s staged results cannot be published: a failure of that attempt, of `kind`.
    pub fn abandon_publish(
        &mut self,
        sweep: &str,
        shard: &str,
        attempt: Attempt,
        (kind, error): (Failure, &str),
        now: Millis,
    ) -> Result<ShardState, LedgerError> {
        let policy = self.policy;
        self.transition(
            (sweep, shard, attempt),
            now,
            Some(("publish-failed", Some(error))),
            |s| s.abandon_publish(attempt, kind, error, &policy),
        )
        .map(|s| s.state)
    }

    /// Records a failure of `attempt` of `kind`; returns the shard's new state.
    pub fn fail(
        &mut self,
        sweep: &str,
        shard: &str,
        attempt: Attempt,
        (kind, error): (Failure, &str),
        now: Millis,
    ) -> Result<ShardState, LedgerError> {
        let policy = self.policy;
        self.transition(
            (sweep, shard, attempt),
            now,
            Some((kind.event(), Some(error))),
            |s| s.fail(attempt, kind, error, now, &policy),
        )
        .map(|s| s.state)
    }

    /// `attempt` released its lease (preempted); the budget is untouched.
    pub fn preempt(
        &mut self,
        sweep: &str,
        shard: &str,
        attempt: Attempt,
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

    /// Records that `sweep`'s results are now at `results`: a results folder moved together
    /// with the ledger kept inside it (`linesweep run`'s). Returns the old location when it
    /// changed; an unknown sweep changes nothing.
    pub fn relocate(&mut self, sweep: &str, results: &str) -> Result<Option<String>, LedgerError> {
        let old = match self.reads().results(sweep) {
            Ok(old) if old != results => old,
            Ok(_) | Err(LedgerError::UnknownSweep(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        self.conn.execute(
            "update sweeps set results = ?2 where name = ?1",
            params![sweep, results],
        )?;
        Ok(Some(old))
    }

    /// Returns every lease past its expiry to pending; reports `(sweep, shard, attempt)`.
    pub fn expire_leases(
        &mut self,
        now: Millis,
    ) -> Result<Vec<(String, String, Attempt)>, LedgerError> {
        let tx = self.conn.savepoint()?;
        let due: Vec<(String, String)> = {
            let mut q =
                tx.prepare("select sweep, id from shards where state = ?2 and expires_at <= ?1")?;
            q.query_map(params![now, StateKind::Leased.name()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?
        };
        let mut expired = Vec::new();
        for (sweep, shard) in due {
            let current = load(&tx, &self.path, &sweep, &shard)?;
            if let (Some(next), ShardState::Leased { attempt, .. }) =
                (current.expire(now), &current.state)
            {
                store(&tx, &sweep, &shard, &next)?;
                event(&tx, now, &sweep, &shard, attempt.get(), "expired", None)?;
                expired.push((sweep, shard, *attempt));
            }
        }
        tx.commit()?;
        Ok(expired)
    }

    /// Returns every lease to pending as an interruption (budget untouched): for the embedded
    /// mode, whose workers died with the process that held the leases. Returns how many.
    pub fn release_all(&mut self, now: Millis) -> Result<usize, LedgerError> {
        self.each_leased(now, Some("released"), &Shard::release)
    }

    /// After a restart or a stall: gives every live lease at least one fresh TTL
    /// ([`Shard::restart_grace`]). Returns how many leases there are.
    pub fn restart_grace(&mut self, now: Millis) -> Result<usize, LedgerError> {
        let policy = self.policy;
        self.each_leased(now, None, &|s: &Shard| Some(s.restart_grace(now, &policy)))
    }

    /// Applies `f` to every leased shard in one savepoint, logging `event` for each change.
    fn each_leased(
        &mut self,
        now: Millis,
        kind: Option<&str>,
        f: &dyn Fn(&Shard) -> Option<Shard>,
    ) -> Result<usize, LedgerError> {
        let tx = self.conn.savepoint()?;
        let held: Vec<(String, String)> = {
            let mut q = tx.prepare("select sweep, id from shards where state = ?1")?;
            q.query_map([StateKind::Leased.name()], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        for (sweep, shard) in &held {
            let current = load(&tx, &self.path, sweep, shard)?;
            if let Some(next) = f(&current) {
                store(&tx, sweep, shard, &next)?;
                if let Some(kind) = kind {
                    event(&tx, now, sweep, shard, current.attempts, kind, None)?;
                }
            }
        }
        tx.commit()?;
        Ok(held.len())
    }

    /// Reruns failed and cancelled shards of `sweep` (all of them, or only those in `only`).
    /// Committed shards are never rerun. Returns how many shards went back to pending.
    pub fn retry(
        &mut self,
        sweep: &str,
        only: Option<&[String]>,
        now: Millis,
    ) -> Result<usize, LedgerError> {
        if let Some(only) = only {
            return self.bulk_named(sweep, only, now, Bulk::Retry);
        }
        self.bulk_all(sweep, now, Bulk::Retry)
    }

    /// Runs the committed shards `only` of `sweep` again ([`Shard::rerun`]); the caller has
    /// removed their published files. Returns how many went back to pending.
    pub fn rerun(
        &mut self,
        sweep: &str,
        only: &[String],
        now: Millis,
    ) -> Result<usize, LedgerError> {
        self.bulk_named(sweep, only, now, Bulk::Rerun)
    }

    /// Cancels the pending shards of `sweep`, and with `running` the leased ones too.
    /// Returns how many.
    pub fn cancel(
        &mut self,
        sweep: &str,
        running: bool,
        now: Millis,
    ) -> Result<usize, LedgerError> {
        self.bulk_all(sweep, now, Bulk::Cancel { running })
    }

    /// Every shard in one transaction (a limit of `usize::MAX` is none): for callers with no
    /// leases to let through; the service runs [`Self::bulk_chunk`] chunk by chunk.
    fn bulk_all(&mut self, sweep: &str, now: Millis, op: Bulk) -> Result<usize, LedgerError> {
        self.bulk_chunk(sweep, op, 0, usize::MAX, now)
            .map(|(n, _)| n)
    }

    /// One chunk of a bulk retry or cancel over every shard of `sweep`: at most `limit`
    /// shards from rowid `after` on (exclusive), in one savepoint. Returns how many changed,
    /// and where the next chunk starts (`None`: done). A caller that runs each chunk in its own
    /// transaction lets leases and heartbeats through between them.
    pub fn bulk_chunk(
        &mut self,
        sweep: &str,
        op: Bulk,
        after: i64,
        limit: usize,
        now: Millis,
    ) -> Result<(usize, Option<i64>), LedgerError> {
        let tx = self.conn.savepoint()?;
        if after == 0 {
            require_sweep(&tx, sweep)?;
        }
        let rows: Vec<(i64, ShardRow)> = {
            let mut q = tx.prepare(&format!(
                "select rowid, {SHARD_COLUMNS} from shards indexed by shards_by_sweep_state
                 where sweep = ?1 and state in ({}) and rowid > ?2 order by rowid limit ?3",
                StateKind::sql_list(op.states())
            ))?;
            let mut rows = q.query(params![
                sweep,
                after,
                i64::try_from(limit).unwrap_or(i64::MAX)
            ])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let rowid: i64 = r.get(0)?;
                out.push((rowid, decode_at(r, &self.path, sweep)?));
            }
            out
        };
        let mut changed = 0;
        for (_, row) in &rows {
            changed += usize::from(bulk_one(&tx, &self.path, sweep, &row.id, op, now)?);
        }
        tx.commit()?;
        let next = (rows.len() == limit).then(|| rows.last().map_or(after, |(r, _)| *r));
        Ok((changed, next))
    }

    fn bulk_named(
        &mut self,
        sweep: &str,
        only: &[String],
        now: Millis,
        op: Bulk,
    ) -> Result<usize, LedgerError> {
        let tx = self.conn.savepoint()?;
        require_sweep(&tx, sweep)?;
        let mut changed = 0;
        for id in only {
            changed += usize::from(bulk_one(&tx, &self.path, sweep, id, op, now)?);
        }
        tx.commit()?;
        Ok(changed)
    }

    /// Queries over the ledger's own connection.
    pub fn reads(&self) -> Reads<'_> {
        Reads {
            conn: &self.conn,
            path: &self.path,
        }
    }

    /// A second, read-only connection to the same file (`None` for an in-memory ledger),
    /// for reads that must not wait for, or hold up, the writer.
    pub fn reader(&self) -> Result<Option<LedgerReader>, LedgerError> {
        if self.path == IN_MEMORY {
            return Ok(None);
        }
        LedgerReader::open(Path::new(&self.path)).map(Some)
    }

    /// One shard's state and counters.
    pub fn shard(&self, sweep: &str, shard: &str) -> Result<Shard, LedgerError> {
        self.reads().shard(sweep, shard)
    }

    /// The results location of a sweep.
    pub fn results(&self, sweep: &str) -> Result<String, LedgerError> {
        self.reads().results(sweep)
    }

    /// Shards of `sweep` per state name.
    pub fn counts(&self, sweep: &str) -> Result<BTreeMap<String, u64>, LedgerError> {
        self.reads().counts(sweep)
    }

    /// The ids of the committed shards of `sweep`.
    pub fn committed_ids(&self, sweep: &str) -> Result<Vec<String>, LedgerError> {
        self.reads().committed_ids(sweep)
    }

    /// Every shard of `sweep`, in submission order.
    pub fn shards(&self, sweep: &str) -> Result<Vec<ShardRow>, LedgerError> {
        self.reads().shards(sweep)
    }

    /// Shards caught between intent and commit (after a crash): `(sweep, shard, attempt)`.
    pub fn publishing(&self) -> Result<Vec<linesweep_storage::ids::LeaseToken>, LedgerError> {
        self.reads().publishing()
    }

    /// Leased shards per worker, as `sweep/shard`.
    pub fn leases_by_worker(&self) -> Result<BTreeMap<String, Vec<String>>, LedgerError> {
        self.reads().leases_by_worker()
    }

    /// See [`Reads::status`].
    pub fn status(&self, sweep: &str) -> Result<SweepStatus, LedgerError> {
        self.reads().status(sweep)
    }

    /// Number of events recorded for a shard of a given kind.
    pub fn events(&self, sweep: &str, shard: &str, kind: &str) -> Result<u64, LedgerError> {
        self.reads().events(sweep, shard, kind)
    }
}

/// Shards per transaction of a bulk retry or cancel: big enough to be quick, small enough
/// that a lease waiting behind one chunk is not kept for more than milliseconds.
pub const BULK_CHUNK: usize = 1_000;

/// A user's operation over many shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bulk {
    /// Failed and cancelled shards back to pending ([`Shard::retry`]).
    Retry,
    /// Pending (and with `running` leased) shards to cancelled ([`Shard::cancel`]).
    Cancel { running: bool },
    /// Committed (and failed or cancelled) shards back to pending ([`Shard::rerun`]); named
    /// shards only.
    Rerun,
}

impl Bulk {
    /// The states it can change (the rest are not even read).
    fn states(self) -> &'static [StateKind] {
        match self {
            Self::Retry => &[StateKind::Failed, StateKind::Cancelled],
            Self::Rerun => &[
                StateKind::Committed,
                StateKind::Failed,
                StateKind::Cancelled,
            ],
            Self::Cancel { running: false } => {
                &[StateKind::Pending, StateKind::Waiting, StateKind::Held]
            }
            Self::Cancel { running: true } => &[
                StateKind::Pending,
                StateKind::Waiting,
                StateKind::Held,
                StateKind::Leased,
            ],
        }
    }

    fn apply(self, s: &Shard) -> Option<Shard> {
        match self {
            Self::Retry => s.retry(),
            Self::Rerun => s.rerun(),
            Self::Cancel { running } => s.cancel(running),
        }
    }

    fn event(self) -> &'static str {
        match self {
            Self::Retry => "retried",
            Self::Rerun => "rerun",
            Self::Cancel { .. } => "cancelled",
        }
    }
}

/// Brings a ledger written by an older linesweep up to [`SCHEMA`]: columns that `create table
/// if not exists` cannot add.
fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    let has_packed: bool = conn.query_row(
        "select exists(select 1 from pragma_table_info('shards') where name = 'config_z')",
        [],
        |r| r.get(0),
    )?;
    if !has_packed {
        conn.execute_batch("alter table shards add column config_z blob")?;
    }
    let has_infra: bool = conn.query_row(
        "select exists(select 1 from pragma_table_info('shards') where name = 'infra_workers')",
        [],
        |r| r.get(0),
    )?;
    if !has_infra {
        conn.execute_batch("alter table shards add column infra_workers text")?;
    }
    Ok(())
}

/// `op` on one shard, read again (an earlier shard of the same chunk may have settled
/// it); a retried shard is gated by its needs, and its dependants are settled. Returns
/// whether it changed.
fn bulk_one(
    tx: &Connection,
    path: &str,
    sweep: &str,
    id: &str,
    op: Bulk,
    now: Millis,
) -> Result<bool, LedgerError> {
    let current = load(tx, path, sweep, id)?;
    let Some(mut next) = op.apply(&current) else {
        return Ok(false);
    };
    if matches!(op, Bulk::Retry | Bulk::Rerun) {
        next = next.gate(deps::needs_of(tx, sweep, id)?);
    }
    store(tx, sweep, id, &next)?;
    event(tx, now, sweep, id, current.attempts, op.event(), None)?;
    if deps::matters(current.state.kind(), next.state.kind()) {
        deps::settle(tx, path, sweep, id, now)?;
    }
    Ok(true)
}

fn require_sweep(conn: &Connection, sweep: &str) -> Result<(), LedgerError> {
    let exists: bool = conn.query_row(
        "select exists(select 1 from sweeps where name = ?1)",
        [sweep],
        |r| r.get(0),
    )?;
    if exists {
        Ok(())
    } else {
        Err(LedgerError::UnknownSweep(sweep.into()))
    }
}

/// [`decode`] of a row whose first column is the rowid.
fn decode_at(r: &rusqlite::Row<'_>, path: &str, sweep: &str) -> Result<ShardRow, LedgerError> {
    read::decode_offset(r, 1, path, sweep)
}

fn store(conn: &Connection, sweep: &str, shard: &str, s: &Shard) -> Result<(), LedgerError> {
    let (worker, expires_at, committed) = match &s.state {
        ShardState::Leased {
            worker, expires_at, ..
        } => (Some(worker.as_str()), Some(*expires_at), None),
        ShardState::Publishing { attempt } | ShardState::Committed { attempt } => {
            (None, None, Some(attempt.get()))
        }
        _ => (None, None, None),
    };
    let infra_workers =
        (!s.infra_workers.is_empty()).then(|| serde_json::json!(s.infra_workers).to_string());
    conn.prepare_cached(
        "update shards set state = ?3, attempts = ?4, worker = ?5, expires_at = ?6, committed_attempt = ?7,
         failures = ?8, interruptions = ?9, last_error = ?10, infra_workers = ?11 where sweep = ?1 and id = ?2",
    )?
    .execute(params![sweep, shard, s.state.name(), s.attempts, worker, expires_at, committed, s.failures, s.interruptions, s.last_error, infra_workers])?;
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
    conn.prepare_cached(
        "insert into events(at_ms, sweep, shard, attempt, kind, detail) values (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![now, sweep, shard, attempt, kind, detail])?;
    // The commit rate of `status` reads this one row instead of counting events.
    if kind == COMMITTED_EVENT {
        conn.prepare_cached(
            "insert into sweep_commits(sweep, n, first_ms, last_ms) values (?1, 1, ?2, ?2)
             on conflict(sweep) do update set n = n + 1, last_ms = max(last_ms, ?2)",
        )?
        .execute(params![sweep, now])?;
    }
    Ok(())
}

/// The event that marks a commit.
const COMMITTED_EVENT: &str = "committed";

#[cfg(test)]
mod tests {
    use super::*;

    fn at(n: u32) -> Attempt {
        Attempt::new(n).unwrap()
    }

    fn token(sweep: &str, shard: &str, n: u32) -> linesweep_storage::ids::LeaseToken {
        linesweep_storage::ids::LeaseToken {
            sweep: sweep.parse().unwrap(),
            shard: shard.parse().unwrap(),
            attempt: at(n),
        }
    }

    const P: LeasePolicy = LeasePolicy {
        ttl_ms: 1_000,
        max_failures: 2,
    };

    fn specs(n: usize) -> Vec<NewShard> {
        shards(n)
            .into_iter()
            .map(|(id, config_json)| NewShard {
                id,
                config_json,
                needs: Vec::new(),
            })
            .collect()
    }

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
                l.complete(&lease.sweep, &lease.shard, lease.attempt.next(), 21),
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
            vec![("sw".into(), "s0".into(), at(1))]
        );
        let second = l.lease("w2", 1_001).unwrap().unwrap();
        assert_eq!(second.attempt, at(2));
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
            (ShardState::Committed { attempt: at(2) }, 1, 0)
        );
        assert_eq!(l.events("sw", "s0", "committed").unwrap(), 1);
    }

    #[test]
    fn a_full_disk_is_named_as_such() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let e = classify(full, "/state/state.db").to_string();
        assert!(
            e.starts_with("/state/state.db: the disk holding it is full")
                && e.contains("free space there"),
            "{e}"
        );
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(matches!(classify(busy, "p"), LedgerError::Locked { .. }));
    }

    #[test]
    fn a_shard_that_fails_for_infrastructure_on_three_workers_is_failed_and_stays_so() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.db");
        let mut l = Ledger::open(&path, P).unwrap();
        l.submit("sw", &shards(1), 0).unwrap();
        for (i, worker) in ["w1", "w1", "w2", "w3"].into_iter().enumerate() {
            let now = i as i64 * 10;
            let a = l.lease(worker, now).unwrap().unwrap();
            let oom = (Failure::Infrastructure, "killed by the OOM killer");
            let state = l.fail("sw", &a.shard, a.attempt, oom, now + 1).unwrap();
            let want = if worker == "w3" {
                ShardState::Failed
            } else {
                ShardState::Pending
            };
            assert_eq!(state, want, "after {worker}");
        }
        drop(l);
        // The workers are stored: the ledger read back holds them and the reason.
        let l = Ledger::open(&path, P).unwrap();
        let s = l.shard("sw", "s0").unwrap();
        assert_eq!(s.infra_workers, ["w1", "w2", "w3"]);
        assert!(s.last_error.unwrap().contains("3 different workers"));
        drop(l);
        // A ledger written before the column existed opens, its shards with no such workers.
        let old = Connection::open(&path).unwrap();
        old.execute_batch("alter table shards drop column infra_workers")
            .unwrap();
        drop(old);
        let l = Ledger::open(&path, P).unwrap();
        assert!(l.shard("sw", "s0").unwrap().infra_workers.is_empty());
    }

    #[test]
    fn retry_reruns_only_failed_shards() {
        let mut l = Ledger::in_memory(P).unwrap();
        l.submit("sw", &shards(2), 0).unwrap();
        let a = l.lease("w", 0).unwrap().unwrap();
        let b = l.lease("w", 0).unwrap().unwrap();
        l.complete("sw", &a.shard, a.attempt, 1).unwrap();
        assert_eq!(
            l.fail(
                "sw",
                &b.shard,
                b.attempt,
                (Failure::Application, "nan loss"),
                1
            )
            .unwrap(),
            ShardState::Pending
        );
        let b2 = l.lease("w", 2).unwrap().unwrap();
        assert_eq!(
            l.fail(
                "sw",
                &b2.shard,
                b2.attempt,
                (Failure::Application, "nan loss"),
                3
            )
            .unwrap(),
            ShardState::Failed
        );
        assert_eq!(l.retry("sw", None, 4).unwrap(), 1);
        let again = l.lease("w", 5).unwrap().unwrap();
        assert_eq!(
            (again.shard.as_str(), again.attempt),
            (b.shard.as_str(), at(3))
        );
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
        l.submit_sweep("sw", &meta("{\"a\":1}"), start, &specs(2), 0)
            .unwrap();
        let err = l
            .submit_sweep("sw", &meta("{\"a\":2}"), start, &specs(3), 1)
            .unwrap_err();
        assert!(matches!(err, LedgerError::Changed { .. }), "{err}");
        assert_eq!(l.shards("sw").unwrap().len(), 2, "a refusal adds nothing");
        let allowed = SubmitMode::Start {
            allow_changed: true,
        };
        let r = l
            .submit_sweep("sw", &meta("{\"a\":2}"), allowed, &specs(3), 2)
            .unwrap();
        assert_eq!(r.added, 1);
        let moved = SweepMeta {
            results: "/elsewhere".into(),
            ..meta("{\"a\":2}")
        };
        assert!(matches!(
            l.submit_sweep("sw", &moved, start, &specs(3), 3),
            Err(LedgerError::ResultsMoved { .. })
        ));
        assert!(matches!(
            l.submit_sweep("nope", &meta("{}"), SubmitMode::Continuation, &specs(1), 4),
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
        assert_eq!(l.publishing().unwrap(), vec![token("sw", "s0", 1)]);
        assert_eq!(l.cancel("sw", true, 5).unwrap(), 0);
        l.commit("sw", "s0", at(1), 1_000_001).unwrap();
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
        l.heartbeat("sw", "s0", at(1), 10_900).unwrap();
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
