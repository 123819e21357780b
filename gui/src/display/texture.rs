//! A partition's framebuffer as an egui texture, updated by damage rectangles only.
//!
//! When the window draws with glow (OpenGL), the texture is a GL texture of our own that
//! egui's painter draws like any other: each damaged rectangle goes to the GL driver
//! straight from the guest's framebuffer, as the BGRX bytes it is (`GL_BGRA` with the
//! framebuffer's stride as the row length, alpha swizzled to one), so nothing is converted
//! or copied on our side. For a partition that is the memory it shares with the GUI,
//! which it keeps writing: its address goes to `glTexSubImage2D` as loaded from the
//! window's GL ([`TexSubImage2d`]), since glow would want it as a `&[u8]`, which shared
//! memory never is. The texture is allocated with an unsized format from BGRA
//! data, so Mesa stores it as BGRA and its own copy is a plain one too.
//!
//! Elsewhere (wgpu, the headless test renderer), or if GL refuses the texture, each upload
//! converts the guest's XRGB into egui's RGBA in a staging image that is reused from frame
//! to frame: egui keeps its reference only until the frame is painted, so by the next
//! update the buffer is ours again and a live partition allocates (and page-faults in)
//! nothing per frame.

use std::ffi::{c_void, CStr};
use std::sync::Arc;

use eframe::glow::{self, HasContext};
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

/// The C signature of `glTexSubImage2D` (OpenGL 1.1): target, level, x offset, y offset,
/// width, height, format, type, pixels. `APIENTRY` is the C convention on Linux.
type TexSubImage2dFn =
    unsafe extern "system" fn(u32, i32, i32, i32, i32, i32, u32, u32, *const c_void);

/// `glTexSubImage2D` of the window's GL, called with a plain address: how a partition's
/// shared framebuffer reaches a texture without a copy of ours (see the module docs).
#[derive(Clone, Copy)]
pub struct TexSubImage2d(TexSubImage2dFn);

impl std::fmt::Debug for TexSubImage2d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("glTexSubImage2D")
    }
}

impl TexSubImage2d {
    /// Looks the function up with the window's GL loader (eframe's
    /// `CreationContext::get_proc_address`); `None` if the loader has none.
    pub fn load(get_proc_address: &dyn Fn(&CStr) -> *const c_void) -> Option<Self> {
        let address = get_proc_address(c"glTexSubImage2D");
        if address.is_null() {
            return None;
        }
        // SAFETY: a non-null address the context's loader returns for "glTexSubImage2D"
        // is that GL function (or the dispatch stub that calls it for the current
        // context), whose signature GL fixes as `TexSubImage2dFn`; function and data
        // pointers have the same size and representation on every target eframe's glow
        // runs on.
        let function = unsafe { std::mem::transmute::<*const c_void, TexSubImage2dFn>(address) };
        Some(Self(function))
    }
}

#[derive(Default)]
pub struct GuestTexture {
    name: String,
    handle: Option<TextureHandle>,
    /// The GL texture filled straight from guest memory, when the window draws with glow.
    native: Option<GlTextures>,
    /// GL refused a texture of ours once: egui's textures from then on.
    native_refused: bool,
    layout: Option<FramebufferLayout>,
    stats: UploadStats,
    staging: StagingPool,
}

