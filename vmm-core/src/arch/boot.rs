//! Linux 64-bit boot protocol: load the kernel and initrd, write the command line and
//! the zero page (boot_params) with e820 map and framebuffer description.
//!
//! The kernel is either a bzImage (its own decompressor runs first, entered 0x200 bytes
//! into the protected-mode part) or the uncompressed `vmlinux` ELF, whose segments go to
//! their physical addresses and whose entry point is `startup_64` itself — no
//! decompression in the guest, which is most of a cold boot under software
//! virtualisation. Both are entered in 64-bit mode with `boot_params` in RSI, so a
//! `vmlinux` guest gets the same e820 map, ACPI pointer and `screen_info` framebuffer
//! as a bzImage one (the kernel's PVH entry, the other way into a `vmlinux`, takes no
//! `screen_info`: the partition would lose its display).

use std::fs::File;
use std::io::Read;

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{bzimage::BzImage, KernelLoader, KernelLoaderResult};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::vmlinux;
use crate::devices::framebuffer::FramebufferLayout;
use crate::layout::{
    BOOT_PARAMS_ADDR, CMDLINE_ADDR, CMDLINE_MAX, EBDA_START, FRAMEBUFFER_ADDR, HIMEM_START,
    KERNEL_LOAD_ADDR, MMIO_HOLE_END, MMIO_HOLE_START,
};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const LOADED_HIGH: u8 = 0x01;
const CAN_USE_HEAP: u8 = 0x80;
const VIDEO_TYPE_VLFB: u8 = 0x23;
/// The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
const STARTUP_64_OFFSET: u64 = 0x200;
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// A `vmlinux` has no setup header to say where the initrd may go: the protocol's
/// default limit for a kernel that does not say (2 GiB - 1).
const VMLINUX_INITRD_ADDR_MAX: u32 = 0x7fff_ffff;
/// `kernel_alignment` for a `vmlinux` (it is loaded where its ELF says: 16 MiB).
const VMLINUX_ALIGNMENT: u32 = 0x100_0000;
/// Boot protocol version written into a `vmlinux`'s made-up header: 2.15 has
/// `acpi_rsdp_addr`, the newest field this loader fills in.
const VMLINUX_PROTOCOL_VERSION: u16 = 0x020f;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("loading the kernel as a bzImage: {0}")]
    LoadKernel(linux_loader::loader::Error),
    #[error("loading the kernel as an uncompressed vmlinux (ELF): {0}")]
    LoadVmlinux(String),
    #[error("reading the kernel's first bytes: {0}")]
    ReadKernel(std::io::Error),
    #[error(
        "the kernel has no valid setup header (boot flag or HdrS magic missing): not a bzImage"
    )]
    NoSetupHeader,
    #[error("reading the initrd: {0}")]
    ReadInitrd(std::io::Error),
    #[error("initrd of {size} bytes does not fit below {limit:#x} after the kernel (end {kernel_end:#x}); give the partition more memory")]
    InitrdTooLarge {
        size: u64,
        limit: u64,
        kernel_end: u64,
    },
    #[error("kernel command line is invalid: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("writing {what} into guest memory: {reason}")]
    GuestWrite { what: &'static str, reason: String },
}

/// Where the guest starts and what it was given.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    pub entry: u64,
    pub boot_params: u64,
    pub initrd: Option<(u64, u64)>,
    pub format: KernelFormat,
}

/// What kind of kernel file was booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// Compressed, with the kernel's own decompressor and setup header.
    BzImage,
    /// The uncompressed ELF `vmlinux`.
    Vmlinux,
}

/// Tells the formats apart by their first bytes (an ELF magic, else a bzImage: whose
/// loader names what is wrong with anything else).
pub fn kernel_format(mut kernel: &File) -> Result<KernelFormat, BootError> {
    use std::io::{Seek, SeekFrom};
    let mut magic = [0u8; 4];
    kernel
        .seek(SeekFrom::Start(0))
        .map_err(BootError::ReadKernel)?;
    let n = kernel.read(&mut magic).map_err(BootError::ReadKernel)?;
    kernel
        .seek(SeekFrom::Start(0))
        .map_err(BootError::ReadKernel)?;
    Ok(if n == 4 && magic == ELF_MAGIC {
        KernelFormat::Vmlinux
    } else {
        KernelFormat::BzImage
    })
}

