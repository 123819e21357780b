//! The secure clipboard in the app: gestures from the keyboard router, decisions by the
//! policy as saved on disk (an edit applies to the next paste), every decision in the
//! audit log and the audit panel, the buffer emptied by its one paste, refusals shown on
//! the status line. The partitions are software sources with a scripted guest agent.
//! Snapshot: `UPDATE_SNAPSHOTS=1 cargo test -p bulkhead --test clipboard`.

use std::path::Path;

use bulkhead::app::backend::{AgentReply, AgentRequest, BackendError, Clipboard, PartitionBackend};
use bulkhead::app::clipboard::{SecureClipboard, StatusKind};
use bulkhead::app::{
    BulkheadApp, Label, PartitionInfo, PartitionState, SoftwareBackend, SourceKind,
};
use bulkhead::display::software::Pattern;
use bulkhead::display::FrameView;
use bulkhead::input::router::ClipboardGesture;
use bulkhead::input::UserInput;
use egui_kittest::kittest::Queryable;
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
fn app(policy: &Path, audit: &Path, max_bytes: usize) -> BulkheadApp {
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
    app.clipboard = SecureClipboard::new(Some(policy.to_path_buf()), Some(audit), max_bytes);
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
    let mut app = app(policy.path(), audit.path(), 256 * 1024);

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
    let mut app = app(policy.path(), audit.path(), 256 * 1024);
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
fn denied_and_ask_pastes_are_refused_visibly_and_nothing_crosses() {
    let policy = policy_dir(
        "bulkhead.ClipboardPaste  *  work  browser  deny\n\
         bulkhead.ClipboardPaste  *  work  vault    ask\n",
    );
    let audit = tempfile::tempdir().unwrap();
    let mut app = app(policy.path(), audit.path(), 256 * 1024);
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
    assert_eq!(kind, StatusKind::Refused);
    assert!(
        text.contains("needs confirmation (not yet supported)"),
        "{text}"
    );
    // Nothing was sent to either agent; the buffer is still there.
    assert_eq!(app.clipboard.held(), Some(("work", WORK_TEXT.len())));
    let decisions: Vec<String> = audited(audit.path()).into_iter().map(|r| r.3).collect();
    assert_eq!(decisions, ["allow", "deny", "ask"]);
}

#[test]
fn a_policy_saved_between_two_pastes_decides_the_second() {
    let policy = policy_dir("bulkhead.ClipboardPaste  *  work  browser  deny\n");
    let audit = tempfile::tempdir().unwrap();
    let mut app = app(policy.path(), audit.path(), 256 * 1024);
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
    let mut small = app(policy.path(), audit.path(), 8);
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
    app.clipboard = SecureClipboard::new(Some(policy.path().to_path_buf()), None, 1024);
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
    let mut app = app(&policy, audit.path(), 256 * 1024);
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
    let mut app = app(policy.path(), audit.path(), 256 * 1024);
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
