//! The child protocol: how a worker agent runs one shard in a `linesweep exec` child process.
//!
//! Three things cross the process boundary, and this module is their only home:
//! - **argv** ([`ChildArgs::argv`]): the hidden `exec` flags of a staged attempt;
//! - **progress lines** ([`ProgressLine`]): one JSON object per line on the child's stdout;
//! - **exit reasons** ([`ExitReason`]): what the child's exit status means for the shard.
//!
//! The agent (`agent.rs`) is the parent side; `src/cmd/exec.rs` implements the child side and
//! maps its errors with [`ExitReason::of_exec_error`].
//!
//! Exit codes follow BSD `sysexits.h` where one fits, so that they also read well to a user
//! running `linesweep exec` by hand.

use std::ffi::OsString;
use std::process::ExitStatus;

use serde::{Deserialize, Serialize};

use crate::engine::EngineError;
use crate::exec::ExecError;
use crate::storage::StorageError;
use crate::storage::ids::LeaseToken;

/// One line of the child's stdout in staged mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressLine {
    /// `train` or `line`.
    pub phase: String,
    /// Units done in the phase.
    pub done: u64,
    /// Units in the phase.
    pub total: u64,
}

/// The command line of one staged attempt (after the program name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildArgs {
    /// The shard's canonical config JSON, as leased.
    pub config_json: String,
    /// The lease: the child stages under its attempt, and the config must hash to its shard
    /// (version skew between agent and child).
    pub token: LeaseToken,
    /// Storage root of the sweep.
    pub results: String,
    /// `--device`.
    pub device: String,
    /// Optimizer steps between checkpoints (0: never).
    pub checkpoint_every: u64,
}

impl ChildArgs {
    /// The arguments, in the spelling `linesweep exec` parses (a test in the CLI checks that
    /// they parse back to the same values).
    pub fn argv(&self) -> Vec<OsString> {
        let flags: [(&str, String); 7] = [
            ("--config-json", self.config_json.clone()),
            ("--expect-shard", self.token.shard.to_string()),
            ("--out", self.results.clone()),
            ("--sweep", self.token.sweep.to_string()),
            ("--attempt", self.token.attempt.to_string()),
            ("--device", self.device.clone()),
            ("--checkpoint-every", self.checkpoint_every.to_string()),
        ];
        let mut argv: Vec<OsString> = ["--quiet", "exec", "--progress-jsonl"]
            .into_iter()
            .map(OsString::from)
            .collect();
        for (flag, value) in flags {
            argv.push(flag.into());
            argv.push(value.into());
        }
        argv
    }
}

/// Why a child ended, and so what happens to its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Finished: the agent asks the coordinator to publish and commit.
    Done,
    /// Stopped on request after a checkpoint (SIGTERM, spot reclaim): the lease is released as
    /// preempted, budget untouched.
    Interrupted,
    /// The machine, not the shard: storage I/O (a full disk, an unreachable store), a device
    /// that is not there, the OOM killer, a signal from outside. Retried elsewhere or later
    /// without spending the shard's failure budget; repeated ones make the worker unhealthy.
    Infrastructure,
    /// It can never succeed: an invalid config, an invalid start, a conflict with results
    /// already published. The shard fails at once, with the reason.
    Deterministic,
    /// Anything else (a diverged run is not one: it commits). Spends one unit of the budget.
    Application,
    /// The child saw its agent die (stdin closed) and stopped; nobody reads this code.
    AgentGone,
}

impl ExitReason {
    /// `EX_IOERR`.
    pub const INFRASTRUCTURE_CODE: i32 = 74;
    /// `EX_TEMPFAIL`: stopped on request after a checkpoint.
    pub const INTERRUPTED_CODE: i32 = 75;
    /// `EX_CONFIG`.
    pub const DETERMINISTIC_CODE: i32 = 78;
    /// The child's own exit when its stdin closes.
    pub const AGENT_GONE_CODE: i32 = 3;

    /// The exit code the child uses for this reason.
    pub const fn code(self) -> i32 {
        match self {
            Self::Done => 0,
            Self::Interrupted => Self::INTERRUPTED_CODE,
            Self::Infrastructure => Self::INFRASTRUCTURE_CODE,
            Self::Deterministic => Self::DETERMINISTIC_CODE,
            Self::Application => 1,
            Self::AgentGone => Self::AGENT_GONE_CODE,
        }
    }

