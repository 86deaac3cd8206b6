//! Training augmentation of in-memory images: random crop after zero padding, and a random
//! horizontal flip (the CIFAR recipe of He et al.).
//!
//! The randomness of a batch comes from one seed, drawn in example order, so a batch is the
//! same wherever and whenever it is built (a resumed attempt replays it exactly).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Split;

/// Crops every image of `batch` at a random offset after padding it with `pad` zeros on each
/// side (zero is the mean colour after normalisation), then flips it horizontally with
/// probability ½.
pub fn crop_flip(batch: &mut Split, pad: usize, seed: u64) {
    let [c, h, w] = batch.shape;
    let dim = c * h * w;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = vec![0.0f32; dim];
    for img in batch.features.chunks_exact_mut(dim) {
        let dy = rng.random_range(0..=2 * pad) as isize - pad as isize;
        let dx = rng.random_range(0..=2 * pad) as isize - pad as isize;
        let flip = rng.random_bool(0.5);
        for ch in 0..c {
            for y in 0..h {
                let sy = y as isize + dy;
                for x in 0..w {
                    let xo = if flip { w - 1 - x } else { x };
                    let sx = xo as isize + dx;
                    out[(ch * h + y) * w + x] =
                        if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                            img[(ch * h + sy as usize) * w + sx as usize]
                        } else {
                            0.0
                        };
                }
            }
        }
        img.copy_from_slice(&out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Split {
        Split {
            features: (0..n * 2 * 4 * 4).map(|v| (v % 32) as f32 + 1.0).collect(),
            labels: vec![0; n],
            shape: [2, 4, 4],
        }
    }

    #[test]
    fn same_seed_same_batch_and_pixels_are_moved_not_invented() {
        let mut a = ramp(16);
        let mut b = ramp(16);
        crop_flip(&mut a, 1, 9);
        crop_flip(&mut b, 1, 9);
        assert_eq!(a.features, b.features);
        let mut c = ramp(16);
        crop_flip(&mut c, 1, 10);
        assert_ne!(a.features, c.features);
        let orig = ramp(1).features;
        for img in a.features.chunks_exact(32) {
            // Every value is either padding or a pixel of the same channel of the original.
            for (i, &v) in img.iter().enumerate() {
                let ch = i / 16;
                assert!(v == 0.0 || orig[ch * 16..(ch + 1) * 16].contains(&v), "{v}");
            }
            // With padding 1, at least a 3×3 block of each 4×4 channel survives.
            assert!(img.iter().filter(|&&v| v != 0.0).count() >= 2 * 9);
        }
    }

    #[test]
    fn zero_padding_flip_only_mirrors_rows() {
        let mut b = ramp(64);
        crop_flip(&mut b, 0, 3);
        let orig = ramp(1).features;
        let mut flipped = 0;
        for img in b.features.chunks_exact(32) {
            if img != orig.as_slice() {
                flipped += 1;
                assert_eq!(img[0], orig[3]);
            }
        }
        assert!((16..=48).contains(&flipped), "{flipped} of 64 flipped");
    }
}
