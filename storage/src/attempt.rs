//! The attempt manifest: every file a worker staged for one attempt, with its size and SHA-256,
//! written last. The coordinator publishes only what it lists, after checking it (publish.rs);
//! a staging folder without one, or one that disagrees with the lease, is never published.

use sha2::{Digest, Sha256};

use crate::ids::{Attempt, ShardId, SweepName};
use crate::layout::{result_key, snapshot_dir};

/// The manifest's key, relative to the attempt's staging prefix. Not published.
pub const ATTEMPT_MANIFEST: &str = "attempt.json";

/// The result tables a finished attempt stages, in publish order (`runs`, the commit marker,
/// last). Every attempt stages all of them but the [`OPTIONAL_TABLES`].
pub const RESULT_TABLES: [&str; 6] = [
    "interpolation",
    "trajectory",
    "lines",
    "plane",
    "monotone_path",
    "runs",
];

/// The tables only a shard that asks for them stages (`[eval.plane]`, `eval.monotone_path`).
pub const OPTIONAL_TABLES: [&str; 2] = ["plane", "monotone_path"];

/// The one table a pair shard stages (the line between two shards' θ_c); its own commit
/// marker.
pub const PAIR_TABLES: [&str; 1] = ["pairs"];

/// The commit marker of each kind of shard: a marker file at its final key means the shard
/// is committed (it is published last). Every row of a marker names the shard, the schema
/// version, the attempt and the canonical config.
pub const COMMIT_TABLES: [&str; 2] = ["runs", "pairs"];

/// What a shard does, which decides the tables it stages and its commit marker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardKind {
    /// Trains a network and measures its lines ([`RESULT_TABLES`], marker `runs`).
    #[default]
    Run,
    /// Evaluates the line between two committed shards' θ_c ([`PAIR_TABLES`], marker
    /// `pairs`).
    Pair,
}

impl ShardKind {
    /// Every table a shard of this kind may stage, in publish order (the marker last).
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Self::Run => &RESULT_TABLES,
            Self::Pair => &PAIR_TABLES,
        }
    }

    /// The table whose file at its final key means committed.
    pub fn commit_table(self) -> &'static str {
        match self {
            Self::Run => COMMIT_TABLES[0],
            Self::Pair => COMMIT_TABLES[1],
        }
    }

    /// The kind whose shards stage `table` (`None` for an unknown table).
    pub fn of_table(table: &str) -> Option<Self> {
        [Self::Run, Self::Pair]
            .into_iter()
            .find(|k| k.tables().contains(&table))
    }

    fn is_run(&self) -> bool {
        *self == Self::Run
    }
}

/// Every result table of every kind of shard.
pub fn all_tables() -> impl Iterator<Item = &'static str> {
    RESULT_TABLES.into_iter().chain(PAIR_TABLES)
}

/// One staged object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StagedFile {
    /// Its final key, relative to the results root (and to the attempt's staging prefix).
    pub key: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the contents, lowercase hex.
    pub sha256: String,
}

