//! Linux 64-bit boot protocol: load the bzImage and initrd, write the command line and
//! the zero page (boot_params) with e820 map and framebuffer description.

use std::fs::File;
use std::io::Read;

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

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

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("loading the kernel as a bzImage: {0}")]
    LoadKernel(linux_loader::loader::Error),
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
}

pub struct LinuxBoot<'a> {
    pub kernel: &'a File,
    pub initrd: Option<&'a File>,
    pub cmdline: &'a str,
    pub framebuffer: Option<FramebufferLayout>,
    pub acpi_rsdp: Option<u64>,
}

pub fn load_linux(mem: &GuestMemoryMmap, boot: &LinuxBoot) -> Result<BootInfo, BootError> {
    // `&File` reads and seeks the shared file offset; the kernel file is this loader's.
    let mut file = boot.kernel;
    let loaded = BzImage::load(
        mem,
        Some(GuestAddress(KERNEL_LOAD_ADDR)),
        &mut file,
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(BootError::LoadKernel)?;
    let mut hdr = loaded.setup_header.ok_or(BootError::NoSetupHeader)?;
    if hdr.boot_flag != KERNEL_BOOT_FLAG_MAGIC || hdr.header != KERNEL_HDR_MAGIC {
        return Err(BootError::NoSetupHeader);
    }

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

    let kernel_end = loaded.kernel_load.raw_value() + loaded.kernel_end;
    let initrd = match boot.initrd {
        Some(f) => Some(load_initrd(
            mem,
            f,
            kernel_end,
            u64::from(hdr.initrd_addr_max),
        )?),
        None => None,
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
        entry: loaded.kernel_load.raw_value() + STARTUP_64_OFFSET,
        boot_params: BOOT_PARAMS_ADDR,
        initrd,
    })
}

/// Places the initrd page-aligned at the top of low RAM, below the kernel's limit.
fn load_initrd(
    mem: &GuestMemoryMmap,
    mut file: &File,
    kernel_end: u64,
    initrd_addr_max: u64,
) -> Result<(u64, u64), BootError> {
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(BootError::ReadInitrd)?;
    let size = data.len() as u64;
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
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|e| BootError::GuestWrite {
            what: "initrd",
            reason: e.to_string(),
        })?;
    Ok((addr, size))
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
}
