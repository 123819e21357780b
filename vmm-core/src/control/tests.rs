use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::*;
use crate::devices::framebuffer::{DamageRect, FramebufferLayout};
use crate::launch::{AgentChannel, BootConfig, DiskConfig, DisplaySize, FileRole, NetworkConfig};
use crate::shm::{Memfd, MemfdError};

/// A writer, the reader on the other end, and a raw handle on the writer's side for
/// sending bytes the writer never would.
fn pair<M: Message>() -> (MessageWriter<M>, MessageReader<M>, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    let raw = a.try_clone().unwrap();
    (MessageWriter::new(a), MessageReader::new(b), raw)
}

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(message: M) {
    let (mut w, mut r, _) = pair::<M>();
    w.send(&message).unwrap();
    let got = r.recv().unwrap();
    assert_eq!(got.message, message);
    assert!(got.fds.is_empty());
}

fn every_command() -> Vec<Command> {
    vec![
        Command::Hello {
            version: PROTOCOL_VERSION,
            launch: Box::new(test_launch("mail")),
        },
        Command::Start,
        Command::Pause,
        Command::Resume,
        Command::Stop,
        Command::Input {
            events: vec![
                InputEvent {
                    device: InputDevice::Keyboard,
                    ev_type: 1,
                    code: 30,
                    value: 1,
                },
                InputEvent {
                    device: InputDevice::Tablet,
                    ev_type: 3,
                    code: 0,
                    value: -5,
                },
            ],
        },
        Command::Screenshot { id: 7 },
        Command::Stats { id: u64::MAX },
        Command::ServiceReply {
            id: 3,
            allowed: true,
        },
        Command::ConsoleWrite {
            bytes: b"agent\0\xff".to_vec(),
        },
        Command::SetBalloon { target_mib: 0 },
        Command::SetBalloon {
            target_mib: u32::MAX,
        },
    ]
}

fn every_event_without_fds() -> Vec<Event> {
    vec![
        Event::Hello {
            version: PROTOCOL_VERSION,
            name: "work".into(),
            pid: 42,
        },
        Event::State(VmState::Ready),
        Event::State(VmState::Running),
        Event::State(VmState::Paused),
        Event::State(VmState::Stopping),
        Event::State(VmState::PoweredOff),
        Event::State(VmState::GuestFault {
            reason: "triple fault".into(),
        }),
        Event::Damage {
            rects: vec![DamageRect {
                x: 0,
                y: 8,
                w: 640,
                h: 2,
            }],
        },
        Event::Serial {
            bytes: (0..=255).collect(),
        },
        Event::Console {
            bytes: (0..=255).rev().collect(),
        },
        Event::ServiceRequest {
            id: 1,
            service: "bulkhead.Clipboard".into(),
            argument: "+text".into(),
            target: "work".into(),
        },
        Event::ScreenshotReady { id: 9 },
        Event::Sandbox(SandboxStatus::Full),
        Event::Sandbox(SandboxStatus::Reduced {
            missing: vec![SandboxGap::Landlock, SandboxGap::UserNamespace],
        }),
        Event::Sandbox(SandboxStatus::Failed {
            reason: "setting RLIMIT_AS to 1: Operation not permitted".into(),
        }),
        Event::Stats {
            id: 2,
            stats: VmStats {
                rss_kib: 1,
                uptime_ms: 2,
                vcpu_exits: 3,
                damage_events: 4,
                balloon_mib: None,
            },
        },
        Event::Stats {
            id: 3,
            stats: VmStats {
                balloon_mib: Some(400),
                ..VmStats::default()
            },
        },
    ]
}

#[test]
fn every_command_survives_a_round_trip() {
    for c in every_command() {
        round_trip(c);
    }
}

#[test]
fn every_event_survives_a_round_trip() {
    for e in every_event_without_fds() {
        round_trip(e);
    }
}

#[test]
fn largest_valid_messages_fit_in_one_frame() {
    let worst_rect = DamageRect {
        x: u32::MAX,
        y: u32::MAX,
        w: u32::MAX,
        h: u32::MAX,
    };
    let text = "\u{1}".repeat(MAX_TEXT);
    let worst = [
        Event::Damage {
            rects: vec![worst_rect; MAX_DAMAGE_RECTS],
        },
        Event::Serial {
            bytes: vec![255; MAX_SERIAL_CHUNK],
        },
        Event::ServiceRequest {
            id: u64::MAX,
            service: text.clone(),
            argument: text.clone(),
            target: text,
        },
    ];
    for e in worst {
        e.validate().unwrap();
        round_trip(e);
    }
    let input = Command::Input {
        events: vec![
            InputEvent {
                device: InputDevice::Keyboard,
                ev_type: u16::MAX,
                code: u16::MAX,
                value: i32::MIN,
            };
            MAX_INPUT_EVENTS
        ],
    };
    input.validate().unwrap();
    round_trip(input);
}

