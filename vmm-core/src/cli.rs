//! The `bulkhead-vmm` command line: one partition, headless. `bulkhead run` forwards here.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use crate::builder::{self, BootSource, VmConfig};
use crate::devices::framebuffer::FramebufferLayout;
use crate::devices::legacy::SerialSink;
use crate::devices::StopReason;
use crate::guest_image;
use crate::hostcheck::{self, Virtualization};

pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";

#[derive(Debug, Parser)]
#[command(
    name = "bulkhead-vmm",
    version,
    about = "One Bulkhead partition: a KVM virtual machine in this process"
)]
pub struct VmmCli {
    #[command(subcommand)]
    pub command: VmmCommand,
}

#[derive(Debug, Subcommand)]
pub enum VmmCommand {
    /// Boot a kernel (or the default guest image) and run it until it stops.
    Run(Box<RunArgs>),
    /// Say what this host's /dev/kvm can run.
    Check,
}

/// A memory size: plain MiB, or with a K/M/G suffix (`512M`, `2G`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemSize(pub u64);

impl FromStr for MemSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_uppercase();
        let t = t.trim_end_matches("IB").trim_end_matches('B');
        let (num, mul) = match t.chars().last() {
            Some('K') => (&t[..t.len() - 1], 1u64),
            Some('M') => (&t[..t.len() - 1], 1024),
            Some('G') => (&t[..t.len() - 1], 1024 * 1024),
            _ => (t, 1024),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a memory size; write e.g. 512M or 2G"))?;
        let kib = n
            .checked_mul(mul)
            .ok_or_else(|| format!("`{s}` is too large"))?;
        if kib % 1024 != 0 {
            return Err(format!("`{s}` is not a whole number of MiB"));
        }
        Ok(MemSize(kib / 1024))
    }
}

/// A display size `WIDTHxHEIGHT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisplaySize(pub u32, pub u32);

impl FromStr for DisplaySize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a display size; write WIDTHxHEIGHT, e.g. 1024x768");
        let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        let w = w.trim().parse().map_err(|_| bad())?;
        let h = h.trim().parse().map_err(|_| bad())?;
        FramebufferLayout::new(w, h).map_err(|e| e.to_string())?;
        Ok(DisplaySize(w, h))
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Linux bzImage; without it the default guest image is used (built on first use).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initramfs; defaults to the default guest image's when --kernel is not given.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Guest memory (e.g. 512M, 2G).
    #[arg(long, default_value = "512M")]
    pub mem: MemSize,
    /// Number of vCPUs (1..=8).
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Framebuffer size, e.g. 1024x768; `none` for no display.
    #[arg(long, default_value = "1024x768")]
    pub display: DisplayChoice,
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
    /// The partition's name, as the supervisor knows it.
    #[arg(long, default_value = "partition")]
    pub name: String,
    /// Run supervised: speak the control protocol on this inherited socket fd.
    #[arg(long)]
    pub control_fd: Option<i32>,
}

/// `--display`: a size, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisplayChoice(pub Option<DisplaySize>);

impl FromStr for DisplayChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("none") {
            Ok(DisplayChoice(None))
        } else {
            s.parse().map(|d| DisplayChoice(Some(d)))
        }
    }
}

/// Exit codes: 0 the guest powered off or rebooted, 1 the partition could not start,
/// 3 the guest crashed, 4 the host stopped it (timeout).
pub fn main_with(cli: VmmCli) -> i32 {
    match cli.command {
        VmmCommand::Check => check(),
        VmmCommand::Run(args) => match run(&args) {
            Ok(code) => code,
            Err(msg) => {
                eprintln!("bulkhead-vmm: {msg}");
                1
            }
        },
    }
}

fn check() -> i32 {
    match hostcheck::open_kvm() {
        Ok((_, Virtualization::Hardware)) => {
            println!(
                "hardware virtualization available: partitions with stock Linux guests can run"
            );
            0
        }
        Ok((_, Virtualization::Software { name })) => {
            println!("{}", hostcheck::HostError::SoftwareOnly { name });
            2
        }
        Err(e) => {
            println!("{e}");
            1
        }
    }
}

fn serial_sink(target: &str) -> Result<SerialSink, String> {
    let out: Box<dyn Write + Send> = if target == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(File::create(target).map_err(|e| format!("creating serial log {target}: {e}"))?)
    };
    Ok(SerialSink::new(out))
}

