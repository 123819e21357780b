//! The uncompressed `vmlinux` (ELF64, x86-64): its `PT_LOAD` segments planned against
//! guest memory, then copied in together with the initrd by a few threads at once.
//!
//! Copying ~60 MiB of kernel and initrd is most of what a partition does before its
//! first instruction (about 400 ms of a cold boot in the nested lab, where every first
//! touch of guest RAM is an expensive page fault); in parallel it takes about half. The
//! plan is checked whole before anything is copied: every segment inside guest RAM and
//! inside the file, none overlapping another, the entry in high memory.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const ELF_HEADER_LEN: usize = 64;
const PHDR_LEN: usize = 56;
const MAX_PHDRS: u16 = 64;
const PT_LOAD: u32 = 1;
const EM_X86_64: u16 = 62;
/// Work is handed out in pieces this big (a huge page of guest RAM each).
const CHUNK: u64 = 2 << 20;
/// More threads than this gain nothing on a copy bounded by memory bandwidth.
const MAX_THREADS: usize = 4;
/// Pages of this size that are all zero in the file are not written to guest memory.
const PAGE: usize = 4096;

/// `len` bytes of a file at `offset`, to go to guest address `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRange {
    pub offset: u64,
    pub addr: u64,
    pub len: u64,
}

/// Where a `vmlinux` goes and how it is entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmlinuxPlan {
    pub entry: u64,
    /// First guest address past every segment's memory size (its bss included).
    pub end: u64,
    /// The file bytes of each loadable segment (the rest of its memory size is the
    /// zeroes fresh guest RAM already holds).
    pub segments: Vec<FileRange>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Reads and checks the ELF header and program headers of `kernel`; every failure says
/// what is wrong. `min_entry`: the lowest acceptable entry point.
pub fn plan(kernel: &File, mem: &GuestMemoryMmap, min_entry: u64) -> Result<VmlinuxPlan, String> {
    let file_len = kernel
        .metadata()
        .map_err(|e| format!("reading its size: {e}"))?
        .len();
    let mut eh = [0u8; ELF_HEADER_LEN];
    kernel
        .read_exact_at(&mut eh, 0)
        .map_err(|_| "shorter than an ELF header".to_string())?;
    if &eh[..4] != b"\x7fELF" {
        return Err("no ELF magic".into());
    }
    if eh[4] != 2 || eh[5] != 1 {
        return Err("not a 64-bit little-endian ELF".into());
    }
    if u16_at(&eh, 18) != EM_X86_64 {
        return Err(format!("machine {} is not x86-64", u16_at(&eh, 18)));
    }
    let entry = u64_at(&eh, 24);
    if entry < min_entry {
        return Err(format!("entry {entry:#x} lies below {min_entry:#x}"));
    }
    let (phoff, phentsize, phnum) = (u64_at(&eh, 32), u16_at(&eh, 54), u16_at(&eh, 56));
    if usize::from(phentsize) != PHDR_LEN {
        return Err(format!("program header size {phentsize}, not {PHDR_LEN}"));
    }
    if phnum == 0 || phnum > MAX_PHDRS {
        return Err(format!("{phnum} program headers (1 to {MAX_PHDRS})"));
    }
    let mut phdrs = vec![0u8; usize::from(phnum) * PHDR_LEN];
    kernel
        .read_exact_at(&mut phdrs, phoff)
        .map_err(|_| format!("program headers at {phoff:#x} lie outside the file"))?;
    let mut segments = Vec::new();
    let mut spans: Vec<(u64, u64)> = Vec::new();
    let mut end = 0u64;
    for ph in phdrs.chunks_exact(PHDR_LEN) {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let (offset, paddr, filesz, memsz) = (
            u64_at(ph, 8),
            u64_at(ph, 24),
            u64_at(ph, 32),
            u64_at(ph, 40),
        );
        if filesz > memsz {
            return Err(format!(
                "segment at {paddr:#x} has more file bytes ({filesz:#x}) than memory ({memsz:#x})"
            ));
        }
        if offset.checked_add(filesz).is_none_or(|e| e > file_len) {
            return Err(format!(
                "segment at {paddr:#x} reads past the end of the file"
            ));
        }
        let seg_end = paddr
            .checked_add(memsz)
            .ok_or_else(|| format!("segment at {paddr:#x} wraps the address space"))?;
        if memsz > 0 && !mem.check_range(GuestAddress(paddr), memsz as usize) {
            return Err(format!(
                "segment {paddr:#x}..{seg_end:#x} lies outside guest memory"
            ));
        }
        if spans.iter().any(|&(s, e)| paddr < e && s < seg_end) {
            return Err(format!("segment at {paddr:#x} overlaps another"));
        }
        spans.push((paddr, seg_end));
        end = end.max(seg_end);
        if filesz > 0 {
            segments.push(FileRange {
                offset,
                addr: paddr,
                len: filesz,
            });
        }
    }
    if segments.is_empty() {
        return Err("no loadable segment".into());
    }
    Ok(VmlinuxPlan {
        entry,
        end,
        segments,
    })
}

