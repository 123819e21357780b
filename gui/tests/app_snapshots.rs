//! The desktop app rendered headless (egui_kittest on wgpu; lavapipe on machines without a
//! GPU) and driven through AccessKit. Snapshots live in `tests/snapshots/`; update them
//! with `UPDATE_SNAPSHOTS=1 cargo test -p bulkhead --test app_snapshots`.

use std::sync::{Arc, Mutex};

use bulkhead::app::backend::PartitionBackend;
use bulkhead::app::{
    BulkheadApp, Label, PartitionInfo, PartitionState, SoftwareBackend, SourceKind, ViewLayout,
};
use bulkhead::display::software::Pattern;
use bulkhead::input::UserInput;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

fn info(name: &str, label: Label, display: (u32, u32)) -> PartitionInfo {
    PartitionInfo {
        name: name.into(),
        label,
        kind: name.into(),
        memory_mib: 512,
        vcpus: 2,
        display,
        source: SourceKind::SoftwareFramebuffer,
    }
}

fn software(name: &str, label: Label, display: (u32, u32), pattern: Pattern) -> SoftwareBackend {
    SoftwareBackend::new(info(name, label, display), pattern)
}

fn running(name: &str, label: Label) -> SoftwareBackend {
    let mut b = software(name, label, (320, 240), Pattern::Still);
    b.start_running().unwrap();
    b
}

fn harness(app: BulkheadApp, size: (f32, f32)) -> Harness<'static, BulkheadApp> {
    Harness::builder()
        .with_size(egui::vec2(size.0, size.1))
        .wgpu()
        .build_ui_state(|ui, app: &mut BulkheadApp| app.frame(ui), app)
}

fn state_of(h: &Harness<'_, BulkheadApp>, i: usize) -> PartitionState {
    h.state().slots[i].backend.state()
}

#[test]
fn launcher_shows_every_state_with_its_label_and_reason() {
    let browser = running("browser", Label::Red);
    let mut mail =
        software("mail", Label::Yellow, (320, 240), Pattern::Still).with_boot_polls(1000);
    mail.start().unwrap();
    let mut work = running("work", Label::Blue);
    work.pause().unwrap();
    let mut dev = running("dev", Label::Green);
    dev.simulate_crash("guest triple fault at rip 0x1000");
    let vault = software("vault", Label::Black, (320, 240), Pattern::Still);
    let backends: Vec<Box<dyn PartitionBackend>> = vec![
        Box::new(browser),
        Box::new(mail),
        Box::new(work),
        Box::new(dev),
        Box::new(vault),
    ];
    let mut h = harness(BulkheadApp::new(backends), (1280.0, 860.0));
    h.run_steps(1);

    for word in ["running", "booting", "paused", "crashed", "stopped"] {
        assert!(
            h.query_all_by_label(word).next().is_some(),
            "no partition shown as {word}"
        );
    }
    h.get_by_label("reason: guest triple fault at rip 0x1000");
    assert_eq!(
        h.get_all_by_label("software framebuffer — not a partition")
            .count(),
        5,
        "every software source must say it is not a partition"
    );
    // Live figures (CPU, uptime) change from run to run; everything else must not.
    let live: Vec<egui::Rect> = h
        .query_all_by_label_contains("CPU ")
        .map(|n| n.rect())
        .collect();
    assert_eq!(
        live.len(),
        2,
        "running and paused partitions show live figures"
    );
    for r in live {
        h.mask(r);
    }
    h.snapshot("launcher_states");
}

/// Reads the pixel at (x, y) points (the harness renders at 1 pixel per point).
fn rgb(image: &image::RgbaImage, x: f32, y: f32) -> [u8; 3] {
    let p = image.get_pixel(x as u32, y as u32).0;
    [p[0], p[1], p[2]]
}

