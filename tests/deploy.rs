//! `deploy/`: the Dockerfiles lint clean (hadolint) and copy only files that exist, including
//! everything the build reads; the Kubernetes manifests validate against the Kubernetes 1.30
//! schemas (kubernetes-validate, strict), and the validator does refuse a broken manifest.
//! The Slurm scripts and the setup scripts pass shellcheck (`tests/deploy_slurm.rs` runs the
//! array script on a real cluster). CI cannot run Docker or Kubernetes; these are the checks
//! it can make.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn tool(env: &str, default: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| default.into())
}

/// The `COPY` sources of a Dockerfile that come from the build context (not `--from=`).
fn context_copies(dockerfile: &str) -> Vec<String> {
    dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .filter(|rest| !rest.starts_with("--from"))
        .flat_map(|rest| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            // The last word is the destination.
            words[..words.len().saturating_sub(1)]
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_dockerfiles_lint_clean_and_copy_what_the_build_needs() {
    let members = ["src", "proto", "storage", "worker", "coordinator", "data"];
    for name in ["Dockerfile", "Dockerfile.gpu"] {
        let path = repo().join("deploy/docker").join(name);
        let mut cmd = Command::new(tool("LINESWEEP_HADOLINT", "hadolint"));
        cmd.arg(&path);
        let o = run_with_deadline(cmd, Duration::from_secs(60));
        assert!(
            o.status.success(),
            "hadolint {name}:\n{}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let copies = context_copies(&text);
        for src in &copies {
            assert!(
                repo().join(src).exists(),
                "{name} copies {src}, which does not exist"
            );
        }
        for needed in members.iter().chain(&["Cargo.toml", "Cargo.lock"]) {
            assert!(
                copies.iter().any(|c| c.trim_end_matches('/') == *needed),
                "{name} does not copy {needed}, which the build reads"
            );
        }
        // Later stages take only the binary from the builder.
        assert!(text.contains(
            "COPY --from=builder /src/target/release/linesweep /usr/local/bin/linesweep"
        ));
    }
    // Every workspace member is among what the images copy.
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    for member in ["proto", "storage", "worker", "coordinator"] {
        assert!(manifest.contains(&format!("\"{member}\"")), "{member}");
    }
    assert!(context_copies("COPY --from=x a b\nCOPY a b c\n") == ["a", "b"]);
}

fn validate(files: &[&Path]) -> std::process::Output {
    let mut cmd = Command::new(tool("LINESWEEP_KUBERNETES_VALIDATE", "kubernetes-validate"));
    cmd.args(["--strict", "-k", "1.30.0"]).args(files);
    run_with_deadline(cmd, Duration::from_secs(120))
}

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let o = validate(&refs);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    let out = text(&o.stdout) + &text(&o.stderr);
    for kind in [
        "statefulset/linesweep-coordinator",
        "service/linesweep-coordinator",
        "deployment/linesweep-worker",
        "job/linesweep-fleet",
        "secret/linesweep",
    ] {
        assert!(
            out.contains(&format!("passed for resource {kind}")),
            "{kind}: {out}"
        );
    }
    // The workers' grace period leaves time for the SIGTERM checkpoint.
    let worker = std::fs::read_to_string(dir.join("worker.yaml")).unwrap();
    assert!(worker.contains("terminationGracePeriodSeconds: 180"));
    assert!(worker.contains("nvidia.com/gpu: 1"));
    // The validator is not a rubber stamp: a replica count that is a word is refused.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken.yaml");
    let coordinator = std::fs::read_to_string(dir.join("coordinator.yaml")).unwrap();
    std::fs::write(&broken, coordinator.replace("replicas: 1", "replicas: one")).unwrap();
    assert!(!validate(&[&broken]).status.success());
}

#[test]
fn the_slurm_and_setup_scripts_pass_shellcheck() {
    let mut scripts = vec![repo().join(".ci/run")];
    for dir in ["deploy/slurm", "scripts"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "sh" || x == "sbatch") {
                scripts.push(p);
            }
        }
    }
    assert!(scripts.len() >= 5, "{scripts:?}");
    let mut cmd = Command::new(tool("LINESWEEP_SHELLCHECK", "shellcheck"));
    cmd.args(&scripts);
    let o = run_with_deadline(cmd, Duration::from_secs(60));
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    // Not a rubber stamp either: an unquoted expansion in a test is flagged.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.sh");
    std::fs::write(&bad, "#!/bin/bash\nif [ -n $1 ]; then echo $1; fi\n").unwrap();
    let mut cmd = Command::new(tool("LINESWEEP_SHELLCHECK", "shellcheck"));
    cmd.arg(&bad);
    assert!(
        !run_with_deadline(cmd, Duration::from_secs(60))
            .status
            .success()
    );
    // The array script asks Slurm for the signal it traps, and is requeueable.
    let worker = std::fs::read_to_string(repo().join("deploy/slurm/worker.sbatch")).unwrap();
    for line in [
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --requeue",
        "#SBATCH --gres=gpu:1",
    ] {
        assert!(worker.contains(line), "{line}");
    }
}