#[test]
fn chunk_helpers_respect_the_caps() {
    let bytes = vec![7u8; MAX_SERIAL_CHUNK * 2 + 1];
    let chunks: Vec<_> = Event::serial_chunks(&bytes).collect();
    assert_eq!(chunks.len(), 3);
    chunks.iter().for_each(|c| c.validate().unwrap());
    let rects = vec![
        DamageRect {
            x: 0,
            y: 0,
            w: 1,
            h: 1
        };
        MAX_DAMAGE_RECTS + 1
    ];
    assert_eq!(Event::damage_chunks(&rects).count(), 2);
    let events = vec![
        InputEvent {
            device: InputDevice::Tablet,
            ev_type: 0,
            code: 0,
            value: 0
        };
        MAX_INPUT_EVENTS * 3
    ];
    assert_eq!(Command::input_chunks(&events).count(), 3);
}

#[test]
fn validate_rejects_messages_over_the_caps() {
    let too_long = Event::Serial {
        bytes: vec![0; MAX_SERIAL_CHUNK + 1],
    };
    assert!(too_long.validate().is_err());
    let too_many = Event::Damage {
        rects: vec![
            DamageRect {
                x: 0,
                y: 0,
                w: 1,
                h: 1
            };
            MAX_DAMAGE_RECTS + 1
        ],
    };
    assert!(too_many.validate().is_err());
    let long_name = Event::Hello {
        version: 1,
        name: "x".repeat(MAX_TEXT + 1),
        pid: 1,
    };
    assert!(check_partition_hello(&long_name).is_err());
}

#[test]
fn writer_refuses_a_message_larger_than_the_frame() {
    let (mut w, _r, _) = pair::<Event>();
    let huge = Event::Serial {
        bytes: vec![200; MAX_MESSAGE],
    };
    assert!(matches!(
        w.send(&huge),
        Err(ControlError::TooLargeToSend { .. })
    ));
}

#[test]
fn oversized_length_is_refused_before_reading_the_payload() {
    let (_w, mut r, mut raw) = pair::<Event>();
    // Announce 4 GiB - 1 and send nothing more: the reader must fail at once rather
    // than wait for (or allocate) the payload.
    raw.write_all(&u32::MAX.to_le_bytes()).unwrap();
    match r.recv() {
        Err(ControlError::Oversized { len, max }) => {
            assert_eq!(len, u32::MAX as usize);
            assert_eq!(max, MAX_MESSAGE);
        }
        other => panic!("expected Oversized, got {other:?}"),
    }
}

#[test]
fn length_just_over_the_maximum_is_refused() {
    let (_w, mut r, mut raw) = pair::<Event>();
    raw.write_all(&((MAX_MESSAGE + 1) as u32).to_le_bytes())
        .unwrap();
    assert!(matches!(r.recv(), Err(ControlError::Oversized { .. })));
}

#[test]
fn garbage_payload_is_malformed() {
    let (_w, mut r, mut raw) = pair::<Event>();
    let junk = b"\xff\x00not json{{";
    raw.write_all(&(junk.len() as u32).to_le_bytes()).unwrap();
    raw.write_all(junk).unwrap();
    let err = r.recv().unwrap_err();
    assert!(matches!(err, ControlError::Malformed(_)), "{err:?}");
    assert!(err.is_protocol_violation());
}

#[test]
fn valid_json_of_the_wrong_shape_is_malformed() {
    let (_w, mut r, mut raw) = pair::<Event>();
    let wrong = br#"{"Damage":{"rects":"lots"}}"#;
    raw.write_all(&(wrong.len() as u32).to_le_bytes()).unwrap();
    raw.write_all(wrong).unwrap();
    assert!(matches!(r.recv(), Err(ControlError::Malformed(_))));
}

#[test]
fn text_garbage_reads_as_an_oversized_length() {
    let (_w, mut r, mut raw) = pair::<Event>();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(matches!(r.recv(), Err(ControlError::Oversized { .. })));
}

