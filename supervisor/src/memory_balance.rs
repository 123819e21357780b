//! Memory balancing between running partitions (issue 17; Qubes' `qmemman` is the
//! model): when the host runs short, the partitions' balloons inflate, each in
//! proportion to its room above its minimum, and when the host has plenty again they
//! deflate. The mechanism is the VMM's (`Command::SetBalloon`, the virtio-balloon
//! target); this is the policy: [`plan`] is a pure function from the host's memory and
//! the partitions' balloon states to new targets, and [`HostMemory::read`] the one
//! `/proc/meminfo` read. The supervisor applies a plan about every
//! [`BALANCE_PERIOD`] (`Supervisor::balance_memory`, `start_memory_balancer`).
//!
//! Thresholds (fractions of `MemTotal`, on `MemAvailable`):
//!
//! - below [`INFLATE_BELOW_PERCENT`] the host is short: the balloons together grow by the
//!   shortfall to [`INFLATE_GOAL_PERCENT`] (aiming above the trigger, so one step is
//!   enough and the next tick does not inflate again for nothing);
//! - above [`DEFLATE_ABOVE_PERCENT`] the host has plenty: every balloon empties;
//! - in between nothing changes (the hysteresis band: no flapping between two ticks).
//!
//! A balloon never pushes a partition below its minimum (`memory_min_mib`) and never
//! holds more than the guest's RAM above that minimum; changes smaller than
//! [`MIN_STEP_MIB`] are not sent.

use std::time::Duration;

/// How often the supervisor re-plans.
pub const BALANCE_PERIOD: Duration = Duration::from_secs(2);
/// The host is short when `MemAvailable` is below this share of `MemTotal`, %.
pub const INFLATE_BELOW_PERCENT: u64 = 15;
/// When inflating, aim for this much available, % of `MemTotal` (between the two
/// thresholds).
pub const INFLATE_GOAL_PERCENT: u64 = 20;
/// The host has plenty when `MemAvailable` is above this share of `MemTotal`, %: every
/// balloon deflates fully.
pub const DEFLATE_ABOVE_PERCENT: u64 = 30;
/// Target changes smaller than this are not worth a command (and a guest's driver
/// moving a few pages would otherwise re-trigger them).
pub const MIN_STEP_MIB: u32 = 16;

/// The host's memory, from `/proc/meminfo`, MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    pub total_mib: u64,
    pub available_mib: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MeminfoError {
    #[error("reading /proc/meminfo: {0}")]
    Read(String),
    #[error("/proc/meminfo has no usable `{0}` line")]
    Missing(&'static str),
}

impl HostMemory {
    /// Reads `/proc/meminfo`.
    pub fn read() -> Result<HostMemory, MeminfoError> {
        let text = std::fs::read_to_string("/proc/meminfo")
            .map_err(|e| MeminfoError::Read(e.to_string()))?;
        HostMemory::parse(&text)
    }

    /// `MemTotal` and `MemAvailable` (`NAME:  VALUE kB` lines) of a meminfo text. A line
    /// that does not parse is skipped; a missing or zero `MemTotal` or a missing
    /// `MemAvailable` (kernels before 3.14) is an error, so nothing is planned on
    /// figures that are not there. `MemAvailable` is clamped to `MemTotal`.
    pub fn parse(text: &str) -> Result<HostMemory, MeminfoError> {
        let field = |name: &str| {
            text.lines().find_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix(':')?;
                let mut words = rest.split_whitespace();
                let value: u64 = words.next()?.parse().ok()?;
                match words.next() {
                    Some("kB") | None => Some(value / 1024),
                    Some(_) => None,
                }
            })
        };
        let total_mib = field("MemTotal")
            .filter(|&t| t > 0)
            .ok_or(MeminfoError::Missing("MemTotal"))?;
        let available_mib = field("MemAvailable").ok_or(MeminfoError::Missing("MemAvailable"))?;
        Ok(HostMemory {
            total_mib,
            available_mib: available_mib.min(total_mib),
        })
    }

    fn percent(&self, p: u64) -> u64 {
        self.total_mib.saturating_mul(p) / 100
    }
}

