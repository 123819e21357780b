//! `bulkhead-vmm`'s flags, and how a bare run turns them into a launch config and the
//! files it names (a supervised partition gets both over its control socket instead).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use vmm_core::hostcheck::{self, HostError};
use vmm_core::launch::{
    parse_display, parse_memory_mib, AgentChannel, BootConfig, DiskConfig, DisplaySize,
    LaunchConfig, LaunchError, LaunchFiles, NetworkConfig, DEFAULT_CMDLINE,
};
use vmm_core::partition::bare::{BareOptions, Sandbox};

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
    /// Boot a kernel (or the test card) and run it until it stops, with no supervisor.
    Run(Box<RunArgs>),
    /// Run as the supervisor's partition process: the launch config and every file
    /// arrive over the control socket.
    #[command(hide = true)]
    Partition {
        /// The inherited control socket.
        #[arg(long)]
        control_fd: RawFd,
    },
    /// Say what this host's /dev/kvm can run.
    Check,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Linux bzImage to boot.
    #[arg(long, required_unless_present = "test_card")]
    pub kernel: Option<PathBuf>,
    /// Initramfs.
    #[arg(long, requires = "kernel")]
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
    /// A virtio-blk disk, `PATH`, `PATH,ro`, and `,id=NAME` for the id the guest reads
    /// (default `disk<N>`) (repeatable; in order /dev/vda, /dev/vdb, …).
    #[arg(long = "disk", value_name = "PATH[,ro][,id=NAME]")]
    pub disks: Vec<String>,
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
    /// Run the guest in an unconfined process: no namespaces, rlimits, Landlock or
    /// seccomp (by default a bare run is sandboxed like a supervised partition).
    #[arg(long)]
    pub no_sandbox: bool,
}

/// Why a bare run could not put its launch together.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("opening {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Launch(#[from] LaunchError),
}

impl RunArgs {
    /// The launch config these flags describe and the files it names, opened here.
    pub fn launch(&self) -> Result<(LaunchConfig, LaunchFiles), ArgsError> {
        let disks: Vec<(PathBuf, DiskConfig)> = self
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| disk_arg(i, d))
            .collect();
        let config = LaunchConfig {
            name: self.name.clone(),
            memory_mib: self.mem,
            vcpus: self.vcpus,
            display: self.display,
            boot: match self.test_card {
                true => BootConfig::TestCard,
                false => BootConfig::Linux {
                    cmdline: self.cmdline.clone(),
                    initrd: self.initrd.is_some(),
                },
            },
            disks: disks.iter().map(|(_, c)| c.clone()).collect(),
            network: NetworkConfig::None,
            agent: AgentChannel::VirtioConsole,
        };
        config.validate()?;
        // A software-only KVM runs the test card, never a stock kernel.
        let kvm = if self.test_card {
            hostcheck::open_kvm_device()?.0
        } else {
            hostcheck::open_kvm_device_for_linux()?
        };
        let files = LaunchFiles {
            kvm: kvm.into(),
            kernel: self
                .kernel
                .as_deref()
                .map(|p| open("kernel", p, false))
                .transpose()?,
            initrd: self
                .initrd
                .as_deref()
                .map(|p| open("initrd", p, false))
                .transpose()?,
            disks: disks
                .iter()
                .map(|(path, c)| open("disk", path, !c.read_only))
                .collect::<Result<_, _>>()?,
        };
        Ok((config, files))
    }

    pub fn bare_options(&self, sandbox: Sandbox) -> Result<BareOptions, ArgsError> {
        let serial: Box<dyn Write + Send> = if self.serial == "-" {
            Box::new(std::io::stdout())
        } else {
            let path = PathBuf::from(&self.serial);
            Box::new(File::create(&path).map_err(|source| ArgsError::Open {
                what: "serial log",
                path,
                source,
            })?)
        };
        Ok(BareOptions {
            serial,
            screenshot: self.screenshot.clone(),
            screenshot_on: self.screenshot_on.clone(),
            timeout: self.timeout.map(Duration::from_secs),
            sandbox,
        })
    }
}

