//! A partition's framebuffer as an egui texture, updated by damage rectangles only.

use egui::{Color32, ColorImage, Context, TextureHandle, TextureId, TextureOptions};

use bulkhead_supervisor::damage::DamageSet;

use super::{DamageRect, FrameView, FramebufferLayout};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("framebuffer {width}x{height} with stride {stride} needs {need} bytes, the source shared {have}")]
    Short {
        width: u32,
        height: u32,
        stride: u32,
        need: usize,
        have: usize,
    },
    #[error("framebuffer stride {stride} is less than width {width} x 4 bytes")]
    BadStride { width: u32, stride: u32 },
}

/// Counters that prove the damage path: an idle source adds nothing here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UploadStats {
    /// Texture writes (full or partial).
    pub uploads: u64,
    /// Pixels written to the GPU.
    pub pixels: u64,
    /// Damage rectangles that lay (partly) outside the framebuffer and were clipped or dropped.
    pub clipped_rects: u64,
}

#[derive(Default)]
pub struct GuestTexture {
    name: String,
    handle: Option<TextureHandle>,
    layout: Option<FramebufferLayout>,
    stats: UploadStats,
}

impl std::fmt::Debug for GuestTexture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestTexture")
            .field("name", &self.name)
            .field("layout", &self.layout)
            .field("stats", &self.stats)
            .finish()
    }
}

impl GuestTexture {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    pub fn stats(&self) -> UploadStats {
        self.stats
    }

    /// The texture and its size in pixels, once the first frame arrived.
    pub fn texture(&self) -> Option<(TextureId, [usize; 2])> {
        self.handle.as_ref().map(|h| (h.id(), h.size()))
    }

    pub fn layout(&self) -> Option<FramebufferLayout> {
        self.layout
    }

    /// Drops the texture (the partition stopped).
    pub fn clear(&mut self) {
        self.handle = None;
        self.layout = None;
    }

    /// Applies one frame: a full upload the first time or when the size changed, else
    /// one partial write per merged damage rectangle (at most
    /// [`bulkhead_supervisor::MAX_KEPT_DAMAGE_RECTS`], at most one screen in all), nothing when there is no damage.
    pub fn update(&mut self, ctx: &Context, frame: FrameView<'_>) -> Result<(), FrameError> {
        check_frame(&frame)?;
        let layout = frame.layout;
        let whole = DamageRect {
            x: 0,
            y: 0,
            w: layout.width,
            h: layout.height,
        };
        if self.layout != Some(layout) || self.handle.is_none() {
            let image = to_color_image(&frame, whole);
            self.count(whole);
            self.handle = Some(ctx.load_texture(&self.name, image, TextureOptions::LINEAR));
            self.layout = Some(layout);
            return Ok(());
        }
        // Whatever the source hands over, one frame uploads at most one screen.
        let mut merged = DamageSet::new(layout.width, layout.height);
        for rect in &frame.damage {
            let Some(clipped) = clip(*rect, layout) else {
                self.stats.clipped_rects += 1;
                continue;
            };
            if clipped != *rect {
                self.stats.clipped_rects += 1;
            }
            merged.add(clipped);
        }
        for &clipped in merged.rects() {
            let image = to_color_image(&frame, clipped);
            if let Some(handle) = self.handle.as_mut() {
                handle.set_partial(
                    [clipped.x as usize, clipped.y as usize],
                    image,
                    TextureOptions::LINEAR,
                );
                self.count(clipped);
            }
        }
        Ok(())
    }

    fn count(&mut self, rect: DamageRect) {
        self.stats.uploads += 1;
        self.stats.pixels += rect.area();
    }
}

fn check_frame(frame: &FrameView<'_>) -> Result<(), FrameError> {
    let l = frame.layout;
    if u64::from(l.stride) < u64::from(l.width) * 4 {
        return Err(FrameError::BadStride {
            width: l.width,
            stride: l.stride,
        });
    }
    let need = l.stride as usize * l.height as usize;
    if frame.pixels.len() < need || l.width == 0 || l.height == 0 {
        return Err(FrameError::Short {
            width: l.width,
            height: l.height,
            stride: l.stride,
            need,
            have: frame.pixels.len(),
        });
    }
    Ok(())
}

/// The part of `rect` inside the framebuffer, or `None` if nothing is left.
fn clip(rect: DamageRect, layout: FramebufferLayout) -> Option<DamageRect> {
    let x0 = rect.x.min(layout.width);
    let y0 = rect.y.min(layout.height);
    let x1 = rect.x.saturating_add(rect.w).min(layout.width);
    let y1 = rect.y.saturating_add(rect.h).min(layout.height);
    (x1 > x0 && y1 > y0).then(|| DamageRect {
        x: x0,
        y: y0,
        w: x1 - x0,
        h: y1 - y0,
    })
}

