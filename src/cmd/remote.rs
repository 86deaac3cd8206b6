//! `linesweep serve | submit | status | watch | retry | cancel | workers | gc`: the
//! coordinator and its clients.

use std::time::Duration;

use anyhow::Context;
use linesweep_coordinator::lease::LeasePolicy;
use linesweep_coordinator::ledger::Ledger;
use linesweep_coordinator::server::{ServeConfig, serve as serve_ledger};
use linesweep_coordinator::service::{is_finished, system_clock};
use linesweep_proto::PROTOCOL_VERSION;
use linesweep_proto::pb;
use linesweep_proto::pb::control_service_client::ControlServiceClient;
use linesweep_proto::tls::{CONNECT_TIMEOUT, ClientTls};
use linesweep_worker::sweep::{self, SweepPlan};
use tonic::Request;
use tonic::transport::Channel;

use crate::cli::{
    CancelArgs, ClientArgs, GcArgs, RetryArgs, ServeArgs, StatusArgs, SubmitArgs, SummarizeArgs,
    WatchArgs, WorkersArgs,
};
use crate::render::{self, emit};

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Shards per Submit message: large sweeps go in several, well under gRPC's 4 MiB limit.
const SUBMIT_CHUNK: usize = 2_000;

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let token = args
        .token
        .clone()
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let policy = LeasePolicy {
        ttl_ms: (args.lease_ttl * 1000) as i64,
        max_failures: args.max_failures,
    };
    // A missing bucket, refused credentials or an unreachable store is one error now, not a
    // failure of every shard later.
    if let Some(results) = &args.results {
        linesweep_worker::storage::Storage::open(results)
            .with_context(|| "the default results location (--results)".to_string())?;
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(linesweep_proto::tls::server_config(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ledger = Ledger::open(&args.state, policy)?;
    if args.recover
        && let Some(results) = &args.results
    {
        recover_from(&mut ledger, results)?;
    }
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, state = %args.state.display(), scheme, "coordinator listening");
        // The first stdout line names the bound address (useful with --listen 127.0.0.1:0).
        if args.token.is_none() {
            emit(&format!(
                "coordinator on {scheme}://{addr}; clients need --token {token} (or LINESWEEP_TOKEN)\n"
            ))?;
        } else {
            emit(&format!("coordinator on {scheme}://{addr}\n"))?;
        }
        let config = ServeConfig {
            token: Some(token),
            reaper_interval: reaper_interval(&policy),
            clock: system_clock(),
            default_results: args.results.clone().unwrap_or_default(),
            check_shard: Some(shard_check()),
            take_over: args.recover,
            tls,
            summaries: linesweep_coordinator::service::SummaryPolicy {
                every_commits: args.summary_commits,
                every: Duration::from_secs(args.summary_every),
            },
            max_connections: args.max_connections,
        };
        let shutdown = async {
            shutdown_signal().await;
            tracing::info!("shutting down");
        };
        serve_ledger(listener, ledger, config, shutdown)
            .await
            .map_err(|e| anyhow::anyhow!(e))
    })
}