/// One running partition as the balancer sees it, MiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalloonState {
    pub name: String,
    /// Guest RAM it booted with (`memory_mib`): what it has with an empty balloon.
    pub max_mib: u32,
    /// The least it keeps (`memory_min_mib`).
    pub min_mib: u32,
    /// The balloon target last sent (0: none).
    pub target_mib: u32,
    /// What the guest's driver last said its balloon holds (`None`: not heard yet).
    pub actual_mib: Option<u32>,
}

impl BalloonState {
    /// The most its balloon may hold: the guest's RAM above its minimum.
    pub fn room_mib(&self) -> u32 {
        self.max_mib.saturating_sub(self.min_mib)
    }

    /// Asked for but not given back yet (all of the target while the guest's size is
    /// not known): the host gets it once the guest catches up, so it is not asked of
    /// anyone again. (A guest that deflated under its own memory pressure, or has no
    /// balloon driver, keeps this above 0: the balancer then asks the others for less,
    /// never more.)
    fn pending_mib(&self) -> u64 {
        u64::from(self.target_mib.saturating_sub(self.actual_mib.unwrap_or(0)))
    }
}

/// New balloon targets for the partitions whose target should change (or be sent again,
/// see below), in input order. Pure: same inputs, same plan.
pub fn plan(host: HostMemory, partitions: &[BalloonState]) -> Vec<(String, u32)> {
    let targets: Vec<u32> = if host.available_mib > host.percent(DEFLATE_ABOVE_PERCENT) {
        vec![0; partitions.len()]
    } else if host.available_mib < host.percent(INFLATE_BELOW_PERCENT) {
        inflate(host, partitions)
    } else {
        // The band between the thresholds: keep what is there (clamped, should a limit
        // have changed under a running partition).
        partitions
            .iter()
            .map(|p| p.target_mib.min(p.room_mib()))
            .collect()
    };
    partitions
        .iter()
        .zip(targets)
        .filter(|(p, t)| {
            let step = p.target_mib.abs_diff(*t);
            // Emptying the balloon always goes out, however small; so does a move back
            // inside the limits. A guest holding well above the target (a clone restored
            // from a snapshot taken while inflated: the supervisor starts each process
            // at 0) is sent the target again; the device ignores a target it has.
            let above = p
                .actual_mib
                .is_some_and(|a| a >= t.saturating_add(MIN_STEP_MIB));
            step >= MIN_STEP_MIB || (*t == 0 && step > 0) || p.target_mib > p.room_mib() || above
        })
        .map(|(p, t)| (p.name.clone(), t))
        .collect()
}