#[test]
fn zero_length_is_refused() {
    let (_w, mut r, mut raw) = pair::<Event>();
    raw.write_all(&0u32.to_le_bytes()).unwrap();
    assert!(matches!(r.recv(), Err(ControlError::Empty)));
}

#[test]
fn truncated_header_and_payload_are_reported() {
    let (w, mut r, mut raw) = pair::<Event>();
    raw.write_all(&[1, 0]).unwrap();
    drop(raw);
    drop(w);
    assert!(matches!(
        r.recv(),
        Err(ControlError::Truncated {
            expected: 4,
            got: 2
        })
    ));

    let (w, mut r, mut raw) = pair::<Event>();
    raw.write_all(&100u32.to_le_bytes()).unwrap();
    raw.write_all(b"{\"State\":").unwrap();
    drop(raw);
    drop(w);
    assert!(matches!(
        r.recv(),
        Err(ControlError::Truncated {
            expected: 100,
            got: 9
        })
    ));
}

#[test]
fn clean_close_between_frames_is_closed_not_a_violation() {
    let (w, mut r, raw) = pair::<Event>();
    drop(raw);
    drop(w);
    let err = r.recv().unwrap_err();
    assert!(matches!(err, ControlError::Closed));
    assert!(!err.is_protocol_violation());
}

#[test]
fn framebuffer_event_without_its_fd_is_refused() {
    let (_w, mut r, mut raw) = pair::<Event>();
    let msg = serde_json::to_vec(&Event::Framebuffer {
        layout: FramebufferLayout::new(64, 64).unwrap(),
    })
    .unwrap();
    raw.write_all(&(msg.len() as u32).to_le_bytes()).unwrap();
    raw.write_all(&msg).unwrap();
    assert!(matches!(
        r.recv(),
        Err(ControlError::FdMismatch {
            expected: 1,
            got: 0
        })
    ));
}

#[test]
fn a_snapshot_request_travels_with_exactly_its_two_files() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut r = MessageReader::<Command>::new(b);
    let msg = serde_json::to_vec(&Command::Snapshot).unwrap();
    let mut frame = (msg.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&msg);
    let state = Memfd::create("state", 4096).unwrap();
    let memory = Memfd::create("memory", 4096).unwrap();
    scm::send_with_fds(a.as_fd(), &frame, &[state.as_fd(), memory.as_fd()]).unwrap();
    let got = r.recv().unwrap();
    assert_eq!(got.message, Command::Snapshot);
    assert_eq!(got.fds.len(), 2);

    scm::send_with_fds(a.as_fd(), &frame, &[state.as_fd()]).unwrap();
    assert!(matches!(
        r.recv(),
        Err(ControlError::FdMismatch {
            expected: 2,
            got: 1
        })
    ));
}

#[test]
fn fd_on_a_message_that_takes_none_is_refused() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut r = MessageReader::<Event>::new(b);
    let msg = serde_json::to_vec(&Event::State(VmState::Running)).unwrap();
    let mut frame = (msg.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&msg);
    let memfd = Memfd::create("stray", 4096).unwrap();
    scm::send_with_fds(a.as_fd(), &frame, &[memfd.as_fd()]).unwrap();
    assert!(matches!(
        r.recv(),
        Err(ControlError::FdMismatch {
            expected: 0,
            got: 1
        })
    ));
}

#[test]
fn writer_refuses_wrong_fd_count() {
    let (mut w, _r, _) = pair::<Event>();
    let layout = FramebufferLayout::new(64, 64).unwrap();
    assert!(matches!(
        w.send(&Event::Framebuffer { layout }),
        Err(ControlError::FdMismatch { .. })
    ));
}

#[test]
fn passed_memfd_shares_memory_with_the_sender() {
    let (mut w, mut r, _) = pair::<Event>();
    let layout = FramebufferLayout::new(64, 64).unwrap();
    let memfd = Memfd::create("fb", layout.region_size() as usize).unwrap();
    let sender_map = memfd.map_shared_rw().unwrap();
    w.send_with_fds(&Event::Framebuffer { layout }, &[memfd.as_fd()])
        .unwrap();
    let got = r.recv().unwrap();
    assert_eq!(got.message, Event::Framebuffer { layout });
    let [fd]: [_; 1] = got.fds.try_into().unwrap();
    let received = Memfd::from_received(fd).unwrap();
    assert_eq!(received.size(), memfd.size());
    let reader_map = received.map_readonly().unwrap();

    // Written after the fd crossed the socket: only shared memory can carry it.
    sender_map.write_at(1000, b"pixels!").unwrap();
    let mut seen = [0u8; 7];
    reader_map.read_at(1000, &mut seen).unwrap();
    assert_eq!(&seen, b"pixels!");
}