/// Records the shards committed in the results root `results` in `ledger` (see
/// `linesweep_coordinator::recover`), and says what it found.
pub(crate) fn recover_from(ledger: &mut Ledger, results: &str) -> anyhow::Result<()> {
    let storage = linesweep_worker::storage::Storage::open(results)?;
    let found =
        linesweep_coordinator::recover::recover(ledger, &storage, results, (system_clock())())
            .with_context(|| format!("rebuilding the ledger from {results}"))?;
    let shards: usize = found.found.values().sum();
    if shards == 0 && found.unreadable == 0 {
        return Ok(());
    }
    tracing::info!(
        sweeps = found.found.len(),
        shards,
        newly_committed = found.recorded,
        unreadable = found.unreadable,
        %results,
        "ledger rebuilt from the results root: shards with published results are committed"
    );
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// The planner's rules for submitted shards: the coordinator refuses with `INVALID_ARGUMENT`
/// what a worker would refuse after leasing it.
pub(crate) fn shard_check() -> linesweep_coordinator::service::ShardCheck {
    std::sync::Arc::new(linesweep_worker::config::check_submitted)
}

pub(crate) fn reaper_interval(policy: &LeasePolicy) -> Duration {
    Duration::from_millis((policy.ttl_ms as u64 / 6).clamp(100, 10_000))
}

/// `msg` with the token (`linesweep_proto::client`, as the worker agent sends it) and a
/// 60 s deadline.
pub(crate) fn request<T>(msg: T, token: Option<&str>) -> anyhow::Result<Request<T>> {
    let credentials = linesweep_proto::client::Credentials::new(token)?;
    Ok(credentials.request(msg, Duration::from_secs(60)))
}

/// A control-service client of the coordinator at `url`, over TLS for `https://`
/// (`linesweep_proto::tls`: the same rules as the worker agent's). Connecting, the handshake
/// and the first answer are bounded ([`CONNECT_TIMEOUT`] each), so a coordinator that accepts
/// and never answers is an error within seconds, not a hang.
pub(crate) async fn connect(
    url: &str,
    tls: &ClientTls,
) -> anyhow::Result<ControlServiceClient<Channel>> {
    let endpoint = linesweep_proto::tls::endpoint(url, tls, CONNECT_TIMEOUT)?;
    let unreachable = |e: &(dyn std::error::Error + 'static)| {
        anyhow::anyhow!(
            "cannot reach the coordinator at {url}: {}",
            linesweep_proto::tls::explain(url, e)
        )
    };
    let reach = async {
        let channel = endpoint.connect().await.map_err(|e| unreachable(&e))?;
        // HTTP/2 is set up lazily: a plain-text client of a TLS server only finds out at its
        // first call, as "operation was canceled". Make that first call the health check.
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let mut check = Request::new(tonic_health::pb::HealthCheckRequest::default());
        check.set_timeout(CONNECT_TIMEOUT);
        health.check(check).await.map_err(|e| unreachable(&e))?;
        anyhow::Ok(channel)
    };
    // Belt and braces over the two bounds above: nothing in reaching it waits longer.
    let limit = CONNECT_TIMEOUT * 2;
    let channel = tokio::time::timeout(limit, reach).await.map_err(|_| {
        anyhow::anyhow!(
            "cannot reach the coordinator at {url}: no answer within {} s (it accepted the connection but never answered; is the address a coordinator's?)",
            limit.as_secs()
        )
    })??;
    Ok(ControlServiceClient::new(channel))
}

/// [`connect`] with a client command's flags.
async fn open(client: &ClientArgs) -> anyhow::Result<ControlServiceClient<Channel>> {
    connect(&client.coordinator, &client.tls()).await
}

fn rpc_error(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("coordinator: {} ({:?})", e.message(), e.code())
}

/// What a submission did.
pub(crate) struct Submitted {
    /// Shards new to the ledger.
    pub added: u64,
    /// Shards it knew.
    pub existing: u64,
    /// Committed shards whose results were missing from the location, pending again.
    pub rerun: u64,
    /// Where the results go.
    pub location: String,
}

/// Submits a plan in chunks.
pub(crate) async fn submit_plan(
    c: &mut ControlServiceClient<Channel>,
    token: Option<&str>,
    plan: &SweepPlan,
    results: &str,
    allow_changed: bool,
) -> anyhow::Result<Submitted> {
    let (mut added, mut existing, mut rerun, mut location) = (0, 0, 0, String::new());
    // Streamed: each chunk's configs are built as it is sent, so memory holds one chunk.
    let mut shards = plan.shards();
    for i in 0.. {
        let chunk: Vec<pb::ShardSpec> = shards
            .by_ref()
            .take(SUBMIT_CHUNK)
            .map(|s| pb::ShardSpec {
                id: s.id.to_string(),
                config_json: s.config.canonical_json(),
                needs: s.needs.iter().map(ToString::to_string).collect(),
            })
            .collect();
        if chunk.is_empty() {
            break;
        }
        let msg = pb::SubmitRequest {
            protocol_version: PROTOCOL_VERSION,
            sweep: plan.name.to_string(),
            shards: chunk,
            results: results.to_owned(),
            allow_changed,
            continuation: i > 0,
            base_json: plan.base_json.clone(),
        };
        let r = c
            .submit(request(msg, token)?)
            .await
            .map_err(rpc_error)?
            .into_inner();
        added += r.added;
        existing += r.existing;
        rerun += r.rerun;
        location = r.results;
    }
    Ok(Submitted {
        added,
        existing,
        rerun,
        location,
    })
}

/// A `file://` URL or path made absolute, so that workers started elsewhere agree on it.
pub(crate) fn absolute_location(loc: &str) -> anyhow::Result<String> {
    if loc.contains("://") {
        return Ok(loc.to_owned());
    }
    Ok(std::path::absolute(loc)
        .with_context(|| format!("results location {loc}"))?
        .display()
        .to_string())
}

pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let plan = sweep::plan_file(&args.spec)?;
    let results = match &plan.results {
        Some(r) => absolute_location(r)?,
        None => String::new(),
    };
    // Parents named by id outside the sweep must be in the results root already (with the
    // coordinator's default location, unknown here, the workers find out instead).
    if !results.is_empty() {
        let storage = linesweep_worker::storage::Storage::open(&results)?;
        linesweep_worker::exec::check_outside_parents(&plan, &storage)?;
    }
    let token = args.client.token.as_deref();
    let s = runtime()?.block_on(async {
        let mut c = open(&args.client).await?;
        submit_plan(&mut c, token, &plan, &results, args.new).await
    })?;
    let rerun = if s.rerun > 0 {
        format!(
            "; {} committed shards whose results are missing there run again",
            s.rerun
        )
    } else {
        String::new()
    };
    emit(&format!(
        "sweep {}: {} shards, {} added, {} already known; results in {}{rerun}\n",
        plan.name,
        plan.len(),
        s.added,
        s.existing,
        s.location,
    ))
}

