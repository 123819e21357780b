//! The secure clipboard in the app: gestures from the keyboard router, decisions by the
//! policy as saved on disk (an edit applies to the next paste), every decision in the
//! audit log and the audit panel, the buffer emptied by its one paste, refusals shown on
//! the status line and on the partition's own line in the launcher; a paste the policy
//! asks about goes to the host's ask dialog. The partitions are software sources with a
//! scripted guest agent.
//! Snapshots: `UPDATE_SNAPSHOTS=1 cargo test -p bulkhead --test clipboard`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use bulkhead::app::ask_dialog;
use bulkhead::app::backend::{AgentReply, AgentRequest, BackendError, Clipboard, PartitionBackend};
use bulkhead::app::clipboard::{SecureClipboard, StatusKind};
use bulkhead::app::policy_editor::{EditorAction, PolicyEditor, Status};
use bulkhead::app::{
    BulkheadApp, Label, PartitionInfo, PartitionState, SoftwareBackend, SourceKind,
};
use bulkhead::display::software::Pattern;
use bulkhead::display::FrameView;
use bulkhead::input::router::ClipboardGesture;
use bulkhead::input::UserInput;
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use isolation_policy::{AuditFilter, AuditLog};

/// A running software source whose "guest agent" holds a clipboard and answers at once.
struct AgentBackend {
    inner: SoftwareBackend,
    clipboard: Option<Clipboard>,
    replies: Vec<AgentReply>,
    next: u32,
    /// Set: every request fails as a cut-off agent's would.
    cut_off: bool,
    /// Every input event the app sent this partition.
    inputs: Arc<Mutex<Vec<UserInput>>>,
}

impl AgentBackend {
    fn new(name: &str, label: Label, clipboard: Option<&str>) -> Self {
        let info = PartitionInfo {
            name: name.into(),
            label,
            kind: name.into(),
            memory_mib: 512,
            vcpus: 1,
            display: (320, 240),
            source: SourceKind::SoftwareFramebuffer,
        };
        let mut inner = SoftwareBackend::new(info, Pattern::Still);
        inner.start_running().unwrap();
        AgentBackend {
            inner,
            clipboard: clipboard.map(|t| Clipboard::Text(t.into())),
            replies: Vec::new(),
            next: 1,
            cut_off: false,
            inputs: Arc::default(),
        }
    }
}

impl PartitionBackend for AgentBackend {
    fn info(&self) -> &PartitionInfo {
        self.inner.info()
    }
    fn state(&self) -> PartitionState {
        self.inner.state()
    }
    fn stats(&self) -> bulkhead::app::PartitionStats {
        self.inner.stats()
    }
    fn start(&mut self) -> Result<(), BackendError> {
        self.inner.start()
    }
    fn stop(&mut self) -> Result<(), BackendError> {
        self.inner.stop()
    }
    fn pause(&mut self) -> Result<(), BackendError> {
        self.inner.pause()
    }
    fn resume(&mut self) -> Result<(), BackendError> {
        self.inner.resume()
    }
    fn restart(&mut self) -> Result<(), BackendError> {
        self.inner.restart()
    }
    fn poll(&mut self) {
        self.inner.poll()
    }
    fn frame(&mut self) -> Option<FrameView<'_>> {
        self.inner.frame()
    }
    fn read_serial(&mut self, out: &mut Vec<u8>) {
        self.inner.read_serial(out)
    }
    fn send_input(&mut self, events: &[UserInput]) -> Result<(), BackendError> {
        self.inputs.lock().unwrap().extend_from_slice(events);
        self.inner.send_input(events)
    }
    fn agent_request(&mut self, request: AgentRequest) -> Result<u32, BackendError> {
        if self.cut_off {
            return Err(BackendError::Process {
                name: self.info().name.clone(),
                message: "agent cut off: malformed frame: unknown message kind 0x66".into(),
            });
        }
        let id = self.next;
        self.next += 1;
        self.replies.push(match request {
            AgentRequest::Ping => AgentReply::Pong { id },
            AgentRequest::ClipboardGet => AgentReply::Clipboard {
                id,
                content: self.clipboard.clone(),
            },
            AgentRequest::ClipboardSet(c) => {
                self.clipboard = Some(c);
                AgentReply::ClipboardSet { id }
            }
            other => AgentReply::Failed {
                id,
                reason: format!("this test's agent does not do {other:?}"),
            },
        });
        Ok(id)
    }
    fn take_agent_replies(&mut self) -> Vec<AgentReply> {
        std::mem::take(&mut self.replies)
    }
}

