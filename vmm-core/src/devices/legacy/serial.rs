//! The 16550 UART on COM1, backed by `vm-superio`, writing to a file, stdout or a pipe,
//! and watching the output for a marker (used to take a screenshot at a known moment).

use std::io::{self, Write};
use std::sync::{mpsc, Arc};

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
    taps: Vec<mpsc::Sender<Vec<u8>>>,
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

    pub fn add_tap(&mut self, tap: mpsc::Sender<Vec<u8>>) {
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
        self.taps.retain(|t| t.send(buf.to_vec()).is_ok());
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

impl BusDevice for SerialConsole {
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
