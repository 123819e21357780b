//! A framebuffer drawn by the host in software: for tests, the benchmark and hosts without
//! hardware virtualization. It is never a partition, and the UI says so wherever it shows
//! one.

use super::{DamageRect, FramePixels, FrameView, FramebufferLayout};

/// What the software source draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Colour bars and a grey ramp, drawn once; then nothing changes (an idle screen).
    Still,
    /// The test card with a small box moving across it: a little damage every frame.
    TestCard,
    /// The whole screen changes every frame (the benchmark's worst case): an XOR ramp
    /// moving 8 pixels a frame, [`MOTION_FRAMES`] frames drawn once and shown in turn.
    FullMotion,
}

/// An XRGB framebuffer in host memory, advanced one frame per [`SoftwareSource::advance`].
#[derive(Debug)]
pub struct SoftwareSource {
    layout: FramebufferLayout,
    /// The test card (with the moving box).
    pixels: Vec<u8>,
    /// `FullMotion`'s frames, drawn when the pattern is set: a guest draws in its own
    /// process, so what a live source costs the GUI is the uploads alone.
    motion: Vec<Vec<u8>>,
    pattern: Pattern,
    frame: u64,
    damage: Vec<DamageRect>,
    box_pos: Option<(u32, u32)>,
}

const BOX: u32 = 48;

/// How many different frames `FullMotion` shows in turn: consecutive ones (the last and
/// the first too) differ in every pixel.
pub const MOTION_FRAMES: u64 = 8;

/// SMPTE-like bars: white, yellow, cyan, green, magenta, red, blue (as RGB).
const BARS: [[u8; 3]; 7] = [
    [192, 192, 192],
    [192, 192, 0],
    [0, 192, 192],
    [0, 192, 0],
    [192, 0, 192],
    [192, 0, 0],
    [0, 0, 192],
];

impl SoftwareSource {
    pub fn new(layout: FramebufferLayout, pattern: Pattern) -> Self {
        let mut source = Self {
            layout,
            pixels: vec![0; layout.bytes()],
            motion: Vec::new(),
            pattern,
            frame: 0,
            damage: Vec::new(),
            box_pos: None,
        };
        source.set_pattern(pattern);
        source
    }

    pub fn layout(&self) -> FramebufferLayout {
        self.layout
    }

    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    pub fn set_pattern(&mut self, pattern: Pattern) {
        self.pattern = pattern;
        self.draw_card();
        self.motion = match pattern {
            Pattern::FullMotion => (0..MOTION_FRAMES).map(|n| self.motion_frame(n)).collect(),
            Pattern::Still | Pattern::TestCard => Vec::new(),
        };
        self.damage_all();
    }

    /// Draws the next frame, adding what changed to the pending damage.
    pub fn advance(&mut self) {
        self.frame += 1;
        match self.pattern {
            Pattern::Still => {}
            Pattern::TestCard => self.move_box(),
            Pattern::FullMotion => self.damage_all(),
        }
    }

