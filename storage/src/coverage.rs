//! What a per-sweep summary file covers, recorded in its Parquet footer
//! ([`COVERAGE_KEY`] in the key-value metadata) by the coordinator that writes it, and checked
//! by every reader before one of its rows is used: the sweep, the table, the columns, and the
//! shard ids (count and SHA-256 of the sorted ids).
//!
//! The one home of that contract between the coordinator (`summary.rs` writes it) and the
//! readers (`results::read`, `plot`, `report`, and the coordinator's own next rewrite). A
//! summary without it, or with another sweep's, table's or set of shards', is not used: the
//! per-shard files (the exactly-once truth) are read instead.

use sha2::{Digest, Sha256};

use crate::ids::SweepName;

/// The key of the coverage record in a summary file's Parquet key-value metadata.
pub const COVERAGE_KEY: &str = "linesweep.summary";

/// What one summary file holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Coverage {
    /// The sweep whose rows it holds.
    pub sweep: SweepName,
    /// The result table.
    pub table: String,
    /// Its column names, in file order.
    pub columns: Vec<String>,
    /// How many distinct shards its rows name.
    pub shards: u64,
    /// SHA-256 of those shard ids, sorted and each followed by a newline.
    pub shards_sha256: String,
}

impl Coverage {
    /// The coverage of a summary of `table` in `sweep` with `columns`, holding `shards`.
    pub fn of<'a>(
        sweep: &SweepName,
        table: &str,
        columns: Vec<String>,
        shards: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let (shards, shards_sha256) = digest(shards);
        Self {
            sweep: sweep.clone(),
            table: table.to_owned(),
            columns,
            shards,
            shards_sha256,
        }
    }

    /// Parses the metadata value (`None`: the file records no coverage).
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        let value = value.ok_or("it records no coverage (it predates coverage records)")?;
        serde_json::from_str(value).map_err(|e| format!("its coverage record does not read: {e}"))
    }

    /// The metadata value.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Checks that this is a summary of `table` in `sweep` whose rows name exactly `shards`
    /// (those its rows do name: `in_rows`). The reason, when not.
    pub fn check<'a>(
        &self,
        sweep: &SweepName,
        table: &str,
        in_rows: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), String> {
        if (&self.sweep, self.table.as_str()) != (sweep, table) {
            return Err(format!(
                "it is the summary of table `{}` of sweep `{}`, not of table `{table}` of sweep \
                 `{sweep}`",
                self.table, self.sweep
            ));
        }
        let (n, sha) = digest(in_rows);
        if (n, sha.as_str()) != (self.shards, self.shards_sha256.as_str()) {
            return Err(format!(
                "its rows name {n} shards, not the {} it records",
                self.shards
            ));
        }
        Ok(())
    }

    /// Whether it covers exactly `shards`.
    pub fn covers<'a>(&self, shards: impl IntoIterator<Item = &'a str>) -> bool {
        let (n, sha) = digest(shards);
        (n, sha.as_str()) == (self.shards, self.shards_sha256.as_str())
    }
}

/// The coverage record among a Parquet footer's key-value pairs (key, value), if any: the
/// one lookup the coordinator and the readers share.
pub fn in_footer<'a>(
    pairs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Option<String> {
    pairs
        .into_iter()
        .find(|(k, _)| *k == COVERAGE_KEY)
        .and_then(|(_, v)| v.map(str::to_owned))
}

/// (distinct ids, SHA-256 of the sorted distinct ids each followed by `\n`).
fn digest<'a>(shards: impl IntoIterator<Item = &'a str>) -> (u64, String) {
    let sorted: std::collections::BTreeSet<&str> = shards.into_iter().collect();
    let mut h = Sha256::new();
    for s in &sorted {
        h.update(s.as_bytes());
        h.update(b"\n");
    }
    let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    (sorted.len() as u64, hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coverage_record_pins_sweep_table_and_shards() {
        let sw = SweepName::parse("sw").unwrap();
        let c = Coverage::of(&sw, "runs", vec!["shard".into()], ["b", "a", "a"]);
        assert_eq!(c.shards, 2);
        let back = Coverage::parse(Some(&c.to_json())).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.check(&sw, "runs", ["a", "b"]), Ok(()));
        assert!(back.covers(["b", "a"]) && !back.covers(["a"]));
        let other = SweepName::parse("other").unwrap();
        assert!(
            back.check(&other, "runs", ["a", "b"])
                .unwrap_err()
                .contains("sweep `sw`")
        );
        assert!(
            back.check(&sw, "interpolation", ["a", "b"])
                .unwrap_err()
                .contains("table `runs`")
        );
        assert!(back.check(&sw, "runs", ["a", "c"]).is_err());
        assert!(Coverage::parse(None).unwrap_err().contains("no coverage"));
        assert!(Coverage::parse(Some("{")).is_err());
    }
}
