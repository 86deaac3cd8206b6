//! linesweep's coordinator: the durable ledger of sweeps, shards and attempts.
//!
//! # Layout
//!
//! - [`lease`]: the pure shard state machine. Transitions are functions of the current state,
//!   the caller's fencing token and `now`; no clock, no I/O.
//! - [`ledger`]: SQLite (WAL) persistence. Every state change is one transaction that loads
//!   the shard, applies a [`lease`] transition and writes the result with an event row.
//! - [`publish`]: copies an attempt's staged output to the final keys, create-only (the only
//!   module here that touches storage).
//! - [`recover`]: rebuilds committed state from the results root (`serve --recover`): a
//!   `runs` file at its final key means committed.
//! - [`summary`]: per-sweep summary files, one Parquet object per table holding every
//!   committed shard's rows, rewritten whole (the per-shard files stay the truth).
//! - [`service`]: the gRPC `WorkerService` and `ControlService` over the ledger: version
//!   check, wire ↔ domain, the publish protocol, live progress and the workers registry.
//! - [`server`]: bearer-token check, health service, lease reaper and publish roll-forward,
//!   `serve(listener, ledger, config, shutdown)`.
//!
//! **Architecture invariant:** the coordinator never depends on the worker crate. Shard
//! configs are opaque canonical JSON here; only their ids matter.

pub mod lease;
pub mod ledger;
pub mod limits;
pub mod publish;
pub mod recover;
pub mod server;
pub mod service;
pub mod summary;
