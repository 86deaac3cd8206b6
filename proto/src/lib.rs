//! The wire contract: generated gRPC types and the protocol version.
//!
//! **Architecture invariant:** no logic lives here, beyond [`client`] (how a caller attaches
//! its token and deadline to a request), [`tls`] (the coordinator's certificate, and how a
//! caller reaches it over `http://` or `https://`) and the one conversion of the wire's lease token to
//! the validated [`LeaseToken`]. Only the coordinator's service, the worker
//! agent and the CLI's client import [`pb`]; everything else works on domain types.

pub mod client;
pub mod tls;

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
/// shard states are the `ShardState` enum instead of names. 4: shards can need other shards
/// (`ShardSpec.needs`), with the states waiting and held. 5: `ListShards` is paged
/// (`page_token`, `next_page_token`); a client of version 4 would take the first page for the
/// whole sweep.
pub const PROTOCOL_VERSION: u32 = 5;

pub use linesweep_storage::ids::LeaseToken;

/// The wire token, validated once: every id in it is checked ([`linesweep_storage::ids`]).
impl TryFrom<pb::Token> for LeaseToken {
    type Error = String;

    fn try_from(t: pb::Token) -> Result<Self, String> {
        use linesweep_storage::ids::{Attempt, ShardId, SweepName};
        let bad = |e: linesweep_storage::ids::IdError| format!("lease token: {e}");
        Ok(LeaseToken {
            sweep: SweepName::parse(t.sweep).map_err(bad)?,
            shard: ShardId::parse(t.shard).map_err(bad)?,
            attempt: Attempt::new(t.attempt).map_err(bad)?,
        })
    }
}

impl From<LeaseToken> for pb::Token {
    fn from(t: LeaseToken) -> Self {
        pb::Token {
            sweep: t.sweep.into(),
            shard: t.shard.into(),
            attempt: t.attempt.get(),
        }
    }
}
