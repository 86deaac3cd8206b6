//! `linesweep serve | submit | status` as real processes on loopback.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn submit_is_idempotent_status_counts_and_the_token_is_required() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.db");
    let results = tmp.path().join("results");
    let results = results.to_str().unwrap();
    let (_server, url) = serve(
        &[
            "--listen",
            "127.0.0.1:0",
            "--token",
            "tok",
            "--results",
            results,
        ],
        &state,
    );
    let spec = repo().join("examples/mnist-mli.toml");
    let spec = spec.to_str().unwrap();
    let run = |args: &[&str]| linesweep(args, tmp.path(), Duration::from_secs(60));

    let o = run(&["submit", spec, "--coordinator", &url, "--token", "tok"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout).trim(),
        format!("sweep mnist-mli: 6 shards, 6 added, 0 already known; results in {results}")
    );
    let o = run(&["submit", spec, "--coordinator", &url, "--token", "tok"]);
    assert_eq!(
        text(&o.stdout).trim(),
        format!("sweep mnist-mli: 6 shards, 0 added, 6 already known; results in {results}")
    );

    let o = run(&[
        "status",
        "mnist-mli",
        "--coordinator",
        &url,
        "--token",
        "tok",
    ]);
    assert!(
        text(&o.stdout).starts_with("sweep mnist-mli: 6 shards · 6 pending · 0 leased"),
        "{}",
        text(&o.stdout)
    );

    let o = run(&["status", "mnist-mli", "--coordinator", &url]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("Unauthenticated"),
        "{}",
        text(&o.stderr)
    );

    // A second coordinator on the same state file is refused, and the first keeps serving.
    let mut cmd = Command::new(bin());
    cmd.args([
        "-q",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--token",
        "x",
        "--state",
    ])
    .arg(&state);
    let second = run_with_deadline(cmd, Duration::from_secs(30));
    assert!(!second.status.success());
    assert!(
        text(&second.stderr).contains("in use by another coordinator"),
        "{}",
        text(&second.stderr)
    );
    let o = run(&[
        "status",
        "mnist-mli",
        "--coordinator",
        &url,
        "--token",
        "tok",
    ]);
    assert!(o.status.success());
}

#[test]
fn submit_refuses_configs_a_worker_would_refuse_with_the_planners_rules() {
    use linesweep_proto::pb::{self, control_service_client::ControlServiceClient};
    use linesweep_worker::config::ShardConfig;

    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.db");
    let results = tmp.path().join("results");
    let results = results.to_str().unwrap();
    let (_server, url) = serve(
        &[
            "--listen",
            "127.0.0.1:0",
            "--token",
            "tok",
            "--results",
            results,
        ],
        &state,
    );
    let good = ShardConfig::default().normalized();
    let mut zero_batch = good.clone();
    zero_batch.train.batch_size = 0;
    let spoofed = "0123456789abcdef".to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut control = ControlServiceClient::connect(url.clone()).await.unwrap();
        let submit = |id: String, config_json: String| {
            let mut r = tonic::Request::new(pb::SubmitRequest {
                protocol_version: linesweep_proto::PROTOCOL_VERSION,
                sweep: "raw".into(),
                shards: vec![pb::ShardSpec {
                    id,
                    config_json,
                    ..Default::default()
                }],
                ..Default::default()
            });
            r.metadata_mut()
                .insert("authorization", "Bearer tok".parse().unwrap());
            r
        };
        // Each of these used to be accepted, then burned three attempts on workers.
        for (id, json, why) in [
            (
                "s0".to_owned(),
                "{not json".to_owned(),
                "not a shard config",
            ),
            (
                zero_batch.shard_id().to_string(),
                zero_batch.canonical_json(),
                "field `train.batch_size`",
            ),
            (spoofed.clone(), good.canonical_json(), "hashes to shard"),
            (
                good.shard_id().to_string(),
                format!(" {}", good.canonical_json()),
                "canonical",
            ),
        ] {
            let err = control.submit(submit(id, json)).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
            assert!(err.message().contains(why), "{why}: {err}");
        }
        // Nothing of them reached the ledger; a well-formed shard is accepted.
        let r = control
            .submit(submit(good.shard_id().to_string(), good.canonical_json()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((r.added, r.existing), (1, 0));
    });
}