const PARTITIONS: &str = r#"
[partition.work]
label = "green"

[partition.browser]
label = "red"

[partition.vault]
label = "black"
clipboard = { copy_out = false }
"#;

fn policy_dir(rules: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("partitions.toml"), PARTITIONS).unwrap();
    std::fs::create_dir(dir.path().join("policy.d")).unwrap();
    write_rules(dir.path(), rules);
    dir
}

/// Saves a rule file as the editor would (whole file replaced).
fn write_rules(dir: &Path, rules: &str) {
    std::fs::write(dir.join("policy.d/50-test.policy"), rules).unwrap();
}

const WORK_TEXT: &str = "quarterly numbers: 42";

/// work (0), browser (1), vault (2); the clipboard decides with `policy` and audits
/// into `audit`.
fn app(policy: &Path, audit: &Path) -> BulkheadApp {
    let backends: Vec<Box<dyn PartitionBackend>> = vec![
        Box::new(AgentBackend::new("work", Label::Green, Some(WORK_TEXT))),
        Box::new(AgentBackend::new(
            "browser",
            Label::Red,
            Some("browser's own"),
        )),
        Box::new(AgentBackend::new("vault", Label::Black, Some("secret"))),
    ];
    let mut app = BulkheadApp::new(backends);
    app.clipboard = SecureClipboard::new(Some(policy.to_path_buf()), Some(audit));
    app.audit = bulkhead::app::audit_log::AuditPanel::open(audit);
    app
}

/// One gesture and the frame that collects the agent's answer.
fn gesture(app: &mut BulkheadApp, i: usize, g: ClipboardGesture) {
    app.clipboard_gesture(i, g);
    app.clipboard.poll(&mut app.slots);
}

fn status(app: &BulkheadApp) -> (StatusKind, String) {
    let s = app.clipboard.status.clone().expect("a status line");
    (s.kind, s.text)
}

fn audited(audit: &Path) -> Vec<(String, String, String, String)> {
    let log = AuditLog::open(audit, 1 << 20, 2).unwrap();
    log.read(&AuditFilter::default())
        .unwrap()
        .records
        .into_iter()
        .map(|r| {
            let (service, source, target) = match r.request {
                isolation_policy::Request::Service {
                    service,
                    source,
                    target,
                    ..
                } => (service, source, target),
                other => panic!("not a service request: {other:?}"),
            };
            (service, source, target, r.decision)
        })
        .collect()
}

#[test]
fn an_allowed_paste_arrives_once_and_both_decisions_are_audited() {
    let policy = policy_dir("bulkhead.ClipboardPaste  *  work  browser  allow\n");
    let audit = tempfile::tempdir().unwrap();
    let mut app = app(policy.path(), audit.path());

    gesture(&mut app, 0, ClipboardGesture::Copy);
    assert_eq!(
        status(&app),
        (
            StatusKind::Done,
            format!("copied {} bytes from [work]", WORK_TEXT.len())
        )
    );
    assert_eq!(app.clipboard.held(), Some(("work", WORK_TEXT.len())));

    gesture(&mut app, 1, ClipboardGesture::Paste);
    let (kind, text) = status(&app);
    assert_eq!(kind, StatusKind::Done, "{text}");
    assert!(
        text.starts_with("pasted 21 bytes from [work] into [browser]"),
        "{text}"
    );
    assert_eq!(app.clipboard.held(), None, "the buffer outlived its paste");
    // What the browser's agent now owns: ask it back through a copy.
    gesture(&mut app, 1, ClipboardGesture::Copy);
    assert_eq!(app.clipboard.held(), Some(("browser", WORK_TEXT.len())));

    // Only once: after that copy from the browser, a paste back into work is not allowed
    // by this policy, and a second paste without a copy has nothing to paste.
    let (kind, _) = {
        gesture(&mut app, 0, ClipboardGesture::Paste);
        status(&app)
    };
    assert_eq!(kind, StatusKind::Refused);
    assert_eq!(
        audited(audit.path()),
        vec![
            (
                "bulkhead.ClipboardCopy".into(),
                "work".into(),
                "@host".into(),
                "allow".into()
            ),
            (
                "bulkhead.ClipboardPaste".into(),
                "work".into(),
                "browser".into(),
                "allow".into()
            ),
            (
                "bulkhead.ClipboardCopy".into(),
                "browser".into(),
                "@host".into(),
                "allow".into()
            ),
            (
                "bulkhead.ClipboardPaste".into(),
                "browser".into(),
                "work".into(),
                "deny".into()
            ),
        ]
    );
    // The audit panel shows the same decisions the engine made.
    let rows: Vec<_> = app
        .audit
        .rows
        .iter()
        .map(|r| (r.service.clone(), r.decision.clone()))
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows
        .iter()
        .any(|(s, d)| s.contains("ClipboardPaste") && d == "deny"));
}

