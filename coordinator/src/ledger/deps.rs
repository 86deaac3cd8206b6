//! Shards that need other shards: the `deps` table, the gate a shard passes before it is
//! leased ([`Shard::gate`]), and settling the dependants of a shard whose state changed.
//!
//! A dependency is an edge `child → parent` inside one sweep, recorded once, when the child
//! is first submitted (a shard id is a hash of its config, which names what it needs, so a
//! resubmission cannot change them). Parents are submitted before their children or in the
//! same message; a submission whose new shards form a cycle is refused as a whole.

use std::collections::{BTreeMap, VecDeque};

use rusqlite::{Connection, params};

use super::{LedgerError, event, load, store};
use crate::lease::{Millis, Needs, Shard, StateKind};

/// How many blocking needs [`held_reason`] names before it says "and n more".
const REASON_NAMES: usize = 3;

/// Records the needs of shards just added, checks that each names a shard of the sweep and
/// that together they form no cycle, and gates each new shard (parents first). `added` maps
/// each new shard to what it needs.
pub(super) fn record(
    tx: &Connection,
    path: &str,
    sweep: &str,
    added: &[(&str, &[String])],
    now: Millis,
) -> Result<(), LedgerError> {
    let order = topological(added)?;
    let mut insert =
        tx.prepare_cached("insert or ignore into deps(sweep, child, parent) values (?1, ?2, ?3)")?;
    for (child, needs) in added {
        for parent in needs.iter() {
            if !exists(tx, sweep, parent)? {
                return Err(LedgerError::UnknownNeed {
                    sweep: sweep.into(),
                    shard: (*child).into(),
                    need: parent.clone(),
                });
            }
            insert.execute(params![sweep, child, parent])?;
        }
    }
    for child in order {
        let current = load(tx, path, sweep, child)?;
        let next = current.gate(needs_of(tx, sweep, child)?);
        if next.state != current.state {
            store(tx, sweep, child, &next)?;
            event(tx, now, sweep, child, 0, next.state.name(), None)?;
        }
    }
    Ok(())
}

/// The new shards with needs, parents before children; a cycle among them is refused.
fn topological<'a>(added: &[(&'a str, &'a [String])]) -> Result<Vec<&'a str>, LedgerError> {
    // Kahn's algorithm over the edges between new shards (needs of shards already in the
    // ledger were checked when those were submitted, and cannot point at new ones).
    let new: BTreeMap<&str, &[String]> = added.iter().copied().collect();
    let mut indegree: BTreeMap<&str, usize> = BTreeMap::new();
    let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (child, needs) in &new {
        let inner = needs.iter().filter(|p| new.contains_key(p.as_str()));
        for parent in inner {
            *indegree.entry(child).or_default() += 1;
            children.entry(parent.as_str()).or_default().push(child);
        }
    }
    let mut ready: VecDeque<&str> = new
        .keys()
        .copied()
        .filter(|c| !indegree.contains_key(c))
        .collect();
    let mut order = Vec::with_capacity(new.len());
    while let Some(s) = ready.pop_front() {
        order.push(s);
        for c in children.get(s).into_iter().flatten() {
            // Every child of a new shard has an indegree (it was counted above).
            if let Some(d) = indegree.get_mut(c) {
                *d -= 1;
                if *d == 0 {
                    ready.push_back(c);
                }
            }
        }
    }
    if order.len() < new.len() {
        let mut cycle: Vec<String> = indegree
            .into_iter()
            .filter(|(_, d)| *d > 0)
            .map(|(s, _)| s.to_owned())
            .collect();
        cycle.truncate(REASON_NAMES + 1);
        return Err(LedgerError::Cycle { shards: cycle });
    }
    Ok(order)
}

fn exists(tx: &Connection, sweep: &str, shard: &str) -> Result<bool, LedgerError> {
    Ok(tx
        .prepare_cached("select exists(select 1 from shards where sweep = ?1 and id = ?2)")?
        .query_row(params![sweep, shard], |r| r.get(0))?)
}

