//! The GUI's read-only view of a partition's framebuffer memfd.

use vmm_core::devices::framebuffer::{DamageRect, FramebufferLayout, BYTES_PER_PIXEL};
use vmm_core::shm::{MappedRegion, Memfd, MemfdError};

/// Why a framebuffer a partition offered was refused.
#[derive(Debug, thiserror::Error)]
pub enum FramebufferOfferError {
    #[error("framebuffer layout {width}x{height} stride {stride} is not one this build accepts")]
    BadLayout {
        width: u32,
        height: u32,
        stride: u32,
    },
    #[error("framebuffer memfd: {0}")]
    Memfd(#[from] MemfdError),
    #[error("framebuffer memfd holds {size} bytes, the layout needs {need}")]
    TooSmall { size: usize, need: usize },
}

/// A partition's screen, mapped read-only. The partition keeps writing it; reads copy
/// out whatever is there at that moment.
#[derive(Debug)]
pub struct SharedFramebuffer {
    layout: FramebufferLayout,
    map: MappedRegion,
}

impl SharedFramebuffer {
    /// Checks the partition's layout against what this build would create itself and
    /// the memfd against the layout, then maps it read-only.
    pub fn adopt(layout: FramebufferLayout, memfd: &Memfd) -> Result<Self, FramebufferOfferError> {
        let bad = || FramebufferOfferError::BadLayout {
            width: layout.width,
            height: layout.height,
            stride: layout.stride,
        };
        let expected = FramebufferLayout::new(layout.width, layout.height).map_err(|_| bad())?;
        if expected != layout {
            return Err(bad());
        }
        if memfd.size() < layout.bytes() {
            return Err(FramebufferOfferError::TooSmall {
                size: memfd.size(),
                need: layout.bytes(),
            });
        }
        Ok(Self {
            layout,
            map: memfd.map_readonly_prefix(layout.bytes())?,
        })
    }

    pub fn layout(&self) -> FramebufferLayout {
        self.layout
    }

    /// True when `rect` lies inside the screen.
    pub fn contains(&self, rect: &DamageRect) -> bool {
        let fits =
            |pos: u32, len: u32, max: u32| pos.checked_add(len).is_some_and(|end| end <= max);
        fits(rect.x, rect.w, self.layout.width) && fits(rect.y, rect.h, self.layout.height)
    }

    /// Copies the pixels of `rect` into `out` as tightly packed XRGB rows
    /// (`rect.w * 4` bytes each). `rect` must be inside the screen.
    pub fn read_rect(&self, rect: DamageRect, out: &mut Vec<u8>) -> Result<(), MemfdError> {
        if !self.contains(&rect) {
            return Err(MemfdError::OutOfRange {
                offset: rect.y as usize * self.layout.stride as usize,
                len: rect.h as usize * self.layout.stride as usize,
                size: self.layout.bytes(),
            });
        }
        let row = rect.w as usize * BYTES_PER_PIXEL as usize;
        out.resize(row * rect.h as usize, 0);
        for (i, dst) in out
            .chunks_exact_mut(row.max(1))
            .enumerate()
            .take(rect.h as usize)
        {
            let y = rect.y as usize + i;
            let offset =
                y * self.layout.stride as usize + rect.x as usize * BYTES_PER_PIXEL as usize;
            self.map.read_at(offset, dst)?;
        }
        Ok(())
    }

    /// Copies `dst.len()` bytes from `offset` (counted from the screen's first byte).
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemfdError> {
        self.map.read_at(offset, dst)
    }

    /// Bytes of pixel data mapped: `layout().bytes()`.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The first pixel's address, for a reader outside Rust (the GL driver copying it into
    /// a texture): [`SharedFramebuffer::len`] bytes are mapped there for as long as this
    /// framebuffer lives. The partition writes them concurrently, so this is never to be
    /// made into a `&[u8]`; the memfd is sealed against shrinking (`Memfd::from_received`),
    /// so reading any of them cannot fault.
    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// Copies the whole screen into `out`.
    pub fn read_all(&self, out: &mut Vec<u8>) -> Result<(), MemfdError> {
        out.resize(self.layout.bytes(), 0);
        self.map.read_at(0, out)
    }

    /// One pixel as XRGB, or `None` outside the screen.
    pub fn pixel(&self, x: u32, y: u32) -> Option<u32> {
        let rect = DamageRect { x, y, w: 1, h: 1 };
        let mut px = Vec::with_capacity(4);
        self.read_rect(rect, &mut px).ok()?;
        Some(u32::from_le_bytes([px[0], px[1], px[2], px[3]]))
    }
}
