//! A private Xvfb server for the tests and benchmarks that open real windows.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Xvfb (1280x800x24) on a display of its own; killed when dropped.
pub struct Xvfb {
    /// The `DISPLAY` value, e.g. `:123`.
    pub display: String,
    child: Child,
}

impl Xvfb {
    /// Starts Xvfb on a free display and waits up to 20 s for its socket; `None` when
    /// Xvfb is missing or does not come up.
    pub fn start() -> Option<Xvfb> {
        let base = 90 + std::process::id() % 200;
        let n = (base..base + 100).find(|n| !Path::new(&socket(*n)).exists())?;
        let child = Command::new("Xvfb")
            .args([
                &format!(":{n}"),
                "-screen",
                "0",
                "1280x800x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let xvfb = Xvfb {
            display: format!(":{n}"),
            child,
        };
        let t0 = Instant::now();
        while !Path::new(&socket(n)).exists() {
            if t0.elapsed() > Duration::from_secs(20) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(xvfb)
    }
}

fn socket(n: u32) -> String {
    format!("/tmp/.X11-unix/X{n}")
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
