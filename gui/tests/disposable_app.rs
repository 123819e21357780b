//! "Disposable" in the app's launcher, with real partition processes (the shipped policy
//! on the test card: a software KVM runs it): a click on `work`'s button starts `disp1`
//! through the supervisor (cold, snapshotted at its marker), a second click `disp2`
//! restored from that snapshot; each gets its own slot, focused; when one stops, its slot
//! goes and the supervisor forgets it.

use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead::app::{Action, BulkheadApp, PartitionState};
use bulkhead::supervised::supervised_backends;
use bulkhead_supervisor::launch::Engine;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

const WAIT: Duration = Duration::from_secs(60);

fn names(h: &Harness<'_, BulkheadApp>) -> Vec<String> {
    h.state()
        .slots
        .iter()
        .map(|s| s.backend.info().name.clone())
        .collect()
}

/// Runs frames until `done` holds (bounded).
fn until(h: &mut Harness<'_, BulkheadApp>, what: &str, done: impl Fn(&BulkheadApp) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done(h.state()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            names(h)
        );
        h.run_steps(1);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn running(app: &BulkheadApp, name: &str) -> bool {
    app.slots
        .iter()
        .any(|s| s.backend.info().name == name && s.backend.state() == PartitionState::Running)
}

#[test]
fn the_launchers_disposable_button_starts_one_in_its_own_slot_that_goes_when_it_stops() {
    let binary = bulkhead_supervisor::launch::vmm_binary();
    assert!(
        binary.is_file(),
        "{} missing: build bulkhead-vmm first",
        binary.display()
    );
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("disposable_app-home");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/policy");
    std::env::set_var("HOME", &root);
    std::env::set_var("XDG_CACHE_HOME", root.join("cache"));
    std::env::set_var("XDG_DATA_HOME", root.join("data"));
    std::env::set_var("XDG_CONFIG_HOME", root.join("config"));
    std::env::set_var("BULKHEAD_POLICY_DIR", &policy);

    let backends = supervised_backends(&policy, Engine::TestCard);
    let mut app = BulkheadApp::new(backends.list);
    app.source = backends.source;
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .wgpu()
        .build_ui_state(|ui, app: &mut BulkheadApp| app.frame(ui), app);
    h.run_steps(2);
    let before = names(&h);
    let work = before
        .iter()
        .position(|n| n == "work")
        .expect("work is configured");
    let buttons = h.get_all_by_label("Disposable").count();
    assert_eq!(buttons, before.len(), "one button per configured partition");

    h.get_all_by_label("Disposable").nth(work).unwrap().click();
    until(&mut h, "disp1 running", |a| running(a, "disp1"));
    let i = names(&h).iter().position(|n| n == "disp1").unwrap();
    assert_eq!(
        h.state().focused(),
        Some(i),
        "the new disposable is focused"
    );
    assert!(h.state().slots[i].backend.is_disposable());
    assert_eq!(h.state().slots[i].backend.info().kind, "disposable of work");
    // A disposable offers no disposable of itself.
    assert_eq!(h.get_all_by_label("Disposable").count(), before.len());

    // The second comes from the first one's snapshot.
    until(&mut h, "disp1's snapshot", |_| {
        std::fs::read_dir(
            Path::new(&std::env::var("XDG_CACHE_HOME").unwrap()).join("bulkhead/disposables"),
        )
        .map(|d| d.flatten().any(|e| e.path().join("state").is_file()))
        .unwrap_or(false)
    });
    h.get_all_by_label("Disposable").nth(work).unwrap().click();
    until(&mut h, "disp2 running", |a| running(a, "disp2"));

    // Stopped, disp1 is gone from the window; disp2 runs on and keeps its focus.
    let i = names(&h).iter().position(|n| n == "disp1").unwrap();
    h.state_mut().apply(Action::Stop(i));
    until(&mut h, "disp1 gone", |a| {
        !a.slots.iter().any(|s| s.backend.info().name == "disp1")
    });
    assert!(running(h.state(), "disp2"), "{:?}", names(&h));
    let j = names(&h).iter().position(|n| n == "disp2").unwrap();
    assert_eq!(
        h.state().focused(),
        Some(j),
        "focus follows disp2 to its new index"
    );
    let mut expected = before.clone();
    expected.push("disp2".into());
    assert_eq!(names(&h), expected);

    let i = names(&h).iter().position(|n| n == "disp2").unwrap();
    h.state_mut().apply(Action::Stop(i));
    until(&mut h, "disp2 gone", |a| a.slots.len() == before.len());
}
