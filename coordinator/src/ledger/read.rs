//! Reading the ledger: shard rows decoded into [`Shard`]s, status, listings.
//!
//! The same queries run on the ledger's own connection ([`super::Ledger::reads`]) and on a
//! [`LedgerReader`]: a second, read-only connection to the same file, which WAL lets read
//! while the writer commits. The coordinator answers `status` and listings from the reader,
//! so that a long read of a huge sweep never holds the lock that leases and heartbeats need.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};

use super::{LedgerError, ShardRow, SweepStatus};
use crate::lease::{Attempt, Millis, Shard, ShardState, StateKind};
use linesweep_storage::ids::{IdError, LeaseToken, ShardId, SweepName};

/// At most this many failed (and this many held) shards are listed by [`Reads::status`] (the counts are exact): a
/// sweep of a million failed shards must not become a reply of a million rows.
pub const STATUS_LIST_LIMIT: usize = 100;

/// The columns [`decode`] reads, in its order.
pub(super) const SHARD_COLUMNS: &str = "id, state, attempts, worker, expires_at, committed_attempt, failures, interruptions, last_error, infra_workers";

/// Queries over one connection.
pub struct Reads<'a> {
    pub(super) conn: &'a Connection,
    pub(super) path: &'a str,
}

/// A read-only connection to a ledger file (see the module docs).
pub struct LedgerReader {
    conn: Connection,
    path: String,
}

impl LedgerReader {
    /// Opens `path` read-only. The writer ([`super::Ledger::open`]) must have created it.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let path = path.display().to_string();
        // An empty file, or another SQLite database, opens too: say what it is not instead of
        // failing every query with "no such table".
        let is_ledger: bool = conn
            .query_row(
                "select exists(select 1 from sqlite_master where type = 'table' and name = 'sweeps')",
                [],
                |r| r.get(0),
            )
            .map_err(|e| LedgerError::Corrupt {
                path: path.clone(),
                message: format!("not a SQLite database ({e})"),
            })?;
        if !is_ledger {
            return Err(LedgerError::Corrupt {
                path,
                message: "it holds no linesweep ledger (no sweeps table): pass the state file of `serve --state`, or leave --state out for the one `run` keeps".into(),
            });
        }
        Ok(Self { conn, path })
    }

    /// The queries.
    pub fn reads(&self) -> Reads<'_> {
        Reads {
            conn: &self.conn,
            path: &self.path,
        }
    }
}

/// A shard row (columns [`SHARD_COLUMNS`]) as its id and state.
pub(super) fn decode(r: &Row<'_>, path: &str, sweep: &str) -> Result<ShardRow, LedgerError> {
    decode_offset(r, 0, path, sweep)
}

/// [`decode`] of the columns [`SHARD_COLUMNS`] starting at column `at`.
pub(super) fn decode_offset(
    r: &Row<'_>,
    at: usize,
    path: &str,
    sweep: &str,
) -> Result<ShardRow, LedgerError> {
    let id: String = r.get(at)?;
    let state: String = r.get(at + 1)?;
    let attempts: u32 = r.get(at + 2)?;
    let (worker, expires_at, committed): (Option<String>, Option<i64>, Option<u32>) =
        (r.get(at + 3)?, r.get(at + 4)?, r.get(at + 5)?);
    // A stored attempt number of 0 is as inconsistent as a missing one.
    let leased = Attempt::new(attempts).ok();
    let committed = committed.and_then(|a| Attempt::new(a).ok());
    let state = match (
        StateKind::parse(&state),
        worker,
        expires_at,
        committed,
        leased,
    ) {
        (Some(StateKind::Pending), ..) => ShardState::Pending,
        (Some(StateKind::Leased), Some(worker), Some(expires_at), _, Some(attempt)) => {
            ShardState::Leased {
                attempt,
                worker,
                expires_at,
            }
        }
        (Some(StateKind::Publishing), _, _, Some(attempt), _) => ShardState::Publishing { attempt },
        (Some(StateKind::Committed), _, _, Some(attempt), _) => ShardState::Committed { attempt },
        (Some(StateKind::Failed), ..) => ShardState::Failed,
        (Some(StateKind::Cancelled), ..) => ShardState::Cancelled,
        (Some(StateKind::Waiting), ..) => ShardState::Waiting,
        (Some(StateKind::Held), ..) => ShardState::Held,
        _ => {
            return Err(LedgerError::Corrupt {
                path: path.into(),
                message: format!("shard {sweep}/{id}: inconsistent state `{state}`"),
            });
        }
    };
    let shard = Shard {
        state,
        attempts,
        failures: r.get(at + 6)?,
        interruptions: r.get(at + 7)?,
        last_error: r.get(at + 8)?,
        infra_workers: workers(r.get(at + 9)?, path, sweep, &id)?,
    };
    Ok(ShardRow { id, shard })
}

/// The `infra_workers` column: a JSON list of names, or NULL for none.
fn workers(
    column: Option<String>,
    path: &str,
    sweep: &str,
    id: &str,
) -> Result<Vec<String>, LedgerError> {
    match column {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(&text).map_err(|e| LedgerError::Corrupt {
            path: path.into(),
            message: format!("shard {sweep}/{id}: infra_workers `{text}`: {e}"),
        }),
    }
}

/// One shard's state and counters.
pub(super) fn load(
    conn: &Connection,
    path: &str,
    sweep: &str,
    shard: &str,
) -> Result<Shard, LedgerError> {
    let mut q = conn.prepare_cached(&format!(
        "select {SHARD_COLUMNS} from shards where sweep = ?1 and id = ?2"
    ))?;
    let mut rows = q.query(params![sweep, shard])?;
    match rows.next()? {
        Some(r) => Ok(decode(r, path, sweep)?.shard),
        None => Err(LedgerError::UnknownShard {
            sweep: sweep.into(),
            shard: shard.into(),
        }),
    }
}