#[test]
fn a_second_paste_finds_the_buffer_empty() {
    let policy = policy_dir("bulkhead.ClipboardPaste  *  @anyvm  @anyvm  allow\n");
    let audit = tempfile::tempdir().unwrap();
    let mut app = app(policy.path(), audit.path());
    gesture(&mut app, 0, ClipboardGesture::Copy);
    gesture(&mut app, 1, ClipboardGesture::Paste);
    assert_eq!(status(&app).0, StatusKind::Done);
    gesture(&mut app, 1, ClipboardGesture::Paste);
    assert_eq!(
        status(&app),
        (
            StatusKind::Refused,
            "nothing to paste into [browser]: copy first with Ctrl+Shift+C".into()
        )
    );
}

#[test]
fn denied_pastes_are_refused_visibly_and_an_ask_waits_for_the_person() {
    let policy = policy_dir(
        "bulkhead.ClipboardPaste  *  work  browser  deny\n\
         bulkhead.ClipboardPaste  *  work  vault    ask\n",
    );
    let audit = tempfile::tempdir().unwrap();
    let mut app = app(policy.path(), audit.path());
    gesture(&mut app, 0, ClipboardGesture::Copy);

    gesture(&mut app, 1, ClipboardGesture::Paste);
    let (kind, text) = status(&app);
    assert_eq!(kind, StatusKind::Refused);
    assert!(
        text.starts_with("paste from [work] into [browser] refused: denied by rule"),
        "{text}"
    );
    assert!(
        text.contains("50-test.policy:1"),
        "names the rule's line: {text}"
    );

    gesture(&mut app, 2, ClipboardGesture::Paste);
    let (kind, text) = status(&app);
    assert_eq!(kind, StatusKind::Waiting);
    assert!(text.contains("waiting for your answer"), "{text}");
    let asked = app.asks.current().expect("the ask dialog is open");
    assert_eq!(asked.targets, ["vault"]);
    assert!(asked.rule.ends_with("50-test.policy:2"), "{}", asked.rule);
    // Nothing was sent to either agent; the buffer is still there.
    assert_eq!(app.clipboard.held(), Some(("work", WORK_TEXT.len())));
    let decisions: Vec<String> = audited(audit.path()).into_iter().map(|r| r.3).collect();
    assert_eq!(decisions, ["allow", "deny", "ask"]);
}

#[test]
fn a_policy_saved_between_two_pastes_decides_the_second() {
    let policy = policy_dir("bulkhead.ClipboardPaste  *  work  browser  deny\n");
    let audit = tempfile::tempdir().unwrap();
    let mut app = app(policy.path(), audit.path());
    gesture(&mut app, 0, ClipboardGesture::Copy);
    gesture(&mut app, 1, ClipboardGesture::Paste);
    assert_eq!(status(&app).0, StatusKind::Refused);

    write_rules(
        policy.path(),
        "bulkhead.ClipboardPaste  *  work  browser  allow\n",
    );
    gesture(&mut app, 1, ClipboardGesture::Paste);
    assert_eq!(status(&app).0, StatusKind::Done, "{}", status(&app).1);

    // A broken save does not replace the last good policy (which allows).
    gesture(&mut app, 0, ClipboardGesture::Copy);
    write_rules(policy.path(), "bulkhead.ClipboardPaste  *  work\n");
    gesture(&mut app, 1, ClipboardGesture::Paste);
    let (kind, text) = status(&app);
    assert_eq!(kind, StatusKind::Done, "{text}");
    let log = AuditLog::open(audit.path(), 1 << 20, 2).unwrap();
    let last = log.read(&AuditFilter::default()).unwrap().records;
    assert!(
        last.last()
            .unwrap()
            .explanation
            .contains("the saved policy does not load"),
        "{:?}",
        last.last()
    );
}

