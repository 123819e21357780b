//! The memory-balloon measurement shared by `lab_balloon` (the test) and `balloon-bench`:
//! boot the default initramfs in a partition of the default size, let it idle, fill
//! `FILL_MIB` of its tmpfs and delete it, and follow the VMM's RSS from the lab machine.

use crate::lab::{parse_rss_log, run_guest, GuestRun, RssSample, RunOutput, READY_MARKER};

/// RAM of a partition with the policy's default `memory_mib`.
pub const DEFAULT_PARTITION_MIB: u64 = 1024;
/// What the guest allocates and frees.
pub const FILL_MIB: u64 = 300;
/// Seconds the guest idles after boot, stays filled, and waits after the free.
const IDLE_S: u64 = 25;
const FILLED_S: u64 = 10;
const FREED_S: u64 = 60;

/// What one run saw, in KiB of the VMM's RSS.
#[derive(Debug)]
pub struct BalloonRun {
    pub balloon: bool,
    /// The guest's driver bound the device.
    pub bound: bool,
    /// The fill completed in the guest.
    pub filled_ok: bool,
    /// Median over the idle phase's last 5 samples (after boot).
    pub idle_kib: Option<u64>,
    /// Largest while the file existed.
    pub filled_kib: Option<u64>,
    /// The last sample after the free (end of the wait).
    pub freed_kib: Option<u64>,
    /// Seconds after the free until RSS had dropped by two thirds of the fill.
    pub drop_s: Option<f64>,
    pub samples: Vec<RssSample>,
    pub out: RunOutput,
}

fn script() -> String {
    format!(
        r#"
ls /sys/bus/virtio/drivers/virtio_balloon/ 2>/dev/null | grep -q virtio && echo BALLOON-BOUND
echo PHASE-IDLE
sleep {IDLE_S}
echo PHASE-FILL
mount -o remount,size=90% /tmp
dd if=/dev/zero of=/tmp/fill bs=1M count={FILL_MIB} 2>/dev/null && echo FILLED-OK
echo PHASE-FILLED
sleep {FILLED_S}
rm -f /tmp/fill
echo PHASE-FREED
sleep {FREED_S}
echo PHASE-END
poweroff -f
"#
    )
}

/// One bounded lab run: with `balloon` false the guest leaves the balloon's driver out
/// (`bulkhead.balloon=off`), everything else identical.
pub fn measure(balloon: bool) -> BalloonRun {
    let mut cmdline = vmm_core::launch::DEFAULT_CMDLINE.to_string();
    if !balloon {
        cmdline.push_str(" bulkhead.balloon=off");
    }
    let run = GuestRun {
        mem_mib: DEFAULT_PARTITION_MIB,
        cmdline,
        test_script: script(),
        timeout_s: 300,
        sample_rss: true,
        ..GuestRun::default()
    };
    let out = run_guest(&run);
    let samples = out
        .files
        .get("rss.log")
        .map(|b| parse_rss_log(&String::from_utf8_lossy(b)))
        .unwrap_or_default();
    let in_phase = |p: &'static str| samples.iter().filter(move |s| s.phase == p);
    let mut idle: Vec<u64> = in_phase("PHASE-IDLE").map(|s| s.rss_kib).collect();
    let idle = idle.split_off(idle.len().saturating_sub(5));
    let idle_kib = median(idle);
    let filled_kib = in_phase("PHASE-FILLED").map(|s| s.rss_kib).max();
    let freed: Vec<&RssSample> = in_phase("PHASE-FREED")
        .chain(in_phase("PHASE-END"))
        .collect();
    let freed_kib = freed.last().map(|s| s.rss_kib);
    let drop_s = match (filled_kib, freed.first()) {
        (Some(filled), Some(first)) => freed
            .iter()
            .find(|s| filled.saturating_sub(s.rss_kib) >= FILL_MIB * 1024 * 2 / 3)
            .map(|s| s.uptime_s - first.uptime_s),
        _ => None,
    };
    BalloonRun {
        balloon,
        bound: out.serial.contains("BALLOON-BOUND") && out.serial.contains(READY_MARKER),
        filled_ok: out.serial.contains("FILLED-OK"),
        idle_kib,
        filled_kib,
        freed_kib,
        drop_s,
        samples,
        out,
    }
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}