/// Targets that take the shortfall (up to [`INFLATE_GOAL_PERCENT`] available, less what
/// is already asked for and on its way) out of the partitions, on top of what their
/// balloons already hold. Shared in proportion to room above the minimum: every
/// partition ends at the same fraction `f` of its room, except that a balloon already
/// fuller than that keeps what it holds (nothing deflates while the host is short).
fn inflate(host: HostMemory, partitions: &[BalloonState]) -> Vec<u32> {
    let current: Vec<u64> = partitions
        .iter()
        .map(|p| u64::from(p.target_mib.min(p.room_mib())))
        .collect();
    let rooms: Vec<u64> = partitions.iter().map(|p| u64::from(p.room_mib())).collect();
    let pending: u64 = partitions.iter().map(BalloonState::pending_mib).sum();
    let shortfall = host
        .percent(INFLATE_GOAL_PERCENT)
        .saturating_sub(host.available_mib)
        .saturating_sub(pending);
    let held: u64 = current.iter().sum();
    let want = (held + shortfall).min(rooms.iter().sum());
    let at = |f: f64| -> Vec<u64> {
        rooms
            .iter()
            .zip(&current)
            .map(|(&room, &cur)| cur.max((f * room as f64) as u64).min(room))
            .collect()
    };
    if want <= held {
        return current.iter().map(|&c| c as u32).collect();
    }
    let full = at(1.0);
    if full.iter().sum::<u64>() <= want {
        return full.into_iter().map(|t| t as u32).collect();
    }
    // The largest f whose targets add up to at most `want` (bisection; the sum grows
    // with f).
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..64 {
        let mid = (lo + hi) / 2.0;
        if at(mid).iter().sum::<u64>() <= want {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    at(lo).into_iter().map(|t| t as u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(total: u64, available: u64) -> HostMemory {
        HostMemory {
            total_mib: total,
            available_mib: available,
        }
    }

    /// A partition whose guest has caught up with its target.
    fn part(name: &str, max: u32, min: u32, target: u32) -> BalloonState {
        BalloonState {
            name: name.into(),
            max_mib: max,
            min_mib: min,
            target_mib: target,
            actual_mib: Some(target),
        }
    }

    const MEMINFO: &str = "MemTotal:       16283716 kB\nMemFree:         1043340 kB\n\
                           MemAvailable:    8131432 kB\nBuffers:          402364 kB\n";

    #[test]
    fn meminfo_gives_total_and_available_in_mib() {
        assert_eq!(
            HostMemory::parse(MEMINFO),
            Ok(HostMemory {
                total_mib: 15902,
                available_mib: 7940
            })
        );
    }

    #[test]
    fn meminfo_without_the_figures_or_with_garbage_is_an_error_not_a_plan() {
        assert_eq!(
            HostMemory::parse("MemFree: 5 kB\n"),
            Err(MeminfoError::Missing("MemTotal"))
        );
        assert_eq!(
            HostMemory::parse("MemTotal: 1000000 kB\nMemAvailable: lots kB\n"),
            Err(MeminfoError::Missing("MemAvailable"))
        );
        assert_eq!(
            HostMemory::parse("MemTotal: 0 kB\nMemAvailable: 0 kB\n"),
            Err(MeminfoError::Missing("MemTotal"))
        );
        assert_eq!(
            HostMemory::parse("MemTotal: 5 MB\nMemAvailable: 5 kB\n"),
            Err(MeminfoError::Missing("MemTotal"))
        );
        // A prefix is not the field; more available than total is clamped.
        let h = HostMemory::parse("MemTotalX: 1 kB\nMemTotal: 2048 kB\nMemAvailable: 4096 kB\n");
        assert_eq!(
            h,
            Ok(HostMemory {
                total_mib: 2,
                available_mib: 2
            })
        );
        assert!(HostMemory::parse("\u{0}\u{ff}garbage:::\n").is_err());
    }

    #[test]
    fn nothing_inflates_while_the_host_has_plenty() {
        let ps = [part("a", 2048, 512, 0), part("b", 1024, 256, 0)];
        assert!(plan(host(16_000, 8_000), &ps).is_empty());
        // In the band between the thresholds nothing starts either.
        assert!(plan(host(16_000, 3_000), &ps).is_empty());
    }

    #[test]
    fn under_pressure_inflation_is_shared_in_proportion_to_the_room_above_the_minimum() {
        // 16000 MiB host with 1600 available (10 %): short of 20 % by 1600 MiB.
        let ps = [
            part("a", 2048, 512, 0),  // room 1536
            part("b", 1024, 256, 0),  // room 768
            part("c", 512, 512, 0),   // room 0
            part("d", 4096, 3328, 0), // room 768
        ];
        let got = plan(host(16_000, 1_600), &ps);
        let t = |n: &str| got.iter().find(|(m, _)| m == n).map(|(_, t)| *t);
        // 1600 * 1536 / 3072 = 800; 1600 * 768 / 3072 = 400.
        assert_eq!(t("a"), Some(800));
        assert_eq!(t("b"), Some(400));
        assert_eq!(t("c"), None, "no room: left alone");
        assert_eq!(t("d"), Some(400));
    }

    #[test]
    fn under_severe_pressure_every_partition_goes_down_to_its_minimum_and_no_further() {
        let ps = [part("a", 2048, 512, 0), part("b", 1024, 256, 100)];
        let got = plan(host(16_000, 10), &ps);
        assert_eq!(got, [("a".to_string(), 1536), ("b".to_string(), 768)]);
    }

    #[test]
    fn plenty_again_deflates_every_balloon_fully() {
        let ps = [
            part("a", 2048, 512, 800),
            part("b", 1024, 256, 3),
            part("c", 1024, 256, 0),
        ];
        let got = plan(host(16_000, 6_000), &ps);
        assert_eq!(got, [("a".to_string(), 0), ("b".to_string(), 0)]);
    }

    #[test]
    fn the_band_between_the_thresholds_keeps_the_balloons_as_they_are() {
        // After inflating to 20 % available the host sits in the band: no change, no
        // deflate-then-inflate flapping.
        let ps = [part("a", 2048, 512, 800), part("b", 1024, 256, 400)];
        assert!(plan(host(16_000, 3_200), &ps).is_empty());
        assert!(plan(host(16_000, 2_400), &ps).is_empty());
        assert!(plan(host(16_000, 4_800), &ps).is_empty());
    }

    #[test]
    fn a_target_above_a_lowered_limit_is_brought_back_inside_it() {
        let ps = [part("a", 1024, 900, 500)];
        assert_eq!(plan(host(16_000, 3_200), &ps), [("a".to_string(), 124)]);
    }

    #[test]
    fn a_guest_holding_far_more_than_its_target_is_sent_the_target_again() {
        // A disposable restored from a snapshot taken with 600 MiB in its balloon: its
        // new process starts at target 0 as far as the supervisor knows.
        let mut p = part("disp2", 2048, 512, 0);
        p.actual_mib = Some(600);
        assert_eq!(
            plan(host(16_000, 8_000), &[p.clone()]),
            [("disp2".to_string(), 0)]
        );
        assert_eq!(
            plan(host(16_000, 3_200), &[p.clone()]),
            [("disp2".to_string(), 0)]
        );
        // A few pages above while it deflates: not worth a command.
        p.actual_mib = Some(10);
        assert!(plan(host(16_000, 8_000), &[p]).is_empty());
    }

    #[test]
    fn small_steps_are_not_sent() {
        // 16000 MiB, 2390 available: short of 20 % by 810 MiB; room 1536.
        let ps = [part("a", 2048, 512, 800)];
        assert_eq!(plan(host(16_000, 2_390), &ps), [("a".to_string(), 1536)]);
        let ps = [part("a", 2048, 512, 1530)];
        assert!(
            plan(host(16_000, 2_390), &ps).is_empty(),
            "6 MiB is no step"
        );
    }

    #[test]
    fn memory_asked_for_and_still_on_its_way_is_not_asked_for_again() {
        // 16000 MiB with 1600 available: 1600 short. `a` was just asked for 1000 and has
        // given 200 so far: 800 are still coming, so only 800 more are asked of anyone.
        let mut a = part("a", 4096, 512, 1000);
        a.actual_mib = Some(200);
        let ps = [a, part("b", 4096, 512, 0)];
        let got = plan(host(16_000, 1_600), &ps);
        let total: u32 = got.iter().map(|(_, t)| *t).sum::<u32>()
            + if got.iter().any(|(n, _)| n == "a") {
                0
            } else {
                1000
            };
        assert!((1790..=1800).contains(&total), "{got:?}");
        // A partition already fuller than its share keeps its balloon; the other one
        // takes the rest.
        assert!(got.iter().all(|(n, _)| n == "b"), "{got:?}");
    }

    fn arb_partitions() -> impl Strategy<Value = Vec<BalloonState>> {
        proptest::collection::vec(
            (128u32..8192, 0u32..8192, 0u32..9000).prop_map(|(max, min, target)| {
                let min = min.min(max);
                part("p", max, min, target)
            }),
            0..8,
        )
    }

    fn named(ps: &[BalloonState]) -> Vec<BalloonState> {
        ps.iter()
            .enumerate()
            .map(|(i, p)| BalloonState {
                name: i.to_string(),
                ..p.clone()
            })
            .collect()
    }

    fn index(name: &str) -> usize {
        name.parse().expect("a test partition's name is its index")
    }

    proptest! {
        #[test]
        fn targets_never_push_a_partition_below_its_minimum_nor_above_its_max(
            total in 1u64..200_000,
            avail_frac in 0u64..=100,
            ps in arb_partitions(),
        ) {
            let ps = named(&ps);
            let h = host(total, total * avail_frac / 100);
            for (name, t) in plan(h, &ps) {
                let p = &ps[index(&name)];
                prop_assert!(t <= p.room_mib(), "{:?} -> {}", p, t);
                prop_assert!(p.max_mib - t >= p.min_mib, "{:?} -> {}", p, t);
                let resent = p.actual_mib.is_some_and(|a| a >= t + MIN_STEP_MIB);
                prop_assert!(t != p.target_mib || resent, "no-op sent for {:?}", p);
            }
        }

        #[test]
        fn nothing_inflates_unless_the_host_is_short(
            total in 1u64..200_000,
            avail_frac in INFLATE_BELOW_PERCENT..=100,
            ps in arb_partitions(),
        ) {
            let ps = named(&ps);
            let h = host(total, (total * avail_frac).div_ceil(100));
            for (name, t) in plan(h, &ps) {
                let p = &ps[index(&name)];
                prop_assert!(t <= p.target_mib, "{:?} inflated to {}", p, t);
            }
        }

        #[test]
        fn a_plan_applied_is_stable_on_the_next_tick(
            total in 1000u64..200_000,
            avail_frac in 0u64..=100,
            ps in arb_partitions(),
        ) {
            // The same host figures on the next tick (the guests have not given
            // anything back yet): nothing more to ask.
            let ps = named(&ps);
            let h = host(total, total * avail_frac / 100);
            let mut after = ps.clone();
            for (name, t) in plan(h, &ps) {
                after[index(&name)].target_mib = t;
            }
            // (A deflating guest may be sent its target again; nothing changes.)
            let again = plan(h, &after);
            prop_assert!(
                again.iter().all(|(name, t)| *t == after[index(name)].target_mib),
                "{:?} then {:?}", after, again
            );
        }

        #[test]
        fn inflation_under_pressure_is_proportional_to_room(
            total in 10_000u64..200_000,
            rooms in proptest::collection::vec(0u32..4096, 1..6),
        ) {
            let ps: Vec<BalloonState> = rooms
                .iter()
                .enumerate()
                .map(|(i, &r)| part(&i.to_string(), 512 + r, 512, 0))
                .collect();
            let h = host(total, total * 5 / 100);
            let total_room: u64 = rooms.iter().map(|&r| u64::from(r)).sum();
            let want = (h.percent(INFLATE_GOAL_PERCENT) - h.available_mib).min(total_room);
            let got = plan(h, &ps);
            for (name, t) in &got {
                let r = u64::from(rooms[index(name)]);
                let exact = want * r / total_room;
                // Floors leave up to a MiB per partition, which the largest f hands on.
                prop_assert!(u64::from(*t).abs_diff(exact) <= rooms.len() as u64, "room {} of {}: {} vs {}", r, total_room, t, exact);
            }
            let given: u64 = got.iter().map(|(_, t)| u64::from(*t)).sum();
            // Short by at most the floors and the steps too small to send.
            let slack = rooms.len() as u64 * (u64::from(MIN_STEP_MIB) + 1);
            prop_assert!(given <= want && given + slack >= want, "{} of {}", given, want);
        }

        #[test]
        fn meminfo_parsing_never_panics(text in ".{0,400}") {
            let _ = HostMemory::parse(&text);
        }
    }
}
