//! `bulkhead-agent`: the partition's side of the host link. Started by the guest's init
//! as root, it opens its virtio-console (`/dev/hvc1`), drops to the session user and
//! serves the host's requests (crate `bulkhead-agent-proto`): ping, read the X CLIPBOARD
//! selection, own it with content the host sends, after a restore from a snapshot
//! reseed the kernel's random generator with the host's entropy (`reseed.rs`), send and
//! receive files (`files.rs`) and open URLs in this partition's browser (`open.rs`). The
//! in-guest commands `bulkhead-copy`, `bulkhead-move` and `bulkhead-open` are this binary
//! too (by the name it is run under), talking to the serving agent over a local socket
//! (`local.rs`). Built static, like `bulkhead-vmm`, so the same binary runs in the busybox
//! initramfs and in every template.

/// One line to stderr in one `write`: the agent shares the guest's console with init's
/// own messages, and `eprintln!` writes a formatted line in pieces that another writer
/// can split.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!("{}\n", format_args!($($arg)*));
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }};
}

mod files;
mod local;
mod open;
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

/// Written once the link is raw (see `run`): init's FIFO, or a plain file without one.
const READY_FILE: &str = "/run/bulkhead-agent.ready";

/// Writes a line to `path` ([`READY_FILE`]). Non-blocking: a FIFO nobody reads any more
/// (init stopped waiting) is an error here, never a hung agent.
fn say_ready(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?
        .write_all(b"ready\n")
}

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
    /// The session user's home: files from other partitions land in its `Incoming/`.
    #[arg(long, default_value = "/home/user")]
    home: PathBuf,
    /// The browser that opens URLs from other partitions (`BROWSER URL`).
    #[arg(long, default_value = "firefox-esr")]
    browser: String,
    /// The local socket of the in-guest commands.
    #[arg(long, default_value = local::SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Option<Cmd>,
}

