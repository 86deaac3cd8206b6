//! The IDX format of MNIST (LeCun et al.): a big-endian header, then raw `u8` data.
//!
//! Images: magic 2051, count, rows, cols, then count·rows·cols bytes.
//! Labels: magic 2049, count, then count bytes. Files may be gzip-compressed.

use std::io::Read;

use super::DataError;

/// Magic number of an IDX file of `u8` images (`0x00000803`).
pub const IMAGES_MAGIC: u32 = 2051;
/// Magic number of an IDX file of `u8` labels (`0x00000801`).
pub const LABELS_MAGIC: u32 = 2049;

/// Decoded images: `count` images of `rows × cols` bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Images {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `count·rows·cols` grey levels.
    pub pixels: Vec<u8>,
}

/// Decompresses gzip (detected by its magic bytes) or returns raw bytes unchanged.
pub fn maybe_gunzip(bytes: &[u8], file: &str) -> Result<Vec<u8>, DataError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| DataError {
                file: file.to_owned(),
                problem: format!("corrupt gzip data: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

fn header(bytes: &[u8], words: usize, file: &str) -> Result<Vec<u32>, DataError> {
    if bytes.len() < 4 * words {
        return Err(DataError {
            file: file.to_owned(),
            problem: format!(
                "truncated header: {} bytes, need {}",
                bytes.len(),
                4 * words
            ),
        });
    }
    Ok(bytes[..4 * words]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn check_magic(found: u32, want: u32, what: &str, file: &str) -> Result<(), DataError> {
    if found == want {
        return Ok(());
    }
    Err(DataError {
        file: file.to_owned(),
        problem: format!("not an IDX {what} file: magic number {found}, expected {want}"),
    })
}

/// Parses an IDX image file (raw or gzip).
pub fn parse_images(raw: &[u8], file: &str) -> Result<Images, DataError> {
    let bytes = maybe_gunzip(raw, file)?;
    check_magic(header(&bytes, 1, file)?[0], IMAGES_MAGIC, "image", file)?;
    let h = header(&bytes, 4, file)?;
    let (count, rows, cols) = (h[1] as usize, h[2] as usize, h[3] as usize);
    if rows == 0 || cols == 0 {
        return Err(DataError {
            file: file.to_owned(),
            problem: format!("empty image size {rows}×{cols}"),
        });
    }
    let need = count.checked_mul(rows * cols).ok_or_else(|| DataError {
        file: file.to_owned(),
        problem: "image count overflows".into(),
    })?;
    let body = &bytes[16..];
    if body.len() != need {
        return Err(DataError {
            file: file.to_owned(),
            problem: format!(
                "{} pixel data: {count} images of {rows}×{cols} need {need} bytes, found {}",
                if body.len() < need {
                    "truncated"
                } else {
                    "unexpected bytes after the"
                },
                body.len()
            ),
        });
    }
    Ok(Images {
        count,
        rows,
        cols,
        pixels: body.to_vec(),
    })
}

/// Parses an IDX label file (raw or gzip), checking every label is below `classes`.
pub fn parse_labels(raw: &[u8], file: &str, classes: usize) -> Result<Vec<u8>, DataError> {
    let bytes = maybe_gunzip(raw, file)?;
    check_magic(header(&bytes, 1, file)?[0], LABELS_MAGIC, "label", file)?;
    let h = header(&bytes, 2, file)?;
    let count = h[1] as usize;
    let body = &bytes[8..];
    if body.len() != count {
        return Err(DataError {
            file: file.to_owned(),
            problem: format!("header says {count} labels, file holds {}", body.len()),
        });
    }
    if let Some((i, &l)) = body
        .iter()
        .enumerate()
        .find(|(_, l)| usize::from(**l) >= classes)
    {
        return Err(DataError {
            file: file.to_owned(),
            problem: format!("label {l} at index {i} is not a class 0..{}", classes - 1),
        });
    }
    Ok(body.to_vec())
}

/// Encodes images as an uncompressed IDX file (for tests and fixtures).
pub fn encode_images(images: &Images) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + images.pixels.len());
    for w in [
        IMAGES_MAGIC,
        images.count as u32,
        images.rows as u32,
        images.cols as u32,
    ] {
        out.extend_from_slice(&w.to_be_bytes());
    }
    out.extend_from_slice(&images.pixels);
    out
}

/// Encodes labels as an uncompressed IDX file (for tests and fixtures).
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Images {
        Images {
            count: 2,
            rows: 2,
            cols: 3,
            pixels: vec![0, 1, 2, 3, 4, 5, 250, 251, 252, 253, 254, 255],
        }
    }

    #[test]
    fn round_trip_raw_and_gzip() {
        let raw = encode_images(&tiny());
        assert_eq!(parse_images(&raw, "x").unwrap(), tiny());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        assert_eq!(parse_images(&gz.finish().unwrap(), "x").unwrap(), tiny());
        assert_eq!(
            parse_labels(&encode_labels(&[3, 9, 0]), "y", 10).unwrap(),
            vec![3, 9, 0]
        );
    }

    #[test]
    fn truncated_and_wrong_files_are_refused_with_the_file_name() {
        let raw = encode_images(&tiny());
        let err = parse_images(&raw[..raw.len() - 1], "train-images")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("train-images: truncated"), "{err}");
        let err = parse_images(&raw[..10], "train-images")
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated header"), "{err}");
        let err = parse_images(&encode_labels(&[1, 2]), "train-images")
            .unwrap_err()
            .to_string();
        assert!(err.contains("magic number 2049, expected 2051"), "{err}");
        let err = parse_labels(&encode_labels(&[1, 12]), "labels", 10)
            .unwrap_err()
            .to_string();
        assert!(err.contains("label 12 at index 1"), "{err}");
        let mut short = encode_labels(&[1, 2, 3]);
        short.pop();
        assert!(
            parse_labels(&short, "labels", 10)
                .unwrap_err()
                .to_string()
                .contains("header says 3")
        );
        let err = parse_images(&[0x1f, 0x8b, 1, 2, 3], "bad.gz")
            .unwrap_err()
            .to_string();
        assert!(err.contains("corrupt gzip"), "{err}");
    }
}
