//! `bulkhead-vmm`'s flags, and how a bare run turns them into a launch config and the
//! files it names (a supervised partition gets both over its control socket instead).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use kvm_ioctls::Kvm;
use vmm_core::builder::{BootSource, DiskConfig as BlockDisk, VmConfig};
use vmm_core::devices::legacy::SerialSink;
use vmm_core::hostcheck::{self, HostError};
use vmm_core::launch::{
    parse_display, parse_memory_mib, AgentChannel, BootConfig, DiskConfig, DisplaySize,
    LaunchConfig, LaunchError, LaunchFiles, NetworkConfig, DEFAULT_CMDLINE,
};
use vmm_core::partition::bare::{BareOptions, Sandbox, SnapshotOnMarker};
use vmm_core::snapshot::{Snapshot, SnapshotFiles};

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
    /// Continue a partition from a snapshot directory written by `run --snapshot-on`.
    Restore(Box<RestoreArgs>),
}

/// `bulkhead-vmm restore DIR`: the output flags mirror `run`'s.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The snapshot directory (`state` and `memory`).
    pub dir: PathBuf,
    /// Serial console output: a file, or `-` for stdout.
    #[arg(long, default_value = "-")]
    pub serial: String,
    /// Save the framebuffer as PNG (at --screenshot-on's marker, else when the guest stops).
    #[arg(long)]
    pub screenshot: Option<PathBuf>,
    #[arg(long, requires = "screenshot")]
    pub screenshot_on: Option<String>,
    /// Stop the partition after this many seconds (exit code 4).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Also check the memory file against its SHA-256 (reads all of it first).
    #[arg(long)]
    pub verify: bool,
    /// Run the guest in an unconfined process.
    #[arg(long)]
    pub no_sandbox: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Linux kernel to boot: a bzImage or an uncompressed vmlinux (ELF).
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
    /// The network: `none` (no device at all) or `passt` (virtio-net through a passt
    /// started here from PATH, on a socketpair).
    #[arg(long, value_enum, default_value_t = NetMode::None)]
    pub net: NetMode,
    /// With `--net passt`: allow only PROTO:DEST:PORTS (repeatable; tcp|udp|icmp|any,
    /// `*` / an address / a CIDR, IPv6 in brackets, `80`, `80,443`, `8000-8080`). Puts
    /// `bulkhead-netrelay` (next to this binary, or from PATH) between the partition and
    /// passt; without `--allow` the partition is plain NAT.
    #[arg(long = "allow", value_name = "PROTO:DEST:PORTS", requires = "net")]
    pub allow: Vec<String>,
    /// With `--allow`: let DNS through to passt's resolver (this host's nameservers).
    #[arg(long, requires = "allow")]
    pub dns: bool,
    /// When this text appears on the serial console: pause, write a snapshot to
    /// --snapshot-dir, end with status 0. Needs --no-sandbox.
    #[arg(long, requires_all = ["snapshot_dir", "no_sandbox"], conflicts_with = "screenshot_on")]
    pub snapshot_on: Option<String>,
    /// Where --snapshot-on writes (`state` and `memory`; created, files replaced).
    #[arg(long, requires = "snapshot_on")]
    pub snapshot_dir: Option<PathBuf>,
}

/// What `restore` needs besides the snapshot: the launch and where its disks were.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedLaunch {
    launch: LaunchConfig,
    disk_paths: Vec<PathBuf>,
}

/// `--net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetMode {
    None,
    Passt,
}