#[test]
fn a_ledger_on_a_full_disk_stops_the_coordinator_with_one_error_and_loses_nothing() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let (disk, kept, results) = (
        tmp.path().join("disk"),
        tmp.path().join("kept"),
        tmp.path().join("results"),
    );
    for d in [&disk, &kept, &results] {
        std::fs::create_dir_all(d).unwrap();
    }
    // The state file on a 256 KiB tmpfs in a mount namespace of its own; when the
    // coordinator has exited, what it left on that disk is copied out for inspection.
    let script = r#"mount -t tmpfs -o size=256k tmpfs "$1" || exit 99
"$2" -q serve --listen 127.0.0.1:0 --token tok --state "$1/state.db" --results "$4" 2> "$3/serve.err"
code=$?
cp "$1"/state.db* "$3"/
exit $code"#;
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh"])
        .args([&disk, &bin(), &kept, &results])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("unshare runs (util-linux; mount namespaces need root or CAP_SYS_ADMIN)");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("coordinator on ")
        .unwrap_or_else(|| panic!("no address: {line:?}"))
        .to_owned();
    let proc = Proc(child);
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--coordinator", &url, "--token", "tok"]);
        linesweep(&all, tmp.path(), Duration::from_secs(120))
    };
    let small = repo().join("examples/mnist-mli.toml");
    let o = run(&["submit", small.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Far more shards than the disk holds: the submission fails, and so does the ledger.
    let seeds: Vec<String> = (0..50_000).map(|i| i.to_string()).collect();
    let big = tmp.path().join("big.toml");
    std::fs::write(
        &big,
        format!("name = \"big\"\n[grid]\nseed = [{}]\n", seeds.join(", ")),
    )
    .unwrap();
    let o = run(&["submit", big.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o.stdout));
    let mut proc = proc;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = proc.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the coordinator did not stop within 60 s of its ledger failing"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(kept.join("serve.err")).unwrap();
    assert_ne!(status.code(), Some(99), "could not mount the tmpfs");
    assert!(!status.success(), "{err}");
    assert_eq!(
        err.matches("the ledger cannot commit").count(),
        2,
        "one log line and one final error, not a loop:\n{err}"
    );
    assert!(err.contains("full"), "{err}");
    // Nothing acknowledged is lost: the copy opens, with the first sweep whole.
    let (_again, url2) = serve(
        &["--listen", "127.0.0.1:0", "--token", "tok"],
        &kept.join("state.db"),
    );
    let o = linesweep(
        &[
            "status",
            "mnist-mli",
            "--coordinator",
            &url2,
            "--token",
            "tok",
        ],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert!(
        text(&o.stdout).starts_with("sweep mnist-mli: 6 shards · 6 pending"),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// One results location, one owner: a second ledger's submission of a sweep into a location
/// that another ledger publishes is refused at once, naming the owner; `serve --recover`
/// (the owner was lost) takes it over.
#[test]
fn a_second_ledger_cannot_publish_into_another_ledgers_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let results = results.to_str().unwrap();
    let spec = repo().join("examples/mnist-mli.toml");
    let spec = spec.to_str().unwrap();
    let submit = |url: &str| {
        linesweep(
            &["submit", spec, "--coordinator", url, "--token", "tok"],
            tmp.path(),
            Duration::from_secs(60),
        )
    };
    let args = |extra: &'static [&'static str]| {
        let mut a = vec![
            "--listen",
            "127.0.0.1:0",
            "--token",
            "tok",
            "--results",
            results,
        ];
        a.extend(extra);
        a
    };
    let first = tmp.path().join("first.db");
    let (_a, url_a) = serve(&args(&[]), &first);
    let o = submit(&url_a);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (_b, url_b) = serve(&args(&[]), &tmp.path().join("second.db"));
    let started = std::time::Instant::now();
    let o = submit(&url_b);
    assert!(!o.status.success());
    assert!(started.elapsed() < Duration::from_secs(30));
    let err = text(&o.stderr);
    assert!(
        err.contains("belongs to another ledger") && err.contains(first.to_str().unwrap()),
        "{err}"
    );
    assert!(err.contains("serve --recover"), "{err}");
    // The first ledger still owns it and submits again.
    assert!(submit(&url_a).status.success());
    let (_c, url_c) = serve(&args(&["--recover"]), &tmp.path().join("third.db"));
    let o = submit(&url_c);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let marker =
        std::fs::read_to_string(tmp.path().join("results/owners/sweep=mnist-mli.json")).unwrap();
    assert!(marker.contains("third.db"), "{marker}");
}
