//! The wire layer: the tonic `WorkerService` and `ControlService` impls: check the request,
//! convert wire ↔ domain, call the coordinator, map errors to gRPC answers.

use super::*;

/// The wire's failure kind; a worker must name one.
pub(super) fn failure_kind(kind: i32) -> Result<Failure, Status> {
    match pb::FailureKind::try_from(kind) {
        Ok(pb::FailureKind::Application) => Ok(Failure::Application),
        Ok(pb::FailureKind::Infrastructure) => Ok(Failure::Infrastructure),
        Ok(pb::FailureKind::Deterministic) => Ok(Failure::Deterministic),
        Ok(pb::FailureKind::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
            "a failure needs its kind (application, infrastructure or deterministic), got {kind}"
        ))),
    }
}

pub(super) fn check_version(v: u32) -> Result<(), Status> {
    if v == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!(
            "protocol version {v} (0 = unset); this coordinator speaks {PROTOCOL_VERSION}"
        )))
    }
}

/// The request's lease token, validated: the edge where the wire's strings become ids.
pub(super) fn token(t: Option<pb::Token>) -> Result<LeaseToken, Status> {
    let t = t.ok_or_else(|| Status::invalid_argument("missing token (sweep, shard, attempt)"))?;
    LeaseToken::try_from(t).map_err(Status::invalid_argument)
}

