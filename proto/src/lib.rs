//! The wire contract: generated gRPC types and the protocol version.
//!
//! **Architecture invariant:** no logic lives here, beyond [`client`]: how a caller attaches
//! its token and deadline to a request. Only the coordinator's service, the worker
//! agent and the CLI's client import [`pb`]; everything else works on domain types.

pub mod client;

/// Generated protobuf and gRPC code for `linesweep.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("linesweep.v1");
}

/// The protocol version every request carries. Zero is the protobuf default ("unset") and is
/// always rejected. 2: a completed attempt carries an attempt manifest (storage's
/// `attempt.json`), which the coordinator checks before publishing; workers of version 1 do
/// not write one, so they are refused rather than failing every shard. 3: a failure says its
/// kind (application, infrastructure, deterministic), workers report being unhealthy, and
/// shard states are the `ShardState` enum instead of names.
pub const PROTOCOL_VERSION: u32 = 3;
