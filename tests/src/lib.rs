//! Test harness shared by the integration tests: the hardware-virtualization lab runner
//! and the boot benchmark. Micro-guests are assembled with `vmm_core::microguest`.

pub mod balloon;
pub mod bench;
pub mod keymap;
pub mod lab;

/// The bytes the lab tests push through the virtio console: every byte value, in an order
/// that is not simply 0..=255 so a shifted or dropped byte shows.
pub fn console_pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(7).wrapping_add(3) % 256) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_console_pattern_uses_every_byte_value() {
        let p = super::console_pattern(256);
        let mut seen = [false; 256];
        for b in &p {
            seen[usize::from(*b)] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_ne!(p[..4], [0, 1, 2, 3]);
    }
}
