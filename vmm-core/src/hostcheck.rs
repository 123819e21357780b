//! What the host's `/dev/kvm` can do, said in one line.

use std::fs::{File, OpenOptions};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;

use kvm_ioctls::Kvm;

pub const KVM_PATH: &str = "/dev/kvm";
/// The only KVM API version there has ever been (`KVM_GET_API_VERSION`).
const KVM_API_VERSION: i32 = 12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Virtualization {
    /// VT-x or AMD-V: stock Linux guests run.
    Hardware,
    /// A software hypervisor behind /dev/kvm (e.g. kvm-pvm): only tiny guests run.
    Software { name: String },
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{KVM_PATH} does not exist: enable virtualization (Intel VT-x or AMD-V) in the firmware settings, then run \"sudo modprobe kvm_intel\" (or kvm_amd)")]
    NoKvm,
    #[error("permission denied opening {KVM_PATH}: your user {user:?} is not in the `kvm` group: run \"sudo usermod -aG kvm {user}\", then log out and back in")]
    NotPermitted { user: String },
    #[error("permission denied opening {KVM_PATH}: your user is in the `kvm` group, but this login session is not yet: log out and back in")]
    SessionNotInGroup,
    #[error("opening {KVM_PATH}: {0}")]
    Open(std::io::Error),
    #[error("{KVM_PATH} answers but KVM API version is unusable: {0}")]
    Api(kvm_ioctls::Error),
    #[error("no hardware virtualization: stock Linux guests cannot run on this host ({KVM_PATH} is {name}, a software hypervisor)")]
    SoftwareOnly { name: String },
}

/// Opens /dev/kvm and classifies it.
pub fn open_kvm() -> Result<(Kvm, Virtualization), HostError> {
    let (device, virt) = open_kvm_device()?;
    Ok((kvm_from_device(device.into())?, virt))
}

/// Like [`open_kvm`], but refuses a software-only KVM: for booting stock kernels.
pub fn open_kvm_for_linux() -> Result<Kvm, HostError> {
    kvm_from_device(open_kvm_device_for_linux()?.into())
}

/// Opens the /dev/kvm device file (to hand to a partition process) and classifies it.
pub fn open_kvm_device() -> Result<(File, Virtualization), HostError> {
    let device = match OpenOptions::new().read(true).write(true).open(KVM_PATH) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(HostError::NoKvm),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(permission_error())
        }
        Err(e) => return Err(HostError::Open(e)),
    };
    Ok((
        device,
        classify(Path::new("/proc/cpuinfo"), Path::new("/sys/module")),
    ))
}

/// Like [`open_kvm_device`], but refuses a software-only KVM.
pub fn open_kvm_device_for_linux() -> Result<File, HostError> {
    match open_kvm_device()? {
        (device, Virtualization::Hardware) => Ok(device),
        (_, Virtualization::Software { name }) => Err(HostError::SoftwareOnly { name }),
    }
}

/// The KVM system handle on an open /dev/kvm (opened here or handed over by the
/// supervisor), after checking it speaks the stable KVM API.
pub fn kvm_from_device(device: OwnedFd) -> Result<Kvm, HostError> {
    let fd = device.into_raw_fd();
    // SAFETY: `into_raw_fd` gave up ownership of this open fd, so the Kvm handle becomes
    // its only owner and closes it exactly once. A non-KVM fd makes the API-version
    // ioctl below fail; it cannot make Kvm touch memory it does not own.
    let kvm = unsafe { Kvm::from_raw_fd(fd) };
    match kvm.get_api_version() {
        KVM_API_VERSION => Ok(kvm),
        got if got < 0 => Err(HostError::Api(kvm_ioctls::Error::last())),
        _ => Err(HostError::Api(kvm_ioctls::Error::new(libc::EINVAL))),
    }
}

/// Tells "not in the group" apart from "in the group, but not in this session".
fn permission_error() -> HostError {
    let user = std::env::var("USER").unwrap_or_else(|_| "YOUR_USER".into());
    let listed = std::fs::read_to_string("/etc/group")
        .ok()
        .and_then(|g| {
            g.lines().find(|l| l.starts_with("kvm:")).map(|l| {
                l.rsplit(':')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .any(|m| m == user)
            })
        })
        .unwrap_or(false);
    if listed {
        HostError::SessionNotInGroup
    } else {
        HostError::NotPermitted { user }
    }
}

fn classify(cpuinfo: &Path, modules: &Path) -> Virtualization {
    if modules.join("kvm_pvm").exists() {
        return Virtualization::Software {
            name: "kvm-pvm".into(),
        };
    }
    let flags = std::fs::read_to_string(cpuinfo).unwrap_or_default();
    let hw = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hw {
        Virtualization::Hardware
    } else {
        Virtualization::Software {
            name: "a KVM without vmx/svm".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_module_means_software_even_with_svm_flags() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("kvm_pvm")).unwrap();
        let cpu = d.path().join("cpuinfo");
        std::fs::write(&cpu, "flags\t: fpu svm\n").unwrap();
        assert!(matches!(
            classify(&cpu, d.path()),
            Virtualization::Software { .. }
        ));
    }

    #[test]
    fn svm_or_vmx_flag_means_hardware() {
        let d = tempfile::tempdir().unwrap();
        let cpu = d.path().join("cpuinfo");
        std::fs::write(&cpu, "flags\t: fpu vmx sse\n").unwrap();
        assert_eq!(classify(&cpu, d.path()), Virtualization::Hardware);
        std::fs::write(&cpu, "flags\t: fpu sse\n").unwrap();
        assert!(matches!(
            classify(&cpu, d.path()),
            Virtualization::Software { .. }
        ));
    }

    #[test]
    fn software_only_message_is_the_one_line_users_see() {
        let e = HostError::SoftwareOnly {
            name: "kvm-pvm".into(),
        };
        let msg = e.to_string();
        assert!(msg
            .starts_with("no hardware virtualization: stock Linux guests cannot run on this host"));
        assert!(!msg.contains('\n'));
        let e = HostError::NotPermitted {
            user: "alice".into(),
        };
        assert!(e.to_string().contains("sudo usermod -aG kvm alice"), "{e}");
    }
}
