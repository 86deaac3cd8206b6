//! ImageNet in the standard folder layout: `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG`.
//!
//! Classes are the `train` folder names in sorted order. Training images are decoded per
//! batch (random-resized crop to `data.image_size` and a horizontal flip; with
//! `augment = false` the evaluation transform); evaluation subsets are decoded once (resize
//! the shorter side to 256/224 of the crop, centre crop). The crop is drawn from the file's
//! header and only what it needs is decoded ([`decode`]: reduced-scale JPEG decoding, SIMD
//! resampling). Features are normalised per channel
//! with the usual ImageNet constants. A file that does not decode is skipped with a warning
//! and counted, never a crash.

use std::path::{Path, PathBuf};

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Batch, DataError, Loaded, Split, TrainData, decode, fixed_subset};
use crate::config::DataConfig;

pub use decode::{MEAN, STD};
/// File extensions taken as images (case-insensitive).
const EXTENSIONS: [&str; 3] = ["jpeg", "jpg", "png"];

const PLACE_IT: &str = "ImageNet cannot be downloaded automatically (its licence requires a \
    sign-in at image-net.org); place it as DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG \
    (validation images sorted into class folders) and set `data.dir = \"DIR\"`";

/// Image files with their labels.
type Labelled = Vec<(PathBuf, u16)>;

/// A decoded, transformed image and its label, or `None` when the file did not decode.
type Decoded = Option<(Vec<f32>, u16)>;

/// Training images decoded per batch.
#[derive(Debug, Clone)]
pub struct Folder {
    files: Vec<(PathBuf, u16)>,
    size: usize,
    augment: bool,
}

/// Lists `root/<class>/<image>` files; with `classes`, folders must be among them.
fn scan(root: &Path, classes: Option<&[String]>) -> Result<(Vec<String>, Labelled), DataError> {
    let bad = |file: &Path, problem: String| DataError {
        file: file.display().to_string(),
        problem,
    };
    let entries = std::fs::read_dir(root)
        .map_err(|e| bad(root, format!("cannot read the folder ({e}); {PLACE_IT}")))?;
    let mut dirs: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort_unstable();
    let names: Vec<String> = match classes {
        Some(known) => {
            if let Some(extra) = dirs.iter().find(|d| !known.contains(d)) {
                return Err(bad(
                    &root.join(extra),
                    "a class folder that train/ does not have".into(),
                ));
            }
            known.to_vec()
        }
        None => dirs.clone(),
    };
    if names.len() > usize::from(u16::MAX) {
        return Err(bad(
            root,
            format!("{} classes is more than supported", names.len()),
        ));
    }
    let mut files = Vec::new();
    for d in &dirs {
        let label = names.iter().position(|n| n == d).unwrap_or(0) as u16;
        let mut imgs: Vec<PathBuf> = std::fs::read_dir(root.join(d))
            .map_err(|e| bad(&root.join(d), e.to_string()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
            })
            .collect();
        imgs.sort_unstable();
        files.extend(imgs.into_iter().map(|p| (p, label)));
    }
    if files.is_empty() {
        return Err(bad(
            root,
            format!("no images (*.JPEG, *.jpg, *.png) in any class folder; {PLACE_IT}"),
        ));
    }
    Ok((names, files))
}

/// Reads one image file.
fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| e.to_string())
}

/// Evaluation transform: shorter side to ⌊size·256/224⌉, centre crop `size`×`size`. The
/// centre crop's box is resampled directly from the file (decoded at a reduced scale where
/// that box allows), which is what resizing then cropping computes.
pub fn eval_transform(bytes: &[u8], size: usize, out: &mut Vec<f32>) -> Result<(), String> {
    let (w, h) = decode::dimensions(bytes)?;
    let short = ((size as f64) * 256.0 / 224.0).round();
    // Resized size of the image, and its centre crop, in resized pixels …
    let f = short / f64::from(w.min(h));
    let (nw, nh) = (
        (f64::from(w) * f).round().max(1.0),
        (f64::from(h) * f).round().max(1.0),
    );
    let s = size as f64;
    let (x0, y0) = (((nw - s) / 2.0).floor(), ((nh - s) / 2.0).floor());
    // … and in the file's pixels.
    let (fx, fy) = (f64::from(w) / nw, f64::from(h) / nh);
    let region = [x0 * fx, y0 * fy, s * fx, s * fy];
    let pixels = decode::decode_for(bytes, region, size as u32)?;
    decode::crop_resize_normalise(&pixels, region, size as u32, false, out)
}

