//! The command line (clap derive). No I/O here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Linear-interpolation sweeps of neural-network training.
#[derive(Debug, Parser)]
#[command(name = "linesweep", version, about, long_about = None)]
pub struct Cli {
    /// Only print warnings and errors (LINESWEEP_LOG=debug for more).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one shard in this process: train, snapshot, evaluate the line and the trajectory,
    /// write Parquet.
    Exec(ExecArgs),
    /// Run a sweep on this machine: an in-process coordinator and local workers. Run it again
    /// after an interruption to resume; committed shards are not rerun.
    Run(RunArgs),
    /// Run the coordinator: the durable shard ledger behind a gRPC API.
    Serve(ServeArgs),
    /// Run a worker: lease shards from a coordinator and run them, one child process each.
    Worker(WorkerArgs),
    /// Submit a sweep spec to a coordinator (idempotent: known shards are left as they are).
    Submit(SubmitArgs),
    /// A sweep's progress: shards per state, failures, running shards, throughput and ETA.
    Status(StatusArgs),
    /// Follow a sweep's progress until every shard is committed, failed or cancelled.
    Watch(WatchArgs),
    /// Run failed (and cancelled) shards again, all of them or those named.
    Retry(RetryArgs),
    /// Cancel a sweep's pending shards (running ones finish unless --now).
    Cancel(CancelArgs),
    /// Live workers, their devices and the shards they hold.
    Workers(WorkersArgs),
    /// Remove staging left by dead attempts (committed, cancelled or unknown shards).
    Gc(GcArgs),
    /// Expand a sweep spec into its shards and print them, without running anything.
    Plan(PlanArgs),
    /// Rewrite a sweep's summary files from its committed results (the coordinator does this
    /// as the sweep goes; this is for results it did not summarize, e.g. after `--recover`).
    Summarize(SummarizeArgs),
    /// Draw a figure (PNG or SVG, by --out's extension) from a results location's Parquet:
    /// the line, the trajectory, a heatmap over two grid axes, or the lines from every start.
    Plot(PlotArgs),
    /// One self-contained HTML page of a sweep: status, a summary per config group, the
    /// figures, every run, and the DuckDB and Polars queries behind the tables.
    Report(ReportArgs),
    /// Print the default shard config (every field, with its default) as TOML.
    DefaultConfig,
    /// Measure the engine on the default shard (no timed tests; see docs/performance.md).
    Bench(BenchArgs),
    /// Datasets: download the public ones and verify their checksums.
    Data(DataArgs),
    /// Check that a device computes what the CPU computes: the same θ_i and batches, a few
    /// training steps of an MLP and a batch-norm ResNet-20, and the line's α = 0 and α = 1
    /// rows, compared within a tolerance. Exits non-zero when they disagree.
    CheckDevice(CheckDeviceArgs),
}

/// What `linesweep plot` draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlotKind {
    /// Loss (or `--metric accuracy`) against α, train and test, one curve per config group
    /// with a min–max band over seeds; α = 0 and 1 marked, ln K as a reference.
    Line,
    /// β against α, one path per run, coloured by training step (Goodfellow et al.'s figure).
    Trajectory,
    /// A metric over two grid axes (`--x`, `--y`), averaged over seeds, values in the cells.
    Heatmap,
    /// One shard's lines from every `eval.starts` snapshot to θ_c (Frankle's figure).
    Starts,
    /// One shard's 2-D plane (`[eval.plane]`) as a colour map of the loss (or accuracy), with
    /// θ_c, θ_i where the plane holds it, and the trajectory on the PCA plane.
    Plane,
}

