//! The 16550 UART on COM1, backed by `vm-superio`, writing to a file, stdout or a pipe,
//! and watching the output for a marker (used to take a screenshot at a known moment).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{mpsc, Arc, Mutex};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;

pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;

/// Raises the serial IRQ through an irqfd.
pub struct IrqTrigger(pub Arc<EventFd>);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where serial output goes, plus an optional marker watcher.
pub struct SerialSink {
    out: Box<dyn Write + Send>,
    watch: Option<MarkerWatch>,
    /// Extra copies of the byte stream (e.g. to the control socket).
    taps: Vec<SerialTap>,
}

/// A bounded copy of the serial byte stream for a consumer that drains it now and then
/// (the partition loop, forwarding it to the supervisor once per frame). The guest
/// writes as fast as it likes and the UART never pushes back, so when the consumer falls
/// behind by more than the budget the *oldest* bytes are dropped and counted: memory stays
/// at the budget, and what survives is the most recent output (a panic message, the
/// prompt), as the supervisor's own console buffer keeps the newest bytes. Dropping the
/// newest instead would freeze the view at the moment the flood began.
#[derive(Clone)]
pub struct SerialTap {
    inner: Arc<Mutex<TapBuffer>>,
}

struct TapBuffer {
    bytes: VecDeque<u8>,
    budget: usize,
    dropped: u64,
}

impl SerialTap {
    /// A tap that holds at most `budget` bytes (at least 1).
    pub fn new(budget: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(TapBuffer {
                bytes: VecDeque::new(),
                budget: budget.max(1),
                dropped: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TapBuffer> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, buf: &[u8]) {
        let mut tap = self.lock();
        let budget = tap.budget;
        // Of `buf` itself only the last `budget` bytes can survive.
        let skip = buf.len().saturating_sub(budget);
        let keep = &buf[skip..];
        let overflow = (tap.bytes.len() + keep.len()).saturating_sub(budget);
        tap.bytes.drain(..overflow);
        tap.bytes.extend(keep);
        tap.dropped = tap.dropped.saturating_add((skip + overflow) as u64);
    }

    /// Everything held, oldest first, and how many bytes were dropped since the last take.
    pub fn take(&self) -> (Vec<u8>, u64) {
        let mut tap = self.lock();
        let bytes = tap.bytes.drain(..).collect();
        (bytes, std::mem::take(&mut tap.dropped))
    }

    /// Bytes held now (never more than the budget).
    pub fn len(&self) -> usize {
        self.lock().bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory reserved for held bytes.
    pub fn capacity(&self) -> usize {
        self.lock().bytes.capacity()
    }

    /// Whether anyone but the sink still holds this tap.
    fn has_reader(&self) -> bool {
        Arc::strong_count(&self.inner) > 1
    }
}

struct MarkerWatch {
    marker: Vec<u8>,
    recent: Vec<u8>,
    notify: mpsc::Sender<()>,
}

impl MarkerWatch {
    /// Returns true when the byte completes the marker.
    fn push(&mut self, byte: u8) -> bool {
        self.recent.push(byte);
        if self.recent.len() > self.marker.len() {
            self.recent.remove(0);
        }
        self.recent == self.marker
    }
}

impl SerialSink {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            watch: None,
            taps: Vec::new(),
        }
    }

    /// Sends `()` on `notify` each time `marker` appears in the output.
    pub fn watch_marker(&mut self, marker: &str, notify: mpsc::Sender<()>) {
        if !marker.is_empty() {
            self.watch = Some(MarkerWatch {
                marker: marker.as_bytes().to_vec(),
                recent: Vec::new(),
                notify,
            });
        }
    }

    /// Copies every byte into `tap` too (bounded; see [`SerialTap`]).
    pub fn add_tap(&mut self, tap: SerialTap) {
        self.taps.push(tap);
    }
}

impl Write for SerialSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A broken sink (closed pipe, full disk) must not stop the guest.
        let _ = self.out.write_all(buf);
        if let Some(w) = &mut self.watch {
            for b in buf {
                if w.push(*b) {
                    let _ = w.notify.send(());
                }
            }
        }
        self.taps.retain(SerialTap::has_reader);
        for tap in &self.taps {
            tap.push(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.out.flush();
        Ok(())
    }
}

pub struct SerialConsole {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, SerialSink>,
}

impl SerialConsole {
    pub fn new(irq: Arc<EventFd>, sink: SerialSink) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq), sink),
        }
    }

    /// Queues bytes for the guest to read (host keyboard on the serial console).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

