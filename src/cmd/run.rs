//! `linesweep run`: the embedded mode. An in-process coordinator (state file beside the
//! results) and local workers over loopback gRPC: the same code paths as a cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use linesweep_coordinator::lease::{LeasePolicy, StateKind};
use linesweep_coordinator::ledger::{Ledger, LedgerError};
use linesweep_coordinator::server::{ServeConfig, serve};
use linesweep_coordinator::service::{count, is_finished, system_clock};
use linesweep_proto::pb;
use linesweep_worker::agent::{self, AgentConfig, AgentEvents, Outcome, ProgressLine};
use linesweep_worker::device;
use linesweep_worker::results::{self, RunSummary};
use linesweep_worker::storage::ids::{LeaseToken, ShardId, SweepName};
use linesweep_worker::storage::{Storage, layout};
use linesweep_worker::sweep::{self, SweepPlan};

use super::remote::{absolute_location, connect, fetch_status, reaper_interval, submit_plan};
use crate::cli::RunArgs;
use crate::render::{self, GroupRow, emit};

/// Default results location when neither `--out` nor the spec names one.
const DEFAULT_OUT: &str = "linesweep-results";

/// Progress bars: one for the sweep, one per worker.
struct Bars {
    overall: ProgressBar,
    workers: Vec<ProgressBar>,
}

impl Bars {
    fn new(total: u64, workers: usize) -> Self {
        let multi = MultiProgress::new();
        let style = |t: &str| {
            ProgressStyle::with_template(t).unwrap_or_else(|_| ProgressStyle::default_bar())
        };
        let overall = multi.add(
            ProgressBar::new(total).with_style(
                style(
                    "sweep    [{bar:30.green/white}] {pos}/{len} shards {elapsed} eta {eta} {msg}",
                )
                .progress_chars("=> "),
            ),
        );
        let workers =
            (0..workers)
                .map(|i| {
                    multi.add(ProgressBar::new(0).with_style(
                    style(&format!(
                        "worker {i} [{{bar:30.cyan/blue}}] {{pos}}/{{len}} {{prefix}} {{msg}}"
                    ))
                    .progress_chars("=> "),
                ))
                })
                .collect();
        Self { overall, workers }
    }
}

/// Maps agent events of worker `index` onto its bar.
struct WorkerBar {
    bars: Arc<Bars>,
    index: usize,
}

impl AgentEvents for WorkerBar {
    fn started(&self, _slot: usize, token: &LeaseToken) {
        let bar = &self.bars.workers[self.index];
        bar.reset();
        bar.set_length(0);
        bar.set_prefix("");
        bar.set_message(format!("shard {} (attempt {})", token.shard, token.attempt));
    }

    fn progress(&self, _slot: usize, p: &ProgressLine) {
        let bar = &self.bars.workers[self.index];
        if bar.length() != Some(p.total) {
            bar.set_length(p.total);
        }
        bar.set_position(p.done);
        bar.set_prefix(if p.phase == "train" {
            "steps"
        } else {
            "α points"
        });
    }

    fn finished(&self, _slot: usize, shard: &ShardId, outcome: &Outcome) {
        let bar = &self.bars.workers[self.index];
        let what = match outcome {
            Outcome::Committed => "committed".to_owned(),
            Outcome::Failed(e) => format!("FAILED: {e}"),
            Outcome::Infrastructure(e) => format!("not run (this machine failed): {e}"),
            Outcome::LeaseLost => "lease lost".into(),
            Outcome::Cancelled => "cancelled".into(),
            Outcome::Preempted => "released".into(),
        };
        bar.set_message(format!("shard {shard} {what}"));
    }
}

/// The ledger's file name in [`state_dir`].
pub(crate) const STATE_FILE: &str = "state.db";