/// `linesweep plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// What to draw.
    #[arg(value_enum)]
    pub kind: PlotKind,
    /// The results location (a directory, `file://` or `s3://` URL).
    #[arg(long, default_value = "linesweep-results")]
    pub results: String,
    /// The sweep (default: the only one in --results).
    #[arg(long)]
    pub sweep: Option<String>,
    /// The figure: `.png` or `.svg`.
    #[arg(long)]
    pub out: PathBuf,
    /// line/starts: `loss` (default) or `accuracy`; heatmap: `delta-min` (default),
    /// `non-monotone`, `test-acc` or `distance`.
    #[arg(long)]
    pub metric: Option<String>,
    /// line: group runs by these config columns (default: the grid axes that vary, seed excepted).
    #[arg(long)]
    pub by: Option<String>,
    /// line/starts: the batch-norm mode of the lines (default: the first one recorded).
    #[arg(long)]
    pub bn_mode: Option<String>,
    /// line: the line start (default: `init`).
    #[arg(long)]
    pub start: Option<String>,
    /// plane: `random`, `init` or `pca` (default: the first the shard measured).
    #[arg(long)]
    pub plane: Option<String>,
    /// plane: `train` (default) or `test`.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// starts/trajectory/plane: one shard (default: starts and plane draw the first,
    /// trajectory every one).
    #[arg(long)]
    pub shard: Option<String>,
    /// heatmap: the column along x (default: the first varying grid axis).
    #[arg(long)]
    pub x: Option<String>,
    /// heatmap: the column along y (default: the second varying grid axis).
    #[arg(long)]
    pub y: Option<String>,
    /// Width in pixels.
    #[arg(long, default_value_t = 900)]
    pub width: u32,
    /// Height in pixels.
    #[arg(long, default_value_t = 560)]
    pub height: u32,
}

/// `linesweep report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The sweep (default: the only one in --results).
    pub sweep: Option<String>,
    /// The results location (a directory, `file://` or `s3://` URL).
    #[arg(long, default_value = "linesweep-results")]
    pub results: String,
    /// The ledger to read the status from (default: the one `linesweep run` keeps beside
    /// local results, if there is one).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// The page to write.
    #[arg(long, default_value = "report.html")]
    pub out: PathBuf,
}

/// `linesweep summarize`.
#[derive(Debug, Args)]
pub struct SummarizeArgs {
    /// Sweep name.
    pub sweep: String,
    /// The results location (a directory, `file://` or `s3://` URL).
    #[arg(long)]
    pub results: String,
}

/// `linesweep check-device`.
#[derive(Debug, Args)]
pub struct CheckDeviceArgs {
    /// The device to check: `wgpu[:N]`, `vulkan[:N]`, `cuda[:N]` (or `cpu`).
    #[arg(long)]
    pub device: String,
    /// The device it must agree with.
    #[arg(long, default_value = "cpu")]
    pub reference: String,
    /// Forward-pass arithmetic on the checked device: `f32` or `bf16`.
    #[arg(long, default_value = "f32")]
    pub precision: String,
    /// Forward-pass arithmetic on the reference (default: the same as `--precision`).
    #[arg(long)]
    pub reference_precision: Option<String>,
    /// Largest relative difference accepted (default: 2e-2 in f32, which admits TF32
    /// matmuls; 5e-2 in bf16).
    #[arg(long)]
    pub tolerance: Option<f64>,
    /// Training steps per network before the weights are compared.
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    /// The networks to compare on, comma-separated: `mlp` (matmuls, fused element-wise
    /// ops, reductions) and `resnet20` (convolutions and batch norm as well).
    #[arg(long, value_delimiter = ',', default_value = "mlp,resnet20")]
    pub cases: Vec<String>,
    /// Print every comparison as JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// `linesweep data`.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// What to do.
    #[command(subcommand)]
    pub what: DataWhat,
}

/// `linesweep data <what>`.
#[derive(Debug, Subcommand)]
pub enum DataWhat {
    /// Download `mnist` or `cifar10` into DIR and verify the published MD5 checksums
    /// (`imagenet` explains where to place it).
    Fetch(FetchArgs),
    /// Write a small synthetic dataset in the real on-disk format (`cifar10` binary batches or
    /// an `imagenet` folder of JPEGs), for dry runs and GPU checks without the real data.
    Synth(SynthArgs),
}

/// `linesweep data synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// `cifar10` or `imagenet`.
    pub dataset: String,
    /// Target directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Training examples (test/validation: a fifth as many).
    #[arg(long, default_value_t = 1000)]
    pub examples: usize,
}

/// `linesweep data fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// `mnist`, `cifar10` (or `imagenet`, which cannot be downloaded).
    pub dataset: String,
    /// Target directory; point `data.dir` of a shard config at it.
    #[arg(long)]
    pub dir: PathBuf,
    /// Base URL of a mirror serving the same file names (default: the public sources).
    #[arg(long, env = "LINESWEEP_MIRROR")]
    pub mirror: Option<String>,
}

