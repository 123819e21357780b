use super::*;
use crate::devices::virtio::mmio::reg;
use crate::devices::virtio::test_utils::TestDriver;
use vm_memory::{Bytes, GuestAddress};

const KBD: InputDevice = InputDevice::Keyboard;
const TAB: InputDevice = InputDevice::Tablet;

fn select(d: &TestDriver<VirtioInput>, sel: u8, subsel: u8) -> Vec<u8> {
    d.write_bytes(reg::CONFIG + cfg::SELECT, &[sel]);
    d.write_bytes(reg::CONFIG + cfg::SUBSEL, &[subsel]);
    let size = d.read_bytes(reg::CONFIG + cfg::SIZE, 1)[0] as usize;
    // Byte-wise, as virtio_cread_bytes does.
    (0..size)
        .map(|i| d.read_bytes(reg::CONFIG + cfg::PAYLOAD as u64 + i as u64, 1)[0])
        .collect()
}

fn bit(map: &[u8], n: u16) -> bool {
    map.get(usize::from(n / 8))
        .is_some_and(|b| b & (1 << (n % 8)) != 0)
}

fn running(device: VirtioInput) -> (TestDriver<VirtioInput>, InputEventSender) {
    let mut d = TestDriver::new(device);
    d.init();
    let sender = InputEventSender::new(d.dev.clone());
    (d, sender)
}

/// Posts `n` event buffers of 8 bytes, as virtinput_fill_evt does.
fn post_event_buffers(d: &mut TestDriver<VirtioInput>, n: usize) -> Vec<(u16, u64)> {
    let bufs: Vec<(u16, u64)> = (0..n)
        .map(|_| {
            let a = d.alloc(8, 0xee);
            (d.add_chain(EVENT_QUEUE, &[(a, 8, true)]), a)
        })
        .collect();
    d.notify(EVENT_QUEUE as u32);
    bufs
}

fn events_in(d: &TestDriver<VirtioInput>, bufs: &[(u16, u64)]) -> Vec<InputEvent> {
    let device = d.dev.lock().unwrap().device().kind().device();
    bufs.iter()
        .map(|&(_, a)| from_le_bytes(device, d.read_mem(a, 8).try_into().unwrap()))
        .collect()
}

#[test]
fn keyboard_config_describes_a_keyboard_with_repeat() {
    let d = TestDriver::new(VirtioInput::keyboard());
    assert_eq!(select(&d, cfg::ID_NAME, 0), b"Bulkhead virtio keyboard");
    assert_eq!(select(&d, cfg::ID_SERIAL, 0), b"bulkhead-kbd0");
    let ids = select(&d, cfg::ID_DEVIDS, 0);
    assert_eq!(ids.len(), 8);
    assert_eq!(u16::from_le_bytes([ids[0], ids[1]]), evdev::BUS_VIRTUAL);
    let keys = select(&d, cfg::EV_BITS, evdev::EV_KEY as u8);
    assert_eq!(keys.len(), 32);
    assert!(!bit(&keys, 0), "KEY_RESERVED");
    assert!((1..=255).all(|k| bit(&keys, k)));
    assert!(!select(&d, cfg::EV_BITS, evdev::EV_REP as u8).is_empty());
    assert!(select(&d, cfg::EV_BITS, evdev::EV_ABS as u8).is_empty());
    assert!(select(&d, cfg::EV_BITS, evdev::EV_REL as u8).is_empty());
    assert!(select(&d, cfg::ABS_INFO, 0).is_empty());
    assert!(select(&d, cfg::PROP_BITS, 0).is_empty());
}

