//! The service broker against real child processes (the fake partition of
//! [`crate::testing`], whose fake agent offers, sends and receives files in memory and
//! reports on its serial console): the policy decides, the person's answer is carried
//! out, and a lying source fails its transfer without touching the target.

use std::path::Path;
use std::time::{Duration, Instant};

use super::*;
use crate::agent::AgentStatus;
use crate::services::{Question, ServiceBroker, ServiceEvent};
use crate::testing::{
    fake_file_bytes, fake_files, fake_received_line, fake_spec, wait_running, FAKE_OFFER, FAKE_URL,
    WAIT,
};

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

/// A policy directory defining `names` with these rules.
fn policy(dir: &Path, names: &[&str], rules: &str) {
    let mut toml = String::new();
    for n in names {
        toml.push_str(&format!("[partition.{n}]\nlabel = \"green\"\n\n"));
    }
    std::fs::write(dir.join("partitions.toml"), toml).unwrap();
    std::fs::create_dir_all(dir.join("policy.d")).unwrap();
    std::fs::write(dir.join("policy.d/50-test.policy"), rules).unwrap();
}

fn connected(sup: &Supervisor, name: &str) {
    let (s, ok) = sup
        .wait_until(name, WAIT, |s| {
            matches!(s.agent, AgentStatus::Connected { .. })
        })
        .unwrap();
    assert!(ok, "agent of {name} never connected: {:?}", s.agent);
}