#[test]
fn messages_after_an_fd_message_stay_in_order() {
    let (mut w, mut r, _) = pair::<Event>();
    let layout = FramebufferLayout::new(64, 64).unwrap();
    let memfd = Memfd::create("fb", layout.region_size() as usize).unwrap();
    w.send(&Event::State(VmState::Ready)).unwrap();
    w.send_with_fds(&Event::Framebuffer { layout }, &[memfd.as_fd()])
        .unwrap();
    w.send(&Event::State(VmState::Running)).unwrap();
    assert_eq!(r.recv().unwrap().fds.len(), 0);
    assert_eq!(r.recv().unwrap().fds.len(), 1);
    let last = r.recv().unwrap();
    assert_eq!(last.message, Event::State(VmState::Running));
    assert!(last.fds.is_empty());
}

#[test]
fn readonly_mapping_refuses_writes_and_out_of_range_reads() {
    let memfd = Memfd::create("ro", 8192).unwrap();
    let ro = memfd.map_readonly().unwrap();
    assert!(matches!(ro.write_at(0, b"x"), Err(MemfdError::ReadOnly)));
    let mut buf = [0u8; 2];
    assert!(matches!(
        ro.read_at(8191, &mut buf),
        Err(MemfdError::OutOfRange { .. })
    ));
    assert!(matches!(
        ro.read_at(usize::MAX, &mut buf),
        Err(MemfdError::OutOfRange { .. })
    ));
}

#[test]
fn memfd_size_is_sealed() {
    let memfd = Memfd::create("sealed", 8192).unwrap();
    let file = memfd.try_clone_file().unwrap();
    assert!(file.set_len(10).is_err(), "shrinking must be refused");
    assert!(file.set_len(1 << 20).is_err(), "growing must be refused");
}

#[test]
fn unsealed_memfd_is_refused_by_the_receiver() {
    let name = std::ffi::CString::new("unsealed").unwrap();
    // SAFETY: valid C string; the returned fd is owned below.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(raw >= 0);
    // SAFETY: fresh fd from memfd_create, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let file = std::fs::File::from(fd);
    file.set_len(4096).unwrap();
    assert!(Memfd::from_received(file.into()).is_err());
}

#[test]
fn a_pipe_is_not_accepted_as_a_memfd() {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two ints pipe writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds are fresh from pipe(); each is owned exactly once.
    let (r, _w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    assert!(matches!(
        Memfd::from_received(r),
        Err(MemfdError::NotMemfd(_))
    ));
}

fn test_launch(name: &str) -> LaunchConfig {
    LaunchConfig {
        name: name.into(),
        memory_mib: 256,
        vcpus: 2,
        display: Some(DisplaySize {
            width: 1024,
            height: 768,
        }),
        boot: BootConfig::Linux {
            cmdline: "console=ttyS0".into(),
            initrd: true,
        },
        disks: vec![DiskConfig {
            id: "root".into(),
            read_only: true,
        }],
        network: NetworkConfig::None,
        agent: AgentChannel::VirtioConsole,
        snapshot_on: None,
        snapshot_on_request: false,
    }
}

/// Stand-ins for the handed-over files: the handshake moves fds, it does not use them.
fn test_files(config: &LaunchConfig) -> LaunchFiles {
    let file = || std::fs::File::open("/dev/null").unwrap();
    LaunchFiles {
        kvm: file().into(),
        kernel: Some(file()),
        initrd: Some(file()),
        disks: config.disks.iter().map(|_| file()).collect(),
        network: (config.network == NetworkConfig::Stream).then(|| {
            let (a, _) = UnixStream::pair().unwrap();
            a.into()
        }),
        snapshot_in: None,
        snapshot_out: None,
    }
}

#[test]
fn handshake_hands_over_the_network_socket_last_when_a_network_is_configured() {
    let (sup, part) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || PartitionEndpoint::handshake(part));
    let mut sr = MessageReader::<Event>::new(sup.try_clone().unwrap());
    let mut sw = MessageWriter::<Command>::new(sup);
    let mut config = test_launch("browser");
    config.network = NetworkConfig::Stream;
    send_launch(&mut sw, &config, test_files(&config)).unwrap();
    check_partition_hello(&sr.recv().unwrap().message).unwrap();
    let launch = t.join().unwrap().unwrap();
    assert_eq!(launch.config.network, NetworkConfig::Stream);
    let net = launch.files.network.expect("no network socket handed over");
    assert!(rustix::net::sockopt::socket_type(&net).is_ok());
}

