//! Opening Parquet bytes that may be damaged: the one way linesweep starts reading a results
//! file, a summary or a staged commit marker.
//!
//! The parquet crate trusts its footer's column-chunk offsets and panics on negative ones
//! (`ColumnChunkMetaData::byte_range`, found by `fuzz/fuzz_targets/results_reader.rs`); a
//! damaged or hostile file must be an error instead. Each chunk is checked to lie inside the
//! file before any is read.

use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// A reader builder over `bytes`, whose column chunks all lie inside the file. The reason,
/// when the file cannot be read.
pub fn open(bytes: Bytes) -> Result<ParquetRecordBatchReaderBuilder<Bytes>, String> {
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
        assert!(e.contains("damaged") || e.contains("Parquet"), "{e}");
    }
}