/// The box of a random-resized crop of a `w × h` image: 8–100 % of the area and aspect ratio
/// ¾–4⁄3 (ten tries, then the centred largest square), torchvision's `RandomResizedCrop`.
fn random_crop(w: u32, h: u32, rng: &mut ChaCha8Rng) -> (u32, u32, u32, u32) {
    let area = f64::from(w) * f64::from(h);
    for _ in 0..10 {
        let target = area * rng.random_range(0.08..=1.0);
        let log_ratio = rng.random_range((3.0f64 / 4.0).ln()..=(4.0f64 / 3.0).ln());
        let ratio = log_ratio.exp();
        let cw = (target * ratio).sqrt().round() as u32;
        let ch = (target / ratio).sqrt().round() as u32;
        if cw >= 1 && ch >= 1 && cw <= w && ch <= h {
            let x = rng.random_range(0..=w - cw);
            let y = rng.random_range(0..=h - ch);
            return (x, y, cw, ch);
        }
    }
    let s = w.min(h);
    ((w - s) / 2, (h - s) / 2, s, s)
}

/// Training transform: a random-resized crop resized to `size`×`size`, flipped with
/// probability ½ (torchvision's `RandomResizedCrop` + `RandomHorizontalFlip`). The crop is
/// drawn from the header's size, then only what it needs is decoded.
pub fn train_transform(
    bytes: &[u8],
    size: usize,
    rng: &mut ChaCha8Rng,
    out: &mut Vec<f32>,
) -> Result<(), String> {
    let (w, h) = decode::dimensions(bytes)?;
    let (x, y, cw, ch) = random_crop(w, h, rng);
    let flip = rng.random_bool(0.5);
    let region = [x, y, cw, ch].map(f64::from);
    let pixels = decode::decode_for(bytes, region, size as u32)?;
    decode::crop_resize_normalise(&pixels, region, size as u32, flip, out)
}

/// One file through the training (with `augment`) or evaluation transform.
fn transform(path: &Path, size: usize, augment: Option<u64>) -> Result<Vec<f32>, String> {
    let bytes = read(path)?;
    let mut out = Vec::with_capacity(3 * size * size);
    match augment {
        Some(seed) => {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            train_transform(&bytes, size, &mut r, &mut out)?;
        }
        None => eval_transform(&bytes, size, &mut out)?,
    }
    Ok(out)
}

impl Folder {
    /// Number of training images.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True without images.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// `[3, size, size]`.
    pub fn shape(&self) -> [usize; 3] {
        [3, self.size, self.size]
    }

    /// Decodes and transforms the images at `idx` on up to `threads` threads; each image's
    /// randomness is drawn from `seed` in batch order, so thread timing never changes a batch.
    pub fn train_batch(&self, idx: &[usize], seed: u64, threads: usize) -> Batch {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let seeds: Vec<u64> = idx.iter().map(|_| rng.random()).collect();
        let jobs: Vec<(usize, u64)> = idx.iter().copied().zip(seeds).collect();
        let chunk = jobs.len().div_ceil(threads.max(1)).max(1);
        let parts: Vec<Vec<Decoded>> = std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .map(|&(i, seed)| {
                                let (path, label) = &self.files[i];
                                let augment = self.augment.then_some(seed);
                                match transform(path, self.size, augment) {
                                    Ok(out) => Some((out, *label)),
                                    Err(e) => {
                                        tracing::warn!(file = %path.display(), error = %e, "skipping an image that does not decode");
                                        None
                                    }
                                }
                            })
                            .collect()
                    })
                })
                .collect();
            // A decoder thread that panicked (a bug in a codec) loses its images: they are
            // counted as skipped like undecodable files, never silently dropped.
            handles
                .into_iter()
                .zip(jobs.chunks(chunk))
                .map(|(h, part)| h.join().unwrap_or_else(|_| vec![None; part.len()]))
                .collect()
        });
        let mut batch = Batch {
            features: Vec::with_capacity(idx.len() * 3 * self.size * self.size),
            labels: Vec::with_capacity(idx.len()),
            skipped: 0,
        };
        for item in parts.into_iter().flatten() {
            match item {
                Some((f, l)) => {
                    batch.features.extend(f);
                    batch.labels.push(l);
                }
                None => batch.skipped += 1,
            }
        }
        batch
    }
}