#[test]
fn handshake_hands_over_the_launch_config_and_its_files_then_says_hello() {
    let (sup, part) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || PartitionEndpoint::handshake(part));
    let mut sr = MessageReader::<Event>::new(sup.try_clone().unwrap());
    let mut sw = MessageWriter::<Command>::new(sup);
    let config = test_launch("mail");
    send_launch(&mut sw, &config, test_files(&config)).unwrap();
    let (name, pid) = check_partition_hello(&sr.recv().unwrap().message).unwrap();
    assert_eq!(name, "mail");
    assert_eq!(pid, std::process::id());
    let launch = t.join().unwrap().unwrap();
    assert_eq!(launch.config, config);
    assert!(launch.files.kernel.is_some() && launch.files.initrd.is_some());
    assert_eq!(launch.files.disks.len(), 1);
}

#[test]
fn handshake_refuses_a_config_out_of_bounds_and_a_file_out_of_place() {
    let mut bad = test_launch("mail");
    bad.vcpus = 200;
    let (sup, part) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || PartitionEndpoint::handshake(part).map(|_| ()));
    let mut sw = MessageWriter::<Command>::new(sup);
    sw.send(&Command::Hello {
        version: PROTOCOL_VERSION,
        launch: Box::new(bad),
    })
    .unwrap();
    assert!(matches!(
        t.join().unwrap(),
        Err(ControlError::Launch(LaunchError::Vcpus(200)))
    ));

    let config = test_launch("mail");
    let (sup, part) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || PartitionEndpoint::handshake(part).map(|_| ()));
    let mut sw = MessageWriter::<Command>::new(sup);
    sw.send(&Command::Hello {
        version: PROTOCOL_VERSION,
        launch: Box::new(config.clone()),
    })
    .unwrap();
    // The initrd where /dev/kvm belongs.
    let null = std::fs::File::open("/dev/null").unwrap();
    for role in [
        FileRole::Initrd,
        FileRole::Kvm,
        FileRole::Kernel,
        FileRole::Disk(0),
    ] {
        let _ = sw.send_with_fds(&Command::File { role }, &[null.as_fd()]);
    }
    assert!(matches!(
        t.join().unwrap(),
        Err(ControlError::Launch(LaunchError::UnexpectedFile {
            expected: FileRole::Kvm,
            got: FileRole::Initrd
        }))
    ));
}

#[test]
fn handshake_rejects_another_version() {
    let (sup, part) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || PartitionEndpoint::handshake(part).map(|_| ()));
    let mut sw = MessageWriter::<Command>::new(sup);
    sw.send(&Command::Hello {
        version: PROTOCOL_VERSION + 1,
        launch: Box::new(test_launch("mail")),
    })
    .unwrap();
    assert!(matches!(
        t.join().unwrap(),
        Err(ControlError::Version { .. })
    ));
    let old = Event::Hello {
        version: 0,
        name: "x".into(),
        pid: 1,
    };
    assert!(matches!(
        check_partition_hello(&old),
        Err(ControlError::Version { got: 0, .. })
    ));
    assert!(matches!(
        check_partition_hello(&Event::State(VmState::Running)),
        Err(ControlError::NoHello { .. })
    ));
}

#[test]
fn inherited_fd_must_be_a_socket() {
    let file = tempfile::tempfile().unwrap();
    let raw = std::os::fd::IntoRawFd::into_raw_fd(file);
    // SAFETY: `raw` was just released by `file`; on error the function does not take it,
    // so close it here.
    let res = unsafe { control_stream_from_inherited_fd(raw) };
    assert!(matches!(res, Err(ControlError::NotASocket { .. })));
    // SAFETY: `raw` is still open and owned by no one.
    drop(unsafe { OwnedFd::from_raw_fd(raw) });

    let (a, _b) = UnixStream::pair().unwrap();
    let raw = std::os::fd::IntoRawFd::into_raw_fd(a);
    // SAFETY: `raw` was released by `a` and is owned by no one else.
    let stream = unsafe { control_stream_from_inherited_fd(raw) }.unwrap();
    drop(stream);
}