/// vm-superio's receive FIFO size (private there).
const UART_FIFO: usize = 0x40;

/// vm-superio's `SerialState`, which has no serde.
#[derive(serde::Serialize, serde::Deserialize)]
struct UartState {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

impl BusDevice for SerialConsole {
    fn save_state(&self) -> Result<Vec<u8>, crate::devices::persist::PersistError> {
        let s = self.uart.state();
        crate::devices::persist::encode(&UartState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        })
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::devices::persist::PersistError> {
        let s: UartState = crate::devices::persist::decode(state)?;
        // Checked here: `from_state` would fail after taking the sink.
        if s.in_buffer.len() > UART_FIFO {
            return Err(crate::devices::persist::PersistError::Mismatch(format!(
                "{} bytes in the UART's receive FIFO",
                s.in_buffer.len()
            )));
        }
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        };
        // The sink and the IRQ line stay this partition's; only the registers come back.
        let irq = self.uart.interrupt_evt().0.clone();
        let placeholder = Serial::new(
            IrqTrigger(irq.clone()),
            SerialSink::new(Box::new(io::sink())),
        );
        let old = std::mem::replace(&mut self.uart, placeholder);
        let sink = old.into_writer();
        self.uart = Serial::from_state(&state, IrqTrigger(irq), vm_superio::serial::NoEvents, sink)
            .map_err(|e| crate::devices::persist::PersistError::Mismatch(format!("{e:?}")))?;
        Ok(())
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(off), [first, rest @ ..]) = (u8::try_from(offset), &mut *data) {
            *first = self.uart.read(off);
            rest.fill(0);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), Some(value)) = (u8::try_from(offset), data.first()) {
            if let Err(e) = self.uart.write(off, *value) {
                crate::limited!(warn, "serial write at offset {off}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_thr_reach_the_sink_and_the_marker_fires_once() {
        let out = Shared::default();
        let mut sink = SerialSink::new(Box::new(out.clone()));
        let (tx, rx) = mpsc::channel();
        sink.watch_marker("READY", tx);
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut com = SerialConsole::new(irq, sink);
        for b in b"not RE yet READY!" {
            com.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"not RE yet READY!");
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_guest_flooding_serial_while_nobody_drains_keeps_memory_bounded() {
        const BUDGET: usize = 4096;
        let tap = SerialTap::new(BUDGET);
        let mut sink = SerialSink::new(Box::new(io::sink()));
        sink.add_tap(tap.clone());
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut com = SerialConsole::new(irq, sink);
        let flood: Vec<u8> = (0..100 * BUDGET).map(|i| (i % 251) as u8).collect();
        for b in &flood {
            com.write(0, &[*b]);
            assert!(tap.len() <= BUDGET);
        }
        assert!(
            tap.capacity() <= 2 * BUDGET,
            "reserved {} bytes for a {BUDGET}-byte budget",
            tap.capacity()
        );
        let (kept, dropped) = tap.take();
        assert_eq!(
            kept,
            flood[flood.len() - BUDGET..],
            "the newest bytes survive"
        );
        assert_eq!(dropped, (flood.len() - BUDGET) as u64);
        assert!(tap.is_empty());

        // Drained in time, nothing is lost and the count starts again.
        com.write(0, b"o");
        com.write(0, b"k");
        assert_eq!(tap.take(), (b"ok".to_vec(), 0));
    }

    #[test]
    fn a_write_larger_than_the_budget_keeps_its_tail() {
        let tap = SerialTap::new(4);
        tap.push(b"ab");
        tap.push(b"0123456789");
        assert_eq!(tap.take(), (b"6789".to_vec(), 8));
    }

    #[test]
    fn odd_offsets_and_empty_accesses_are_harmless() {
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut com = SerialConsole::new(irq, SerialSink::new(Box::new(io::sink())));
        com.write(0x1234, &[1]);
        com.write(0, &[]);
        let mut d = [0u8; 4];
        com.read(0x1_0000, &mut d);
        assert_eq!(d, [0xff; 4]);
        let mut empty = [];
        com.read(5, &mut empty);
    }
}
