//! virtio-input (virtio 1.2, 5.8): a keyboard or an absolute tablet fed by the partition's
//! control interface.
//!
//! The guest's `virtio_input` driver learns what the device is from the config space
//! (select/subsel registers, answered by [`config_payload`]) and then receives evdev
//! events (`type`, `code`, `value`) in buffers it posts on the event queue. The status
//! queue carries LED updates from the guest, which are acknowledged and dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::console::copy_config;
use super::mmio::VirtioMmioDevice;
use super::queue::{QueueError, Queues};
use super::{device_type, VirtioDevice};
use crate::evdev::{self, InputDevice, InputEvent};

pub const QUEUE_SIZE: u16 = 64;
pub const EVENT_QUEUE: usize = 0;
pub const STATUS_QUEUE: usize = 1;
/// Events waiting for guest buffers at most; beyond that a batch is refused.
pub const MAX_PENDING_EVENTS: usize = 1024;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];

/// The highest key code the keyboard declares (the PC keyboard range; `KEY_RESERVED`, 0,
/// is not a key).
pub const MAX_KEYBOARD_CODE: u16 = 255;

/// virtio_input_config_select values.
pub mod cfg {
    pub const UNSET: u8 = 0x00;
    pub const ID_NAME: u8 = 0x01;
    pub const ID_SERIAL: u8 = 0x02;
    pub const ID_DEVIDS: u8 = 0x03;
    pub const PROP_BITS: u8 = 0x10;
    pub const EV_BITS: u8 = 0x11;
    pub const ABS_INFO: u8 = 0x12;
    /// Offsets in struct virtio_input_config.
    pub const SELECT: u64 = 0;
    pub const SUBSEL: u64 = 1;
    pub const SIZE: u64 = 2;
    pub const PAYLOAD: usize = 8;
    pub const LEN: usize = PAYLOAD + 128;
}

/// Product ids in ID_DEVIDS (vendor is [`VENDOR_ID`]).
pub const VENDOR_ID: u16 = 0x4248;
pub const PRODUCT_KEYBOARD: u16 = 1;
pub const PRODUCT_TABLET: u16 = 2;

/// Which input device this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Keyboard,
    /// Absolute pointer; coordinates run over `0..width` and `0..height` (the framebuffer).
    Tablet {
        width: u32,
        height: u32,
    },
}

impl InputKind {
    /// How [`InputEvent`]s name this device.
    pub const fn device(self) -> InputDevice {
        match self {
            Self::Keyboard => InputDevice::Keyboard,
            Self::Tablet { .. } => InputDevice::Tablet,
        }
    }
}

/// `event` as the guest receives it (struct virtio_input_event, little-endian); the
/// device it is for does not travel.
fn to_le_bytes(event: &InputEvent) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..2].copy_from_slice(&event.ev_type.to_le_bytes());
    b[2..4].copy_from_slice(&event.code.to_le_bytes());
    b[4..8].copy_from_slice(&event.value.to_le_bytes());
    b
}

/// The inverse of [`to_le_bytes`], for an event read back from `device`'s queue.
#[cfg(test)]
fn from_le_bytes(device: InputDevice, b: [u8; 8]) -> InputEvent {
    InputEvent::new(
        device,
        u16::from_le_bytes([b[0], b[1]]),
        u16::from_le_bytes([b[2], b[3]]),
        i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
    )
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("{kind:?} does not support event type {ev_type:#x} code {code:#x} value {value}")]
    Unsupported {
        kind: InputKind,
        ev_type: u16,
        code: u16,
        value: i32,
    },
    #[error("the guest's virtio-input driver is not running; event dropped")]
    NotReady,
    #[error("{pending} events already wait for the guest (limit {MAX_PENDING_EVENTS}); batch of {batch} dropped")]
    Backlog { pending: usize, batch: usize },
}

pub struct VirtioInput {
    kind: InputKind,
    select: u8,
    subsel: u8,
    pending: VecDeque<InputEvent>,
}