#[test]
fn readonly_prefix_maps_only_what_is_asked() {
    let memfd = Memfd::create("big", 1 << 20).unwrap();
    let rw = memfd.map_shared_rw().unwrap();
    rw.write_at(10, b"abc").unwrap();
    let prefix = memfd.map_readonly_prefix(4096).unwrap();
    assert_eq!(prefix.len(), 4096);
    let mut got = [0u8; 3];
    prefix.read_at(10, &mut got).unwrap();
    assert_eq!(&got, b"abc");
    assert!(memfd.map_readonly_prefix((1 << 20) + 1).is_err());
    assert!(memfd.map_readonly_prefix(0).is_err());
}

#[test]
fn console_messages_at_the_cap_pass_and_one_byte_more_fails() {
    let at_cap = vec![0xff; MAX_CONSOLE_CHUNK];
    let over = vec![0xff; MAX_CONSOLE_CHUNK + 1];
    Command::ConsoleWrite {
        bytes: at_cap.clone(),
    }
    .validate()
    .unwrap();
    Event::Console {
        bytes: at_cap.clone(),
    }
    .validate()
    .unwrap();
    assert!(matches!(
        Command::ConsoleWrite {
            bytes: over.clone()
        }
        .validate(),
        Err(LimitError::TooMany { len, max, .. }) if len == MAX_CONSOLE_CHUNK + 1 && max == MAX_CONSOLE_CHUNK
    ));
    assert!(Event::Console { bytes: over }.validate().is_err());
    // The worst case (every byte 255, four JSON characters each) still fits in a frame.
    round_trip(Command::ConsoleWrite {
        bytes: at_cap.clone(),
    });
    round_trip(Event::Console { bytes: at_cap });
}

#[test]
fn console_chunking_splits_at_the_cap_and_keeps_every_byte_in_order() {
    let bytes: Vec<u8> = (0..=255).cycle().take(MAX_CONSOLE_CHUNK * 2 + 5).collect();
    let commands: Vec<_> = Command::console_chunks(&bytes).collect();
    let lens: Vec<_> = commands
        .iter()
        .map(|c| match c {
            Command::ConsoleWrite { bytes } => bytes.len(),
            other => panic!("not a console write: {other:?}"),
        })
        .collect();
    assert_eq!(lens, [MAX_CONSOLE_CHUNK, MAX_CONSOLE_CHUNK, 5]);
    commands.iter().for_each(|c| c.validate().unwrap());
    let rejoined: Vec<u8> = Event::console_chunks(&bytes)
        .inspect(|e| e.validate().unwrap())
        .flat_map(|e| match e {
            Event::Console { bytes } => bytes,
            other => panic!("not console output: {other:?}"),
        })
        .collect();
    assert_eq!(rejoined, bytes);
    assert_eq!(Command::console_chunks(&[]).count(), 0);
    assert_eq!(
        Event::console_chunks(&bytes[..MAX_CONSOLE_CHUNK]).count(),
        1
    );
}

#[test]
fn oversized_console_event_from_a_partition_is_rejected_on_receipt() {
    // The writer does not check caps, so a hostile partition can send this; the
    // receiver's validate is what stops it.
    let (mut w, mut r, _) = pair::<Event>();
    let hostile = Event::Console {
        bytes: vec![b'x'; MAX_CONSOLE_CHUNK + 1],
    };
    w.send(&hostile).unwrap();
    let got = r.recv().unwrap().message;
    let err = ControlError::from(got.validate().unwrap_err());
    assert!(err.is_protocol_violation());
    assert!(err.to_string().contains("console bytes"), "{err}");
}

/// Sends `fds` with one byte, bypassing `send_with_fds`'s own limit, as a hostile peer
/// could.
fn send_raw_with_fds(sock: std::os::fd::BorrowedFd<'_>, fds: &[std::os::fd::BorrowedFd<'_>]) {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    let iov = [std::io::IoSlice::new(b"x")];
    sendmsg(sock, &iov, &mut control, SendFlags::empty()).unwrap();
}

