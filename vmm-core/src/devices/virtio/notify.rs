//! Queue notifications that do not stop the vCPU: KVM signals an eventfd (`KVM_IOEVENTFD`)
//! when the guest writes a queue's index to a window's QueueNotify register, and one
//! notifier thread processes the queue while the vCPU goes on running the guest.
//!
//! Without it every notification is a return from `KVM_RUN` to this process and the queue
//! is processed on the vCPU thread before the guest continues. That path stays: a window
//! whose eventfds KVM refused (or a queue index the guest made up) still exits to the MMIO
//! bus, which processes the queue exactly as before, so the eventfds are an optimisation
//! that can fail without changing what the guest sees.
//!
//! The thread runs under [`crate::sandbox::SeccompProfile::Notify`]: no ioctls at all.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use super::mmio::reg;
use crate::devices::{BusDevice, StopHandle};
use crate::vstate::vcpu::PauseGate;

/// One queue's eventfd and the transport it belongs to.
struct QueueEvent {
    evt: EventFd,
    device: Arc<Mutex<dyn BusDevice>>,
    queue: u32,
}

/// Every registered queue eventfd of a VM, before its thread starts.
#[derive(Default)]
pub struct QueueNotifier {
    events: Vec<QueueEvent>,
}

impl QueueNotifier {
    /// Adds `queue` of `device`, whose eventfd `evt` KVM now signals.
    pub fn add(&mut self, evt: EventFd, device: Arc<Mutex<dyn BusDevice>>, queue: u32) {
        self.events.push(QueueEvent { evt, device, queue });
    }

    /// Queue eventfds registered.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Marks every queue as notified, so the thread looks at each once when it starts: a
    /// restored guest may have notified a queue just before its snapshot was taken, and
    /// that notification is in no saved state. A queue with nothing new is a no-op.
    pub fn notify_all(&self) {
        for e in &self.events {
            // A full counter is still readable, which is all that matters here.
            let _ = e.evt.write(1);
        }
    }

    /// Starts the notifier thread, confined to `filter` before it processes anything.
    /// It ends when `stop` is requested. `handled` counts notifications it processed.
    pub fn start(
        self,
        stop: Arc<StopHandle>,
        gate: Arc<PauseGate>,
        filter: Option<crate::sandbox::SeccompProfile>,
        handled: Arc<AtomicU64>,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("virtio-notify".into())
            .spawn(move || {
                if let Some(profile) = filter {
                    if let Err(e) = crate::sandbox::install(profile) {
                        stop.request(crate::devices::StopReason::Crashed(format!(
                            "virtio notifier: seccomp filter not installed: {e}"
                        )));
                        return;
                    }
                }
                self.serve(&stop, &gate, &handled);
            })
    }

    fn serve(&self, stop: &StopHandle, gate: &PauseGate, handled: &AtomicU64) {
        let mut fds: Vec<libc::pollfd> = self
            .events
            .iter()
            .map(|e| e.evt.as_raw_fd())
            .chain(std::iter::once(stop.event().as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        while !stop.is_stopped() {
            // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()` pollfds;
            // poll writes only their `revents`. Every fd is an eventfd owned by `self` or
            // `stop`, both alive for the whole call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n <= 0 {
                continue; // EINTR (a kick signal) or nothing: look at the stop flag again.
            }
            for (event, pfd) in self.events.iter().zip(&fds) {
                if pfd.revents & libc::POLLIN == 0 {
                    continue;
                }
                // Reading resets the counter; several guest writes are one notification.
                if event.evt.read().is_err() {
                    continue;
                }
                gate.run_unpaused(stop, || {
                    // Counted first: whoever sees the queue's effect sees the count.
                    handled.fetch_add(1, Ordering::Relaxed);
                    event
                        .device
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .write(reg::QUEUE_NOTIFY, &event.queue.to_le_bytes());
                });
            }
            for pfd in &mut fds {
                pfd.revents = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Records every write it gets.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    struct Running {
        device: Arc<Mutex<Recorder>>,
        notifier_evts: Vec<EventFd>,
        stop: Arc<StopHandle>,
        gate: Arc<PauseGate>,
        handled: Arc<AtomicU64>,
        thread: JoinHandle<()>,
    }

    /// A notifier with `queues` queues of one recording device, started.
    fn start(queues: u32, before_start: impl FnOnce(&QueueNotifier)) -> Running {
        let device = Arc::new(Mutex::new(Recorder::default()));
        let mut notifier = QueueNotifier::default();
        let mut notifier_evts = Vec::new();
        for q in 0..queues {
            let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            notifier_evts.push(evt.try_clone().unwrap());
            notifier.add(evt, device.clone(), q);
        }
        before_start(&notifier);
        let stop = StopHandle::new().unwrap();
        let gate = Arc::new(PauseGate::default());
        let handled = Arc::new(AtomicU64::new(0));
        let thread = notifier
            .start(stop.clone(), gate.clone(), None, handled.clone())
            .unwrap();
        Running {
            device,
            notifier_evts,
            stop,
            gate,
            handled,
            thread,
        }
    }

    impl Running {
        fn handled(&self) -> u64 {
            self.handled.load(Ordering::Relaxed)
        }

        /// Stops the thread and waits for it to end.
        fn finish(self) {
            self.stop.request(crate::devices::StopReason::Stopped);
            self.thread.join().unwrap();
        }
    }

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn writes(r: &Running) -> Vec<(u64, Vec<u8>)> {
        r.device.lock().unwrap().writes.clone()
    }

    #[test]
    fn a_signalled_queue_reaches_its_device_as_a_queue_notify_write() {
        let r = start(2, |_| {});
        r.notifier_evts[1].write(1).unwrap();
        wait_for("the notification", || r.handled() == 1);
        assert_eq!(
            writes(&r),
            vec![(reg::QUEUE_NOTIFY, 1u32.to_le_bytes().to_vec())]
        );
        r.finish();
    }

    #[test]
    fn nothing_is_processed_while_paused_and_the_notification_is_kept_for_the_resume() {
        let r = start(1, |_| {});
        r.gate.set_paused(true);
        r.gate.quiesce();
        r.notifier_evts[0].write(1).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        assert!(writes(&r).is_empty(), "a paused partition's device changed");
        r.gate.set_paused(false);
        wait_for("the notification after the resume", || r.handled() == 1);
        r.finish();
    }

    #[test]
    fn notify_all_makes_every_queue_look_once_when_the_thread_starts() {
        let r = start(3, QueueNotifier::notify_all);
        wait_for("three notifications", || r.handled() == 3);
        let mut queues: Vec<u32> = writes(&r)
            .iter()
            .map(|(_, d)| u32::from_le_bytes(d[..4].try_into().unwrap()))
            .collect();
        queues.sort_unstable();
        assert_eq!(queues, vec![0, 1, 2]);
        r.finish();
    }

    #[test]
    fn a_stop_request_ends_the_thread_even_while_paused() {
        let r = start(1, |_| {});
        r.gate.set_paused(true);
        r.notifier_evts[0].write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        r.stop.request(crate::devices::StopReason::Stopped);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !r.thread.is_finished() {
            assert!(Instant::now() < deadline, "the notifier did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(writes(&r).is_empty());
        r.thread.join().unwrap();
    }
}