/// One `Status` call on an open connection.
pub(crate) async fn fetch_status(
    c: &mut ControlServiceClient<Channel>,
    token: Option<&str>,
    sweep: &str,
) -> anyhow::Result<pb::StatusReply> {
    let msg = pb::StatusRequest {
        protocol_version: PROTOCOL_VERSION,
        sweep: sweep.to_owned(),
    };
    Ok(c.status(request(msg, token)?)
        .await
        .map_err(rpc_error)?
        .into_inner())
}

async fn status_of(client: &ClientArgs, sweep: &str) -> anyhow::Result<pb::StatusReply> {
    let mut c = open(client).await?;
    fetch_status(&mut c, client.token.as_deref(), sweep).await
}

/// Every shard of `sweep`, page by page (a sweep of any size fits no single message).
async fn list_shards(
    c: &mut ControlServiceClient<Channel>,
    token: Option<&str>,
    sweep: &str,
) -> anyhow::Result<Vec<pb::ShardInfo>> {
    let mut shards = Vec::new();
    let mut page_token = String::new();
    loop {
        let msg = pb::ListShardsRequest {
            protocol_version: PROTOCOL_VERSION,
            sweep: sweep.to_owned(),
            page_token,
        };
        let page = c
            .list_shards(request(msg, token)?)
            .await
            .map_err(rpc_error)?
            .into_inner();
        shards.extend(page.shards);
        if page.next_page_token.is_empty() {
            return Ok(shards);
        }
        page_token = page.next_page_token;
    }
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let token = args.client.token.as_deref();
    let (st, shards) = runtime()?.block_on(async {
        let st = status_of(&args.client, &args.sweep).await?;
        let shards = if args.shards {
            let mut c = open(&args.client).await?;
            list_shards(&mut c, token, &args.sweep).await?
        } else {
            Vec::new()
        };
        anyhow::Ok((st, shards))
    })?;
    if args.json {
        return emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(&render::status_json(&args.sweep, &st, &shards))?
        ));
    }
    let mut out = render::status(&args.sweep, &st);
    if args.shards {
        out.push_str(&render::shard_table(&shards));
    }
    emit(&out)
}

pub fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let token = args.client.token.as_deref();
    runtime()?.block_on(async {
        let mut c = open(&args.client).await?;
        let msg = pb::StatusRequest {
            protocol_version: PROTOCOL_VERSION,
            sweep: args.sweep.clone(),
        };
        let mut stream = c
            .watch(request(msg, token)?)
            .await
            .map_err(rpc_error)?
            .into_inner();
        let mut last = None;
        while let Some(update) = stream.message().await.map_err(rpc_error)? {
            emit(&format!("{}\n", render::status_line(&args.sweep, &update)))?;
            last = Some(update);
        }
        if let Some(last) = last {
            anyhow::ensure!(
                is_finished(&last),
                "the coordinator closed the stream before the sweep finished"
            );
            emit(&render::status(&args.sweep, &last))?;
        }
        anyhow::Ok(())
    })
}

