//! `bulkhead-netrelay --guest-fd N --passt-fd M [--allow PROTO:DEST:PORTS]... [--dns]
//! [--resolver ADDR]... [--control-fd C]`: relays between the two inherited sockets,
//! enforcing the rules; with `--control-fd` the rules come from the supervisor instead
//! (see `netrelay::control`).
//! Exit codes: 0 a side closed, 1 bad arguments or setup, 3 a side broke the protocol or
//! failed.

use std::net::IpAddr;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;

use clap::Parser;

use netrelay::relay::{self, Event, LogLimit, RelayEnd, Stats};
use netrelay::rules::{parse_allow, RuleSet};

#[derive(Debug, Parser)]
#[command(
    name = "bulkhead-netrelay",
    version,
    about = "Bulkhead's firewall between a partition's network stream and passt"
)]
struct Cli {
    /// The VMM's end: a connected AF_UNIX stream socket speaking passt's protocol.
    #[arg(long)]
    guest_fd: RawFd,
    /// passt's end (passt runs with --fd on the other end of this socketpair).
    #[arg(long)]
    passt_fd: RawFd,
    /// The supervisor's control channel: an AF_UNIX SOCK_SEQPACKET socket. The rules
    /// then come from it (no --allow/--dns); the guest's frames wait for the first set.
    #[arg(long, conflicts_with_all = ["allow", "dns"])]
    control_fd: Option<RawFd>,
    /// Allow PROTO:DEST:PORTS (tcp|udp|icmp|any; `*`, an address or CIDR, IPv6 in
    /// brackets; `80`, `80,443`, `8000-8080`). No rule: nothing but the link's own
    /// traffic (DHCP, ARP, neighbour discovery) passes.
    #[arg(long = "allow", value_name = "PROTO:DEST:PORTS")]
    allow: Vec<String>,
    /// Let DNS through to the resolvers given with --resolver (passt's).
    #[arg(long)]
    dns: bool,
    /// passt's resolver (the nameserver its DHCP hands out).
    #[arg(long = "resolver", value_name = "ADDR")]
    resolvers: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error(transparent)]
    Allow(#[from] netrelay::rules::AllowError),
    #[error("--{flag} {fd}: not an open socket: {source}")]
    NotASocket {
        flag: &'static str,
        fd: RawFd,
        source: std::io::Error,
    },
    #[error("--guest-fd, --passt-fd and --control-fd must differ; {0} is given twice")]
    SameFd(RawFd),
    #[error("--control-fd {fd}: {source}")]
    Control {
        fd: RawFd,
        source: netrelay::control::ControlError,
    },
    #[error(transparent)]
    Sandbox(#[from] netrelay::sandbox::SandboxError),
}

/// Takes ownership of an inherited socket fd after checking it is one.
fn socket_fd(flag: &'static str, fd: RawFd) -> Result<OwnedFd, SetupError> {
    if fd <= 2 {
        return Err(SetupError::NotASocket {
            flag,
            fd,
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    }
    // SAFETY: fcntl(F_GETFD) takes only integers and reads no memory; it tells whether
    // `fd` is open before anything takes ownership of it.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(SetupError::NotASocket {
            flag,
            fd,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` is open (checked above) and was named on the command line by our
    // parent, which passed it to us; fds 0-2 are refused above, the two flags are checked
    // to differ, and nothing else in this process (which has opened nothing yet) owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::net::sockopt::socket_type(&owned).map_err(|e| SetupError::NotASocket {
        flag,
        fd,
        source: e.into(),
    })?;
    Ok(owned)
}

struct Setup {
    guest: OwnedFd,
    passt: OwnedFd,
    control: Option<OwnedFd>,
    rules: RuleSet,
}

fn setup(cli: &Cli) -> Result<Setup, SetupError> {
    let mut fds = vec![cli.guest_fd, cli.passt_fd];
    fds.extend(cli.control_fd);
    for (i, fd) in fds.iter().enumerate() {
        if fds[..i].contains(fd) {
            return Err(SetupError::SameFd(*fd));
        }
    }
    let rules = RuleSet {
        rules: cli
            .allow
            .iter()
            .enumerate()
            .map(|(i, a)| parse_allow(a, i + 1))
            .collect::<Result<_, _>>()?,
        dns: cli.dns,
        resolvers: cli.resolvers.clone(),
        sources: (1..=cli.allow.len())
            .map(|i| format!("--allow #{i}"))
            .collect(),
    };
    netrelay::sandbox::close_fds_except(&fds)?;
    let guest = socket_fd("guest-fd", cli.guest_fd)?;
    let passt = socket_fd("passt-fd", cli.passt_fd)?;
    let control = match cli.control_fd {
        Some(fd) => {
            let owned = socket_fd("control-fd", fd)?;
            netrelay::control::check_seqpacket(owned.as_fd())
                .map_err(|source| SetupError::Control { fd, source })?;
            Some(owned)
        }
        None => None,
    };
    netrelay::sandbox::confine()?;
    Ok(Setup {
        guest,
        passt,
        control,
        rules,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Setup {
        guest,
        passt,
        control,
        rules,
    } = match setup(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bulkhead-netrelay: {e}");
            return ExitCode::from(1);
        }
    };
    let mut limit = LogLimit::new(10);
    let mut stats = Stats::default();
    let end = relay::run_with(
        &guest,
        &passt,
        control.as_ref(),
        rules,
        &mut stats,
        &mut |e| {
            if let Event::RulesApplied {
                generation,
                cut_flows,
            } = e
            {
                eprintln!(
                    "bulkhead-netrelay: rule set {generation} applied; {cut_flows} flows cut"
                );
                return;
            }
            if let Some(skipped) = limit.allow() {
                if skipped > 0 {
                    eprintln!(
                        "bulkhead-netrelay: {skipped} more lines like the next were suppressed"
                    );
                }
                match e {
                    Event::Refused { flow, denial } => eprintln!(
                        "bulkhead-netrelay: refused {} to {} port {}: {denial}",
                        flow.protocol.name(),
                        flow.dst,
                        flow.port.map_or("-".to_string(), |p| p.to_string())
                    ),
                    Event::Cut { flow, denial } => eprintln!(
                        "bulkhead-netrelay: cut {} to {} port {}: {denial}",
                        flow.protocol.name(),
                        flow.dst,
                        flow.port.map_or("-".to_string(), |p| p.to_string())
                    ),
                    Event::Dropped(d) => eprintln!("bulkhead-netrelay: dropped {d:?}"),
                    Event::Control(e) => eprintln!("bulkhead-netrelay: control channel: {e}"),
                    Event::RulesApplied { .. } => {}
                }
            }
        },
    );
    eprintln!(
        "bulkhead-netrelay: {end} ({} frames to passt, {} to the guest, {} refused, {} dropped)",
        stats.to_passt, stats.to_guest, stats.refused, stats.dropped,
    );
    match end {
        RelayEnd::Closed(_) => ExitCode::SUCCESS,
        _ => ExitCode::from(3),
    }
}