    /// How the agent reads a child's exit status. Killed by SIGKILL (the OOM killer, or an
    /// operator), SIGTERM, SIGINT or SIGHUP: infrastructure. Crashes (SIGSEGV, SIGABRT of a
    /// failed allocation or a double panic, SIGBUS, …) and unknown codes (101 is a panic):
    /// application failures.
    pub fn of_status(status: &ExitStatus) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            if let Some(sig) = status.signal() {
                return match sig {
                    libc::SIGKILL | libc::SIGTERM | libc::SIGINT | libc::SIGHUP => {
                        Self::Infrastructure
                    }
                    _ => Self::Application,
                };
            }
        }
        match status.code() {
            Some(0) => Self::Done,
            Some(Self::INTERRUPTED_CODE) => Self::Interrupted,
            Some(Self::INFRASTRUCTURE_CODE) => Self::Infrastructure,
            Some(Self::DETERMINISTIC_CODE) => Self::Deterministic,
            Some(Self::AGENT_GONE_CODE) => Self::AgentGone,
            _ => Self::Application,
        }
    }

    /// The reason for an error of [`crate::exec::run`].
    pub fn of_exec_error(e: &ExecError) -> Self {
        match e {
            ExecError::Storage(s) => Self::of_storage_error(s),
            ExecError::Engine(e) => Self::of_engine_error(e),
            ExecError::Results(_) => Self::Application,
            // Results already at the final keys: running again cannot change that.
            ExecError::AlreadyDone { .. } => Self::Deterministic,
        }
    }

    /// The reason for a storage error: a key already taken can never succeed; anything else
    /// (a results folder this machine cannot create — a missing mount —, I/O, a full disk, the
    /// network) is the machine's.
    pub fn of_storage_error(e: &StorageError) -> Self {
        match e {
            StorageError::AlreadyExists { .. } => Self::Deterministic,
            StorageError::Location { .. } | StorageError::Store { .. } => Self::Infrastructure,
        }
    }

    fn of_engine_error(e: &EngineError) -> Self {
        match e {
            EngineError::Config(_) | EngineError::Committed(_) => Self::Deterministic,
            // Storing a snapshot: the disk or the store.
            EngineError::Sink(_) => Self::Infrastructure,
            EngineError::Interrupted { .. } => Self::Interrupted,
            // A dataset that is missing or corrupt may be one worker's mount or everyone's
            // data: the budget decides, and `retry` runs it again once it is fixed.
            EngineError::Data(_) | EngineError::Snapshot(_) | EngineError::Resume(_) => {
                Self::Application
            }
        }
    }

    /// What the reason is called in logs and failure reports.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Interrupted => "interrupted",
            Self::Infrastructure => "infrastructure failure",
            Self::Deterministic => "invalid shard",
            Self::Application => "application failure",
            Self::AgentGone => "agent gone",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn status_of(sh: &str) -> ExitStatus {
        std::process::Command::new("sh")
            .args(["-c", sh])
            .status()
            .expect("sh runs")
    }

    #[cfg(unix)]
    #[test]
    fn exit_statuses_map_to_reasons_and_codes_round_trip() {
        for r in [
            ExitReason::Done,
            ExitReason::Interrupted,
            ExitReason::Infrastructure,
            ExitReason::Deterministic,
            ExitReason::Application,
            ExitReason::AgentGone,
        ] {
            let status = status_of(&format!("exit {}", r.code()));
            assert_eq!(ExitReason::of_status(&status), r, "{r:?}");
        }
        // The OOM killer's SIGKILL is the machine's doing; a segfault is the program's.
        assert_eq!(
            ExitReason::of_status(&status_of("kill -KILL $$")),
            ExitReason::Infrastructure
        );
        assert_eq!(
            ExitReason::of_status(&status_of("kill -SEGV $$")),
            ExitReason::Application
        );
        // A panic (101) is an application failure.
        assert_eq!(
            ExitReason::of_status(&status_of("exit 101")),
            ExitReason::Application
        );
    }

    #[test]
    fn exec_errors_are_classified_once() {
        let store = ExecError::Storage(StorageError::Store {
            op: "put",
            key: "k".into(),
            root: "/r".into(),
            message: "No space left on device (os error 28)".into(),
        });
        assert_eq!(
            ExitReason::of_exec_error(&store),
            ExitReason::Infrastructure
        );
        let config = ExecError::Engine(EngineError::Config("eval.starts: too late".into()));
        assert_eq!(
            ExitReason::of_exec_error(&config),
            ExitReason::Deterministic
        );
        let conflict = ExecError::Storage(StorageError::AlreadyExists {
            key: "k".into(),
            root: "/r".into(),
        });
        assert_eq!(
            ExitReason::of_exec_error(&conflict),
            ExitReason::Deterministic
        );
    }

    #[test]
    fn argv_names_every_field_once() {
        let a = ChildArgs {
            config_json: "{}".into(),
            token: LeaseToken {
                sweep: "sw".parse().unwrap(),
                shard: "abc".parse().unwrap(),
                attempt: "7".parse().unwrap(),
            },
            results: "/r".into(),
            device: "cpu".into(),
            checkpoint_every: 50,
        };
        let argv: Vec<String> = a
            .argv()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let at = |flag: &str| argv.iter().position(|x| x == flag).map(|i| &argv[i + 1]);
        assert_eq!(at("--attempt").map(String::as_str), Some("7"));
        assert_eq!(at("--checkpoint-every").map(String::as_str), Some("50"));
        assert_eq!(&argv[..3], ["--quiet", "exec", "--progress-jsonl"]);
    }
}
