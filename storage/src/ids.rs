//! The ids that every process and every storage key shares: a sweep's name, a shard's id and
//! an attempt number (the fencing token). Each is a newtype that can only be built by
//! validating it, so a value of one of these types is valid wherever it travels: the planner,
//! `exec`, the coordinator's wire layer and the ledger parse strings into them once, at the
//! edge, and [`crate::layout`] builds keys only from them, so no key escapes the layout.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A string or number is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not a sweep name.
    #[error("`{}` is not a sweep name: {}", .0.escape_debug(), SWEEP_NAME_RULE)]
    SweepName(String),
    /// Not a shard id.
    #[error("`{}` is not a shard id: {}", .0.escape_debug(), SHARD_ID_RULE)]
    ShardId(String),
    /// Attempt numbers start at 1.
    #[error("attempt 0 does not exist: attempt numbers start at 1")]
    Attempt,
}

/// The longest sweep name: it is one path component (`sweep=NAME`) of every key, and file
/// systems and object stores cap a component at 255 bytes.
pub const MAX_SWEEP_NAME: usize = 100;

/// What a valid sweep name looks like, for error messages.
pub const SWEEP_NAME_RULE: &str =
    "use a letter followed by letters, digits, `_`, `-` or `.`, at most 100 characters";

/// The longest shard id (the planner's are 16 hex digits; other clients may choose their own).
pub const MAX_SHARD_ID: usize = 64;

/// What a valid shard id looks like, for error messages.
pub const SHARD_ID_RULE: &str = "use 1 to 64 ASCII letters, digits or `-`";

/// A sweep's name: a safe hive partition value, a letter then letters, digits, `_`, `-`, `.`
/// (so that DuckDB and Polars never infer it as a number or a date, and no key escapes the
/// layout), at most [`MAX_SWEEP_NAME`] characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SweepName(String);

/// A shard's id: one plain key component, [`SHARD_ID_RULE`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ShardId(String);

/// An attempt number, the fencing token of a lease: 1 for a shard's first lease, one more for
/// each lease after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Attempt(u32);

/// A lease's token: attempt `attempt` of shard `shard` of sweep `sweep`. Every call of the
/// lease's holder names it; `attempt` is the fencing token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseToken {
    /// The sweep.
    pub sweep: SweepName,
    /// The shard.
    pub shard: ShardId,
    /// The attempt.
    pub attempt: Attempt,
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} attempt {}", self.sweep, self.shard, self.attempt)
    }
}

/// Whether `name` is a valid sweep name (see [`SweepName`]).
pub fn valid_sweep_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_SWEEP_NAME
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn valid_shard_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SHARD_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

macro_rules! string_id {
    ($t:ident, $valid:ident, $err:ident) => {
        impl $t {
            /// Validates `s`.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                if $valid(&s) {
                    Ok(Self(s))
                } else {
                    Err(IdError::$err(s))
                }
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $t {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl FromStr for $t {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl From<$t> for String {
            fn from(id: $t) -> String {
                id.0
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

string_id!(SweepName, valid_sweep_name, SweepName);
string_id!(ShardId, valid_shard_id, ShardId);

impl ShardId {
    /// The id named by a hash digest: its bytes in lowercase hex (always a valid id for a
    /// digest of at most 32 bytes; a longer one is cut to 32).
    pub fn of_digest(digest: &[u8]) -> ShardId {
        ShardId(
            digest
                .iter()
                .take(MAX_SHARD_ID / 2)
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }
}

impl Attempt {
    /// A shard's first attempt.
    pub const FIRST: Attempt = Attempt(1);

    /// Validates `n` (attempt numbers start at 1).
    pub fn new(n: u32) -> Result<Self, IdError> {
        if n == 0 {
            Err(IdError::Attempt)
        } else {
            Ok(Self(n))
        }
    }

    /// The attempt after `issued` attempts (the lease that issues it makes it the latest).
    pub fn after(issued: u32) -> Attempt {
        Attempt(issued.saturating_add(1))
    }

    /// The attempt after this one.
    pub fn next(self) -> Attempt {
        Attempt(self.0.saturating_add(1))
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Attempt {
    type Error = IdError;
    fn try_from(n: u32) -> Result<Self, IdError> {
        Self::new(n)
    }
}

impl From<Attempt> for u32 {
    fn from(a: Attempt) -> u32 {
        a.0
    }
}

impl FromStr for Attempt {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let n: u32 = s
            .parse()
            .map_err(|e| format!("`{s}` is not an attempt number: {e}"))?;
        Self::new(n).map_err(|e| e.to_string())
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_names_stay_one_plain_key_component() {
        assert!(SweepName::parse("mnist-mli.v2_a").is_ok());
        assert!(SweepName::parse("a".repeat(MAX_SWEEP_NAME)).is_ok());
        for bad in ["", "..", "../x", "a/b", "a=b", "7up", "x\ny", "ü"] {
            assert_eq!(
                SweepName::parse(bad),
                Err(IdError::SweepName(bad.into())),
                "{bad:?}"
            );
        }
        assert!(SweepName::parse("a".repeat(MAX_SWEEP_NAME + 1)).is_err());
        let err = SweepName::parse("x\ny").unwrap_err().to_string();
        assert!(err.contains(r"`x\ny` is not a sweep name"), "{err}");
    }

    #[test]
    fn shard_ids_are_plain_identifiers() {
        assert!(ShardId::parse("00ff3a9c12d4e5b6").is_ok());
        assert!(ShardId::parse("a-1").is_ok());
        for bad in [
            "",
            "a/b",
            "..",
            "a b",
            "a.parquet",
            &"f".repeat(MAX_SHARD_ID + 1),
        ] {
            assert!(ShardId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_validate_when_deserialized() {
        let ok: SweepName = serde_json::from_str("\"sw\"").unwrap();
        assert_eq!(ok, "sw");
        assert!(serde_json::from_str::<SweepName>("\"../x\"").is_err());
        assert!(serde_json::from_str::<ShardId>("\"a/b\"").is_err());
        assert!(serde_json::from_str::<Attempt>("0").is_err());
        assert_eq!(serde_json::from_str::<Attempt>("3").unwrap().get(), 3);
        assert_eq!(serde_json::to_string(&Attempt::FIRST.next()).unwrap(), "2");
    }

    #[test]
    fn digests_are_shard_ids() {
        assert_eq!(ShardId::of_digest(&[0, 0xff, 0x3a]), "00ff3a");
        assert_eq!(ShardId::of_digest(&[7; 40]).as_str().len(), MAX_SHARD_ID);
    }

    #[test]
    fn attempts_start_at_one() {
        assert_eq!(Attempt::new(0), Err(IdError::Attempt));
        assert_eq!("7".parse::<Attempt>().unwrap().get(), 7);
        assert!("0".parse::<Attempt>().is_err());
        assert!("x".parse::<Attempt>().is_err());
    }
}
