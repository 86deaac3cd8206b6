//! `linesweep bench coordinator`: the control plane under load, with no training.
//!
//! Simulated workers (tokio tasks sharing a few HTTP/2 connections) lease, heartbeat and
//! complete shards against an in-process coordinator whose ledger is a real SQLite file with
//! the production durability settings. Then a large sweep is planned and submitted in chunks.
//! The RSS figures are the peak of this whole process (coordinator and clients together), so
//! they are an upper bound for the coordinator alone.

use std::time::{Duration, Instant};

use anyhow::Context;
use linesweep_coordinator::lease::LeasePolicy;
use linesweep_coordinator::ledger::{Ledger, NewShard, SubmitMode, SweepMeta};
use linesweep_coordinator::server::{ServeConfig, serve};
use linesweep_coordinator::service::system_clock;
use linesweep_proto::pb::worker_service_client::WorkerServiceClient;
use linesweep_proto::{PROTOCOL_VERSION, pb};
use linesweep_worker::sweep;
use tonic::transport::Channel;

use super::remote::{connect, request, runtime, submit_plan};
use crate::cli::CoordinatorBenchArgs;
use crate::render::emit;

const TOKEN: &str = "bench";

/// Peak resident set size of this process, in MiB (Linux; 0 elsewhere).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Simulated workers cycling lease → heartbeat → complete. Without `until` each stops when
/// nothing is pending; with it, they poll on until it turns true, and give each lease back
/// instead of completing it (the load behind another measurement, on a sweep whose shards
/// have results to publish).
async fn cycles(
    channels: Vec<Channel>,
    workers: usize,
    rate: f64,
    until: Option<tokio::sync::watch::Receiver<bool>>,
) -> anyhow::Result<(usize, Vec<(Instant, f64)>)> {
    let think = if rate > 0.0 {
        Duration::from_secs_f64(workers as f64 / rate)
    } else {
        Duration::ZERO
    };
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let mut client = WorkerServiceClient::new(channels[w % channels.len()].clone());
        // Spread the first requests over one think time instead of a thundering herd.
        let offset = think.mul_f64(w as f64 / workers as f64);
        let until = until.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let name = format!("sim-{w}");
            tokio::time::sleep(offset).await;
            loop {
                let cycle = Instant::now();
                let started = Instant::now();
                let lease = client
                    .lease(request(
                        pb::LeaseRequest {
                            protocol_version: PROTOCOL_VERSION,
                            worker: name.clone(),
                        },
                        Some(TOKEN),
                    )?)
                    .await?
                    .into_inner();
                latencies.push((started, started.elapsed().as_secs_f64() * 1000.0));
                let Some(granted) = lease.granted else {
                    match &until {
                        Some(u) if !*u.borrow() => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        _ => break,
                    }
                };
                let token = granted.token;
                client
                    .heartbeat(request(
                        pb::HeartbeatRequest {
                            protocol_version: PROTOCOL_VERSION,
                            token: token.clone(),
                            phase: "train".into(),
                            done: 1,
                            total: 2,
                        },
                        Some(TOKEN),
                    )?)
                    .await?;
                if until.is_some() {
                    let release = pb::FailRequest {
                        protocol_version: PROTOCOL_VERSION,
                        token,
                        preempted: true,
                        ..Default::default()
                    };
                    client.fail(request(release, Some(TOKEN))?).await?;
                } else {
                    let complete = pb::CompleteRequest {
                        protocol_version: PROTOCOL_VERSION,
                        token,
                    };
                    client.complete(request(complete, Some(TOKEN))?).await?;
                }
                if let Some(rest) = think.checked_sub(cycle.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
                if until.as_ref().is_some_and(|u| *u.borrow()) {
                    break;
                }
            }
            anyhow::Ok(latencies)
        });
    }
    let mut all = Vec::new();
    let mut leases = 0;
    while let Some(r) = tasks.join_next().await {
        let lat = r.context("a simulated worker panicked")??;
        leases += lat.len().saturating_sub(1);
        all.extend(lat);
    }
    Ok((leases, all))
}

