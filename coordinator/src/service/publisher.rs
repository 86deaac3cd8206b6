//! The publisher: one publish of a shard at a time (per-shard gates), the copy of a verified
//! staging to the final keys and its commit, roll-forward of interrupted publishes, and `gc`.

use super::*;

/// Publish gates by (sweep, shard).
pub(super) type Gates = Arc<Mutex<HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>>;

/// Exclusive right to publish one shard; its map entry goes with the last holder or waiter.
pub(super) struct Gate {
    pub(super) gates: Gates,
    pub(super) key: (String, String),
    pub(super) guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Gate {
    fn drop(&mut self) {
        let mut gates = lock(&self.gates);
        if let Some(guard) = self.guard.take() {
            // The map's reference and the guard's: nobody waits, and a new caller needs the
            // map lock held here.
            if Arc::strong_count(tokio::sync::OwnedMutexGuard::mutex(&guard)) == 2 {
                gates.remove(&self.key);
            }
        }
    }
}

impl Coordinator {
    pub(super) fn gate_mutex(&self, sweep: &str, shard: &str) -> Arc<tokio::sync::Mutex<()>> {
        let key = (sweep.to_owned(), shard.to_owned());
        lock(&self.publishing).entry(key).or_default().clone()
    }

    /// Waits for the right to publish `shard`.
    pub(super) async fn publish_gate(&self, sweep: &str, shard: &str) -> Gate {
        let guard = self.gate_mutex(sweep, shard).lock_owned().await;
        Gate {
            gates: self.publishing.clone(),
            key: (sweep.to_owned(), shard.to_owned()),
            guard: Some(guard),
        }
    }

    /// The right to publish `shard`, unless a call holds it now.
    pub(super) fn try_publish_gate(&self, sweep: &str, shard: &str) -> Option<Gate> {
        let guard = self.gate_mutex(sweep, shard).try_lock_owned().ok()?;
        Some(Gate {
            gates: self.publishing.clone(),
            key: (sweep.to_owned(), shard.to_owned()),
            guard: Some(guard),
        })
    }

    /// Publishes and commits `attempt` (the ledger must be at `Publishing{attempt}`, and the
    /// caller must hold the shard's [`Gate`]); returns how many objects were newly published.
    /// `verified`: the manifest the caller already checked under the same gate (else it is
    /// checked here). A permanent publish failure is recorded as an application failure of
    /// the attempt.
    pub(super) async fn finish_publish(
        &self,
        token: &LeaseToken,
        results: &str,
        verified: Option<AttemptManifest>,
        _gate: &Gate,
    ) -> Result<u64, Status> {
        let LeaseToken {
            sweep,
            shard,
            attempt,
        } = token.clone();
        let (sweep, shard, attempt) = (sweep.as_str(), shard.as_str(), attempt);
        let storage = self.storage(results).await?;
        let (st, t) = (storage.clone(), token.clone());
        let copied = tokio::task::spawn_blocking(move || match verified {
            Some(m) => publish::publish_verified(&st, &m),
            None => publish::publish(&st, &t.sweep, &t.shard, t.attempt),
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        match copied {
            Ok(n) => {
                match self
                    .with_ledger(|l, now| l.commit(sweep, shard, attempt, now))
                    .await?
                {
                    Ok(()) => {}
                    // A concurrent call of the same attempt committed first.
                    Err(LedgerError::Refused(_))
                        if self
                            .read_ledger(|l, _| l.shard(sweep, shard))
                            .is_ok_and(|s| s.state == ShardState::Committed { attempt }) => {}
                    Err(e) => return Err(status(e)),
                }
                lock(&self.live)
                    .progress
                    .remove(&(sweep.to_owned(), shard.to_owned()));
                self.note_commit(&token.sweep, results);
                let t = token.clone();
                // Staging of every attempt of a committed shard is garbage; a failure here
                // only leaves work for `gc`.
                let cleaned = tokio::task::spawn_blocking(move || {
                    publish::clean(&storage, &t.sweep, &t.shard)
                })
                .await;
                if let Ok(Err(e)) = cleaned {
                    tracing::warn!(%sweep, %shard, error = %e, "could not remove staging; `linesweep gc` will");
                }
                Ok(n as u64)
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(%sweep, %shard, %attempt, error = %e, "publishing failed; it will be retried");
                Err(Status::unavailable(e.to_string()))
            }
            Err(e) => {
                tracing::error!(%sweep, %shard, %attempt, error = %e, "the attempt's results cannot be published");
                // Other contents at a final key stay there whoever retries: the shard fails
                // at once. An incomplete or invalid staging is this attempt's failure.
                let kind = match e {
                    PublishError::Conflict { .. } => Failure::Deterministic,
                    _ => Failure::Application,
                };
                self.with_ledger(|l, now| {
                    l.abandon_publish(sweep, shard, attempt, (kind, &e.to_string()), now)
                })
                .await?
                .map_err(status)?;
                Err(Status::failed_precondition(e.to_string()))
            }
        }
    }

    /// Finishes publishes that a crash interrupted (called by the server at start and on the
    /// reaper's timer). Returns how many were committed.
    pub async fn roll_forward(&self) -> usize {
        let pending = match self.read_ledger(|l, _| l.publishing()) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot list interrupted publishes");
                return 0;
            }
        };
        let mut done = 0;
        for token in pending {
            let (sweep, shard, attempt) =
                (token.sweep.as_str(), token.shard.as_str(), token.attempt);
            // A completion is publishing it right now; it is not stuck.
            let Some(gate) = self.try_publish_gate(sweep, shard) else {
                continue;
            };
            let Ok(results) = self.read_ledger(|l, _| l.results(sweep)) else {
                continue;
            };
            // It may have been committed since the list was read.
            if self
                .read_ledger(|l, _| l.shard(sweep, shard))
                .is_ok_and(|s| s.state != ShardState::Publishing { attempt })
            {
                continue;
            }
            let outcome = if results.is_empty() {
                match self
                    .with_ledger(|l, now| l.commit(sweep, shard, attempt, now))
                    .await
                {
                    Ok(r) => r.map(|()| 0).map_err(status),
                    Err(e) => Err(e),
                }
            } else {
                self.finish_publish(&token, &results, None, &gate).await
            };
            match outcome {
                Ok(_) => {
                    tracing::info!(%sweep, %shard, %attempt, "interrupted publish rolled forward");
                    done += 1;
                }
                Err(e) => {
                    tracing::warn!(%sweep, %shard, %attempt, error = e.message(), "rolling a publish forward failed")
                }
            }
        }
        done
    }