impl std::fmt::Debug for GuestTexture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestTexture")
            .field("name", &self.name)
            .field("layout", &self.layout)
            .field("stats", &self.stats)
            .field("native", &self.native.is_some())
            .field("staging", &self.staging)
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
        match &self.native {
            Some(native) => native.front(),
            None => self.handle.as_ref().map(|h| (h.id(), h.size())),
        }
    }

    /// Whether uploads go straight to a GL texture of ours (see the module docs).
    pub fn is_native(&self) -> bool {
        self.native.is_some()
    }

    /// From the next frame on, uploads go to GL textures of ours (two, see [`GlTextures`]),
    /// made in `gl`, written with `sub_image` (loaded from the same context) and handed to
    /// the window's painter with `register` (eframe's `register_native_glow_texture`).
    /// Call on the thread that paints, with the context current (eframe's `App::ui`).
    /// Does nothing once done, or after GL refused one.
    pub fn use_gl(
        &mut self,
        gl: &Arc<glow::Context>,
        sub_image: TexSubImage2d,
        mut register: impl FnMut(glow::Texture) -> TextureId,
    ) {
        if self.native.is_some() || self.native_refused {
            return;
        }
        let mut made = Vec::with_capacity(2);
        for _ in 0..2 {
            // SAFETY: `gl` is the window's context, current on this thread (the caller's
            // contract); creating a texture name has no other precondition.
            match unsafe { gl.create_texture() } {
                Ok(texture) => made.push(GlTexture {
                    texture,
                    id: register(texture),
                }),
                Err(e) => {
                    tracing::warn!(texture = %self.name, error = %e, "GL texture refused; egui's own textures instead");
                    self.native_refused = true;
                    return;
                }
            }
        }
        let (Some(second), Some(first)) = (made.pop(), made.pop()) else {
            return;
        };
        self.native = Some(GlTextures {
            gl: Arc::clone(gl),
            sub_image,
            pair: [first, second],
            turns: Alternation::default(),
        });
        tracing::info!(texture = %self.name, "guest pixels go straight to a GL texture");
        // The next frame uploads in full, into the new textures.
        self.handle = None;
        self.layout = None;
    }

    pub fn layout(&self) -> Option<FramebufferLayout> {
        self.layout
    }

    /// Drops the texture and its staging buffers (the partition stopped). A GL texture
    /// is kept for the next start (the painter owns it; eframe has no way to give it
    /// back), but no longer drawn.
    pub fn clear(&mut self) {
        self.handle = None;
        if let Some(native) = &mut self.native {
            native.forget();
        }
        self.layout = None;
        self.staging = StagingPool::default();
    }

    /// Staging images allocated so far; a steady live source stops adding to it.
    pub fn staging_allocations(&self) -> u64 {
        self.staging.allocations
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
        let full = self.layout != Some(layout) || self.texture().is_none();
        let rects = if full {
            vec![whole]
        } else {
            self.merged_damage(&frame)
        };
        if rects.is_empty() {
            return Ok(());
        }
        if let Some(native) = &mut self.native {
            if let Some(uploaded) = native.upload(&frame, &rects, full) {
                for r in uploaded {
                    self.count(r);
                }
                self.layout = Some(layout);
                return Ok(());
            }
            tracing::warn!(texture = %self.name, "GL refused a guest frame; egui's own textures instead");
            self.native = None;
            self.native_refused = true;
            self.layout = None;
            return self.upload_egui(ctx, &frame, &[whole], true);
        }
        self.upload_egui(ctx, &frame, &rects, full)
    }

    /// The frame's damage, clipped to the framebuffer and merged; counts what was clipped.
    fn merged_damage(&mut self, frame: &FrameView<'_>) -> Vec<DamageRect> {
        let layout = frame.layout;
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
        merged.rects().to_vec()
    }

    /// Uploads `rects` through egui's texture (converted to RGBA), creating it when `full`.
    fn upload_egui(
        &mut self,
        ctx: &Context,
        frame: &FrameView<'_>,
        rects: &[DamageRect],
        full: bool,
    ) -> Result<(), FrameError> {
        let layout = frame.layout;
        let screen = (layout.width as usize) * (layout.height as usize);
        if full || self.handle.is_none() {
            let whole = DamageRect {
                x: 0,
                y: 0,
                w: layout.width,
                h: layout.height,
            };
            let image = self.staging.convert(frame, whole);
            self.staging.finish_frame(screen);
            self.count(whole);
            self.handle = Some(ctx.load_texture(&self.name, image, TextureOptions::LINEAR));
            self.layout = Some(layout);
            return Ok(());
        }
        for &clipped in rects {
            let image = self.staging.convert(frame, clipped);
            if let Some(handle) = self.handle.as_mut() {
                handle.set_partial(
                    [clipped.x as usize, clipped.y as usize],
                    image,
                    TextureOptions::LINEAR,
                );
                self.count(clipped);
            }
        }
        self.staging.finish_frame(screen);
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

/// Two GL textures of ours that egui's glow painter draws (registered as user textures),
/// used in turn (see [`Alternation`]).
struct GlTextures {
    gl: Arc<glow::Context>,
    sub_image: TexSubImage2d,
    pair: [GlTexture; 2],
    turns: Alternation,
}

struct GlTexture {
    texture: glow::Texture,
    id: TextureId,
}

/// Which of two textures a frame goes into, and what it must bring over. A frame is
/// uploaded into the one not drawn last, so the upload never waits for the renderer still
/// drawing the previous frame from it (llvmpipe draws on its own threads while the next
/// frame is laid out); the texture written also takes what it missed while the other one
/// was in front.
#[derive(Debug, Default)]
struct Alternation {
    /// The one drawn.
    front: usize,
    /// Each one's size once storage was allocated by a full upload.
    sizes: [Option<[usize; 2]>; 2],
    /// What the front one got in its last upload, which the other one lacks.
    missed: Vec<DamageRect>,
}

/// One upload: into which texture, which rectangles, and whether it is allocated anew.
#[derive(Debug, PartialEq, Eq)]
struct Turn {
    texture: usize,
    rects: Vec<DamageRect>,
    full: bool,
}

impl Alternation {
    /// The upload for a frame of `layout` damaged in `rects` (`full`: all of it).
    fn plan(&self, layout: FramebufferLayout, rects: &[DamageRect], full: bool) -> Turn {
        let back = 1 - self.front;
        let size = [layout.width as usize, layout.height as usize];
        let full = full || self.sizes[back] != Some(size);
        let rects = if full {
            vec![DamageRect {
                x: 0,
                y: 0,
                w: layout.width,
                h: layout.height,
            }]
        } else {
            let mut merged = DamageSet::new(layout.width, layout.height);
            for &r in rects.iter().chain(&self.missed) {
                merged.add(r);
            }
            merged.rects().to_vec()
        };
        Turn {
            texture: back,
            rects,
            full,
        }
    }

    /// `turn` (for a frame damaged in `rects`) was uploaded: its texture goes in front.
    fn done(&mut self, turn: &Turn, layout: FramebufferLayout, rects: &[DamageRect]) {
        if turn.full {
            self.sizes[turn.texture] = Some([layout.width as usize, layout.height as usize]);
        }
        // The one now behind lacks this frame's damage (all of it after a full upload).
        self.missed = if turn.full {
            turn.rects.clone()
        } else {
            rects.to_vec()
        };
        self.front = turn.texture;
    }

    fn front_size(&self) -> Option<[usize; 2]> {
        self.sizes[self.front]
    }
}

impl GlTextures {
    /// The texture to draw and its size, once one was filled.
    fn front(&self) -> Option<(TextureId, [usize; 2])> {
        let size = self.turns.front_size()?;
        Some((self.pair[self.turns.front].id, size))
    }

    /// Nothing drawn until the next full upload (the partition stopped).
    fn forget(&mut self) {
        self.turns = Alternation::default();
    }

    /// Sends the frame's damage `rects` (inside the checked `frame`), plus what the back
    /// texture missed, to the back texture and puts it in front. Returns the rectangles
    /// uploaded, or `None` if GL reported an error (nothing is known about the textures'
    /// contents then).
    fn upload(
        &mut self,
        frame: &FrameView<'_>,
        rects: &[DamageRect],
        full: bool,
    ) -> Option<Vec<DamageRect>> {
        let turn = self.turns.plan(frame.layout, rects, full);
        let texture = &self.pair[turn.texture];
        if !texture.upload(&self.gl, self.sub_image, frame, &turn.rects, turn.full) {
            self.forget();
            return None;
        }
        self.turns.done(&turn, frame.layout, rects);
        Some(turn.rects)
    }
}

impl GlTexture {
    /// Sends `rects` of the checked `frame` (all inside it) to the texture, allocating it
    /// anew when `full`; false if GL reported an error.
    fn upload(
        &self,
        gl: &glow::Context,
        sub_image: TexSubImage2d,
        frame: &FrameView<'_>,
        rects: &[DamageRect],
        full: bool,
    ) -> bool {
        let layout = frame.layout;
        let stride = layout.stride as usize;
        if stride % 4 != 0 {
            return false; // GL's row length counts whole pixels.
        }
        let pixels = frame.pixels.as_ptr();
        // SAFETY: `gl` is the window's context, current on this (the painting) thread:
        // `update` is called from `App::ui`, like `use_gl`, and `sub_image` was loaded
        // from it. GL reads each rectangle (x, y, w, h), inside the framebuffer, with row
        // length stride/4 from offset y*stride + x*4 up to (y+h-1)*stride + (x+w)*4 <=
        // height*stride <= `frame.pixels.len()` (`check_frame`, `clip`), all of which
        // `as_ptr` has mapped for as long as `frame` is borrowed; GL copies client memory
        // before the call returns (glthread included), so nothing is read later; no
        // unpack buffer is bound (unbound here), so GL takes the address as memory. Shared
        // bytes the partition writes meanwhile are read as whatever they are (a torn
        // picture at worst). The unpack state we change is put back before returning, so
        // egui's own uploads see what they set.
        unsafe {
            gl.bind_texture(glow::TEXTURE_2D, Some(self.texture));
            gl.bind_buffer(glow::PIXEL_UNPACK_BUFFER, None);
            gl.pixel_store_i32(glow::UNPACK_ALIGNMENT, 4);
            if full {
                for (param, value) in [
                    (glow::TEXTURE_MIN_FILTER, glow::LINEAR),
                    (glow::TEXTURE_MAG_FILTER, glow::LINEAR),
                    (glow::TEXTURE_WRAP_S, glow::CLAMP_TO_EDGE),
                    (glow::TEXTURE_WRAP_T, glow::CLAMP_TO_EDGE),
                    // The X byte is whatever the guest left there: guest pixels are opaque.
                    (glow::TEXTURE_SWIZZLE_A, glow::ONE),
                ] {
                    gl.tex_parameter_i32(glow::TEXTURE_2D, param, value as i32);
                }
                // The unsized internal format lets the driver store the texture as the
                // data comes (Mesa does): uploads are then plain copies. With RGBA8
                // llvmpipe swizzled every pixel, and live frames cost more than before.
                // Storage only; the pixels follow as one sub-image like any other.
                gl.tex_image_2d(
                    glow::TEXTURE_2D,
                    0,
                    glow::RGBA as i32,
                    layout.width as i32,
                    layout.height as i32,
                    0,
                    glow::BGRA,
                    glow::UNSIGNED_BYTE,
                    glow::PixelUnpackData::Slice(None),
                );
            }
            gl.pixel_store_i32(glow::UNPACK_ROW_LENGTH, (stride / 4) as i32);
            for r in rects {
                let start = r.y as usize * stride + r.x as usize * 4;
                (sub_image.0)(
                    glow::TEXTURE_2D,
                    0,
                    r.x as i32,
                    r.y as i32,
                    r.w as i32,
                    r.h as i32,
                    glow::BGRA,
                    glow::UNSIGNED_BYTE,
                    pixels.add(start).cast(),
                );
            }
            gl.pixel_store_i32(glow::UNPACK_ROW_LENGTH, 0);
            gl.get_error() == glow::NO_ERROR
        }
    }
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

/// Staging images for uploads: the ones used by the last frame that uploaded, handed
/// out again once egui has let go of them.
#[derive(Debug, Default)]
struct StagingPool {
    /// Free for reuse when egui no longer holds a reference.
    idle: Vec<Arc<ColorImage>>,
    /// Handed out during the current update.
    used: Vec<Arc<ColorImage>>,
    /// Fresh images made so far (a reused one does not count).
    allocations: u64,
    /// One row of a shared framebuffer, copied out to be converted.
    row: Vec<u8>,
}

impl StagingPool {
    /// `rect` of the checked frame as an RGBA image, in a reused buffer when one is free.
    fn convert(&mut self, frame: &FrameView<'_>, rect: DamageRect) -> Arc<ColorImage> {
        let area = rect.area() as usize;
        // The smallest free buffer that fits, else the largest free one (it grows).
        let free = |a: &Arc<ColorImage>| Arc::strong_count(a) == 1 && Arc::weak_count(a) == 0;
        let fits = self
            .idle
            .iter()
            .enumerate()
            .filter(|(_, a)| free(a) && a.pixels.capacity() >= area)
            .min_by_key(|(_, a)| a.pixels.capacity())
            .map(|(i, _)| i);
        let pick = fits.or_else(|| {
            self.idle
                .iter()
                .enumerate()
                .filter(|(_, a)| free(a))
                .max_by_key(|(_, a)| a.pixels.capacity())
                .map(|(i, _)| i)
        });
        let mut image = match pick {
            Some(i) => self.idle.swap_remove(i),
            None => {
                self.allocations += 1;
                Arc::new(ColorImage::default())
            }
        };
        // The picked image is unique, so this never copies; were it shared, egui's
        // pending copy would stay intact.
        fill_rgba(Arc::make_mut(&mut image), frame, rect, &mut self.row);
        self.used.push(Arc::clone(&image));
        image
    }

    /// Keeps this update's buffers for the next one, at most two screens' worth.
    fn finish_frame(&mut self, screen: usize) {
        self.idle = std::mem::take(&mut self.used);
        let mut kept = 0usize;
        self.idle.retain(|a| {
            kept += a.pixels.capacity();
            kept <= 2 * screen
        });
    }
}

/// Fills `image` with `rect` (inside the checked frame) converted from XRGB to RGBA. The
/// X byte is ignored and alpha forced opaque: guest pixels are never translucent.
fn fill_rgba(
    image: &mut ColorImage,
    frame: &FrameView<'_>,
    rect: DamageRect,
    row_buf: &mut Vec<u8>,
) {
    let stride = frame.layout.stride as usize;
    let (w, h) = (rect.w as usize, rect.h as usize);
    // Only the length changes when the buffer already has room: no reallocation.
    image.pixels.resize(w * h, Color32::TRANSPARENT);
    image.size = [w, h];
    image.source_size = egui::vec2(w as f32, h as f32);
    for (row, dst) in image.pixels.chunks_exact_mut(w).enumerate() {
        let start = (rect.y as usize + row) * stride + rect.x as usize * 4;
        // Inside the checked frame, so always there; a shared row is copied out first.
        let Some(src) = frame.pixels.bytes(start, w * 4, row_buf) else {
            continue;
        };
        for (d, p) in dst.iter_mut().zip(src.chunks_exact(4)) {
            // A whole-word load (chunks of 4 always convert; the fallback is compiled
            // away): byte-wise indexing here keeps the loop scalar, 4x slower.
            let word = <[u8; 4]>::try_from(p).map_or(0, u32::from_le_bytes);
            *d = xrgb_to_rgba(word);
        }
    }
}

/// One XRGB8888 pixel (B, G, R, X in memory, i.e. 0xXXRRGGBB little-endian) as an opaque
/// `Color32`. Whole-word shifts and masks so that the compiler vectorizes the row loop.
#[inline(always)]
fn xrgb_to_rgba(v: u32) -> Color32 {
    let rgba = ((v >> 16) & 0xff) | (v & 0xff00) | ((v & 0xff) << 16) | 0xff00_0000;
    let [r, g, b, a] = rgba.to_le_bytes();
    Color32::from_rgba_premultiplied(r, g, b, a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::display::software::{Pattern, SoftwareSource};
    use crate::display::FramePixels;

    /// Two CPU copies of the textures, uploaded as the alternation says: after every
    /// frame the one in front holds exactly the frame, whatever each one missed.
    #[test]
    fn alternating_textures_each_bring_over_what_they_missed() {
        let mut s = source(Pattern::TestCard);
        let layout = s.frame().layout;
        let mut textures = [Vec::new(), Vec::new()];
        let mut turns = Alternation::default();
        let mut partial_turns = 0;
        for n in 0..12 {
            if n > 0 {
                s.advance();
            }
            let frame = s.frame();
            let rects: Vec<DamageRect> = frame.damage.clone();
            let turn = turns.plan(layout, &rects, n == 0);
            let t = &mut textures[turn.texture];
            let bytes = frame.pixels.to_vec();
            if turn.full {
                *t = frame.pixels.to_vec();
            } else {
                partial_turns += 1;
                let stride = layout.stride as usize;
                for r in &turn.rects {
                    for y in r.y as usize..(r.y + r.h) as usize {
                        let row =
                            y * stride + r.x as usize * 4..y * stride + (r.x + r.w) as usize * 4;
                        t[row.clone()].copy_from_slice(&bytes[row]);
                    }
                }
            }
            turns.done(&turn, layout, &rects);
            assert_eq!(turns.front, turn.texture);
            assert!(
                textures[turns.front] == bytes,
                "frame {n}: the front texture differs from the framebuffer"
            );
        }
        assert!(partial_turns >= 8, "only {partial_turns} partial uploads");
    }

    #[test]
    fn a_texture_of_another_size_is_filled_in_full() {
        let small = FramebufferLayout::new(320, 240).unwrap();
        let big = FramebufferLayout::new(640, 480).unwrap();
        let mut turns = Alternation::default();
        for layout in [small, small] {
            let turn = turns.plan(layout, &[], false);
            assert!(turn.full, "a texture never filled is filled in full");
            turns.done(&turn, layout, &[]);
        }
        let dot = [DamageRect {
            x: 1,
            y: 1,
            w: 1,
            h: 1,
        }];
        let turn = turns.plan(small, &dot, false);
        assert!(!turn.full);
        turns.done(&turn, small, &dot);
        let turn = turns.plan(big, &dot, false);
        assert!(turn.full, "a resized framebuffer is uploaded whole");
        assert_eq!(
            turn.rects,
            vec![DamageRect {
                x: 0,
                y: 0,
                w: 640,
                h: 480
            }]
        );
    }

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

    /// What the painter would do: applies (and thereby releases) the pending uploads of
    /// `t` to `texels`, a CPU copy of its texture. Returns how many there were.
    fn paint(ctx: &Context, t: &GuestTexture, texels: &mut Vec<Color32>) -> usize {
        let (id, [tw, _]) = t.texture().unwrap();
        let mut delta = ctx.tex_manager().write().take_delta();
        let mine = delta.set.remove(&id);
        // The rest (egui's own font texture) is not this test's: handled by dropping it.
        delta.clear();
        let Some(deltas) = mine else {
            return 0;
        };
        for d in &deltas {
            let egui::ImageData::Color(image) = &d.image;
            let [w, h] = image.size;
            let [x0, y0] = d.pos.unwrap_or([0, 0]);
            if d.pos.is_none() {
                *texels = vec![Color32::TRANSPARENT; w * h];
            }
            for y in 0..h {
                let dst = (y0 + y) * tw + x0;
                texels[dst..dst + w].copy_from_slice(&image.pixels[y * w..(y + 1) * w]);
            }
        }
        deltas.len()
    }

    /// Framebuffer bytes as the texels a correct upload gives.
    fn expected_texels(f: &FrameView<'_>) -> Vec<Color32> {
        let bytes = f.pixels.to_vec();
        let (w, h, stride) = (
            f.layout.width as usize,
            f.layout.height as usize,
            f.layout.stride as usize,
        );
        (0..h)
            .flat_map(|y| (0..w).map(move |x| (y, x)))
            .map(|(y, x)| {
                let p = &bytes[y * stride + x * 4..];
                Color32::from_rgb(p[2], p[1], p[0])
            })
            .collect()
    }

    #[test]
    fn a_shared_framebuffer_is_converted_as_it_is_when_uploaded() {
        use crate::display::SharedFramebuffer;
        use vmm_core::shm::Memfd;
        let layout = FramebufferLayout::new(64, 64).unwrap();
        let memfd = Memfd::create("fb-upload-test", layout.bytes()).unwrap();
        let partition = memfd.map_shared_rw().unwrap();
        let fb = SharedFramebuffer::adopt(layout, &memfd).unwrap();
        let drawn: Vec<u8> = (0..64 * 64u32)
            .flat_map(|i| [i as u8, (i >> 4) as u8, (i >> 8) as u8, 0])
            .collect();
        partition.write_at(0, &drawn).unwrap();
        let ctx = Context::default();
        let mut t = GuestTexture::new("t");
        let mut texels = Vec::new();
        let view = |damage| FrameView {
            layout,
            pixels: FramePixels::Shared(&fb),
            damage,
        };
        t.update(&ctx, view(vec![])).unwrap();
        paint(&ctx, &t, &mut texels);
        assert_eq!(texels, expected_texels(&view(vec![])));
        // The partition draws a row; only its damage is read again, from the mapping.
        partition.write_at(64 * 4 * 10, &[0xff; 64 * 4]).unwrap();
        let row = DamageRect {
            x: 0,
            y: 10,
            w: 64,
            h: 1,
        };
        t.update(&ctx, view(vec![row])).unwrap();
        assert_eq!(paint(&ctx, &t, &mut texels), 1);
        assert!(texels[640..704].iter().all(|&c| c == Color32::WHITE));
        assert_eq!(texels, expected_texels(&view(vec![])));
    }

    #[test]
    fn guest_alpha_is_forced_opaque_whatever_its_x_byte() {
        let layout = FramebufferLayout::new(64, 64).unwrap();
        // B, G, R, X with X running over every value, transparent-looking ones included.
        let pixels: Vec<u8> = (0..64 * 64u32)
            .flat_map(|i| [i as u8, (i >> 3) as u8, (i >> 6) as u8, (i * 37) as u8])
            .collect();
        let ctx = Context::default();
        let mut t = GuestTexture::new("t");
        let frame = FrameView {
            layout,
            pixels: FramePixels::Host(&pixels),
            damage: vec![],
        };
        let want = expected_texels(&frame);
        t.update(&ctx, frame).unwrap();
        let mut texels = Vec::new();
        paint(&ctx, &t, &mut texels);
        assert!(texels.iter().all(|c| c.a() == 255));
        assert_eq!(texels, want, "R, G, B taken from bytes 2, 1, 0");
        assert_eq!(texels[1], Color32::from_rgb(0, 0, 1));
    }

    #[test]
    fn damaged_rect_upload_changes_only_those_texels() {
        let ctx = Context::default();
        let layout = FramebufferLayout::new(256, 128).unwrap();
        let mut pixels = vec![0x40u8; layout.bytes()];
        let mut t = GuestTexture::new("t");
        let mut texels = Vec::new();
        t.update(
            &ctx,
            FrameView {
                layout,
                pixels: FramePixels::Host(&pixels),
                damage: vec![],
            },
        )
        .unwrap();
        paint(&ctx, &t, &mut texels);
        let before = texels.clone();
        // The guest repaints the whole screen but declares one rectangle damaged: only
        // that rectangle may reach the texture.
        pixels.fill(0xff);
        let rect = DamageRect {
            x: 10,
            y: 20,
            w: 30,
            h: 5,
        };
        t.update(
            &ctx,
            FrameView {
                layout,
                pixels: FramePixels::Host(&pixels),
                damage: vec![rect],
            },
        )
        .unwrap();
        assert_eq!(paint(&ctx, &t, &mut texels), 1);
        for y in 0..128 {
            for x in 0..256 {
                let inside = (10..40).contains(&x) && (20..25).contains(&y);
                let want = if inside {
                    Color32::WHITE
                } else {
                    before[y * 256 + x]
                };
                assert_eq!(texels[y * 256 + x], want, "texel ({x}, {y})");
            }
        }
    }

    #[test]
    fn partial_uploads_keep_the_texture_equal_to_the_framebuffer() {
        let ctx = Context::default();
        let mut s = source(Pattern::TestCard);
        let mut t = GuestTexture::new("t");
        let mut texels = Vec::new();
        for _ in 0..20 {
            t.update(&ctx, s.frame()).unwrap();
            paint(&ctx, &t, &mut texels);
            s.advance();
        }
        let f = s.frame();
        let want = expected_texels(&f);
        t.update(&ctx, f).unwrap();
        paint(&ctx, &t, &mut texels);
        assert_eq!(texels, want);
    }

    #[test]
    fn live_source_reuses_its_staging_buffers_once_painted() {
        let ctx = Context::default();
        let mut s = source(Pattern::FullMotion);
        let mut t = GuestTexture::new("t");
        let mut texels = Vec::new();
        for _ in 0..3 {
            t.update(&ctx, s.frame()).unwrap();
            paint(&ctx, &t, &mut texels);
            s.advance();
        }
        let allocated = t.staging_allocations();
        for _ in 0..50 {
            t.update(&ctx, s.frame()).unwrap();
            paint(&ctx, &t, &mut texels);
            s.advance();
        }
        assert_eq!(t.staging_allocations(), allocated);
        assert_eq!(t.stats().uploads, 53);
    }

    #[test]
    fn an_unpainted_upload_is_never_overwritten_by_the_next_frame() {
        let ctx = Context::default();
        let mut s = source(Pattern::FullMotion);
        let mut t = GuestTexture::new("t");
        let mut texels = Vec::new();
        t.update(&ctx, s.frame()).unwrap();
        paint(&ctx, &t, &mut texels);
        // Two frames before the painter runs (egui may run a frame's UI twice): both
        // uploads must reach it as they were converted.
        let mut want = Vec::new();
        for _ in 0..2 {
            s.advance();
            let f = s.frame();
            want.push(expected_texels(&f));
            t.update(&ctx, f).unwrap();
        }
        let (id, _) = t.texture().unwrap();
        let mut delta = ctx.tex_manager().write().take_delta();
        let pending = delta.set.remove(&id).unwrap();
        delta.clear();
        assert_eq!(pending.len(), 2);
        for (d, want) in pending.iter().zip(&want) {
            let egui::ImageData::Color(image) = &d.image;
            assert_eq!(&image.pixels, want);
        }
        assert_ne!(want[0], want[1]);
    }

    #[test]
    fn idle_source_keeps_no_more_than_two_screens_of_staging() {
        let ctx = Context::default();
        let mut s = source(Pattern::TestCard);
        let mut t = GuestTexture::new("t");
        let mut texels = Vec::new();
        for _ in 0..10 {
            t.update(&ctx, s.frame()).unwrap();
            paint(&ctx, &t, &mut texels);
            s.advance();
        }
        let kept: usize = t.staging.idle.iter().map(|a| a.pixels.capacity()).sum();
        assert!(kept <= 2 * 256 * 128, "{kept}");
        t.clear();
        assert!(t.staging.idle.is_empty());
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
                    pixels: FramePixels::Host(&pixels),
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
