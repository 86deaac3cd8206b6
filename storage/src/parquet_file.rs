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

use arrow_array::RecordBatch;
use bytes::Bytes;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

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
fn open(bytes: Bytes) -> Result<ParquetRecordBatchReaderBuilder<Bytes>, String> {
    let size = bytes.len() as i128;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| e.to_string())?;
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
}
