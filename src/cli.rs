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
    /// Run the coordinator: the durable shard ledger behind a gRPC API.
    Serve(ServeArgs),
    /// Submit a sweep spec to a coordinator (idempotent: known shards are left as they are).
    Submit(SubmitArgs),
    /// Shard counts per state of a sweep on a coordinator.
    Status(StatusArgs),
    /// Expand a sweep spec into its shards and print them, without running anything.
    Plan(PlanArgs),
    /// Print the default shard config (every field, with its default) as TOML.
    DefaultConfig,
    /// Measure the engine on the default shard (no timed tests; see docs/performance.md).
    Bench(BenchArgs),
}

/// `linesweep exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Shard config (TOML); every field has a default.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Output location: a directory or file:///dir.
    #[arg(long, short)]
    pub out: String,
    /// Device: cpu, wgpu[:N] or cuda[:N] (GPU backends need the cargo feature of that name).
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
}

/// `linesweep submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Sweep spec (TOML).
    pub spec: PathBuf,
    /// Where the coordinator is.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `linesweep status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Sweep name.
    pub sweep: String,
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
}