/// One running partition shown alone in an 800x600 window, rendered: the harness, where
/// its guest pixels went, and the picture.
fn one_view(
    name: &str,
    label: Label,
) -> (
    Harness<'static, BulkheadApp>,
    bulkhead::input::router::ViewGeometry,
    image::RgbaImage,
) {
    let backends: Vec<Box<dyn PartitionBackend>> = vec![Box::new(running(name, label))];
    let mut app = BulkheadApp::new(backends);
    app.prefs.show_launcher = false;
    app.prefs.layout = ViewLayout::Tabs;
    let mut h = harness(app, (800.0, 600.0));
    h.run_steps(2);
    let geo = h.state().slots[0].geometry().expect("view drawn");
    let image = h.render().unwrap();
    (h, geo, image)
}

#[test]
fn partition_view_border_is_the_exact_label_colour_outside_the_guest_pixels() {
    let (mut h, geo, image) = one_view("browser", Label::Red);
    let red = [0xcc, 0x00, 0x00];
    let img = geo.image_rect;
    let mid_y = img.center().y;
    let mid_x = img.center().x;
    for d in 1..=4 {
        let d = d as f32 - 0.5;
        assert_eq!(rgb(&image, img.left() - d, mid_y), red, "left border {d}");
        assert_eq!(rgb(&image, img.right() + d, mid_y), red, "right border {d}");
        assert_eq!(
            rgb(&image, mid_x, img.bottom() + d),
            red,
            "bottom border {d}"
        );
    }
    // The title bar's far end (past its text) is label colour too.
    assert_eq!(
        rgb(&image, img.right() - 2.0, img.top() - 3.0),
        red,
        "title bar"
    );
    // Inside: the guest's own pixels, the test card's first (light grey) bar.
    assert_eq!(
        rgb(&image, img.left() + 3.0, img.top() + 3.0),
        [192, 192, 192]
    );
    h.get_by_label("software framebuffer view [browser]");
    h.snapshot("partition_view_red");
}

#[test]
fn clicking_start_boots_the_partition_then_it_runs() {
    let stopped = software("work", Label::Blue, (320, 240), Pattern::TestCard);
    let mut h = harness(BulkheadApp::new(vec![Box::new(stopped)]), (1000.0, 700.0));
    h.run_steps(1);
    assert_eq!(state_of(&h, 0), PartitionState::Stopped);
    h.get_by_label("Start").click();
    h.run_steps(2);
    assert_ne!(state_of(&h, 0), PartitionState::Stopped);
    h.run_steps(4);
    assert_eq!(state_of(&h, 0), PartitionState::Running);
    h.get_by_label("Pause").click();
    h.run_steps(2);
    assert_eq!(state_of(&h, 0), PartitionState::Paused);
    h.get_by_label("Resume").click();
    h.run_steps(2);
    assert_eq!(state_of(&h, 0), PartitionState::Running);
    h.get_by_label("Stop").click();
    h.run_steps(1);
    assert_eq!(state_of(&h, 0), PartitionState::Stopped);
}

/// What a software source received, shared with the test.
type InputLog = Arc<Mutex<Vec<UserInput>>>;

fn two_running() -> (BulkheadApp, InputLog, InputLog) {
    let browser = running("browser", Label::Red);
    let mail = running("mail", Label::Yellow);
    let (b_log, m_log) = (browser.input_log(), mail.input_log());
    let mut app = BulkheadApp::new(vec![Box::new(browser), Box::new(mail)]);
    app.prefs.show_launcher = false;
    (app, b_log, m_log)
}

#[test]
fn keyboard_reaches_only_the_partition_clicked_into() {
    let (app, browser_log, mail_log) = two_running();
    let mut h = harness(app, (1000.0, 500.0));
    h.run_steps(2);
    h.get_by_label("software framebuffer view [mail]").click();
    h.run_steps(2);
    assert_eq!(h.state().focused(), Some(1));
    assert!(h.state().keyboard_captured());
    h.get_by_label_contains("Keyboard captured by [mail]");
    h.key_press(egui::Key::A);
    h.run_steps(1);
    let mail = mail_log.lock().unwrap().clone();
    assert!(
        mail.contains(&UserInput::Key {
            code: 30,
            pressed: true
        }),
        "{mail:?}"
    );
    assert!(
        mail.contains(&UserInput::Key {
            code: 30,
            pressed: false
        }),
        "{mail:?}"
    );
    assert!(
        browser_log.lock().unwrap().is_empty(),
        "unfocused partition heard input"
    );
}