/// Decodes `files` with the evaluation transform; undecodable files are skipped and counted.
fn eval_split(files: &[(PathBuf, u16)], size: usize) -> (Split, u64) {
    let mut split = Split {
        features: Vec::with_capacity(files.len() * 3 * size * size),
        labels: Vec::with_capacity(files.len()),
        shape: [3, size, size],
    };
    let mut skipped = 0;
    for (path, label) in files {
        match transform(path, size, None) {
            Ok(f) => {
                split.features.extend(f);
                split.labels.push(*label);
            }
            Err(e) => {
                skipped += 1;
                tracing::warn!(file = %path.display(), error = %e, "skipping an image that does not decode");
            }
        }
    }
    (split, skipped)
}

/// The folders under `dir`: training images (cut to `max_train_examples`), and fixed
/// evaluation subsets of `eval_max` images of each split, decoded.
pub fn load(dir: &Path, cfg: &DataConfig, eval_max: Option<usize>) -> Result<Loaded, DataError> {
    for sub in ["train", "val"] {
        if !dir.join(sub).is_dir() {
            return Err(DataError {
                file: dir.join(sub).display().to_string(),
                problem: format!("missing; {PLACE_IT}"),
            });
        }
    }
    let (classes, all_train) = scan(&dir.join("train"), None)?;
    let (_, val) = scan(&dir.join("val"), Some(&classes))?;
    let pick = |files: &[(PathBuf, u16)], n: Option<usize>| -> Vec<(PathBuf, u16)> {
        fixed_subset(files.len(), n)
            .into_iter()
            .map(|i| files[i].clone())
            .collect()
    };
    let train = pick(&all_train, cfg.max_train_examples);
    let (eval_train, s1) = eval_split(&pick(&train, eval_max), cfg.image_size);
    let (test, s2) = eval_split(&pick(&val, eval_max), cfg.image_size);
    if test.is_empty() || eval_train.is_empty() {
        return Err(DataError {
            file: dir.display().to_string(),
            problem: "no evaluation image could be decoded".into(),
        });
    }
    Ok(Loaded {
        name: "imagenet",
        classes: classes.len(),
        train: TrainData::Folder(Folder {
            files: train,
            size: cfg.image_size,
            augment: cfg.augment,
        }),
        eval_train,
        test,
        skipped_images: s1 + s2,
    })
}

/// Writes a tiny ImageNet-layout folder of generated JPEGs (`classes` folders, `train` and
/// `val` images per class, sides from `side` to `side` + 30 pixels), for tests and benchmarks.
pub fn write_synthetic(
    dir: &Path,
    classes: usize,
    train: usize,
    val: usize,
    side: u32,
) -> std::io::Result<()> {
    for (split, n) in [("train", train), ("val", val)] {
        for c in 0..classes {
            let folder = dir.join(split).join(format!("n{:08}", c + 1));
            std::fs::create_dir_all(&folder)?;
            for i in 0..n {
                let (w, h) = (side + (i as u32 * 7) % 30, side - 4 + (i as u32 * 11) % 30);
                let img = RgbImage::from_fn(w, h, |x, y| {
                    // Class 0 is reddish and class 1 bluish, with a texture per image.
                    let t = ((x * 3 + y * 5 + i as u32 * 13) % 64) as u8;
                    let base = (c * 255 / classes.max(2).saturating_sub(1).max(1)) as u8;
                    image::Rgb([
                        base.saturating_add(t),
                        t,
                        255u8.saturating_sub(base).saturating_add(t / 2),
                    ])
                });
                img.save_with_format(
                    folder.join(format!("img{i:04}.JPEG")),
                    image::ImageFormat::Jpeg,
                )
                .map_err(std::io::Error::other)?;
            }
        }
    }
    Ok(())
}