/// What the needs of `shard` say about it ([`Needs::Met`] for a shard that needs nothing).
pub(super) fn needs_of(tx: &Connection, sweep: &str, shard: &str) -> Result<Needs, LedgerError> {
    let mut q = tx.prepare_cached(
        "select s.state from deps d join shards s on s.sweep = d.sweep and s.id = d.parent
         where d.sweep = ?1 and d.child = ?2",
    )?;
    let states: Vec<String> = q
        .query_map(params![sweep, shard], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(Needs::of(states.iter().filter_map(|s| StateKind::parse(s))))
}

/// Whether a change from `before` to `after` can change what a dependant may do.
pub(super) fn matters(before: StateKind, after: StateKind) -> bool {
    let relevant = |k: StateKind| k == StateKind::Committed || StateKind::BLOCKING.contains(&k);
    before != after && (relevant(before) || relevant(after))
}

/// Re-gates the dependants of `shard`, and theirs in turn, after its state changed: a
/// Waiting child whose last need committed becomes Pending, one whose need failed becomes
/// Held (and holds its own dependants), a Held one whose need was retried waits again.
/// Returns how many shards changed.
pub(super) fn settle(
    tx: &Connection,
    path: &str,
    sweep: &str,
    shard: &str,
    now: Millis,
) -> Result<usize, LedgerError> {
    let mut queue = VecDeque::from([shard.to_owned()]);
    let mut changed = 0;
    while let Some(parent) = queue.pop_front() {
        for child in children_of(tx, sweep, &parent)? {
            let current: Shard = load(tx, path, sweep, &child)?;
            if let Some(next) = current.settle(needs_of(tx, sweep, &child)?) {
                store(tx, sweep, &child, &next)?;
                event(
                    tx,
                    now,
                    sweep,
                    &child,
                    current.attempts,
                    next.state.name(),
                    Some(&parent),
                )?;
                changed += 1;
                queue.push_back(child);
            }
        }
    }
    Ok(changed)
}

fn children_of(tx: &Connection, sweep: &str, parent: &str) -> Result<Vec<String>, LedgerError> {
    let mut q = tx.prepare_cached(
        "select child from deps indexed by deps_by_parent where sweep = ?1 and parent = ?2",
    )?;
    let rows = q.query_map(params![sweep, parent], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Why a held shard is held: the needs that block it, with their states
/// (`needs 1a2b… (failed)`).
pub(super) fn held_reason(
    tx: &Connection,
    sweep: &str,
    shard: &str,
) -> Result<String, LedgerError> {
    let mut q = tx.prepare_cached(&format!(
        "select d.parent, s.state from deps d join shards s on s.sweep = d.sweep and s.id = d.parent
         where d.sweep = ?1 and d.child = ?2 and s.state in ({}) order by s.rowid",
        StateKind::sql_list(&StateKind::BLOCKING)
    ))?;
    let blocking: Vec<(String, String)> = q
        .query_map(params![sweep, shard], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut named: Vec<String> = blocking
        .iter()
        .take(REASON_NAMES)
        .map(|(p, s)| format!("{p} ({s})"))
        .collect();
    if blocking.len() > REASON_NAMES {
        named.push(format!("and {} more", blocking.len() - REASON_NAMES));
    }
    Ok(format!(
        "needs {}: `linesweep retry` of what failed releases it",
        named.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::super::{Ledger, LedgerError, NewShard, SubmitMode, SweepMeta};
    use crate::lease::{Failure, LeasePolicy, ShardState, StateKind};

    const P: LeasePolicy = LeasePolicy {
        ttl_ms: 1_000,
        max_failures: 2,
    };

    fn shard(id: &str, needs: &[&str]) -> NewShard {
        NewShard {
            id: id.into(),
            config_json: format!("{{\"id\":\"{id}\"}}"),
            needs: needs.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn submit(l: &mut Ledger, shards: &[NewShard]) -> Result<usize, LedgerError> {
        let mode = SubmitMode::Start {
            allow_changed: false,
        };
        l.submit_sweep("sw", &SweepMeta::default(), mode, shards, 0)
            .map(|s| s.added)
    }

    fn state(l: &Ledger, id: &str) -> StateKind {
        l.shard("sw", id).unwrap().state.kind()
    }

    /// Leases the next shard and commits it; returns its id.
    fn run_next(l: &mut Ledger) -> Option<String> {
        let lease = l.lease("w", 1).unwrap()?;
        l.complete("sw", &lease.shard, lease.attempt, 2).unwrap();
        Some(lease.shard)
    }

    #[test]
    fn a_child_waits_for_every_parent_and_runs_after_the_last_commits() {
        let mut l = Ledger::in_memory(P).unwrap();
        // The child comes first in the message: order within a message does not matter.
        let all = [shard("c", &["a", "b"]), shard("a", &[]), shard("b", &[])];
        assert_eq!(submit(&mut l, &all).unwrap(), 3);
        assert_eq!(state(&l, "c"), StateKind::Waiting);
        assert_eq!(run_next(&mut l).as_deref(), Some("a"));
        assert_eq!(state(&l, "c"), StateKind::Waiting);
        assert_eq!(run_next(&mut l).as_deref(), Some("b"));
        assert_eq!(state(&l, "c"), StateKind::Pending);
        assert_eq!(run_next(&mut l).as_deref(), Some("c"));
        assert_eq!(run_next(&mut l), None);
        // A child submitted after its parents committed is pending at once.
        submit(&mut l, &[shard("d", &["a"])]).unwrap();
        assert_eq!(state(&l, "d"), StateKind::Pending);
    }

    #[test]
    fn a_failed_parent_holds_its_descendants_until_it_is_retried() {
        let mut l = Ledger::in_memory(P).unwrap();
        let all = [shard("p", &[]), shard("c", &["p"]), shard("g", &["c"])];
        submit(&mut l, &all).unwrap();
        let lease = l.lease("w", 1).unwrap().unwrap();
        assert_eq!(lease.shard, "p");
        let failed = (Failure::Deterministic, "boom");
        let st = l.fail("sw", "p", lease.attempt, failed, 2).unwrap();
        assert_eq!(st, ShardState::Failed);
        assert_eq!(state(&l, "c"), StateKind::Held);
        assert_eq!(state(&l, "g"), StateKind::Held);
        // Nothing is leasable, and the sweep has nothing left to run.
        assert!(l.lease("w", 3).unwrap().is_none());
        let status = l.status("sw").unwrap();
        let held: Vec<(&str, &str)> = status
            .held
            .iter()
            .map(|(r, why)| (r.id.as_str(), why.as_str()))
            .collect();
        assert_eq!(held.len(), 2);
        assert!(held[0].1.contains("p (failed)"), "{held:?}");
        assert!(held[1].1.contains("c (held)"), "{held:?}");
        assert!(
            StateKind::UNFINISHED
                .iter()
                .all(|k| !status.counts.contains_key(k.name()))
        );
        // Retrying the parent releases both: they wait for it again.
        assert_eq!(l.retry("sw", Some(&["p".to_owned()]), 4).unwrap(), 1);
        assert_eq!(state(&l, "p"), StateKind::Pending);
        assert_eq!(state(&l, "c"), StateKind::Waiting);
        assert_eq!(state(&l, "g"), StateKind::Waiting);
        for want in ["p", "c", "g"] {
            assert_eq!(run_next(&mut l).as_deref(), Some(want));
        }
    }

    #[test]
    fn cancelling_a_parent_holds_its_child_and_retry_of_a_cancelled_child_stays_held() {
        let mut l = Ledger::in_memory(P).unwrap();
        submit(&mut l, &[shard("p", &[]), shard("c", &["p"])]).unwrap();
        // Cancel everything (the child too), then retry only the child: its parent is
        // still cancelled, so it is held rather than pending.
        assert_eq!(l.cancel("sw", false, 1).unwrap(), 2);
        assert_eq!(state(&l, "c"), StateKind::Cancelled);
        assert_eq!(l.retry("sw", Some(&["c".to_owned()]), 2).unwrap(), 1);
        assert_eq!(state(&l, "c"), StateKind::Held);
        // A bulk retry takes the parent back to pending and the child to waiting.
        assert_eq!(l.retry("sw", None, 3).unwrap(), 1);
        assert_eq!(state(&l, "p"), StateKind::Pending);
        assert_eq!(state(&l, "c"), StateKind::Waiting);
    }

    #[test]
    fn a_cycle_or_an_unknown_need_refuses_the_whole_message() {
        let mut l = Ledger::in_memory(P).unwrap();
        let cycle = [shard("x", &[]), shard("a", &["b"]), shard("b", &["a"])];
        let err = submit(&mut l, &cycle).unwrap_err();
        assert!(
            matches!(&err, LedgerError::Cycle { shards } if shards == &["a", "b"]),
            "{err}"
        );
        let err = submit(&mut l, &[shard("s", &["s"])]).unwrap_err();
        assert!(matches!(err, LedgerError::Cycle { .. }), "{err}");
        let err = submit(&mut l, &[shard("x", &[]), shard("c", &["nope"])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "shard c of sweep sw needs nope, which the sweep does not have"
        );
        // Nothing of the refused messages was kept.
        assert!(l.shards("sw").map(|s| s.is_empty()).unwrap_or(true));
    }
}