#[test]
fn copy_out_off_an_oversized_clipboard_and_a_cut_off_agent_are_refused() {
    let policy = policy_dir("bulkhead.ClipboardPaste  *  @anyvm  @anyvm  allow\n");
    let audit = tempfile::tempdir().unwrap();
    let mut small = app(policy.path(), audit.path());
    small.clipboard = SecureClipboard::new(Some(policy.path().to_path_buf()), Some(audit.path()))
        .with_max_bytes(8);
    gesture(&mut small, 2, ClipboardGesture::Copy);
    let (kind, text) = status(&small);
    assert_eq!(kind, StatusKind::Refused);
    assert!(
        text.contains("partition.vault.clipboard.copy_out = false"),
        "{text}"
    );
    gesture(&mut small, 0, ClipboardGesture::Copy);
    assert_eq!(
        status(&small),
        (
            StatusKind::Refused,
            format!(
                "the clipboard of [work] holds {} bytes, more than the 8-byte cap; nothing copied",
                WORK_TEXT.len()
            )
        )
    );
    assert_eq!(small.clipboard.held(), None);

    let backends: Vec<Box<dyn PartitionBackend>> = vec![Box::new(AgentBackend {
        cut_off: true,
        ..AgentBackend::new("work", Label::Green, Some("x"))
    })];
    let mut app = BulkheadApp::new(backends);
    app.clipboard = SecureClipboard::new(Some(policy.path().to_path_buf()), None);
    gesture(&mut app, 0, ClipboardGesture::Copy);
    let (kind, text) = status(&app);
    assert_eq!(kind, StatusKind::Refused);
    assert!(text.contains("agent cut off: malformed frame"), "{text}");
}

#[test]
fn the_status_line_shows_a_refused_paste_in_the_app() {
    // A fixed directory: the refusal names the rule's file, and the snapshot shows it.
    let policy = std::env::temp_dir().join("bulkhead-clipboard-snapshot-policy");
    let _ = std::fs::remove_dir_all(&policy);
    std::fs::create_dir_all(policy.join("policy.d")).unwrap();
    std::fs::write(policy.join("partitions.toml"), PARTITIONS).unwrap();
    write_rules(&policy, "bulkhead.ClipboardPaste  *  work  browser  deny\n");
    let audit = tempfile::tempdir().unwrap();
    let mut app = app(&policy, audit.path());
    gesture(&mut app, 0, ClipboardGesture::Copy);
    gesture(&mut app, 1, ClipboardGesture::Paste);
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 720.0))
        .wgpu()
        .build_ui_state(|ui, app: &mut BulkheadApp| app.frame(ui), app);
    h.run_steps(2);
    h.get_by_label("Clipboard [browser]");
    let refusal = status(h.state()).1;
    h.get_by_label(&refusal);
    mask_live_figures(&mut h);
    h.snapshot("clipboard_refused_paste");
}

#[test]
fn the_status_line_says_what_was_copied() {
    let policy = policy_dir("");
    let audit = tempfile::tempdir().unwrap();
    let mut app = app(policy.path(), audit.path());
    gesture(&mut app, 0, ClipboardGesture::Copy);
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 720.0))
        .wgpu()
        .build_ui_state(|ui, app: &mut BulkheadApp| app.frame(ui), app);
    h.run_steps(2);
    h.get_by_label("Clipboard [work]");
    h.get_by_label(&format!("copied {} bytes from [work]", WORK_TEXT.len()));
    mask_live_figures(&mut h);
    h.snapshot("clipboard_copied");
}

/// Hides the partitions' live figures (CPU, uptime), which change with the machine's load.
fn mask_live_figures(h: &mut Harness<'_, BulkheadApp>) {
    let live: Vec<egui::Rect> = h
        .query_all_by_label_contains("CPU ")
        .map(|n| n.rect())
        .collect();
    assert!(!live.is_empty(), "running partitions show live figures");
    for r in live {
        h.mask(r);
    }
}

fn harness(app: BulkheadApp) -> Harness<'static, BulkheadApp> {
    Harness::builder()
        .with_size(egui::vec2(1280.0, 720.0))
        .wgpu()
        .build_ui_state(|ui, app: &mut BulkheadApp| app.frame(ui), app)
}

/// Steps (a quarter second each) until the ask dialog takes answers.
fn wait_out_the_delay(h: &mut Harness<'_, BulkheadApp>) {
    let steps = (ask_dialog::ANSWER_DELAY / 0.25).ceil() as usize + 1;
    h.run_steps(steps);
}

fn records(audit: &Path) -> Vec<isolation_policy::AuditRecord> {
    AuditLog::open(audit, 1 << 20, 2)
        .unwrap()
        .read(&AuditFilter::default())
        .unwrap()
        .records
}