/// Two classes of JPEGs with photo-like content (smooth shapes, edges and sensor noise, at
/// quality 90), `side` to `side` + 30 pixels: repeated textures compress, and decode, far
/// faster than photos.
pub fn write_photo_like(dir: &Path, per_class: usize, side: u32) -> std::io::Result<()> {
    for c in 0..2u32 {
        let folder = dir.join("train").join(format!("n{:08}", c + 1));
        std::fs::create_dir_all(&folder)?;
        std::fs::create_dir_all(dir.join("val").join(format!("n{:08}", c + 1)))?;
        for i in 0..per_class {
            let mut rng = ChaCha8Rng::seed_from_u64((c as u64) << 32 | i as u64);
            let (w, h) = (
                side * 4 / 3 + (i as u32 * 7) % 30,
                side + (i as u32 * 11) % 30,
            );
            let (cx, cy, r) = (
                rng.random_range(0.0..w as f32),
                rng.random_range(0.0..h as f32),
                rng.random_range(0.1..0.4) * w as f32,
            );
            let img = RgbImage::from_fn(w, h, |x, y| {
                let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
                let inside = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)) < r * r;
                let noise = rng.random_range(-12.0f32..12.0);
                let base = if inside {
                    [200.0, 80.0 + 60.0 * fy, 40.0]
                } else {
                    [90.0 * fx + 40.0, 120.0 + 50.0 * fy, 160.0 - 60.0 * fx]
                };
                image::Rgb(
                    base.map(|v| (v + noise + 20.0 * (fx * 40.0).sin()).clamp(0.0, 255.0) as u8),
                )
            });
            let mut bytes = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
                .encode_image(&img)
                .map_err(std::io::Error::other)?;
            std::fs::write(folder.join(format!("img{i:05}.JPEG")), &bytes)?;
            if i < 2 {
                let val = dir.join("val").join(format!("n{:08}", c + 1));
                std::fs::copy(
                    folder.join(format!("img{i:05}.JPEG")),
                    val.join(format!("img{i:05}.JPEG")),
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(size: usize) -> DataConfig {
        DataConfig {
            image_size: size,
            ..DataConfig::default()
        }
    }

    #[test]
    fn folder_loads_shapes_labels_and_transforms() {
        let tmp = tempfile::tempdir().unwrap();
        write_synthetic(tmp.path(), 2, 5, 3, 40).unwrap();
        let d = load(tmp.path(), &cfg(32), None).unwrap();
        assert_eq!(d.classes, 2);
        assert_eq!((d.train.len(), d.train.shape()), (10, [3, 32, 32]));
        assert_eq!((d.test.len(), d.test.shape), (6, [3, 32, 32]));
        assert_eq!(d.test.labels, vec![0, 0, 0, 1, 1, 1]);
        let b = d.train.batch(&[0, 9, 4], 7, 2);
        assert_eq!(
            (b.labels.clone(), b.features.len(), b.skipped),
            (vec![0, 1, 0], 3 * 3 * 32 * 32, 0)
        );
        assert_eq!(
            b,
            d.train.batch(&[0, 9, 4], 7, 1),
            "thread count changes nothing"
        );
        assert_ne!(b.features, d.train.batch(&[0, 9, 4], 8, 2).features);
        // Normalised values of 8-bit pixels stay within the normalised range of [0, 1].
        let lo = (0.0 - 0.485) / 0.229 - 1e-4;
        let hi = (1.0 - 0.406) / 0.225 + 1e-4;
        assert!(b.features.iter().all(|&v| (lo..=hi).contains(&v)));
    }

    #[test]
    fn corrupt_images_are_skipped_and_counted_and_empty_folders_refused() {
        let tmp = tempfile::tempdir().unwrap();
        write_synthetic(tmp.path(), 2, 3, 2, 40).unwrap();
        std::fs::write(
            tmp.path().join("train/n00000001/img0000.JPEG"),
            b"not a jpeg",
        )
        .unwrap();
        std::fs::write(
            tmp.path().join("val/n00000002/img0001.JPEG"),
            b"\xff\xd8 truncated",
        )
        .unwrap();
        let d = load(tmp.path(), &cfg(16), None).unwrap();
        assert_eq!(
            d.skipped_images, 2,
            "one train eval image and one val image"
        );
        assert_eq!(d.test.len(), 3);
        let b = d.train.batch(&[0, 1, 2, 3], 1, 2);
        assert_eq!((b.skipped, b.labels.len()), (1, 3));

        let empty = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(empty.path().join("train/n01")).unwrap();
        std::fs::create_dir_all(empty.path().join("val/n01")).unwrap();
        let err = load(empty.path(), &cfg(16), None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("train") && err.contains("no images"), "{err}");
        let err = load(&empty.path().join("nope"), &cfg(16), None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cannot be downloaded automatically"), "{err}");
    }
}
