//! The default guest image: Debian's generic kernel and an initramfs made from
//! `busybox-static`, the virtio modules and the project's init, built from Debian
//! packages into the XDG cache and reused while its recipe is unchanged.

pub mod cpio;
pub mod vmlinux;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cpio::CpioWriter;

const INIT: &str = include_str!("../../../assets/guest/init");
const MODULES: &str = include_str!("../../../assets/guest/modules");
/// The guest-side programs a template partition runs after `switch_root` (init copies
/// them into the new root): path in the initramfs, contents.
const TEMPLATE_PROGRAMS: [(&str, &str); 5] = [
    (
        "bulkhead/stage2",
        include_str!("../../../assets/guest/bulkhead/stage2"),
    ),
    (
        "bulkhead/xorg-setup",
        include_str!("../../../assets/guest/bulkhead/xorg-setup"),
    ),
    (
        "bulkhead/session",
        include_str!("../../../assets/guest/bulkhead/session"),
    ),
    (
        "bulkhead/firefox-policies.json",
        include_str!("../../../assets/guest/bulkhead/firefox-policies.json"),
    ),
    (
        "bulkhead/firefox-prefs.js",
        include_str!("../../../assets/guest/bulkhead/firefox-prefs.js"),
    ),
];
/// DHCP on eth0; init runs it when the partition has a network device.
const NET_UP: &str = include_str!("../../../assets/guest/net-up");
const KERNEL_META_PACKAGE: &str = "linux-image-amd64";
const BUSYBOX_PACKAGE: &str = "busybox-static";
const STAMP: &str = "image.stamp";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("`{tool}` not found: the guest image is built from Debian packages; on Debian or Ubuntu install it (sudo apt-get install {package}), elsewhere pass --kernel and --initrd yourself")]
    MissingTool { tool: String, package: String },
    #[error("`{command}` failed: {detail}{hint}")]
    Command {
        command: String,
        detail: String,
        hint: &'static str,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Unexpected(String),
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// A bootable kernel and initramfs on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// What partitions boot: the uncompressed `vmlinux` extracted from [`Self::bzimage`]
    /// (no decompression in the guest).
    pub kernel: PathBuf,
    /// The distribution's compressed kernel, as packaged (for comparisons and for
    /// other hypervisors).
    pub bzimage: PathBuf,
    /// The initramfs, an uncompressed newc cpio (nothing to unpack but the archive).
    pub initrd: PathBuf,
    pub kernel_version: String,
}

/// `$XDG_CACHE_HOME/bulkhead`, or `~/.cache/bulkhead`.
pub fn cache_root() -> PathBuf {
    cache_root_from(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

fn cache_root_from(xdg: Option<std::ffi::OsString>, home: Option<std::ffi::OsString>) -> PathBuf {
    if let Some(dir) = xdg.filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("bulkhead");
    }
    PathBuf::from(home.unwrap_or_else(|| "/tmp".into())).join(".cache/bulkhead")
}

pub fn default_image_dir() -> PathBuf {
    cache_root().join("images/default")
}

/// The guest agent's static binary: `$BULKHEAD_AGENT`, else `bulkhead-agent` next to
/// this executable (as `bulkhead-vmm` is found).
pub fn agent_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BULKHEAD_AGENT") {
        return Some(PathBuf::from(p));
    }
    let beside = std::env::current_exe()
        .ok()?
        .parent()?
        .join("bulkhead-agent");
    beside.is_file().then_some(beside)
}

/// Why the image has no agent (for the build's progress), or the agent's bytes.
fn agent_bytes() -> Result<Vec<u8>, String> {
    let path =
        agent_binary().ok_or("no bulkhead-agent beside this program and BULKHEAD_AGENT unset")?;
    let bytes = fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    if !is_static_elf(&bytes) {
        return Err(format!(
            "{} is not a static x86-64 ELF executable (the guest has no libc for it); \
             build it with RUSTFLAGS='-C target-feature=+crt-static' --target x86_64-unknown-linux-gnu",
            path.display()
        ));
    }
    Ok(bytes)
}

/// An x86-64 ELF executable without a program interpreter (`PT_INTERP`).
fn is_static_elf(b: &[u8]) -> bool {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if !b.starts_with(b"\x7fELF\x02\x01") || u16_at(18) != Some(62) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let at = phoff.saturating_add(i.saturating_mul(usize::from(phentsize)));
        b.get(at..at.saturating_add(4))
            .and_then(|t| <[u8; 4]>::try_from(t).ok())
            .is_some_and(|t| u32::from_le_bytes(t) != 3)
    })
}

