//! Status and ETA: a sweep's counts, failed and running shards with their live progress, and
//! the commit rate, read on the read connection.

use super::*;
use crate::lease::StateKind;

impl Coordinator {
    pub(super) async fn status_reply(&self, sweep: &str) -> Result<pb::StatusReply, Status> {
        let sw = sweep.to_owned();
        let st: SweepStatus = self.read_committed(move |r| r.status(&sw)).await?;
        let live = lock(&self.live);
        let info = |r: &ShardRow| {
            let mut i = shard_info(r);
            if let Some(p) = live.progress.get(&(sweep.to_owned(), r.id.clone()))
                && p.attempt.get() == r.shard.attempts
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
        let remaining: u64 = StateKind::UNFINISHED
            .iter()
            .map(|k| st.counts.get(k.name()).copied().unwrap_or(0))
            .sum();
        let counts = st
            .counts
            .iter()
            .filter_map(|(name, n)| {
                StateKind::parse(name).map(|k| pb::StateCount {
                    state: wire_state(k).into(),
                    shards: *n,
                })
            })
            .collect();
        let eta_s =
            (per_minute > 0.0 && remaining > 0).then(|| remaining as f64 * 60.0 / per_minute);
        Ok(pb::StatusReply {
            counts,
            failures: st.failures,
            interruptions: st.interruptions,
            failed: st.failed.iter().map(info).collect(),
            held: st
                .held
                .iter()
                .map(|(r, why)| pb::ShardInfo {
                    held_by: why.clone(),
                    ..info(r)
                })
                .collect(),
            running: st.running.iter().map(info).collect(),
            commits_per_minute: per_minute,
            eta_s,
            results: st.results,
        })
    }
}

pub(super) fn shard_info(r: &ShardRow) -> pb::ShardInfo {
    let s = &r.shard;
    pb::ShardInfo {
        id: r.id.clone(),
        state: wire_state(s.state.kind()).into(),
        attempts: s.attempts,
        failures: s.failures,
        interruptions: s.interruptions,
        last_error: s.last_error.clone().unwrap_or_default(),
        worker: match &s.state {
            ShardState::Leased { worker, .. } => worker.clone(),
            _ => String::new(),
        },
        committed_attempt: match s.state {
            ShardState::Committed { attempt } => attempt.get(),
            _ => 0,
        },
        ..Default::default()
    }
}

/// Whether a sweep has nothing left to run.
pub fn is_finished(reply: &pb::StatusReply) -> bool {
    StateKind::UNFINISHED.iter().all(|k| count(reply, *k) == 0)
}

/// Shards of the reply in state `kind`.
pub fn count(reply: &pb::StatusReply, kind: StateKind) -> u64 {
    reply
        .counts
        .iter()
        .filter(|c| state_of(c.state) == Some(kind))
        .map(|c| c.shards)
        .sum()
}

/// Shards of the reply in any state.
pub fn total(reply: &pb::StatusReply) -> u64 {
    reply.counts.iter().map(|c| c.shards).sum()
}

/// The wire's name of a state: the one mapping between [`StateKind`] and the proto enum.
pub fn wire_state(kind: StateKind) -> pb::ShardState {
    match kind {
        StateKind::Pending => pb::ShardState::Pending,
        StateKind::Leased => pb::ShardState::Leased,
        StateKind::Publishing => pb::ShardState::Publishing,
        StateKind::Committed => pb::ShardState::Committed,
        StateKind::Failed => pb::ShardState::Failed,
        StateKind::Cancelled => pb::ShardState::Cancelled,
        StateKind::Waiting => pb::ShardState::Waiting,
        StateKind::Held => pb::ShardState::Held,
    }
}

/// The state a wire value names (`None`: unspecified or unknown).
pub fn state_of(wire: i32) -> Option<StateKind> {
    StateKind::ALL
        .into_iter()
        .find(|k| wire_state(*k) as i32 == wire)
}
