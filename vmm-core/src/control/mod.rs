//! The control protocol between the supervisor and a partition process.
//!
//! One `socketpair(AF_UNIX, SOCK_STREAM)` per partition. Each frame is a `u32`
//! little-endian payload length followed by that many bytes of JSON ([`Command`] one way,
//! [`Event`] the other); payloads above [`MAX_MESSAGE`] (64 KiB) are refused before
//! anything is read. File descriptors ride along with `SCM_RIGHTS` on the frame's first
//! byte; a reader holds at most [`MAX_FDS_PER_MESSAGE`] of them at any time (more in one
//! frame is a violation, and the extra fds are closed before they reach the reader). A
//! frame must be complete [`FRAME_DEADLINE`] (2 s) after its first byte; between frames a
//! reader waits as long as its socket allows. Any malformed, oversized, overdue or
//! unexpected frame ends the connection: the supervisor
//! marks that partition crashed and no other partition notices.
//!
//! # Integration: what `bulkhead-vmm` does
//!
//! 1. The supervisor starts `bulkhead-vmm partition --control-fd N` with its end of the
//!    socket pair inherited as fd `N` (stdin is `/dev/null`, stderr is the log), and
//!    speaks first: [`Command::Hello`] with the protocol version and the partition's
//!    [`LaunchConfig`], then one [`Command::File`] per file it names (`/dev/kvm`, kernel,
//!    initrd, disks). Early in `main` take the socket with
//!    [`control_stream_from_inherited_fd`], then call [`PartitionEndpoint::handshake`]:
//!    it checks version and config, collects the files and answers [`Event::Hello`].
//! 2. Build the VM. Create the framebuffer with [`Memfd::create`], map it with
//!    [`Memfd::map_shared_rw`] and register that mapping as the framebuffer memslot
//!    (`KVM_MEM_LOG_DIRTY_PAGES`), then send [`Event::Framebuffer`] with the memfd attached:
//!    `endpoint.events.send_with_fds(&Event::Framebuffer { layout }, &[memfd.as_fd()])`.
//!    A partition without a display skips this.
//! 3. Apply the sandbox ([`crate::sandbox::apply_process_sandbox`], keeping the control
//!    fd, `/dev/kvm`'s and disk fds) and say how it went with [`Event::Sandbox`]: on
//!    [`SandboxStatus::Failed`] exit without running the guest. Then send
//!    [`Event::State`]`(`[`VmState::Ready`]`)` and wait for [`Command::Start`] (the
//!    supervisor sends it only after a `Full` or `Reduced` report). Start the vCPU and device threads; each installs its
//!    seccomp profile first. Send `State(Running)`.
//! 4. While running: after each dirty-log pass send [`Event::damage_chunks`] of the
//!    rectangles (nothing when nothing changed); forward serial output with
//!    [`Event::serial_chunks`] and guest console (virtio-console) output with
//!    [`Event::console_chunks`]; hand [`Command::ConsoleWrite`] bytes to the guest
//!    console in order, holding them (bounded) until its driver takes them; answer
//!    [`Command::Stats`] and [`Command::Screenshot`] (flush damage first, then
//!    `ScreenshotReady`); apply [`Command::Input`] to virtio-input; set the balloon's
//!    target on [`Command::SetBalloon`] ([`balloon_target_pages`]: above the guest's RAM
//!    it is ignored and logged, rate-limited) and report its `actual` in
//!    [`VmStats::balloon_mib`];
//!    [`Command::Pause`]/[`Command::Resume`] answer with `State`. Validate every received
//!    command with [`Command::validate`].
//! 5. On [`Command::Stop`] send `State(Stopping)`, press the ACPI power button, and when
//!    the guest is off send `State(PoweredOff)` and exit 0. On a guest fault send
//!    `State(GuestFault { reason })` and exit 1. If the socket closes (supervisor gone),
//!    exit: a partition never outlives its supervisor's connection.
//!
//! The [`MessageWriter`] is used from several threads in practice; wrap it in a `Mutex`.
//!
//! [`Memfd::create`]: crate::shm::Memfd::create
//! [`Memfd::map_shared_rw`]: crate::shm::Memfd::map_shared_rw

