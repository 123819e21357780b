//! The agent binary over a pseudo-terminal, as it meets `/dev/hvc1`: it must speak first,
//! pass bytes unchanged (raw mode: no echo of the host's frames back to the host) and
//! answer each request.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bulkhead_agent_proto::{
    features, AgentMessage, Clipboard, Decoder, Frame, HostMessage, PROTOCOL_VERSION,
};

struct Agent {
    child: Child,
    host: File,
    decoder: Decoder<AgentMessage>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent() -> Agent {
    let (mut main, mut sub) = (-1, -1);
    // SAFETY: openpty writes two fds into the two valid ints; the name and termios
    // pointers may be null.
    let r = unsafe {
        libc::openpty(
            &mut main,
            &mut sub,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just returned by openpty and are owned by nobody else.
    let (main, sub) = unsafe { (OwnedFd::from_raw_fd(main), OwnedFd::from_raw_fd(sub)) };
    let path = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&sub)
    ))
    .unwrap();
    // Its local socket in a directory of its own, not the guest's /run.
    let socket_dir =
        std::env::temp_dir().join(format!("bulkhead-agent-link-{}", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_bulkhead-agent"))
        .arg("--device")
        .arg(&path)
        .arg("--socket")
        .arg(socket_dir.join(format!(
            "socket-{}",
            path.display().to_string().replace('/', "-")
        )))
        // No X server on this display: clipboard requests must fail, not hang.
        .args(["--display", ":97"])
        .env_remove("XAUTHORITY")
        .spawn()
        .unwrap();
    // Keep the sub side open until the agent has it, or the pty hangs up.
    std::thread::sleep(Duration::from_millis(300));
    drop(sub);
    Agent {
        child,
        host: File::from(main),
        decoder: Decoder::new(),
    }
}

impl Agent {
    fn send(&mut self, msg: &HostMessage) {
        self.host.write_all(&msg.encode().unwrap()).unwrap();
    }

    fn recv(&mut self) -> AgentMessage {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.host);
        while out.is_empty() {
            assert!(Instant::now() < deadline, "the agent did not answer");
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the call.
            if unsafe { libc::poll(&mut p, 1, 200) } <= 0 {
                continue;
            }
            let n = self.host.read(&mut buf).unwrap();
            self.decoder.push(&buf[..n], &mut out).unwrap();
        }
        assert_eq!(out.len(), 1, "one answer at a time: {out:?}");
        out.remove(0)
    }
}

#[test]
fn the_agent_says_hello_first_and_answers_a_ping_over_a_raw_tty() {
    let mut agent = start_agent();
    assert_eq!(
        agent.recv(),
        AgentMessage::Hello {
            version: PROTOCOL_VERSION,
            features: features::CLIPBOARD | features::FILES | features::OPEN_URL
        }
    );
    agent.send(&HostMessage::Hello {
        version: PROTOCOL_VERSION,
    });
    // A ping whose bytes include CR, LF, ^C and ^D: a cooked tty would mangle them.
    let id = u32::from_le_bytes([b'\r', b'\n', 3, 4]);
    agent.send(&HostMessage::Ping { id });
    assert_eq!(agent.recv(), AgentMessage::Pong { id });
}

#[test]
fn without_a_display_clipboard_requests_fail_with_a_reason() {
    let mut agent = start_agent();
    agent.recv();
    agent.send(&HostMessage::ClipboardGet { id: 7 });
    match agent.recv() {
        AgentMessage::Failed { id: 7, reason } => {
            assert!(
                reason.contains("cannot reach the X display :97"),
                "{reason}"
            )
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    agent.send(&HostMessage::ClipboardSet {
        id: 8,
        content: Clipboard::Text("x".into()),
    });
    assert!(matches!(agent.recv(), AgentMessage::Failed { id: 8, .. }));
}

#[test]
fn a_host_of_another_version_ends_the_agent() {
    let mut agent = start_agent();
    agent.recv();
    agent.send(&HostMessage::Hello {
        version: PROTOCOL_VERSION + 1,
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            assert!(!status.success());
            break;
        }
        assert!(Instant::now() < deadline, "the agent kept running");
        std::thread::sleep(Duration::from_millis(50));
    }
}
