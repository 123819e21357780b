//! `bulkhead ps` and `bulkhead up`'s status lines, with real partition processes (the
//! test card, which runs on a software-only KVM too): each names its partition in
//! `ps` and `top`, and the listings show its state, pid, host memory and cgroup.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bulkhead() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bulkhead"))
}

fn ps(dir: &std::path::Path) -> String {
    let out = bulkhead()
        .args(["ps", "--all", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The `bulkhead ps` row of partition `name`, split into columns.
fn row(listing: &str, name: &str) -> Option<Vec<String>> {
    listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
}

#[test]
fn ps_and_up_list_each_partition_with_its_pid_memory_and_cgroup_and_the_title_names_it() {
    let dir = tempfile::tempdir().unwrap();
    // Unique names: other tests' partitions may run meanwhile.
    let names = [
        format!("psa{}", std::process::id()),
        format!("psb{}", std::process::id()),
    ];
    let toml: String = names
        .iter()
        .map(|n| {
            format!("[partition.{n}]\nlabel = \"green\"\nmemory_mib = 64\ncpu_weight = 300\n\n")
        })
        .collect();
    std::fs::write(dir.path().join("partitions.toml"), toml).unwrap();

    let mut up = bulkhead()
        .args(["up", "--all", "--test-card", "--for", "60", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let listing = loop {
        let listing = ps(dir.path());
        if names
            .iter()
            .all(|n| row(&listing, n).is_some_and(|r| r[1] == "running"))
        {
            break listing;
        }
        assert!(
            Instant::now() < deadline,
            "partitions not listed as running:\n{listing}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(listing.starts_with("NAME"), "{listing}");
    for name in &names {
        let r = row(&listing, name).unwrap();
        let pid: u32 = r[2].parse().unwrap();
        // `ps -ef` shows argv: the supervisor titles the process with its partition.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap();
        assert_eq!(argv0, format!("bulkhead-vmm: {name}").as_bytes());
        // `top` shows the VM process's name, which the VMM sets once it knows it.
        let vm = bulkhead_supervisor::vm_process(pid);
        let comm = std::fs::read_to_string(format!("/proc/{vm}/comm")).unwrap();
        let expected: String = format!("vmm:{name}").chars().take(15).collect();
        assert_eq!(comm.trim(), expected);
        // Host memory, in MiB: at least the VMM itself.
        assert_eq!(r[4], "MiB", "{r:?}");
        let rss_mib: u64 = r[3].parse().unwrap();
        let rss_kib = bulkhead_supervisor::usage::rss_kib(vm).unwrap();
        eprintln!(
            "{name}: pid {pid}, VM process {vm}, RSS {rss_kib} KiB (64 MiB guest RAM, \
             1280x800 framebuffer = 4000 KiB)"
        );
        assert!(rss_mib > 0 && rss_mib <= 64 + 4 + 256, "{r:?}");
        // Its cgroup: where the host allows one, the partition's own.
        let cgroup = &r[5];
        let own = bulkhead_supervisor::cgroup::cgroup_of(pid).unwrap();
        assert_eq!(cgroup, &own);
        match bulkhead_supervisor::cgroup::CgroupBase::for_host() {
            Ok(_) => assert!(
                cgroup.ends_with(&format!("/{name}")),
                "{name} not in its own cgroup: {cgroup}"
            ),
            Err(why) => eprintln!("SKIPPED cgroup placement: {why}"),
        }
    }

    // SIGINT: `up` stops its partitions and prints their final states.
    // SAFETY: kill(2) on the pid of a child this test spawned and has not waited for.
    unsafe { libc::kill(up.id() as i32, libc::SIGINT) };
    let status = up.wait().unwrap();
    let mut out = String::new();
    up.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut err = String::new();
    up.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{out}\n{err}");
    // The first table is printed once all run, the last after they stopped.
    let (running, _) = out.split_once("\n\n").unwrap();
    let (_, stopped) = out.trim_end().rsplit_once("\n\n").unwrap();
    for name in &names {
        let r = row(running, name).unwrap_or_else(|| panic!("{out}"));
        assert_eq!(r[1], "running", "{out}");
        assert!(r[2].parse::<u32>().is_ok(), "a pid: {out}");
        assert_eq!(r[4], "MiB", "{out}");
        if bulkhead_supervisor::cgroup::CgroupBase::for_host().is_ok() {
            assert!(r[5].ends_with(&format!("bulkhead/{name}")), "{out}");
            let cgroup_dir = std::path::PathBuf::from(&r[5]);
            assert!(!cgroup_dir.exists(), "{} left behind", cgroup_dir.display());
        }
        let r = row(stopped, name).unwrap_or_else(|| panic!("{out}"));
        assert_eq!(&r[1..], ["stopped", "-", "-", "-"], "{out}");
    }
    let after = ps(dir.path());
    for name in &names {
        assert_eq!(row(&after, name).unwrap()[1], "stopped", "{after}");
    }
}
