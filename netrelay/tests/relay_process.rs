//! The real `bulkhead-netrelay` binary, confined by its own seccomp profile, between two
//! socketpairs: an allowed SYN reaches "passt", a denied one is answered with a RST, and
//! the relay exits cleanly when the guest side closes. A system call missing from its
//! profile would kill it with SIGSYS here.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (a, b)
}

fn inheritable(s: &UnixStream) {
    rustix::io::fcntl_setfd(s, rustix::io::FdFlags::empty()).unwrap();
}

fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut f = (bytes.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(bytes);
    f
}

fn read_frame(s: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut f).unwrap();
    f
}

fn syn(port: u16) -> Vec<u8> {
    let mut f = vec![0x9a; 6];
    f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 0x08, 0x00]);
    f.extend_from_slice(&[
        0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 192, 0, 2, 2, 192, 0, 2, 1,
    ]);
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&port.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    f.extend(t);
    f
}

#[test]
fn the_confined_relay_forwards_allowed_refuses_denied_and_exits_when_the_guest_closes() {
    let (mut guest, relay_guest) = pair();
    let (mut passt, relay_passt) = pair();
    inheritable(&relay_guest);
    inheritable(&relay_passt);
    let child = Command::new(env!("CARGO_BIN_EXE_bulkhead-netrelay"))
        .arg(format!("--guest-fd={}", relay_guest.as_raw_fd()))
        .arg(format!("--passt-fd={}", relay_passt.as_raw_fd()))
        .arg("--allow=tcp:192.0.2.1:8080")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop::<(OwnedFd, OwnedFd)>((relay_guest.into(), relay_passt.into()));

    guest.write_all(&frame(&syn(8080))).unwrap();
    assert_eq!(read_frame(&mut passt), syn(8080));
    guest.write_all(&frame(&syn(22))).unwrap();
    let rst = read_frame(&mut guest);
    assert_eq!(rst[14 + 20 + 13], 0x14, "RST|ACK");
    passt.write_all(&frame(&[0x55; 60])).unwrap();
    assert_eq!(read_frame(&mut guest), vec![0x55; 60]);

    drop(guest);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    assert!(
        stderr.contains("refused tcp to 192.0.2.1 port 22: no rule allows"),
        "{stderr}"
    );
    // passt's side is closed with it.
    let mut b = [0u8; 1];
    assert_eq!(passt.read(&mut b).unwrap(), 0);
}

#[test]
fn the_relay_refuses_to_start_on_fds_that_are_not_sockets() {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead-netrelay"))
        .args(["--guest-fd=40", "--passt-fd=41"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--guest-fd 40"));
}

#[test]
fn the_confined_relay_takes_rules_and_reports_denials_and_stats_over_its_control_fd() {
    use netrelay::control::{self, Client, FromRelay, RuleSpec};
    let (mut guest, relay_guest) = pair();
    let (mut passt, relay_passt) = pair();
    let (ours, theirs) = control::socketpair().unwrap();
    inheritable(&relay_guest);
    inheritable(&relay_passt);
    rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty()).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_bulkhead-netrelay"))
        .arg(format!("--guest-fd={}", relay_guest.as_raw_fd()))
        .arg(format!("--passt-fd={}", relay_passt.as_raw_fd()))
        .arg(format!("--control-fd={}", theirs.as_raw_fd()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop::<(OwnedFd, OwnedFd, OwnedFd)>((relay_guest.into(), relay_passt.into(), theirs));
    let mut client = Client::new(ours).unwrap();
    // Garbage first: logged and dropped, the relay lives on.
    rustix::net::send(&client, b"}{", rustix::net::SendFlags::empty()).unwrap();
    client
        .send_rules(
            vec![RuleSpec {
                action: isolation_policy::network::FirewallAction::Allow,
                protocol: isolation_policy::network::Protocol::Tcp,
                dest: "192.0.2.1".into(),
                ports: "8080".into(),
                source: "/p/partitions.toml:12".into(),
            }],
            false,
        )
        .unwrap();
    assert_eq!(
        client.recv().unwrap(),
        FromRelay::RulesApplied {
            generation: 1,
            cut_flows: 0
        }
    );
    guest.write_all(&frame(&syn(8080))).unwrap();
    assert_eq!(read_frame(&mut passt), syn(8080));
    guest.write_all(&frame(&syn(22))).unwrap();
    assert_eq!(read_frame(&mut guest)[14 + 20 + 13], 0x14, "RST|ACK");
    assert_eq!(
        client.recv().unwrap(),
        FromRelay::Denied {
            protocol: "tcp".into(),
            destination: "192.0.2.1".parse().unwrap(),
            port: Some(22),
            host: None,
            reason: "no rule allows".into(),
            suppressed: 0
        }
    );
    // Stats come every few seconds (the poll timeout path under seccomp).
    match client.recv().unwrap() {
        FromRelay::Stats {
            frames_out, denied, ..
        } => assert_eq!((frames_out, denied), (1, 1)),
        other => panic!("{other:?}"),
    }
    drop(guest);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    assert!(
        stderr.contains("control channel: control message is not a valid message"),
        "{stderr}"
    );
}

#[test]
fn control_fd_and_allow_do_not_mix() {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead-netrelay"))
        .args([
            "--guest-fd=40",
            "--passt-fd=41",
            "--control-fd=42",
            "--allow=tcp:*:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
