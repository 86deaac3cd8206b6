//! MNIST: the built-in `mnist-10k` sample and IDX files in a directory.
//!
//! Features are normalised as (x/255 − 0.1307)/0.3081, the usual MNIST constants.

use std::path::Path;

use super::idx::{self, Images};
use super::{DataError, Dataset, Split};

/// Mean of MNIST grey levels scaled to [0, 1].
pub const MEAN: f32 = 0.1307;
/// Standard deviation of MNIST grey levels scaled to [0, 1].
pub const STD: f32 = 0.3081;
/// Number of classes.
pub const CLASSES: usize = 10;

// The sample ships inside the binary so that the quickstart runs offline from any directory.
const BUILTIN: [(&str, &[u8]); 4] = [
    (
        "train-images-idx3-ubyte.gz",
        include_bytes!("../../../data/mnist-10k/train-images-idx3-ubyte.gz"),
    ),
    (
        "train-labels-idx1-ubyte.gz",
        include_bytes!("../../../data/mnist-10k/train-labels-idx1-ubyte.gz"),
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        include_bytes!("../../../data/mnist-10k/t10k-images-idx3-ubyte.gz"),
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        include_bytes!("../../../data/mnist-10k/t10k-labels-idx1-ubyte.gz"),
    ),
];

/// The built-in 10,000-digit sample (8,000 train, 2,000 test).
pub fn load_builtin() -> Result<Dataset, DataError> {
    let part = |i: usize| (format!("mnist-10k/{}", BUILTIN[i].0), BUILTIN[i].1);
    let (f0, b0) = part(0);
    let (f1, b1) = part(1);
    let (f2, b2) = part(2);
    let (f3, b3) = part(3);
    Ok(Dataset {
        name: "mnist-10k",
        train: split(b0, &f0, b1, &f1)?,
        test: split(b2, &f2, b3, &f3)?,
        classes: CLASSES,
    })
}

/// IDX files in `dir`: `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
/// `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]` (the `.idx3-ubyte` spelling
/// with a dot is accepted too).
pub fn load_dir(dir: &Path) -> Result<Dataset, DataError> {
    if !dir.is_dir() {
        return Err(DataError {
            file: dir.display().to_string(),
            problem: "no such directory".into(),
        });
    }
    let read = |stem: &str, kind: &str| -> Result<(Vec<u8>, String), DataError> {
        let candidates = [
            format!("{stem}-{kind}"),
            format!("{stem}-{kind}.gz"),
            format!("{stem}.{kind}"),
            format!("{stem}.{kind}.gz"),
        ];
        for name in &candidates {
            let path = dir.join(name);
            if path.is_file() {
                let bytes = std::fs::read(&path).map_err(|e| DataError {
                    file: path.display().to_string(),
                    problem: format!("cannot read: {e}"),
                })?;
                return Ok((bytes, path.display().to_string()));
            }
        }
        Err(DataError {
            file: dir.join(&candidates[1]).display().to_string(),
            problem: format!(
                "missing (looked for {} in {})",
                candidates.join(", "),
                dir.display()
            ),
        })
    };
    let (ti, ti_name) = read("train-images", "idx3-ubyte")?;
    let (tl, tl_name) = read("train-labels", "idx1-ubyte")?;
    let (vi, vi_name) = read("t10k-images", "idx3-ubyte")?;
    let (vl, vl_name) = read("t10k-labels", "idx1-ubyte")?;
    Ok(Dataset {
        name: "mnist",
        train: split(&ti, &ti_name, &tl, &tl_name)?,
        test: split(&vi, &vi_name, &vl, &vl_name)?,
        classes: CLASSES,
    })
}

fn split(
    images: &[u8],
    images_name: &str,
    labels: &[u8],
    labels_name: &str,
) -> Result<Split, DataError> {
    let Images {
        count,
        rows,
        cols,
        pixels,
    } = idx::parse_images(images, images_name)?;
    if (rows, cols) != (28, 28) {
        return Err(DataError {
            file: images_name.to_owned(),
            problem: format!("MNIST images are 28×28, found {rows}×{cols}"),
        });
    }
    let labels = idx::parse_labels(labels, labels_name, CLASSES)?;
    if labels.len() != count {
        return Err(DataError {
            file: labels_name.to_owned(),
            problem: format!(
                "{} labels for {count} images in {images_name}",
                labels.len()
            ),
        });
    }
    let features = pixels
        .iter()
        .map(|&p| (f32::from(p) / 255.0 - MEAN) / STD)
        .collect();
    Ok(Split {
        features,
        labels: labels.into_iter().map(u16::from).collect(),
        shape: [1, rows, cols],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_sample_has_the_documented_class_counts() {
        let d = load_builtin().unwrap();
        assert_eq!(
            (d.train.len(), d.test.len(), d.train.dim()),
            (8000, 2000, 784)
        );
        let count = |s: &Split| {
            let mut c = [0usize; 10];
            s.labels.iter().for_each(|&l| c[usize::from(l)] += 1);
            c
        };
        // From data/mnist-10k/README.md.
        assert_eq!(
            count(&d.train),
            [801, 902, 793, 826, 784, 690, 811, 856, 755, 782]
        );
        assert_eq!(
            count(&d.test),
            [200, 225, 198, 206, 196, 173, 203, 214, 189, 196]
        );
        let mean = d.train.features.iter().map(|&x| f64::from(x)).sum::<f64>()
            / d.train.features.len() as f64;
        assert!(mean.abs() < 0.05, "normalised mean {mean}");
    }

    #[test]
    fn directory_loader_reads_shared_sample_and_rejects_corruption() {
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist-10k");
        let d = load_dir(&shared).unwrap();
        assert_eq!((d.train.len(), d.test.len()), (8000, 2000));
        assert_eq!(d.train.features, load_builtin().unwrap().train.features);

        let tmp = tempfile::tempdir().unwrap();
        for f in [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
        ] {
            std::fs::copy(shared.join(f), tmp.path().join(f)).unwrap();
        }
        let err = load_dir(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("t10k-labels-idx1-ubyte.gz") && err.contains("missing"),
            "{err}"
        );
        // A truncated (uncompressed) label file.
        let raw = idx::maybe_gunzip(
            &std::fs::read(shared.join("t10k-labels-idx1-ubyte.gz")).unwrap(),
            "x",
        )
        .unwrap();
        std::fs::write(
            tmp.path().join("t10k-labels-idx1-ubyte"),
            &raw[..raw.len() - 5],
        )
        .unwrap();
        let err = load_dir(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("t10k-labels-idx1-ubyte:") && err.contains("header says 2000"),
            "{err}"
        );
    }

    #[test]
    fn subsets_are_fixed_and_seed_independent() {
        let d = load_builtin().unwrap();
        let a = d.test.subset(Some(100));
        let b = d.test.subset(Some(100));
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.len(), 100);
        assert_eq!(a.features.len(), 100 * 784);
        assert_eq!(d.test.subset(Some(5000)).len(), 2000);
        assert_eq!(d.test.subset(None).len(), 2000);
    }
}
