//! Damage kept by area, not by count: however many rectangles a partition reports,
//! what the app copies and uploads per poll is at most a few rectangles whose summed
//! area is at most one screen.

use vmm_core::devices::framebuffer::DamageRect;

/// Rectangles a [`DamageSet`] keeps before it collapses to their bounding box.
pub const MAX_KEPT_DAMAGE_RECTS: usize = 16;

/// A bounded set of damaged rectangles on a `width` x `height` screen.
///
/// Invariants after every [`DamageSet::add`]: every rectangle added since the last
/// [`DamageSet::take`] is covered by the kept ones; each kept rectangle lies inside the
/// screen; at most [`MAX_KEPT_DAMAGE_RECTS`] are kept; their summed area is at most the
/// screen's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DamageSet {
    width: u32,
    height: u32,
    rects: Vec<DamageRect>,
}

impl DamageSet {
    pub fn new(width: u32, height: u32) -> DamageSet {
        DamageSet {
            width,
            height,
            rects: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rects.is_empty()
    }

    pub fn rects(&self) -> &[DamageRect] {
        &self.rects
    }

    /// The kept rectangles; the set is empty afterwards (same screen).
    pub fn take(&mut self) -> Vec<DamageRect> {
        std::mem::take(&mut self.rects)
    }

    pub fn clear(&mut self) {
        self.rects.clear();
    }

    fn screen_area(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Adds one rectangle, clipped to the screen (nothing if none of it is on screen).
    pub fn add(&mut self, rect: DamageRect) {
        let Some(mut rect) = clip(rect, self.width, self.height) else {
            return;
        };
        if self.rects.iter().any(|k| contains(*k, rect)) {
            return;
        }
        // Absorb every kept rectangle that merging costs no extra pixels with (inside
        // it, overlapping or adjacent so the union is no bigger than both uploaded).
        loop {
            let before = self.rects.len();
            self.rects.retain(|k| {
                let u = union(*k, rect);
                if u.area() <= k.area() + rect.area() {
                    rect = u;
                    false
                } else {
                    true
                }
            });
            if self.rects.len() == before {
                break;
            }
        }
        self.rects.push(rect);
        let total: u64 = self.rects.iter().map(DamageRect::area).sum();
        if self.rects.len() > MAX_KEPT_DAMAGE_RECTS || total > self.screen_area() {
            let bounds = self.rects.iter().copied().reduce(union);
            self.rects = bounds.into_iter().collect();
        }
    }

    pub fn extend(&mut self, rects: impl IntoIterator<Item = DamageRect>) {
        for r in rects {
            self.add(r);
        }
    }
}

fn clip(r: DamageRect, width: u32, height: u32) -> Option<DamageRect> {
    let x0 = r.x.min(width);
    let y0 = r.y.min(height);
    let x1 = r.x.saturating_add(r.w).min(width);
    let y1 = r.y.saturating_add(r.h).min(height);
    (x1 > x0 && y1 > y0).then_some(DamageRect {
        x: x0,
        y: y0,
        w: x1 - x0,
        h: y1 - y0,
    })
}

fn contains(outer: DamageRect, inner: DamageRect) -> bool {
    outer.x <= inner.x
        && outer.y <= inner.y
        && u64::from(outer.x) + u64::from(outer.w) >= u64::from(inner.x) + u64::from(inner.w)
        && u64::from(outer.y) + u64::from(outer.h) >= u64::from(inner.y) + u64::from(inner.h)
}

/// The bounding box of two on-screen rectangles (so no sum overflows `u32`).
fn union(a: DamageRect, b: DamageRect) -> DamageRect {
    let x0 = a.x.min(b.x);
    let y0 = a.y.min(b.y);
    let x1 = (a.x + a.w).max(b.x + b.w);
    let y1 = (a.y + a.h).max(b.y + b.h);
    DamageRect {
        x: x0,
        y: y0,
        w: x1 - x0,
        h: y1 - y0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(x: u32, y: u32, w: u32, h: u32) -> DamageRect {
        DamageRect { x, y, w, h }
    }

    #[test]
    fn rows_merge_and_contained_rects_vanish() {
        let mut set = DamageSet::new(64, 64);
        for y in 0..8 {
            set.add(r(0, y, 64, 1));
        }
        set.add(r(3, 3, 2, 2));
        assert_eq!(set.rects(), &[r(0, 0, 64, 8)]);
        set.add(r(10, 40, 4, 4));
        assert_eq!(set.rects().len(), 2);
        assert_eq!(set.take().len(), 2);
        assert!(set.is_empty());
    }

    #[test]
    fn a_flood_of_full_screens_keeps_one_screen() {
        let mut set = DamageSet::new(64, 64);
        set.extend((0..1024).map(|_| r(0, 0, 64, 64)));
        assert_eq!(set.rects(), &[r(0, 0, 64, 64)]);
    }

    #[test]
    fn off_screen_parts_are_clipped() {
        let mut set = DamageSet::new(64, 64);
        set.add(r(60, 60, u32::MAX, u32::MAX));
        set.add(r(u32::MAX, 0, 1, 1));
        assert_eq!(set.rects(), &[r(60, 60, 4, 4)]);
    }

    /// Pixel by pixel on a small screen: exact, no cleverness to get wrong.
    fn covered(kept: &[DamageRect], width: u32, height: u32, rect: DamageRect) -> bool {
        let mut painted = vec![false; (width * height) as usize];
        for k in kept {
            for y in k.y..k.y + k.h {
                for x in k.x..k.x + k.w {
                    painted[(y * width + x) as usize] = true;
                }
            }
        }
        (rect.y..rect.y + rect.h)
            .all(|y| (rect.x..rect.x + rect.w).all(|x| painted[(y * width + x) as usize]))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn any_flood_stays_covered_on_screen_and_bounded(
            (width, height, rects) in (1u32..40, 1u32..40).prop_flat_map(|(w, h)| {
                // Partly off screen too: the set clips.
                let rect = (0..w + 4, 0..h + 4, 1..=w + 4, 1..=h + 4)
                    .prop_map(|(x, y, rw, rh)| r(x, y, rw, rh));
                (Just(w), Just(h), prop::collection::vec(rect, 0..150))
            })
        ) {
            let screen = u64::from(width) * u64::from(height);
            let mut set = DamageSet::new(width, height);
            for rect in &rects {
                set.add(*rect);
                let kept = set.rects();
                prop_assert!(kept.len() <= MAX_KEPT_DAMAGE_RECTS);
                prop_assert!(kept.iter().map(DamageRect::area).sum::<u64>() <= screen);
                prop_assert!(kept
                    .iter()
                    .all(|k| k.w > 0 && k.h > 0 && k.x + k.w <= width && k.y + k.h <= height));
                if let Some(on_screen) = clip(*rect, width, height) {
                    prop_assert!(covered(kept, width, height, on_screen), "{rect:?} not covered by {kept:?}");
                }
            }
            // Merging only ever grows what is kept: everything added is still covered.
            for rect in &rects {
                if let Some(on_screen) = clip(*rect, width, height) {
                    prop_assert!(covered(set.rects(), width, height, on_screen), "{rect:?} lost");
                }
            }
        }
    }
}