pub fn retry(args: RetryArgs) -> anyhow::Result<()> {
    let token = args.client.token.as_deref();
    let n = runtime()?.block_on(async {
        let mut c = open(&args.client).await?;
        let msg = pb::RetryRequest {
            protocol_version: PROTOCOL_VERSION,
            sweep: args.sweep.clone(),
            shards: args.shards.clone(),
            committed: args.committed,
        };
        anyhow::Ok(
            c.retry(request(msg, token)?)
                .await
                .map_err(rpc_error)?
                .into_inner()
                .retried,
        )
    })?;
    let note = if args.committed {
        "their published results and snapshots were removed"
    } else {
        "committed shards are rerun only with --committed"
    };
    emit(&format!(
        "sweep {}: {n} shards pending again ({note})\n",
        args.sweep
    ))
}

pub fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let token = args.client.token.as_deref();
    let n = runtime()?.block_on(async {
        let mut c = open(&args.client).await?;
        let msg = pb::CancelRequest {
            protocol_version: PROTOCOL_VERSION,
            sweep: args.sweep.clone(),
            now: args.now,
        };
        anyhow::Ok(
            c.cancel(request(msg, token)?)
                .await
                .map_err(rpc_error)?
                .into_inner()
                .cancelled,
        )
    })?;
    let running = if args.now {
        "running shards stop at their next heartbeat"
    } else {
        "running shards finish"
    };
    emit(&format!(
        "sweep {}: {n} shards cancelled; {running} (`linesweep retry` runs them again)\n",
        args.sweep
    ))
}

pub fn workers(args: WorkersArgs) -> anyhow::Result<()> {
    let token = args.client.token.as_deref();
    let list = runtime()?.block_on(async {
        let mut c = open(&args.client).await?;
        let msg = pb::ListWorkersRequest {
            protocol_version: PROTOCOL_VERSION,
        };
        anyhow::Ok(
            c.list_workers(request(msg, token)?)
                .await
                .map_err(rpc_error)?
                .into_inner()
                .workers,
        )
    })?;
    emit(&render::workers(&list))
}

pub fn summarize(args: SummarizeArgs) -> anyhow::Result<()> {
    let sweep = linesweep_storage::ids::SweepName::parse(args.sweep.clone())?;
    let storage = linesweep_worker::storage::Storage::open(&args.results)?;
    let done = linesweep_coordinator::summary::rewrite(&storage, &sweep)
        .with_context(|| format!("summarizing sweep {sweep} in {}", args.results))?;
    anyhow::ensure!(
        done.tables.iter().any(|(_, total, _)| *total > 0),
        "no committed shard of sweep {sweep} in {} (nothing under {})",
        args.results,
        linesweep_storage::layout::result_sweep_prefix(
            linesweep_storage::layout::COMMIT_TABLE,
            &sweep
        )
    );
    let mut out = String::new();
    for (table, total, added) in &done.tables {
        out.push_str(&format!(
            "{}: {total} shards ({added} added)\n",
            storage.root().trim_end_matches('/').to_owned()
                + "/"
                + &linesweep_storage::layout::summary_key(table, &sweep)
        ));
    }
    emit(&out)
}

pub fn gc(args: GcArgs) -> anyhow::Result<()> {
    let token = args.client.token.as_deref();
    let n = runtime()?.block_on(async {
        let mut c = open(&args.client).await?;
        let msg = pb::GcRequest {
            protocol_version: PROTOCOL_VERSION,
            sweep: args.sweep.clone(),
            include_failed: args.failed,
        };
        anyhow::Ok(
            c.gc(request(msg, token)?)
                .await
                .map_err(rpc_error)?
                .into_inner()
                .deleted,
        )
    })?;
    emit(&format!(
        "sweep {}: {n} staged objects of dead attempts removed\n",
        args.sweep
    ))
}
