//! GUI frame cost with three 1024×768 software sources, all changing every frame (live)
//! against all idle, measured in one run on software rendering. A live source shows
//! frames it drew beforehand (a partition draws in its own process), so what is measured
//! is the GUI's work alone:
//!
//! 1. the real window: eframe with glow on llvmpipe under X (Xvfb is started when there is
//!    no `DISPLAY`), each scenario in a fresh process because winit allows one event loop
//!    per process;
//! 2. headless: egui_kittest's wgpu renderer on lavapipe, which also reads every frame back.
//!
//! `cargo bench -p bulkhead --bench frames` (FRAMES=n to change the count, ROUNDS=n for
//! how many idle/live window pairs to interleave; the medians are reported, since the
//! machine may be shared).

#[path = "../tests/support/xvfb.rs"]
mod xvfb;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xvfb::Xvfb;

use bulkhead::app::backend::PartitionBackend;
use bulkhead::app::{BulkheadApp, Label, PartitionInfo, SoftwareBackend, SourceKind};
use bulkhead::display::software::Pattern;
use egui_kittest::Harness;

const WARMUP: u32 = 10;

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

fn pattern_named(name: &str) -> Pattern {
    if name == "live" {
        Pattern::FullMotion
    } else {
        Pattern::Still
    }
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    fps: f64,
    cpu_ms_per_frame: f64,
    pixels_per_frame: f64,
}

impl Figures {
    fn line(&self) -> String {
        format!(
            "{:.1} fps, {:.2} ms CPU/frame, {:.0} pixels uploaded/frame",
            self.fps, self.cpu_ms_per_frame, self.pixels_per_frame
        )
    }
}

fn uploaded(app: &BulkheadApp) -> u64 {
    app.slots.iter().map(|s| s.texture.stats().pixels).sum()
}

/// Counts frames in the real window and closes it after `frames` measured ones.
struct Measured {
    app: BulkheadApp,
    /// Guest pixels straight to GL textures (the app's way); false: egui's RGBA textures.
    gl_textures: bool,
    frames: u32,
    seen: u32,
    start: Option<(Instant, Duration, u64)>,
    result: std::sync::Arc<std::sync::Mutex<Option<Figures>>>,
}

impl eframe::App for Measured {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        if self.gl_textures {
            self.app.use_gl(frame);
        }
        self.app.frame(ui);
        self.seen += 1;
        if self.seen == WARMUP {
            self.start = Some((Instant::now(), cpu_time(), uploaded(&self.app)));
        }
        if let Some((wall0, cpu0, px0)) = self.start {
            if self.seen == WARMUP + self.frames {
                let n = f64::from(self.frames);
                let figures = Figures {
                    fps: n / wall0.elapsed().as_secs_f64(),
                    cpu_ms_per_frame: (cpu_time() - cpu0).as_secs_f64() * 1000.0 / n,
                    pixels_per_frame: (uploaded(&self.app) - px0) as f64 / n,
                };
                *self.result.lock().unwrap() = Some(figures);
                ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
            }
        }
        ui.ctx().request_repaint();
    }
}

/// Child process: one scenario in a real window. `scenario` is `idle` or `live`, with
/// `-egui` for egui's converted textures instead of the app's GL ones.
fn window_scenario(scenario: &str, frames: u32) {
    let (pattern, gl_textures) = match scenario.strip_suffix("-egui") {
        Some(p) => (p, false),
        None => (scenario, true),
    };
    let result = std::sync::Arc::new(std::sync::Mutex::new(None));
    let shared = std::sync::Arc::clone(&result);
    let options = eframe::NativeOptions {
        renderer: eframe::Renderer::Glow,
        glow_options: eframe::egui_glow::GlowConfiguration {
            vsync: false,
            ..Default::default()
        },
        persist_window: false,
        viewport: egui::ViewportBuilder::default().with_inner_size([1280.0, 800.0]),
        ..Default::default()
    };
    let pattern = pattern_named(pattern);
    eframe::run_native(
        "bulkhead-bench",
        options,
        Box::new(move |cc| {
            Ok(Box::new(Measured {
                app: app(pattern).with_gl_loader(cc.get_proc_address.as_deref()),
                gl_textures,
                frames,
                seen: 0,
                start: None,
                result: shared,
            }))
        }),
    )
    .expect("window runs");
    let figures = result.lock().unwrap().expect("measured frames");
    println!(
        "RESULT {} {} {}",
        figures.fps, figures.cpu_ms_per_frame, figures.pixels_per_frame
    );
}

fn run_window(pattern: &str, frames: u32, display: &str) -> Option<Figures> {
    let out = Command::new(std::env::current_exe().ok()?)
        .args(["--scenario", pattern, "--frames", &frames.to_string()])
        .env("DISPLAY", display)
        .env_remove("WAYLAND_DISPLAY")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("RESULT "))?;
    let v: Vec<f64> = line.split(' ').filter_map(|x| x.parse().ok()).collect();
    (v.len() == 3).then(|| Figures {
        fps: v[0],
        cpu_ms_per_frame: v[1],
        pixels_per_frame: v[2],
    })
}