fn boot_source(args: &RunArgs) -> Result<BootSource, String> {
    if args.test_card {
        let (w, h) = args
            .display
            .0
            .map(|d| (d.0, d.1))
            .ok_or("the test card needs a display; drop --display none")?;
        return Ok(BootSource::Raw {
            code: crate::microguest::test_card(crate::layout::FRAMEBUFFER_ADDR, w, h),
            load_addr: crate::layout::HIMEM_START,
        });
    }
    let (kernel, initrd) = match &args.kernel {
        Some(k) => (k.clone(), args.initrd.clone()),
        None => {
            let dir = guest_image::default_image_dir();
            let image = guest_image::build_default(&dir, &mut |s| eprintln!("bulkhead-vmm: {s}"))
                .map_err(|e| e.to_string())?;
            (
                image.kernel,
                Some(args.initrd.clone().unwrap_or(image.initrd)),
            )
        }
    };
    Ok(BootSource::Linux {
        kernel,
        initrd,
        cmdline: args.cmdline.clone(),
    })
}

/// Opens KVM (a software-only KVM is fine for the test card, not for Linux) and
/// resolves the partition's configuration.
fn vm_config(args: &RunArgs, serial: SerialSink) -> Result<(kvm_ioctls::Kvm, VmConfig), String> {
    let kvm = if args.test_card {
        hostcheck::open_kvm().map(|(kvm, _)| kvm)
    } else {
        hostcheck::open_kvm_for_linux()
    }
    .map_err(|e| e.to_string())?;
    let config = VmConfig {
        mem_mib: args.mem.0,
        vcpus: args.vcpus,
        boot: boot_source(args)?,
        display: args
            .display
            .0
            .map(|DisplaySize(w, h)| FramebufferLayout::new(w, h))
            .transpose()
            .map_err(|e| e.to_string())?,
        serial,
        disks: Vec::new(),
    };
    Ok((kvm, config))
}

pub fn run(args: &RunArgs) -> Result<i32, String> {
    if let Some(fd) = args.control_fd {
        return crate::partition::run_supervised(args, fd, |sink| vm_config(args, sink))
            .map_err(|e| e.to_string());
    }
    let mut serial = serial_sink(&args.serial)?;
    let (marker_tx, marker_rx) = mpsc::channel();
    if let Some(marker) = &args.screenshot_on {
        serial.watch_marker(marker, marker_tx);
    }
    let (kvm, config) = vm_config(args, serial)?;
    let started = Instant::now();
    let partition = builder::build(&kvm, config)
        .map_err(|e| e.to_string())?
        .start()
        .map_err(|e| e.to_string())?;
    let deadline = args.timeout.map(|s| started + Duration::from_secs(s));
    let mut shot_taken = false;
    let reason = loop {
        if let Some(r) = partition.wait_timeout(Duration::from_millis(20)) {
            break r;
        }
        if !shot_taken && marker_rx.try_recv().is_ok() {
            if let Some(path) = &args.screenshot {
                partition.save_screenshot(path).map_err(|e| e.to_string())?;
                eprintln!("bulkhead-vmm: screenshot saved to {}", path.display());
                shot_taken = true;
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break StopReason::Stopped;
        }
    };
    if let (Some(path), false) = (&args.screenshot, shot_taken || args.screenshot_on.is_some()) {
        partition.save_screenshot(path).map_err(|e| e.to_string())?;
    }
    let reason = match reason {
        StopReason::Stopped => partition.finish(),
        r => {
            partition.finish();
            r
        }
    };
    let _ = std::io::stdout().flush();
    let (code, text) = match &reason {
        StopReason::PowerOff => (0, "partition powered off".to_string()),
        StopReason::Reset => (0, "partition rebooted".to_string()),
        StopReason::Crashed(why) => (3, format!("partition crashed: {why}")),
        StopReason::Stopped => (4, "partition stopped by the host (timeout)".to_string()),
    };
    eprintln!("bulkhead-vmm: {text}");
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse_with_and_without_suffix() {
        assert_eq!("512".parse::<MemSize>().unwrap(), MemSize(512));
        assert_eq!("512M".parse::<MemSize>().unwrap(), MemSize(512));
        assert_eq!("2G".parse::<MemSize>().unwrap(), MemSize(2048));
        assert_eq!("1GiB".parse::<MemSize>().unwrap(), MemSize(1024));
        assert_eq!("2048K".parse::<MemSize>().unwrap(), MemSize(2));
        assert!("1000K".parse::<MemSize>().is_err());
        assert!("lots".parse::<MemSize>().unwrap_err().contains("512M"));
        assert!("99999999999999999G".parse::<MemSize>().is_err());
    }

    #[test]
    fn display_sizes_parse_and_bad_ones_say_how_to_write_them() {
        assert_eq!(
            "1280x800".parse::<DisplaySize>().unwrap(),
            DisplaySize(1280, 800)
        );
        assert!("1024*768"
            .parse::<DisplaySize>()
            .unwrap_err()
            .contains("WIDTHxHEIGHT"));
        assert!("10x10".parse::<DisplaySize>().is_err());
        assert_eq!(
            "none".parse::<DisplayChoice>().unwrap(),
            DisplayChoice(None)
        );
    }
}