/// `linesweep exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Shard config (TOML); every field has a default.
    #[arg(long, short, required_unless_present = "config_json")]
    pub config: Option<PathBuf>,
    /// The shard config as canonical JSON (how a worker hands a leased shard to its child).
    #[arg(long, hide = true, conflicts_with = "config")]
    pub config_json: Option<String>,
    /// Refuse to run unless the config hashes to this shard id (worker/child version skew).
    #[arg(long, hide = true)]
    pub expect_shard: Option<String>,
    /// Write under this attempt's staging prefix for the coordinator to publish.
    #[arg(long, hide = true)]
    pub attempt: Option<u32>,
    /// Progress as JSON lines on stdout, no summary (for the worker agent).
    #[arg(long, hide = true)]
    pub progress_jsonl: bool,
    /// With --attempt: checkpoint every N optimizer steps (0: never), so that a later attempt
    /// resumes instead of starting over.
    #[arg(long, hide = true, default_value_t = 0)]
    pub checkpoint_every: u64,
    /// Output location: a directory or file:///dir.
    #[arg(long, short)]
    pub out: String,
    /// Device: cpu, wgpu[:N], vulkan[:N] or cuda[:N] (GPU backends need the cargo feature of that name).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Sweep name used as the results partition (`sweep=<name>`).
    #[arg(long, default_value = "exec")]
    pub sweep: String,
    /// Print the run summary as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `linesweep serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// The ledger's SQLite file (created if missing; refused if another coordinator holds it).
    #[arg(long)]
    pub state: PathBuf,
    /// Bearer token clients must send; generated and printed when not given.
    #[arg(long, env = "LINESWEEP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Lease time-to-live in seconds.
    #[arg(long, default_value_t = 60)]
    pub lease_ttl: u64,
    /// Application failures a shard may have before it is marked failed.
    #[arg(long, default_value_t = 3)]
    pub max_failures: u32,
    /// Results location for sweeps whose spec has no `[storage] results`.
    #[arg(long)]
    pub results: Option<String>,
    /// Before serving, record every shard that has a `runs` file under --results as
    /// committed (storage is the truth of what was committed): after a lost ledger, a
    /// resubmission then reruns only what is missing.
    #[arg(long, requires = "results")]
    pub recover: bool,
    /// Serve TLS with this certificate chain (PEM); clients then use an `https://` URL and
    /// `--tls-ca` (or the system's roots). The token is still required.
    #[arg(long, requires = "tls_key", env = "LINESWEEP_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, requires = "tls_cert", env = "LINESWEEP_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Rewrite a sweep's summary files (`summaries/<table>/sweep=<name>/all.parquet`) at most
    /// this many seconds after a commit they lack (0: no summaries). Always at a sweep's end.
    #[arg(long, default_value_t = 60)]
    pub summary_every: u64,
    /// ... and as soon as this many commits are not in them yet.
    #[arg(long, default_value_t = 1000)]
    pub summary_commits: u64,
    /// Connections served at once; more are closed at once (workers retry). Lowered to what
    /// the open-file limit allows, keeping a quarter of it (at least 64) for the ledger and
    /// storage; the soft limit is first raised to the hard one. A connection that sends no
    /// request, or does not finish its TLS handshake, within 10 s is closed.
    #[arg(long, default_value_t = linesweep_coordinator::limits::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
}

/// `linesweep worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Where the coordinator is.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Device the shards train on: cpu, wgpu[:N], vulkan[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Shards run at once (each in its own process).
    #[arg(long, default_value_t = 1)]
    pub slots: usize,
    /// Worker name (default: host name and process id).
    #[arg(long)]
    pub name: Option<String>,
    /// Exit once no shard is pending and none waits for a running one, instead of waiting
    /// for more.
    #[arg(long)]
    pub exit_when_idle: bool,
    /// Longest wait, in seconds, between retries when the coordinator is unreachable.
    #[arg(long, default_value_t = 30.0)]
    pub max_backoff: f64,
    /// Seconds between lease polls when nothing is pending.
    #[arg(long, default_value_t = 2.0)]
    pub idle_poll: f64,
    /// Checkpoint every N optimizer steps (0: never): a shard interrupted by a crash or a
    /// preemption resumes from its latest checkpoint, with identical results.
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: u64,
    /// The device gate.
    #[command(flatten)]
    pub check: DeviceCheckArgs,
    /// When the device check fails, stay registered (shown by `linesweep workers` with the
    /// reason) without taking shards, instead of exiting with an error.
    #[arg(long)]
    pub idle_if_refused: bool,
}