impl StagedFile {
    /// Describes `contents` staged at `key`.
    pub fn of(key: &str, contents: &[u8]) -> Self {
        Self {
            key: key.to_owned(),
            bytes: contents.len() as u64,
            sha256: sha256_hex(contents),
        }
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(contents: &[u8]) -> String {
    Sha256::digest(contents)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What one attempt staged.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttemptManifest {
    /// The sweep of the lease.
    pub sweep: SweepName,
    /// The shard of the lease.
    pub shard: ShardId,
    /// The attempt number (the fencing token).
    pub attempt: Attempt,
    /// The result-schema version the tables were written in.
    pub schema_version: i32,
    /// What the shard did (a manifest without one is a run's).
    #[serde(default, skip_serializing_if = "ShardKind::is_run")]
    pub kind: ShardKind,
    /// Every staged object but checkpoints and this manifest.
    pub files: Vec<StagedFile>,
}

impl AttemptManifest {
    /// Checks the manifest against the lease it claims to complete and the layout: every
    /// result table listed, nothing outside the shard's own keys. The reason, when not.
    pub fn check(
        &self,
        sweep: &SweepName,
        shard: &ShardId,
        attempt: Attempt,
    ) -> Result<(), String> {
        if (&self.sweep, &self.shard, self.attempt) != (sweep, shard, attempt) {
            return Err(format!(
                "the attempt manifest is for sweep `{}`, shard {}, attempt {}, not for the lease's \
                 sweep `{sweep}`, shard {shard}, attempt {attempt}",
                self.sweep, self.shard, self.attempt
            ));
        }
        for table in self
            .kind
            .tables()
            .iter()
            .filter(|t| !OPTIONAL_TABLES.contains(t))
        {
            let key = result_key(table, sweep, shard);
            if !self.files.iter().any(|f| f.key == key) {
                return Err(format!("the attempt staged no `{table}` table ({key})"));
            }
        }
        let own_snapshots = format!("{}/", snapshot_dir(shard));
        let own_results: Vec<String> = self
            .kind
            .tables()
            .iter()
            .map(|t| result_key(t, sweep, shard))
            .collect();
        let own = |key: &str| {
            own_results.iter().any(|r| r == key)
                || key
                    .strip_prefix(&own_snapshots)
                    .is_some_and(|file| !file.contains('/') && !file.contains(".."))
        };
        if let Some(f) = self.files.iter().find(|f| !own(&f.key)) {
            return Err(format!(
                "the attempt manifest lists `{}`, which is not one of the shard's own keys",
                f.key
            ));
        }
        Ok(())
    }

    /// The key of the shard's commit marker.
    pub fn marker_key(&self) -> String {
        result_key(self.kind.commit_table(), &self.sweep, &self.shard)
    }

    /// The listed files in publish order: the commit marker (`runs`, `pairs`) last.
    pub fn publish_order(&self) -> Vec<&StagedFile> {
        let marker = self.marker_key();
        let mut files: Vec<&StagedFile> = self.files.iter().filter(|f| f.key != marker).collect();
        files.extend(self.files.iter().filter(|f| f.key == marker));
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sw(s: &str) -> SweepName {
        SweepName::parse(s).unwrap()
    }

    fn abc() -> ShardId {
        ShardId::parse("abc").unwrap()
    }

    fn at(n: u32) -> Attempt {
        Attempt::new(n).unwrap()
    }

    fn manifest() -> AttemptManifest {
        let mut files: Vec<StagedFile> = RESULT_TABLES
            .iter()
            .map(|t| StagedFile::of(&result_key(t, &sw("sw"), &abc()), t.as_bytes()))
            .collect();
        files.insert(
            0,
            StagedFile::of("snapshots/abc/step-00000000.safetensors", b"x"),
        );
        AttemptManifest {
            sweep: sw("sw"),
            shard: abc(),
            attempt: at(2),
            schema_version: 3,
            kind: ShardKind::Run,
            files,
        }
    }

    #[test]
    fn a_manifest_must_match_its_lease_list_every_table_and_stay_in_its_keys() {
        let m = manifest();
        assert_eq!(m.check(&sw("sw"), &abc(), at(2)), Ok(()));
        assert!(
            m.check(&sw("sw"), &abc(), at(3))
                .unwrap_err()
                .contains("attempt 2")
        );
        assert!(
            m.check(&sw("other"), &abc(), at(2))
                .unwrap_err()
                .contains("sweep `sw`")
        );
        let mut no_traj = m.clone();
        no_traj.files.retain(|f| !f.key.contains("trajectory"));
        assert!(
            no_traj
                .check(&sw("sw"), &abc(), at(2))
                .unwrap_err()
                .contains("`trajectory`")
        );
        for bad in [
            "snapshots/other/step-1.safetensors",
            "snapshots/abc/../../x",
            "results/runs/sweep=other/abc.parquet",
            "snapshots/abc/sub/x",
        ] {
            let mut m = m.clone();
            m.files.push(StagedFile::of(bad, b""));
            assert!(
                m.check(&sw("sw"), &abc(), at(2)).unwrap_err().contains(bad),
                "{bad}"
            );
        }
        let order = m.publish_order();
        assert!(order.last().unwrap().key.contains("results/runs/"));
        assert_eq!(order.len(), m.files.len());
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
