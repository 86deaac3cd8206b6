//! Reading Parquet bytes that may be damaged: the one way linesweep reads a results file, a
//! summary or a staged commit marker.
//!
//! The parquet crate trusts what it reads: it panics on a negative column-chunk offset in the
//! footer (`ColumnChunkMetaData::byte_range`) and on a dictionary-encoded page without a
//! dictionary (`column/reader/decoder.rs`), both found by the fuzz targets
//! (`fuzz/fuzz_targets/results_reader.rs`, `summary_reader.rs`). A damaged or hostile file
//! must be an error instead: each chunk is checked to lie inside the file before any is read,
//! and decoding runs behind a panic boundary, since the decoder's assertions cannot all be
//! checked from outside it.
//!
//! It also reads page headers until the end of a file as if more bytes followed: its Thrift
//! reader skips unknown fields with `io::copy`, which takes an empty read for "done", so a
//! damaged header declaring a list of 2³¹ doubles made a 17 KB file spin for 46 s (also found
//! by the fuzzer). Reads through [`Strict`] fail at the end of the file instead.

use std::io::Read;

use arrow_array::RecordBatch;
use bytes::Bytes;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::{ChunkReader, Length};

/// A file's bytes whose readers fail at the end of the file rather than return nothing.
struct Strict(Bytes);

/// A reader that answers a read at its end with `UnexpectedEof`: a well-formed file is never
/// read past its end, so only a damaged one sees the error.
struct StrictRead<R>(R);

impl<R: Read> Read for StrictRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the file",
            ));
        }
        Ok(n)
    }
}

impl Length for Strict {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
}

impl ChunkReader for Strict {
    type T = StrictRead<<Bytes as ChunkReader>::T>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        self.0.get_read(start).map(StrictRead)
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.0.get_bytes(start, length)
    }
}

/// What a Parquet file holds.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Its record batches (only the columns asked for).
    pub batches: Vec<RecordBatch>,
    /// Its footer's key-value metadata.
    pub footer: Vec<(String, Option<String>)>,
}

/// Every record batch of `bytes`, with only the top-level columns named in `columns` (all
/// when `None`; names the file lacks are left out), and its footer's key-value metadata. The
/// reason, when the file cannot be read.
pub fn read(bytes: Bytes, columns: Option<&[&str]>) -> Result<Decoded, String> {
    let decode = move || -> Result<Decoded, String> {
        let builder = open(bytes)?;
        let footer = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .into_iter()
            .flatten()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        let builder = match columns {
            None => builder,
            Some(names) => {
                let present: Vec<usize> = builder
                    .schema()
                    .fields()
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| names.contains(&f.name().as_str()))
                    .map(|(i, _)| i)
                    .collect();
                let mask = ProjectionMask::roots(builder.parquet_schema(), present);
                builder.with_projection(mask)
            }
        };
        let batches = builder
            .build()
            .map_err(|e| e.to_string())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(Decoded { batches, footer })
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format!(
            "the file is damaged (the Parquet decoder gave up: {why})"
        ))
    })
}

/// A reader builder over `bytes`, whose column chunks all lie inside the file. The reason,
/// when the file cannot be read.
fn open(bytes: Bytes) -> Result<ParquetRecordBatchReaderBuilder<Strict>, String> {
    let size = bytes.len() as i128;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(Strict(bytes)).map_err(|e| e.to_string())?;
    for (g, group) in builder.metadata().row_groups().iter().enumerate() {
        for (c, chunk) in group.columns().iter().enumerate() {
            let start = chunk
                .dictionary_page_offset()
                .unwrap_or(chunk.data_page_offset());
            let len = chunk.compressed_size();
            let (start, len) = (i128::from(start), i128::from(len));
            if start < 0 || len < 0 || start + len > size {
                return Err(format!(
                    "row group {g}, column {c}: its data is said to be at bytes {start}..{} of a \
                     {size}-byte file (the file is damaged)",
                    start + len
                ));
            }
        }
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The crash input the fuzzer found: a results file whose footer gives a column chunk a
    /// negative offset. It used to panic inside the parquet crate.
    #[test]
    fn a_chunk_outside_the_file_is_an_error_not_a_panic() {
        let crash = include_bytes!("../../fuzz/regressions/results_reader-negative-offset.parquet");
        let e = open(Bytes::from_static(crash)).err().expect("refused");
        assert!(e.contains("damaged"), "{e}");
        assert!(read(Bytes::from_static(crash), None).is_err());
    }

    /// The fuzzers' second find: a dictionary-encoded page in a column chunk without a
    /// dictionary page, on which the decoder panics.
    #[test]
    fn a_page_the_decoder_cannot_decode_is_an_error_not_a_panic() {
        for crash in [
            &include_bytes!("../../fuzz/regressions/results_reader-dictionary-missing.parquet")[..],
            &include_bytes!("../../fuzz/regressions/summary_reader-dictionary-missing.parquet")[..],
        ] {
            let refused = read(Bytes::copy_from_slice(crash), None);
            assert!(refused.is_err(), "read: {refused:?}");
            // Columns that do not touch the damaged one still read.
            let some = read(Bytes::copy_from_slice(crash), Some(&["shard"][..]));
            assert!(some.is_ok(), "{some:?}");
        }
    }

    /// The fuzzer's third find: a page header whose unknown field declares a list of 2³¹
    /// doubles; the decoder skipped them one by one past the end of the file (46 s). It now
    /// stops at the end of the file.
    #[test]
    fn a_page_header_that_runs_past_the_file_stops_at_its_end() {
        let slow = include_bytes!("../../fuzz/regressions/results_reader-endless-skip.parquet");
        let e = read(Bytes::from_static(slow), None).expect_err("refused");
        assert!(e.contains("read past the end of the file"), "{e}");
    }
}
