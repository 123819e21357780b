//! Where partition pixels come from, and how they reach the GPU.
//!
//! A source hands out its framebuffer read-only (`FrameView`) together with the damage
//! since the last look; [`texture::GuestTexture`] uploads only those rectangles, so an idle
//! partition costs no uploads.

pub mod software;
pub mod texture;

pub use bulkhead_supervisor::SharedFramebuffer;
pub use vmm_core::devices::framebuffer::{DamageRect, FramebufferLayout};

/// A partition's framebuffer as the GUI may read it. The pixels are 32-bit XRGB
/// (B, G, R, X bytes) with `layout.stride` bytes per row. Everything here comes from
/// outside the GUI and is checked before use.
#[derive(Debug)]
pub struct FrameView<'a> {
    pub layout: FramebufferLayout,
    pub pixels: FramePixels<'a>,
    /// Changed areas since the previous `FrameView`; empty when nothing changed.
    pub damage: Vec<DamageRect>,
}

/// Where a frame's bytes are.
#[derive(Debug, Clone, Copy)]
pub enum FramePixels<'a> {
    /// Memory the GUI owns (a software source).
    Host(&'a [u8]),
    /// A partition's framebuffer, which the partition keeps writing while the GUI reads
    /// it: copied out, or handed to GL as an address, never borrowed as a `&[u8]`. The GUI
    /// uploads straight from it, without a copy of its own.
    Shared(&'a SharedFramebuffer),
}

impl FramePixels<'_> {
    /// Bytes available from the first pixel on.
    pub fn len(&self) -> usize {
        match self {
            FramePixels::Host(bytes) => bytes.len(),
            FramePixels::Shared(fb) => fb.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `dst` with the bytes from `offset`; false (and `dst` untouched) when they
    /// are not all there.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> bool {
        match self {
            FramePixels::Host(bytes) => {
                let Some(src) = offset
                    .checked_add(dst.len())
                    .and_then(|end| bytes.get(offset..end))
                else {
                    return false;
                };
                dst.copy_from_slice(src);
                true
            }
            FramePixels::Shared(fb) => fb.read_at(offset, dst).is_ok(),
        }
    }

    /// `len` bytes from `offset`: borrowed from host memory, or copied into `scratch`
    /// from a shared framebuffer. `None` when they are not all there.
    pub fn bytes<'s>(
        &'s self,
        offset: usize,
        len: usize,
        scratch: &'s mut Vec<u8>,
    ) -> Option<&'s [u8]> {
        match self {
            FramePixels::Host(bytes) => bytes.get(offset..offset.checked_add(len)?),
            FramePixels::Shared(_) => {
                scratch.resize(len, 0);
                self.read_at(offset, scratch).then_some(&scratch[..])
            }
        }
    }

    /// The first byte's address, valid for [`FramePixels::len`] bytes while this borrow
    /// lives, for a reader outside Rust (the GL driver). Shared bytes may change while
    /// they are read.
    pub fn as_ptr(&self) -> *const u8 {
        match self {
            FramePixels::Host(bytes) => bytes.as_ptr(),
            FramePixels::Shared(fb) => fb.as_ptr(),
        }
    }

    /// Every byte, copied (for tests).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.len()];
        if !self.read_at(0, &mut out) {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_core::shm::Memfd;

    #[test]
    fn host_bytes_outside_the_buffer_are_refused_not_read() {
        let bytes = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let pixels = FramePixels::Host(&bytes);
        let mut dst = [0u8; 4];
        assert!(pixels.read_at(4, &mut dst));
        assert_eq!(dst, [5, 6, 7, 8]);
        let mut untouched = [9u8; 4];
        assert!(!pixels.read_at(5, &mut untouched));
        assert!(!pixels.read_at(usize::MAX, &mut untouched));
        assert_eq!(untouched, [9; 4]);
        let mut scratch = Vec::new();
        assert_eq!(pixels.bytes(2, 3, &mut scratch), Some(&bytes[2..5]));
        assert_eq!(pixels.bytes(usize::MAX - 1, 3, &mut scratch), None);
        assert!(scratch.is_empty(), "host bytes are borrowed, not copied");
    }

    #[test]
    fn shared_pixels_are_read_as_the_partition_writes_them() {
        let layout = FramebufferLayout::new(64, 64).unwrap();
        let memfd = Memfd::create("fb-test", layout.bytes()).unwrap();
        let writer = memfd.map_shared_rw().unwrap();
        let fb = SharedFramebuffer::adopt(layout, &memfd).unwrap();
        let pixels = FramePixels::Shared(&fb);
        assert_eq!(pixels.len(), layout.bytes());
        writer.write_at(256, &[0xaa, 0xbb, 0xcc, 0]).unwrap();
        let mut scratch = Vec::new();
        assert_eq!(
            pixels.bytes(256, 4, &mut scratch),
            Some(&[0xaa, 0xbb, 0xcc, 0][..])
        );
        // Written after the view was made: read as it is now (no copy of ours in between).
        writer.write_at(256, &[1, 2, 3, 0]).unwrap();
        assert_eq!(pixels.to_vec()[256..260], [1, 2, 3, 0]);
        assert_eq!(pixels.bytes(layout.bytes() - 2, 4, &mut scratch), None);
    }
}