/// The device gate: before its first shard, a worker on any device but `cpu` runs
/// `check-device` against the CPU and refuses a device that disagrees. The verdict is cached
/// (beside the tuning cache, keyed by the binary, the device and its driver).
#[derive(Debug, Args)]
pub struct DeviceCheckArgs {
    /// Check the device again even if a verdict for this binary, device and driver is cached.
    #[arg(long)]
    pub recheck_device: bool,
    /// The arithmetic to check the device in, against the f32 CPU: f32, or bf16 for a
    /// worker that runs bf16 shards. A `cpu` worker is checked only in bf16.
    #[arg(long)]
    pub check_precision: Option<String>,
    /// The device check's tolerance (default: check-device's for the precision).
    #[arg(long)]
    pub check_tolerance: Option<f64>,
}

/// `linesweep run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Sweep spec (TOML).
    pub spec: PathBuf,
    /// Local workers (each runs one shard at a time in its own process).
    #[arg(long, short, default_value_t = 2)]
    pub workers: usize,
    /// Results location (default: the spec's `[storage] results`, else ./linesweep-results).
    #[arg(long, short)]
    pub out: Option<String>,
    /// Device the workers train on.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Accept changed shared settings under an existing sweep name.
    #[arg(long)]
    pub new: bool,
    /// Checkpoint every N optimizer steps (0: never).
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: u64,
    /// Run this sweep's failed and cancelled shards again (with a fresh failure budget), e.g.
    /// once the cause of their failure is fixed. Committed shards never rerun.
    #[arg(long)]
    pub retry_failed: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// When the sweep ends, write its HTML report here (see `linesweep report`).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// The device gate.
    #[command(flatten)]
    pub check: DeviceCheckArgs,
}

/// Connection options shared by client commands.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Coordinator URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    /// Bearer token (as printed by `linesweep serve`).
    #[arg(long, env = "LINESWEEP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signed an `https://` coordinator's certificate (default: the
    /// system's roots).
    #[arg(long, env = "LINESWEEP_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl ClientArgs {
    /// How this client trusts an `https://` coordinator.
    pub fn tls(&self) -> linesweep_proto::tls::ClientTls {
        linesweep_proto::tls::ClientTls {
            ca: self.tls_ca.clone(),
        }
    }
}

/// `linesweep submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Sweep spec (TOML).
    pub spec: PathBuf,
    /// Accept changed shared settings under an existing sweep name (adds the new shards).
    #[arg(long)]
    pub new: bool,
    /// Where the coordinator is.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `linesweep status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Sweep name.
    pub sweep: String,
    /// List every shard with its state and attempts.
    #[arg(long)]
    pub shards: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Where the coordinator is.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `linesweep watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Sweep name.
    pub sweep: String,
    /// Where the coordinator is.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `linesweep retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Sweep name.
    pub sweep: String,
    /// Only these shards (repeatable); default: every failed or cancelled shard.
    #[arg(long = "shard")]
    pub shards: Vec<String>,
    /// Run the named shards again from nothing, committed ones included (e.g. their
    /// snapshots were deleted or damaged, or a failed shard's keys hold another run's files):
    /// their published results and snapshots are removed first, and the next attempt
    /// publishes them once more. Needs --shard.
    #[arg(long, requires = "shards")]
    pub committed: bool,
    /// Where the coordinator is.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `linesweep cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Sweep name.
    pub sweep: String,
    /// Also stop running shards (at their next heartbeat).
    #[arg(long)]
    pub now: bool,
    /// Where the coordinator is.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `linesweep workers`.
#[derive(Debug, Args)]
pub struct WorkersArgs {
    /// Where the coordinator is.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `linesweep gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Sweep name.
    pub sweep: String,
    /// Also remove what failed shards staged, their checkpoints included: a later `retry`
    /// then starts those shards from scratch instead of resuming them.
    #[arg(long)]
    pub failed: bool,
    /// Where the coordinator is.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `linesweep plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Sweep spec (TOML).
    pub spec: PathBuf,
    /// Print every shard's full config as JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `linesweep bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Shard config to measure (the default shard if omitted).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Device to measure.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Repetitions; each one is a full shard written to a temporary directory.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Instead of a shard, measure raw kernels: a 2048³ matmul and an MLP 784-1024-1024-10
    /// forward+backward at batch 128, in GFLOP/s.
    #[arg(long)]
    pub kernels: bool,
    /// Measure something else than a shard.
    #[command(subcommand)]
    pub what: Option<BenchWhat>,
}

