//! `bulkhead run …`: one partition, headless, in its own sandboxed `bulkhead-vmm`
//! process run by the same supervisor as the desktop app and `bulkhead up`. Serial output
//! and screenshots come back through the control socket and the shared framebuffer.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bulkhead_supervisor::{
    guest_image, AutoRestart, BootFiles, LaunchSpec, ProcessState, Supervisor,
};
use vmm_core::devices::framebuffer::write_png;
use vmm_core::launch::{
    parse_display, parse_memory_mib, AgentChannel, BootConfig, DisplaySize, LaunchConfig,
    NetworkConfig, DEFAULT_CMDLINE,
};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Linux kernel, a bzImage or an uncompressed vmlinux; without it the default guest
    /// image is used (built on first use; it boots the vmlinux extracted from Debian's).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initramfs; defaults to the default guest image's when --kernel is not given.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Guest memory (e.g. 512M, 2G).
    #[arg(long, default_value = "512M", value_parser = parse_memory_mib)]
    pub mem: u64,
    /// Number of vCPUs (1..=8).
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Framebuffer size, e.g. 1024x768; `none` for no display.
    #[arg(long, default_value = "1024x768", value_parser = parse_display)]
    // Fully qualified: `none` is a value here, not a missing flag.
    pub display: ::std::option::Option<DisplaySize>,
    /// Kernel command line.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Where the serial console goes: a file, or `-` for stdout.
    #[arg(long, default_value = "-")]
    pub serial: String,
    /// Save the framebuffer as PNG (when --screenshot-on appears, else when the guest stops).
    #[arg(long)]
    pub screenshot: Option<PathBuf>,
    /// Take the screenshot when this text appears on the serial console.
    #[arg(long, requires = "screenshot")]
    pub screenshot_on: Option<String>,
    /// Stop the partition after this many seconds (exit code 4).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Boot the built-in test card (a micro-guest painting the label colours) instead of
    /// Linux; it runs on any KVM, software-only ones included.
    #[arg(long, conflicts_with_all = ["kernel", "initrd"])]
    pub test_card: bool,
    /// The partition's name.
    #[arg(long, default_value = "partition")]
    pub name: String,
}

/// The launch these flags describe: the partition process gets the config and the
/// files, serial, screenshots and the time limit stay on this side.
fn launch_spec(a: &RunArgs) -> Result<LaunchSpec, String> {
    let (boot, boot_files) = if a.test_card {
        (BootConfig::TestCard, BootFiles::None)
    } else {
        let files = match &a.kernel {
            Some(kernel) => BootFiles::Linux {
                kernel: kernel.clone(),
                initrd: a.initrd.clone(),
            },
            None => {
                let image = guest_image::ensure_default(&mut |s| eprintln!("bulkhead: {s}"))
                    .map_err(|e| format!("the default guest image: {e}"))?;
                BootFiles::Linux {
                    kernel: image.kernel,
                    initrd: Some(a.initrd.clone().unwrap_or(image.initrd)),
                }
            }
        };
        let initrd = matches!(
            &files,
            BootFiles::Linux {
                initrd: Some(_),
                ..
            }
        );
        (
            BootConfig::Linux {
                cmdline: a.cmdline.clone(),
                initrd,
            },
            files,
        )
    };
    let launch = LaunchConfig {
        name: a.name.clone(),
        memory_mib: a.mem,
        vcpus: a.vcpus,
        display: a.display,
        boot,
        disks: Vec::new(),
        network: NetworkConfig::None,
        agent: AgentChannel::VirtioConsole,
        snapshot_on: None,
        snapshot_on_request: false,
    };
    launch.validate().map_err(|e| e.to_string())?;
    Ok(LaunchSpec::partition(
        launch,
        boot_files,
        AutoRestart::Never,
    ))
}

/// Exit codes as `bulkhead-vmm run`: 0 powered off or rebooted, 1 could not start,
/// 3 crashed, 4 stopped after --timeout.
pub fn run(args: RunArgs) -> ExitCode {
    match supervised_run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            eprintln!("bulkhead: {msg}");
            ExitCode::from(1)
        }
    }
}

/// Which sandbox the partition process reported, for a person.
fn sandbox_line(sandbox: &bulkhead_supervisor::SandboxStatus) -> String {
    use bulkhead_supervisor::SandboxStatus;
    match sandbox {
        SandboxStatus::Full => "sandbox: full".to_string(),
        SandboxStatus::Reduced { missing } => {
            let gaps: Vec<&str> = missing.iter().map(|g| g.describe()).collect();
            format!("sandbox reduced: {}", gaps.join(", "))
        }
        SandboxStatus::Failed { reason } => format!("sandbox failed: {reason}"),
    }
}