pub struct LinuxBoot<'a> {
    pub kernel: &'a File,
    pub initrd: Option<&'a File>,
    pub cmdline: &'a str,
    pub framebuffer: Option<FramebufferLayout>,
    pub acpi_rsdp: Option<u64>,
}

/// Loads kernel, initrd and command line into the memory of a VM that never ran: above
/// the boot tables, guest RAM must still be zero, since a `vmlinux`'s all-zero pages are
/// left unwritten ([`vmlinux::copy_in`]).
pub fn load_linux(mem: &GuestMemoryMmap, boot: &LinuxBoot) -> Result<BootInfo, BootError> {
    let format = kernel_format(boot.kernel)?;
    // A bzImage's initrd is read after it (its limit is in the image's header); a
    // vmlinux's is copied in together with its segments.
    let (mut hdr, entry, kernel_end, vmlinux_initrd) = match format {
        KernelFormat::BzImage => {
            let loaded = load_bzimage(mem, boot.kernel)?;
            let hdr = loaded.setup_header.ok_or(BootError::NoSetupHeader)?;
            if hdr.boot_flag != KERNEL_BOOT_FLAG_MAGIC || hdr.header != KERNEL_HDR_MAGIC {
                return Err(BootError::NoSetupHeader);
            }
            let load = loaded.kernel_load.raw_value();
            // The bzImage loader counts the end from where it loaded the kernel.
            (
                hdr,
                load + STARTUP_64_OFFSET,
                load + loaded.kernel_end,
                None,
            )
        }
        KernelFormat::Vmlinux => {
            let plan =
                vmlinux::plan(boot.kernel, mem, HIMEM_START).map_err(BootError::LoadVmlinux)?;
            let hdr = vmlinux_setup_header();
            let initrd = boot
                .initrd
                .map(|f| place_initrd(mem, f, plan.end, u64::from(hdr.initrd_addr_max)))
                .transpose()?;
            let mut jobs: Vec<(&File, vmlinux::FileRange)> =
                plan.segments.iter().map(|&s| (boot.kernel, s)).collect();
            if let (Some(file), Some((addr, len))) = (boot.initrd, initrd) {
                jobs.push((
                    file,
                    vmlinux::FileRange {
                        offset: 0,
                        addr,
                        len,
                    },
                ));
            }
            vmlinux::copy_in(mem, &jobs).map_err(BootError::LoadVmlinux)?;
            (hdr, plan.entry, plan.end, initrd)
        }
    };

    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(BootError::Cmdline)?;
    cmdline
        .insert_str(boot.cmdline)
        .map_err(BootError::Cmdline)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline).map_err(|e| {
        BootError::GuestWrite {
            what: "command line",
            reason: e.to_string(),
        }
    })?;

    let initrd = match (format, boot.initrd) {
        (KernelFormat::BzImage, Some(f)) => Some(load_initrd(
            mem,
            f,
            kernel_end,
            u64::from(hdr.initrd_addr_max),
        )?),
        _ => vmlinux_initrd,
    };

    hdr.type_of_loader = 0xff;
    hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    hdr.heap_end_ptr = 0xfe00;
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    hdr.cmdline_size = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0) as u32;
    if let Some((addr, size)) = initrd {
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
    }

    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    fill_e820(&mut params, mem);
    if let Some(fb) = boot.framebuffer {
        describe_framebuffer(&mut params, &fb);
    }
    if let Some(rsdp) = boot.acpi_rsdp {
        params.acpi_rsdp_addr = rsdp;
    }
    mem.write_obj(params, GuestAddress(BOOT_PARAMS_ADDR))
        .map_err(|e| BootError::GuestWrite {
            what: "boot_params",
            reason: e.to_string(),
        })?;
    Ok(BootInfo {
        entry,
        boot_params: BOOT_PARAMS_ADDR,
        initrd,
        format,
    })
}

