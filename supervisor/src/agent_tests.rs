//! The guest agent link against real child processes (the fake partition of
//! [`crate::testing`]): a well-behaved agent answers; a malformed, oversized, flooding or
//! lying agent is cut off while its partition, and every other, keeps running.

use std::time::{Duration, Instant};

use super::*;
use crate::agent::{AgentReply, AgentRequest, AgentStatus, Clipboard};
use crate::testing::{fake_spec, wait_more_damage, wait_running, FAKE_AGENT_CLIPBOARD, WAIT};

fn fake(name: &str, mode: &str) -> LaunchSpec {
    let path = module_path!();
    let without_crate = path.split_once("::").map_or(path, |(_, rest)| rest);
    fake_spec(
        std::env::current_exe().unwrap(),
        &format!("{without_crate}::fake_partition_process"),
        name,
        mode,
        AutoRestart::Never,
    )
}

fn wait_agent(sup: &Supervisor, name: &str, pred: impl Fn(&AgentStatus) -> bool) -> AgentStatus {
    let (status, ok) = sup.wait_until(name, WAIT, |s| pred(&s.agent)).unwrap();
    assert!(ok, "agent of {name} never got there: {:?}", status.agent);
    status.agent
}

fn connected(s: &AgentStatus) -> bool {
    matches!(s, AgentStatus::Connected { .. })
}

fn reply(sup: &Supervisor, name: &str) -> AgentReply {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut r = sup.take_agent_replies(name).unwrap();
        if let Some(first) = r.pop() {
            assert!(r.is_empty(), "one reply expected: {r:?}");
            return first;
        }
        assert!(Instant::now() < deadline, "no reply from {name}'s agent");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_well_behaved_agent_reads_and_sets_its_clipboard_through_the_supervisor() {
    let sup = Supervisor::new(vec![fake("work", "agent")]).unwrap();
    assert!(sup.start_all().is_empty());
    wait_running(&sup, "work");
    wait_agent(&sup, "work", connected);
    let id = sup
        .agent_request("work", AgentRequest::ClipboardGet)
        .unwrap();
    assert_eq!(
        reply(&sup, "work"),
        AgentReply::Clipboard {
            id,
            content: Some(Clipboard::Text(FAKE_AGENT_CLIPBOARD.into()))
        }
    );
    // A full-size payload crosses the control socket in chunks and comes back whole.
    let mut png = bulkhead_agent_proto::PNG_SIGNATURE.to_vec();
    png.extend((0..bulkhead_agent_proto::MAX_PAYLOAD - 8).map(|i| (i % 253) as u8));
    let set = sup
        .agent_request(
            "work",
            AgentRequest::ClipboardSet(Clipboard::Png(png.clone())),
        )
        .unwrap();
    assert_eq!(reply(&sup, "work"), AgentReply::ClipboardSet { id: set });
    let get = sup
        .agent_request("work", AgentRequest::ClipboardGet)
        .unwrap();
    assert_eq!(
        reply(&sup, "work"),
        AgentReply::Clipboard {
            id: get,
            content: Some(Clipboard::Png(png))
        }
    );
}

#[test]
fn hostile_agents_are_cut_off_and_their_partitions_and_the_others_keep_running() {
    let cases = [
        ("oversized", "agent_oversized", "more than the limit"),
        ("garbage", "agent_garbage", "unknown message kind 0x66"),
        ("flood", "agent_flood", "per second"),
        ("liar", "agent_unsolicited", "never asked"),
    ];
    let mut specs: Vec<_> = cases.iter().map(|(n, m, _)| fake(n, m)).collect();
    specs.push(fake("good", "agent"));
    let sup = Supervisor::new(specs).unwrap();
    assert!(sup.start_all().is_empty());
    for (name, _, why) in cases {
        let status = wait_agent(&sup, name, |s| matches!(s, AgentStatus::CutOff { .. }));
        let text = status.describe();
        assert!(text.starts_with("agent cut off: "), "{text}");
        assert!(text.contains(why), "{name}: {text}");
        // Its partition is not cut off: it runs and draws.
        assert_eq!(sup.status(name).unwrap().state, ProcessState::Running);
        wait_more_damage(&sup, name, 3);
        // And the app is told, not ignored.
        match sup.agent_request(name, AgentRequest::Ping) {
            Err(SupervisorError::Agent(e)) => {
                assert!(e.to_string().starts_with("agent cut off: "), "{e}")
            }
            other => panic!("{name}: a cut-off agent took a request: {other:?}"),
        }
    }
    wait_agent(&sup, "good", connected);
    let id = sup.agent_request("good", AgentRequest::Ping).unwrap();
    assert_eq!(reply(&sup, "good"), AgentReply::Pong { id });
}

#[test]
fn fake_partition_process() {
    crate::testing::fake_partition_main();
}