fn temp_files(n: usize) -> Vec<std::fs::File> {
    (0..n).map(|_| tempfile::tempfile().unwrap()).collect()
}

#[test]
fn the_fd_limit_per_message_arrives_whole_and_close_on_exec() {
    let (a, b) = UnixStream::pair().unwrap();
    let files = temp_files(MAX_FDS_PER_MESSAGE);
    let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
    send_raw_with_fds(a.as_fd(), &fds);
    let mut buf = [0u8; 1];
    let mut got = std::collections::VecDeque::new();
    assert_eq!(
        scm::recv_with_fds(b.as_fd(), &mut buf, &mut got, MAX_FDS_PER_MESSAGE, false).unwrap(),
        1
    );
    assert_eq!(got.len(), MAX_FDS_PER_MESSAGE);
    for fd in &got {
        let flags = rustix::io::fcntl_getfd(fd).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }
}

#[test]
fn one_fd_over_the_limit_in_a_message_is_refused() {
    let (a, b) = UnixStream::pair().unwrap();
    let files = temp_files(MAX_FDS_PER_MESSAGE + 1);
    let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
    send_raw_with_fds(a.as_fd(), &fds);
    let mut buf = [0u8; 1];
    let mut got = std::collections::VecDeque::new();
    let res = scm::recv_with_fds(b.as_fd(), &mut buf, &mut got, MAX_FDS_PER_MESSAGE, false);
    assert!(
        matches!(res, Err(scm::RecvError::TooManyFds { max }) if max == MAX_FDS_PER_MESSAGE),
        "{res:?}"
    );
}

#[test]
fn fds_spread_over_one_byte_sends_never_exceed_the_frame_budget() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut r = MessageReader::<Event>::new(b);
    let files = temp_files(MAX_FDS_PER_MESSAGE);
    let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
    (&a).write_all(&(MAX_MESSAGE as u32).to_le_bytes()).unwrap();
    for _ in 0..50 {
        send_raw_with_fds(a.as_fd(), &fds);
    }
    let res = r.recv();
    assert!(
        matches!(res, Err(ControlError::TooManyFds { max }) if max == MAX_FDS_PER_MESSAGE),
        "{res:?}"
    );
    assert!(res.unwrap_err().is_protocol_violation());
    assert_eq!(r.held_fds(), 0, "a refused frame's fds are closed at once");
}

#[test]
fn one_fd_per_send_up_to_the_budget_is_held_and_one_more_is_refused() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut r = MessageReader::<Event>::new(b);
    let file = tempfile::tempfile().unwrap();
    (&a).write_all(&(MAX_MESSAGE as u32).to_le_bytes()).unwrap();
    for _ in 0..=MAX_FDS_PER_MESSAGE {
        send_raw_with_fds(a.as_fd(), &[file.as_fd()]);
    }
    assert!(matches!(r.recv(), Err(ControlError::TooManyFds { .. })));
    assert_eq!(r.held_fds(), 0);
}

#[test]
fn a_peer_that_stalls_mid_frame_is_cut_off_after_the_deadline() {
    let deadline = Duration::from_millis(300);
    // Stalled inside the payload, and inside the header.
    for sent in [&[100, 0, 0, 0, b'{', b'"'][..], &[100, 0][..]] {
        let (_w, r, mut raw) = pair::<Event>();
        let mut r =
            MessageReader::<Event>::with_frame_deadline(r.stream().try_clone().unwrap(), deadline);
        raw.write_all(sent).unwrap();
        let start = Instant::now();
        let err = r.recv().unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, ControlError::FrameTimeout { .. }), "{err:?}");
        assert!(err.is_protocol_violation());
        assert!(took >= deadline, "cut off early: {took:?}");
        assert!(took < deadline * 5, "cut off late: {took:?}");
    }
}

