//! `deploy/slurm/worker.sbatch` on a real one-node Slurm cluster that this test starts on
//! loopback: munged (as user munge, its own key and socket), slurmctld and slurmd (Debian's
//! `slurm-wlm` and `munge`, installed by `scripts/test-deps.sh`). It submits a sweep, runs
//! two array tasks as workers, requeues one mid-shard, and checks with DuckDB that every shard
//! was committed exactly once.

mod common;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const TOKEN: &str = "slurm-token";
const SHARDS: usize = 4;

/// A free TCP port on loopback (closed again: the daemon binds it a moment later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn id_of(flag: &str, user: &str) -> u32 {
    let out = Command::new("id").args([flag, user]).output().expect("id");
    assert!(out.status.success(), "no user {user}: is munge installed?");
    text(&out.stdout).trim().parse().unwrap()
}

/// A one-node cluster whose files all live under `dir`.
struct Cluster {
    conf: PathBuf,
    daemons: Vec<Proc>,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        // munged runs as munge and must reach its socket through `dir`.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
        let munge = dir.join("munge");
        std::fs::create_dir(&munge).unwrap();
        let key: Vec<u8> = (0..1024).map(|_| rand::random::<u8>()).collect();
        std::fs::write(munge.join("munge.key"), key).unwrap();
        let (uid, gid) = (id_of("-u", "munge"), id_of("-g", "munge"));
        for (p, mode) in [(munge.join("munge.key"), 0o400), (munge.clone(), 0o711)] {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap();
        }
        let socket = munge.join("socket");
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let munged = Command::new("munged")
            .arg("--foreground")
            .arg(format!("--key-file={}", munge.join("munge.key").display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", munge.join("pid").display()))
            .arg(format!("--log-file={}", munge.join("log").display()))
            .arg(format!("--seed-file={}", munge.join("seed").display()))
            .uid(uid)
            .gid(gid)
            .stdout(log("munged.out"))
            .stderr(log("munged.err"))
            .spawn()
            .expect("munged (Debian's munge package)");
        let mut cluster = Cluster {
            conf: dir.join("slurm.conf"),
            daemons: vec![Proc(munged)],
        };
        poll_until(
            Duration::from_secs(20),
            "munged's socket",
            || socket.exists().then_some(()),
            |_| true,
        );
        std::fs::write(&cluster.conf, slurm_conf(dir, &socket)).unwrap();
        for (daemon, args) in [
            ("slurmctld", vec!["-D"]),
            ("slurmd", vec!["-D", "-N", "node0"]),
        ] {
            let child = Command::new(daemon)
                .args(&args)
                .arg("-f")
                .arg(&cluster.conf)
                .env("SLURM_CONF", &cluster.conf)
                .stdout(log(&format!("{daemon}.out")))
                .stderr(log(&format!("{daemon}.err")))
                .spawn()
                .unwrap_or_else(|e| panic!("{daemon} (Debian's slurm-wlm package): {e}"));
            cluster.daemons.push(Proc(child));
        }
        poll_until(
            Duration::from_secs(60),
            "the node idle in sinfo",
            || Some(cluster.run("sinfo", &["-h", "-o", "%T"]).1),
            |s| s.trim() == "idle",
        );
        cluster
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// (success, stdout, stderr) of a Slurm client command.
    fn run(&self, program: &str, args: &[&str]) -> (bool, String, String) {
        let mut c = self.command(program);
        c.args(args);
        let out = run_with_deadline(c, Duration::from_secs(30));
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    /// The state of each job (`%i %T`), e.g. `("7_0", "RUNNING")`.
    fn jobs(&self) -> Vec<(String, String)> {
        let (_, out, _) = self.run("squeue", &["-h", "-o", "%i %T"]);
        out.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(i, s)| (i.to_owned(), s.to_owned()))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Job steps outlive slurmd: cancel them before the daemons go.
        let _ = self.run("scancel", &["--full", "--user", "root"]);
        for _ in 0..100 {
            if self.jobs().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn slurm_conf(dir: &Path, socket: &Path) -> String {
    let host = hostname::get().unwrap().to_string_lossy().into_owned();
    let host = host.split('.').next().unwrap().to_owned();
    let d = dir.display();
    format!(
        "ClusterName=linesweep-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
AuthType=auth/munge
AuthInfo=socket={socket}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
KillWait=20
MinJobAge=300
NodeName=node0 NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=test Nodes=node0 Default=YES MaxTime=INFINITE State=UP
",
        ctld = free_port(),
        slurmd = free_port(),
        socket = socket.display(),
    )
}

/// 4 shards of an MLP long enough (a few seconds each) to be requeued mid-shard.
fn spec(dir: &Path) -> PathBuf {
    let text = format!(
        r#"
name = "slurm"

[grid]
seed = [0, 1, 2, 3]

[model]
hidden = [256, 256]

[data]
max_train_examples = 4000

[train]
epochs = 30
lr = 0.01

[snapshot]
every = 200

[eval]
max_examples = 400
alpha_points = 11
alpha_start = 0.0
alpha_stop = 1.0

[storage]
results = "{}"
"#,
        dir.join("results").display()
    );
    let path = dir.join("slurm.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn status(url: &str, dir: &Path) -> Option<serde_json::Value> {
    let out = linesweep(
        &[
            "status",
            "slurm",
            "--json",
            "--shards",
            "--coordinator",
            url,
            "--token",
            TOKEN,
        ],
        dir,
        Duration::from_secs(30),
    );
    serde_json::from_slice(&out.stdout).ok()
}

/// Whether `shard` has a checkpoint in its staging folder.
fn has_checkpoint(results: &Path, shard: &str) -> bool {
    let staging = results.join("staging").join("slurm").join(shard);
    let Ok(attempts) = std::fs::read_dir(staging) else {
        return false;
    };
    attempts.flatten().any(|a| {
        std::fs::read_dir(a.path().join("checkpoints"))
            .map(|c| c.flatten().any(|s| s.path().join("state.json").exists()))
            .unwrap_or(false)
    })
}

#[test]
fn a_job_array_of_workers_survives_a_requeue_mid_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cluster = Cluster::start(dir);
    let (_server, url) = serve(
        &[
            "--token",
            TOKEN,
            "--lease-ttl",
            "10",
            "--listen",
            "127.0.0.1:0",
        ],
        &dir.join("state.db"),
    );
    let spec = spec(dir);
    let out = linesweep(
        &[
            "submit",
            spec.to_str().unwrap(),
            "--coordinator",
            &url,
            "--token",
            TOKEN,
        ],
        dir,
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The shipped script, with a CPU partition's overrides on the command line.
    let mut sbatch = cluster.command("sbatch");
    sbatch
        .args([
            "--parsable",
            "--gres=none",
            "--cpus-per-task=1",
            "--array=0-1",
        ])
        .arg(format!("--output={}/worker-%A_%a.log", dir.display()))
        .arg(repo().join("deploy/slurm/worker.sbatch"))
        .env("LINESWEEP_COORDINATOR", &url)
        .env("LINESWEEP_TOKEN", TOKEN)
        .env("LINESWEEP_BIN", bin())
        .env("LINESWEEP_DEVICE", "cpu")
        .env("LINESWEEP_CHECKPOINT_EVERY", "50")
        .env("LINESWEEP_LOG", "info,linesweep_worker::agent=debug")
        .current_dir(dir)
        .stdin(Stdio::null());
    let out = run_with_deadline(sbatch, Duration::from_secs(30));
    assert!(out.status.success(), "sbatch: {}", text(&out.stderr));
    let job = text(&out.stdout).trim().to_owned();
    let task0 = format!("{job}_0");

    // Task 0 is mid-shard, with a checkpoint on disk: requeue it.
    let results = dir.join("results");
    let name = format!("slurm-{task0}-r0");
    let st = poll_until(
        Duration::from_secs(120),
        "a shard of task 0 with a checkpoint",
        || status(&url, dir),
        |st| {
            st["shards"].as_array().unwrap().iter().any(|s| {
                s["state"] == "leased"
                    && s["worker"] == name.as_str()
                    && has_checkpoint(&results, s["id"].as_str().unwrap())
            })
        },
    );
    let requeued = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["state"] == "leased" && s["worker"] == name.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, _, err) = cluster.run("scontrol", &["requeue", &task0]);
    assert!(ok, "scontrol requeue: {err}");
    // Slurm holds a requeued job for a while (BeginTime); release it now.
    poll_until(
        Duration::from_secs(30),
        "task 0 pending again",
        || Some(cluster.jobs()),
        |jobs| jobs.iter().any(|(i, s)| i == &task0 && s == "PENDING"),
    );
    let (ok, _, err) = cluster.run(
        "scontrol",
        &["update", &format!("JobId={task0}"), "StartTime=now"],
    );
    assert!(ok, "scontrol update: {err}");

    poll_until(
        Duration::from_secs(300),
        "every array task finished",
        || Some(cluster.jobs()),
        |jobs| jobs.is_empty(),
    );
    let st = status(&url, dir).expect("status");
    assert_eq!(st["counts"]["committed"], SHARDS as u64, "{st:#}");
    let shard = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == requeued.as_str())
        .unwrap();
    // Given back as preempted: an interruption, not a failure.
    assert_eq!(shard["failures"], 0, "{shard:#}");
    assert!(shard["interruptions"].as_u64().unwrap() >= 1, "{shard:#}");

    let log = |task: u32| {
        std::fs::read_to_string(dir.join(format!("worker-{job}_{task}.log"))).unwrap_or_default()
    };
    let (log0, log1) = (log(0), log(1));
    assert!(log0.contains("lease released (preempted)"), "{log0}");
    assert!(log0.contains("run 1,"), "task 0 never ran again:\n{log0}");
    let both = format!("{log0}{log1}");
    assert!(
        both.contains("resuming from a verified checkpoint"),
        "nobody resumed the requeued shard:\n{both}"
    );

    // DuckDB: every shard exactly once, no duplicate rows in any table.
    check_sweep(&results, "slurm", SHARDS, 11);
    drop(cluster);
}