/// `PATH[,ro|,rw][,id=NAME]`: options are peeled off the end, so a path may itself hold
/// commas. Without `id=`, disk `index` is known to the guest as `disk<index>`.
fn disk_arg(index: usize, arg: &str) -> (PathBuf, DiskConfig) {
    let mut path = arg;
    let mut read_only = false;
    let mut id = None;
    while let Some((rest, option)) = path.rsplit_once(',') {
        match option {
            "ro" => read_only = true,
            "rw" => read_only = false,
            _ => match option.strip_prefix("id=") {
                Some(name) if id.is_none() => id = Some(name.to_string()),
                _ => break,
            },
        }
        path = rest;
    }
    (
        PathBuf::from(path),
        DiskConfig {
            id: id.unwrap_or_else(|| format!("disk{index}")),
            read_only,
        },
    )
}

fn open(what: &'static str, path: &Path, write: bool) -> Result<File, ArgsError> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|source| ArgsError::Open {
            what,
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse_with_and_without_suffix() {
        assert_eq!(parse_memory_mib("512").unwrap(), 512);
        assert_eq!(parse_memory_mib("512M").unwrap(), 512);
        assert_eq!(parse_memory_mib("2G").unwrap(), 2048);
        assert_eq!(parse_memory_mib("1GiB").unwrap(), 1024);
        assert_eq!(parse_memory_mib("2048K").unwrap(), 2);
        assert!(parse_memory_mib("1000K").is_err());
        assert!(parse_memory_mib("lots")
            .unwrap_err()
            .to_string()
            .contains("512M"));
        assert!(parse_memory_mib("99999999999999999G").is_err());
    }

    #[test]
    fn display_sizes_parse_and_bad_ones_say_how_to_write_them() {
        assert_eq!(
            parse_display("1280x800").unwrap(),
            Some(DisplaySize {
                width: 1280,
                height: 800
            })
        );
        assert!(parse_display("1024*768")
            .unwrap_err()
            .to_string()
            .contains("WIDTHxHEIGHT"));
        assert!(parse_display("10x10").is_err());
        assert_eq!(parse_display("none").unwrap(), None);
    }

    #[test]
    fn disks_keep_their_order_and_read_only_flag() {
        let cli = VmmCli::parse_from([
            "bulkhead-vmm",
            "run",
            "--kernel=/k",
            "--disk=/a.img,ro",
            "--disk=/b.img",
        ]);
        let VmmCommand::Run(run) = cli.command else {
            panic!("not run")
        };
        let disks: Vec<_> = run
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| disk_arg(i, d))
            .collect();
        assert_eq!(disks[0].0, PathBuf::from("/a.img"));
        assert!(disks[0].1.read_only);
        assert_eq!(disks[1].0, PathBuf::from("/b.img"));
        assert!(!disks[1].1.read_only);
        assert_eq!(disks[1].1.id, "disk1");
    }

    #[test]
    fn a_disk_takes_its_id_and_flags_from_the_end_of_the_argument() {
        let (path, c) = disk_arg(0, "/img,s/root.sqfs,ro,id=root");
        assert_eq!(path, PathBuf::from("/img,s/root.sqfs"));
        assert!(c.read_only);
        assert_eq!(c.id, "root");
        let (path, c) = disk_arg(3, "/p.img,id=private");
        assert_eq!(path, PathBuf::from("/p.img"));
        assert!(!c.read_only);
        assert_eq!(c.id, "private");
    }

    #[test]
    fn a_bare_run_is_sandboxed_unless_no_sandbox_is_given() {
        let run = |extra: &[&str]| {
            let mut argv = vec!["bulkhead-vmm", "run", "--test-card"];
            argv.extend_from_slice(extra);
            match VmmCli::parse_from(argv).command {
                VmmCommand::Run(run) => run.no_sandbox,
                _ => panic!("not run"),
            }
        };
        assert!(!run(&[]));
        assert!(run(&["--no-sandbox"]));
    }

    #[test]
    fn a_linux_run_needs_a_kernel_and_the_test_card_needs_none() {
        assert!(VmmCli::try_parse_from(["bulkhead-vmm", "run"]).is_err());
        assert!(VmmCli::try_parse_from(["bulkhead-vmm", "run", "--test-card"]).is_ok());
        assert!(
            VmmCli::try_parse_from(["bulkhead-vmm", "run", "--test-card", "--kernel=/k"]).is_err()
        );
    }
}
