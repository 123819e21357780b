//! Where partition pixels come from, and how they reach the GPU.
//!
//! A source hands out its framebuffer read-only (`FrameView`) together with the damage
//! since the last look; [`texture::GuestTexture`] uploads only those rectangles, so an idle
//! partition costs no uploads.

pub mod software;
pub mod texture;

pub use vmm_core::devices::framebuffer::{DamageRect, FramebufferLayout};

/// A partition's framebuffer as the GUI may read it. `pixels` is 32-bit XRGB
/// (B, G, R, X bytes) with `layout.stride` bytes per row. Everything here comes from
/// outside the GUI and is checked before use.
#[derive(Debug)]
pub struct FrameView<'a> {
    pub layout: FramebufferLayout,
    pub pixels: &'a [u8],
    /// Changed areas since the previous `FrameView`; empty when nothing changed.
    pub damage: Vec<DamageRect>,
}
