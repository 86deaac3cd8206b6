//! Image files to normalised CHW features, fast enough to feed a GPU: JPEGs are decoded at
//! 1/2, 1/4 or 1/8 scale in the DCT domain when the region that will be kept still has at
//! least the output's pixels at that scale (what PIL's `draft` and libjpeg's scaled decoding
//! do), and the crop and resize run through SIMD kernels, fused with the flip and the
//! normalisation.
//!
//! The transforms' semantics do not depend on the scale: crop boxes are drawn and given in
//! full-resolution pixels, and the box is resampled with a bilinear filter widened by the
//! downscaling factor (PIL's antialiased `BILINEAR`, as torchvision uses it).

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::DynamicImage;

/// Per-channel mean of ImageNet pixels scaled to [0, 1].
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Per-channel standard deviation.
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// An image decoded to RGB, possibly at a reduced scale.
#[derive(Debug, Clone)]
pub struct Pixels {
    /// Width and height of the decoded pixels.
    pub width: u32,
    /// Height of the decoded pixels.
    pub height: u32,
    /// `width × height` RGB triples, row-major.
    pub rgb: Vec<u8>,
    /// Decoded pixels per full-resolution pixel: 1, ½, ¼ or ⅛.
    pub scale: f64,
}

/// A box in full-resolution pixels: left, top, width, height.
pub type Region = [f64; 4];

/// Width and height of an image at full resolution, from its header.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), String> {
    if is_jpeg(bytes) {
        let mut d = jpeg_decoder::Decoder::new(bytes);
        d.read_info().map_err(|e| e.to_string())?;
        let info = d.info().ok_or("no JPEG header")?;
        return Ok((u32::from(info.width), u32::from(info.height)));
    }
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .into_dimensions()
        .map_err(|e| e.to_string())
}

fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xff, 0xd8])
}

/// The DCT scale (eighths: 1, 2, 4 or 8) at which a `w × h` region still has at least
/// `need` pixels on each side.
pub fn dct_eighths(region_w: f64, region_h: f64, need: u32) -> u16 {
    let short = region_w.min(region_h);
    [1u16, 2, 4]
        .into_iter()
        .find(|&k| short * f64::from(k) / 8.0 >= f64::from(need))
        .unwrap_or(8)
}

/// Decodes `bytes` at the smallest scale that keeps `need` pixels across `region`.
pub fn decode_for(bytes: &[u8], region: Region, need: u32) -> Result<Pixels, String> {
    let eighths = dct_eighths(region[2], region[3], need);
    if eighths < 8
        && is_jpeg(bytes)
        && let Some(p) = decode_scaled(bytes, eighths)?
    {
        return Ok(p);
    }
    decode_full(bytes)
}

/// Any supported file at full resolution (zune-jpeg for JPEGs, through `image`).
pub fn decode_full(bytes: &[u8]) -> Result<Pixels, String> {
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map(DynamicImage::into_rgb8)
        .map_err(|e| e.to_string())?;
    let (width, height) = img.dimensions();
    Ok(Pixels {
        width,
        height,
        rgb: img.into_raw(),
        scale: 1.0,
    })
}

/// A JPEG at `eighths`/8 scale, or `None` for a pixel format the scaled path does not
/// convert (CMYK, 16-bit grey): those decode at full size.
fn decode_scaled(bytes: &[u8], eighths: u16) -> Result<Option<Pixels>, String> {
    let mut d = jpeg_decoder::Decoder::new(bytes);
    d.read_info().map_err(|e| e.to_string())?;
    let info = d.info().ok_or("no JPEG header")?;
    let at = |len: u16| ((u32::from(len) * u32::from(eighths)).div_ceil(8)).max(1) as u16;
    let (w, h) = d
        .scale(at(info.width), at(info.height))
        .map_err(|e| e.to_string())?;
    let raw = d.decode().map_err(|e| e.to_string())?;
    let (w, h) = (u32::from(w), u32::from(h));
    let rgb = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => raw,
        jpeg_decoder::PixelFormat::L8 => raw.iter().flat_map(|&v| [v, v, v]).collect(),
        _ => return Ok(None),
    };
    if rgb.len() != (w * h * 3) as usize {
        return Err(format!("decoded {} bytes for {w}×{h}", rgb.len()));
    }
    Ok(Some(Pixels {
        width: w,
        height: h,
        rgb,
        scale: f64::from(w) / f64::from(info.width),
    }))
}

