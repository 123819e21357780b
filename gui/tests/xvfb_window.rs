//! The real `bulkhead` binary in a real X window (Xvfb): it must present a first frame,
//! and a screenshot of the screen must show the partitions' label colours.
//!
//! Skips with a message when Xvfb or ImageMagick's `import` is not installed
//! (`apt-get install -y xvfb imagemagick`). `BULKHEAD_UPDATE_SCREENSHOT=1` also copies the
//! screenshot to `assets/screenshot.png` for the README.

#[path = "support/xvfb.rs"]
mod xvfb;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use xvfb::Xvfb;

/// Kills what it holds when the test ends, however it ends.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The label colours of the shipped partitions, read from the policy the app will show
/// (black is left out: it proves nothing on a dark screen).
fn label_colours(policy: &Path) -> Vec<(String, [u8; 3])> {
    let text = std::fs::read_to_string(policy.join("partitions.toml")).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("label = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter_map(|name| {
            let rgb = match name {
                "red" => [0xcc, 0x00, 0x00],
                "orange" => [0xf5, 0x79, 0x00],
                "yellow" => [0xed, 0xd4, 0x00],
                "green" => [0x73, 0xd2, 0x16],
                "gray" => [0x55, 0x55, 0x55],
                "blue" => [0x34, 0x65, 0xa4],
                "purple" => [0x75, 0x50, 0x7b],
                _ => return None,
            };
            Some((name.to_string(), rgb))
        })
        .collect()
}

fn count_colour(img: &image::RgbImage, rgb: [u8; 3]) -> usize {
    img.pixels().filter(|p| p.0 == rgb).count()
}

#[test]
fn real_window_presents_a_frame_with_the_label_colours() {
    if !installed("Xvfb") || !installed("import") {
        eprintln!("SKIPPED: Xvfb or ImageMagick `import` not installed (apt-get install -y xvfb imagemagick)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/policy");
    let xvfb = Xvfb::start().expect("Xvfb did not start within 20 s");
    let display = &xvfb.display;

    let marker = dir.path().join("first-frame");
    let log = std::fs::File::create(dir.path().join("app.log")).unwrap();
    let _app = Reap(
        Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .env("DISPLAY", display)
            .env_remove("WAYLAND_DISPLAY")
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("BULKHEAD_FIRST_FRAME_FILE", &marker)
            .env("BULKHEAD_POLICY_DIR", &policy)
            .env("BULKHEAD_AUDIT_DIR", dir.path().join("audit"))
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let log_path = dir.path().join("app.log");
    let show_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let t0 = Instant::now();
    while !marker.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no first frame within 120 s; app log:\n{}",
            show_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the software sources finish booting and draw their test cards.
    std::thread::sleep(Duration::from_secs(3));

    let shot = dir.path().join("screen.png");
    let status = Command::new("import")
        .args(["-display", display.as_str(), "-window", "root"])
        .arg(&shot)
        .status()
        .unwrap();
    assert!(status.success(), "import failed");
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join("xvfb-screen.png");
    std::fs::copy(&shot, &kept).unwrap();
    eprintln!("screenshot: {}", kept.display());
    let img = image::open(&shot).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), (1280, 800));

    let distinct: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(
        distinct.len() > 20,
        "screen looks blank: {} colours",
        distinct.len()
    );
    let log_text = show_log();
    assert!(
        log_text.contains("renderer:"),
        "renderer choice not logged:\n{log_text}"
    );
    let colours = label_colours(&policy);
    assert!(
        colours.len() >= 2,
        "shipped policy has too few coloured labels: {colours:?}"
    );
    for (name, rgb) in colours {
        let n = count_colour(&img, rgb);
        assert!(
            n > 500,
            "label colour {name} covers only {n} pixels; log:\n{log_text}"
        );
    }
    // The guests' pixels reach the screen as they are: with glow they go to GL textures
    // as BGRX bytes, so a red/blue swap or the X byte taken for alpha (it is 0) would show
    // here. The test card's bands run red, orange, yellow, green, grey, blue, purple,
    // black from top to bottom; orange and blue are no label of the shipped partitions.
    assert!(
        log_text.contains("guest pixels go straight to a GL texture"),
        "the glow window did not use its GL textures:\n{log_text}"
    );
    let mean_y = |rgb: [u8; 3]| {
        let ys: Vec<u32> = img
            .enumerate_pixels()
            .filter(|(_, _, p)| p.0 == rgb)
            .map(|(_, y, _)| y)
            .collect();
        assert!(
            ys.len() > 1000,
            "test-card colour {rgb:?} covers only {} pixels (channels swapped, or drawn translucent?)",
            ys.len()
        );
        ys.iter().map(|&y| f64::from(y)).sum::<f64>() / ys.len() as f64
    };
    let (orange, blue) = (mean_y([0xf5, 0x79, 0x00]), mean_y([0x34, 0x65, 0xa4]));
    assert!(
        orange < blue,
        "test-card bands out of order: orange at y {orange:.0}, blue at y {blue:.0}"
    );
    if std::env::var_os("BULKHEAD_UPDATE_SCREENSHOT").is_some() {
        let dest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/screenshot.png");
        std::fs::copy(&shot, dest).unwrap();
    }
}