    /// The pixels and the damage since the last call (which is then forgotten).
    pub fn frame(&mut self) -> FrameView<'_> {
        let damage = std::mem::take(&mut self.damage);
        FrameView {
            layout: self.layout,
            pixels: FramePixels::Host(self.shown()),
            damage,
        }
    }

    /// The bytes of the frame shown now.
    fn shown(&self) -> &[u8] {
        let n = self.frame % MOTION_FRAMES;
        usize::try_from(n)
            .ok()
            .and_then(|n| self.motion.get(n))
            .unwrap_or(&self.pixels)
    }

    /// The pixel at (x, y) as RGB, for tests.
    pub fn rgb_at(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y * self.layout.stride + x * 4) as usize;
        let p = self.shown();
        [p[i + 2], p[i + 1], p[i]]
    }

    fn damage_all(&mut self) {
        self.damage.clear();
        self.damage.push(DamageRect {
            x: 0,
            y: 0,
            w: self.layout.width,
            h: self.layout.height,
        });
    }

    fn put(&mut self, x: u32, y: u32, rgb: [u8; 3]) {
        let i = (y * self.layout.stride + x * 4) as usize;
        self.pixels[i..i + 4].copy_from_slice(&[rgb[2], rgb[1], rgb[0], 0]);
    }

    fn card_pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let (w, h) = (self.layout.width, self.layout.height);
        if y < h * 2 / 3 {
            let bar = (x * BARS.len() as u32 / w) as usize;
            return BARS[bar.min(BARS.len() - 1)];
        }
        let grey = (x * 255 / (w - 1)) as u8;
        if y < h * 5 / 6 {
            [grey, grey, grey]
        } else {
            // A fine grid: shows scaling artefacts at a glance.
            let on = (x / 8 + y / 8) % 2 == 0;
            if on {
                [16, 16, 16]
            } else {
                [235, 235, 235]
            }
        }
    }

    fn draw_card(&mut self) {
        for y in 0..self.layout.height {
            for x in 0..self.layout.width {
                let rgb = self.card_pixel(x, y);
                self.put(x, y, rgb);
            }
        }
        self.box_pos = None;
    }

    fn move_box(&mut self) {
        let (w, h) = (self.layout.width, self.layout.height);
        if let Some((ox, oy)) = self.box_pos.take() {
            for y in oy..oy + BOX {
                for x in ox..ox + BOX {
                    let rgb = self.card_pixel(x, y);
                    self.put(x, y, rgb);
                }
            }
            self.damage.push(DamageRect {
                x: ox,
                y: oy,
                w: BOX,
                h: BOX,
            });
        }
        let span_x = u64::from(w - BOX);
        let span_y = u64::from(h - BOX);
        let bounce = |t: u64, span: u64| {
            let p = t % (2 * span);
            (if p < span { p } else { 2 * span - p }) as u32
        };
        let (nx, ny) = (
            bounce(self.frame * 4, span_x),
            bounce(self.frame * 3, span_y),
        );
        for y in ny..ny + BOX {
            for x in nx..nx + BOX {
                self.put(x, y, [255, 255, 255]);
            }
        }
        self.damage.push(DamageRect {
            x: nx,
            y: ny,
            w: BOX,
            h: BOX,
        });
        self.box_pos = Some((nx, ny));
    }

    /// `FullMotion`'s frame `n`: the ramp shifted by 8n pixels.
    fn motion_frame(&self, n: u64) -> Vec<u8> {
        let shift = (n * 8) as u32;
        let stride = self.layout.stride as usize;
        let mut pixels = vec![0; self.layout.bytes()];
        for (y, row) in pixels.chunks_exact_mut(stride).enumerate() {
            for (x, px) in row.chunks_exact_mut(4).enumerate() {
                let v = (x as u32).wrapping_add(shift) ^ (y as u32);
                // B = v, G = v >> 2, R = v >> 4, X = 0.
                let xrgb = (v & 0xff) | ((v >> 2) & 0xff) << 8 | ((v >> 4) & 0xff) << 16;
                px.copy_from_slice(&xrgb.to_le_bytes());
            }
        }
        pixels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> FramebufferLayout {
        FramebufferLayout::new(320, 240).unwrap()
    }

    #[test]
    fn first_frame_is_damaged_whole() {
        let mut s = SoftwareSource::new(layout(), Pattern::Still);
        let f = s.frame();
        assert_eq!(
            f.damage,
            vec![DamageRect {
                x: 0,
                y: 0,
                w: 320,
                h: 240
            }]
        );
    }

    #[test]
    fn still_pattern_reports_no_damage_after_the_first_frame() {
        let mut s = SoftwareSource::new(layout(), Pattern::Still);
        let _ = s.frame();
        s.advance();
        s.advance();
        assert!(s.frame().damage.is_empty());
    }

    #[test]
    fn test_card_damages_only_the_moving_box() {
        let mut s = SoftwareSource::new(layout(), Pattern::TestCard);
        let _ = s.frame();
        s.advance();
        s.advance();
        let damage = s.frame().damage;
        assert!(!damage.is_empty());
        assert!(
            damage.iter().all(|r| r.w == BOX && r.h == BOX),
            "{damage:?}"
        );
    }

    #[test]
    fn full_motion_draws_the_xor_ramp_shifted_each_frame() {
        let mut s = SoftwareSource::new(layout(), Pattern::FullMotion);
        s.advance();
        s.advance();
        for (x, y) in [(0u32, 0u32), (5, 7), (319, 239), (100, 200)] {
            let v = (x + 16) ^ y;
            assert_eq!(
                s.rgb_at(x, y),
                [(v >> 4) as u8, (v >> 2) as u8, v as u8],
                "pixel ({x}, {y})"
            );
        }
        let f = s.frame();
        assert_eq!(f.damage.len(), 1);
        assert!(
            f.pixels.to_vec().chunks_exact(4).all(|p| p[3] == 0),
            "X byte stays 0"
        );
    }

    #[test]
    fn full_motion_changes_every_pixel_every_frame_and_repeats_after_its_frames() {
        let mut s = SoftwareSource::new(layout(), Pattern::FullMotion);
        let first = s.frame().pixels.to_vec();
        let mut previous = first.clone();
        for n in 1..=MOTION_FRAMES {
            s.advance();
            let f = s.frame();
            assert_eq!(f.damage.len(), 1, "frame {n} is damaged whole");
            let now = f.pixels.to_vec();
            let unchanged = previous
                .chunks_exact(4)
                .zip(now.chunks_exact(4))
                .filter(|(a, b)| a == b)
                .count();
            assert_eq!(unchanged, 0, "frame {n}: {unchanged} pixels as before");
            previous = now;
        }
        assert_eq!(previous, first, "frame {MOTION_FRAMES} is frame 0 again");
    }

    #[test]
    fn test_card_starts_with_white_and_blue_bars() {
        let s = SoftwareSource::new(layout(), Pattern::Still);
        assert_eq!(s.rgb_at(0, 0), [192, 192, 192]);
        assert_eq!(s.rgb_at(319, 0), [0, 0, 192]);
    }
}