#[test]
fn release_shortcut_returns_the_keyboard_to_the_host() {
    let (app, _browser_log, mail_log) = two_running();
    let mut h = harness(app, (1000.0, 500.0));
    h.run_steps(2);
    h.get_by_label("software framebuffer view [mail]").click();
    h.run_steps(2);
    assert!(h.state().keyboard_captured());
    let ctrl_alt = egui::Modifiers {
        ctrl: true,
        alt: true,
        ..Default::default()
    };
    h.key_press_modifiers(ctrl_alt, egui::Key::G);
    h.run_steps(1);
    assert!(!h.state().keyboard_captured());
    assert_eq!(
        h.state().focused(),
        Some(1),
        "focus stays, only the keyboard is released"
    );
    let before = mail_log.lock().unwrap().len();
    h.key_press(egui::Key::B);
    h.run_steps(1);
    assert_eq!(
        mail_log.lock().unwrap().len(),
        before,
        "keys after release stay with the host"
    );
}

#[test]
fn pop_out_moves_the_view_to_its_own_window_and_back() {
    let (app, _b, _m) = two_running();
    let mut h = harness(app, (1000.0, 600.0));
    h.run_steps(2);
    h.state_mut().prefs.show_launcher = true;
    h.run_steps(1);
    h.get_all_by_label("Pop out").next().unwrap().click();
    h.run_steps(3);
    assert!(h.state().slots[0].popped_out);
    // Still shown (as its own viewport, embedded here), with its border and title.
    h.get_by_label("software framebuffer view [browser]");
    h.get_by_label("Pop in").click();
    h.run_steps(2);
    assert!(!h.state().slots[0].popped_out);
}

#[test]
fn serial_panel_shows_what_the_source_wrote() {
    let (mut app, _b, _m) = two_running();
    app.prefs.show_serial = true;
    let mut h = harness(app, (1000.0, 600.0));
    h.run_steps(2);
    h.get_by_label_contains("[browser] software framebuffer 320x240 started");
}

#[test]
fn a_black_border_on_the_dark_theme_keeps_its_colour_and_gets_a_visible_edge() {
    let (_, geo, image) = one_view("vault", Label::Black);
    let img = geo.image_rect;
    let mid_y = img.center().y;
    for d in 1..=4 {
        let d = d as f32 - 0.5;
        assert_eq!(
            rgb(&image, img.left() - d, mid_y),
            [0, 0, 0],
            "left border {d}"
        );
    }
    // Just outside the 4-point border: the neutral hairline, not the dark background.
    let edge = rgb(&image, img.left() - 4.5, mid_y);
    assert!(
        edge.iter().all(|&c| c > 100),
        "no visible edge outside the black border: {edge:?}"
    );
}

#[test]
fn a_host_that_can_only_run_the_test_card_says_so_in_the_window() {
    let backends: Vec<Box<dyn PartitionBackend>> = vec![Box::new(running("work", Label::Green))];
    let mut app = BulkheadApp::new(backends);
    // The launcher's live figures (memory in use) would make the snapshot flaky.
    app.prefs.show_launcher = false;
    let quiet = harness(BulkheadApp::new(Vec::new()), (1280.0, 400.0));
    assert!(
        quiet.query_by_label_contains("test card").is_none(),
        "no notice on a host that can run Linux"
    );
    app.host_notice = Some(
        "no hardware virtualization: stock Linux guests cannot run on this host \
         (/dev/kvm is kvm-pvm, a software hypervisor); partitions run the built-in test \
         card instead"
            .into(),
    );
    let mut h = harness(app, (1280.0, 400.0));
    h.run_steps(1);
    h.get_by_label_contains("partitions run the built-in test card instead");
    h.snapshot("host_notice");
}