/// Where `run` keeps its sweep state: beside local results (`<root>/.linesweep/`), so that
/// moving the folder moves both; for an object store (SQLite needs a local file) under the
/// user's state directory (`$XDG_STATE_HOME/linesweep/`, default `~/.local/state/linesweep/`),
/// one folder per location (bucket, prefix and endpoint).
pub(crate) fn state_dir(storage: &Storage) -> anyhow::Result<PathBuf> {
    if let Some(dir) = storage.local_dir() {
        return Ok(dir.join(".linesweep"));
    }
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => std::env::home_dir()
            .context("no home directory for the sweep state of an object-store location (set XDG_STATE_HOME)")?
            .join(".local/state"),
    };
    let readable: String = storage
        .root()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Keyed by the whole location: the same bucket and prefix on another endpoint is another
    // store, whose results this state does not describe.
    let digest = linesweep_storage::attempt::sha256_hex(storage.identity().as_bytes());
    Ok(base
        .join("linesweep")
        .join(format!("{readable}-{}", &digest[..12])))
}

/// Makes a results folder that was moved runnable where it is now: the ledger kept inside it
/// follows it, and a ledger rebuilt from its results (the old one lost) takes over the sweep
/// when the ledger its owner marker names is not on this machine. Returns whether to take
/// over (`serve --recover`'s rule, for `run`).
fn adopt_location(
    ledger: &mut Ledger,
    storage: &Storage,
    sweep: &SweepName,
    new_ledger: bool,
) -> anyhow::Result<bool> {
    let root = storage.root();
    // Local results keep their ledger inside them: it describes them wherever they are.
    if storage.local_dir().is_some()
        && let Some(old) = ledger.relocate(sweep.as_str(), root)?
    {
        tracing::info!(%sweep, from = %old, to = %root, "the results folder was moved; its sweep state follows it");
    }
    if !new_ledger {
        return Ok(false);
    }
    let owner = linesweep_coordinator::publish::read_owner(storage, sweep)?;
    Ok(owner.is_some_and(|o| !std::path::Path::new(&o.state).exists()))
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let plan = sweep::plan_file(&args.spec)?;
    device::parse(&args.device)?;
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    // Once for all local workers, before anything is submitted.
    super::worker::check_once(&args.device, &args.check)?;
    let location = absolute_location(
        args.out
            .as_deref()
            .or(plan.results.as_deref())
            .unwrap_or(DEFAULT_OUT),
    )?;
    let storage = Storage::open(&location)?;
    linesweep_worker::exec::check_outside_parents(&plan, &storage)?;
    let root = storage.root().to_owned();
    let state_dir = state_dir(&storage)?;
    if !args.json {
        emit(&format!("results in {root}\n"))?;
    }
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let state = state_dir.join(STATE_FILE);
    let policy = LeasePolicy::default();
    let new_ledger = !state.exists();
    let mut ledger = Ledger::open(&state, policy).map_err(|e| {
        // Only a held lock means another run; a full disk or a corrupt file says so itself.
        let hint = match e {
            LedgerError::Locked { .. } => " (is another `linesweep run` using it?)",
            _ => "",
        };
        anyhow::Error::new(e).context(format!("the sweep state in {}{hint}", state.display()))
    })?;
    // A new state file beside existing results (it was deleted or lost): the results are the
    // truth of what was committed, so they are not trained again.
    if new_ledger {
        super::remote::recover_from(&mut ledger, &root)?;
    }
    let take_over = adopt_location(&mut ledger, &storage, &plan.name, new_ledger)?;
    let now = (system_clock())();
    // Leases in this file belong to workers of an earlier run of this command, which died
    // with it: give them back now instead of waiting a TTL.
    if args.retry_failed {
        retry_failed(&mut ledger, &plan, now)?;
    }
    let released = ledger.release_all(now)?;
    if released > 0 {
        tracing::info!(
            shards = released,
            "resuming: shards that were running when the last run stopped are pending again"
        );
    }

    let token = format!("{:032x}", rand::random::<u128>());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let child_threads = (threads / args.workers).max(1);
    let program = std::env::current_exe().context("locating the linesweep binary")?;

    let rt = super::remote::runtime()?;
    let (summary, interrupted, unhealthy) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a loopback port for the embedded coordinator")?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
        let config = ServeConfig {
            token: Some(token.clone()),
            reaper_interval: reaper_interval(&policy),
            clock: system_clock(),
            default_results: root.clone(),
            check_shard: Some(super::remote::shard_check()),
            take_over,
            tls: None,
            summaries: Default::default(),
            max_connections: linesweep_coordinator::limits::DEFAULT_MAX_CONNECTIONS,
        };
        let server = tokio::spawn(serve(listener, ledger, config, async {
            let _ = server_stopped.await;
        }));
        let mut control = connect_retrying(&url).await?;
        let submitted = submit_plan(&mut control, Some(&token), &plan, &root, args.new).await?;
        let (added, existing) = (submitted.added, submitted.existing);
        if submitted.rerun > 0 {
            tracing::warn!(
                shards = submitted.rerun,
                results = %root,
                "the sweep state records commits whose results are not in the results location: they run again"
            );
        }
        let first = fetch_status(&mut control, Some(&token), plan.name.as_str()).await?;
        let committed = count(&first, StateKind::Committed);
        tracing::info!(
            sweep = %plan.name, shards = plan.len(), new = added, known = existing, committed,
            workers = args.workers, threads_per_worker = child_threads, results = %root,
            "running sweep"
        );

        let total = linesweep_coordinator::service::total(&first);
        let bars = Arc::new(Bars::new(total, args.workers));
        bars.overall.set_position(done_count(&first));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut agents = tokio::task::JoinSet::new();
        for i in 0..args.workers {
            let cfg = AgentConfig {
                coordinator: url.clone(),
                token: Some(token.clone()),
                tls: Default::default(),
                name: format!("local-{i}"),
                device: args.device.clone(),
                slots: 1,
                program: program.clone(),
                child_threads: Some(child_threads),
                idle_poll: Duration::from_millis(200),
                max_backoff: Duration::from_secs(2),
                exit_when_idle: false,
                stop_grace: Duration::from_secs(30),
                checkpoint_every: args.checkpoint_every,
                // No other machine can take the shards over: stop, and say why.
                stop_when_unhealthy: true,
                // Checked above, once for all of them.
                gate: None,
                idle_if_refused: false,
            };
            let events = Arc::new(WorkerBar {
                bars: bars.clone(),
                index: i,
            });
            agents.spawn(agent::run(cfg, events, stop_rx.clone()));
        }

        let mut interrupted = false;
        let mut unhealthy: Option<String> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        // Created once: a signal arriving between two polls must not be missed.
        let shutdown = super::remote::shutdown_signal();
        tokio::pin!(shutdown);
        let last = loop {
            tokio::select! {
                _ = &mut shutdown => {
                    interrupted = true;
                    bars.overall.set_message("stopping: running shards give their leases back…");
                    let _ = stop_tx.send(true);
                    break None;
                }
                _ = tick.tick() => {
                    let st = fetch_status(&mut control, Some(&token), plan.name.as_str()).await?;
                    bars.overall.set_position(done_count(&st));
                    let failed = count(&st, StateKind::Failed);
                    if failed > 0 {
                        bars.overall.set_message(format!("{failed} failed"));
                    }
                    if is_finished(&st) {
                        let _ = stop_tx.send(true);
                        break Some(st);
                    }
                    while let Some(r) = agents.try_join_next() {
                        note_agent_end(r, &mut unhealthy);
                    }
                    // Every local worker gave up on this machine (a full disk, say): the
                    // shards left are pending, with the reason.
                    if agents.is_empty() {
                        break Some(st);
                    }
                }
            }
        };
        while let Some(r) = agents.join_next().await {
            note_agent_end(r, &mut unhealthy);
        }
        let last = match last {
            Some(st) => st,
            None => fetch_status(&mut control, Some(&token), plan.name.as_str()).await?,
        };
        bars.overall.finish();
        for b in &bars.workers {
            b.finish_and_clear();
        }
        let _ = stop_server.send(());
        // The coordinator writes the sweep's summary files before it stops (at most 30 s).
        let _ = tokio::time::timeout(Duration::from_secs(45), server).await;
        anyhow::Ok((last, interrupted, unhealthy))
    })?;

    let mut out = render::status(plan.name.as_str(), &summary);
    if interrupted {
        out.push_str(&format!(
            "interrupted: run the same command again to resume ({} committed shards will not rerun)\n",
            count(&summary, StateKind::Committed)
        ));
        emit(&out)?;
        anyhow::bail!("interrupted by a signal; running shards gave their leases back");
    }
    if let Some(reason) = unhealthy
        && !is_finished(&summary)
    {
        emit(&out)?;
        anyhow::bail!(
            "the local workers stopped after {} infrastructure failures in a row (the shards' failure budgets are untouched; fix the cause and run the same command again): {reason}",
            agent::UNHEALTHY_AFTER
        );
    }
    let rows = group_rows(&plan, &storage)?;
    if args.json {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "group": r.group, "runs": r.runs, "diverged": r.diverged,
                    "monotone_fraction": r.monotone, "mean_delta_min": r.delta_min,
                    "mean_final_test_acc": r.test_acc,
                })
            })
            .collect();
        return emit(&format!("{}\n", serde_json::to_string_pretty(&json)?));
    }
    out.push_str(&render::sweep_summary(&rows));
    let pairs = pair_rows(&plan, &storage)?;
    if !pairs.is_empty() {
        out.push_str(&render::pairs_summary(&pairs));
    }
    out.push_str(&format!(
        "query: duckdb -c \"select optimizer, lr, seed, train_monotone, train_delta_min, final_test_acc from read_parquet('{root}/results/runs/sweep={}/*.parquet') order by all\"\n",
        plan.name
    ));
    match &args.report {
        Some(page) => {
            let html = super::report::page(&root, Some(plan.name.as_str()), Some(&state))?;
            std::fs::write(page, html).with_context(|| format!("writing {}", page.display()))?;
            out.push_str(&format!("report: {}\n", page.display()));
        }
        None => out.push_str(&format!(
            "report: linesweep report {} --results {root} --out report.html\n",
            plan.name
        )),
    }
    emit(&out)?;
    none_failed(&summary, &plan)
}

