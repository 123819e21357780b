//! Free page reporting returns a guest's freed memory to the host: a default-size
//! partition fills 300 MiB of its tmpfs and deletes it, and the VMM's RSS (read from
//! /proc in the lab machine) drops by most of it within a minute. And the balloon target
//! set through the real supervisor (`Supervisor::set_balloon`, what memory balancing
//! sends): the guest gives the memory up and takes it back. Lab runner only (the RSS
//! sampler lives in the lab machine's init).

use bulkhead_tests::balloon::{measure, measure_target, FILL_MIB, TARGET_MIB};

#[test]
fn memory_a_guest_frees_leaves_the_vmm_process() {
    let r = measure(true);
    eprintln!("{}", r.out.summary());
    r.out.save_artifacts("lab_balloon");
    let mib = |k: Option<u64>| k.map(|k| k / 1024);
    eprintln!(
        "RSS MiB: idle {:?}, filled {:?}, after free {:?}; dropped within {:?} s; {} samples",
        mib(r.idle_kib),
        mib(r.filled_kib),
        mib(r.freed_kib),
        r.drop_s,
        r.samples.len()
    );
    assert!(
        r.bound,
        "the balloon driver did not bind\n{}",
        r.out.diagnostics()
    );
    assert!(
        r.filled_ok,
        "the fill failed in the guest\n{}",
        r.out.diagnostics()
    );
    let (Some(idle), Some(filled), Some(freed)) = (r.idle_kib, r.filled_kib, r.freed_kib) else {
        panic!(
            "missing RSS samples: {:?}\n{}",
            r.samples,
            r.out.diagnostics()
        );
    };
    // The fill really reached host memory...
    assert!(
        filled >= idle + FILL_MIB * 1024 * 3 / 4,
        "idle {idle} KiB, filled {filled} KiB"
    );
    // ...and two thirds of it left the process again.
    assert!(
        filled - freed >= FILL_MIB * 1024 * 2 / 3,
        "filled {filled} KiB, after the free {freed} KiB"
    );
    assert!(r.drop_s.is_some());
}

#[test]
fn a_balloon_target_set_by_the_supervisor_takes_memory_from_the_guest_and_gives_it_back() {
    let r = measure_target();
    eprintln!("{}", r.out.summary());
    eprintln!(
        "--- supervisor events ---\n{}",
        r.out.file_text("events.log")
    );
    r.out.save_artifacts("lab_balloon_target");
    eprintln!(
        "guest meminfo: before {:?}, inflated {:?}, deflated {:?}; VMM RSS KiB: idle {:?}, inflated {:?}; features {:?}",
        r.before, r.inflated, r.deflated, r.idle_rss_kib, r.inflated_rss_kib, r.features
    );
    assert_eq!(
        r.out.exit_code,
        0,
        "a step failed (the balloon never reached its target?):\n{}\n{}",
        r.out.file_text("events.log"),
        r.out.diagnostics()
    );
    assert_eq!(r.out.file_text("final.txt").trim(), "FINAL exited=0");
    // The driver negotiated deflate-on-OOM (bit 2) and free page reporting (bit 5).
    let features = r.features.clone().unwrap_or_default();
    assert_eq!(features.chars().nth(2), Some('1'), "features {features:?}");
    assert_eq!(features.chars().nth(5), Some('1'), "features {features:?}");
    let (Some(before), Some(inflated), Some(deflated)) = (r.before, r.inflated, r.deflated) else {
        panic!("missing guest meminfo lines\n{}", r.out.diagnostics());
    };
    let target_kib = u64::from(TARGET_MIB) * 1024;
    // With deflate-on-OOM, Linux counts ballooned pages as used instead of taking them
    // off MemTotal (virtio_balloon.c: adjust_managed_page_count only without it): the
    // guest sees the balloon in MemAvailable, and MemTotal may not grow.
    assert!(
        inflated.total_kib <= before.total_kib,
        "MemTotal grew: {before:?} -> {inflated:?}"
    );
    let taken = before.available_kib.saturating_sub(inflated.available_kib);
    assert!(
        taken >= target_kib * 85 / 100 && taken <= target_kib * 115 / 100,
        "the guest lost {taken} KiB of MemAvailable for a {target_kib} KiB balloon: {before:?} -> {inflated:?}"
    );
    // Target 0 gives it all back.
    assert_eq!(deflated.total_kib, before.total_kib);
    assert!(
        deflated.available_kib + 64 * 1024 >= before.available_kib,
        "MemAvailable after deflating: {before:?} -> {deflated:?}"
    );
    // The host never held the balloon: the VMM's RSS stays near its idle figure while
    // the guest believes it gave 512 MiB away (the inflated pages are discarded).
    let (Some(idle), Some(peak)) = (r.idle_rss_kib, r.inflated_rss_kib) else {
        panic!(
            "missing RSS samples: {:?}\n{}",
            r.samples,
            r.out.diagnostics()
        );
    };
    assert!(
        peak <= idle + 64 * 1024,
        "VMM RSS idle {idle} KiB, with the balloon inflated {peak} KiB"
    );
}