#[test]
fn allow_in_the_ask_dialog_pastes_once_and_is_audited_as_asked_and_allowed() {
    let policy = policy_dir("bulkhead.ClipboardPaste  *  work  browser  ask\n");
    let audit = tempfile::tempdir().unwrap();
    let mut app = app(policy.path(), audit.path());
    gesture(&mut app, 0, ClipboardGesture::Copy);
    gesture(&mut app, 1, ClipboardGesture::Paste);
    let asked = app.asks.current().expect("an ask dialog").clone();
    assert_eq!(
        (asked.service.as_str(), asked.source.as_str()),
        ("bulkhead.ClipboardPaste", "work")
    );
    assert_eq!(asked.targets, ["browser"]);
    assert_eq!(
        app.asks.choice(),
        Some("browser"),
        "the target is preselected"
    );
    assert_eq!(app.clipboard.held(), Some(("work", WORK_TEXT.len())));

    let mut h = harness(app);
    wait_out_the_delay(&mut h);
    h.get_by_label("Allow").click();
    h.run_steps(2);
    let app = h.state();
    assert!(!app.asks.is_open());
    let (kind, text) = status(app);
    assert_eq!(kind, StatusKind::Done, "{text}");
    assert!(
        text.starts_with("pasted 21 bytes from [work] into [browser]"),
        "{text}"
    );
    assert_eq!(app.clipboard.held(), None, "the buffer outlived its paste");
    let audited = records(audit.path());
    let words: Vec<&str> = audited.iter().map(|r| r.decision.as_str()).collect();
    assert_eq!(words, ["allow", "ask", "allow"]);
    let last = audited.last().unwrap();
    assert!(
        last.explanation
            .starts_with("asked → allowed by the user (ask the user by rule"),
        "{}",
        last.explanation
    );
    assert_eq!(last.rule.as_ref().map(|r| r.line), Some(1));
    assert_eq!(last.target.as_deref(), Some("browser"));
    // The audit panel shows the person's decision as such.
    assert_eq!(
        app.audit.rows.last().map(|r| r.decision.as_str()),
        Some("asked → allow")
    );
}

#[test]
fn escape_in_the_ask_dialog_denies_visibly_audits_and_keeps_the_buffer() {
    let policy = policy_dir("bulkhead.ClipboardPaste  *  work  browser  ask\n");
    let audit = tempfile::tempdir().unwrap();
    let mut app = app(policy.path(), audit.path());
    gesture(&mut app, 0, ClipboardGesture::Copy);
    gesture(&mut app, 1, ClipboardGesture::Paste);
    let mut h = harness(app);
    wait_out_the_delay(&mut h);
    h.key_press(egui::Key::Escape);
    h.run_steps(2);
    let app = h.state();
    assert!(!app.asks.is_open());
    assert_eq!(
        status(app),
        (
            StatusKind::Refused,
            "paste from [work] into [browser] refused: you denied it".into()
        )
    );
    assert_eq!(app.clipboard.held(), Some(("work", WORK_TEXT.len())));
    let last = records(audit.path()).pop().unwrap();
    assert_eq!(last.decision, "deny");
    assert!(
        last.explanation.starts_with("asked → denied by the user"),
        "{}",
        last.explanation
    );
    // Nothing reached the browser's agent: its own clipboard is unchanged.
    let mut app = h.into_state();
    gesture(&mut app, 1, ClipboardGesture::Copy);
    assert_eq!(
        app.clipboard.held(),
        Some(("browser", "browser's own".len()))
    );
}

#[test]
fn the_ask_dialog_buttons_and_shortcuts_do_nothing_before_the_delay() {
    let policy = policy_dir("bulkhead.ClipboardPaste  *  work  browser  ask\n");
    let audit = tempfile::tempdir().unwrap();
    let mut app = app(policy.path(), audit.path());
    gesture(&mut app, 0, ClipboardGesture::Copy);
    gesture(&mut app, 1, ClipboardGesture::Paste);
    let mut h = harness(app);
    h.step();
    for name in ["Allow", "Deny"] {
        assert!(
            h.get_by_label(name).accesskit_node().is_disabled(),
            "{name} is live at once"
        );
    }
    // A click and both shortcuts in the same frame, still inside the delay.
    h.get_by_label("Allow").click();
    h.input_mut().events.extend([
        egui::Event::Key {
            key: egui::Key::Enter,
            physical_key: Some(egui::Key::Enter),
            pressed: true,
            repeat: false,
            modifiers: egui::Modifiers::NONE,
        },
        egui::Event::Key {
            key: egui::Key::Escape,
            physical_key: Some(egui::Key::Escape),
            pressed: true,
            repeat: false,
            modifiers: egui::Modifiers::NONE,
        },
    ]);
    h.step();
    assert!(h.state().asks.is_open(), "answered before the delay");
    assert_eq!(records(audit.path()).len(), 2, "copy and ask only");
    wait_out_the_delay(&mut h);
    for name in ["Allow", "Deny"] {
        assert!(!h.get_by_label(name).accesskit_node().is_disabled());
    }
    h.key_press(egui::Key::Enter);
    h.run_steps(2);
    assert!(!h.state().asks.is_open());
    assert_eq!(status(h.state()).0, StatusKind::Done);
}