impl VirtioInput {
    pub fn keyboard() -> Self {
        Self::new(InputKind::Keyboard)
    }

    /// An absolute tablet for a `width` x `height` framebuffer.
    pub fn tablet(width: u32, height: u32) -> Self {
        Self::new(InputKind::Tablet { width, height })
    }

    pub fn new(kind: InputKind) -> Self {
        Self {
            kind,
            select: cfg::UNSET,
            subsel: 0,
            pending: VecDeque::new(),
        }
    }

    pub fn kind(&self) -> InputKind {
        self.kind
    }

    /// Whether `event` is for this device and the device declares it (type, code and
    /// value range).
    pub fn supports(&self, event: &InputEvent) -> bool {
        use evdev::*;
        if event.device != self.kind.device() {
            return false;
        }
        match (self.kind, event.ev_type) {
            (_, EV_SYN) => event.code == SYN_REPORT,
            (InputKind::Keyboard, EV_KEY) => {
                (1..=MAX_KEYBOARD_CODE).contains(&event.code) && (0..=2).contains(&event.value)
            }
            (InputKind::Tablet { .. }, EV_KEY) => {
                matches!(event.code, BTN_LEFT | BTN_RIGHT | BTN_MIDDLE)
                    && (0..=1).contains(&event.value)
            }
            (InputKind::Tablet { .. }, EV_REL) => event.code == REL_WHEEL,
            (InputKind::Tablet { width, height }, EV_ABS) => {
                let max = match event.code {
                    ABS_X => width.saturating_sub(1),
                    ABS_Y => height.saturating_sub(1),
                    _ => return false,
                };
                u32::try_from(event.value).is_ok_and(|v| v <= max)
            }
            _ => false,
        }
    }

    fn abs_max(&self, axis: u16) -> Option<u32> {
        match (self.kind, axis) {
            (InputKind::Tablet { width, .. }, evdev::ABS_X) => Some(width.saturating_sub(1)),
            (InputKind::Tablet { height, .. }, evdev::ABS_Y) => Some(height.saturating_sub(1)),
            _ => None,
        }
    }

    /// The config payload for the current select/subsel (at most 128 bytes).
    pub fn config_payload(&self) -> Vec<u8> {
        use evdev::*;
        let keyboard = self.kind == InputKind::Keyboard;
        match self.select {
            cfg::ID_NAME => match self.kind {
                InputKind::Keyboard => b"Bulkhead virtio keyboard".to_vec(),
                InputKind::Tablet { .. } => b"Bulkhead virtio tablet".to_vec(),
            },
            cfg::ID_SERIAL if self.subsel == 0 => match self.kind {
                InputKind::Keyboard => b"bulkhead-kbd0".to_vec(),
                InputKind::Tablet { .. } => b"bulkhead-tablet0".to_vec(),
            },
            cfg::ID_DEVIDS => {
                let product = if keyboard {
                    PRODUCT_KEYBOARD
                } else {
                    PRODUCT_TABLET
                };
                [BUS_VIRTUAL, VENDOR_ID, product, 1]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect()
            }
            cfg::EV_BITS => match (self.kind, u16::from(self.subsel)) {
                (InputKind::Keyboard, EV_KEY) => bitmap(1..=MAX_KEYBOARD_CODE),
                // The Linux driver only checks that the EV_REP bitmap is non-empty.
                (InputKind::Keyboard, EV_REP) => vec![0],
                (InputKind::Tablet { .. }, EV_KEY) => {
                    bitmap([BTN_LEFT, BTN_RIGHT, BTN_MIDDLE].into_iter())
                }
                (InputKind::Tablet { .. }, EV_REL) => bitmap(std::iter::once(REL_WHEEL)),
                (InputKind::Tablet { .. }, EV_ABS) => bitmap([ABS_X, ABS_Y].into_iter()),
                _ => Vec::new(),
            },
            cfg::ABS_INFO => match self.abs_max(u16::from(self.subsel)) {
                // min, max, fuzz, flat, res
                Some(max) => [0, max, 0, 0, 0]
                    .iter()
                    .flat_map(|v: &u32| v.to_le_bytes())
                    .collect(),
                None => Vec::new(),
            },
            // ID_SERIAL subsel != 0, PROP_BITS (none), UNSET and unknown selects.
            _ => Vec::new(),
        }
    }