/// A request's sweep name, validated.
pub(super) fn sweep_name(s: &str) -> Result<SweepName, Status> {
    SweepName::parse(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The one place ledger errors become gRPC answers: a refusal is a verdict, not an error.
pub(super) fn verdict(r: Result<(), LedgerError>) -> Result<LeaseVerdict, Status> {
    match r {
        Ok(()) => Ok(LeaseVerdict::Ok),
        Err(LedgerError::Refused(crate::lease::Refused::LeaseLost {
            state: crate::lease::StateKind::Cancelled,
            ..
        })) => Ok(LeaseVerdict::Cancel),
        Err(LedgerError::Refused(_)) => Ok(LeaseVerdict::LeaseLost),
        Err(e) => Err(status(e)),
    }
}

pub(super) fn status(e: LedgerError) -> Status {
    match e {
        LedgerError::UnknownShard { .. } | LedgerError::UnknownSweep(_) => {
            Status::not_found(e.to_string())
        }
        LedgerError::Changed { sweep, old, new } => Status::failed_precondition(format!(
            "sweep {sweep} already exists with other settings; pass --new to add the changed shards anyway, or give the sweep another name. Changed: {}",
            diff(&old, &new)
        )),
        LedgerError::ResultsMoved { .. } => Status::failed_precondition(e.to_string()),
        LedgerError::UnknownNeed { .. } | LedgerError::Cycle { .. } => {
            Status::invalid_argument(e.to_string())
        }
        LedgerError::Refused(_) => Status::aborted(e.to_string()),
        LedgerError::Locked { .. } => Status::unavailable(e.to_string()),
        LedgerError::Full { .. } => Status::resource_exhausted(e.to_string()),
        LedgerError::Corrupt { .. } | LedgerError::Sqlite(_) => Status::internal(e.to_string()),
    }
}

/// `key: old → new` for every setting that differs between two flat JSON objects.
pub(super) fn diff(old: &str, new: &str) -> String {
    let parse = |s: &str| -> BTreeMap<String, serde_json::Value> {
        serde_json::from_str(s).unwrap_or_default()
    };
    let (a, b) = (parse(old), parse(new));
    let show = |v: Option<&serde_json::Value>| v.map_or("(unset)".to_owned(), |v| v.to_string());
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let lines: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} → {}", show(a.get(k)), show(b.get(k))))
        .collect();
    if lines.is_empty() {
        "(no setting differs)".into()
    } else {
        lines.join("; ")
    }
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for Coordinator {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        if req.worker.is_empty() {
            return Err(Status::invalid_argument("worker name is empty"));
        }
        let now = self.now();
        lock(&self.live).workers.insert(
            req.worker.clone(),
            WorkerEntry {
                device: req.device.clone(),
                slots: req.slots,
                last_seen: now,
                unhealthy: bounded(&req.unhealthy),
                device_check: bounded(&req.device_check),
            },
        );
        if req.unhealthy.is_empty() {
            tracing::info!(worker = %req.worker, device = %req.device, slots = req.slots, "worker registered");
        } else {
            tracing::warn!(worker = %req.worker, reason = %req.unhealthy, "worker unhealthy: it takes no shards until it recovers");
        }
        Ok(Response::new(pb::RegisterReply {
            heartbeat_interval_ms: self.heartbeat_interval_ms,
        }))
    }

    async fn lease(
        &self,
        req: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        if req.worker.is_empty() {
            return Err(Status::invalid_argument("worker name is empty"));
        }
        self.seen(&req.worker);
        let (lease, ttl) = self
            .with_ledger(|l, now| {
                let lease = l.lease(&req.worker, now).and_then(|lease| match lease {
                    Some(lease) => {
                        let results = l.results(&lease.sweep)?;
                        Ok((Some((lease, results)), false))
                    }
                    None => Ok((None, l.reads().more_may_come()?)),
                });
                (lease, l.policy().ttl_ms)
            })
            .await?;
        let (lease, waiting) = lease.map_err(status)?;
        let granted = lease.map(|(l, results)| pb::Granted {
            token: Some(pb::Token {
                sweep: l.sweep,
                shard: l.shard,
                attempt: l.attempt.get(),
            }),
            config_json: l.config_json,
            lease_ttl_ms: ttl as u64,
            results,
        });
        Ok(Response::new(pb::LeaseReply { granted, waiting }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let t = token(req.token)?;
        let v = verdict(self.with_ledger_unsynced(|l, now| {
            l.heartbeat(t.sweep.as_str(), t.shard.as_str(), t.attempt, now)
        })?)?;
        if v == LeaseVerdict::Ok {
            let mut live = lock(&self.live);
            live.progress.insert(
                (t.sweep.to_string(), t.shard.to_string()),
                Progress {
                    attempt: t.attempt,
                    phase: req.phase,
                    done: req.done,
                    total: req.total,
                },
            );
        }
        Ok(Response::new(pb::HeartbeatReply { verdict: v.into() }))
    }

    async fn complete(
        &self,
        req: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let t = token(req.token)?;
        let (sweep, shard, attempt) = (t.sweep.as_str(), t.shard.as_str(), t.attempt);
        let results = self.read_ledger(|l, _| l.results(sweep)).map_err(status)?;
        if results.is_empty() {
            let v = verdict(
                self.with_ledger(|l, now| l.complete(sweep, shard, attempt, now))
                    .await?,
            )?;
            return Ok(Response::new(pb::CompleteReply {
                verdict: v.into(),
                published: 0,
            }));
        }
        // One call at a time per shard from here: a retry after a lost reply, or the reaper's
        // roll-forward, waits, then finds the attempt committed.
        let gate = self.publish_gate(sweep, shard).await;
        // Check the staged output before recording any intent: an attempt that staged nothing
        // is told so and the shard is left as it is (the worker reports the failure).
        let holds = self.read_ledger(|l, now| {
            l.shard(sweep, shard)
                .map(|s| matches!(s.begin_publish(attempt, now), Ok(Publish::Start(_))))
        });
        let mut verified = None;
        if holds.map_err(status)? {
            let storage = self.storage(&results).await?;
            let t = t.clone();
            let check = tokio::task::spawn_blocking(move || {
                publish::verify(&storage, &t.sweep, &t.shard, t.attempt)
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
            match check {
                Ok(m) => verified = Some(m),
                Err(e @ PublishError::Storage(_)) => {
                    return Err(Status::unavailable(e.to_string()));
                }
                Err(e) => return Err(Status::failed_precondition(e.to_string())),
            }
        }
        let decision = self
            .with_ledger(|l, now| l.begin_publish(sweep, shard, attempt, now))
            .await?;
        let published = match decision {
            Ok(Publish::AlreadyCommitted) => 0,
            Ok(Publish::Start(_) | Publish::Resume) => {
                self.finish_publish(&t, &results, verified, &gate).await?
            }
            Err(e) => {
                let v = verdict(Err(e))?;
                return Ok(Response::new(pb::CompleteReply {
                    verdict: v.into(),
                    published: 0,
                }));
            }
        };
        tracing::info!(%sweep, %shard, %attempt, published, "shard committed");
        Ok(Response::new(pb::CompleteReply {
            verdict: LeaseVerdict::Ok.into(),
            published,
        }))
    }

    async fn fail(&self, req: Request<pb::FailRequest>) -> Result<Response<pb::FailReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let t = token(req.token)?;
        let kind = if req.preempted {
            None
        } else {
            Some(failure_kind(req.kind)?)
        };
        let result = self
            .with_ledger(|l, now| match kind {
                None => l
                    .preempt(t.sweep.as_str(), t.shard.as_str(), t.attempt, now)
                    .map(|()| ShardState::Pending),
                Some(kind) => l.fail(
                    t.sweep.as_str(),
                    t.shard.as_str(),
                    t.attempt,
                    (kind, &req.error),
                    now,
                ),
            })
            .await?;
        let (v, state) = match result {
            Ok(s) => {
                lock(&self.live)
                    .progress
                    .remove(&(t.sweep.to_string(), t.shard.to_string()));
                (LeaseVerdict::Ok, wire_state(s.kind()))
            }
            Err(e) => (verdict(Err(e))?, pb::ShardState::Unspecified),
        };
        Ok(Response::new(pb::FailReply {
            verdict: v.into(),
            state: state.into(),
        }))
    }
}

/// Shards read for one page of `ListShards`.
const PAGE_SHARDS: usize = 10_000;

/// Bytes of shard entries in one page of `ListShards`: a quarter of gRPC's default 4 MiB
/// limit, whatever the length of the shards' last errors.
const PAGE_BYTES: usize = 1 << 20;

/// The reply for `rows` (positions and shards): as many as fit in [`PAGE_BYTES`] (at least
/// one), and the token of the next page unless these were the last.
fn page(rows: &[(i64, ShardRow)]) -> pb::ListShardsReply {
    let mut shards = Vec::new();
    let mut bytes = 0;
    let mut last = None;
    for (pos, row) in rows {
        let info = shard_info(row);
        bytes += prost::Message::encoded_len(&info) + 4;
        if bytes > PAGE_BYTES && !shards.is_empty() {
            break;
        }
        shards.push(info);
        last = Some(*pos);
    }
    let more = shards.len() < rows.len() || rows.len() == PAGE_SHARDS;
    pb::ListShardsReply {
        shards,
        next_page_token: match (more, last) {
            (true, Some(pos)) => pos.to_string(),
            _ => String::new(),
        },
    }
}

pub(super) type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::StatusReply, Status>> + Send>>;

#[tonic::async_trait]
impl pb::control_service_server::ControlService for Coordinator {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        if req.sweep.is_empty() || req.shards.is_empty() {
            return Err(Status::invalid_argument(
                "a submission needs a sweep name and at least one shard",
            ));
        }
        let sweep = sweep_name(&req.sweep)?;
        for s in &req.shards {
            for id in std::iter::once(&s.id).chain(&s.needs) {
                ShardId::parse(id.as_str()).map_err(|e| Status::invalid_argument(e.to_string()))?;
            }
        }
        self.check_shards(&req.shards).await?;
        let results = if req.results.is_empty() {
            self.default_results.clone()
        } else {
            req.results.clone()
        };
        if results.is_empty() {
            return Err(Status::invalid_argument(
                "the sweep names no results location ([storage] results) and the coordinator has no default (serve --results)",
            ));
        }
        check_location(&results)?;
        if !req.results.is_empty()
            && !self.default_results.is_empty()
            && req.results != self.default_results
        {
            tracing::warn!(%sweep, spec = %req.results, serve = %self.default_results, "the spec's [storage] results wins over serve --results");
        }
        if !req.continuation {
            self.claim_owner(&sweep, &results).await?;
        }
        let meta = SweepMeta {
            results: results.clone(),
            base_json: req.base_json,
        };
        let mode = if req.continuation {
            SubmitMode::Continuation
        } else {
            SubmitMode::Start {
                allow_changed: req.allow_changed,
            }
        };
        let shards: Vec<NewShard> = req
            .shards
            .into_iter()
            .map(|s| NewShard {
                id: s.id,
                config_json: s.config_json,
                needs: s.needs,
            })
            .collect();
        let r = self
            .with_ledger(|l, now| l.submit_sweep(sweep.as_str(), &meta, mode, &shards, now))
            .await?
            .map_err(status)?;
        // Once per submission: the commits a rerun would report are checked against the
        // location first.
        let rerun = if req.continuation {
            0
        } else {
            self.reconcile(&sweep, &results).await?
        };
        Ok(Response::new(pb::SubmitReply {
            added: r.added as u64,
            existing: r.existing as u64,
            results,
            rerun: rerun as u64,
        }))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        Ok(Response::new(self.status_reply(&req.sweep).await?))
    }

    type WatchStream = StatusStream;

    async fn watch(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let first = self.status_reply(&req.sweep).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let mut last = first;
            let mut finished = is_finished(&last);
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            while !finished {
                tokio::time::sleep(this.watch_interval).await;
                let next = match this.status_reply(&req.sweep).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                finished = is_finished(&next);
                if next != last || finished {
                    if tx.send(Ok(next.clone())).await.is_err() {
                        return;
                    }
                    last = next;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn retry(
        &self,
        req: Request<pb::RetryRequest>,
    ) -> Result<Response<pb::RetryReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let n = if req.committed {
            if req.shards.is_empty() {
                return Err(Status::invalid_argument(
                    "retry --committed reruns only the shards it names (--shard ID)",
                ));
            }
            self.rerun_committed(&sweep_name(&req.sweep)?, &req.shards)
                .await?
        } else if req.shards.is_empty() {
            self.bulk(&req.sweep, Bulk::Retry).await?
        } else {
            self.with_ledger(|l, now| l.retry(&req.sweep, Some(&req.shards), now))
                .await?
                .map_err(status)?
        };
        Ok(Response::new(pb::RetryReply { retried: n as u64 }))
    }

    async fn cancel(
        &self,
        req: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let n = self
            .bulk(&req.sweep, Bulk::Cancel { running: req.now })
            .await?;
        Ok(Response::new(pb::CancelReply {
            cancelled: n as u64,
        }))
    }

    async fn list_shards(
        &self,
        req: Request<pb::ListShardsRequest>,
    ) -> Result<Response<pb::ListShardsReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let sweep = req.sweep.clone();
        let after = match req.page_token.as_str() {
            "" => 0,
            t => t.parse::<i64>().map_err(|_| {
                Status::invalid_argument(format!(
                    "page token `{t}` is not one this coordinator gave"
                ))
            })?,
        };
        let rows = self
            .read_committed(move |r| {
                r.results(&sweep)?;
                r.shards_after(&sweep, after, PAGE_SHARDS)
            })
            .await?;
        Ok(Response::new(page(&rows)))
    }

    async fn list_workers(
        &self,
        req: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersReply>, Status> {
        check_version(req.into_inner().protocol_version)?;
        let now = self.now();
        let ttl = self.read_ledger(|l, _| l.policy().ttl_ms);
        let held = self.read_committed(|r| r.leases_by_worker()).await?;
        let live = lock(&self.live);
        let workers = live
            .workers
            .iter()
            // A worker silent for three TTLs is gone (its leases have expired by then).
            .filter(|(_, w)| now - w.last_seen <= 3 * ttl)
            .map(|(name, w)| pb::WorkerInfo {
                name: name.clone(),
                device: w.device.clone(),
                slots: w.slots,
                last_seen_ms: (now - w.last_seen).max(0) as u64,
                shards: held.get(name).cloned().unwrap_or_default(),
                unhealthy: w.unhealthy.clone(),
                device_check: w.device_check.clone(),
            })
            .collect();
        Ok(Response::new(pb::ListWorkersReply { workers }))
    }

    async fn gc(&self, req: Request<pb::GcRequest>) -> Result<Response<pb::GcReply>, Status> {
        let req = req.into_inner();
        check_version(req.protocol_version)?;
        let deleted = Coordinator::gc(self, &sweep_name(&req.sweep)?, req.include_failed).await?;
        Ok(Response::new(pb::GcReply { deleted }))
    }
}

/// A worker's free text (health, device verdict) as kept for `linesweep workers`: at most
/// 2,000 characters, so that a misbehaving worker cannot grow the coordinator's memory.
fn bounded(text: &str) -> String {
    match text.char_indices().nth(2000) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// The longest results location a submission may name (an S3 URL or a path; longer ones are
/// refused here rather than overflowing gRPC metadata in an error message).
const MAX_LOCATION: usize = 1024;

/// A submitted results location is absolute: a URL (`s3://`, `file://`) or an absolute
/// path. A relative one would be resolved against the coordinator's working directory, which
/// no worker shares.
fn check_location(results: &str) -> Result<(), Status> {
    if results.len() > MAX_LOCATION {
        return Err(Status::invalid_argument(format!(
            "the results location is {} bytes long; at most {MAX_LOCATION} are accepted",
            results.len()
        )));
    }
    if !results.contains("://") && !std::path::Path::new(results).is_absolute() {
        let shown: String = results.chars().take(80).collect();
        return Err(Status::invalid_argument(format!(
            "the results location `{shown}` is relative; submit an absolute path or a URL \
             (`linesweep submit` makes [storage] results absolute)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_name_each_changed_setting() {
        let d = diff(
            r#"{"train.epochs":3,"model.hidden":[512]}"#,
            r#"{"train.epochs":5,"model.hidden":[512],"train.lr":0.1}"#,
        );
        assert_eq!(d, "train.epochs: 3 → 5; train.lr: (unset) → 0.1");
    }

    fn row(i: i64, error: &str) -> (i64, ShardRow) {
        let shard = crate::lease::Shard {
            last_error: Some(error.to_owned()),
            ..Default::default()
        };
        let id = format!("s{i}");
        (i, ShardRow { id, shard })
    }

    #[test]
    fn a_page_stays_under_its_byte_budget_and_says_where_the_next_starts() {
        // 3,000 shards with 1 KB errors: about 3 MB, three quarters of gRPC's limit.
        let long = "e".repeat(1000);
        let rows: Vec<_> = (1..=3_000).map(|i| row(i, &long)).collect();
        let first = page(&rows);
        let bytes: usize = first.shards.iter().map(prost::Message::encoded_len).sum();
        assert!(bytes <= PAGE_BYTES && bytes > PAGE_BYTES / 2, "{bytes}");
        let n = first.shards.len();
        assert_eq!(first.next_page_token, n.to_string());
        // A short read is the last page; a full read may have more behind it.
        let last = page(&rows[2_990..]);
        assert_eq!((last.shards.len(), last.next_page_token.as_str()), (10, ""));
        let full: Vec<_> = (1..=PAGE_SHARDS as i64).map(|i| row(i, "")).collect();
        assert_eq!(page(&full).next_page_token, PAGE_SHARDS.to_string());
        // One entry bigger than the budget still goes, alone.
        let huge = [row(7, &"x".repeat(2 * PAGE_BYTES))];
        assert_eq!(page(&huge).shards.len(), 1);
    }
}
