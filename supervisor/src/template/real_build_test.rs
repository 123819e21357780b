//! The one test that really builds a template: real mmdebstrap and tar2sqfs, packages
//! from deb.debian.org (this machine and CI have the network). It runs in a plain
//! `cargo test`; set `BULKHEAD_SKIP_NETWORK_TESTS=1` to skip it offline.
//!
//! Downloaded `.deb`s go to the user's apt-archives cache, as a real build's do, so a
//! second run (and `bulkhead template build` after it) reuses them.

use std::path::Path;
use std::time::{Duration, Instant};

use super::build::find_in_path;
use super::*;

const TINY: &str = r#"
name = "tiny"
suite = "bookworm"
variant = "minbase"
packages = ["hello"]
"#;

fn image_lists(image: &Path, path: &str) -> bool {
    std::process::Command::new("rdsquashfs")
        .args(["-l", path])
        .arg(image)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_real_minbase_template_with_hello_builds_and_an_unchanged_rebuild_is_a_no_op() {
    if std::env::var_os("BULKHEAD_SKIP_NETWORK_TESTS").is_some() {
        eprintln!("skipped: BULKHEAD_SKIP_NETWORK_TESTS is set");
        return;
    }
    assert!(
        find_in_path("mmdebstrap").is_some() && find_in_path("tar2sqfs").is_some(),
        "mmdebstrap and tar2sqfs are needed (packaging/install-deps.sh --test installs them)"
    );
    let expected_mode =
        choose_mode(&HostFacts::probe()).expect("this host can build templates (unshare or root)");
    let dir = tempfile::tempdir().unwrap();
    let store = TemplateStore::new(dir.path().join("templates"));
    let decl = Declaration::parse(Path::new("tiny.toml"), TINY).unwrap();
    let options = BuildOptions {
        timeout: Duration::from_secs(20 * 60),
        ..BuildOptions::default()
    };

    let mut seen = Vec::new();
    let first = store.build(&decl, &options, &mut |p| seen.push(p)).unwrap();
    assert!(!first.reused);
    let m = &first.manifest;
    assert_eq!((m.name.as_str(), m.suite.as_str()), ("tiny", "bookworm"));
    assert_eq!(m.mode, expected_mode);
    assert_eq!(m.declaration_hash, decl.hash());
    let hello = m.version_of("hello").expect("hello is in the manifest");
    assert!(hello.starts_with("2."), "hello version {hello}");
    assert!(
        m.version_of("dpkg").is_some() && m.packages.len() > 20,
        "{:?}",
        m.packages
    );
    assert!(seen.contains(&BuildProgress::Mode(expected_mode)));
    assert!(seen.contains(&BuildProgress::SettingUp("hello".into())));
    assert!(seen
        .iter()
        .any(|p| matches!(p, BuildProgress::PackagesPlanned(n) if *n > 0)));

    let t = store.installed("tiny").unwrap().unwrap();
    assert_eq!(t.manifest, *m);
    let image = std::fs::read(&t.image).unwrap();
    assert_eq!(&image[..4], b"hsqs", "a squashfs image");
    assert_eq!(image.len() as u64, m.image_size);
    assert!(TemplateStore::verify(&t).unwrap());
    assert!(
        image_lists(&t.image, "/usr/bin/hello"),
        "hello is in the image"
    );
    assert!(
        !image_lists(&t.image, "/usr/share/man/man1/hello.1.gz"),
        "no manuals"
    );

    // Unchanged declaration: nothing is run, the manifest is the same.
    let started = Instant::now();
    let mut seen = Vec::new();
    let second = store.build(&decl, &options, &mut |p| seen.push(p)).unwrap();
    assert!(second.reused);
    assert_eq!(second.manifest, *m);
    assert_eq!(seen, [BuildProgress::UpToDate]);
    assert!(started.elapsed() < Duration::from_secs(30));

    // A build that fails (a mirror without that archive: apt fails early) leaves the
    // template as it was.
    let broken = Declaration::parse(
        Path::new("tiny.toml"),
        &format!(
            "{TINY}[[mirror]]\nurl = \"http://deb.debian.org/bulkhead-no-such-archive\"\nsuites = [\"bookworm\"]\n"
        ),
    )
    .unwrap();
    let err = store
        .build(&broken, &options, &mut |_| {})
        .unwrap_err()
        .to_string();
    eprintln!("the broken build failed as expected: {err}");
    assert!(err.contains("mmdebstrap"), "{err}");
    let after = store.installed("tiny").unwrap().unwrap();
    assert_eq!(after.manifest, *m);
    assert!(TemplateStore::verify(&after).unwrap());
    let names: Vec<_> = store.list().unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["tiny"]);
}