    fn config_bytes(&self) -> [u8; cfg::LEN] {
        let mut config = [0u8; cfg::LEN];
        let payload = self.config_payload();
        let n = payload.len().min(128);
        config[0] = self.select;
        config[1] = self.subsel;
        // n <= 128.
        config[2] = n as u8;
        config[cfg::PAYLOAD..cfg::PAYLOAD + n].copy_from_slice(&payload[..n]);
        config
    }

    /// Appends a batch of events, all or none.
    fn queue_events(&mut self, events: &[InputEvent]) -> Result<(), InputError> {
        if let Some(bad) = events.iter().find(|e| !self.supports(e)) {
            return Err(InputError::Unsupported {
                kind: self.kind,
                ev_type: bad.ev_type,
                code: bad.code,
                value: bad.value,
            });
        }
        if self.pending.len() + events.len() > MAX_PENDING_EVENTS {
            return Err(InputError::Backlog {
                pending: self.pending.len(),
                batch: events.len(),
            });
        }
        self.pending.extend(events.iter().copied());
        Ok(())
    }

    fn deliver_events(&mut self, queues: &mut Queues<'_>) -> Result<(), QueueError> {
        for _ in 0..queues.size(EVENT_QUEUE) {
            let Some(event) = self.pending.front().copied() else {
                break;
            };
            let Some(chain) = queues.pop(EVENT_QUEUE)? else {
                break;
            };
            if chain.writable_len() < 8 {
                return Err(QueueError::BufferTooSmall {
                    queue: EVENT_QUEUE,
                    head: chain.head,
                    have: chain.writable_len(),
                    need: 8,
                });
            }
            let written = queues.write_to_chain(EVENT_QUEUE, &chain, &to_le_bytes(&event))?;
            queues.add_used(EVENT_QUEUE, chain.head, written as u32)?;
            self.pending.pop_front();
        }
        Ok(())
    }

    fn ack_status(&mut self, queues: &mut Queues<'_>) -> Result<(), QueueError> {
        for _ in 0..queues.size(STATUS_QUEUE) {
            let Some(chain) = queues.pop(STATUS_QUEUE)? else {
                break;
            };
            queues.add_used(STATUS_QUEUE, chain.head, 0)?;
        }
        Ok(())
    }
}

/// A little-endian bitmap with the given bits set, as long as the highest bit needs.
fn bitmap(bits: impl Iterator<Item = u16>) -> Vec<u8> {
    let mut map = Vec::new();
    for bit in bits {
        let byte = usize::from(bit / 8);
        if map.len() <= byte {
            map.resize(byte + 1, 0);
        }
        map[byte] |= 1 << (bit % 8);
    }
    map
}

#[derive(serde::Serialize, serde::Deserialize)]
struct InputState {
    /// `Debug` of the kind, checked on restore (a tablet's size included).
    kind: String,
    select: u8,
    subsel: u8,
    pending: Vec<InputEvent>,
}

impl VirtioDevice for VirtioInput {
    fn save_state(&self) -> Result<Vec<u8>, crate::devices::persist::PersistError> {
        crate::devices::persist::encode(&InputState {
            kind: format!("{:?}", self.kind),
            select: self.select,
            subsel: self.subsel,
            pending: self.pending.iter().copied().collect(),
        })
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::devices::persist::PersistError> {
        let s: InputState = crate::devices::persist::decode(state)?;
        let here = format!("{:?}", self.kind);
        if s.kind != here {
            return Err(crate::devices::persist::PersistError::Mismatch(format!(
                "input device {} saved where this partition has {here}",
                s.kind
            )));
        }
        if s.pending.len() > MAX_PENDING_EVENTS {
            return Err(crate::devices::persist::PersistError::Mismatch(format!(
                "{} pending input events (at most {MAX_PENDING_EVENTS})",
                s.pending.len()
            )));
        }
        self.select = s.select;
        self.subsel = s.subsel;
        self.pending = s.pending.into();
        Ok(())
    }

    fn device_type(&self) -> u32 {
        device_type::INPUT
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        copy_config(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only select (0) and subsel (1) are writable; a wide write may cover both.
        for (i, &byte) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(cfg::SELECT) => self.select = byte,
                Some(cfg::SUBSEL) => self.subsel = byte,
                _ => {}
            }
        }
    }