/// A source whose process reported that this host lacks Landlock (or, with the second
/// field, whose limits are not in force): everything else is the software source's.
struct ReducedSandbox(SoftwareBackend, Option<&'static str>);

impl PartitionBackend for ReducedSandbox {
    fn info(&self) -> &PartitionInfo {
        self.0.info()
    }
    fn state(&self) -> PartitionState {
        self.0.state()
    }
    fn stats(&self) -> bulkhead::app::PartitionStats {
        self.0.stats()
    }
    fn sandbox_gaps(&self) -> Vec<String> {
        match self.1 {
            Some(_) => Vec::new(),
            None => vec!["no Landlock".to_string()],
        }
    }
    fn resource_badge(&self) -> Option<String> {
        self.1.map(str::to_string)
    }
    fn apply_policy(
        &mut self,
        policy: &isolation_policy::Policy,
    ) -> Result<(), bulkhead::app::BackendError> {
        if let Some(spec) = policy.spec(&self.info().name) {
            APPLIED.with(|a| a.borrow_mut().push((spec.name.clone(), spec.cpu_weight)));
        }
        Ok(())
    }
    fn start(&mut self) -> Result<(), bulkhead::app::BackendError> {
        self.0.start()
    }
    fn stop(&mut self) -> Result<(), bulkhead::app::BackendError> {
        self.0.stop()
    }
    fn pause(&mut self) -> Result<(), bulkhead::app::BackendError> {
        self.0.pause()
    }
    fn resume(&mut self) -> Result<(), bulkhead::app::BackendError> {
        self.0.resume()
    }
    fn restart(&mut self) -> Result<(), bulkhead::app::BackendError> {
        self.0.restart()
    }
    fn poll(&mut self) {
        self.0.poll()
    }
    fn frame(&mut self) -> Option<bulkhead::display::FrameView<'_>> {
        self.0.frame()
    }
    fn read_serial(&mut self, out: &mut Vec<u8>) {
        self.0.read_serial(out)
    }
    fn send_input(&mut self, events: &[UserInput]) -> Result<(), bulkhead::app::BackendError> {
        self.0.send_input(events)
    }
}

#[test]
fn a_reduced_sandbox_is_a_badge_on_the_partition_in_the_launcher_and_its_view() {
    let reduced = ReducedSandbox(running("mail", Label::Yellow), None);
    let full = running("work", Label::Blue);
    let backends: Vec<Box<dyn PartitionBackend>> = vec![Box::new(reduced), Box::new(full)];
    let mut app = BulkheadApp::new(backends);
    app.prefs.layout = ViewLayout::Tabs;
    let mut h = harness(app, (1000.0, 480.0));
    h.run_steps(2);
    assert_eq!(
        h.query_all_by_label("sandbox reduced: no Landlock").count(),
        1,
        "one badge in the launcher, on the partition that lacks Landlock only"
    );
    let live: Vec<egui::Rect> = h
        .query_all_by_label_contains("CPU ")
        .map(|n| n.rect())
        .collect();
    for r in live {
        h.mask(r);
    }
    h.snapshot("launcher_sandbox_reduced");
}

