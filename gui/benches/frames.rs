//! GUI frame cost with three partitions' worth of 1024×768 software sources: all changing
//! every frame (live) against all idle, in one run, on the software renderer (wgpu on
//! lavapipe through egui_kittest, which also reads every frame back).
//!
//! `cargo bench -p bulkhead --bench frames` (FRAMES=n to change the count).

use std::time::{Duration, Instant};

use bulkhead::app::backend::PartitionBackend;
use bulkhead::app::{BulkheadApp, Label, PartitionInfo, SoftwareBackend, SourceKind};
use bulkhead::display::software::Pattern;
use egui_kittest::Harness;

fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the zeroed struct we own; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn app(pattern: Pattern) -> BulkheadApp {
    let backends: Vec<Box<dyn PartitionBackend>> = [
        ("browser", Label::Red),
        ("mail", Label::Yellow),
        ("work", Label::Blue),
    ]
    .into_iter()
    .map(|(name, label)| {
        let mut b = SoftwareBackend::new(
            PartitionInfo {
                name: name.into(),
                label,
                kind: name.into(),
                memory_mib: 512,
                vcpus: 1,
                display: (1024, 768),
                source: SourceKind::SoftwareFramebuffer,
            },
            pattern,
        );
        b.start_running().expect("software source starts");
        Box::new(b) as Box<dyn PartitionBackend>
    })
    .collect();
    let mut app = BulkheadApp::new(backends);
    app.prefs.show_launcher = false;
    app
}

struct Figures {
    fps: f64,
    cpu_ms_per_frame: f64,
    pixels_uploaded_per_frame: f64,
}

fn measure(pattern: Pattern, frames: u32) -> Figures {
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .wgpu()
        .build_ui_state(|ui, app: &mut BulkheadApp| app.frame(ui), app(pattern));
    h.set_render_every_step(true);
    for _ in 0..3 {
        h.step();
    }
    let pixels_before: u64 = h
        .state()
        .slots
        .iter()
        .map(|s| s.texture.stats().pixels)
        .sum();
    let (wall0, cpu0) = (Instant::now(), cpu_time());
    for _ in 0..frames {
        h.step();
    }
    let (wall, cpu) = (wall0.elapsed(), cpu_time() - cpu0);
    let pixels_after: u64 = h
        .state()
        .slots
        .iter()
        .map(|s| s.texture.stats().pixels)
        .sum();
    Figures {
        fps: f64::from(frames) / wall.as_secs_f64(),
        cpu_ms_per_frame: cpu.as_secs_f64() * 1000.0 / f64::from(frames),
        pixels_uploaded_per_frame: (pixels_after - pixels_before) as f64 / f64::from(frames),
    }
}

fn main() {
    let frames: u32 = std::env::var("FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let idle = measure(Pattern::Still, frames);
    let live = measure(Pattern::FullMotion, frames);
    println!(
        "renderer: wgpu via egui_kittest (software adapter), 1280x800 window, {frames} frames each"
    );
    for (name, f) in [("3 idle 1024x768", &idle), ("3 live 1024x768", &live)] {
        println!(
            "{name}: {:.1} fps, {:.2} ms CPU/frame, {:.0} pixels uploaded/frame",
            f.fps, f.cpu_ms_per_frame, f.pixels_uploaded_per_frame
        );
    }
    println!(
        "live/idle: {:.2}x CPU per frame, {:.2}x frame time",
        live.cpu_ms_per_frame / idle.cpu_ms_per_frame,
        idle.fps / live.fps
    );
}
