//! virtio-fs (virtio 1.2, section 5.11) through a vhost-user frontend: the
//! queues are served by an external virtiofsd, which maps guest RAM from the
//! memfd we share. The VMM only relays the set-up and the interrupts.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::worker::{Handler, Registry, Worker};
use super::{
    ActivateError, Activation, Interrupt, VirtioDevice, INT_USED_RING, VIRTIO_F_VERSION_1,
};

pub const DEVICE_TYPE: u32 = 26;
/// Longest tag the config space holds (bytes, no terminator needed).
pub const MAX_TAG_LEN: usize = 36;
/// The high-priority queue and one request queue.
const QUEUE_SIZES: &[u16] = &[1024, 1024];
/// Bit 30: the backend speaks vhost-user protocol features. It is a vhost-user
/// bit, never offered to the guest.
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("virtio-fs tag {0:?} is empty or longer than {MAX_TAG_LEN} bytes")]
    BadTag(String),
    #[error("cannot connect to virtiofsd at {path}: {err}")]
    Connect { path: PathBuf, err: vhost::Error },
    #[error("virtiofsd at {path}: {what}: {err}")]
    Protocol {
        path: PathBuf,
        what: &'static str,
        err: vhost::Error,
    },
}

pub struct Fs {
    tag: String,
    socket: PathBuf,
    frontend: Frontend,
    /// What the backend offers, minus vhost-user's own bit.
    features: u64,
    protocol: bool,
    worker: Option<Worker>,
}

impl Fs {
    /// Connects to the virtiofsd listening on `socket` and learns what it offers.
    pub fn new(tag: &str, socket: &Path) -> Result<Self, Error> {
        if tag.is_empty() || tag.len() > MAX_TAG_LEN {
            return Err(Error::BadTag(tag.into()));
        }
        let proto = |what, err| Error::Protocol {
            path: socket.into(),
            what,
            err,
        };
        let mut frontend = connect(socket)?;
        frontend.set_owner().map_err(|e| proto("SET_OWNER", e))?;
        let offered = frontend
            .get_features()
            .map_err(|e| proto("GET_FEATURES", e))?;
        let protocol = offered & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        if protocol {
            // Nothing optional is needed; negotiating the empty set still turns on
            // SET_VRING_ENABLE semantics, which virtiofsd expects.
            frontend
                .get_protocol_features()
                .map_err(|e| proto("GET_PROTOCOL_FEATURES", e))?;
            frontend
                .set_protocol_features(VhostUserProtocolFeatures::empty())
                .map_err(|e| proto("SET_PROTOCOL_FEATURES", e))?;
        }
        Ok(Fs {
            tag: tag.into(),
            socket: socket.into(),
            frontend,
            features: (offered & !VHOST_USER_F_PROTOCOL_FEATURES) | VIRTIO_F_VERSION_1,
            protocol,
            worker: None,
        })
    }

    fn setup_backend(&mut self, a: &Activation) -> Result<Vec<EventFd>, String> {
        let e = |what: &'static str| move |err: vhost::Error| format!("virtiofsd: {what}: {err}");
        let mut features = a.features;
        if self.protocol {
            features |= VHOST_USER_F_PROTOCOL_FEATURES;
        }
        self.frontend
            .set_features(features)
            .map_err(e("SET_FEATURES"))?;
        let regions = a
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(e("describe guest memory"))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(e("SET_MEM_TABLE"))?;

        let mut calls = Vec::new();
        for (i, (q, kick)) in a.queues.iter().zip(&a.queue_events).enumerate() {
            if !q.ready() {
                continue;
            }
            let host = |addr: u64| {
                a.mem
                    .get_host_address(GuestAddress(addr))
                    .map(|p| p as u64)
                    .map_err(|err| format!("queue {i} lies outside guest memory: {err}"))
            };
            let config = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(q.desc_table())?,
                used_ring_addr: host(q.used_ring())?,
                avail_ring_addr: host(q.avail_ring())?,
                log_addr: None,
            };
            let call = EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|err| format!("cannot create an eventfd: {err}"))?;
            self.frontend
                .set_vring_num(i, q.size())
                .map_err(e("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(i, &config)
                .map_err(e("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(i, 0)
                .map_err(e("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(i, &call)
                .map_err(e("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, kick)
                .map_err(e("SET_VRING_KICK"))?;
            if self.protocol {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(e("SET_VRING_ENABLE"))?;
            }
            calls.push(call);
        }
        Ok(calls)
    }
}

/// Connects, retrying briefly while the backend is between bind and listen.
fn connect(socket: &Path) -> Result<Frontend, Error> {
    let mut tries = 0;
    loop {
        match Frontend::connect(socket, QUEUE_SIZES.len() as u64) {
            Ok(f) => return Ok(f),
            Err(vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::SocketConnect(e)))
                if e.kind() == io::ErrorKind::ConnectionRefused && tries < 100 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(err) => {
                return Err(Error::Connect {
                    path: socket.into(),
                    err,
                })
            }
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; MAX_TAG_LEN + 4];
        config[..self.tag.len()].copy_from_slice(self.tag.as_bytes());
        // num_request_queues
        config[MAX_TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        super::read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, _: u64, _: &[u8]) {}

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let calls = self.setup_backend(&a).map_err(ActivateError)?;
        let relay = CallRelay {
            calls,
            interrupt: a.interrupt.clone(),
        };
        let worker = Worker::spawn(super::device_name(DEVICE_TYPE), relay, a.interrupt)
            .map_err(|e| ActivateError(format!("cannot start the virtio-fs thread: {e}")))?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
        // GET_VRING_BASE stops a ring in the backend.
        for i in 0..QUEUE_SIZES.len() {
            if let Err(e) = self.frontend.get_vring_base(i) {
                crate::guest_warn!(
                    "virtio-fs {}: cannot stop queue {i} in {}: {e}",
                    self.tag,
                    self.socket.display()
                );
            }
        }
    }
}

/// virtiofsd signals "used buffers" on a call eventfd; the guest's virtio-mmio
/// driver only looks at the queues when InterruptStatus says so, so the VMM sets
/// that bit before injecting the interrupt.
struct CallRelay {
    calls: Vec<EventFd>,
    interrupt: Interrupt,
}

impl Handler for CallRelay {
    fn init(&mut self, r: &Registry) -> io::Result<()> {
        for (i, c) in self.calls.iter().enumerate() {
            r.add(c.as_raw_fd(), i as u64, EventSet::IN)?;
        }
        Ok(())
    }

    fn ready(&mut self, _: &Registry, token: u64, _: EventSet) -> Result<(), String> {
        if let Some(c) = self.calls.get(token as usize) {
            let _ = c.read();
        }
        self.interrupt
            .signal(INT_USED_RING)
            .map_err(|e| format!("cannot interrupt the guest: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_must_fit_the_config_space() {
        let long = "t".repeat(MAX_TAG_LEN + 1);
        for tag in ["", long.as_str()] {
            assert!(matches!(
                Fs::new(tag, Path::new("/nonexistent")),
                Err(Error::BadTag(_))
            ));
        }
    }

    #[test]
    fn a_missing_virtiofsd_socket_is_named() {
        let e = Fs::new("root", Path::new("/nonexistent/vfsd.sock"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent/vfsd.sock"), "{e}");
    }
}