thread_local! {
    /// (partition, cpu_weight) handed to `apply_policy`, in order.
    static APPLIED: std::cell::RefCell<Vec<(String, u32)>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[test]
fn a_partition_without_resource_limits_wears_a_badge_in_the_launcher_and_its_view() {
    const BADGE: &str = "no resource limits: cpu, memory, io: no controller, \
                         not in this host's cgroup v2 (held by cgroup v1?)";
    let unlimited = ReducedSandbox(running("mail", Label::Yellow), Some(BADGE));
    let full = running("work", Label::Blue);
    let backends: Vec<Box<dyn PartitionBackend>> = vec![Box::new(unlimited), Box::new(full)];
    let mut app = BulkheadApp::new(backends);
    app.prefs.layout = ViewLayout::Tabs;
    let mut h = harness(app, (1000.0, 480.0));
    h.run_steps(2);
    assert_eq!(
        h.query_all_by_label(BADGE).count(),
        1,
        "one badge in the launcher, on the unlimited partition only"
    );
    let live: Vec<egui::Rect> = h
        .query_all_by_label_contains("CPU ")
        .map(|n| n.rect())
        .collect();
    for r in live {
        h.mask(r);
    }
    h.snapshot("launcher_no_resource_limits");
}

#[test]
fn saving_the_policy_hands_each_running_partition_its_new_settings() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("partitions.toml"),
        "[partition.mail]\nlabel = \"yellow\"\ncpu_weight = 100\n",
    )
    .unwrap();
    let backends: Vec<Box<dyn PartitionBackend>> = vec![Box::new(ReducedSandbox(
        running("mail", Label::Yellow),
        None,
    ))];
    let mut app = BulkheadApp::new(backends);
    app.policy = bulkhead::app::policy_editor::PolicyEditor::open(dir.path());
    app.apply_saved_policy();
    assert!(APPLIED.with(|a| a.borrow().is_empty()), "nothing saved yet");
    app.policy.select("mail");
    app.policy.set_field("cpu_weight", "700");
    app.policy.save();
    app.apply_saved_policy();
    app.apply_saved_policy();
    assert_eq!(
        APPLIED.with(|a| a.borrow().clone()),
        [("mail".to_string(), 700)],
        "applied once, with the saved value"
    );
}

/// A source with a network state (as the supervisor reports it) that records every
/// policy it is asked to apply.
struct Networked {
    inner: SoftwareBackend,
    network: bulkhead::app::backend::NetworkState,
    applied: Arc<Mutex<Vec<String>>>,
}

impl Networked {
    fn new(name: &str, label: Label, network: bulkhead::app::backend::NetworkState) -> Self {
        Networked {
            inner: running(name, label),
            network,
            applied: Arc::default(),
        }
    }
}

impl PartitionBackend for Networked {
    fn info(&self) -> &PartitionInfo {
        self.inner.info()
    }
    fn state(&self) -> PartitionState {
        self.inner.state()
    }
    fn stats(&self) -> bulkhead::app::PartitionStats {
        self.inner.stats()
    }
    fn network(&self) -> Option<bulkhead::app::backend::NetworkState> {
        Some(self.network.clone())
    }
    fn apply_policy(
        &mut self,
        policy: &isolation_policy::Policy,
    ) -> Result<(), bulkhead::app::BackendError> {
        let spec = policy.spec(&self.info().name);
        self.applied
            .lock()
            .unwrap()
            .push(format!("{} rules", spec.map_or(0, |s| s.firewall.len())));
        Ok(())
    }
    fn start(&mut self) -> Result<(), bulkhead::app::BackendError> {
        self.inner.start()
    }
    fn stop(&mut self) -> Result<(), bulkhead::app::BackendError> {
        self.inner.stop()
    }
    fn pause(&mut self) -> Result<(), bulkhead::app::BackendError> {
        self.inner.pause()
    }
    fn resume(&mut self) -> Result<(), bulkhead::app::BackendError> {
        self.inner.resume()
    }
    fn restart(&mut self) -> Result<(), bulkhead::app::BackendError> {
        self.inner.restart()
    }
    fn poll(&mut self) {
        self.inner.poll()
    }
    fn frame(&mut self) -> Option<bulkhead::display::FrameView<'_>> {
        self.inner.frame()
    }
    fn read_serial(&mut self, out: &mut Vec<u8>) {
        self.inner.read_serial(out)
    }
    fn send_input(&mut self, events: &[UserInput]) -> Result<(), bulkhead::app::BackendError> {
        self.inner.send_input(events)
    }
}

