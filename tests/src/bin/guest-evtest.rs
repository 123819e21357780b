//! `guest-evtest`: runs inside the guest (static, std + libc) and prints what the guest
//! kernel's evdev layer says about an input device, the way `evtest` would:
//!
//! ```text
//! guest-evtest /dev/input/eventN
//! NAME[Bulkhead virtio tablet] ABS_X[min=0 max=1023] ABS_Y[min=0 max=767]
//! ```
//!
//! The ranges come from the guest's virtio-input driver, which read them from our
//! device's config space: this is how the tests see them from the guest's side.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use vmm_core::evdev::{ABS_X, ABS_Y};

/// `struct input_absinfo`.
#[repr(C)]
#[derive(Default)]
struct AbsInfo {
    value: i32,
    minimum: i32,
    maximum: i32,
    fuzz: i32,
    flat: i32,
    resolution: i32,
}

const IOC_READ: u64 = 2;

const fn ior_e(nr: u64, size: usize) -> u64 {
    (IOC_READ << 30) | ((size as u64) << 16) | ((b'E' as u64) << 8) | nr
}

fn name(fd: i32) -> std::io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: EVIOCGNAME(256) writes at most 256 bytes into the live buffer.
    let n = unsafe { libc::ioctl(fd, ior_e(0x06, buf.len()) as _, buf.as_mut_ptr()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

fn abs(fd: i32, axis: u16) -> std::io::Result<AbsInfo> {
    let mut info = AbsInfo::default();
    let request = ior_e(0x40 + u64::from(axis), std::mem::size_of::<AbsInfo>());
    // SAFETY: EVIOCGABS(axis) writes one `struct input_absinfo` into `info`.
    if unsafe { libc::ioctl(fd, request as _, &mut info as *mut AbsInfo) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info)
}

fn describe(path: &str) -> std::io::Result<String> {
    let file = File::open(path)?;
    let fd = file.as_raw_fd();
    let mut line = format!("NAME[{}]", name(fd)?);
    for (label, axis) in [("ABS_X", ABS_X), ("ABS_Y", ABS_Y)] {
        let a = abs(fd, axis)?;
        line += &format!(" {label}[min={} max={}]", a.minimum, a.maximum);
    }
    Ok(line)
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: guest-evtest /dev/input/eventN");
        return ExitCode::from(2);
    };
    match describe(&path) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("guest-evtest: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_input_h() {
        // EVIOCGNAME(256) and EVIOCGABS(ABS_Y) from <linux/input.h> on x86_64.
        assert_eq!(ior_e(0x06, 256), 0x8100_4506);
        assert_eq!(ior_e(0x41, std::mem::size_of::<AbsInfo>()), 0x8018_4541);
    }
}
