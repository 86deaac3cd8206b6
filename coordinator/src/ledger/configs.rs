//! Shard configs at rest: zstd against a per-sweep dictionary.
//!
//! The shards of a sweep differ in a few grid values, so each canonical config JSON (about
//! 700 bytes) compresses to a few dozen bytes against the sweep's first config used as a raw
//! zstd dictionary. That config is stored once per sweep (`sweep_dicts`). The coordinator
//! still never parses a config: this is bytes in, bytes out. Rows written before this existed
//! keep their plain `config_json` and are read as they are.

use rusqlite::{Connection, OptionalExtension, params};

use super::LedgerError;

/// zstd's level for configs: small inputs, so the level barely changes the time.
const LEVEL: i32 = 9;

/// The configs of one sweep, compressed against its dictionary.
pub(super) struct Packer {
    compressor: zstd::bulk::Compressor<'static>,
}

impl Packer {
    /// The packer of `sweep`, whose dictionary is created from `first` if it has none yet.
    pub(super) fn of(conn: &Connection, sweep: &str, first: &str) -> Result<Self, LedgerError> {
        let dict = match dictionary(conn, sweep)? {
            Some(d) => d,
            None => {
                conn.execute(
                    "insert into sweep_dicts(sweep, dict) values (?1, ?2)",
                    params![sweep, first.as_bytes()],
                )?;
                first.as_bytes().to_vec()
            }
        };
        let compressor = zstd::bulk::Compressor::with_dictionary(LEVEL, &dict)
            .map_err(|e| corrupt(sweep, &e.to_string()))?;
        Ok(Self { compressor })
    }

    /// `json`, compressed.
    pub(super) fn pack(&mut self, sweep: &str, json: &str) -> Result<Vec<u8>, LedgerError> {
        self.compressor
            .compress(json.as_bytes())
            .map_err(|e| corrupt(sweep, &e.to_string()))
    }
}

/// A stored config: the plain column, or the packed one decompressed with the sweep's
/// dictionary.
pub(super) fn unpack(
    conn: &Connection,
    sweep: &str,
    plain: String,
    packed: Option<Vec<u8>>,
) -> Result<String, LedgerError> {
    let Some(packed) = packed else {
        return Ok(plain);
    };
    let dict = dictionary(conn, sweep)?.ok_or_else(|| corrupt(sweep, "no dictionary"))?;
    let mut d = zstd::bulk::Decompressor::with_dictionary(&dict)
        .map_err(|e| corrupt(sweep, &e.to_string()))?;
    // A config is JSON of a few hundred bytes; anything near this bound is not one.
    let bytes = d
        .decompress(&packed, 1 << 20)
        .map_err(|e| corrupt(sweep, &e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| corrupt(sweep, &e.to_string()))
}

fn dictionary(conn: &Connection, sweep: &str) -> Result<Option<Vec<u8>>, LedgerError> {
    Ok(conn
        .prepare_cached("select dict from sweep_dicts where sweep = ?1")?
        .query_row([sweep], |r| r.get(0))
        .optional()?)
}

fn corrupt(sweep: &str, message: &str) -> LedgerError {
    LedgerError::Corrupt {
        path: format!("sweep {sweep}"),
        message: format!("a stored shard config: {message}"),
    }
}
