//! `bulkhead-agent`: the partition's side of the host link. Started by the guest's init
//! as root, it opens its virtio-console (`/dev/hvc1`), drops to the session user and
//! serves the host's requests (crate `bulkhead-agent-proto`): ping, read the X CLIPBOARD
//! selection, own it with content the host sends, and after a restore from a snapshot
//! reseed the kernel's random generator with the host's entropy (`reseed.rs`). Built
//! static, like `bulkhead-vmm`, so the same binary runs in the busybox initramfs and in
//! every template.

mod reseed;
mod x11;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use bulkhead_agent_proto::{
    features, AgentMessage, Decoder, Frame, HostMessage, MAX_TEXT, PROTOCOL_VERSION,
};
use clap::Parser;

/// Created once the link is raw (see `run`).
const READY_FILE: &str = "/run/bulkhead-agent.ready";

#[derive(Parser)]
#[command(name = "bulkhead-agent", about = "Bulkhead's guest agent")]
struct Args {
    /// The agent's console device.
    #[arg(long, default_value = "/dev/hvc1")]
    device: PathBuf,
    /// Drop to this uid (and `--gid`) once the device is open: the X session's user.
    #[arg(long)]
    uid: Option<u32>,
    #[arg(long, requires = "uid")]
    gid: Option<u32>,
    /// The X display whose CLIPBOARD the agent serves.
    #[arg(long, default_value = ":0")]
    display: String,
    #[command(subcommand)]
    command: Option<Cmd>,
}

