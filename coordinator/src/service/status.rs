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
        let remaining: u64 = StateKind::UNFINISHED
            .iter()
            .map(|k| st.counts.get(k.name()).copied().unwrap_or(0))
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

pub(super) fn shard_info(r: &ShardRow) -> pb::ShardInfo {
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
    StateKind::UNFINISHED
        .iter()
        .all(|k| reply.counts.get(k.name()).copied().unwrap_or(0) == 0)
}