/// Bytes of the ledger on disk: the database and its write-ahead log.
fn ledger_bytes(state: &std::path::Path) -> u64 {
    let wal = state.with_extension("db-wal");
    [state, wal.as_path()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// `status` (twice), `cancel` and `retry` of the big sweep while simulated workers keep
/// leasing: how long each takes, and the lease latency meanwhile.
async fn ops_under_load(
    control: &mut pb::control_service_client::ControlServiceClient<Channel>,
    channels: Vec<Channel>,
    workers: usize,
    rate: f64,
) -> anyhow::Result<serde_json::Value> {
    let (stop, until) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(cycles(channels, workers, rate, Some(until)));
    // Let the load settle before measuring under it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut timings = serde_json::Map::new();
    let mut windows = Vec::new();
    for op in ["status_1", "status_2", "cancel", "retry"] {
        let t = Instant::now();
        match op {
            "cancel" => {
                let msg = pb::CancelRequest {
                    protocol_version: PROTOCOL_VERSION,
                    sweep: "big".into(),
                    now: false,
                };
                control.cancel(request(msg, Some(TOKEN))?).await?;
            }
            "retry" => {
                let msg = pb::RetryRequest {
                    protocol_version: PROTOCOL_VERSION,
                    sweep: "big".into(),
                    shards: Vec::new(),
                    committed: false,
                };
                control.retry(request(msg, Some(TOKEN))?).await?;
            }
            _ => {
                super::remote::fetch_status(control, Some(TOKEN), "big").await?;
            }
        }
        timings.insert(format!("{op}_s"), t.elapsed().as_secs_f64().into());
        windows.push((op, t, Instant::now()));
    }
    let _ = stop.send(true);
    let (cycles, latencies) = load.await.context("the load panicked")??;
    timings.insert("cycles".into(), cycles.into());
    // Lease latency of the leases that started while each operation ran.
    for (op, from, to) in windows {
        let mut during: Vec<f64> = latencies
            .iter()
            .filter(|(at, _)| (from..to).contains(at))
            .map(|(_, ms)| *ms)
            .collect();
        during.sort_by(f64::total_cmp);
        timings.insert(
            format!("{op}_lease_latency_ms"),
            serde_json::json!({
                "leases": during.len(),
                "p50": percentile(&during, 0.50),
                "p99": percentile(&during, 0.99),
                "max": during.last().copied().unwrap_or(0.0),
            }),
        );
    }
    Ok(timings.into())
}

pub fn run(args: CoordinatorBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let state = dir.path().join("state.db");
    let mut ledger = Ledger::open(&state, LeasePolicy::default())?;
    let half = args.shards / 2;
    let shards: Vec<NewShard> = (0..args.shards)
        .map(|i| NewShard {
            id: format!("{i:016x}"),
            config_json: format!("{{\"seed\":{i}}}"),
            needs: if args.dependent && i >= half {
                vec![format!("{:016x}", i - half)]
            } else {
                Vec::new()
            },
        })
        .collect();
    // Results location empty: nothing to publish, only the ledger is measured.
    let mode = SubmitMode::Start {
        allow_changed: false,
    };
    ledger.submit_sweep("load", &SweepMeta::default(), mode, &shards, 0)?;
    drop(shards);
    let rt = runtime()?;
    let report = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = ServeConfig {
            token: Some(TOKEN.into()),
            reaper_interval: Duration::from_secs(10),
            clock: system_clock(),
            default_results: dir.path().join("results").display().to_string(),
            check_shard: Some(super::remote::shard_check()),
            take_over: false,
            tls: None,
            summaries: linesweep_coordinator::service::SummaryPolicy::OFF,
            max_connections: linesweep_coordinator::limits::DEFAULT_MAX_CONNECTIONS,
        };
        let server = tokio::spawn(serve(listener, ledger, config, async {
            let _ = stopped.await;
        }));
        let mut channels = Vec::new();
        for _ in 0..8 {
            let mut last = None;
            for _ in 0..50 {
                match tonic::transport::Endpoint::from_shared(url.clone())?
                    .connect()
                    .await
                {
                    Ok(c) => {
                        last = Some(c);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            channels.push(last.context("the coordinator did not start")?);
        }
        let ledger_before = ledger_bytes(&state);
        let started = Instant::now();
        let (leases, latencies) = cycles(channels.clone(), args.workers, args.rate, None).await?;
        let mut latencies: Vec<f64> = latencies.into_iter().map(|(_, ms)| ms).collect();
        let seconds = started.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        let rss_cycles = peak_rss_mib();

        let mut submit = serde_json::Value::Null;
        if args.submit > 0 {
            let spec = format!(
                "name = \"big\"\n[grid]\nseed = [{}]\n",
                (0..args.submit)
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let t = Instant::now();
            let plan = sweep::plan(&spec, "generated spec")?;
            let plan_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let mut control = connect(&url, &linesweep_proto::tls::ClientTls::default()).await?;
            let results = dir.path().join("results").display().to_string();
            let added = submit_plan(&mut control, Some(TOKEN), &plan, &results, false)
                .await?
                .added;
            let submit_s = t.elapsed().as_secs_f64();
            let ledger_bytes = ledger_bytes(&state);
            let under_load = ops_under_load(&mut control, channels, args.workers, args.rate).await?;
            submit = serde_json::json!({
                "shards": added, "plan_s": plan_s, "submit_s": submit_s,
                "total_s": plan_s + submit_s, "peak_rss_mib": peak_rss_mib(),
                "ledger_bytes": ledger_bytes,
                "ledger_bytes_per_shard": (ledger_bytes - ledger_before) as f64 / added.max(1) as f64,
                "under_load": under_load,
            });
        }
        let _ = stop.send(());
        let _ = server.await;
        anyhow::Ok(serde_json::json!({
            "workers": args.workers,
            "offered_rate": args.rate,
            "dependent": args.dependent,
            "cycles": leases,
            "seconds": seconds,
            "cycles_per_s": leases as f64 / seconds,
            "lease_latency_ms": {
                "p50": percentile(&latencies, 0.50),
                "p99": percentile(&latencies, 0.99),
                "max": latencies.last().copied().unwrap_or(0.0),
            },
            "peak_rss_mib_after_cycles": rss_cycles,
            "submit": submit,
        }))
    })?;
    emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))
}