/// The key events a backend received that press something.
fn presses(inputs: &Arc<Mutex<Vec<UserInput>>>) -> Vec<UserInput> {
    inputs
        .lock()
        .unwrap()
        .iter()
        .filter(|e| {
            matches!(
                e,
                UserInput::Key { pressed: true, .. } | UserInput::Button { pressed: true, .. }
            )
        })
        .cloned()
        .collect()
}

#[test]
fn guest_keys_while_the_ask_dialog_is_open_never_reach_a_partition_nor_answer_it() {
    let policy = policy_dir("bulkhead.ClipboardPaste  *  work  browser  ask\n");
    let audit = tempfile::tempdir().unwrap();
    let work = AgentBackend::new("work", Label::Green, Some(WORK_TEXT));
    let browser = AgentBackend::new("browser", Label::Red, None);
    let (work_in, browser_in) = (work.inputs.clone(), browser.inputs.clone());
    let mut app = BulkheadApp::new(vec![Box::new(work), Box::new(browser)]);
    app.clipboard = SecureClipboard::new(Some(policy.path().to_path_buf()), Some(audit.path()));
    gesture(&mut app, 0, ClipboardGesture::Copy);
    let mut h = harness(app);
    h.run_steps(2);
    // The person clicks into the browser and presses the paste gesture, as for real.
    h.get_by_label("software framebuffer view [browser]")
        .click();
    h.run_steps(2);
    assert!(h.state().keyboard_captured());
    let ctrl_shift = egui::Modifiers {
        ctrl: true,
        shift: true,
        ..egui::Modifiers::NONE
    };
    h.key_press_modifiers(ctrl_shift, egui::Key::V);
    h.step();
    assert!(h.state().asks.is_open(), "{:?}", h.state().clipboard.status);
    assert!(
        !h.state().keyboard_captured(),
        "the keyboard stays with a partition under an open question"
    );
    let before = presses(&browser_in).len();
    // The guest's user goes on typing, presses Enter (meant for the guest) and clicks
    // into the partition, all in the frame after the question appeared: none of it
    // reaches a partition or answers the question.
    let view = h
        .get_by_label("software framebuffer view [browser]")
        .rect()
        .center();
    let key = |key, pressed| egui::Event::Key {
        key,
        physical_key: Some(key),
        pressed,
        repeat: false,
        modifiers: egui::Modifiers::NONE,
    };
    let click = |pressed| egui::Event::PointerButton {
        pos: view,
        button: egui::PointerButton::Primary,
        pressed,
        modifiers: egui::Modifiers::NONE,
    };
    h.input_mut().events.extend([
        key(egui::Key::A, true),
        key(egui::Key::A, false),
        key(egui::Key::Enter, true),
        key(egui::Key::Enter, false),
        egui::Event::PointerMoved(view),
        click(true),
        click(false),
    ]);
    h.step();
    assert!(
        h.state().asks.is_open(),
        "a guest key answered the question: {:?}",
        h.state().clipboard.status
    );
    assert!(
        !h.state().keyboard_captured(),
        "a click re-captured the keyboard"
    );
    wait_out_the_delay(&mut h);
    h.key_press(egui::Key::B);
    h.step();
    assert_eq!(
        presses(&browser_in).len(),
        before,
        "{:?}",
        presses(&browser_in)
    );
    assert!(presses(&work_in).is_empty(), "{:?}", presses(&work_in));
    assert!(h.state().asks.is_open());
    assert_eq!(h.state().clipboard.held(), Some(("work", WORK_TEXT.len())));
}