impl Reads<'_> {
    /// One shard's state and counters.
    pub fn shard(&self, sweep: &str, shard: &str) -> Result<Shard, LedgerError> {
        load(self.conn, self.path, sweep, shard)
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

    /// The ids of the committed shards of `sweep`, sorted.
    pub fn committed_ids(&self, sweep: &str) -> Result<Vec<String>, LedgerError> {
        let mut q = self
            .conn
            .prepare("select id from shards where sweep = ?1 and state = ?2 order by id")?;
        let ids = q
            .query_map([sweep, StateKind::Committed.name()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// Every shard of `sweep`, in submission order.
    pub fn shards(&self, sweep: &str) -> Result<Vec<ShardRow>, LedgerError> {
        self.rows(sweep, &[], usize::MAX)
    }

    /// At most `limit` shards of `sweep` in submission order, starting after the one at
    /// position `after` (0: from the first), each with its position: a page of a listing
    /// that any size of sweep can be read through.
    pub fn shards_after(
        &self,
        sweep: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, ShardRow)>, LedgerError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut q = self.conn.prepare(&format!(
            "select rowid, {SHARD_COLUMNS} from shards where sweep = ?1 and rowid > ?2 order by rowid limit ?3"
        ))?;
        let mut rows = q.query(params![sweep, after, limit])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push((r.get(0)?, decode_offset(r, 1, self.path, sweep)?));
        }
        Ok(out)
    }

    /// Shards of `sweep` in `states` (all when empty), in submission order, at most `limit`.
    pub(super) fn rows(
        &self,
        sweep: &str,
        states: &[StateKind],
        limit: usize,
    ) -> Result<Vec<ShardRow>, LedgerError> {
        let filter = if states.is_empty() {
            String::new()
        } else {
            format!(" and state in ({})", StateKind::sql_list(states))
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut q = self.conn.prepare(&format!(
            "select {SHARD_COLUMNS} from shards where sweep = ?1{filter} order by rowid limit ?2"
        ))?;
        let mut rows = q.query(params![sweep, limit])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(decode(r, self.path, sweep)?);
        }
        Ok(out)
    }

    /// Shards caught between intent and commit (after a crash): `(sweep, shard, attempt)`.
    pub fn publishing(&self) -> Result<Vec<LeaseToken>, LedgerError> {
        let mut q = self.conn.prepare(
            "select sweep, id, committed_attempt from shards where state = ?1 order by rowid",
        )?;
        let rows = q.query_map([StateKind::Publishing.name()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, u32>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (sweep, shard, attempt): (String, String, u32) = row?;
            let corrupt = |e: IdError| LedgerError::Corrupt {
                path: self.path.to_owned(),
                message: format!("shard {sweep}/{shard}: {e}"),
            };
            out.push(LeaseToken {
                sweep: SweepName::parse(sweep.as_str()).map_err(corrupt)?,
                shard: ShardId::parse(shard.as_str()).map_err(corrupt)?,
                attempt: Attempt::new(attempt).map_err(corrupt)?,
            });
        }
        Ok(out)
    }

    /// Leased shards per worker, as `sweep/shard`.
    pub fn leases_by_worker(&self) -> Result<BTreeMap<String, Vec<String>>, LedgerError> {
        let mut q = self
            .conn
            .prepare("select worker, sweep, id from shards where state = ?1 order by rowid")?;
        let rows = q.query_map([StateKind::Leased.name()], |r| {
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

    /// Counts, counters, failed (at most [`STATUS_LIST_LIMIT`]) and running shards, and the
    /// commit rate of `sweep`.
    pub fn status(&self, sweep: &str) -> Result<SweepStatus, LedgerError> {
        let results = self.results(sweep)?;
        let (failures, interruptions): (i64, i64) = self.conn.query_row(
            "select coalesce(sum(failures), 0), coalesce(sum(interruptions), 0) from shards where sweep = ?1",
            [sweep],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let commits: Option<(i64, Millis, Millis)> = self
            .conn
            .query_row(
                "select n, first_ms, last_ms from sweep_commits where sweep = ?1",
                [sweep],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (n, first, last) = commits.unwrap_or((0, 0, 0));
        Ok(SweepStatus {
            counts: self.counts(sweep)?,
            failures: failures as u64,
            interruptions: interruptions as u64,
            failed: self.rows(sweep, &[StateKind::Failed], STATUS_LIST_LIMIT)?,
            held: self
                .rows(sweep, &[StateKind::Held], STATUS_LIST_LIMIT)?
                .into_iter()
                .map(|r| {
                    let why = super::deps::held_reason(self.conn, sweep, &r.id)?;
                    Ok((r, why))
                })
                .collect::<Result<_, LedgerError>>()?,
            running: self.rows(
                sweep,
                &[StateKind::Leased, StateKind::Publishing],
                usize::MAX,
            )?,
            commits: (n as u64, first, last),
            results,
        })
    }

    /// Whether work may still appear although nothing is pending now: a shard waits for
    /// shards it needs, or a shard is leased or being published (a lease whose worker died
    /// expires and the shard is pending again; a failed attempt may be retried).
    pub fn more_may_come(&self) -> Result<bool, LedgerError> {
        let [a, b, c] = [StateKind::Waiting, StateKind::Leased, StateKind::Publishing];
        Ok(self.conn.query_row(
            "select exists(select 1 from shards indexed by shards_by_state \
             where state in (?1, ?2, ?3))",
            [a.name(), b.name(), c.name()],
            |r| r.get(0),
        )?)
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
