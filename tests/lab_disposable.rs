//! Disposables of a Linux partition under the real supervisor (`lab-supervise
//! --disposables`): the first cold-boots and is snapshotted at its marker, the next two
//! are restored from that snapshot and run beside it. Every clone's guest agent
//! reconnects to its new process, and each restored clone's kernel random generator was
//! reseeded with the host's entropy right away (its agent's root helper says so after
//! `RNDADDENTROPY` + `RNDRESEEDCRNG` succeeded); `/dev/urandom` then gives every clone
//! different bytes. (The kernel's own reseed timer would separate clones too, but only
//! seconds later: in a guest snapshotted seconds after boot, a few seconds; later, up to
//! a minute.) Runs directly on /dev/kvm with VT-x/AMD-V, otherwise in the lab.

use bulkhead_tests::lab::{run_supervised, GuestRun};

/// Snapshotted at DISP-READY; each clone then waits for the host's go on hvc0 (sent once
/// its agent is connected, so a restored one has been reseeded) and prints 16 bytes of
/// the kernel CRNG.
const SCRIPT: &str = r#"
echo DISP-READY
read -r line < /dev/hvc0
echo "TOKEN[$line] $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n') TOKEN-END"
"#;

fn token(serial: &str) -> String {
    serial
        .lines()
        .find_map(|l| l.trim().strip_prefix("TOKEN[go] "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no TOKEN line in\n{serial}"))
        .to_string()
}

#[test]
fn restored_clones_reconnect_their_agent_and_draw_different_kernel_random_bytes() {
    let run = GuestRun {
        test_script: SCRIPT.into(),
        supervise: Some(
            [
                "--disposables",
                "3:DISP-READY",
                "wait-agent",
                "console:go\\n",
                "wait-serial:TOKEN-END",
            ]
            .map(String::from)
            .to_vec(),
        ),
        timeout_s: 400,
        ..GuestRun::default()
    };
    let (out, events) = run_supervised(&run, "disposables");
    assert_eq!(
        out.exit_code,
        0,
        "a step failed\n{events}\n{}",
        out.diagnostics()
    );
    assert!(
        events.contains("disposable disp1 started, restored=false"),
        "{events}"
    );
    assert!(
        events.contains("disposable disp2 started, restored=true"),
        "{events}"
    );
    assert!(
        events.contains("disposable disp3 started, restored=true"),
        "{events}"
    );
    let tokens: Vec<String> = (1..=3)
        .map(|i| {
            let serial = out.file_text(&format!("serial-disp{i}.log"));
            eprintln!("--- disp{i} serial ---\n{serial}");
            if i > 1 {
                // Restored: it continues after the marker, it does not boot again.
                assert!(!serial.contains("BULKHEAD-READY"), "{serial}");
                assert!(
                    serial.contains(
                        "bulkhead-agent: kernel random generator reseeded with 64 bytes from the host"
                    ),
                    "disp{i} was not reseeded\n{serial}"
                );
            }
            token(&serial)
        })
        .collect();
    for t in &tokens {
        assert_eq!(t.len(), 32, "{tokens:?}");
    }
    assert_ne!(tokens[1], tokens[2], "two restored clones share their CRNG");
    assert_ne!(tokens[0], tokens[1]);
    assert_ne!(tokens[0], tokens[2]);
}