/// Copies every `(file, range)` into guest memory, in 2 MiB pieces shared out between
/// a few threads. The ranges must lie inside guest memory and not overlap (as
/// [`plan`] and the initrd placement make sure); checked again per piece.
///
/// Guest memory must still be all zero (a VM that never ran): pages of the file that are
/// all zero are not written at all. About half of Debian's `vmlinux` is such pages (its
/// bss, brk and scratch areas are stored as zeroes), and a page nobody writes costs no
/// host memory and, in the nested lab, no page fault.
pub fn copy_in(mem: &GuestMemoryMmap, jobs: &[(&File, FileRange)]) -> Result<(), String> {
    let mut pieces = Vec::new();
    for &(file, r) in jobs {
        let mut done = 0;
        while done < r.len {
            let len = (r.len - done).min(CHUNK);
            pieces.push((file, r.offset + done, r.addr + done, len));
            done += len;
        }
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_THREADS)
        .min(pieces.len());
    let next = AtomicUsize::new(0);
    let work = || -> Result<(), String> {
        let mut bounce = Vec::new();
        while let Some(&(file, offset, addr, len)) =
            pieces.get(next.fetch_add(1, Ordering::Relaxed))
        {
            copy_piece(mem, file, offset, addr, len, &mut bounce)?;
        }
        Ok(())
    };
    std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut result = work();
        for h in helpers {
            let r = h
                .join()
                .unwrap_or_else(|_| Err("a copy thread panicked".into()));
            result = result.and(r);
        }
        result
    })
}

/// Reads one piece into `bounce` and writes its pages that are not all zero to guest
/// memory at `addr`, consecutive ones together.
fn copy_piece(
    mem: &GuestMemoryMmap,
    file: &File,
    offset: u64,
    addr: u64,
    len: u64,
    bounce: &mut Vec<u8>,
) -> Result<(), String> {
    let len = usize::try_from(len).map_err(|_| "piece too large".to_string())?;
    bounce.resize(len, 0);
    file.read_exact_at(bounce, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            format!("the file ends inside a segment (piece at {offset:#x})")
        } else {
            format!("reading at {offset:#x}: {e}")
        }
    })?;
    let mut run_start = None;
    for (i, page) in bounce.chunks(PAGE).enumerate() {
        let at = i * PAGE;
        match (is_zero(page), run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(start)) => {
                write_run(mem, addr, &bounce[start..at], start)?;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        write_run(mem, addr, &bounce[start..], start)?;
    }
    Ok(())
}

fn write_run(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8], at: usize) -> Result<(), String> {
    let to = addr + at as u64;
    mem.write_slice(bytes, GuestAddress(to))
        .map_err(|e| format!("guest memory at {to:#x}: {e}"))
}

