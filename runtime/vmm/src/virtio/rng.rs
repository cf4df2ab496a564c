//! virtio-rng (virtio 1.2, section 5.4): the guest's entropy source, so that
//! nothing in the guest (getrandom, the kernel's CRNG) ever waits for randomness.

use std::io::{self, Write};
use std::os::fd::AsRawFd;

use virtio_queue::{Queue, QueueT, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::worker::{Handler, Registry, Worker};
use super::{
    ActivateError, Activation, Interrupt, VirtioDevice, INT_USED_RING, VIRTIO_F_VERSION_1,
};
use crate::ratelimit::Limited;

pub const DEVICE_TYPE: u32 = 4;
const QUEUE_SIZES: &[u16] = &[256];
/// The most entropy handed out per request: the guest asks for small amounts,
/// and a bound keeps one huge descriptor from stalling the worker.
const MAX_PER_REQUEST: usize = 64 * 1024;

#[derive(Default)]
pub struct Rng {
    worker: Option<Worker>,
}

impl Rng {
    pub fn new() -> Self {
        Self::default()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }
    fn read_config(&self, _: u64, _: &mut [u8]) {}
    fn write_config(&mut self, _: u64, _: &[u8]) {}

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let interrupt = a.interrupt.clone();
        let handler = self.handler(a)?;
        let worker = Worker::spawn(super::device_name(DEVICE_TYPE), handler, interrupt)
            .map_err(|e| ActivateError(format!("cannot start the virtio-rng thread: {e}")))?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }
}

impl Rng {
    /// What `activate` runs on the device's thread.
    fn handler(&mut self, a: Activation) -> Result<RngHandler, ActivateError> {
        let (Some(queue), Some(event)) = (
            a.queues.into_iter().next(),
            a.queue_events.into_iter().next(),
        ) else {
            return Err(ActivateError("virtio-rng needs its request queue".into()));
        };
        Ok(RngHandler::new(a.mem, queue, event, a.interrupt))
    }
}

#[cfg(feature = "fuzzing")]
impl crate::fuzzing::Serve for Rng {
    fn serve(&mut self, a: Activation) -> Result<Box<dyn Handler>, ActivateError> {
        Ok(Box::new(self.handler(a)?))
    }
}

struct RngHandler {
    mem: GuestMemoryMmap,
    queue: Queue,
    event: EventFd,
    interrupt: Interrupt,
    /// Reused for every request, so serving allocates nothing.
    buf: Vec<u8>,
    bad: Limited<&'static str>,
}

impl RngHandler {
    fn new(mem: GuestMemoryMmap, queue: Queue, event: EventFd, interrupt: Interrupt) -> Self {
        RngHandler {
            mem,
            queue,
            event,
            interrupt,
            buf: vec![0u8; MAX_PER_REQUEST],
            bad: Limited::new("virtio-rng"),
        }
    }

    /// Fills every available request; returns whether any was used.
    fn serve(&mut self) -> Result<bool, String> {
        let mut used_any = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let written = match Writer::new(&self.mem, chain) {
                Ok(mut w) => {
                    let n = w.available_bytes().min(MAX_PER_REQUEST);
                    fill_random(&mut self.buf[..n]).map_err(|e| format!("getrandom: {e}"))?;
                    // A chain into memory that vanished is the driver's bug: give
                    // back what was written and go on.
                    w.write_all(&self.buf[..n]).map(|()| n).unwrap_or(0)
                }
                Err(e) => {
                    self.bad.note("dropping a request it cannot write to", e);
                    0
                }
            };
            self.queue
                .add_used(&self.mem, head, written as u32)
                .map_err(|e| format!("cannot return a used buffer: {e}"))?;
            used_any = true;
        }
        Ok(used_any)
    }
}

impl Handler for RngHandler {
    fn init(&mut self, r: &Registry) -> io::Result<()> {
        r.add(self.event.as_raw_fd(), 0, EventSet::IN)
    }

    fn ready(&mut self, _: &Registry, _: u64, _: EventSet) -> Result<(), String> {
        let _ = self.event.read();
        if self.serve()? {
            self.interrupt
                .signal(INT_USED_RING)
                .map_err(|e| format!("cannot interrupt the guest: {e}"))?;
        }
        Ok(())
    }
}

fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`,
        // which getrandom only writes into.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            done += n as usize;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const F_WRITE: u16 = 2;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn handler<'a>(
        m: &'a GuestMemoryMmap,
        descs: &[RawDescriptor],
    ) -> (RngHandler, MockSplitQueue<'a, GuestMemoryMmap>) {
        let vq = MockSplitQueue::new(m, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let queue: Queue = vq.create_queue().unwrap();
        let h = RngHandler::new(
            m.clone(),
            queue,
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
        );
        (h, vq)
    }

    #[test]
    fn requests_are_filled_with_random_bytes() {
        let m = mem();
        let descs = [RawDescriptor::from(SplitDescriptor::new(
            0x8000, 64, F_WRITE, 0,
        ))];
        let (mut h, vq) = handler(&m, &descs);
        assert!(h.serve().unwrap());
        let used = vq.used();
        assert_eq!(used.idx().load(), 1);
        assert_eq!(used.ring().ref_at(0).unwrap().load().len(), 64);
        let mut out = [0u8; 64];
        vm_memory::Bytes::read_slice(&m, &mut out, GuestAddress(0x8000)).unwrap();
        assert_ne!(out, [0u8; 64], "64 random bytes are not all zero");
    }

    #[test]
    fn a_read_only_or_out_of_memory_request_is_returned_empty() {
        let m = mem();
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x8000, 64, 0, 0)),
            RawDescriptor::from(SplitDescriptor::new(0xffff_0000, 64, F_WRITE, 0)),
        ];
        let (mut h, vq) = handler(&m, &descs);
        assert!(h.serve().unwrap());
        let used = vq.used();
        assert_eq!(used.idx().load(), 2);
        assert_eq!(used.ring().ref_at(0).unwrap().load().len(), 0);
        assert_eq!(used.ring().ref_at(1).unwrap().load().len(), 0);
    }
}
