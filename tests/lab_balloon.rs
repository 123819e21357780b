//! Free page reporting returns a guest's freed memory to the host: a default-size
//! partition fills 300 MiB of its tmpfs and deletes it, and the VMM's RSS (read from
//! /proc in the lab machine) drops by most of it within a minute. Lab runner only (the
//! RSS sampler lives in the lab machine's init).

use bulkhead_tests::balloon::{measure, FILL_MIB};

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