#[test]
fn the_ask_dialog_names_service_source_target_and_rule() {
    // A fixed directory: the dialog shows the rule's file, and the snapshot shows it.
    let policy = std::env::temp_dir().join("bulkhead-ask-snapshot-policy");
    let _ = std::fs::remove_dir_all(&policy);
    std::fs::create_dir_all(policy.join("policy.d")).unwrap();
    std::fs::write(policy.join("partitions.toml"), PARTITIONS).unwrap();
    write_rules(
        &policy,
        "# Pastes into the browser need a yes.\nbulkhead.ClipboardPaste  *  work  browser  ask\n",
    );
    let audit = tempfile::tempdir().unwrap();
    let mut app = app(&policy, audit.path());
    gesture(&mut app, 0, ClipboardGesture::Copy);
    gesture(&mut app, 1, ClipboardGesture::Paste);
    let mut h = harness(app);
    wait_out_the_delay(&mut h);
    h.get_by_label("Bulkhead asks: [work] wants bulkhead.ClipboardPaste");
    assert_eq!(h.state().asks.choice(), Some("browser"));
    let rule = format!("{}:2", policy.join("policy.d/50-test.policy").display());
    h.get_by_label(&rule);
    h.get_by_label(
        ("clipboard: paste from [work] into [browser]: waiting for your answer (rule ".to_string()
            + &rule
            + ")")
            .as_str(),
    );
    mask_live_figures(&mut h);
    h.snapshot("ask_dialog_clipboard_paste");
}

#[test]
fn a_paste_into_a_denied_target_is_refused_and_audited_through_the_ui() {
    let policy = policy_dir("bulkhead.ClipboardPaste  *  work  browser  deny\n");
    let audit = tempfile::tempdir().unwrap();
    let mut app = app(policy.path(), audit.path());
    app.prefs.show_audit = true;
    gesture(&mut app, 0, ClipboardGesture::Copy);
    let mut h = harness(app);
    h.run_steps(2);
    h.get_by_label("software framebuffer view [browser]")
        .click();
    h.run_steps(2);
    let ctrl_shift = egui::Modifiers {
        ctrl: true,
        shift: true,
        ..egui::Modifiers::NONE
    };
    h.key_press_modifiers(ctrl_shift, egui::Key::V);
    h.run_steps(2);
    // The browser's own line in the launcher says so, naming the rule.
    h.query_by_label_contains(
        "clipboard: paste from [work] into [browser] refused: denied by rule",
    )
    .expect("the refusal on the browser's status line");
    let text = h.state().slots[1]
        .event
        .as_ref()
        .map(|e| e.text.clone())
        .unwrap_or_default();
    assert!(text.contains("50-test.policy:1"), "{text}");
    // The audit panel lists the decision, from and to.
    let rows: Vec<_> = h
        .state()
        .audit
        .filtered()
        .map(|r| {
            (
                r.service.clone(),
                r.source.clone(),
                r.target.clone(),
                r.decision.clone(),
            )
        })
        .collect();
    assert_eq!(
        rows.last(),
        Some(&(
            "bulkhead.ClipboardPaste".to_string(),
            "work".to_string(),
            "browser".to_string(),
            "deny".to_string()
        ))
    );
    assert!(
        h.query_by_label("deny").is_some(),
        "the audit panel shows the denial"
    );
    assert_eq!(h.state().clipboard.held(), Some(("work", WORK_TEXT.len())));
    assert_eq!(
        records(audit.path()).last().map(|r| r.decision.clone()),
        Some("deny".into())
    );
}

#[test]
fn a_policy_saved_in_the_editor_decides_the_next_paste_and_what_if_agrees_with_the_audit() {
    let policy = policy_dir("bulkhead.ClipboardPaste  *  work  browser  deny\n");
    let audit = tempfile::tempdir().unwrap();
    let mut app = app(policy.path(), audit.path());
    app.policy = PolicyEditor::open(policy.path());
    app.policy
        .apply(EditorAction::SelectRuleFile("50-test.policy".into()));
    gesture(&mut app, 0, ClipboardGesture::Copy);

    for (rule, verdict) in [("allow", "allow"), ("ask", "ask"), ("deny", "deny")] {
        app.policy.set_rule_text(&format!(
            "bulkhead.ClipboardPaste  *  work  browser  {rule}\n"
        ));
        app.policy.apply(EditorAction::Save);
        assert!(
            matches!(app.policy.status, Some(Status::Saved(_))),
            "{:?}",
            app.policy.status
        );
        app.apply_saved_policy();
        if app.clipboard.held().is_none() {
            gesture(&mut app, 0, ClipboardGesture::Copy);
        }
        gesture(&mut app, 1, ClipboardGesture::Paste);
        let engine = records(audit.path()).pop().unwrap();
        assert_eq!(engine.decision, verdict, "the paste after saving `{rule}`");
        app.policy
            .set_what_if("bulkhead.ClipboardPaste", "work", "browser");
        let answer = app.policy.what_if_answer().unwrap().unwrap();
        let shown_rule = engine.rule.as_ref().unwrap().to_string();
        assert!(
            answer.starts_with(verdict) && answer.contains(&shown_rule),
            "what-if says {answer:?}, the engine decided {verdict} by {shown_rule}"
        );
        assert!(
            answer.contains(&engine.explanation),
            "{answer:?} vs {engine:?}"
        );
        // The audit panel shows the same decision.
        assert_eq!(app.audit.rows.last().unwrap().decision, verdict);
        if verdict == "ask" {
            assert!(app.asks.is_open());
            let answered = bulkhead::app::ask_dialog::Answered {
                owner: ask_dialog::AskOwner::Clipboard,
                continuation: app.asks.current().unwrap().continuation,
                answer: ask_dialog::AskAnswer::Deny,
            };
            // The dialog is drained as the UI would after an answer.
            let _ = std::mem::take(&mut app.asks);
            app.answer_ask(answered);
        }
    }
}