/// `linesweep bench <what>`.
#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// Load-test the coordinator: simulated workers doing lease → heartbeat → complete over
    /// loopback gRPC against a state file on disk (no training), then a large submission.
    Coordinator(CoordinatorBenchArgs),
    /// Training and evaluation images/s of one architecture on synthetic images.
    Model(ModelBenchArgs),
    /// JPEG decoding and augmentation images/s of the ImageNet loader on generated images.
    Decode(DecodeBenchArgs),
}

/// `linesweep bench model`.
#[derive(Debug, Args)]
pub struct ModelBenchArgs {
    /// Architecture (`resnet20`, `resnet50`, `cnn`, `mlp`, …).
    #[arg(long, default_value = "resnet20")]
    pub arch: String,
    /// Images per batch.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Image side (32 for CIFAR, 224 for ImageNet).
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Classes.
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Timed training steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// `cpu`, `wgpu[:N]`, `vulkan[:N]` or `cuda[:N]`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Batch norm: `batch` or `none` (default: the architecture's default).
    #[arg(long)]
    pub norm: Option<String>,
    /// Forward-pass arithmetic: `f32` or `bf16` (f32 master weights either way).
    #[arg(long, default_value = "f32")]
    pub precision: String,
}

/// `linesweep bench decode`.
#[derive(Debug, Args)]
pub struct DecodeBenchArgs {
    /// Generated JPEGs to decode (two classes).
    #[arg(long, default_value_t = 256)]
    pub images: usize,
    /// Shorter side of the generated JPEGs, in pixels (ImageNet's training images average
    /// about 400×350; photos from cameras are 2,000 and more).
    #[arg(long, default_value_t = 380)]
    pub side: u32,
    /// Decode the ImageNet-layout folder DIR (`train/<class>/*.JPEG`); when it has no
    /// `train/`, the generated JPEGs are written there and kept, so that
    /// scripts/bench_decode_torch.py can time torchvision on the same files.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Output side.
    #[arg(long, default_value_t = 224)]
    pub size: usize,
    /// Decoding threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// `linesweep bench coordinator`.
#[derive(Debug, Args)]
pub struct CoordinatorBenchArgs {
    /// Concurrent simulated workers.
    #[arg(long, default_value_t = 1000)]
    pub workers: usize,
    /// Shards to lease, heartbeat and complete.
    #[arg(long, default_value_t = 100_000)]
    pub shards: usize,
    /// Then plan and submit a sweep of this many shards (0: skip).
    #[arg(long, default_value_t = 1_000_000)]
    pub submit: usize,
    /// Offered load in cycles/s: each worker waits workers/rate seconds between cycles, the
    /// way real workers spend their time training (0: closed loop, as fast as possible).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Half the shards need one of the other half (shard n/2 + i needs shard i), as children
    /// need their parents: measures what dependencies cost the coordinator.
    #[arg(long)]
    pub dependent: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use linesweep_worker::child::ChildArgs;
    use linesweep_worker::storage::ids::LeaseToken;

    /// The child protocol's argv (built by the agent in `worker/src/child.rs`) must parse
    /// back, field for field, as `linesweep exec` reads it.
    #[test]
    fn the_agents_child_argv_parses_as_exec() {
        let sent = ChildArgs {
            config_json: r#"{"seed":3}"#.into(),
            token: LeaseToken {
                sweep: "mnist-mli".parse().unwrap(),
                shard: "00ff00ff00ff00ff".parse().unwrap(),
                attempt: "4".parse().unwrap(),
            },
            results: "/shared/results".into(),
            device: "cuda:1".into(),
            checkpoint_every: 250,
        };
        let argv = std::iter::once("linesweep".into()).chain(sent.argv());
        let cli = Cli::try_parse_from(argv).expect("the child argv parses");
        assert!(cli.quiet);
        let Command::Exec(e) = cli.command else {
            panic!("not exec")
        };
        assert!(e.progress_jsonl && e.config.is_none());
        let got = ChildArgs {
            config_json: e.config_json.unwrap_or_default(),
            token: LeaseToken {
                sweep: e.sweep.parse().unwrap(),
                shard: e.expect_shard.unwrap_or_default().parse().unwrap(),
                attempt: linesweep_worker::storage::ids::Attempt::new(
                    e.attempt.unwrap_or_default(),
                )
                .unwrap(),
            },
            results: e.out,
            device: e.device,
            checkpoint_every: e.checkpoint_every,
        };
        assert_eq!(got, sent);
    }
}
