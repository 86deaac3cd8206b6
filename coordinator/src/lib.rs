//! linesweep's coordinator: the durable ledger of sweeps, shards and attempts.
//!
//! # Layout
//!
//! - [`lease`]: the pure shard state machine. Transitions are functions of the current state,
//!   the caller's fencing token and `now`; no clock, no I/O.
//! - [`ledger`]: SQLite (WAL) persistence. Every state change is one transaction that loads
//!   the shard, applies a [`lease`] transition and writes the result with an event row.
//!
//! **Architecture invariant:** the coordinator never depends on the worker crate. Shard
//! configs are opaque canonical JSON here; only their ids matter.
//!
//! - [`service`]: the gRPC `WorkerService` and `ControlService` over the ledger.
//! - [`server`]: bearer-token check, lease reaper, `serve(listener, ledger, config, shutdown)`.
//!
//! Not here yet (issue 3): watch streams, workers listing, health checks, exactly-once
//! publishing of results (the coordinator commits the attempt; the publish step is next).

pub mod lease;
pub mod ledger;
pub mod server;
pub mod service;
