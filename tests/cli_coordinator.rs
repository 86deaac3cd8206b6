//! `linesweep serve | submit | status` as real processes on loopback.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn submit_is_idempotent_status_counts_and_the_token_is_required() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.db");
    let (_server, url) = serve(&["--listen", "127.0.0.1:0", "--token", "tok"], &state);
    let spec = repo().join("examples/mnist-mli.toml");
    let spec = spec.to_str().unwrap();
    let run = |args: &[&str]| linesweep(args, tmp.path(), Duration::from_secs(60));

    let o = run(&["submit", spec, "--coordinator", &url, "--token", "tok"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout).trim(),
        "sweep mnist-mli: 6 shards, 6 added, 0 already known"
    );
    let o = run(&["submit", spec, "--coordinator", &url, "--token", "tok"]);
    assert_eq!(
        text(&o.stdout).trim(),
        "sweep mnist-mli: 6 shards, 0 added, 6 already known"
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
                shards: vec![pb::ShardSpec { id, config_json }],
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
                zero_batch.shard_id(),
                zero_batch.canonical_json(),
                "field `train.batch_size`",
            ),
            (spoofed.clone(), good.canonical_json(), "hashes to shard"),
            (
                good.shard_id(),
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
            .submit(submit(good.shard_id(), good.canonical_json()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((r.added, r.existing), (1, 0));
    });
}