/// Without a command the agent serves the host; these use the same X code from a shell
/// inside the guest (no xclip in the template).
#[derive(clap::Subcommand)]
enum Cmd {
    /// Print the CLIPBOARD's text (or `PNG <n> bytes`) and exit.
    ClipGet,
    /// Own the CLIPBOARD with TEXT and serve it until another client takes it or
    /// `--seconds` pass.
    ClipSet {
        text: String,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

#[derive(Debug, thiserror::Error)]
enum AgentError {
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("dropping to uid {uid}: {source}")]
    Drop { uid: u32, source: std::io::Error },
    #[error("the host link: {0}")]
    Link(std::io::Error),
    #[error("the host sent a malformed frame: {0}")]
    Decode(#[from] bulkhead_agent_proto::DecodeError),
    #[error("the host speaks protocol version {0}, this agent {PROTOCOL_VERSION}")]
    Version(u16),
}

fn main() {
    let args = Args::parse();
    if let Some(cmd) = &args.command {
        let mut clip = x11::Clipboard::new(args.display.clone());
        let r = match cmd {
            Cmd::ClipGet => clip.get().map(|c| match c {
                Some(bulkhead_agent_proto::Clipboard::Text(t)) => println!("{t}"),
                Some(bulkhead_agent_proto::Clipboard::Png(p)) => println!("PNG {} bytes", p.len()),
                None => println!(),
            }),
            Cmd::ClipSet { text, seconds } => clip
                .set(bulkhead_agent_proto::Clipboard::Text(text.clone()))
                .map(|()| clip.serve_for(std::time::Duration::from_secs(*seconds))),
        };
        if let Err(e) = r {
            eprintln!("bulkhead-agent: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = run(&args) {
        eprintln!("bulkhead-agent: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), AgentError> {
    // First, while root and before any fd worth keeping from it is open.
    let mut reseeder = reseed::Reseeder::spawn();
    let mut link = File::options()
        .read(true)
        .write(true)
        .open(&args.device)
        .map_err(|source| AgentError::Open {
            path: args.device.display().to_string(),
            source,
        })?;
    make_raw(&link);
    // Until the link is raw the tty would echo the host's bytes back as text: init
    // waits for this before it lets anything snapshot the guest.
    if let Err(e) = File::create(READY_FILE) {
        eprintln!("bulkhead-agent: writing {READY_FILE}: {e}");
    }
    if let Some(uid) = args.uid {
        drop_privileges(uid, args.gid.unwrap_or(uid))
            .map_err(|source| AgentError::Drop { uid, source })?;
    }
    let mut clip = x11::Clipboard::new(args.display.clone());
    send(
        &mut link,
        &AgentMessage::Hello {
            version: PROTOCOL_VERSION,
            features: features::CLIPBOARD,
        },
    )?;
    let mut decoder = Decoder::<HostMessage>::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut msgs = Vec::new();
    loop {
        // Serve X selection requests while the host is quiet (we may own CLIPBOARD).
        let x_fd = clip.fd();
        let mut fds = vec![libc::pollfd {
            fd: link.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(fd) = x_fd {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a live, correctly sized array of pollfd for the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(AgentError::Link(e));
        }
        clip.serve_pending();
        if fds[0].revents == 0 {
            continue;
        }
        let n = match link.read(&mut buf) {
            Ok(0) => {
                // Hung up (no host side yet): wait instead of spinning.
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(AgentError::Link(e)),
        };
        decoder.push(&buf[..n], &mut msgs)?;
        for msg in msgs.drain(..) {
            if let Some(reply) = handle(msg, &mut clip, &mut reseeder)? {
                send(&mut link, &reply)?;
            }
        }
    }
}

fn handle(
    msg: HostMessage,
    clip: &mut x11::Clipboard,
    reseeder: &mut reseed::Reseeder,
) -> Result<Option<AgentMessage>, AgentError> {
    Ok(Some(match msg {
        HostMessage::Restored { entropy } => {
            if let Err(e) = reseeder.reseed(&entropy) {
                eprintln!("bulkhead-agent: handing the host's entropy to the kernel: {e}");
            }
            // The host's end of the link is new: introduce ourselves again.
            AgentMessage::Hello {
                version: PROTOCOL_VERSION,
                features: features::CLIPBOARD | features::RESTORED,
            }
        }
        HostMessage::Hello { version } if version == PROTOCOL_VERSION => return Ok(None),
        HostMessage::Hello { version } => return Err(AgentError::Version(version)),
        HostMessage::Ping { id } => AgentMessage::Pong { id },
        HostMessage::ClipboardGet { id } => match clip.get() {
            Ok(content) => AgentMessage::Clipboard { id, content },
            Err(e) => failed(id, e),
        },
        HostMessage::ClipboardSet { id, content } => match clip.set(content) {
            Ok(()) => AgentMessage::ClipboardSet { id },
            Err(e) => failed(id, e),
        },
        // This agent makes no offers and accepts no files yet.
        HostMessage::FileOutcome { .. } | HostMessage::OpenOutcome { .. } => return Ok(None),
        HostMessage::OpenUrl { id, .. } => AgentMessage::Failed {
            id,
            reason: "this agent does not open URLs yet".into(),
        },
        HostMessage::FileRead { id, .. }
        | HostMessage::FileIncoming { id, .. }
        | HostMessage::FileWrite { id, .. }
        | HostMessage::FileCommit { id, .. } => AgentMessage::Failed {
            id,
            reason: "this agent does not transfer files yet".into(),
        },
    }))
}

fn failed(id: u32, e: x11::ClipError) -> AgentMessage {
    let mut reason = e.to_string();
    if reason.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    AgentMessage::Failed { id, reason }
}

fn send(link: &mut File, msg: &AgentMessage) -> Result<(), AgentError> {
    // Every message this agent builds is within the caps (content was capped when read).
    let frame = msg
        .encode()
        .map_err(|e| AgentError::Link(std::io::Error::other(e)))?;
    link.write_all(&frame).map_err(AgentError::Link)?;
    link.flush().map_err(AgentError::Link)
}

/// A tty link must pass bytes unchanged: no echo (the host would read its own frames
/// back), no line editing, no CR/LF translation. A pipe (tests) is left alone.
fn make_raw(link: &File) {
    let fd = link.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it or fails without touching it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the life of `link`; `t` is a valid termios.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return;
    }
    // SAFETY: `t` was filled by tcgetattr.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: as above.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        eprintln!(
            "bulkhead-agent: cannot make the link raw: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn drop_privileges(uid: u32, gid: u32) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: setgroups with a zero count reads no memory.
    check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: plain system calls on integers.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(uid, uid, uid) })?;
    // SAFETY: as above; a process that could regain root must not go on.
    if unsafe { libc::setuid(0) } == 0 && uid != 0 {
        return Err(std::io::Error::other("could regain root after dropping it"));
    }
    Ok(())
}