/// A display to open windows on: `$DISPLAY`, or a private Xvfb (kept alive by the
/// returned guard).
fn display() -> Option<(String, Option<Xvfb>)> {
    if let Ok(d) = std::env::var("DISPLAY") {
        return Some((d, None));
    }
    let xvfb = Xvfb::start()?;
    Some((xvfb.display.clone(), Some(xvfb)))
}

fn headless(pattern: Pattern, frames: u32) -> Figures {
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .wgpu()
        .build_ui_state(|ui, app: &mut BulkheadApp| app.frame(ui), app(pattern));
    h.set_render_every_step(true);
    for _ in 0..3 {
        h.step();
    }
    let px0 = uploaded(h.state());
    let (wall0, cpu0) = (Instant::now(), cpu_time());
    for _ in 0..frames {
        h.step();
    }
    let n = f64::from(frames);
    Figures {
        fps: n / wall0.elapsed().as_secs_f64(),
        cpu_ms_per_frame: (cpu_time() - cpu0).as_secs_f64() * 1000.0 / n,
        pixels_per_frame: (uploaded(h.state()) - px0) as f64 / n,
    }
}

fn report(title: &str, idle: Figures, live: Figures) {
    println!("{title}");
    println!("  3 idle 1024x768: {}", idle.line());
    println!("  3 live 1024x768: {}", live.line());
    println!(
        "  live/idle: {:.2}x CPU per frame, {:.2}x frame time",
        live.cpu_ms_per_frame / idle.cpu_ms_per_frame,
        idle.fps / live.fps
    );
}

/// The median of each figure over several runs (each figure on its own).
fn median(runs: &[Figures]) -> Figures {
    let mid = |f: fn(&Figures) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Figures {
        fps: mid(|f| f.fps),
        cpu_ms_per_frame: mid(|f| f.cpu_ms_per_frame),
        pixels_per_frame: mid(|f| f.pixels_per_frame),
    }
}

fn idle_count_note(rounds: usize) -> String {
    if rounds > 1 {
        format!(", median of {rounds} interleaved rounds")
    } else {
        String::new()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--scenario") {
        let frames = args
            .iter()
            .position(|a| a == "--frames")
            .and_then(|j| args.get(j + 1))
            .and_then(|f| f.parse().ok())
            .unwrap_or(60);
        window_scenario(&args[i + 1], frames);
        return;
    }
    let frames: u32 = std::env::var("FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    match display() {
        Some((d, _xvfb)) => {
            let (mut idle, mut live, mut live_egui) = (Vec::new(), Vec::new(), Vec::new());
            // Interleaved, so that a burst of load elsewhere hits all alike.
            for round in 0..rounds {
                let runs = (
                    run_window("idle", frames, &d),
                    run_window("live", frames, &d),
                    run_window("live-egui", frames, &d),
                );
                if let (Some(i), Some(l), Some(e)) = runs {
                    if rounds > 1 {
                        println!(
                            "  round {}: idle {:.1} fps {:.2} ms, live {:.1} fps {:.2} ms, live with egui textures {:.1} fps {:.2} ms",
                            round + 1,
                            i.fps,
                            i.cpu_ms_per_frame,
                            l.fps,
                            l.cpu_ms_per_frame,
                            e.fps,
                            e.cpu_ms_per_frame
                        );
                    }
                    idle.push(i);
                    live.push(l);
                    live_egui.push(e);
                }
            }
            if idle.is_empty() {
                println!("real window: could not measure (no GL under X?)");
            } else {
                let (idle, live, live_egui) = (median(&idle), median(&live), median(&live_egui));
                let n = idle_count_note(rounds);
                report(
                    &format!("real window, glow on llvmpipe (X display {d}), 1280x800, {frames} frames each{n}; guest pixels straight to GL textures"),
                    idle,
                    live,
                );
                println!(
                    "  before (egui's RGBA textures, converted): live {}; live/idle {:.2}x CPU per frame, {:.2}x frame time",
                    live_egui.line(),
                    live_egui.cpu_ms_per_frame / idle.cpu_ms_per_frame,
                    idle.fps / live_egui.fps
                );
            }
        }
        None => println!("real window: skipped (no DISPLAY and no Xvfb)"),
    }
    let headless_frames = (frames / 4).max(10);
    let idle = headless(Pattern::Still, headless_frames);
    let live = headless(Pattern::FullMotion, headless_frames);
    report(
        &format!("headless, egui_kittest wgpu on lavapipe with readback, 1280x800, {headless_frames} frames each"),
        idle,
        live,
    );
}
