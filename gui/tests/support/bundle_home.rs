//! A private HOME for the bundle tests (`cli_bundle.rs`, `bundle_dialog.rs`): the shipped
//! policy as the user's own, and a sparse 256 MiB private disk for `mail` holding a few
//! recognisable blocks; plus a walk of everything an import could touch.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Fills `root` (a fresh directory) with `config/bulkhead` and `mail`'s disk.
pub fn populate(root: &Path) {
    let policy = root.join("config/bulkhead");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/policy");
    fs::create_dir_all(policy.join("policy.d")).unwrap();
    fs::copy(
        shipped.join("partitions.toml"),
        policy.join("partitions.toml"),
    )
    .unwrap();
    for e in fs::read_dir(shipped.join("policy.d")).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), policy.join("policy.d").join(e.file_name())).unwrap();
    }
    let disk = disk(root, "mail");
    fs::create_dir_all(disk.parent().unwrap()).unwrap();
    let mut f = fs::File::create(&disk).unwrap();
    f.set_len(256 << 20).unwrap();
    for (i, at) in [0u64, 100 << 20, (256 << 20) - 8192].iter().enumerate() {
        f.seek(SeekFrom::Start(*at)).unwrap();
        let block: Vec<u8> = (0..8192u32)
            .map(|b| (b.wrapping_mul(2654435761) >> (i + 3)) as u8)
            .collect();
        f.write_all(&block).unwrap();
    }
}

/// A fresh home under cargo's per-target scratch directory (emptied at each run: a
/// static is never dropped, so a TempDir would leak into /tmp), populated, and made this
/// process's HOME and XDG directories (the data directory comes from the environment).
pub fn fresh(test: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{test}-home"));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).unwrap();
    populate(&root);
    std::env::set_var("HOME", &root);
    std::env::set_var("XDG_CONFIG_HOME", root.join("config"));
    std::env::set_var("XDG_DATA_HOME", root.join("data"));
    std::env::remove_var("BULKHEAD_POLICY_DIR");
    root
}

pub fn policy(root: &Path) -> PathBuf {
    root.join("config/bulkhead")
}

/// Where partition `name`'s private disk lives under `root`'s data directory.
pub fn disk(root: &Path, name: &str) -> PathBuf {
    root.join("data/bulkhead/partitions")
        .join(name)
        .join("private.img")
}

/// Everything import could have touched, for "nothing changed" checks: directories, the
/// small files' bytes, disks by size.
pub fn state(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for base in [policy(root), root.join("data")] {
        walk(&base, &mut out);
    }
    out.sort();
    out
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.push((p.clone(), Vec::new()));
            walk(&p, out);
        } else if p.extension().is_some_and(|e| e == "img") {
            // Disks by size, to keep the comparison cheap.
            out.push((
                p.clone(),
                fs::metadata(&p).unwrap().len().to_le_bytes().to_vec(),
            ));
        } else {
            out.push((p.clone(), fs::read(&p).unwrap()));
        }
    }
}