mod framing;
mod messages;
mod scm;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use rustix::fs::{fstat, FileType};
use rustix::io::{fcntl_setfd, FdFlags};

pub use framing::{MessageReader, MessageWriter, Received, FRAME_DEADLINE, MAX_MESSAGE};
pub use messages::{
    balloon_target_pages, BalloonTargetError, Command, Event, InputDevice, InputEvent, LimitError,
    Message, SandboxGap, SandboxStatus, SnapshotOutcome, VmState, VmStats, MAX_CONSOLE_CHUNK,
    MAX_DAMAGE_RECTS, MAX_INPUT_EVENTS, MAX_SANDBOX_GAPS, MAX_SERIAL_CHUNK, MAX_TEXT,
    PAGES_PER_MIB, PROTOCOL_VERSION,
};
pub use scm::MAX_FDS_PER_MESSAGE;

use crate::launch::{LaunchConfig, LaunchError, LaunchFiles};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("peer closed the control socket")]
    Closed,
    #[error("control socket closed inside a {expected}-byte read after {got} bytes")]
    Truncated { expected: usize, got: usize },
    #[error("message length 0 is not a message")]
    Empty,
    #[error("message length {len} exceeds the maximum {max}")]
    Oversized { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Malformed(serde_json::Error),
    #[error("message needs {expected} fds but {got} arrived with it")]
    FdMismatch { expected: usize, got: usize },
    #[error("peer sent more than {max} fds in one message")]
    TooManyFds { max: usize },
    #[error("frame not complete {deadline:?} after its first byte ({got} of {expected} bytes)")]
    FrameTimeout {
        deadline: std::time::Duration,
        expected: usize,
        got: usize,
    },
    #[error("message breaks a size limit: {0}")]
    Limit(#[from] LimitError),
    #[error("encoding message: {0}")]
    Encode(serde_json::Error),
    #[error("encoded message is {len} bytes, more than the maximum {max}; split it")]
    TooLargeToSend { len: usize, max: usize },
    #[error("peer speaks protocol version {got}, this build speaks {want}")]
    Version { got: u32, want: u32 },
    #[error("expected Hello as the first message, got {got}")]
    NoHello { got: String },
    #[error("expected a handed-over file, got {got}")]
    NoFile { got: String },
    #[error("launch config: {0}")]
    Launch(#[from] LaunchError),
    #[error("inherited control fd {fd} is not usable: {source}")]
    InheritedFd { fd: RawFd, source: io::Error },
    #[error("inherited control fd {fd} is not a socket (file mode {mode:#o})")]
    NotASocket { fd: RawFd, mode: u32 },
}

impl ControlError {
    /// True when the peer misbehaved (as opposed to the connection simply ending or an
    /// OS error on our side).
    pub fn is_protocol_violation(&self) -> bool {
        !matches!(
            self,
            ControlError::Io(_) | ControlError::Closed | ControlError::Encode(_)
        )
    }
}

/// Takes ownership of the control socket a partition process inherited as `fd`, after
/// checking it is an open Unix socket, and marks it close-on-exec.
///
/// # Safety
/// `fd` must not be owned by anything else in this process (call once, early in `main`,
/// with the number from `--control-fd`).
pub unsafe fn control_stream_from_inherited_fd(fd: RawFd) -> Result<UnixStream, ControlError> {
    let unusable = |e: rustix::io::Errno| ControlError::InheritedFd {
        fd,
        source: e.into(),
    };
    // SAFETY: the caller guarantees `fd` is ours and nobody else closes it; the borrow
    // ends before ownership is taken below. If it is not open, fstat says so (EBADF).
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let st = fstat(borrowed).map_err(unusable)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
        return Err(ControlError::NotASocket {
            fd,
            mode: st.st_mode,
        });
    }
    fcntl_setfd(borrowed, FdFlags::CLOEXEC).map_err(unusable)?;
    // SAFETY: the caller guarantees nobody else owns `fd`; it is open (fstat succeeded).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(UnixStream::from(owned))
}

/// The partition process's end: commands in, events out.
pub struct PartitionEndpoint {
    pub commands: MessageReader<Command>,
    pub events: MessageWriter<Event>,
}

/// What the supervisor's handshake hands a partition process.
pub struct Launch {
    pub endpoint: PartitionEndpoint,
    pub config: LaunchConfig,
    pub files: LaunchFiles,
}

impl PartitionEndpoint {
    /// Waits for the supervisor's [`Command::Hello`] and the files its [`LaunchConfig`]
    /// names, checks both, and answers with [`Event::Hello`] for the config's name.
    pub fn handshake(stream: UnixStream) -> Result<Launch, ControlError> {
        let mut launch = Self::receive_launch(stream)?;
        let name = launch.config.name.clone();
        launch.endpoint.say_hello(&name)?;
        Ok(launch)
    }

    /// The first half of [`PartitionEndpoint::handshake`]: everything but the answer.
    pub fn receive_launch(stream: UnixStream) -> Result<Launch, ControlError> {
        let events = MessageWriter::new(stream.try_clone()?);
        let mut commands = MessageReader::new(stream);
        let config = match commands.recv()?.message {
            Command::Hello { version, launch } if version == PROTOCOL_VERSION => *launch,
            Command::Hello { version, .. } => {
                return Err(ControlError::Version {
                    got: version,
                    want: PROTOCOL_VERSION,
                })
            }
            other => return Err(ControlError::NoHello { got: brief(&other) }),
        };
        config.validate()?;
        let mut handed = Vec::new();
        for _ in config.file_roles() {
            let Received { message, mut fds } = commands.recv()?;
            match (message, fds.pop()) {
                (Command::File { role }, Some(fd)) => handed.push((role, fd)),
                (other, _) => return Err(ControlError::NoFile { got: brief(&other) }),
            }
        }
        let files = LaunchFiles::from_handover(&config, handed)?;
        Ok(Launch {
            endpoint: PartitionEndpoint { commands, events },
            config,
            files,
        })
    }

    /// Answers the supervisor's Hello.
    pub fn say_hello(&mut self, name: &str) -> Result<(), ControlError> {
        self.events.send(&Event::Hello {
            version: PROTOCOL_VERSION,
            name: name.to_string(),
            pid: std::process::id(),
        })
    }
}

/// The supervisor's side of the handshake: [`Command::Hello`] with the config, then each
/// file as a [`Command::File`].
pub fn send_launch(
    writer: &mut MessageWriter<Command>,
    config: &LaunchConfig,
    files: LaunchFiles,
) -> Result<(), ControlError> {
    writer.send(&Command::Hello {
        version: PROTOCOL_VERSION,
        launch: Box::new(config.clone()),
    })?;
    for (role, fd) in files.into_handover() {
        writer.send_with_fds(&Command::File { role }, &[fd.as_fd()])?;
    }
    Ok(())
}

/// Checks the first event from a partition process; returns its name and pid.
pub fn check_partition_hello(first: &Event) -> Result<(String, u32), ControlError> {
    match first {
        Event::Hello { version, name, pid } if *version == PROTOCOL_VERSION => {
            first.validate()?;
            Ok((name.clone(), *pid))
        }
        Event::Hello { version, .. } => Err(ControlError::Version {
            got: *version,
            want: PROTOCOL_VERSION,
        }),
        other => Err(ControlError::NoHello { got: brief(other) }),
    }
}

/// A peer's message for an error line, cut short: it may be 64 KiB of hostile text.
fn brief(message: &impl std::fmt::Debug) -> String {
    let mut text = format!("{message:?}");
    if let Some((cut, _)) = text.char_indices().nth(80) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests;