    /// Removes staging that no live attempt needs: shards that are committed or cancelled,
    /// and shards the ledger does not know. Returns how many objects were deleted.
    pub async fn gc(&self, sweep: &SweepName, include_failed: bool) -> Result<u64, Status> {
        let results = self
            .read_ledger(|l, _| l.results(sweep.as_str()))
            .map_err(status)?;
        if results.is_empty() {
            return Ok(0);
        }
        let sw = sweep.clone();
        let rows = self.read_committed(move |r| r.shards(sw.as_str())).await?;
        let states: HashMap<String, Shard> = rows.into_iter().map(|r| (r.id, r.shard)).collect();
        let storage = self.storage(&results).await?;
        let sw = sweep.clone();
        tokio::task::spawn_blocking(move || {
            let mut deleted = 0;
            for id in publish::staged_shards(&storage, &sw)? {
                let dead = states.get(id.as_str()).is_none_or(|s| match s.state {
                    ShardState::Committed { .. } | ShardState::Cancelled => true,
                    ShardState::Failed => include_failed,
                    _ => false,
                });
                if dead {
                    deleted += publish::clean(&storage, &sw, &id)?;
                }
            }
            Ok::<_, linesweep_storage::StorageError>(deleted as u64)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::unavailable(e.to_string()))
    }
}

impl Coordinator {
    /// Runs the committed shards `shards` of `sweep` again (`retry --committed`): under each
    /// shard's publish gate, its published files are removed (commit marker first) and the
    /// ledger sends it back to pending, so that its next attempt publishes exactly once.
    /// Failed and cancelled shards are treated alike (their leftovers removed); pending,
    /// running and waiting ones are left alone. Returns how many run again.
    pub async fn rerun_committed(
        &self,
        sweep: &SweepName,
        shards: &[String],
    ) -> Result<usize, Status> {
        let results = self
            .read_ledger(|l, _| l.results(sweep.as_str()))
            .map_err(status)?;
        let storage = self.storage(&results).await?;
        let mut rerun = 0;
        for id in shards {
            let shard =
                ShardId::parse(id.as_str()).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let _gate = self.publish_gate(sweep.as_str(), id).await;
            let current = self
                .read_ledger(|l, _| l.shard(sweep.as_str(), id))
                .map_err(status)?;
            if current.rerun().is_none() {
                continue;
            }
            let (st, sw) = (storage.clone(), sweep.clone());
            let removed = tokio::task::spawn_blocking(move || publish::unpublish(&st, &sw, &shard))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::unavailable(e.to_string()))?;
            rerun += self
                .with_ledger(|l, now| l.rerun(sweep.as_str(), std::slice::from_ref(id), now))
                .await?
                .map_err(status)?;
            tracing::warn!(%sweep, shard = %id, removed, "a committed shard runs again; its published files were removed");
        }
        Ok(rerun)
    }

    /// Checks the ledger's commits of `sweep` against the results location (one listing per
    /// marker table): a commit whose marker is missing there (results deleted, another
    /// endpoint, a rerun cut short) is reported and run again, never reported as committed.
    /// Returns how many.
    pub async fn reconcile(&self, sweep: &SweepName, results: &str) -> Result<usize, Status> {
        let committed = self
            .read_ledger(|l, _| l.committed_ids(sweep.as_str()))
            .map_err(status)?;
        if committed.is_empty() {
            return Ok(0);
        }
        let storage = self.storage(results).await?;
        let sw = sweep.clone();
        let missing = tokio::task::spawn_blocking(move || {
            publish::missing_commits(&storage, &sw, &committed)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::unavailable(e.to_string()))?;
        if missing.is_empty() {
            return Ok(0);
        }
        tracing::warn!(
            %sweep,
            results,
            shards = missing.len(),
            first = %missing[0],
            "the ledger records commits whose results are not in the results location; running them again"
        );
        self.rerun_committed(sweep, &missing).await
    }
}