/// An audit log directory holding one connection the relay refused.
fn audit_dir_with_a_denial() -> tempfile::TempDir {
    use isolation_policy::network::{Destination, FirewallAction, FirewallRule, PortRange};
    use isolation_policy::{
        AuditLog, AuditRecord, Decision, NetTarget, Protocol, Request, RuleRef, Verdict,
    };
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), 1 << 20, 2).unwrap();
    let rule = FirewallRule {
        action: FirewallAction::Deny,
        protocol: Protocol::Tcp,
        destination: Destination::Any,
        ports: vec![PortRange::single(25)],
        line: 31,
        column: 1,
    };
    let request = Request::network(
        "mail",
        NetTarget {
            host: None,
            ip: Some("192.0.2.1".parse().unwrap()),
            protocol: Protocol::Tcp,
            port: Some(25),
        },
    );
    let decision = Decision {
        verdict: Verdict::Deny { notify: false },
        rule: Some(RuleRef {
            file: "partitions.toml".into(),
            line: 31,
            column: 1,
            text: rule.to_string(),
        }),
        explanation: "rule 2 (partitions.toml:31) denies".into(),
        chain: Vec::new(),
    };
    let mut record = AuditRecord::new(std::time::SystemTime::UNIX_EPOCH, &request, &decision);
    record.time = "2026-12-02T10:00:00.000Z".into();
    log.append(&record).unwrap();
    dir
}

#[test]
fn each_partition_shows_its_network_and_the_audit_panel_the_refused_connections() {
    use bulkhead::app::backend::NetworkState;
    let backends: Vec<Box<dyn PartitionBackend>> = vec![
        Box::new(Networked::new(
            "browser",
            Label::Red,
            NetworkState::Nat {
                rules: 2,
                applied: true,
                passt_restarts: 0,
            },
        )),
        Box::new(Networked::new("work", Label::Green, NetworkState::Offline)),
        Box::new(Networked::new(
            "mail",
            Label::Yellow,
            NetworkState::Down {
                reason: "relay killed by SIGKILL".into(),
            },
        )),
    ];
    let mut app = BulkheadApp::new(backends);
    app.prefs.layout = ViewLayout::Tabs;
    app.prefs.show_audit = true;
    let audit = audit_dir_with_a_denial();
    app.audit = bulkhead::app::audit_log::AuditPanel::open(audit.path());
    let mut h = harness(app, (1100.0, 700.0));
    h.run_steps(2);
    for text in [
        "network: NAT · 2 rules",
        "network: offline",
        "network down: relay killed by SIGKILL",
        "tcp 192.0.2.1 port 25",
        "network tcp",
    ] {
        assert_eq!(h.query_all_by_label(text).count(), 1, "{text:?} shown once");
    }
    assert!(
        h.query_by_label_contains("partitions.toml:31").is_some(),
        "the denying rule's file:line is shown"
    );
    let live: Vec<egui::Rect> = h
        .query_all_by_label_contains("CPU ")
        .map(|n| n.rect())
        .collect();
    // The log's temporary path changes at every run.
    let path = h.query_by_label_contains("audit.log").unwrap().rect();
    // Its width too: to the window's right edge.
    let path = egui::Rect::from_min_max(path.min, egui::pos2(1100.0, path.max.y));
    for r in live.into_iter().chain([path]) {
        h.mask(r);
    }
    h.snapshot("launcher_network");
}

#[test]
fn a_saved_policy_reaches_every_partition_once() {
    let dir = tempfile::tempdir().unwrap();
    let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/policy");
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    };
    copy(&assets, dir.path());
    copy(&assets.join("policy.d"), &dir.path().join("policy.d"));
    let browser = Networked::new(
        "browser",
        Label::Red,
        bulkhead::app::backend::NetworkState::Offline,
    );
    let applied = browser.applied.clone();
    let mut app = BulkheadApp::new(vec![Box::new(browser)]);
    app.policy = bulkhead::app::policy_editor::PolicyEditor::open(dir.path());
    app.apply_saved_policy();
    assert!(applied.lock().unwrap().is_empty(), "nothing saved yet");
    app.policy.save();
    assert_eq!(app.policy.saves, 1, "{:?}", app.policy.status);
    app.apply_saved_policy();
    app.apply_saved_policy();
    // browser's two web rules, once.
    assert_eq!(*applied.lock().unwrap(), vec!["2 rules".to_string()]);
}