fn load_bzimage(mem: &GuestMemoryMmap, kernel: &File) -> Result<KernelLoaderResult, BootError> {
    // `&File` reads and seeks the shared file offset; the kernel file is this loader's.
    let mut file = kernel;
    BzImage::load(
        mem,
        Some(GuestAddress(KERNEL_LOAD_ADDR)),
        &mut file,
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(BootError::LoadKernel)
}

/// The setup header a bzImage would carry, for a `vmlinux` that has none: the fields
/// the kernel reads after the decompressor (which is not there) would have filled them.
fn vmlinux_setup_header() -> linux_loader::bootparam::setup_header {
    linux_loader::bootparam::setup_header {
        boot_flag: KERNEL_BOOT_FLAG_MAGIC,
        header: KERNEL_HDR_MAGIC,
        version: VMLINUX_PROTOCOL_VERSION,
        kernel_alignment: VMLINUX_ALIGNMENT,
        initrd_addr_max: VMLINUX_INITRD_ADDR_MAX,
        ..Default::default()
    }
}

/// Where the initrd of `file`'s size goes: page-aligned at the top of low RAM, below the
/// kernel's limit and past its end. Placed only; [`load_initrd`] or the vmlinux copy
/// fills it.
fn place_initrd(
    mem: &GuestMemoryMmap,
    file: &File,
    kernel_end: u64,
    initrd_addr_max: u64,
) -> Result<(u64, u64), BootError> {
    let size = file.metadata().map_err(BootError::ReadInitrd)?.len();
    initrd_address(mem, size, kernel_end, initrd_addr_max).map(|addr| (addr, size))
}

/// Reads the initrd and places it as [`place_initrd`] says.
fn load_initrd(
    mem: &GuestMemoryMmap,
    mut file: &File,
    kernel_end: u64,
    initrd_addr_max: u64,
) -> Result<(u64, u64), BootError> {
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(BootError::ReadInitrd)?;
    let size = data.len() as u64;
    let addr = initrd_address(mem, size, kernel_end, initrd_addr_max)?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|e| BootError::GuestWrite {
            what: "initrd",
            reason: e.to_string(),
        })?;
    Ok((addr, size))
}

fn initrd_address(
    mem: &GuestMemoryMmap,
    size: u64,
    kernel_end: u64,
    initrd_addr_max: u64,
) -> Result<u64, BootError> {
    let low_ram_end = mem
        .last_addr()
        .raw_value()
        .saturating_add(1)
        .min(MMIO_HOLE_START);
    let limit = low_ram_end.min(initrd_addr_max.saturating_add(1));
    let addr = limit.checked_sub(size).map(|a| a & !0xfff);
    let addr = match addr {
        Some(a) if a >= kernel_end => a,
        _ => {
            return Err(BootError::InitrdTooLarge {
                size,
                limit,
                kernel_end,
            })
        }
    };
    Ok(addr)
}

fn fill_e820(params: &mut boot_params, mem: &GuestMemoryMmap) {
    let mut entries = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    let end = mem.last_addr().raw_value() + 1;
    let low_end = end.min(MMIO_HOLE_START);
    entries.push((HIMEM_START, low_end - HIMEM_START, E820_RAM));
    if end > MMIO_HOLE_END {
        entries.push((MMIO_HOLE_END, end - MMIO_HOLE_END, E820_RAM));
    }
    for (i, (addr, size, kind)) in entries.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = entries.len() as u8;
}

