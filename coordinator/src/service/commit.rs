//! Group commit: operations join one open SQLite transaction as savepoints; a committer task
//! commits it with one fsync, and only then are their callers answered. A commit that fails
//! stops the coordinator (`stopped`) instead of failing every later call the same way.

use super::*;

/// The ledger with its open group-commit batch.
pub(super) struct Batched {
    pub(super) ledger: Ledger,
    /// Id of the open batch (0: none).
    pub(super) open: u64,
    /// Last batch id issued.
    pub(super) next: u64,
}

/// What the committer has made durable.
#[derive(Debug, Clone, Default)]
pub(super) struct Committed {
    /// Every batch up to this id is durable.
    pub(super) done: u64,
    /// The first batch that could not be committed, and why: the ledger is then stopped,
    /// and that batch and every later one are refused (none was acknowledged).
    pub(super) stopped: Option<(u64, String)>,
}

impl Coordinator {
    /// Runs the state change `f` on the ledger at the current time, inside the open
    /// group-commit batch, and returns once that batch is durable (one fsync for every
    /// operation that joined it). Nothing is reported to a caller before its commit.
    pub async fn with_ledger<T>(
        &self,
        f: impl FnOnce(&mut Ledger, Millis) -> T,
    ) -> Result<T, Status> {
        let mut rx = self.committed.subscribe();
        let (r, batch) = self.join_batch(f)?;
        loop {
            {
                let c = rx.borrow_and_update();
                if c.done >= batch {
                    return Ok(r);
                }
                if let Some((from, why)) = &c.stopped
                    && batch >= *from
                {
                    return Err(Status::unavailable(format!(
                        "the coordinator stopped: its state file cannot commit ({why}); nothing of this call was recorded"
                    )));
                }
            }
            rx.changed()
                .await
                .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
        }
    }

    /// Runs a state change whose durability does not matter (a heartbeat: after a restart
    /// every lease gets a fresh TTL anyway) in the open batch, without waiting for its commit.
    pub(super) fn with_ledger_unsynced<T>(
        &self,
        f: impl FnOnce(&mut Ledger, Millis) -> T,
    ) -> Result<T, Status> {
        self.join_batch(f).map(|(r, _)| r)
    }

    /// Runs `f` in the open batch (opening one if needed), wakes the committer, and returns
    /// the batch id the change will be durable with.
    pub(super) fn join_batch<T>(
        &self,
        f: impl FnOnce(&mut Ledger, Millis) -> T,
    ) -> Result<(T, u64), Status> {
        if let Some((_, why)) = &self.committed.borrow().stopped {
            return Err(Status::unavailable(format!(
                "the coordinator stopped: its state file cannot commit ({why})"
            )));
        }
        let now = self.now();
        let joined = {
            let mut g = lock(&self.ledger);
            if g.open == 0 {
                g.ledger.begin_batch().map_err(status)?;
                g.next += 1;
                g.open = g.next;
            }
            (f(&mut g.ledger, now), g.open)
        };
        self.wake.notify_one();
        Ok(joined)
    }

    /// The group committer: commits the open batch whenever an operation joined it.
    pub(super) async fn committer(
        ledger: Arc<Mutex<Batched>>,
        wake: Arc<tokio::sync::Notify>,
        committed: Arc<tokio::sync::watch::Sender<Committed>>,
    ) {
        loop {
            wake.notified().await;
            let cell = ledger.clone();
            let done = tokio::task::spawn_blocking(move || {
                let mut g = lock(&cell);
                let id = std::mem::take(&mut g.open);
                (id != 0).then(|| (id, g.ledger.commit_batch()))
            })
            .await;
            let Ok(Some((id, result))) = done else {
                continue;
            };
            match result {
                Ok(()) => committed.send_modify(|c| c.done = id),
                Err(e) => {
                    // A full disk or a failing device does not heal between two batches:
                    // one clear error, and the server stops (`Coordinator::stopped`) instead
                    // of answering every later call with the same failure.
                    tracing::error!(error = %e, "the ledger cannot commit; the coordinator stops (nothing acknowledged is lost; free space or fix the disk, then start it again)");
                    committed.send_modify(|c| c.stopped = Some((id, e.to_string())));
                    return;
                }
            }
        }
    }

    /// Resolves, with the reason, once the ledger cannot commit any more.
    pub async fn stopped(&self) -> String {
        let mut rx = self.committed.subscribe();
        match rx.wait_for(|c| c.stopped.is_some()).await {
            Ok(c) => c
                .stopped
                .as_ref()
                .map(|(_, why)| why.clone())
                .unwrap_or_default(),
            Err(_) => "the coordinator shut down".into(),
        }
    }
}
