//! linesweep's experiment engine: one shard of a sweep, run in one process.
//!
//! # Layout
//!
//! - [`science`]: θ(α) over parameter maps, the α/β trajectory projection and the MLI metrics.
//!   Tensors or slices in, numbers out; no I/O, no clocks, no storage.
//! - [`config`]: the TOML shard config, with defaults and validation that names file, line and key.
//! - [`data`]: IDX (MNIST) readers and the built-in `mnist-10k` sample.
//! - [`model`]: burn modules (MLP) whose snapshot names match PyTorch's.
//! - [`engine`]: seed → data → model → train with snapshots → line and trajectory → metrics.
//!   It reports progress and hands snapshots to a sink, but never touches storage itself.
//! - [`snapshot`]: host copies of weights and their safetensors encoding (the only module that
//!   knows the snapshot format).
//! - [`results`]: Arrow schemas and Parquet encoding of the three result tables.
//! - [`storage`]: `object_store` behind `file://` URLs (and, later, `s3://`).
//! - [`exec`]: glue that runs one shard end to end and writes everything to storage.
//! - [`agent`]: the worker agent: leases, child processes, heartbeats, completion.
//! - [`child`]: the child protocol between an agent and its `linesweep exec` children: argv,
//!   progress lines, exit reasons.
//! - [`device`]: turns `--device` strings into burn devices; GPU backends behind cargo features.
//! - [`gate`]: the device gate: a worker checks a non-CPU device against the CPU before it
//!   leases, and caches the verdict.

pub mod agent;
pub mod child;
pub mod config;
pub mod data;
pub mod device;
pub mod engine;
pub mod exec;
pub mod gate;
pub mod model;
pub mod results;
pub mod science;
pub mod snapshot;
pub mod sweep;

/// Storage and the key layout live in their own crate, shared with the coordinator.
pub use linesweep_storage as storage;

/// Version of this crate, recorded in every `runs` row.
pub const CODE_VERSION: &str = env!("CARGO_PKG_VERSION");