/// Whether every byte is zero (an OR over the page, which the compiler vectorises).
fn is_zero(page: &[u8]) -> bool {
    page.iter().fold(0u8, |acc, &b| acc | b) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    /// (p_type, p_offset, p_paddr, p_filesz, p_memsz) per header, then `body` from 0x1000.
    fn elf(entry: u64, phdrs: &[(u32, u64, u64, u64, u64)], body: &[u8]) -> File {
        let mut f = vec![0u8; 0x1000];
        f[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\0");
        f[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[24..32].copy_from_slice(&entry.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&(PHDR_LEN as u16).to_le_bytes());
        f[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for (i, &(ty, off, paddr, filesz, memsz)) in phdrs.iter().enumerate() {
            let p = 64 + i * PHDR_LEN;
            f[p..p + 4].copy_from_slice(&ty.to_le_bytes());
            f[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
            f[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
            f[p + 32..p + 40].copy_from_slice(&filesz.to_le_bytes());
            f[p + 40..p + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        f.extend_from_slice(body);
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &f).unwrap();
        file
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn segments_and_an_initrd_land_byte_for_byte_across_many_pieces() {
        // Two segments of several 2 MiB pieces each, the second with bss, and an
        // "initrd" from another file: more pieces than threads, odd lengths.
        let (a, b) = (
            pattern(5 * CHUNK as usize + 123, 1),
            pattern(3 * CHUNK as usize + 7, 2),
        );
        let mut body = a.clone();
        body.extend_from_slice(&b);
        let b_off = 0x1000 + a.len() as u64;
        let kernel = elf(
            0x100_0000,
            &[
                (PT_LOAD, 0x1000, 0x100_0000, a.len() as u64, a.len() as u64),
                (4, 0, 0, 0, 0), // PT_NOTE: skipped
                (
                    PT_LOAD,
                    b_off,
                    0x200_0000,
                    b.len() as u64,
                    b.len() as u64 + 0x5000,
                ),
            ],
            &body,
        );
        let m = mem(0x400_0000);
        let p = plan(&kernel, &m, 0x10_0000).unwrap();
        assert_eq!(p.entry, 0x100_0000);
        assert_eq!(p.end, 0x200_0000 + b.len() as u64 + 0x5000);
        assert_eq!(p.segments.len(), 2);
        let initrd_bytes = pattern(CHUNK as usize + 99, 3);
        let mut initrd = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut initrd, &initrd_bytes).unwrap();
        let mut jobs: Vec<(&File, FileRange)> = p.segments.iter().map(|&s| (&kernel, s)).collect();
        let initrd_range = FileRange {
            offset: 0,
            addr: 0x300_0000,
            len: initrd_bytes.len() as u64,
        };
        jobs.push((&initrd, initrd_range));
        copy_in(&m, &jobs).unwrap();
        for (addr, want) in [
            (0x100_0000, &a),
            (0x200_0000, &b),
            (0x300_0000, &initrd_bytes),
        ] {
            let mut got = vec![0u8; want.len()];
            m.read_slice(&mut got, GuestAddress(addr)).unwrap();
            assert!(got == *want, "bytes at {addr:#x} differ");
        }
    }

    /// Which of the `pages` pages at guest address `addr` of `m` are resident.
    fn resident(m: &GuestMemoryMmap, addr: u64, pages: usize) -> Vec<bool> {
        let host = m.get_host_address(GuestAddress(addr)).unwrap();
        let mut vec = vec![0u8; pages];
        // SAFETY: `host` is the page-aligned start of `pages * PAGE` mapped bytes of
        // `m`'s anonymous mapping (guest RAM from 0, `addr` a multiple of PAGE); mincore
        // only writes one byte per page into `vec`, which holds `pages` bytes.
        let rc = unsafe { libc::mincore(host.cast(), pages * PAGE, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        vec.iter().map(|v| v & 1 == 1).collect()
    }

    #[test]
    fn pages_all_zero_in_the_file_are_never_written_to_guest_memory() {
        // Data, zero, data, then a whole zero piece and a piece ending in data: the bss
        // stored as zeroes in Debian's vmlinux looks like this.
        let page = |fill: u8| vec![fill; PAGE];
        let mut body = Vec::new();
        let mut want_resident = Vec::new();
        for (fill, pages) in [
            (7u8, 1),
            (0, 1),
            (9, 2),
            (0, CHUNK as usize / PAGE + 3),
            (5, 1),
        ] {
            for _ in 0..pages {
                body.extend_from_slice(&page(fill));
                want_resident.push(fill != 0);
            }
        }
        let kernel = elf(
            0x100_0000,
            &[(
                PT_LOAD,
                0x1000,
                0x100_0000,
                body.len() as u64,
                body.len() as u64,
            )],
            &body,
        );
        let m = mem(0x200_0000 + body.len());
        let host = m.get_host_address(GuestAddress(0)).unwrap();
        // SAFETY: advice only, on the whole of `m`'s own anonymous mapping: no huge
        // pages, so residency is per 4 KiB page whatever the host's THP setting.
        let rc =
            unsafe { libc::madvise(host.cast(), 0x200_0000 + body.len(), libc::MADV_NOHUGEPAGE) };
        assert_eq!(rc, 0);
        let p = plan(&kernel, &m, 0x10_0000).unwrap();
        let jobs: Vec<(&File, FileRange)> = p.segments.iter().map(|&s| (&kernel, s)).collect();
        copy_in(&m, &jobs).unwrap();
        assert_eq!(resident(&m, 0x100_0000, want_resident.len()), want_resident);
        let mut got = vec![1u8; body.len()];
        m.read_slice(&mut got, GuestAddress(0x100_0000)).unwrap();
        assert!(got == body, "guest memory differs from the segment");
    }

    #[test]
    fn a_file_shorter_than_its_segment_says_where_it_ends() {
        let kernel = elf(
            0x100_0000,
            &[(PT_LOAD, 0x1000, 0x100_0000, 0x100, 0x100)],
            &[],
        );
        let m = mem(0x200_0000);
        let range = FileRange {
            offset: 0x1000,
            addr: 0x100_0000,
            len: 0x100,
        };
        let err = copy_in(&m, &[(&kernel, range)]).unwrap_err();
        assert!(err.contains("the file ends inside a segment"), "{err}");
    }

    #[test]
    fn bad_vmlinuxes_are_refused_with_what_is_wrong() {
        let m = mem(0x200_0000);
        let seg = |paddr, filesz, memsz| (PT_LOAD, 0x1000u64, paddr, filesz, memsz);
        let body = [0x90u8; 0x100];
        let cases: [(File, &str); 6] = [
            (
                elf(0x100_0000, &[seg(0x300_0000, 0x10, 0x10)], &body),
                "outside guest memory",
            ),
            (
                elf(0x100_0000, &[seg(0x100_0000, 0x200, 0x200)], &body),
                "past the end of the file",
            ),
            (
                elf(0x100_0000, &[seg(0x100_0000, 0x20, 0x10)], &body),
                "more file bytes",
            ),
            (elf(0x1000, &[seg(0x100_0000, 0x10, 0x10)], &body), "below"),
            (
                elf(
                    0x100_0000,
                    &[seg(0x100_0000, 0x10, 0x100), seg(0x100_0080, 0x10, 0x10)],
                    &body,
                ),
                "overlaps",
            ),
            (
                elf(0x100_0000, &[(4, 0, 0, 0, 0)], &body),
                "no loadable segment",
            ),
        ];
        for (file, want) in cases {
            let err = plan(&file, &m, 0x10_0000).unwrap_err();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
        let mut junk = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut junk, b"\x7fELF\x01\x01").unwrap();
        assert!(plan(&junk, &m, 0).unwrap_err().contains("ELF header"));
    }
}
