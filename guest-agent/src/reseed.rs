//! Reseeding the guest kernel's random generator after a restore.
//!
//! A guest continued from a snapshot shares its kernel's CRNG state with every other
//! clone of that snapshot, so they would draw the same "random" numbers until the
//! kernel next reseeds on its own (up to a minute). The host sends fresh entropy with
//! `Restored`. Crediting it (`RNDADDENTROPY`) and forcing a reseed (`RNDRESEEDCRNG`)
//! need `CAP_SYS_ADMIN`, which the agent gives up as soon as its console is open; so
//! before that it forks this helper, which keeps root and does one thing only: read
//! entropy from a pipe, add it, reseed. It exits when the pipe closes (the agent ended).
//! Without the helper (the agent was not started as root) the bytes are written to
//! `/dev/urandom`, which mixes them in without a reseed.
//!
//! A clone's network identity is not its snapshot's either: after the reseed the helper
//! gives `eth0` (when there is one) a fresh random, locally administered MAC address,
//! drawn from the reseeded generator (never from the host's bytes, which stay secret).
//! virtio-net changes it live; the restored partition's new passt learns it from the
//! next frame, and the lease stays good (passt hands every guest the same address).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use bulkhead_agent_proto::MAX_ENTROPY;

/// `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// The agent's end of the helper's pipe, or the fallback.
pub enum Reseeder {
    Helper(File),
    Urandom,
}

impl Reseeder {
    /// Forks the root helper (call while still root and single-threaded).
    pub fn spawn() -> Reseeder {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Reseeder::Urandom;
        }
        let mut fds = [0; 2];
        // SAFETY: `fds` is an array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Reseeder::Urandom;
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the agent is single-threaded here (called before any thread or X
        // connection exists), so the child may run ordinary code after fork.
        match unsafe { libc::fork() } {
            0 => {
                drop(write);
                serve(File::from(read));
            }
            pid if pid > 0 => Reseeder::Helper(File::from(write)),
            _ => Reseeder::Urandom,
        }
    }

    /// Hands `entropy` (at most [`MAX_ENTROPY`] bytes) to the kernel.
    pub fn reseed(&mut self, entropy: &[u8]) -> std::io::Result<()> {
        let entropy = &entropy[..entropy.len().min(MAX_ENTROPY)];
        match self {
            // One write of at most MAX_ENTROPY (< PIPE_BUF) bytes arrives whole.
            Reseeder::Helper(pipe) => pipe.write_all(entropy),
            Reseeder::Urandom => File::options()
                .write(true)
                .open("/dev/urandom")
                .and_then(|mut f| f.write_all(entropy)),
        }
    }
}

/// The helper: never returns.
fn serve(mut pipe: File) -> ! {
    let mut buf = [0u8; MAX_ENTROPY];
    let random = File::options().write(true).open("/dev/urandom");
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Ok(random) = &random {
            add_and_reseed(random, &buf[..n]);
        }
        if std::path::Path::new("/sys/class/net/eth0").exists() {
            fresh_mac("eth0");
        }
    }
    // SAFETY: _exit ends the forked child without running the parent's atexit handlers.
    unsafe { libc::_exit(0) }
}

/// Gives `interface` a fresh random unicast, locally administered MAC (`SIOCSIFHWADDR`).
fn fresh_mac(interface: &str) {
    let mut mac = [0u8; 6];
    if getrandom(&mut mac).is_err() {
        say!("bulkhead-agent: no random bytes for a fresh MAC address");
        return;
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    match set_mac(interface, mac) {
        Ok(()) => say!(
            "bulkhead-agent: {interface} has a fresh address {}",
            mac.map(|b| format!("{b:02x}")).join(":")
        ),
        Err(e) => say!("bulkhead-agent: a fresh MAC address for {interface}: {e}"),
    }
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which we own.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    match usize::try_from(n) {
        Ok(n) if n == buf.len() => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn set_mac(interface: &str, mac: [u8; 6]) -> std::io::Result<()> {
    let name = interface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::other("interface name too long"));
    }
    // SAFETY: an all-zero ifreq is a valid value of this plain C struct.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: an all-zero sockaddr is a valid value of this plain C struct.
    let mut hwaddr: libc::sockaddr = unsafe { std::mem::zeroed() };
    hwaddr.sa_family = libc::ARPHRD_ETHER;
    for (dst, src) in hwaddr.sa_data.iter_mut().zip(mac) {
        *dst = src as libc::c_char;
    }
    // Writing a whole union field is safe; the kernel reads it as the hardware address.
    req.ifr_ifru.ifru_hwaddr = hwaddr;
    // SAFETY: socket() takes integers only.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: socket() returned a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `req` is a valid, NUL-terminated ifreq alive for the call; SIOCSIFHWADDR
    // only reads it.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFHWADDR, &req) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }` with the
/// bytes after it.
fn add_and_reseed(random: &File, bytes: &[u8]) {
    let mut info = Vec::with_capacity(8 + bytes.len());
    // Credit at most what was given: 8 bits a byte (the host's getrandom).
    info.extend_from_slice(&((bytes.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
    info.extend_from_slice(bytes);
    // The kernel reads buf_size bytes after the header, rounded up to whole u32s.
    info.resize(8 + bytes.len().div_ceil(4) * 4, 0);
    let fd = random.as_raw_fd();
    // SAFETY: `info` is a rand_pool_info header followed by buf_size readable bytes (and
    // padding to a u32), alive for the call; the kernel only reads it.
    let added = unsafe { libc::ioctl(fd, RNDADDENTROPY, info.as_ptr()) };
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let reseeded = unsafe { libc::ioctl(fd, RNDRESEEDCRNG) };
    if added != 0 || reseeded != 0 {
        say!(
            "bulkhead-agent: reseeding the kernel's random generator: {}",
            std::io::Error::last_os_error()
        );
    } else {
        say!(
            "bulkhead-agent: kernel random generator reseeded with {} bytes from the host",
            bytes.len()
        );
    }
}