#[test]
fn a_peer_that_trickles_a_frame_past_the_deadline_is_cut_off() {
    let deadline = Duration::from_millis(300);
    let (_w, r, mut raw) = pair::<Event>();
    let mut r =
        MessageReader::<Event>::with_frame_deadline(r.stream().try_clone().unwrap(), deadline);
    let msg = serde_json::to_vec(&Event::State(VmState::Running)).unwrap();
    let mut frame = (msg.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&msg);
    let trickle = std::thread::spawn(move || {
        // One byte every 50 ms: never idle long, but the whole frame takes too long.
        for byte in frame {
            if raw.write_all(&[byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert!(matches!(r.recv(), Err(ControlError::FrameTimeout { .. })));
    drop(r);
    trickle.join().unwrap();
}

#[test]
fn an_idle_peer_between_frames_is_not_cut_off() {
    let deadline = Duration::from_millis(200);
    let (mut w, r, _raw) = pair::<Event>();
    let mut r =
        MessageReader::<Event>::with_frame_deadline(r.stream().try_clone().unwrap(), deadline);
    let sender = std::thread::spawn(move || {
        for _ in 0..2 {
            std::thread::sleep(deadline * 3);
            w.send(&Event::State(VmState::Running)).unwrap();
        }
        w
    });
    for _ in 0..2 {
        assert_eq!(r.recv().unwrap().message, Event::State(VmState::Running));
    }
    sender.join().unwrap();
}

#[test]
fn sandbox_reports_at_the_caps_pass_and_beyond_them_fail() {
    let at_cap = Event::Sandbox(SandboxStatus::Reduced {
        missing: vec![SandboxGap::Landlock; MAX_SANDBOX_GAPS],
    });
    at_cap.validate().unwrap();
    round_trip(at_cap);
    let too_many = Event::Sandbox(SandboxStatus::Reduced {
        missing: vec![SandboxGap::Landlock; MAX_SANDBOX_GAPS + 1],
    });
    assert!(too_many.validate().is_err());
    let worst = Event::Sandbox(SandboxStatus::Failed {
        reason: "\u{1b}".repeat(MAX_TEXT / 3),
    });
    worst.validate().unwrap();
    round_trip(worst);
    let long = Event::Sandbox(SandboxStatus::Failed {
        reason: "x".repeat(MAX_TEXT + 1),
    });
    assert!(long.validate().is_err());
}

#[test]
fn a_sandbox_gap_the_decoder_does_not_know_is_malformed() {
    let bytes = br#"{"Sandbox":{"Reduced":{"missing":["NoSeccompAtAll"]}}}"#;
    assert!(serde_json::from_slice::<Event>(bytes).is_err());
    let bytes = br#"{"Sandbox":{"Reduced":{"missing":["Landlock"]}}}"#;
    assert_eq!(
        serde_json::from_slice::<Event>(bytes).unwrap(),
        Event::Sandbox(SandboxStatus::Reduced {
            missing: vec![SandboxGap::Landlock]
        })
    );
}

#[test]
fn set_balloon_is_one_frame_of_plain_json_and_passes_the_caps() {
    let c = Command::SetBalloon { target_mib: 512 };
    assert_eq!(
        serde_json::to_string(&c).unwrap(),
        r#"{"SetBalloon":{"target_mib":512}}"#
    );
    assert_eq!(c.fd_count(), 0);
    // The cap that depends on the guest is the partition's to check, not a violation.
    assert!(Command::SetBalloon {
        target_mib: u32::MAX
    }
    .validate()
    .is_ok());
}

#[test]
fn balloon_targets_up_to_the_guest_ram_become_pages_and_bigger_ones_are_refused() {
    assert_eq!(balloon_target_pages(0, 1024), Ok(0));
    assert_eq!(balloon_target_pages(512, 1024), Ok(512 * 256));
    assert_eq!(balloon_target_pages(1024, 1024), Ok(1024 * 256));
    let err = balloon_target_pages(1025, 1024).unwrap_err();
    assert_eq!(
        err,
        BalloonTargetError {
            target_mib: 1025,
            guest_mib: 1024
        }
    );
    assert_eq!(
        err.to_string(),
        "balloon target 1025 MiB is more than the guest's 1024 MiB of RAM"
    );
    // No overflow, whatever the peer sends and however big a guest claims to be.
    assert!(balloon_target_pages(u32::MAX, u64::MAX).is_err());
    assert!(balloon_target_pages(u32::MAX, 1024).is_err());
}

#[test]
fn stats_from_a_partition_without_a_balloon_field_still_decode() {
    // An older partition's stats (no `balloon_mib`) read as "no balloon".
    let json = r#"{"Stats":{"id":1,"stats":{"rss_kib":1,"uptime_ms":2,"vcpu_exits":3,"damage_events":4}}}"#;
    let e: Event = serde_json::from_str(json).unwrap();
    assert!(matches!(
        e,
        Event::Stats {
            stats: VmStats {
                balloon_mib: None,
                ..
            },
            ..
        }
    ));
}