/// The recipe's fingerprint: a change to init, the module list or the agent rebuilds
/// the image.
fn recipe_fingerprint(kernel_package: &str) -> String {
    recipe_fingerprint_with(kernel_package, agent_bytes().ok().as_deref())
}

fn recipe_fingerprint_with(kernel_package: &str, agent: Option<&[u8]>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let programs = TEMPLATE_PROGRAMS
        .iter()
        .flat_map(|(path, text)| path.bytes().chain(text.bytes()));
    let agent = agent.unwrap_or(b"no agent").iter().copied();
    for b in INIT
        .bytes()
        .chain(MODULES.bytes())
        .chain(programs)
        .chain(NET_UP.bytes())
        .chain(kernel_package.bytes())
        .chain(agent)
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{kernel_package} {h:016x}")
}

fn image_in(dir: &Path, kernel_version: &str) -> GuestImage {
    GuestImage {
        kernel: dir.join("vmlinux"),
        bzimage: dir.join("vmlinuz"),
        initrd: dir.join("initrd.cpio"),
        kernel_version: kernel_version.to_string(),
    }
}

/// The cached default image, if it was built and its recipe is current.
pub fn locate(dir: &Path) -> Option<GuestImage> {
    let stamp = fs::read_to_string(dir.join(STAMP)).ok()?;
    let mut lines = stamp.lines();
    let fingerprint = lines.next()?;
    let version = lines.next()?;
    let package = fingerprint.split(' ').next()?;
    let image = image_in(dir, version);
    let current = recipe_fingerprint(package) == fingerprint;
    let files = [&image.kernel, &image.bzimage, &image.initrd];
    (current && files.iter().all(|f| f.is_file())).then_some(image)
}

fn need_tool(tool: &str, package: &str) -> Result<(), ImageError> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(ImageError::MissingTool {
            tool: tool.into(),
            package: package.into(),
        })
    }
}

