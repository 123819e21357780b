//! The linear framebuffer: its layout, turning KVM's dirty-page log into damage
//! rectangles, and PNG screenshots.
//!
//! Pixels are 32-bit little-endian XRGB (blue in the lowest byte), the layout `vesafb`
//! is told about in `boot_params.screen_info`.

use std::io::Write;

pub const BYTES_PER_PIXEL: u32 = 4;
pub const PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum FramebufferError {
    #[error("display size {width}x{height} is not supported (each side 64..=4096, width a multiple of 8)")]
    BadSize { width: u32, height: u32 },
    #[error("framebuffer memory holds {have} bytes but {width}x{height} needs {need}")]
    ShortMemory {
        have: usize,
        need: usize,
        width: u32,
        height: u32,
    },
    #[error("writing PNG: {0}")]
    Png(#[from] png::EncodingError),
}

/// A changed area of the screen in pixels, `x + w <= width`, `y + h <= height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DamageRect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl DamageRect {
    pub fn area(&self) -> u64 {
        u64::from(self.w) * u64::from(self.h)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FramebufferLayout {
    pub width: u32,
    pub height: u32,
    /// Bytes per row.
    pub stride: u32,
}

impl FramebufferLayout {
    pub fn new(width: u32, height: u32) -> Result<Self, FramebufferError> {
        let ok = (64..=4096).contains(&width) && (64..=4096).contains(&height) && width % 8 == 0;
        if !ok {
            return Err(FramebufferError::BadSize { width, height });
        }
        Ok(Self {
            width,
            height,
            stride: width * BYTES_PER_PIXEL,
        })
    }

    /// Bytes of pixel data.
    pub fn bytes(&self) -> usize {
        self.stride as usize * self.height as usize
    }

    /// Size of the guest-visible region: the pixel data rounded up to 64 KiB, the unit
    /// `screen_info.lfb_size` is counted in.
    pub fn region_size(&self) -> u64 {
        (self.bytes() as u64).div_ceil(0x1_0000) * 0x1_0000
    }

    pub fn pages(&self) -> u64 {
        self.region_size() / PAGE_SIZE
    }

    /// Turns a KVM dirty bitmap (bit `n` = page `n` of the region written since the last
    /// read) into rectangles covering exactly the pixels on those pages.
    pub fn damage_from_dirty_bitmap(&self, bitmap: &[u64]) -> Vec<DamageRect> {
        let mut rects = Vec::new();
        let pages = self.pages();
        let mut page = 0u64;
        while page < pages {
            if !bit_set(bitmap, page) {
                page += 1;
                continue;
            }
            let first = page;
            while page < pages && bit_set(bitmap, page) {
                page += 1;
            }
            self.push_byte_range(first * PAGE_SIZE, page * PAGE_SIZE, &mut rects);
        }
        merge_vertical(rects)
    }

    /// Adds the rectangles covering bytes `[start, end)` of the pixel data.
    fn push_byte_range(&self, start: u64, end: u64, out: &mut Vec<DamageRect>) {
        let stride = u64::from(self.stride);
        let end = end.min(self.bytes() as u64);
        if start >= end {
            return;
        }
        let (y0, x0) = (
            start / stride,
            (start % stride) / u64::from(BYTES_PER_PIXEL),
        );
        let last = end - 1;
        let (y1, x1) = (last / stride, (last % stride) / u64::from(BYTES_PER_PIXEL));
        let w = u64::from(self.width);
        let rect = |x: u64, y: u64, xe: u64, ye: u64| DamageRect {
            x: x as u32,
            y: y as u32,
            w: (xe - x) as u32,
            h: (ye - y) as u32,
        };
        if y0 == y1 {
            out.push(rect(x0, y0, x1 + 1, y0 + 1));
            return;
        }
        let mut top = y0;
        if x0 != 0 {
            out.push(rect(x0, y0, w, y0 + 1));
            top += 1;
        }
        let mut bottom = y1 + 1;
        if x1 != w - 1 {
            bottom = y1;
        }
        if top < bottom {
            out.push(rect(0, top, w, bottom));
        }
        if x1 != w - 1 {
            out.push(rect(0, y1, x1 + 1, y1 + 1));
        }
    }
}

fn bit_set(bitmap: &[u64], bit: u64) -> bool {
    bitmap
        .get((bit / 64) as usize)
        .is_some_and(|word| word & (1 << (bit % 64)) != 0)
}

/// Joins full-width rectangles that touch vertically, so a large repaint is one rect.
fn merge_vertical(rects: Vec<DamageRect>) -> Vec<DamageRect> {
    let mut out: Vec<DamageRect> = Vec::with_capacity(rects.len());
    for r in rects {
        if let Some(prev) = out.last_mut() {
            if prev.x == r.x && prev.w == r.w && prev.y + prev.h == r.y {
                prev.h += r.h;
                continue;
            }
        }
        out.push(r);
    }
    out
}

/// Writes the framebuffer contents as an RGB PNG.
pub fn write_png(
    layout: &FramebufferLayout,
    pixels: &[u8],
    out: impl Write,
) -> Result<(), FramebufferError> {
    if pixels.len() < layout.bytes() {
        return Err(FramebufferError::ShortMemory {
            have: pixels.len(),
            need: layout.bytes(),
            width: layout.width,
            height: layout.height,
        });
    }
    let mut encoder = png::Encoder::new(out, layout.width, layout.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    let mut rgb = Vec::with_capacity(layout.width as usize * layout.height as usize * 3);
    for row in pixels
        .chunks_exact(layout.stride as usize)
        .take(layout.height as usize)
    {
        for px in row.chunks_exact(4).take(layout.width as usize) {
            rgb.extend_from_slice(&[px[2], px[1], px[0]]);
        }
    }
    writer.write_image_data(&rgb)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(pages: &[u64]) -> Vec<u64> {
        let mut b = vec![0u64; 64];
        for p in pages {
            b[(p / 64) as usize] |= 1 << (p % 64);
        }
        b
    }

    #[test]
    fn no_dirty_pages_means_no_damage() {
        let l = FramebufferLayout::new(1024, 768).unwrap();
        assert!(l.damage_from_dirty_bitmap(&bitmap(&[])).is_empty());
    }

    #[test]
    fn one_page_of_a_1024_wide_screen_is_exactly_one_row() {
        // 1024 px * 4 B = 4096 B per row: page n is row n.
        let l = FramebufferLayout::new(1024, 768).unwrap();
        let d = l.damage_from_dirty_bitmap(&bitmap(&[5]));
        assert_eq!(
            d,
            vec![DamageRect {
                x: 0,
                y: 5,
                w: 1024,
                h: 1
            }]
        );
    }

    #[test]
    fn consecutive_pages_merge_into_one_rect() {
        let l = FramebufferLayout::new(1024, 768).unwrap();
        let d = l.damage_from_dirty_bitmap(&bitmap(&[10, 11, 12]));
        assert_eq!(
            d,
            vec![DamageRect {
                x: 0,
                y: 10,
                w: 1024,
                h: 3
            }]
        );
    }

    #[test]
    fn page_straddling_rows_yields_partial_edges() {
        // 1280 px * 4 = 5120 B per row; page 1 is bytes 4096..8192: row 0 from x=1024,
        // then row 1 up to x=(8191-5120)/4=767.
        let l = FramebufferLayout::new(1280, 800).unwrap();
        let d = l.damage_from_dirty_bitmap(&bitmap(&[1]));
        assert_eq!(
            d,
            vec![
                DamageRect {
                    x: 1024,
                    y: 0,
                    w: 256,
                    h: 1
                },
                DamageRect {
                    x: 0,
                    y: 1,
                    w: 768,
                    h: 1
                },
            ]
        );
    }

    #[test]
    fn padding_pages_past_the_pixels_are_ignored() {
        let l = FramebufferLayout::new(1024, 768).unwrap();
        assert_eq!(l.pages(), 768);
        let l = FramebufferLayout::new(1280, 800).unwrap();
        // 4096000 bytes round up to 63 * 64 KiB.
        assert_eq!(l.region_size(), 63 * 0x10000);
        let last = l.pages() - 1;
        assert!(l.damage_from_dirty_bitmap(&bitmap(&[last])).is_empty());
    }

    #[test]
    fn short_bitmaps_are_not_read_past_their_end() {
        let l = FramebufferLayout::new(1024, 768).unwrap();
        assert!(l.damage_from_dirty_bitmap(&[u64::MAX]).len() == 1);
    }

    #[test]
    fn unsupported_sizes_are_refused() {
        assert!(FramebufferLayout::new(0, 768).is_err());
        assert!(FramebufferLayout::new(1023, 768).is_err());
        assert!(FramebufferLayout::new(8192, 768).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        #[test]
        fn damage_covers_every_byte_of_every_dirty_page(
            w8 in 8u32..=200,
            h in 64u32..=300,
            pages in proptest::collection::vec(0u64..200, 0..20),
        ) {
            let w = w8 * 8;
            let l = FramebufferLayout::new(w, h).unwrap();
            let bits = bitmap(&pages);
            let d = l.damage_from_dirty_bitmap(&bits);
            let mut covered = vec![false; l.bytes()];
            for r in &d {
                proptest::prop_assert!(r.x + r.w <= w && r.y + r.h <= h && r.w > 0 && r.h > 0);
                for y in r.y..r.y + r.h {
                    for x in r.x..r.x + r.w {
                        for b in 0..4 {
                            covered[(y * l.stride + x * 4 + b) as usize] = true;
                        }
                    }
                }
            }
            for (i, c) in covered.iter().enumerate() {
                let dirty = pages.contains(&(i as u64 / PAGE_SIZE));
                proptest::prop_assert_eq!(*c, dirty, "byte {}", i);
            }
        }
    }
}
