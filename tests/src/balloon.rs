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

/// Runs `run` (which samples the VMM's RSS) and parses its `rss.log`.
fn run_sampled(run: &GuestRun) -> (RunOutput, Vec<RssSample>) {
    let out = run_guest(run);
    let samples = out
        .files
        .get("rss.log")
        .map(|b| parse_rss_log(&String::from_utf8_lossy(b)))
        .unwrap_or_default();
    (out, samples)
}

/// Median of the VMM's RSS over the idle phase's last 5 samples, KiB.
fn idle_median(samples: &[RssSample]) -> Option<u64> {
    let mut idle: Vec<u64> = samples
        .iter()
        .filter(|s| s.phase == "PHASE-IDLE")
        .map(|s| s.rss_kib)
        .collect();
    median(idle.split_off(idle.len().saturating_sub(5)))
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
    let (out, samples) = run_sampled(&run);
    let in_phase = |p: &'static str| samples.iter().filter(move |s| s.phase == p);
    let idle_kib = idle_median(&samples);
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

/// What the host asks the balloon to hold in [`measure_target`], MiB.
pub const TARGET_MIB: u32 = 512;

/// The guest side of [`measure_target`]: its balloon driver's feature bits, then its
/// memory figures before, while and after the host inflates the balloon, each step
/// waiting for the host's word on `/dev/hvc0`.
fn target_script() -> String {
    r#"
mi() { awk '/^(MemTotal|MemFree|MemAvailable):/ { printf "%s%s ", $1, $2 } END { print "" }' /proc/meminfo; }
bal=$(ls -d /sys/bus/virtio/drivers/virtio_balloon/virtio* 2>/dev/null | head -n 1)
echo "BALLOON-FEATURES[$(cat $bal/features 2>/dev/null)]"
exec 3<>/dev/hvc0
stty raw -echo <&3 && echo CONSOLE-RAW
echo PHASE-IDLE
sleep 10
echo "MEMINFO-BEFORE $(mi)"
echo INFLATE-NOW
read -r line <&3
echo "HOST-SAID[$line]"
echo PHASE-INFLATED
sleep 10
echo "MEMINFO-INFLATED $(mi)"
echo DEFLATE-NOW
read -r line <&3
echo "HOST-SAID[$line]"
echo PHASE-DEFLATED
sleep 3
echo "MEMINFO-DEFLATED $(mi)"
echo PHASE-END
sleep 1
poweroff -f
"#
    .to_string()
}

/// The supervisor's side of [`measure_target`] (`lab-supervise` steps).
fn target_steps() -> Vec<String> {
    [
        "wait-serial:INFLATE-NOW".to_string(),
        format!("balloon:{TARGET_MIB}"),
        format!("wait-balloon:{TARGET_MIB}"),
        "console:inflated\\n".into(),
        "wait-serial:DEFLATE-NOW".into(),
        "balloon:0".into(),
        "wait-balloon:0".into(),
        "console:deflated\\n".into(),
        "wait-serial:PHASE-END".into(),
        "wait-exit".into(),
    ]
    .to_vec()
}

/// `MemTotal`, `MemFree`, `MemAvailable` (KiB) from the guest's `TAG Name:value …` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestMeminfo {
    pub total_kib: u64,
    pub free_kib: u64,
    pub available_kib: u64,
}

/// The figures of the guest's serial line starting with `tag`, if it printed one.
pub fn guest_meminfo(serial: &str, tag: &str) -> Option<GuestMeminfo> {
    let line = serial
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(tag))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix(':')?.parse().ok())
    };
    Some(GuestMeminfo {
        total_kib: field("MemTotal")?,
        free_kib: field("MemFree")?,
        available_kib: field("MemAvailable")?,
    })
}

/// A forced balloon target through the real supervisor: what the guest and the host saw.
#[derive(Debug)]
pub struct TargetRun {
    /// The guest driver's feature bits as sysfs lists them (`0`/`1` per bit from 0).
    pub features: Option<String>,
    pub before: Option<GuestMeminfo>,
    pub inflated: Option<GuestMeminfo>,
    pub deflated: Option<GuestMeminfo>,
    /// Median of the VMM's RSS over the idle phase's last 5 samples, KiB.
    pub idle_rss_kib: Option<u64>,
    /// The VMM's largest RSS while the balloon was inflated, KiB.
    pub inflated_rss_kib: Option<u64>,
    pub samples: Vec<RssSample>,
    pub out: RunOutput,
}

/// One bounded lab run of a [`DEFAULT_PARTITION_MIB`] partition under `lab-supervise`:
/// the host sets the balloon to [`TARGET_MIB`], waits until the guest's driver holds it,
/// then sets it back to 0 and waits again; the guest prints its `/proc/meminfo` figures
/// around each step and the lab machine samples the VMM's RSS.
pub fn measure_target() -> TargetRun {
    let run = GuestRun {
        mem_mib: DEFAULT_PARTITION_MIB,
        test_script: target_script(),
        supervise: Some(target_steps()),
        timeout_s: 300,
        sample_rss: true,
        ..GuestRun::default()
    };
    let (out, samples) = run_sampled(&run);
    let in_phase = |p: &'static str| samples.iter().filter(move |s| s.phase == p);
    let idle = idle_median(&samples);
    let features = out.serial.lines().find_map(|l| {
        let rest = l.split_once("BALLOON-FEATURES[")?.1;
        Some(rest.split(']').next()?.to_string())
    });
    TargetRun {
        features,
        before: guest_meminfo(&out.serial, "MEMINFO-BEFORE "),
        inflated: guest_meminfo(&out.serial, "MEMINFO-INFLATED "),
        deflated: guest_meminfo(&out.serial, "MEMINFO-DEFLATED "),
        idle_rss_kib: idle,
        inflated_rss_kib: in_phase("PHASE-INFLATED").map(|s| s.rss_kib).max(),
        samples,
        out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_meminfo_lines_are_read_by_tag() {
        let serial =
            "noise\r\nMEMINFO-BEFORE MemTotal:1010000 MemFree:900000 MemAvailable:950000 \r\n\
                      MEMINFO-INFLATED MemTotal:1010000 MemFree:380000 MemAvailable:430000\n";
        assert_eq!(
            guest_meminfo(serial, "MEMINFO-BEFORE "),
            Some(GuestMeminfo {
                total_kib: 1_010_000,
                free_kib: 900_000,
                available_kib: 950_000
            })
        );
        assert_eq!(
            guest_meminfo(serial, "MEMINFO-INFLATED ").map(|m| m.available_kib),
            Some(430_000)
        );
        assert_eq!(guest_meminfo(serial, "MEMINFO-DEFLATED "), None);
        assert_eq!(
            guest_meminfo("MEMINFO-BEFORE MemTotal:x", "MEMINFO-BEFORE "),
            None
        );
    }
}