#[test]
fn the_editor_saves_the_defaults_into_the_user_dir_and_the_next_paste_reads_it() {
    let root = tempfile::tempdir().unwrap();
    let defaults = root.path().join("etc-bulkhead");
    std::fs::create_dir_all(defaults.join("policy.d")).unwrap();
    std::fs::write(defaults.join("partitions.toml"), PARTITIONS).unwrap();
    write_rules(
        &defaults,
        "bulkhead.ClipboardPaste  *  work  browser  deny\n",
    );
    let before: Vec<_> = ["partitions.toml", "policy.d/50-test.policy"]
        .iter()
        .map(|f| std::fs::read(defaults.join(f)).unwrap())
        .collect();
    let user = root.path().join("config/bulkhead");
    let audit = tempfile::tempdir().unwrap();
    let mut app = app(&defaults, audit.path());
    app.policy = PolicyEditor::open_saving_to(&defaults, Some(user.clone()));
    assert_eq!(app.policy.save_target(), Some(user.as_path()));
    app.policy
        .apply(EditorAction::SelectRuleFile("50-test.policy".into()));
    app.policy
        .set_rule_text("bulkhead.ClipboardPaste  *  work  browser  allow\n");
    app.policy.apply(EditorAction::Save);
    assert_eq!(
        app.policy.status,
        Some(Status::Saved(format!("Saved to {}", user.display())))
    );
    let after: Vec<_> = ["partitions.toml", "policy.d/50-test.policy"]
        .iter()
        .map(|f| std::fs::read(defaults.join(f)).unwrap())
        .collect();
    assert_eq!(after, before, "the defaults were written");
    assert!(!defaults.join("policy.d/50-test.policy.bak").exists());
    assert_eq!(
        std::fs::read_to_string(user.join("partitions.toml")).unwrap(),
        PARTITIONS
    );
    app.apply_saved_policy();
    gesture(&mut app, 0, ClipboardGesture::Copy);
    gesture(&mut app, 1, ClipboardGesture::Paste);
    assert_eq!(status(&app).0, StatusKind::Done, "{}", status(&app).1);
    let rule = records(audit.path()).pop().unwrap().rule.unwrap();
    assert!(rule.file.starts_with(&user), "{}", rule.file.display());
}

#[test]
fn the_clipboard_cap_comes_from_the_policy_and_a_saved_change_applies_to_the_next_copy() {
    let policy = policy_dir("");
    let partitions = policy.path().join("partitions.toml");
    std::fs::write(
        &partitions,
        format!("{PARTITIONS}\n[clipboard]\nmax_bytes = 8\n"),
    )
    .unwrap();
    let audit = tempfile::tempdir().unwrap();
    let mut app = app(policy.path(), audit.path());
    gesture(&mut app, 0, ClipboardGesture::Copy);
    assert_eq!(app.clipboard.max_bytes(), 8);
    let (kind, text) = status(&app);
    assert_eq!(kind, StatusKind::Refused);
    assert!(text.contains("more than the 8-byte cap"), "{text}");

    std::fs::write(
        &partitions,
        format!("{PARTITIONS}\n[clipboard]\nmax_bytes = 4096\n"),
    )
    .unwrap();
    gesture(&mut app, 0, ClipboardGesture::Copy);
    assert_eq!(app.clipboard.max_bytes(), 4096);
    assert_eq!(app.clipboard.held(), Some(("work", WORK_TEXT.len())));

    // A value out of range does not load: the last good cap stays.
    std::fs::write(
        &partitions,
        format!("{PARTITIONS}\n[clipboard]\nmax_bytes = 0\n"),
    )
    .unwrap();
    gesture(&mut app, 0, ClipboardGesture::Copy);
    assert_eq!(app.clipboard.max_bytes(), 4096);
    let err = isolation_policy::Policy::load(policy.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("partitions.toml:13:13: error: `clipboard.max_bytes` = 0 is impossible"),
        "{err}"
    );
}