/// `--retry-failed`: the sweep's failed and cancelled shards back to pending.
fn retry_failed(
    ledger: &mut Ledger,
    plan: &SweepPlan,
    now: linesweep_coordinator::lease::Millis,
) -> anyhow::Result<()> {
    match ledger.retry(plan.name.as_str(), None, now) {
        Ok(n) => tracing::info!(shards = n, "failed and cancelled shards are pending again"),
        // A sweep this state has never run has nothing to retry.
        Err(LedgerError::UnknownSweep(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// A sweep with failed shards is not a success, whatever was committed beside them.
fn none_failed(summary: &pb::StatusReply, plan: &SweepPlan) -> anyhow::Result<()> {
    let failed = count(summary, StateKind::Failed);
    anyhow::ensure!(
        failed == 0,
        "{failed} shards of sweep {} failed (the report lists why); fix the cause, then run the same command with --retry-failed",
        plan.name
    );
    Ok(())
}

/// Records why a local worker ended, if it gave up as unhealthy.
fn note_agent_end(
    r: Result<Result<agent::AgentReport, agent::AgentError>, tokio::task::JoinError>,
    unhealthy: &mut Option<String>,
) {
    match r {
        Ok(Ok(report)) => {
            if let Some(e) = report.unhealthy {
                *unhealthy = Some(e);
            }
        }
        Ok(Err(e)) => tracing::error!(error = %e, "a local worker stopped"),
        Err(e) => tracing::error!(error = %e, "a local worker panicked"),
    }
}

async fn connect_retrying(
    url: &str,
) -> anyhow::Result<pb::control_service_client::ControlServiceClient<tonic::transport::Channel>> {
    let mut last = None;
    for _ in 0..50 {
        match connect(url, &linesweep_proto::tls::ClientTls::default()).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("the embedded coordinator did not start")))
}

fn done_count(st: &pb::StatusReply) -> u64 {
    StateKind::ENDED.iter().map(|k| count(st, *k)).sum()
}

/// A config group's name: the point's values but those `skip` names (`all` when none is
/// left), keys by their last part (`lr=0.05`).
fn group_name(point: &[(String, String)], skip: impl Fn(&str) -> bool) -> String {
    let group = point
        .iter()
        .filter(|(k, _)| !skip(k))
        .map(|(k, v)| format!("{}={v}", k.rsplit('.').next().unwrap_or(k)))
        .collect::<Vec<_>>()
        .join(" ");
    if group.is_empty() {
        "all".to_owned()
    } else {
        group
    }
}

/// Reads every committed pair shard's barriers and groups them by their grid point minus the
/// seed and the keys the two ends of a pair differ in (what `[[pairs]]` names).
fn pair_rows(plan: &SweepPlan, storage: &Storage) -> anyhow::Result<Vec<render::PairGroupRow>> {
    let mut groups: Vec<(String, Vec<results::PairBarrier>, usize)> = Vec::new();
    let apart = pair_apart(plan);
    for shard in plan.shards().filter(|s| s.config.pair.is_some()) {
        let key = layout::result_key("pairs", &plan.name, &shard.id);
        let group = group_name(&shard.point, |k| {
            ["seed", "pair"].contains(&k) || apart.contains(k)
        });
        let at = match groups.iter().position(|(g, _, _)| *g == group) {
            Some(i) => i,
            None => {
                groups.push((group, Vec::new(), 0));
                groups.len() - 1
            }
        };
        if !storage.exists(&key)? {
            continue;
        }
        let lines = results::read_pair_barriers(storage.get(&key)?)
            .with_context(|| format!("reading {key}"))?;
        // The first batch-norm mode's lines, as the runs summary uses the first line.
        let first = lines.first().map(|l| l.bn_mode.clone());
        groups[at].1.extend(
            lines
                .into_iter()
                .filter(|l| Some(&l.bn_mode) == first.as_ref()),
        );
        groups[at].2 += 1;
    }
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    Ok(groups
        .into_iter()
        .map(|(group, lines, pairs)| {
            let of = |split: &str, f: fn(&results::PairBarrier) -> Option<f64>| {
                mean(
                    lines
                        .iter()
                        .filter(|l| l.split == split)
                        .filter_map(f)
                        .collect(),
                )
            };
            render::PairGroupRow {
                group,
                pairs,
                error_barrier: [
                    of("test", |l| l.error_barrier),
                    of("train", |l| l.error_barrier),
                ],
                test_loss_barrier: of("test", |l| l.loss_barrier),
            }
        })
        .collect())
}

/// The keys the two ends of some pair differ in: a pair shard carries its `a` end's value
/// of them, which says nothing about the pair.
fn pair_apart(plan: &SweepPlan) -> std::collections::HashSet<String> {
    let points: std::collections::HashMap<_, _> = plan.points().collect();
    let mut apart = std::collections::HashSet::new();
    for p in plan.shards().filter_map(|s| s.config.pair) {
        let (Some(a), Some(b)) = (points.get(&p.a), points.get(&p.b)) else {
            continue;
        };
        for (k, v) in a.iter() {
            if b.iter().find(|(kb, _)| kb == k).map(|(_, vb)| vb) != Some(v) {
                apart.insert(k.clone());
            }
        }
    }
    apart
}

/// Reads every committed shard's `runs` row and groups them by their grid point minus the seed.
fn group_rows(plan: &SweepPlan, storage: &Storage) -> anyhow::Result<Vec<GroupRow>> {
    let mut groups: BTreeMap<String, Vec<RunSummary>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    // Pair shards have no `runs` row: their lines are in the `pairs` table.
    for shard in plan.shards().filter(|s| s.config.pair.is_none()) {
        let group = group_name(&shard.point, |k| k == "seed");
        if !order.contains(&group) {
            order.push(group.clone());
        }
        let key = layout::result_key("runs", &plan.name, &shard.id);
        if !storage.exists(&key)? {
            continue;
        }
        let rows = results::read_run_summaries(storage.get(&key)?)
            .with_context(|| format!("reading {key}"))?;
        groups.entry(group).or_default().extend(rows);
    }
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    Ok(order
        .into_iter()
        .map(|group| {
            let runs = groups.remove(&group).unwrap_or_default();
            let monotone: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.train_monotone.map(|m| f64::from(u8::from(m))))
                .collect();
            GroupRow {
                runs: runs.len(),
                diverged: runs.iter().filter(|r| r.diverged).count(),
                monotone: mean(monotone),
                delta_min: mean(runs.iter().filter_map(|r| r.train_delta_min).collect()),
                test_acc: mean(runs.iter().filter_map(|r| r.final_test_acc).collect()),
                group,
            }
        })
        .collect())
}