/// Without a command the agent serves the host; these use the same X code from a shell
/// inside the guest (no xclip in the template).
#[derive(clap::Subcommand)]
enum Cmd {
    /// Print the CLIPBOARD's text (or `PNG <n> bytes`) and exit; `--out FILE` writes
    /// the content there as it is.
    ClipGet {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Own the CLIPBOARD with TEXT (or, with `--png FILE`, that image) and serve it
    /// until another client takes it or `--seconds` pass.
    ClipSet {
        #[arg(required_unless_present = "png")]
        text: Option<String>,
        #[arg(long)]
        png: Option<PathBuf>,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Send FILEs to another partition (the host asks where); `bulkhead-copy`.
    Copy { files: Vec<PathBuf> },
    /// Like copy, then delete the FILEs once they landed; `bulkhead-move`.
    Move { files: Vec<PathBuf> },
    /// Open URL in another partition's browser (`--in` it, or where the policy says);
    /// `bulkhead-open`.
    Open {
        url: String,
        #[arg(long = "in")]
        target: Option<String>,
    },
}

/// `bulkhead-copy FILE…`, `bulkhead-move FILE…`, `bulkhead-open URL [--in PARTITION]`.
#[derive(Parser)]
struct FilesArgs {
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Parser)]
struct OpenArgs {
    url: String,
    #[arg(long = "in")]
    target: Option<String>,
}

/// The command when run as one of the in-guest commands' names.
fn command_by_name() -> Option<Cmd> {
    let argv0 = std::env::args_os().next()?;
    let name = std::path::Path::new(&argv0)
        .file_name()?
        .to_str()?
        .to_string();
    Some(match name.as_str() {
        "bulkhead-copy" => Cmd::Copy {
            files: FilesArgs::parse().files,
        },
        "bulkhead-move" => Cmd::Move {
            files: FilesArgs::parse().files,
        },
        "bulkhead-open" => {
            let a = OpenArgs::parse();
            Cmd::Open {
                url: a.url,
                target: a.target,
            }
        }
        _ => return None,
    })
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
    if let Some(cmd) = command_by_name() {
        std::process::exit(client(&cmd, std::path::Path::new(local::SOCKET)));
    }
    let args = Args::parse();
    if let Some(cmd) = &args.command {
        if matches!(cmd, Cmd::Copy { .. } | Cmd::Move { .. } | Cmd::Open { .. }) {
            std::process::exit(client(cmd, &args.socket));
        }
        if let Err(e) = clipboard_command(cmd, &args.display) {
            say!("bulkhead-agent: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = run(&args) {
        say!("bulkhead-agent: {e}");
        std::process::exit(1);
    }
}

/// `bulkhead-copy`, `-move`, `-open`: the exit code.
fn client(cmd: &Cmd, socket: &std::path::Path) -> i32 {
    let request = match cmd {
        Cmd::Copy { files } | Cmd::Move { files } => local::Request::Files {
            paths: local::absolute(files),
            is_move: matches!(cmd, Cmd::Move { .. }),
        },
        Cmd::Open { url, target } => local::Request::Open {
            url: url.clone(),
            target: target.clone(),
        },
        _ => return 2,
    };
    local::run_client(&request, socket)
}

/// `clip-get` / `clip-set`: the serving agent's X code from a shell in the guest.
fn clipboard_command(cmd: &Cmd, display: &str) -> Result<(), String> {
    use bulkhead_agent_proto::Clipboard;
    let mut clip = x11::Clipboard::new(display.to_string());
    match cmd {
        Cmd::ClipGet { out } => {
            let content = clip.get().map_err(|e| e.to_string())?;
            if let Some(path) = out {
                let bytes = match &content {
                    Some(Clipboard::Text(t)) => t.as_bytes(),
                    Some(Clipboard::Png(p)) => p.as_slice(),
                    None => &[],
                };
                std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            match content {
                Some(Clipboard::Text(t)) => println!("{t}"),
                Some(Clipboard::Png(p)) => println!("PNG {} bytes", p.len()),
                None => println!(),
            }
            Ok(())
        }
        Cmd::ClipSet { text, png, seconds } => {
            let content = match (png, text) {
                (Some(path), _) => Clipboard::Png(
                    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
                ),
                (None, Some(t)) => Clipboard::Text(t.clone()),
                (None, None) => return Err("nothing to set".into()),
            };
            clip.set(content).map_err(|e| e.to_string())?;
            clip.serve_for(std::time::Duration::from_secs(*seconds));
            Ok(())
        }
        _ => Err("not a clipboard command".into()),
    }
}

fn run(args: &Args) -> Result<(), AgentError> {
    // First, while root and before any fd worth keeping from it is open.
    let reseeder = reseed::Reseeder::spawn();
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
    if let Err(e) = say_ready(std::path::Path::new(READY_FILE)) {
        say!("bulkhead-agent: writing {READY_FILE}: {e}");
    }
    let owner = args.uid.map(|u| (u, args.gid.unwrap_or(u)));
    let socket_dir = args.socket.parent().unwrap_or(std::path::Path::new("/"));
    if let Err(e) = local::prepare_dir(socket_dir, owner) {
        say!(
            "bulkhead-agent: {}: {e}; bulkhead-copy and -open will not work",
            socket_dir.display()
        );
    }
    if let Some(uid) = args.uid {
        drop_privileges(uid, args.gid.unwrap_or(uid))
            .map_err(|source| AgentError::Drop { uid, source })?;
    }
    let server = local::Server::bind(&args.socket)
        .map_err(|e| say!("bulkhead-agent: {}: {e}", args.socket.display()))
        .ok();
    let mut agent = Agent {
        clip: x11::Clipboard::new(args.display.clone()),
        reseeder,
        files: files::Files::default(),
        server,
        home: args.home.clone(),
        browser: args.browser.clone(),
        display: args.display.clone(),
        next_open: 0,
    };
    send(
        &mut link,
        &AgentMessage::Hello {
            version: PROTOCOL_VERSION,
            features: HELLO_FEATURES,
        },
    )?;
    let mut decoder = Decoder::<HostMessage>::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut msgs = Vec::new();
    loop {
        // Serve X selection requests while the host is quiet (we may own CLIPBOARD),
        // and the in-guest commands.
        let mut fds = vec![libc::pollfd {
            fd: link.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let others = agent
            .clip
            .fd()
            .into_iter()
            .chain(agent.server.iter().flat_map(local::Server::fds));
        for fd in others {
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
        agent.clip.serve_pending();
        for msg in agent.local_requests() {
            send(&mut link, &msg)?;
        }
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
            if let Some(reply) = agent.handle(msg)? {
                send(&mut link, &reply)?;
            }
        }
    }
}

const HELLO_FEATURES: u32 = features::CLIPBOARD | features::FILES | features::OPEN_URL;

/// What the serving agent holds.
struct Agent {
    clip: x11::Clipboard,
    reseeder: reseed::Reseeder,
    files: files::Files,
    server: Option<local::Server>,
    home: PathBuf,
    browser: String,
    display: String,
    next_open: u32,
}

impl Agent {
    /// Requests of the in-guest commands: the messages to send the host.
    fn local_requests(&mut self) -> Vec<AgentMessage> {
        let Some(server) = &mut self.server else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (client, request) in server.poll() {
            match request {
                Err(e) => server.finish(client, &format!("error {e}")),
                Ok(local::Request::Files { paths, is_move }) => {
                    match self.files.offer(&paths, is_move) {
                        Ok((offer, files)) => {
                            server.wait(
                                client,
                                local::Waiting::Offer(offer),
                                "waiting for the host: choose the target partition in Bulkhead's window",
                            );
                            out.push(AgentMessage::FileOffer {
                                offer,
                                is_move,
                                files,
                            });
                        }
                        Err(e) => server.finish(client, &format!("error {e}")),
                    }
                }
                Ok(local::Request::Open { url, target }) => {
                    let checked = bulkhead_agent_proto::check_url(&url)
                        .map_err(|e| e.to_string())
                        .and_then(|()| match &target {
                            Some(t) => bulkhead_agent_proto::check_file_name(t)
                                .map_err(|e| format!("partition name: {e}")),
                            None => Ok(()),
                        });
                    if let Err(e) = checked {
                        server.finish(client, &format!("error {e}"));
                        continue;
                    }
                    self.next_open = self.next_open.wrapping_add(1);
                    let request = self.next_open;
                    server.wait(
                        client,
                        local::Waiting::Open(request),
                        "asking the host to open it",
                    );
                    out.push(AgentMessage::OpenUrl {
                        request,
                        url,
                        target,
                    });
                }
            }
        }
        out
    }

    fn handle(&mut self, msg: HostMessage) -> Result<Option<AgentMessage>, AgentError> {
        let done_or = |id: u32, r: Result<(), String>| match r {
            Ok(()) => AgentMessage::Done { id },
            Err(reason) => failed_text(id, reason),
        };
        Ok(Some(match msg {
            HostMessage::Restored { entropy } => {
                if let Err(e) = self.reseeder.reseed(&entropy) {
                    say!("bulkhead-agent: handing the host's entropy to the kernel: {e}");
                }
                // The host's end is new: what it had in flight is gone with it.
                for offer in self.files.reset() {
                    if let Some(s) = &mut self.server {
                        s.finish_waiting(
                            local::Waiting::Offer(offer),
                            "error the partition was restored from a snapshot meanwhile; try again",
                        );
                    }
                }
                // The host's end of the link is new: introduce ourselves again.
                AgentMessage::Hello {
                    version: PROTOCOL_VERSION,
                    features: HELLO_FEATURES | features::RESTORED,
                }
            }
            HostMessage::Hello { version } if version == PROTOCOL_VERSION => return Ok(None),
            HostMessage::Hello { version } => return Err(AgentError::Version(version)),
            HostMessage::Ping { id } => AgentMessage::Pong { id },
            HostMessage::ClipboardGet { id } => match self.clip.get() {
                Ok(content) => AgentMessage::Clipboard { id, content },
                Err(e) => failed(id, e),
            },
            HostMessage::ClipboardSet { id, content } => match self.clip.set(content) {
                Ok(()) => AgentMessage::ClipboardSet { id },
                Err(e) => failed(id, e),
            },
            HostMessage::FileRead {
                id,
                offer,
                index,
                offset,
                len,
            } => match self.files.read(offer, index, offset, len) {
                Ok(data) => AgentMessage::FileData { id, data },
                Err(reason) => failed_text(id, reason),
            },
            HostMessage::FileIncoming {
                id,
                transfer,
                source,
                files,
            } => done_or(
                id,
                self.files.incoming(&self.home, transfer, &source, &files),
            ),
            HostMessage::FileWrite {
                id,
                transfer,
                index,
                offset,
                data,
            } => done_or(id, self.files.write(transfer, index, offset, &data)),
            HostMessage::FileCommit {
                id,
                transfer,
                abort,
            } => done_or(id, self.files.commit(transfer, abort)),
            HostMessage::FileOutcome { offer, error } => {
                if let Some(line) = self.files.outcome(offer, error.as_deref()) {
                    if let Some(s) = &mut self.server {
                        s.finish_waiting(local::Waiting::Offer(offer), &line);
                    }
                }
                return Ok(None);
            }
            HostMessage::OpenUrl { id, url } => done_or(
                id,
                open::open_url(&self.browser, &url, &self.display, &self.home),
            ),
            HostMessage::OpenOutcome { request, error } => {
                let line = match error {
                    None => "ok opened".to_string(),
                    Some(e) => format!("error {e}"),
                };
                if let Some(s) = &mut self.server {
                    s.finish_waiting(local::Waiting::Open(request), &line);
                }
                return Ok(None);
            }
        }))
    }
}

fn failed(id: u32, e: x11::ClipError) -> AgentMessage {
    failed_text(id, e.to_string())
}

fn failed_text(id: u32, reason: String) -> AgentMessage {
    let mut reason = reason;
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
        say!(
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

#[cfg(test)]
mod tests {
    use super::say_ready;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    fn fifo(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("ready");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        path
    }

    #[test]
    fn ready_is_a_line_in_a_plain_file_when_init_made_no_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready");
        say_ready(&path).unwrap();
        say_ready(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"ready\n");
    }

    #[test]
    fn ready_reaches_init_waiting_on_its_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path());
        // Init holds the FIFO open read-write while it waits.
        let mut init = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        say_ready(&path).unwrap();
        let mut line = [0u8; 6];
        init.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"ready\n");
    }

    #[test]
    fn a_fifo_nobody_reads_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path());
        let err = say_ready(&path).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENXIO));
        // Nothing was left open: a reader that comes later finds no writer.
        let mut late = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let mut buf = Vec::new();
        assert_eq!(late.read_to_end(&mut buf).unwrap(), 0);
    }
}