fn run(cmd: &mut Command, hint: &'static str) -> Result<String, ImageError> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| ImageError::Command {
        command: command.clone(),
        detail: e.to_string(),
        hint,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let detail = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.starts_with("W:"))
            .unwrap_or("no error output")
            .to_string();
        return Err(ImageError::Command {
            command,
            detail,
            hint,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The versioned kernel package `linux-image-amd64` depends on, e.g.
/// `linux-image-6.1.0-56-amd64`.
pub fn resolve_kernel_package() -> Result<String, ImageError> {
    need_tool("apt-cache", "apt")?;
    let out = run(
        Command::new("apt-cache").args(["depends", "--important", KERNEL_META_PACKAGE]),
        "; run `sudo apt-get update` and try again",
    )?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(str::to_string)
        .ok_or_else(|| {
            ImageError::Unexpected(format!(
                "apt-cache lists no linux-image-*-amd64 dependency of {KERNEL_META_PACKAGE}; run `sudo apt-get update`"
            ))
        })
}

/// Downloads `packages` with `apt-get download` into `dir` and unpacks each into
/// `dir/root`. Returns the unpacked root.
pub fn fetch_and_unpack(packages: &[&str], dir: &Path) -> Result<PathBuf, ImageError> {
    need_tool("apt-get", "apt")?;
    need_tool("dpkg-deb", "dpkg")?;
    let debs = dir.join("debs");
    let root = dir.join("root");
    fs::create_dir_all(&debs).map_err(io_err("creating", &debs))?;
    fs::create_dir_all(&root).map_err(io_err("creating", &root))?;
    run(
        Command::new("apt-get")
            .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
            .args(packages)
            .current_dir(&debs),
        "; run `sudo apt-get update` and try again",
    )?;
    for entry in fs::read_dir(&debs).map_err(io_err("reading", &debs))? {
        let path = entry.map_err(io_err("reading", &debs))?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            run(Command::new("dpkg-deb").arg("-x").arg(&path).arg(&root), "")?;
        }
    }
    Ok(root)
}

fn module_names() -> impl Iterator<Item = &'static str> {
    MODULES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The newc initramfs: busybox, the modules, init. `extra` files are added verbatim.
pub fn build_initramfs(
    root: &Path,
    kernel_version: &str,
    extra: &[(&str, u32, &[u8])],
) -> Result<Vec<u8>, ImageError> {
    let busybox_path = root.join("bin/busybox");
    let busybox = fs::read(&busybox_path).map_err(io_err("reading", &busybox_path))?;
    let mut w = CpioWriter::new(Vec::new());
    let wr = |e: std::io::Error| ImageError::Unexpected(format!("writing cpio: {e}"));
    for d in [
        "bin",
        "dev",
        "etc",
        "etc/bulkhead",
        "lib",
        "lib/modules",
        "proc",
        "sys",
        "tmp",
        "run",
        "bulkhead",
    ] {
        w.dir(d).map_err(wr)?;
    }
    for (path, text) in TEMPLATE_PROGRAMS {
        w.file(path, 0o755, text.as_bytes()).map_err(wr)?;
    }
    w.file("bin/busybox", 0o755, &busybox).map_err(wr)?;
    w.symlink("bin/sh", "busybox").map_err(wr)?;
    w.file("init", 0o755, INIT.as_bytes()).map_err(wr)?;
    w.file("bin/net-up", 0o755, NET_UP.as_bytes()).map_err(wr)?;
    let mod_root = root.join("lib/modules").join(kernel_version).join("kernel");
    let mut order = String::new();
    for m in module_names() {
        let src = mod_root.join(format!("{m}.ko"));
        let data = fs::read(&src).map_err(io_err("reading module", &src))?;
        let base = m.rsplit('/').next().unwrap_or(m);
        w.file(&format!("lib/modules/{base}.ko"), 0o644, &data)
            .map_err(wr)?;
        order.push_str(base);
        order.push('\n');
    }
    w.file("etc/bulkhead/modules", 0o644, order.as_bytes())
        .map_err(wr)?;
    for (path, mode, data) in extra {
        w.file(path, *mode, data).map_err(wr)?;
    }
    w.finish().map_err(wr)
}

/// The default image in the cache, built first if it is missing or stale.
pub fn ensure_default(progress: &mut dyn FnMut(&str)) -> Result<GuestImage, ImageError> {
    build_default(&default_image_dir(), progress)
}

/// Builds (or reuses) the default image in `dir`, reporting each step to `progress`.
/// Several partitions (or processes) asking at once build it once: the build holds an
/// exclusive lock on `dir/.lock`, and whoever waited finds the image built.
pub fn build_default(dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<GuestImage, ImageError> {
    if let Some(image) = locate(dir) {
        progress(&format!("guest image up to date in {}", dir.display()));
        return Ok(image);
    }
    let _lock = lock_dir(dir)?;
    if let Some(image) = locate(dir) {
        progress(&format!("guest image built meanwhile in {}", dir.display()));
        return Ok(image);
    }
    progress("[1/5] resolving Debian's generic kernel package");
    let package = resolve_kernel_package()?;
    let version = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_string();
    let work = dir.join("work");
    let _ = fs::remove_dir_all(&work);
    progress(&format!(
        "[2/5] downloading {package} and {BUSYBOX_PACKAGE}"
    ));
    let root = fetch_and_unpack(&[&package, BUSYBOX_PACKAGE], &work)?;
    progress("[3/5] writing the initramfs");
    let agent = agent_bytes();
    let extra: Vec<(&str, u32, &[u8])> = match &agent {
        Ok(bytes) => vec![("bulkhead/bulkhead-agent", 0o755, bytes.as_slice())],
        Err(why) => {
            progress(&format!(
                "no guest agent in this image (no clipboard): {why}"
            ));
            Vec::new()
        }
    };
    let initrd = build_initramfs(&root, &version, &extra)?;
    let image = image_in(dir, &version);
    // Each file replaced whole (temp + rename): a partition opening the image while a
    // rebuild runs gets the old file or the new one, never half of one.
    replace_file(&image.initrd, &initrd)?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{version}"));
    let bzimage = fs::read(&vmlinuz).map_err(io_err("reading kernel", &vmlinuz))?;
    progress("[4/5] extracting the uncompressed kernel (vmlinux) from the bzImage");
    let kernel = vmlinux::extract(&bzimage).map_err(|e| {
        ImageError::Unexpected(format!(
            "extracting vmlinux from {}: {e}",
            vmlinuz.display()
        ))
    })?;
    replace_file(&image.bzimage, &bzimage)?;
    replace_file(&image.kernel, &kernel)?;
    progress("[5/5] cleaning up");
    let _ = fs::remove_dir_all(&work);
    let stamp = format!(
        "{}\n{version}\n",
        recipe_fingerprint_with(&package, agent.as_deref().ok())
    );
    replace_file(&dir.join(STAMP), stamp.as_bytes())?;
    progress(&format!("guest image ready: {}", dir.display()));
    Ok(image)
}

/// Holds an exclusive `flock` on `dir/.lock` until dropped (the kernel drops it if the
/// process dies, so a crashed build never leaves the cache locked).
fn lock_dir(dir: &Path) -> Result<fs::File, ImageError> {
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let path = dir.join(".lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("opening", &path))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err("locking", &path)(e.into()))?;
    Ok(file)
}

fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension("partial");
    fs::write(&tmp, bytes).map_err(io_err("writing", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("renaming into place", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_list_is_in_dependency_order() {
        let names: Vec<_> = module_names()
            .map(|m| m.rsplit('/').next().unwrap())
            .collect();
        let pos = |n| names.iter().position(|m| *m == n).unwrap();
        assert!(pos("virtio_ring") < pos("virtio"));
        assert!(pos("virtio") < pos("virtio_mmio"));
        assert!(pos("virtio_mmio") < pos("virtio_input"));
        assert!(pos("virtio_mmio") < pos("virtio_blk"));
    }

    #[test]
    fn a_stale_or_missing_stamp_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(locate(dir.path()).is_none());
        fs::write(dir.path().join("vmlinuz"), b"k").unwrap();
        fs::write(dir.path().join("initrd.cpio"), b"i").unwrap();
        fs::write(dir.path().join(STAMP), "linux-image-x 0000\n6.1\n").unwrap();
        assert!(locate(dir.path()).is_none());
        let stamp = format!("{}\n6.1.0-1-amd64\n", recipe_fingerprint("linux-image-x"));
        fs::write(dir.path().join(STAMP), stamp).unwrap();
        // An image from before vmlinux extraction is rebuilt.
        assert!(locate(dir.path()).is_none());
        fs::write(dir.path().join("vmlinux"), b"\x7fELF").unwrap();
        let image = locate(dir.path()).unwrap();
        assert_eq!(image.kernel_version, "6.1.0-1-amd64");
        assert_eq!(image.kernel, dir.path().join("vmlinux"));
    }

    #[test]
    fn a_second_builder_waits_for_the_first_and_reuses_its_image() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_dir(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            let got = build_default(&path, &mut |s| {
                let _ = tx.send(s.to_string());
            });
            got.map(|i| i.kernel_version)
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(rx.try_recv().is_err(), "the waiter must not start building");
        // What the first builder leaves behind, then it lets go.
        fs::write(dir.path().join("vmlinuz"), b"k").unwrap();
        fs::write(dir.path().join("vmlinux"), b"\x7fELF").unwrap();
        fs::write(dir.path().join("initrd.cpio"), b"i").unwrap();
        let stamp = format!("{}\n6.1.0-9-amd64\n", recipe_fingerprint("linux-image-y"));
        fs::write(dir.path().join(STAMP), stamp).unwrap();
        drop(held);
        assert_eq!(waiter.join().unwrap().unwrap(), "6.1.0-9-amd64");
        assert!(rx.recv().unwrap().contains("built meanwhile"));
    }

    #[test]
    fn only_a_static_x86_64_executable_passes_as_the_agent() {
        // This test binary is dynamically linked: it names an interpreter.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
        // A minimal ELF64 header with no program headers has no interpreter.
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[18] = 62;
        assert!(is_static_elf(&elf));
        elf[18] = 40; // ARM
        assert!(!is_static_elf(&elf));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        // A program header table pointing past the end is not trusted.
        elf[18] = 62;
        elf[32..40].copy_from_slice(&1000u64.to_le_bytes());
        elf[56] = 1;
        assert!(!is_static_elf(&elf));
        // Nor one whose offset would overflow.
        elf[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        elf[54] = 0xff;
        assert!(!is_static_elf(&elf));
    }

    #[test]
    fn the_agent_binary_is_part_of_the_recipe() {
        assert_ne!(
            recipe_fingerprint_with("linux-image-x", Some(b"agent v1")),
            recipe_fingerprint_with("linux-image-x", Some(b"agent v2"))
        );
        assert_ne!(
            recipe_fingerprint_with("linux-image-x", None),
            recipe_fingerprint_with("linux-image-x", Some(b"agent v1"))
        );
    }

    #[test]
    fn cache_root_follows_xdg_then_home() {
        assert_eq!(
            cache_root_from(Some("/x/cache".into()), Some("/home/u".into())),
            PathBuf::from("/x/cache/bulkhead")
        );
        assert_eq!(
            cache_root_from(Some("".into()), Some("/home/u".into())),
            PathBuf::from("/home/u/.cache/bulkhead")
        );
    }
}