fn describe_framebuffer(params: &mut boot_params, fb: &FramebufferLayout) {
    let si = &mut params.screen_info;
    si.orig_video_isVGA = VIDEO_TYPE_VLFB;
    si.lfb_width = fb.width as u16;
    si.lfb_height = fb.height as u16;
    si.lfb_depth = 32;
    si.lfb_linelength = fb.stride as u16;
    si.lfb_base = FRAMEBUFFER_ADDR as u32;
    si.lfb_size = (fb.region_size() / 0x1_0000) as u32;
    si.red_size = 8;
    si.red_pos = 16;
    si.green_size = 8;
    si.green_pos = 8;
    si.blue_size = 8;
    si.blue_pos = 0;
    si.rsvd_size = 8;
    si.rsvd_pos = 24;
    si.capabilities = 0;
    si.pages = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_reserves_the_bios_area_and_skips_the_mmio_hole() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), MMIO_HOLE_START as usize),
            (GuestAddress(MMIO_HOLE_END), 0x1000_0000),
        ])
        .unwrap();
        let mut p = boot_params::default();
        fill_e820(&mut p, &mem);
        assert_eq!(p.e820_entries, 4);
        let e = p.e820_table;
        assert_eq!((e[1].addr, e[1].r#type), (EBDA_START, E820_RESERVED));
        assert_eq!(e[2].addr + e[2].size, MMIO_HOLE_START);
        assert_eq!((e[3].addr, e[3].size), (MMIO_HOLE_END, 0x1000_0000));
    }

    #[test]
    fn framebuffer_is_described_as_vlfb_xrgb_below_4g() {
        let mut p = boot_params::default();
        describe_framebuffer(&mut p, &FramebufferLayout::new(1024, 768).unwrap());
        let si = p.screen_info;
        assert_eq!(si.orig_video_isVGA, 0x23);
        let (w, h, line) = (si.lfb_width, si.lfb_height, si.lfb_linelength);
        assert_eq!((w, h, line), (1024, 768, 4096));
        let size = si.lfb_size;
        assert_eq!(size, 48);
        assert_eq!((si.red_pos, si.green_pos, si.blue_pos), (16, 8, 0));
    }

    #[test]
    fn oversized_initrd_is_refused_with_the_sizes() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("initrd");
        std::fs::write(&p, vec![0u8; 0x80_0000]).unwrap();
        let open = || File::open(&p).unwrap();
        let err = load_initrd(&mem, &open(), 0xc0_0000, u64::from(u32::MAX)).unwrap_err();
        assert!(matches!(err, BootError::InitrdTooLarge { .. }), "{err}");
        assert!(load_initrd(&mem, &open(), 0x10_0000, u64::from(u32::MAX)).is_ok());
    }

    /// A minimal ELF64 executable: one `PT_LOAD` segment of `code` at physical `paddr`
    /// (and `memsz` in memory), entry `entry`.
    fn tiny_vmlinux(paddr: u64, entry: u64, code: &[u8], memsz: u64) -> Vec<u8> {
        let (ehsize, phsize) = (64u16, 56u16);
        let mut f = Vec::new();
        f.extend_from_slice(b"\x7fELF\x02\x01\x01\0");
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&entry.to_le_bytes());
        f.extend_from_slice(&u64::from(ehsize).to_le_bytes()); // e_phoff
        f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        f.extend_from_slice(&ehsize.to_le_bytes());
        f.extend_from_slice(&phsize.to_le_bytes());
        f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
        f.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
        let offset = u64::from(ehsize + phsize);
        f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        f.extend_from_slice(&5u32.to_le_bytes()); // R+X
        f.extend_from_slice(&offset.to_le_bytes());
        f.extend_from_slice(&(paddr | 0xffff_ffff_8000_0000).to_le_bytes()); // p_vaddr
        f.extend_from_slice(&paddr.to_le_bytes());
        f.extend_from_slice(&(code.len() as u64).to_le_bytes());
        f.extend_from_slice(&memsz.to_le_bytes());
        f.extend_from_slice(&0x20_0000u64.to_le_bytes());
        f.extend_from_slice(code);
        f
    }

    fn file_with(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> File {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        File::open(p).unwrap()
    }

    #[test]
    fn a_vmlinux_is_loaded_where_its_elf_says_and_entered_at_its_entry_with_a_made_up_header() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x400_0000)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let code = [0xf4u8; 64]; // hlt
        let kernel = file_with(
            &dir,
            "vmlinux",
            &tiny_vmlinux(0x100_0000, 0x100_0000, &code, 0x20_0000),
        );
        let initrd = file_with(&dir, "initrd", &[7u8; 0x3000]);
        assert_eq!(kernel_format(&kernel).unwrap(), KernelFormat::Vmlinux);
        let info = load_linux(
            &mem,
            &LinuxBoot {
                kernel: &kernel,
                initrd: Some(&initrd),
                cmdline: "console=ttyS0",
                framebuffer: Some(FramebufferLayout::new(1024, 768).unwrap()),
                acpi_rsdp: Some(0xe0000),
            },
        )
        .unwrap();
        assert_eq!(
            (info.entry, info.format),
            (0x100_0000, KernelFormat::Vmlinux)
        );
        let mut loaded = [0u8; 64];
        mem.read_slice(&mut loaded, GuestAddress(0x100_0000))
            .unwrap();
        assert_eq!(loaded, code);
        let p: boot_params = mem.read_obj(GuestAddress(info.boot_params)).unwrap();
        let (flag, magic, version) = (p.hdr.boot_flag, p.hdr.header, p.hdr.version);
        assert_eq!((flag, magic, version), (0xaa55, KERNEL_HDR_MAGIC, 0x020f));
        let (cmd, ramdisk, size) = (p.hdr.cmd_line_ptr, p.hdr.ramdisk_image, p.hdr.ramdisk_size);
        assert_eq!((u64::from(cmd), size), (CMDLINE_ADDR, 0x3000));
        let (addr, _) = info.initrd.unwrap();
        assert_eq!(u64::from(ramdisk), addr);
        // The initrd lies past the segment's memory size (its bss), not just its file.
        assert!(addr >= 0x120_0000, "{addr:#x}");
        let rsdp = p.acpi_rsdp_addr;
        assert_eq!(rsdp, 0xe0000);
        assert_eq!(p.screen_info.orig_video_isVGA, VIDEO_TYPE_VLFB);
    }

    /// Loads `kernel_bytes` alone (no initrd, no framebuffer) into 32 MiB of memory.
    fn load_bare(name: &str, kernel_bytes: &[u8]) -> (KernelFormat, Result<BootInfo, BootError>) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x200_0000)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kernel = file_with(&dir, name, kernel_bytes);
        let boot = LinuxBoot {
            kernel: &kernel,
            initrd: None,
            cmdline: "",
            framebuffer: None,
            acpi_rsdp: None,
        };
        (kernel_format(&kernel).unwrap(), load_linux(&mem, &boot))
    }

    #[test]
    fn a_vmlinux_segment_outside_guest_memory_is_refused_as_a_vmlinux() {
        let elf = tiny_vmlinux(0x300_0000, 0x300_0000, &[0; 16], 16);
        let (format, result) = load_bare("vmlinux", &elf);
        assert_eq!(format, KernelFormat::Vmlinux);
        let err = result.unwrap_err();
        assert!(matches!(err, BootError::LoadVmlinux(_)), "{err}");
    }

    #[test]
    fn a_vmlinux_initrd_that_does_not_fit_past_the_kernel_is_refused_before_any_copy() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x200_0000)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kernel = file_with(
            &dir,
            "vmlinux",
            &tiny_vmlinux(0x100_0000, 0x100_0000, &[0xf4; 16], 0x80_0000),
        );
        let initrd = file_with(&dir, "initrd", &vec![1u8; 0x90_0000]);
        let boot = LinuxBoot {
            kernel: &kernel,
            initrd: Some(&initrd),
            cmdline: "",
            framebuffer: None,
            acpi_rsdp: None,
        };
        let err = load_linux(&mem, &boot).unwrap_err();
        assert!(
            matches!(
                err,
                BootError::InitrdTooLarge {
                    kernel_end: 0x180_0000,
                    ..
                }
            ),
            "{err}"
        );
        let mut first = [0u8; 16];
        mem.read_slice(&mut first, GuestAddress(0x100_0000))
            .unwrap();
        assert_eq!(first, [0; 16], "nothing is copied when the plan fails");
    }

    #[test]
    fn anything_not_elf_is_read_as_a_bzimage_and_refused_as_one() {
        let (format, result) = load_bare("junk", b"\x7fEL");
        assert_eq!(format, KernelFormat::BzImage);
        let err = result.unwrap_err();
        assert!(matches!(err, BootError::LoadKernel(_)), "{err}");
    }
}
