//! Where a vCPU's exits to this process go: each return from `KVM_RUN` is microseconds on
//! hardware (tens of them in the nested lab), so which device a guest leaves KVM for is
//! what a slow boot or a slow device is made of. Printed as one line when the vCPU ends.

use std::collections::HashMap;
use std::fmt::Write as _;

/// What made `KVM_RUN` return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExitSite {
    PioIn(u16),
    PioOut(u16),
    MmioRead(u64),
    MmioWrite(u64),
    Halt,
    /// A signal (a kick) or an interrupted run.
    Interrupted,
    Other,
}

impl std::fmt::Display for ExitSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitSite::PioIn(p) => write!(f, "in {p:#x}"),
            ExitSite::PioOut(p) => write!(f, "out {p:#x}"),
            ExitSite::MmioRead(a) => write!(f, "read {a:#x}"),
            ExitSite::MmioWrite(a) => write!(f, "write {a:#x}"),
            ExitSite::Halt => f.write_str("hlt"),
            ExitSite::Interrupted => f.write_str("interrupted"),
            ExitSite::Other => f.write_str("other"),
        }
    }
}

/// Counts per site. A guest can name at most 64 Ki ports, but any MMIO address: past
/// [`MAX_SITES`] distinct sites new ones are counted together as `Other`, so a guest
/// probing the address space cannot grow this without bound.
#[derive(Debug, Default)]
pub struct ExitTally {
    total: u64,
    by_site: HashMap<ExitSite, u64>,
}

/// Distinct sites kept apart.
pub const MAX_SITES: usize = 4096;

impl ExitTally {
    pub fn record(&mut self, site: ExitSite) {
        self.total += 1;
        let site = if self.by_site.len() >= MAX_SITES && !self.by_site.contains_key(&site) {
            ExitSite::Other
        } else {
            site
        };
        *self.by_site.entry(site).or_insert(0) += 1;
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// The `n` most frequent sites, most frequent first (ties in site order).
    pub fn top(&self, n: usize) -> Vec<(ExitSite, u64)> {
        let mut sites: Vec<(ExitSite, u64)> = self.by_site.iter().map(|(s, c)| (*s, *c)).collect();
        sites.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        sites.truncate(n);
        sites
    }

    /// `N exits to the VMM; most: write 0xd0000050 x120, ...` for vCPU `index`.
    pub fn summary(&self, index: u8) -> String {
        let mut line = format!("vCPU {index}: {} exits to the VMM", self.total);
        let top = self.top(8);
        if !top.is_empty() {
            line.push_str("; most:");
            for (i, (site, count)) in top.iter().enumerate() {
                let sep = if i == 0 { " " } else { ", " };
                let _ = write!(line, "{sep}{site} x{count}");
            }
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_the_busiest_sites_first() {
        let mut t = ExitTally::default();
        for _ in 0..3 {
            t.record(ExitSite::PioOut(0x3f8));
        }
        t.record(ExitSite::MmioRead(0xd000_0070));
        for _ in 0..5 {
            t.record(ExitSite::MmioWrite(0xd000_0050));
        }
        assert_eq!(t.total(), 9);
        assert_eq!(
            t.summary(0),
            "vCPU 0: 9 exits to the VMM; most: write 0xd0000050 x5, out 0x3f8 x3, read 0xd0000070 x1"
        );
    }

    #[test]
    fn a_guest_naming_endless_addresses_is_counted_but_not_kept_apart() {
        let mut t = ExitTally::default();
        for a in 0..(MAX_SITES as u64 + 1000) {
            t.record(ExitSite::MmioRead(a * 8));
        }
        assert_eq!(t.total(), MAX_SITES as u64 + 1000);
        assert!(t.by_site.len() <= MAX_SITES + 1);
        assert_eq!(t.top(1), vec![(ExitSite::Other, 1000)]);
    }
}
