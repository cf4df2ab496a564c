//! A device's I/O thread: one epoll loop per activated device.
//!
//! The vCPU threads never process queues. A driver's notification arrives on an
//! eventfd (KVM's ioeventfd), host-side I/O on sockets and taps; each device's
//! [`Handler`] serves them on its own named thread. Dropping the [`Worker`]
//! stops the thread and waits for it, which is how a reset or the VM's end
//! takes the queues back.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::Interrupt;

/// Token reserved for the worker's own stop eventfd.
const STOP: u64 = u64::MAX;

/// The fds a handler watches, with the token each one reports as.
pub struct Registry<'a> {
    epoll: &'a Epoll,
}

impl<'a> Registry<'a> {
    /// A registry on `epoll`, for driving a handler without a worker thread
    /// (the fuzz targets do, one event at a time).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn new(epoll: &'a Epoll) -> Self {
        Registry { epoll }
    }

    /// Watch `fd` for `events`, reporting `token`. `u64::MAX` is reserved.
    pub fn add(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        debug_assert_ne!(token, STOP);
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    /// Change what `fd` is watched for.
    pub fn modify(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
    }

    /// Stop watching `fd` (closing it does so too).
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

/// What a device does on its thread.
pub trait Handler: Send + 'static {
    /// Register the fds to watch; called once on the worker thread.
    fn init(&mut self, registry: &Registry) -> io::Result<()>;
    /// `token`'s fd is ready. An `Err` means the driver broke the protocol:
    /// the worker marks the device broken and stops serving it.
    fn ready(&mut self, registry: &Registry, token: u64, events: EventSet) -> Result<(), String>;
}

/// A running device thread; dropping it stops the thread.
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `handler` on a thread named `okvm-<device>`. Failures are
    /// reported through `interrupt` (the device is marked broken).
    pub fn spawn<H: Handler>(
        device: &'static str,
        mut handler: H,
        interrupt: Interrupt,
    ) -> io::Result<Worker> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        let thread = std::thread::Builder::new()
            .name(format!("okvm-{device}"))
            .spawn(move || {
                let registry = Registry { epoll: &epoll };
                if let Err(e) = handler.init(&registry) {
                    interrupt.fail(device, &format!("cannot start serving: {e}"));
                    return;
                }
                let mut events = vec![EpollEvent::default(); 64];
                loop {
                    let n = match epoll.wait(-1, &mut events) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            interrupt.fail(device, &format!("epoll: {e}"));
                            return;
                        }
                    };
                    for ev in &events[..n] {
                        if ev.data() == STOP {
                            return;
                        }
                        if let Err(why) = handler.ready(&registry, ev.data(), ev.event_set()) {
                            interrupt.fail(device, &why);
                            return;
                        }
                    }
                }
            })?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    struct Echo {
        evt: EventFd,
        seen: mpsc::Sender<u64>,
    }

    impl Handler for Echo {
        fn init(&mut self, r: &Registry) -> io::Result<()> {
            r.add(self.evt.as_raw_fd(), 7, EventSet::IN)
        }
        fn ready(&mut self, _: &Registry, token: u64, _: EventSet) -> Result<(), String> {
            let n = self.evt.read().map_err(|e| e.to_string())?;
            if n > 1 {
                return Err("too many".into());
            }
            let _ = self.seen.send(token);
            Ok(())
        }
    }

    fn irq() -> Interrupt {
        Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    #[test]
    fn events_reach_the_handler_and_drop_stops_the_thread() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (tx, rx) = mpsc::channel();
        let w = Worker::spawn(
            "test",
            Echo {
                evt: evt.try_clone().unwrap(),
                seen: tx,
            },
            irq(),
        )
        .unwrap();
        evt.write(1).unwrap();
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)), Ok(7));
        drop(w);
        assert!(rx.recv().is_err(), "the handler is gone with the thread");
    }

    #[test]
    fn a_handler_error_marks_the_device_broken() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (tx, _rx) = mpsc::channel();
        let interrupt = irq();
        let _w = Worker::spawn(
            "test",
            Echo {
                evt: evt.try_clone().unwrap(),
                seen: tx,
            },
            interrupt.clone(),
        )
        .unwrap();
        evt.write(5).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while interrupt.broken().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(interrupt.broken().as_deref(), Some("too many"));
        assert_ne!(
            interrupt.status.load(std::sync::atomic::Ordering::SeqCst) & super::super::INT_CONFIG,
            0
        );
    }
}
