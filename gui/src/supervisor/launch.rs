//! From resolved partition specs to partition-process launches.

use std::ffi::OsString;
use std::path::PathBuf;

use isolation_policy::PartitionSpec;
use vmm_core::hostcheck::{self, Virtualization};

use super::{LaunchSpec, RestartPolicy};

/// Automatic restarts of a crashing partition before it stays crashed.
const MAX_AUTO_RESTARTS: u32 = 3;

/// What the partitions boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The default guest image: Debian's kernel and the project's initramfs.
    Linux,
    /// The built-in test card micro-guest: a real KVM partition that runs even on a
    /// software-only KVM, where stock kernels cannot.
    TestCard,
}

impl Engine {
    /// Linux where the host has VT-x/AMD-V; the test card otherwise, with the reason.
    pub fn for_host() -> (Engine, Option<String>) {
        match hostcheck::open_kvm() {
            Ok((_, Virtualization::Hardware)) => (Engine::Linux, None),
            Ok((_, Virtualization::Software { name })) => (
                Engine::TestCard,
                Some(format!(
                    "{}; partitions run the built-in test card instead",
                    hostcheck::HostError::SoftwareOnly { name }
                )),
            ),
            Err(e) => (Engine::Linux, Some(e.to_string())),
        }
    }
}

/// The partition binary: `$BULKHEAD_VMM`, else next to this executable (`/usr/bin` or
/// `target/<profile>`; for test binaries in `deps/`, one level up), else on PATH.
pub fn vmm_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BULKHEAD_VMM") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().ok();
    let dirs = exe
        .iter()
        .flat_map(|e| e.ancestors().skip(1).take(2))
        .map(|d| d.join("bulkhead-vmm"));
    for candidate in dirs {
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from("bulkhead-vmm")
}

pub fn launch_spec(spec: &PartitionSpec, engine: Engine) -> LaunchSpec {
    let mut args: Vec<OsString> = vec![
        "run".into(),
        format!("--name={}", spec.name).into(),
        format!("--mem={}M", spec.memory_mib).into(),
        format!("--vcpus={}", spec.vcpus).into(),
        format!("--display={}x{}", spec.display_width, spec.display_height).into(),
        "--serial=-".into(),
    ];
    match engine {
        Engine::Linux if !spec.cmdline_extra.is_empty() => args.push(
            format!(
                "--cmdline={} {}",
                vmm_core::cli::DEFAULT_CMDLINE,
                spec.cmdline_extra
            )
            .into(),
        ),
        Engine::Linux => {}
        Engine::TestCard => args.push("--test-card".into()),
    }
    LaunchSpec {
        name: spec.name.clone(),
        program: vmm_binary(),
        args,
        restart: match spec.restart {
            isolation_policy::RestartPolicy::Never => RestartPolicy::Never,
            isolation_policy::RestartPolicy::OnCrash => RestartPolicy::OnCrash {
                max_retries: MAX_AUTO_RESTARTS,
            },
        },
    }
}