/// Polls the broker until `pred` holds for the serial output of `name` (accumulated in
/// `serial`), collecting every event.
fn poll_until(
    broker: &mut ServiceBroker,
    sup: &Supervisor,
    name: &str,
    serial: &mut String,
    events: &mut Vec<ServiceEvent>,
    pred: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !pred(serial) {
        assert!(
            Instant::now() < deadline,
            "{name} never printed what was awaited; it printed:\n{serial}\nevents: {events:#?}"
        );
        events.extend(broker.poll(sup));
        serial.push_str(&String::from_utf8_lossy(&sup.take_serial(name).unwrap()));
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn question(broker: &mut ServiceBroker, sup: &Supervisor) -> Question {
    let deadline = Instant::now() + WAIT;
    loop {
        for e in broker.poll(sup) {
            if let ServiceEvent::Ask(q) = e {
                return q;
            }
        }
        assert!(Instant::now() < deadline, "no question came");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_move_the_person_directs_arrives_byte_exact_and_the_source_hears_it_landed() {
    let dir = tempfile::tempdir().unwrap();
    policy(
        dir.path(),
        &["src", "dst", "other"],
        "bulkhead.FileCopy * src dst ask\nbulkhead.FileCopy * src other deny\n",
    );
    let sup = Supervisor::new(vec![
        fake("src", "agent_files"),
        fake("dst", "agent"),
        fake("other", "agent"),
    ])
    .unwrap();
    assert!(sup.start_all().is_empty());
    for n in ["src", "dst", "other"] {
        wait_running(&sup, n);
        connected(&sup, n);
    }
    let audit = dir.path().join("audit");
    let mut broker = ServiceBroker::new(
        Some(dir.path().to_path_buf()),
        Some(&audit),
        crate::launch::Engine::TestCard,
    );
    let q = question(&mut broker, &sup);
    // Only where the policy may let them go: `other` is denied, so not offered.
    assert_eq!(q.source, "src");
    assert_eq!(q.targets, vec!["dst".to_string()]);
    assert!(q.argument.contains("2 files"), "{}", q.argument);
    assert!(
        q.rule
            .as_deref()
            .is_some_and(|r| r.ends_with("50-test.policy:1")),
        "{q:?}"
    );
    let mut events = broker.answer(&sup, q.id, Some("dst".into()));
    let mut dst = String::new();
    let mut src = String::new();
    let expected: Vec<String> = fake_files()
        .iter()
        .enumerate()
        .map(|(i, f)| fake_received_line(&f.name, &fake_file_bytes(i)))
        .collect();
    poll_until(&mut broker, &sup, "dst", &mut dst, &mut events, |s| {
        expected.iter().all(|l| s.contains(l.as_str()))
    });
    poll_until(&mut broker, &sup, "src", &mut src, &mut events, |s| {
        s.contains(&format!("outcome {FAKE_OFFER} ok"))
    });
    let deadline = Instant::now() + WAIT;
    while !finished(&events) {
        assert!(Instant::now() < deadline, "no end of transfer: {events:#?}");
        events.extend(broker.poll(&sup));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(broker.is_idle());
    assert!(
        events.iter().any(
            |e| matches!(e, ServiceEvent::Status { text, .. } if text.contains("moved 2 files"))
        ),
        "{events:#?}"
    );
    let log = std::fs::read_to_string(audit.join("audit.log")).unwrap_or_default();
    assert!(log.contains("asked → allowed by the user"), "{log}");
}

fn finished(events: &[ServiceEvent]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, ServiceEvent::Status { text, .. } if text.contains("(~/Incoming/")))
}

#[test]
fn files_no_partition_may_receive_are_refused_at_once_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    policy(
        dir.path(),
        &["src", "dst"],
        "bulkhead.FileCopy * @anyvm @anyvm deny\n",
    );
    let sup = Supervisor::new(vec![fake("src", "agent_files"), fake("dst", "agent")]).unwrap();
    assert!(sup.start_all().is_empty());
    for n in ["src", "dst"] {
        wait_running(&sup, n);
        connected(&sup, n);
    }
    let mut broker = ServiceBroker::new(
        Some(dir.path().to_path_buf()),
        None,
        crate::launch::Engine::TestCard,
    );
    let mut src = String::new();
    let mut events = Vec::new();
    poll_until(&mut broker, &sup, "src", &mut src, &mut events, |s| {
        s.contains("outcome 1 no running partition may receive files from [src]")
    });
    assert!(!events.iter().any(|e| matches!(e, ServiceEvent::Ask(_))));
    assert!(
        sup.take_serial("dst").unwrap().is_empty(),
        "dst heard of it"
    );
}

#[test]
fn a_source_whose_file_changes_mid_copy_fails_and_the_target_discards_what_came() {
    let dir = tempfile::tempdir().unwrap();
    policy(
        dir.path(),
        &["src", "dst"],
        "bulkhead.FileCopy * src dst allow\n",
    );
    let sup =
        Supervisor::new(vec![fake("src", "agent_files_short"), fake("dst", "agent")]).unwrap();
    assert!(sup.start_all().is_empty());
    for n in ["src", "dst"] {
        wait_running(&sup, n);
        connected(&sup, n);
    }
    let mut broker = ServiceBroker::new(
        Some(dir.path().to_path_buf()),
        None,
        crate::launch::Engine::TestCard,
    );
    // Nobody to ask: the one target the policy allows outright is chosen.
    let q = question(&mut broker, &sup);
    assert_eq!(q.targets, vec!["dst".to_string()]);
    let mut events = broker.answer_unattended(&sup);
    let (mut src, mut dst) = (String::new(), String::new());
    poll_until(&mut broker, &sup, "src", &mut src, &mut events, |s| {
        s.contains("changed while it was copied")
    });
    poll_until(&mut broker, &sup, "dst", &mut dst, &mut events, |s| {
        s.contains("aborted from src")
    });
    assert!(!dst.contains("received"), "{dst}");
    // Both partitions run on.
    for n in ["src", "dst"] {
        assert_eq!(sup.status(n).unwrap().state, ProcessState::Running);
    }
}

#[test]
fn a_link_naming_no_target_goes_where_the_policy_sends_default_starting_it_first() {
    let dir = tempfile::tempdir().unwrap();
    policy(
        dir.path(),
        &["mail", "browser"],
        "bulkhead.OpenURL * mail @default allow target=browser\n",
    );
    let sup = Supervisor::new(vec![fake("mail", "agent_open"), fake("browser", "agent")]).unwrap();
    sup.start("mail").unwrap();
    wait_running(&sup, "mail");
    connected(&sup, "mail");
    assert_eq!(sup.status("browser").unwrap().state, ProcessState::Stopped);
    let mut broker = ServiceBroker::new(
        Some(dir.path().to_path_buf()),
        None,
        crate::launch::Engine::TestCard,
    );
    let (mut browser, mut mail) = (String::new(), String::new());
    let mut events = Vec::new();
    poll_until(
        &mut broker,
        &sup,
        "browser",
        &mut browser,
        &mut events,
        |s| s.contains(&format!("opened {FAKE_URL}")),
    );
    poll_until(&mut broker, &sup, "mail", &mut mail, &mut events, |s| {
        s.contains(&format!("open-outcome {FAKE_OFFER} ok"))
    });
}

#[test]
fn a_link_the_policy_denies_is_refused_with_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    policy(
        dir.path(),
        &["mail", "browser"],
        "bulkhead.OpenURL * mail @default deny\n",
    );
    let sup = Supervisor::new(vec![fake("mail", "agent_open"), fake("browser", "agent")]).unwrap();
    sup.start("mail").unwrap();
    wait_running(&sup, "mail");
    let mut broker = ServiceBroker::new(
        Some(dir.path().to_path_buf()),
        None,
        crate::launch::Engine::TestCard,
    );
    let mut mail = String::new();
    let mut events = Vec::new();
    poll_until(&mut broker, &sup, "mail", &mut mail, &mut events, |s| {
        s.contains("open-outcome 1 denied by rule")
    });
    assert!(mail.contains("50-test.policy:1"), "{mail}");
    assert_eq!(sup.status("browser").unwrap().state, ProcessState::Stopped);
}

#[test]
fn fake_partition_process() {
    crate::testing::fake_partition_main();
}
