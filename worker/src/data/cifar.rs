//! CIFAR-10 in its binary form: `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin`,
//! each a sequence of 3,073-byte records (one label byte, then 1,024 red, 1,024 green and
//! 1,024 blue bytes of a 32×32 image, row-major).
//!
//! Features are normalised per channel with the usual CIFAR-10 mean and standard deviation.

use std::path::Path;

use super::{DataError, Dataset, Split};

/// Bytes per record.
pub const RECORD: usize = 1 + 3 * 32 * 32;
/// Number of classes.
pub const CLASSES: usize = 10;
/// Per-channel mean of the training images scaled to [0, 1].
pub const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Per-channel standard deviation.
pub const STD: [f32; 3] = [0.2470, 0.2435, 0.2616];
/// Training files, in order.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test file.
pub const TEST_FILE: &str = "test_batch.bin";

/// Parses one batch file; `file` names it in errors.
pub fn parse(bytes: &[u8], file: &str) -> Result<Split, DataError> {
    let bad = |problem: String| DataError {
        file: file.to_owned(),
        problem,
    };
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(bad(format!(
            "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records (a full batch file has 30,730,000)",
            bytes.len()
        )));
    }
    let n = bytes.len() / RECORD;
    let mut features = Vec::with_capacity(n * (RECORD - 1));
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if usize::from(rec[0]) >= CLASSES {
            return Err(bad(format!(
                "record {i} has label {}, but CIFAR-10 has {CLASSES} classes",
                rec[0]
            )));
        }
        labels.push(u16::from(rec[0]));
        for (c, plane) in rec[1..].chunks_exact(1024).enumerate() {
            features.extend(
                plane
                    .iter()
                    .map(|&p| (f32::from(p) / 255.0 - MEAN[c]) / STD[c]),
            );
        }
    }
    Ok(Split {
        features,
        labels,
        shape: [3, 32, 32],
    })
}

/// The binary batches in `dir`.
pub fn load_dir(dir: &Path) -> Result<Dataset, DataError> {
    if !dir.is_dir() {
        return Err(DataError {
            file: dir.display().to_string(),
            problem: "no such directory (`linesweep data fetch cifar10 --dir DIR` downloads it)"
                .into(),
        });
    }
    let read = |name: &str| -> Result<Split, DataError> {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| DataError {
            file: path.display().to_string(),
            problem: if e.kind() == std::io::ErrorKind::NotFound {
                "missing (`linesweep data fetch cifar10 --dir DIR` downloads the dataset)".into()
            } else {
                e.to_string()
            },
        })?;
        parse(&bytes, &path.display().to_string())
    };
    let mut train = read(TRAIN_FILES[0])?;
    for name in &TRAIN_FILES[1..] {
        let part = read(name)?;
        train.features.extend(part.features);
        train.labels.extend(part.labels);
    }
    Ok(Dataset {
        name: "cifar10",
        train,
        test: read(TEST_FILE)?,
        classes: CLASSES,
    })
}

/// `n` records with labels `i % 10` and pixels `(i + k) % 256`, for tests and benchmarks.
pub fn synthetic_records(n: usize, salt: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * RECORD);
    for i in 0..n {
        out.push((i % CLASSES) as u8);
        out.extend((0..RECORD - 1).map(|k| ((i * 7 + k * 13 + usize::from(salt)) % 256) as u8));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_into_normalised_planes() {
        let bytes = synthetic_records(3, 0);
        let s = parse(&bytes, "x.bin").unwrap();
        assert_eq!(
            (s.len(), s.shape, s.labels.clone()),
            (3, [3, 32, 32], vec![0, 1, 2])
        );
        // Record 1, green plane, pixel 5: byte 1 + 1024 + 5 of the record.
        let raw = bytes[RECORD + 1 + 1024 + 5];
        let want = (f32::from(raw) / 255.0 - MEAN[1]) / STD[1];
        assert_eq!(s.features[3072 + 1024 + 5], want);
    }

    #[test]
    fn wrong_sizes_and_labels_are_refused_with_the_file() {
        let bytes = synthetic_records(2, 0);
        let err = parse(&bytes[..RECORD + 10], "data_batch_1.bin")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("data_batch_1.bin: 3083 bytes"), "{err}");
        let mut bad = bytes.clone();
        bad[RECORD] = 10;
        let err = parse(&bad, "t.bin").unwrap_err().to_string();
        assert!(err.contains("record 1 has label 10"), "{err}");
    }

    #[test]
    fn a_directory_loads_all_six_files() {
        let tmp = tempfile::tempdir().unwrap();
        for (i, name) in TRAIN_FILES.iter().enumerate() {
            std::fs::write(tmp.path().join(name), synthetic_records(4, i as u8)).unwrap();
        }
        let err = load_dir(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("test_batch.bin: missing"), "{err}");
        std::fs::write(tmp.path().join(TEST_FILE), synthetic_records(3, 9)).unwrap();
        let d = load_dir(tmp.path()).unwrap();
        assert_eq!((d.train.len(), d.test.len(), d.classes), (20, 3, 10));
    }
}