/// `(v / 255 − mean) / std` for every byte value, per channel.
fn lut() -> &'static [[f32; 256]; 3] {
    static LUT: std::sync::OnceLock<[[f32; 256]; 3]> = std::sync::OnceLock::new();
    LUT.get_or_init(|| {
        std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 / 255.0 - MEAN[c]) / STD[c]))
    })
}

/// Resamples `region` (full-resolution pixels) of `p` to `size × size`, mirrors it when
/// `flip`, and appends it normalised, channel-major, to `out`.
pub fn crop_resize_normalise(
    p: &Pixels,
    region: Region,
    size: u32,
    flip: bool,
    out: &mut Vec<f32>,
) -> Result<(), String> {
    let src =
        ImageRef::new(p.width, p.height, &p.rgb, PixelType::U8x3).map_err(|e| e.to_string())?;
    let mut dst = Image::new(size, size, PixelType::U8x3);
    let s = p.scale;
    // Rounding of the scaled size can leave the box a fraction of a pixel outside.
    let (left, top) = (region[0] * s, region[1] * s);
    let width = (region[2] * s).min(f64::from(p.width) - left);
    let height = (region[3] * s).min(f64::from(p.height) - top);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(left, top, width, height);
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| e.to_string())?;
    let px = dst.buffer();
    let lut = lut();
    let n = size as usize;
    out.reserve(3 * n * n);
    for (c, table) in lut.iter().enumerate() {
        for row in px.chunks_exact(3 * n) {
            if flip {
                out.extend(row.chunks_exact(3).rev().map(|q| table[usize::from(q[c])]));
            } else {
                out.extend(row.chunks_exact(3).map(|q| table[usize::from(q[c])]));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JPEG of smooth gradients, `w × h`.
    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128])
        });
        let mut buf = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut buf),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        buf
    }

    #[test]
    fn the_scale_keeps_the_output_pixels() {
        assert_eq!(dct_eighths(2400.0, 1800.0, 224), 1);
        assert_eq!(dct_eighths(2000.0, 1500.0, 224), 2);
        assert_eq!(dct_eighths(1000.0, 900.0, 224), 2);
        assert_eq!(dct_eighths(500.0, 900.0, 224), 4);
        assert_eq!(dct_eighths(400.0, 400.0, 224), 8);
    }

    #[test]
    fn a_scaled_decode_gives_the_same_crop_as_a_full_one() {
        let bytes = jpeg(1600, 1200);
        assert_eq!(dimensions(&bytes).unwrap(), (1600, 1200));
        let region = [100.0, 150.0, 1400.0, 1000.0];
        let scaled = decode_for(&bytes, region, 224).unwrap();
        assert_eq!(
            (scaled.width, scaled.height, scaled.scale),
            (400, 300, 0.25)
        );
        let full = decode_full(&bytes).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        crop_resize_normalise(&scaled, region, 224, false, &mut a).unwrap();
        crop_resize_normalise(&full, region, 224, false, &mut b).unwrap();
        assert_eq!(a.len(), 3 * 224 * 224);
        // Gradients resampled from ¼ scale: within a few grey levels of the full decode.
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(worst < 0.1, "largest difference {worst} (normalised units)");
        // The red channel rises left to right; flipped, right to left.
        let mut f = Vec::new();
        crop_resize_normalise(&scaled, region, 224, true, &mut f).unwrap();
        assert!(a[223] > a[0] && f[0] > f[223]);
        assert_eq!(
            a[..224].iter().rev().collect::<Vec<_>>(),
            f[..224].iter().collect::<Vec<_>>()
        );
    }

    #[test]
    fn junk_is_an_error_not_a_panic() {
        assert!(dimensions(b"\xff\xd8 not really").is_err());
        assert!(decode_for(b"\xff\xd8", [0.0, 0.0, 1000.0, 1000.0], 16).is_err());
        assert!(decode_full(b"GIF89a").is_err());
    }
}
