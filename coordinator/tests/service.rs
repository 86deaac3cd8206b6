//! The coordinator over real gRPC on loopback: auth, versions, leases, fencing, expiry.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use linesweep_coordinator::lease::{LeasePolicy, StateKind};
use linesweep_coordinator::ledger::Ledger;
use linesweep_coordinator::server::{ServeConfig, serve};
use linesweep_coordinator::service::count;
use linesweep_proto::PROTOCOL_VERSION as V;
use linesweep_proto::pb::control_service_client::ControlServiceClient;
use linesweep_proto::pb::worker_service_client::WorkerServiceClient;
use linesweep_proto::pb::{self, LeaseVerdict};
use linesweep_storage::snapshots::{
    SNAPSHOT_FORMAT, SnapshotEntry, SnapshotManifest, SnapshotRole,
};
use linesweep_storage::{Storage, layout};
use tonic::Request;
use tonic::transport::Channel;

const TOKEN: &str = "s3cret";

/// Stages a complete attempt as a worker does (snapshots `0..snapshots`, the snapshot
/// manifest, the three tables with a real one-row `runs` file, the attempt manifest last) and
/// returns the files that publishing it must produce.
fn stage_attempt(
    st: &Storage,
    sweep: &str,
    shard: &str,
    attempt: u32,
    snapshots: u64,
) -> Vec<(String, Vec<u8>)> {
    use arrow_array::{ArrayRef, Int32Array, RecordBatch, StringArray};
    use linesweep_storage::attempt::{ATTEMPT_MANIFEST, AttemptManifest, StagedFile};
    let batch = RecordBatch::try_from_iter([
        (
            "schema_version",
            Arc::new(Int32Array::from(vec![3])) as ArrayRef,
        ),
        (
            "shard",
            Arc::new(StringArray::from(vec![shard])) as ArrayRef,
        ),
    ])
    .unwrap();
    let mut runs = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut runs, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let (sweep, shard) = (&sweep.parse().unwrap(), &shard.parse().unwrap());
    let attempt = linesweep_storage::ids::Attempt::new(attempt).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = (0..snapshots)
        .map(|i| (layout::snapshot_key(shard, i), vec![i as u8; 64]))
        .collect();
    let listed = out
        .iter()
        .zip(0..)
        .map(|((key, bytes), i)| {
            let file = StagedFile::of(key, bytes);
            SnapshotEntry::of(&file, i, 0.0, SnapshotRole::of(i, i + 1 == snapshots))
        })
        .collect();
    let manifest = SnapshotManifest {
        shard: shard.clone(),
        format: SNAPSHOT_FORMAT.into(),
        snapshots: listed,
    };
    out.push((
        layout::snapshot_manifest_key(shard),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    out.push((
        layout::result_key("interpolation", sweep, shard),
        b"i".to_vec(),
    ));
    out.push((
        layout::result_key("trajectory", sweep, shard),
        b"t".to_vec(),
    ));
    out.push((layout::result_key("lines", sweep, shard), b"l".to_vec()));
    out.push((layout::result_key("runs", sweep, shard), runs));
    let staging = layout::staging_prefix(sweep, shard, attempt);
    for (k, v) in &out {
        st.put(&format!("{staging}/{k}"), v.clone()).unwrap();
    }
    let manifest = AttemptManifest {
        sweep: sweep.clone(),
        shard: shard.clone(),
        attempt,
        schema_version: 3,
        kind: Default::default(),
        files: out.iter().map(|(k, v)| StagedFile::of(k, v)).collect(),
    };
    st.put(
        &format!("{staging}/{ATTEMPT_MANIFEST}"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    out
}

struct Running {
    addr: String,
    results: tempfile::TempDir,
    clock: Arc<AtomicI64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(ttl_ms: i64) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let clock = Arc::new(AtomicI64::new(1_000));
    let c = clock.clone();
    let results = tempfile::tempdir().unwrap();
    let config = ServeConfig {
        token: Some(TOKEN.into()),
        reaper_interval: Duration::from_millis(20),
        clock: Arc::new(move || c.load(Ordering::SeqCst)),
        default_results: results.path().display().to_string(),
        check_shard: None,
        take_over: false,
        tls: None,
        summaries: linesweep_coordinator::service::SummaryPolicy::OFF,
        max_connections: linesweep_coordinator::limits::DEFAULT_MAX_CONNECTIONS,
    };
    let ledger = Ledger::in_memory(LeasePolicy {
        ttl_ms,
        max_failures: 2,
    })
    .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve(listener, ledger, config, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Running {
        addr,
        results,
        clock,
        stop: Some(tx),
        task,
    }
}

fn authed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

async fn channel(addr: &str) -> Channel {
    for _ in 0..50 {
        if let Ok(c) = Channel::from_shared(addr.to_owned())
            .unwrap()
            .connect()
            .await
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("coordinator at {addr} did not come up within 1 s");
}

fn token(g: &pb::Granted) -> pb::Token {
    g.token.clone().unwrap()
}

#[tokio::test]
async fn sweep_names_that_escape_the_layout_are_invalid_arguments() {
    let run = start(500).await;
    let mut control = ControlServiceClient::new(channel(&run.addr).await);
    let long = "a".repeat(300);
    for name in [
        "../../../../tmp/x",
        "a/b=c",
        "..",
        "x\ny",
        "7up",
        long.as_str(),
    ] {
        let sub = pb::SubmitRequest {
            protocol_version: V,
            sweep: name.into(),
            shards: vec![pb::ShardSpec {
                id: "s0".into(),
                config_json: "{}".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = control.submit(authed(sub)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name:?}: {err}");
        assert!(err.message().contains("not a sweep name"), "{err}");
    }
    // A results location relative to the coordinator's working directory, or one too long
    // to report in an error, is refused with a message that says so.
    let long = format!("/{}", "r".repeat(10_000));
    for (results, says) in [
        ("relative/dir", "is relative"),
        (long.as_str(), "at most 1024"),
    ] {
        let sub = pb::SubmitRequest {
            protocol_version: V,
            sweep: "sw".into(),
            shards: vec![pb::ShardSpec {
                id: "s0".into(),
                config_json: "{}".into(),
                ..Default::default()
            }],
            results: results.into(),
            ..Default::default()
        };
        let err = control.submit(authed(sub)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains(says), "{err}");
    }
    assert!(!std::path::Path::new("relative").exists());
}

#[tokio::test]
async fn leases_are_fenced_and_expire() {
    let mut run = start(500).await;
    let ch = channel(&run.addr).await;
    let mut control = ControlServiceClient::new(ch.clone());
    let mut worker = WorkerServiceClient::new(ch);

    let shards = (0..2).map(|i| pb::ShardSpec {
        id: format!("s{i}"),
        config_json: format!("{{\"seed\":{i}}}"),
        ..Default::default()
    });
    let sub = pb::SubmitRequest {
        protocol_version: V,
        sweep: "sw".into(),
        shards: shards.collect(),
        ..Default::default()
    };
    let r = control
        .submit(authed(sub.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.added, r.existing), (2, 0));
    let r = control.submit(authed(sub)).await.unwrap().into_inner();
    assert_eq!((r.added, r.existing), (0, 2));

    let lease = |w: &str| pb::LeaseRequest {
        protocol_version: V,
        worker: w.into(),
    };
    let a = worker
        .lease(authed(lease("w1")))
        .await
        .unwrap()
        .into_inner()
        .granted
        .unwrap();
    let b = worker
        .lease(authed(lease("w1")))
        .await
        .unwrap()
        .into_inner()
        .granted
        .unwrap();
    assert!(
        worker
            .lease(authed(lease("w1")))
            .await
            .unwrap()
            .into_inner()
            .granted
            .is_none()
    );
    assert_eq!(a.lease_ttl_ms, 500);

    // a completes without having staged anything: refused, and nothing changes.
    let done = pb::CompleteRequest {
        protocol_version: V,
        token: Some(token(&a)),
    };
    let err = worker.complete(authed(done.clone())).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("staged no results"), "{err:?}");

    // a stages its output; completing publishes it to the final keys and removes staging.
    let ta = token(&a);
    let root = run.results.path().to_str().unwrap().to_owned();
    // Storage is blocking (it owns a runtime): use it from a plain thread.
    let on_storage = |f: &(dyn Fn(&Storage) + Sync)| {
        std::thread::scope(|s| {
            s.spawn(|| f(&Storage::open(&root).unwrap()))
                .join()
                .unwrap();
        })
    };
    let staged = std::sync::Mutex::new(Vec::new());
    on_storage(&|st: &Storage| {
        *staged.lock().unwrap() = stage_attempt(st, "sw", &ta.shard, ta.attempt, 1);
    });
    let staged = staged.into_inner().unwrap();
    let r = worker
        .complete(authed(done.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.verdict, r.published),
        (LeaseVerdict::Ok as i32, staged.len() as u64)
    );
    on_storage(&|st: &Storage| {
        for (k, v) in &staged {
            assert_eq!(st.get(k).unwrap().as_ref(), &v[..], "{k}");
        }
        assert!(st.list("staging").unwrap().is_empty());
    });
    // A retry of the same completion (lost reply) is answered OK and publishes nothing.
    let r = worker.complete(authed(done)).await.unwrap().into_inner();
    assert_eq!((r.verdict, r.published), (LeaseVerdict::Ok as i32, 0));

    // b stalls past its TTL: the reaper (every 20 ms) makes it pending; it is re-leased as
    // attempt 2, and b's old attempt is fenced off.
    run.clock.fetch_add(600, Ordering::SeqCst);
    let mut again = None;
    for _ in 0..100 {
        if let Some(g) = worker
            .lease(authed(lease("w2")))
            .await
            .unwrap()
            .into_inner()
            .granted
        {
            again = Some(g);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = again.expect("the expired lease was not re-leased within 2 s");
    assert_eq!(
        (token(&again).shard, token(&again).attempt),
        (token(&b).shard, 2)
    );
    let hb = pb::HeartbeatRequest {
        protocol_version: V,
        token: Some(token(&b)),
        ..Default::default()
    };
    assert_eq!(
        worker
            .heartbeat(authed(hb))
            .await
            .unwrap()
            .into_inner()
            .verdict,
        LeaseVerdict::LeaseLost as i32
    );
    // A failure must say its kind.
    let unkind = pb::FailRequest {
        protocol_version: V,
        token: Some(token(&again)),
        error: "nan".into(),
        preempted: false,
        kind: pb::FailureKind::Unspecified as i32,
    };
    let err = worker.fail(authed(unkind)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let fail = pb::FailRequest {
        protocol_version: V,
        token: Some(token(&again)),
        error: "nan".into(),
        preempted: false,
        kind: pb::FailureKind::Application as i32,
    };
    let r = worker.fail(authed(fail)).await.unwrap().into_inner();
    assert_eq!(
        (r.verdict, pb::ShardState::try_from(r.state).ok()),
        (LeaseVerdict::Ok as i32, Some(pb::ShardState::Pending))
    );

    let st = control
        .status(authed(pb::StatusRequest {
            protocol_version: V,
            sweep: "sw".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(count(&st, StateKind::Committed), 1);
    assert_eq!(count(&st, StateKind::Pending), 1);
    assert_eq!((st.failures, st.interruptions), (1, 1));

    // Health checks answer without a token (for load balancers and probes).
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&run.addr).await);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "linesweep.v1.WorkerService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let _ = run.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(5), &mut run.task)
        .await
        .expect("serve did not stop")
        .unwrap();
}

#[tokio::test]
async fn calls_without_the_token_or_version_are_refused() {
    let mut run = start(60_000).await;
    let ch = channel(&run.addr).await;
    let mut control = ControlServiceClient::new(ch.clone());
    let status = pb::StatusRequest {
        protocol_version: V,
        sweep: "x".into(),
    };
    let err = control
        .status(Request::new(status.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut wrong = Request::new(status.clone());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        control.status(wrong).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let mut worker = WorkerServiceClient::new(ch);
    let err = worker
        .lease(authed(pb::LeaseRequest {
            protocol_version: 0,
            worker: "w".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let err = control.status(authed(status)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let _ = run.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(5), &mut run.task)
        .await
        .expect("serve did not stop")
        .unwrap();
}

/// A lost reply makes a worker retry `complete` while the first call is still publishing, and
/// the reaper rolls unfinished publishes forward every 20 ms: every call must succeed, and the
/// staged files are published exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_completions_of_one_attempt_publish_exactly_once() {
    let mut run = start(60_000).await;
    let ch = channel(&run.addr).await;
    let mut control = ControlServiceClient::new(ch.clone());
    let mut worker = WorkerServiceClient::new(ch.clone());
    let sub = pb::SubmitRequest {
        protocol_version: V,
        sweep: "cc".into(),
        shards: vec![pb::ShardSpec {
            id: "s0".into(),
            config_json: "{}".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    control.submit(authed(sub)).await.unwrap();
    let g = worker
        .lease(authed(pb::LeaseRequest {
            protocol_version: V,
            worker: "w".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .granted
        .unwrap();
    let t = token(&g);
    // Enough files that one publish takes long enough for the others to overlap it.
    const FILES: u64 = 300;
    let root = run.results.path().to_str().unwrap().to_owned();
    // A complete attempt with many snapshots.
    let files = {
        let (root, shard, attempt) = (root.clone(), t.shard.clone(), t.attempt);
        tokio::task::spawn_blocking(move || {
            stage_attempt(&Storage::open(&root).unwrap(), "cc", &shard, attempt, FILES)
        })
        .await
        .unwrap()
    };
    let done = pb::CompleteRequest {
        protocol_version: V,
        token: Some(t),
    };
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let mut w = WorkerServiceClient::new(ch.clone());
            let req = done.clone();
            tokio::spawn(async move { w.complete(authed(req)).await })
        })
        .collect();
    let mut published = 0;
    for c in calls {
        let r = tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("a completion did not answer within 30 s")
            .unwrap()
            .expect("every concurrent completion succeeds")
            .into_inner();
        assert_eq!(r.verdict, LeaseVerdict::Ok as i32);
        published += r.published;
    }
    assert_eq!(
        published,
        files.len() as u64,
        "each staged file is published once"
    );
    tokio::task::spawn_blocking(move || {
        let st = Storage::open(&root).unwrap();
        for (k, v) in &files {
            assert_eq!(st.get(k).unwrap().as_ref(), &v[..], "{k}");
        }
        assert!(st.list("staging").unwrap().is_empty());
    })
    .await
    .unwrap();
    let _ = run.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(5), &mut run.task)
        .await
        .expect("serve did not stop")
        .unwrap();
}

/// `ListShards` pages: a sweep far larger than one page is read whole, in submission order,
/// each shard once (above about 190k shards one reply used to exceed gRPC's 4 MiB limit).
#[tokio::test]
async fn a_large_sweep_is_listed_page_by_page() {
    let mut run = start(60_000).await;
    let mut control = ControlServiceClient::new(channel(&run.addr).await);
    let n = 25_000;
    let ids: Vec<String> = (0..n).map(|i| format!("s{i:05}")).collect();
    for chunk in ids.chunks(2_000) {
        let sub = pb::SubmitRequest {
            protocol_version: V,
            sweep: "big".into(),
            shards: chunk
                .iter()
                .map(|id| pb::ShardSpec {
                    id: id.clone(),
                    config_json: "{}".into(),
                    ..Default::default()
                })
                .collect(),
            continuation: chunk[0] != ids[0],
            ..Default::default()
        };
        control.submit(authed(sub)).await.unwrap();
    }
    let (mut listed, mut pages, mut page_token) = (Vec::new(), 0, String::new());
    loop {
        let msg = pb::ListShardsRequest {
            protocol_version: V,
            sweep: "big".into(),
            page_token,
        };
        let page = control.list_shards(authed(msg)).await.unwrap().into_inner();
        pages += 1;
        assert!(pages <= 10, "paging does not end");
        listed.extend(page.shards.into_iter().map(|s| s.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(listed, ids);
    let bad = pb::ListShardsRequest {
        protocol_version: V,
        sweep: "big".into(),
        page_token: "junk".into(),
    };
    let err = control.list_shards(authed(bad)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let _ = run.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(5), &mut run.task)
        .await
        .expect("serve did not stop")
        .unwrap();
}

/// Shutdown ends within a bounded time although a `watch` stream (which never ends while its
/// sweep runs) and a connection that never sent a byte are open.
#[tokio::test]
async fn shutdown_is_bounded_with_a_watch_stream_and_a_silent_connection_open() {
    let mut run = start(60_000).await;
    let mut control = ControlServiceClient::new(channel(&run.addr).await);
    let sub = pb::SubmitRequest {
        protocol_version: V,
        sweep: "w".into(),
        shards: vec![pb::ShardSpec {
            id: "s0".into(),
            config_json: "{}".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    control.submit(authed(sub)).await.unwrap();
    let watch = pb::StatusRequest {
        protocol_version: V,
        sweep: "w".into(),
    };
    let mut stream = control.watch(authed(watch)).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    let silent = tokio::net::TcpStream::connect(run.addr.trim_start_matches("http://"))
        .await
        .unwrap();
    let _ = run.stop.take().unwrap().send(());
    let limit = linesweep_coordinator::server::SHUTDOWN_GRACE + Duration::from_secs(5);
    tokio::time::timeout(limit, &mut run.task)
        .await
        .expect("serve did not stop with a watch stream open")
        .unwrap();
    drop(silent);
}
