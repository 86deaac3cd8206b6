//! `linesweep serve | submit | status`: the coordinator and its clients.

use std::time::Duration;

use anyhow::Context;
use linesweep_coordinator::lease::LeasePolicy;
use linesweep_coordinator::ledger::Ledger;
use linesweep_coordinator::server::{ServeConfig, serve as serve_ledger};
use linesweep_coordinator::service::system_clock;
use linesweep_proto::PROTOCOL_VERSION;
use linesweep_proto::pb;
use linesweep_proto::pb::control_service_client::ControlServiceClient;
use linesweep_worker::sweep;
use tonic::Request;

use crate::cli::{ClientArgs, ServeArgs, StatusArgs, SubmitArgs};
use crate::render::emit;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let token = args
        .token
        .clone()
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let policy = LeasePolicy {
        ttl_ms: (args.lease_ttl * 1000) as i64,
        max_failures: args.max_failures,
    };
    let ledger = Ledger::open(&args.state, policy)?;
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, state = %args.state.display(), "coordinator listening");
        // The first stdout line names the bound address (useful with --listen 127.0.0.1:0).
        if args.token.is_none() {
            emit(&format!(
                "coordinator on {addr}; clients need --token {token} (or LINESWEEP_TOKEN)\n"
            ))?;
        } else {
            emit(&format!("coordinator on {addr}\n"))?;
        }
        let config = ServeConfig {
            token: Some(token),
            reaper_interval: Duration::from_millis((policy.ttl_ms as u64 / 6).clamp(100, 10_000)),
            clock: system_clock(),
        };
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
        };
        serve_ledger(listener, ledger, config, shutdown)
            .await
            .map_err(|e| anyhow::anyhow!(e))
    })
}

fn request<T>(msg: T, client: &ClientArgs) -> anyhow::Result<Request<T>> {
    let mut r = Request::new(msg);
    r.set_timeout(Duration::from_secs(30));
    if let Some(t) = &client.token {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}")
                .parse()
                .context("the token is not valid ASCII")?,
        );
    }
    Ok(r)
}

async fn control(
    client: &ClientArgs,
) -> anyhow::Result<ControlServiceClient<tonic::transport::Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(client.coordinator.clone())
        .with_context(|| format!("bad coordinator URL {}", client.coordinator))?
        .connect_timeout(Duration::from_secs(10));
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {}", client.coordinator))?;
    Ok(ControlServiceClient::new(channel))
}

fn rpc_error(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("coordinator: {} ({:?})", e.message(), e.code())
}

pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let plan = sweep::plan_file(&args.spec)?;
    let shards = plan
        .shards
        .iter()
        .map(|s| pb::ShardSpec {
            id: s.id.clone(),
            config_json: s.config.canonical_json(),
        })
        .collect();
    let msg = pb::SubmitRequest {
        protocol_version: PROTOCOL_VERSION,
        sweep: plan.name.clone(),
        shards,
    };
    let reply = runtime()?.block_on(async {
        let mut c = control(&args.client).await?;
        c.submit(request(msg, &args.client)?)
            .await
            .map_err(rpc_error)
    })?;
    let r = reply.into_inner();
    emit(&format!(
        "sweep {}: {} shards, {} added, {} already known\n",
        plan.name,
        plan.shards.len(),
        r.added,
        r.existing
    ))
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let msg = pb::StatusRequest {
        protocol_version: PROTOCOL_VERSION,
        sweep: args.sweep.clone(),
    };
    let reply = runtime()?.block_on(async {
        let mut c = control(&args.client).await?;
        c.status(request(msg, &args.client)?)
            .await
            .map_err(rpc_error)
    })?;
    let counts = reply.into_inner().counts;
    let total: u64 = counts.values().sum();
    let mut line = format!("sweep {}: {total} shards", args.sweep);
    for state in ["pending", "leased", "committed", "failed", "cancelled"] {
        line.push_str(&format!(
            " · {} {state}",
            counts.get(state).copied().unwrap_or(0)
        ));
    }
    emit(&(line + "\n"))
}