#[test]
fn tablet_config_matches_the_framebuffer_size() {
    let d = TestDriver::new(VirtioInput::tablet(1024, 768));
    assert_eq!(select(&d, cfg::ID_NAME, 0), b"Bulkhead virtio tablet");
    let keys = select(&d, cfg::EV_BITS, evdev::EV_KEY as u8);
    for b in [evdev::BTN_LEFT, evdev::BTN_RIGHT, evdev::BTN_MIDDLE] {
        assert!(bit(&keys, b));
    }
    assert!(!bit(&keys, 30), "no keyboard keys on the tablet");
    assert!(bit(
        &select(&d, cfg::EV_BITS, evdev::EV_REL as u8),
        evdev::REL_WHEEL
    ));
    let abs = select(&d, cfg::EV_BITS, evdev::EV_ABS as u8);
    assert!(bit(&abs, evdev::ABS_X) && bit(&abs, evdev::ABS_Y));
    let info = |axis: u16| -> Vec<u32> {
        select(&d, cfg::ABS_INFO, axis as u8)
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    assert_eq!(info(evdev::ABS_X), vec![0, 1023, 0, 0, 0]);
    assert_eq!(info(evdev::ABS_Y), vec![0, 767, 0, 0, 0]);
    assert!(info(5).is_empty());
}

#[test]
fn unknown_selects_and_stray_config_accesses_are_harmless() {
    let d = TestDriver::new(VirtioInput::keyboard());
    assert!(select(&d, 0x7f, 0x7f).is_empty());
    assert!(select(&d, cfg::ID_SERIAL, 3).is_empty());
    // size and payload are read-only; writes past the struct go nowhere.
    select(&d, cfg::ID_NAME, 0);
    d.write_bytes(reg::CONFIG + cfg::SIZE, &[99]);
    d.write_bytes(reg::CONFIG + 8, &[b'X'; 8]);
    d.write_bytes(reg::CONFIG + 0x200, &[1; 4]);
    assert_eq!(select(&d, cfg::ID_NAME, 0), b"Bulkhead virtio keyboard");
    assert_eq!(d.read_bytes(reg::CONFIG + 136, 4), vec![0; 4]);
    // A 16-bit write sets select and subsel together.
    d.write_bytes(reg::CONFIG, &[cfg::EV_BITS, evdev::EV_KEY as u8]);
    assert_eq!(d.read_bytes(reg::CONFIG + cfg::SIZE, 1), vec![32]);
}

#[test]
fn key_press_arrives_as_key_and_syn_events() {
    let (mut d, sender) = running(VirtioInput::keyboard());
    let bufs = post_event_buffers(&mut d, 4);
    assert!(sender.is_ready());
    sender.key(30, true).unwrap(); // KEY_A
    sender.key(30, false).unwrap();
    let used = d.take_used(EVENT_QUEUE);
    assert_eq!(
        used,
        bufs.iter()
            .map(|&(h, _)| (u32::from(h), 8))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        events_in(&d, &bufs),
        vec![
            InputEvent::new(KBD, evdev::EV_KEY, 30, 1),
            InputEvent::syn(KBD),
            InputEvent::new(KBD, evdev::EV_KEY, 30, 0),
            InputEvent::syn(KBD),
        ]
    );
    assert!(d.take_irq());
}

#[test]
fn events_wait_for_buffers_and_keep_their_order() {
    let (mut d, sender) = running(VirtioInput::keyboard());
    for code in [16u16, 17, 18] {
        sender.key(code, true).unwrap();
    }
    assert!(d.take_used(EVENT_QUEUE).is_empty());
    let first = post_event_buffers(&mut d, 2);
    let rest = post_event_buffers(&mut d, 4);
    assert_eq!(d.take_used(EVENT_QUEUE).len(), 6);
    let mut got = events_in(&d, &first);
    got.extend(events_in(&d, &rest));
    let want: Vec<InputEvent> = [16u16, 17, 18]
        .iter()
        .flat_map(|&c| {
            [
                InputEvent::new(KBD, evdev::EV_KEY, c, 1),
                InputEvent::syn(KBD),
            ]
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn tablet_moves_clicks_and_scrolls() {
    let (mut d, sender) = running(VirtioInput::tablet(800, 600));
    let bufs = post_event_buffers(&mut d, 9);
    sender.move_to(5000, 10).unwrap();
    sender.key(evdev::BTN_LEFT, true).unwrap();
    sender.wheel(-2).unwrap();
    sender.key(evdev::BTN_LEFT, false).unwrap();
    assert_eq!(
        events_in(&d, &bufs),
        vec![
            InputEvent::new(TAB, evdev::EV_ABS, evdev::ABS_X, 799),
            InputEvent::new(TAB, evdev::EV_ABS, evdev::ABS_Y, 10),
            InputEvent::syn(TAB),
            InputEvent::new(TAB, evdev::EV_KEY, evdev::BTN_LEFT, 1),
            InputEvent::syn(TAB),
            InputEvent::new(TAB, evdev::EV_REL, evdev::REL_WHEEL, -2),
            InputEvent::syn(TAB),
            InputEvent::new(TAB, evdev::EV_KEY, evdev::BTN_LEFT, 0),
            InputEvent::syn(TAB),
        ]
    );
}

#[test]
fn events_the_device_does_not_declare_are_refused_whole() {
    let (mut d, kbd) = running(VirtioInput::keyboard());
    let bufs = post_event_buffers(&mut d, 4);
    let err = kbd
        .send(&[
            InputEvent::new(KBD, evdev::EV_KEY, 30, 1),
            InputEvent::new(KBD, evdev::EV_ABS, evdev::ABS_X, 1),
        ])
        .unwrap_err();
    assert!(
        matches!(err, InputError::Unsupported { ev_type: 3, .. }),
        "{err}"
    );
    assert!(kbd.key(256, true).is_err(), "past the declared key range");
    assert!(kbd.key(0, true).is_err(), "KEY_RESERVED");
    assert!(kbd.move_to(1, 1).is_err());
    assert!(
        d.take_used(EVENT_QUEUE).is_empty(),
        "nothing of a bad batch sent"
    );
    drop(bufs);

    let (_d, tablet) = running(VirtioInput::tablet(100, 100));
    assert!(tablet.key(30, true).is_err());
    let off_screen = InputEvent::new(TAB, evdev::EV_ABS, evdev::ABS_X, 100);
    assert!(tablet.send(&[off_screen]).is_err());
    let negative = InputEvent::new(TAB, evdev::EV_ABS, evdev::ABS_Y, -1);
    assert!(tablet.send(&[negative]).is_err());
}

#[test]
fn events_before_the_driver_runs_are_refused() {
    let d = TestDriver::new(VirtioInput::keyboard());
    let sender = InputEventSender::new(d.dev.clone());
    assert!(!sender.is_ready());
    assert_eq!(sender.key(30, true), Err(InputError::NotReady));
}

#[test]
fn backlog_is_bounded() {
    let (_d, sender) = running(VirtioInput::keyboard());
    let batch = [
        InputEvent::new(KBD, evdev::EV_KEY, 30, 1),
        InputEvent::syn(KBD),
    ];
    for _ in 0..MAX_PENDING_EVENTS / 2 {
        sender.send(&batch).unwrap();
    }
    assert_eq!(
        sender.send(&batch),
        Err(InputError::Backlog {
            pending: MAX_PENDING_EVENTS,
            batch: 2
        })
    );
}

#[test]
fn event_buffer_smaller_than_an_event_breaks_the_device() {
    let (mut d, sender) = running(VirtioInput::keyboard());
    let a = d.alloc(4, 0);
    d.add_chain(EVENT_QUEUE, &[(a, 4, true)]);
    d.notify(EVENT_QUEUE as u32);
    sender.key(30, true).unwrap();
    assert!(d.needs_reset());
    assert!(d.take_used(EVENT_QUEUE).is_empty());
    assert_eq!(sender.key(30, false), Err(InputError::NotReady));
}

#[test]
fn status_queue_buffers_are_acknowledged() {
    let (mut d, _sender) = running(VirtioInput::keyboard());
    let led = d.alloc(8, 0);
    d.mem
        .write_slice(
            &to_le_bytes(&InputEvent::new(KBD, 0x11, 1, 1)),
            GuestAddress(led),
        )
        .unwrap();
    let head = d.add_chain(STATUS_QUEUE, &[(led, 8, false)]);
    d.notify(STATUS_QUEUE as u32);
    assert_eq!(d.take_used(STATUS_QUEUE), vec![(u32::from(head), 0)]);
}

#[test]
fn reset_forgets_pending_events() {
    let (mut d, sender) = running(VirtioInput::keyboard());
    sender.key(30, true).unwrap();
    d.init();
    let bufs = post_event_buffers(&mut d, 2);
    assert!(d.take_used(EVENT_QUEUE).is_empty());
    drop(bufs);
}

#[test]
fn events_for_the_other_device_are_refused() {
    let (mut d, kbd) = running(VirtioInput::keyboard());
    let bufs = post_event_buffers(&mut d, 2);
    let for_tablet = [
        InputEvent::new(TAB, evdev::EV_KEY, 30, 1),
        InputEvent::syn(TAB),
    ];
    assert!(matches!(
        kbd.send(&for_tablet),
        Err(InputError::Unsupported { .. })
    ));
    assert!(d.take_used(EVENT_QUEUE).is_empty());
    drop(bufs);
}