/// Copies `rect` (inside the checked frame) out of XRGB into egui's RGBA.
fn to_color_image(frame: &FrameView<'_>, rect: DamageRect) -> ColorImage {
    let stride = frame.layout.stride as usize;
    let mut pixels = Vec::with_capacity(rect.area() as usize);
    for y in rect.y..rect.y + rect.h {
        let start = y as usize * stride + rect.x as usize * 4;
        let row = &frame.pixels[start..start + rect.w as usize * 4];
        pixels.extend(
            row.chunks_exact(4)
                .map(|p| Color32::from_rgb(p[2], p[1], p[0])),
        );
    }
    ColorImage::new([rect.w as usize, rect.h as usize], pixels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::display::software::{Pattern, SoftwareSource};

    fn source(pattern: Pattern) -> SoftwareSource {
        SoftwareSource::new(FramebufferLayout::new(256, 128).unwrap(), pattern)
    }

    #[test]
    fn first_frame_uploads_the_whole_framebuffer_once() {
        let ctx = Context::default();
        let mut s = source(Pattern::Still);
        let mut t = GuestTexture::new("t");
        t.update(&ctx, s.frame()).unwrap();
        assert_eq!(
            t.stats(),
            UploadStats {
                uploads: 1,
                pixels: 256 * 128,
                clipped_rects: 0
            }
        );
        assert_eq!(t.texture().unwrap().1, [256, 128]);
    }

    #[test]
    fn idle_source_costs_no_uploads() {
        let ctx = Context::default();
        let mut s = source(Pattern::Still);
        let mut t = GuestTexture::new("t");
        t.update(&ctx, s.frame()).unwrap();
        for _ in 0..10 {
            s.advance();
            t.update(&ctx, s.frame()).unwrap();
        }
        assert_eq!(t.stats().uploads, 1);
    }

    #[test]
    fn moving_box_uploads_only_its_rectangles() {
        let ctx = Context::default();
        let mut s = source(Pattern::TestCard);
        let mut t = GuestTexture::new("t");
        t.update(&ctx, s.frame()).unwrap();
        s.advance();
        t.update(&ctx, s.frame()).unwrap();
        assert_eq!(t.stats().uploads, 2);
        assert_eq!(t.stats().pixels, 256 * 128 + 48 * 48);
    }

    #[test]
    fn damage_outside_the_framebuffer_is_clipped_not_trusted() {
        let ctx = Context::default();
        let mut s = source(Pattern::Still);
        let mut t = GuestTexture::new("t");
        t.update(&ctx, s.frame()).unwrap();
        let mut f = s.frame();
        f.damage = vec![
            DamageRect {
                x: 250,
                y: 120,
                w: 100,
                h: 100,
            },
            DamageRect {
                x: u32::MAX,
                y: 0,
                w: u32::MAX,
                h: 1,
            },
        ];
        t.update(&ctx, f).unwrap();
        let stats = t.stats();
        assert_eq!(stats.clipped_rects, 2);
        assert_eq!(stats.pixels, 256 * 128 + 6 * 8);
    }

    #[test]
    fn a_flood_of_full_screen_damage_uploads_one_screen_per_frame() {
        let ctx = Context::default();
        let mut s = source(Pattern::Still);
        let mut t = GuestTexture::new("t");
        t.update(&ctx, s.frame()).unwrap();
        let whole = DamageRect {
            x: 0,
            y: 0,
            w: 256,
            h: 128,
        };
        let mut scattered: Vec<DamageRect> = (0..1000)
            .map(|i| DamageRect {
                x: (i * 7) % 250,
                y: (i * 13) % 120,
                w: 3,
                h: 2,
            })
            .collect();
        scattered.extend(std::iter::repeat_n(whole, 1024));
        for damage in [vec![whole; 1024], scattered] {
            let before = t.stats();
            let mut f = s.frame();
            f.damage = damage;
            t.update(&ctx, f).unwrap();
            let after = t.stats();
            assert!(after.pixels - before.pixels <= 256 * 128, "{after:?}");
            assert!(
                after.uploads - before.uploads <= bulkhead_supervisor::MAX_KEPT_DAMAGE_RECTS as u64
            );
        }
        assert_eq!(t.stats().uploads, 3, "each flood became one full upload");
    }

    #[test]
    fn short_pixel_buffer_is_refused_with_sizes() {
        let ctx = Context::default();
        let mut t = GuestTexture::new("t");
        let layout = FramebufferLayout::new(64, 64).unwrap();
        let pixels = vec![0u8; 100];
        let err = t
            .update(
                &ctx,
                FrameView {
                    layout,
                    pixels: &pixels,
                    damage: vec![],
                },
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "framebuffer 64x64 with stride 256 needs 16384 bytes, the source shared 100"
        );
        assert!(t.texture().is_none());
    }
}