fn serial_out(target: &str) -> Result<Box<dyn Write>, String> {
    if target == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    let f = File::create(target).map_err(|e| format!("creating serial log {target}: {e}"))?;
    Ok(Box::new(f))
}

fn save_screenshot(sup: &Supervisor, name: &str, path: &std::path::Path) -> Result<(), String> {
    let fb = sup
        .framebuffer(name)
        .map_err(|e| e.to_string())?
        .ok_or("the partition has no display")?;
    let mut pixels = Vec::new();
    fb.read_all(&mut pixels).map_err(|e| e.to_string())?;
    let file = File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    write_png(&fb.layout(), &pixels, BufWriter::new(file)).map_err(|e| e.to_string())?;
    eprintln!("bulkhead: screenshot saved to {}", path.display());
    Ok(())
}

fn supervised_run(a: &RunArgs) -> Result<u8, String> {
    let name = a.name.clone();
    let spec = launch_spec(a)?;
    let sup = Supervisor::new(vec![spec]).map_err(|e| e.to_string())?;
    sup.start(&name).map_err(|e| e.to_string())?;
    let mut out = serial_out(&a.serial)?;
    let marker = a.screenshot_on.as_deref().unwrap_or("").as_bytes().to_vec();
    let mut recent: Vec<u8> = Vec::new();
    let mut shot_taken = false;
    let mut sandbox_said = false;
    let deadline = a.timeout.map(|s| Instant::now() + Duration::from_secs(s));
    let code = loop {
        let bytes = sup.take_serial(&name).map_err(|e| e.to_string())?;
        let _ = out.write_all(&bytes);
        let _ = out.flush();
        recent.extend_from_slice(&bytes);
        let keep = recent
            .len()
            .saturating_sub(marker.len().max(1) * 2 + bytes.len());
        let found = !marker.is_empty() && recent.windows(marker.len()).any(|w| w == marker);
        recent.drain(..keep);
        if found && !shot_taken {
            if let Some(path) = &a.screenshot {
                save_screenshot(&sup, &name, path)?;
                shot_taken = true;
            }
        }
        let status = sup.status(&name).map_err(|e| e.to_string())?;
        if let (Some(sandbox), false) = (&status.sandbox, sandbox_said) {
            eprintln!("bulkhead: partition {name}: {}", sandbox_line(sandbox));
            sandbox_said = true;
        }
        match status.state {
            ProcessState::Exited { .. } => {
                eprintln!("bulkhead: partition {name} powered off");
                break 0;
            }
            ProcessState::Crashed { reason } => {
                eprintln!("bulkhead: partition {name} crashed: {reason}");
                break 3;
            }
            _ => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            if let (Some(path), false) = (&a.screenshot, shot_taken || !marker.is_empty()) {
                save_screenshot(&sup, &name, path)?;
                shot_taken = true;
            }
            eprintln!("bulkhead: partition {name} stopped by the host (timeout)");
            sup.stop(&name, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            break 4;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let (Some(path), false) = (&a.screenshot, shot_taken || !marker.is_empty()) {
        save_screenshot(&sup, &name, path)?;
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn partition_flags_become_the_launch_config_and_its_files() {
        let t = T::parse_from([
            "t",
            "--kernel=/k",
            "--initrd=/i",
            "--mem=1G",
            "--vcpus=2",
            "--display=1280x800",
            "--name=work",
        ]);
        let spec = launch_spec(&t.run).unwrap();
        assert_eq!(spec.launch.memory_mib, 1024);
        assert_eq!(spec.launch.vcpus, 2);
        assert_eq!(
            spec.launch.display,
            Some(DisplaySize {
                width: 1280,
                height: 800
            })
        );
        assert_eq!(spec.name(), "work");
        assert_eq!(
            spec.launch.boot,
            BootConfig::Linux {
                cmdline: DEFAULT_CMDLINE.into(),
                initrd: true
            }
        );
        assert_eq!(
            spec.boot_files,
            BootFiles::Linux {
                kernel: "/k".into(),
                initrd: Some("/i".into())
            }
        );
        assert_eq!(spec.args, vec![std::ffi::OsString::from("partition")]);
    }

    #[test]
    fn bad_values_are_refused_before_anything_starts() {
        assert!(T::try_parse_from(["t", "--mem=lots"]).is_err());
        assert!(T::try_parse_from(["t", "--display=10x10"]).is_err());
        let t = T::parse_from(["t", "--test-card", "--vcpus=99"]);
        assert!(launch_spec(&t.run).unwrap_err().contains("vCPUs"));
    }
}
