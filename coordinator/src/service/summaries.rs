//! When the coordinator rewrites a sweep's summary files ([`crate::summary`]): after
//! `every_commits` commits, on the reaper's timer once `every` has passed since the first
//! commit it does not yet hold, as soon as the sweep has nothing left to run, and at shutdown.
//! One rewrite of a sweep runs at a time, off the async threads; a failed one is logged and
//! tried again at the next tick (the summary keeps its previous contents meanwhile).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use linesweep_storage::ids::SweepName;

use super::{Coordinator, lock};
use crate::lease::StateKind;
use crate::summary;

/// How often summaries are rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SummaryPolicy {
    /// Rewrite once this many commits are not in the summary yet (0: only on the timer).
    pub every_commits: u64,
    /// Rewrite at most this long after the first commit the summary lacks (zero: never
    /// rewrite, summaries off).
    pub every: Duration,
}

impl Default for SummaryPolicy {
    fn default() -> Self {
        Self {
            every_commits: 1_000,
            every: Duration::from_secs(60),
        }
    }
}

impl SummaryPolicy {
    /// No summaries.
    pub const OFF: Self = Self {
        every_commits: 0,
        every: Duration::ZERO,
    };

    fn enabled(&self) -> bool {
        !self.every.is_zero()
    }
}

/// A sweep whose summary lacks some commits.
#[derive(Debug)]
struct Stale {
    commits: u64,
    since: Instant,
    running: bool,
}

/// The sweeps (with their results locations) whose summaries are stale.
#[derive(Debug, Default)]
pub(super) struct Summaries {
    stale: HashMap<(SweepName, String), Stale>,
}

impl Coordinator {
    /// Notes a commit of `sweep` into `results`; starts a rewrite after `every_commits`.
    pub(super) fn note_commit(&self, sweep: &SweepName, results: &str) {
        if !self.summary_policy.enabled() {
            return;
        }
        let due = {
            let mut s = lock(&self.summaries);
            let e = s
                .stale
                .entry((sweep.clone(), results.to_owned()))
                .or_insert_with(|| Stale {
                    commits: 0,
                    since: Instant::now(),
                    running: false,
                });
            e.commits += 1;
            let n = self.summary_policy.every_commits;
            !e.running && n > 0 && e.commits >= n
        };
        if due {
            self.start_summary(sweep.clone(), results.to_owned());
        }
    }

    /// The reaper's tick: rewrites the stale summaries that are old enough, or whose sweep has
    /// nothing left to run.
    pub async fn tick_summaries(&self) {
        let candidates: Vec<((SweepName, String), bool)> = lock(&self.summaries)
            .stale
            .iter()
            .filter(|(_, s)| !s.running)
            .map(|(k, s)| (k.clone(), s.since.elapsed() >= self.summary_policy.every))
            .collect();
        for ((sweep, results), old) in candidates {
            if old || self.sweep_finished(&sweep).await {
                self.start_summary(sweep, results);
            }
        }
    }

    /// Rewrites every stale summary and waits for them (at shutdown). A rewrite already
    /// running may have listed the results before the last commits: it is waited for, and the
    /// summary rewritten again if it is still stale. Gives up after `limit` (failing storage).
    pub async fn flush_summaries(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let keys: Vec<(SweepName, String)> =
                lock(&self.summaries).stale.keys().cloned().collect();
            if keys.is_empty() {
                return;
            }
            for (sweep, results) in keys {
                if self.claim_summary(&sweep, &results).is_some() {
                    self.summarize(sweep, results).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = lock(&self.summaries).stale.len();
        tracing::warn!(
            sweeps = left,
            "stopping with summaries that lack some commits; `linesweep summarize` brings them up to date"
        );
    }

    async fn sweep_finished(&self, sweep: &SweepName) -> bool {
        let name = sweep.to_string();
        match self.read_committed(move |r| r.counts(&name)).await {
            Ok(counts) => StateKind::UNFINISHED
                .iter()
                .all(|k| counts.get(k.name()).copied().unwrap_or(0) == 0),
            Err(_) => false,
        }
    }

    /// Marks the rewrite of `sweep` as running; returns the commits it will cover, or `None`
    /// if one is already running.
    fn claim_summary(&self, sweep: &SweepName, results: &str) -> Option<u64> {
        let mut s = lock(&self.summaries);
        let e = s.stale.get_mut(&(sweep.clone(), results.to_owned()))?;
        if e.running {
            return None;
        }
        e.running = true;
        Some(e.commits)
    }

    fn start_summary(&self, sweep: SweepName, results: String) {
        if self.claim_summary(&sweep, &results).is_none() {
            return;
        }
        let c = self.clone();
        tokio::spawn(async move { c.summarize(sweep, results).await });
    }

    /// One rewrite (the caller has claimed it). Commits that arrive meanwhile stay stale.
    async fn summarize(&self, sweep: SweepName, results: String) {
        let key = (sweep.clone(), results.clone());
        let covered = lock(&self.summaries)
            .stale
            .get(&key)
            .map_or(0, |e| e.commits);
        let outcome = match self.storage(&results).await {
            Ok(storage) => {
                let s = sweep.clone();
                tokio::task::spawn_blocking(move || summary::rewrite(&storage, &s))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            Err(e) => Err(e.message().to_owned()),
        };
        let mut s = lock(&self.summaries);
        let Some(e) = s.stale.get_mut(&key) else {
            return;
        };
        e.running = false;
        match outcome {
            Ok(done) => {
                tracing::debug!(%sweep, added = done.added(), "summary files rewritten");
                e.commits -= covered.min(e.commits);
                if e.commits == 0 {
                    s.stale.remove(&key);
                } else {
                    e.since = Instant::now();
                }
            }
            Err(error) => {
                tracing::warn!(%sweep, %results, %error, "could not rewrite the summary files; will retry");
            }
        }
    }
}