    fn process_queue(&mut self, index: usize, queues: &mut Queues<'_>) -> Result<(), QueueError> {
        match index {
            EVENT_QUEUE => self.deliver_events(queues),
            STATUS_QUEUE => self.ack_status(queues),
            _ => Ok(()),
        }
    }

    fn reset(&mut self) {
        self.select = cfg::UNSET;
        self.subsel = 0;
        // Keys pressed for a previous driver instance must not arrive in the next one.
        self.pending.clear();
    }
}

/// The host side of a virtio-input device: the control interface pushes events here.
#[derive(Clone)]
pub struct InputEventSender {
    dev: Arc<Mutex<VirtioMmioDevice<VirtioInput>>>,
}

impl InputEventSender {
    /// `dev` is the same `Arc` the MMIO bus holds.
    pub fn new(dev: Arc<Mutex<VirtioMmioDevice<VirtioInput>>>) -> Self {
        Self { dev }
    }

    pub fn kind(&self) -> InputKind {
        self.lock().device().kind()
    }

    /// Whether the guest driver runs (events sent before that are refused).
    pub fn is_ready(&self) -> bool {
        self.lock().is_active()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VirtioMmioDevice<VirtioInput>> {
        self.dev.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a batch of events for this device (end it with [`InputEvent::syn`]); all or
    /// none are queued.
    pub fn send(&self, events: &[InputEvent]) -> Result<(), InputError> {
        let mut dev = self.lock();
        if !dev.is_active() {
            return Err(InputError::NotReady);
        }
        dev.device_mut().queue_events(events)?;
        dev.process_queue(EVENT_QUEUE);
        Ok(())
    }

    /// A key (keyboard: Linux key code 1..=255) or button (tablet: BTN_LEFT/RIGHT/MIDDLE).
    pub fn key(&self, code: u16, pressed: bool) -> Result<(), InputError> {
        let device = self.kind().device();
        self.send(&[
            InputEvent::new(device, evdev::EV_KEY, code, i32::from(pressed)),
            InputEvent::syn(device),
        ])
    }

    /// Moves the tablet pointer; coordinates past the framebuffer are clamped to its edge.
    pub fn move_to(&self, x: u32, y: u32) -> Result<(), InputError> {
        let kind = self.kind();
        let device = kind.device();
        let (max_x, max_y) = match kind {
            InputKind::Tablet { width, height } => {
                (width.saturating_sub(1), height.saturating_sub(1))
            }
            // Let `send` produce the Unsupported error for a keyboard.
            InputKind::Keyboard => (x, y),
        };
        let clamp = |v: u32, max: u32| i32::try_from(v.min(max)).unwrap_or(i32::MAX);
        self.send(&[
            InputEvent::new(device, evdev::EV_ABS, evdev::ABS_X, clamp(x, max_x)),
            InputEvent::new(device, evdev::EV_ABS, evdev::ABS_Y, clamp(y, max_y)),
            InputEvent::syn(device),
        ])
    }

    /// Scrolls the wheel by `clicks` (positive: away from the user).
    pub fn wheel(&self, clicks: i32) -> Result<(), InputError> {
        let device = self.kind().device();
        self.send(&[
            InputEvent::new(device, evdev::EV_REL, evdev::REL_WHEEL, clicks),
            InputEvent::syn(device),
        ])
    }
}

#[cfg(test)]
mod tests;