/// The helper processes a bare run started for its network; killed and reaped on drop
/// (passt with `--fd` also ends by itself when the VMM's end of the socket closes).
#[derive(Debug, Default)]
pub struct NetProcesses {
    children: Vec<(&'static str, Child)>,
}

impl Drop for NetProcesses {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The passt command line for the socket at `fd` (inherited by the child).
fn passt_args(fd: RawFd) -> Vec<String> {
    [
        "--fd",
        &fd.to_string(),
        // Foreground, errors to stderr only, no informational chatter.
        "-f",
        "-e",
        "-q",
        // The guest's receive buffers hold standard frames (no offloads, no mergeable
        // buffers), so passt announces the standard MTU.
        "-m",
        "1500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A connected stream socketpair, both ends close-on-exec.
fn stream_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    Ok(socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Lets `fd` survive exec into the next child spawned (and only that one: the caller
/// drops it right after).
fn inheritable(fd: &OwnedFd) -> std::io::Result<()> {
    Ok(rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?)
}

/// Starts passt on one end of a fresh socketpair; returns the other end.
fn start_passt(procs: &mut NetProcesses) -> Result<OwnedFd, ArgsError> {
    let io = |source| ArgsError::Passt { source };
    let (ours, theirs) = stream_pair().map_err(io)?;
    inheritable(&theirs).map_err(io)?;
    let child = Command::new("passt")
        .args(passt_args(theirs.as_raw_fd()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(io)?;
    drop(theirs);
    procs.children.push(("passt", child));
    Ok(ours)
}

/// `bulkhead-netrelay` next to this binary, else from PATH.
fn relay_program() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(RELAY)));
    match beside {
        Some(p) if p.is_file() => p,
        _ => PathBuf::from(RELAY),
    }
}

const RELAY: &str = "bulkhead-netrelay";

/// The nameservers in `resolv_conf` (what passt hands the guest by DHCP).
fn nameservers(resolv_conf: &str) -> Vec<std::net::IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

/// The relay's command line between `guest` and `passt` fds.
fn relay_args(guest: RawFd, passt: RawFd, allow: &[String], dns: bool) -> Vec<String> {
    let mut a = vec![
        "--guest-fd".to_string(),
        guest.to_string(),
        "--passt-fd".to_string(),
        passt.to_string(),
    ];
    for rule in allow {
        a.push(format!("--allow={rule}"));
    }
    if dns {
        a.push("--dns".into());
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        for ns in nameservers(&conf) {
            a.push(format!("--resolver={ns}"));
        }
    }
    a
}

/// passt, then the relay between it and a socket for the partition; returns that socket.
fn start_passt_behind_relay(
    procs: &mut NetProcesses,
    allow: &[String],
    dns: bool,
) -> Result<OwnedFd, ArgsError> {
    let passt_side = start_passt(procs)?;
    let io = |source| ArgsError::Relay { source };
    let (ours, relay_guest) = stream_pair().map_err(io)?;
    inheritable(&relay_guest).map_err(io)?;
    inheritable(&passt_side).map_err(io)?;
    let child = Command::new(relay_program())
        .args(relay_args(
            relay_guest.as_raw_fd(),
            passt_side.as_raw_fd(),
            allow,
            dns,
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(io)?;
    drop((relay_guest, passt_side));
    procs.children.push(("bulkhead-netrelay", child));
    Ok(ours)
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
    #[error("starting passt (from PATH) for --net passt: {source}")]
    Passt { source: std::io::Error },
    #[error("--allow {0} needs --net passt")]
    AllowWithoutNetwork(String),
    #[error("starting {RELAY} for --allow: {source}")]
    Relay { source: std::io::Error },
    #[error(transparent)]
    Snapshot(#[from] vmm_core::snapshot::SnapshotError),
    #[error("snapshot {dir}: it was not written by `bulkhead-vmm run --snapshot-on` ({reason})")]
    NotBare { dir: PathBuf, reason: String },
}

impl RunArgs {
    /// The launch config these flags describe and the files it names, opened here, and
    /// the network helpers started for it.
    pub fn launch(&self) -> Result<(LaunchConfig, LaunchFiles, NetProcesses), ArgsError> {
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
            network: match self.net {
                NetMode::None => NetworkConfig::None,
                NetMode::Passt => NetworkConfig::Stream,
            },
            agent: AgentChannel::VirtioConsole,
            snapshot_on: None,
            snapshot_on_request: false,
        };
        config.validate()?;
        if let (Some(rule), NetMode::None) = (self.allow.first(), self.net) {
            return Err(ArgsError::AllowWithoutNetwork(rule.clone()));
        }
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
            network: None,
            snapshot_in: None,
            snapshot_out: None,
        };
        let mut procs = NetProcesses::default();
        let mut files = files;
        if self.net == NetMode::Passt {
            files.network = Some(if self.allow.is_empty() {
                start_passt(&mut procs)?
            } else {
                start_passt_behind_relay(&mut procs, &self.allow, self.dns)?
            });
        }
        Ok((config, files, procs))
    }

    pub fn bare_options(
        &self,
        sandbox: Sandbox,
        launch: &LaunchConfig,
    ) -> Result<BareOptions, ArgsError> {
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
        let snapshot = match (&self.snapshot_on, &self.snapshot_dir) {
            (Some(marker), Some(dir)) => {
                let extra = SavedLaunch {
                    launch: launch.clone(),
                    disk_paths: self
                        .disks
                        .iter()
                        .enumerate()
                        .map(|(i, d)| disk_arg(i, d).0)
                        .map(|p| std::path::absolute(&p).unwrap_or(p))
                        .collect(),
                };
                Some(SnapshotOnMarker {
                    marker: marker.clone(),
                    files: SnapshotFiles::create(dir)?,
                    dir: dir.clone(),
                    extra: serde_json::to_value(&extra).unwrap_or_default(),
                })
            }
            _ => None,
        };
        Ok(BareOptions {
            serial,
            screenshot: self.screenshot.clone(),
            screenshot_on: self.screenshot_on.clone(),
            timeout: self.timeout.map(Duration::from_secs),
            sandbox,
            snapshot,
        })
    }
}

fn serial_out(serial: &str) -> Result<Box<dyn Write + Send>, ArgsError> {
    if serial == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    let path = PathBuf::from(serial);
    Ok(Box::new(File::create(&path).map_err(|source| {
        ArgsError::Open {
            what: "serial log",
            path,
            source,
        }
    })?))
}

impl RestoreArgs {
    /// Opens /dev/kvm and the snapshot (checked), reopens its disks, and returns what
    /// `bare::restore` takes.
    pub fn open(
        &self,
        sandbox: Sandbox,
    ) -> Result<(Kvm, Snapshot, VmConfig, BareOptions), ArgsError> {
        let (kvm, _) = hostcheck::open_kvm()?;
        let snapshot = Snapshot::open(&self.dir, &kvm, self.verify)?;
        let not_bare = |reason: String| ArgsError::NotBare {
            dir: self.dir.clone(),
            reason,
        };
        let saved: SavedLaunch = serde_json::from_value(snapshot.config.extra.clone())
            .map_err(|e| not_bare(e.to_string()))?;
        if saved.disk_paths.len() != saved.launch.disks.len() {
            return Err(not_bare("disk paths and disks differ in number".into()));
        }
        let disks = saved
            .launch
            .disks
            .iter()
            .zip(&saved.disk_paths)
            .map(|(d, path)| {
                Ok(BlockDisk {
                    file: open("disk", path, !d.read_only)?,
                    read_only: d.read_only,
                    id: d.id.clone(),
                })
            })
            .collect::<Result<Vec<_>, ArgsError>>()?;
        let config = VmConfig {
            mem_mib: snapshot.config.mem_mib,
            vcpus: snapshot.config.vcpus,
            boot: BootSource::Snapshot,
            display: snapshot.config.display,
            // Replaced by the one the options ask for.
            serial: SerialSink::new(Box::new(std::io::sink())),
            disks,
        };
        let options = BareOptions {
            serial: serial_out(&self.serial)?,
            screenshot: self.screenshot.clone(),
            screenshot_on: self.screenshot_on.clone(),
            timeout: self.timeout.map(Duration::from_secs),
            sandbox,
            snapshot: None,
        };
        Ok((kvm, snapshot, config, options))
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
    fn the_network_is_none_unless_asked_for() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["bulkhead-vmm", "run", "--test-card"];
            argv.extend_from_slice(extra);
            match VmmCli::try_parse_from(argv).map(|c| c.command) {
                Ok(VmmCommand::Run(run)) => Ok(run.net),
                Ok(_) => panic!("not run"),
                Err(e) => Err(e),
            }
        };
        assert_eq!(parse(&[]).unwrap(), NetMode::None);
        assert_eq!(parse(&["--net", "none"]).unwrap(), NetMode::None);
        assert_eq!(parse(&["--net", "passt"]).unwrap(), NetMode::Passt);
        assert!(parse(&["--net", "slirp"]).is_err());
    }

    #[test]
    fn passt_is_told_the_socket_and_to_stay_in_the_foreground() {
        let a = passt_args(7);
        assert!(a.windows(2).any(|w| w == ["--fd", "7"]), "{a:?}");
        assert!(a.contains(&"-f".to_string()));
    }

    #[test]
    fn allow_rules_and_dns_reach_the_relay_command_line() {
        let a = relay_args(5, 6, &["tcp:*:443".to_string()], false);
        assert_eq!(
            a,
            ["--guest-fd", "5", "--passt-fd", "6", "--allow=tcp:*:443"]
        );
        assert!(VmmCli::try_parse_from([
            "bulkhead-vmm",
            "run",
            "--test-card",
            "--net=passt",
            "--allow=tcp:*:443",
            "--dns"
        ])
        .is_ok());
        // --dns means nothing without a relay.
        assert!(VmmCli::try_parse_from(["bulkhead-vmm", "run", "--test-card", "--dns"]).is_err());
    }

    #[test]
    fn nameservers_come_from_resolv_conf_lines() {
        let conf = "# x\nnameserver 192.0.2.53\nsearch lan\nnameserver ::1\nnameserver bad\n";
        assert_eq!(
            nameservers(conf),
            vec![
                "192.0.2.53".parse::<std::net::IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
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
