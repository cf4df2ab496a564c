//! One microVM: KVM VM and vCPU set-up, the legacy devices, and the run loop.
//! Driven by one plain [`VmConfig`].

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use vmm_sys_util::signal::Killable;

use kvm_bindings::{
    kvm_msr_entry, kvm_pit_config, kvm_userspace_memory_region, Msrs, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::{self, MmioBus};
use crate::legacy::{Legacy, SERIAL_IRQ};
use crate::tap::Tap;
use crate::virtio::{fs::Fs, net::Net, rng::Rng, vsock::Vsock};
use crate::{boot, console, memory, mptable, x86};

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    Stdout,
    Off,
    File(PathBuf),
}

/// A virtio-fs share served by a virtiofsd already listening on `socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsShare {
    pub tag: String,
    pub socket: PathBuf,
}

/// A virtio-net device on an existing tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: String,
    pub mac: [u8; 6],
}

/// A virtio-vsock device, reached from the host through a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds: PathBuf,
}

/// Everything needed to boot one microVM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub console: Console,
    /// virtio-fs shares, in the order their devices appear.
    pub fs: Vec<FsShare>,
    pub net: Option<NetConfig>,
    pub vsock: Option<VsockConfig>,
}

/// The largest vCPU count okvm configures.
pub const MAX_VCPUS: u8 = 8;

/// RLIMIT_NOFILE for a process that runs a VMM: one fd per vsock connection
/// (the guest drives those, up to the device's cap), and 1024 for the VMM's
/// own (KVM, eventfds, epolls, the tap, vhost-user, files and streams of the
/// sandbox: about a hundred) with room to spare.
pub const OPEN_FILES: u64 = crate::virtio::vsock::MAX_CONNECTIONS as u64 + 1024;

/// Sets this process's RLIMIT_NOFILE (soft and hard) to [`OPEN_FILES`], so
/// that nothing a guest drives can hold more fds than that. Without the
/// privilege to raise the hard limit, the soft one goes as near as it may.
pub fn limit_open_files() -> nix::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if setrlimit(Resource::RLIMIT_NOFILE, OPEN_FILES, OPEN_FILES).is_ok() {
        return Ok(());
    }
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, OPEN_FILES.min(hard), hard)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} vCPUs requested; okvm supports 1 to {MAX_VCPUS}")]
    BadVcpus(u8),
    #[error("KVM: {what}: {err}")]
    Kvm {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] memory::Error),
    #[error(transparent)]
    Boot(#[from] boot::Error),
    #[error(transparent)]
    Tables(#[from] x86::MemoryError),
    #[error(transparent)]
    MpTable(#[from] mptable::Error),
    #[error(transparent)]
    Devices(#[from] devices::Error),
    #[error(transparent)]
    Fs(#[from] crate::virtio::fs::Error),
    #[error(transparent)]
    Tap(#[from] crate::tap::TapError),
    #[error("{0}")]
    Vsock(std::io::Error),
    #[error("cannot open console file {path}: {err}")]
    Console { path: PathBuf, err: std::io::Error },
    #[error("cannot {what}: {err}")]
    Host {
        what: &'static str,
        err: std::io::Error,
    },
    #[error("cannot set up the VM: {0}")]
    Setup(String),
    #[error("the guest stopped in an unexpected way: {0}")]
    UnexpectedExit(String),
    #[error("the guest kernel panicked: {0}")]
    GuestPanic(String),
    #[error("the guest CPU crashed (triple fault, not a reboot request): {0}")]
    TripleFault(String),
}

/// How the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The guest asked for a reset through the i8042: okvm's power-off.
    Reset,
}

fn kvm<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, Error> {
    r.map_err(|err| Error::Kvm { what, err })
}

/// Boots the guest and runs it until it resets.
pub fn run(config: &VmConfig) -> Result<Exit, Error> {
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(Error::BadVcpus(config.vcpus));
    }
    let sink: Box<dyn Write + Send> = match &config.console {
        Console::Stdout => Box::new(std::io::stdout()),
        Console::Off => Box::new(std::io::sink()),
        Console::File(path) => {
            Box::new(
                console::CappedFile::create(path).map_err(|err| Error::Console {
                    path: path.clone(),
                    err,
                })?,
            )
        }
    };
    let (console, panic_note) = console::Watched::new(sink);

    // Guest RAM is created first so that it is dropped last, after the VM.
    // Only a vhost-user backend needs to map guest RAM itself.
    let sharing = if config.fs.is_empty() {
        memory::Sharing::Private
    } else {
        memory::Sharing::Shared
    };
    let t0 = std::time::Instant::now();
    let phase = |what: &str| log::debug!("vm: {what} after {:?}", t0.elapsed());
    let ram = memory::create(config.mem_mib, sharing)?;
    let kvm_sys = kvm("open /dev/kvm", Kvm::new())?;
    let vm = kvm("create VM", kvm_sys.create_vm())?;
    register_memory(&vm, &ram.memory)?;
    kvm("set TSS address", vm.set_tss_address(0xfffb_d000))?;
    kvm("create irqchip", vm.create_irq_chip())?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    kvm("create PIT", vm.create_pit2(pit))?;

    phase("VM created");
    let bus = Arc::new(attach_devices(config, &vm, &ram.memory)?);
    phase("devices attached");
    let cmdline = full_cmdline(&config.cmdline, &bus.cmdline());
    let loaded = boot::load(
        &ram.memory,
        config.mem_mib,
        &config.kernel,
        config.initrd.as_deref(),
        &cmdline,
    )?;
    mptable::write(&ram.memory, config.vcpus)?;
    phase("kernel loaded");

    let serial_irq = eventfd()?;
    kvm(
        "register serial irqfd",
        vm.register_irqfd(&serial_irq, SERIAL_IRQ),
    )?;
    let reset = eventfd()?;
    let legacy = Arc::new(Mutex::new(Legacy::new(
        serial_irq,
        reset.try_clone().map_err(|err| Error::Host {
            what: "clone an eventfd",
            err,
        })?,
        console,
    )));

    // All vCPUs are configured before any runs; only the boot vCPU gets entry
    // registers, the others wait in the in-kernel LAPIC for the kernel's SIPI.
    let mut vcpus = Vec::new();
    for id in 0..config.vcpus {
        let vcpu = kvm("create vCPU", vm.create_vcpu(u64::from(id)))?;
        setup_vcpu(&kvm_sys, &vcpu, id)?;
        if id == 0 {
            setup_boot_vcpu(&vcpu, &ram.memory, loaded.entry.0)?;
        }
        vcpus.push(vcpu);
    }
    phase("vCPUs set up");
    let exit = run_vcpus(vcpus, legacy, bus, reset)?;
    match panic_note.get() {
        Some(line) => Err(Error::GuestPanic(line)),
        None => Ok(exit),
    }
}

/// The user's command line plus what this machine needs the guest to know:
/// there are no ACPI tables (a kernel built with ACPI otherwise looks for them
/// and, as Debian's does, ends up without working serial interrupts), and
/// where the virtio-mmio devices are.
fn full_cmdline(user: &str, devices: &str) -> String {
    let acpi = if user.split_whitespace().any(|w| w.starts_with("acpi=")) {
        ""
    } else {
        " acpi=off"
    };
    format!("{user}{acpi}{devices}")
}

/// The virtio devices, in a fixed order: entropy, the shares, vsock, the NIC.
fn attach_devices(
    config: &VmConfig,
    vm: &VmFd,
    mem: &vm_memory::GuestMemoryMmap,
) -> Result<MmioBus, Error> {
    let mut bus = MmioBus::default();
    bus.add(vm, mem, Box::new(Rng::new()))?;
    for share in &config.fs {
        bus.add(vm, mem, Box::new(Fs::new(&share.tag, &share.socket)?))?;
    }
    if let Some(v) = &config.vsock {
        let dev = Vsock::new(v.guest_cid, v.uds.clone()).map_err(Error::Vsock)?;
        bus.add(vm, mem, Box::new(dev))?;
    }
    if let Some(net) = &config.net {
        bus.add(vm, mem, Box::new(Net::new(Tap::open(&net.tap)?, net.mac)))?;
    }
    Ok(bus)
}

fn eventfd() -> Result<EventFd, Error> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|err| Error::Host {
        what: "create an eventfd",
        err,
    })
}

/// Wakes a vCPU thread out of KVM_RUN; the handler itself does nothing.
extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Runs each vCPU on its own named thread until one of them sees the guest
/// reset or fail, then stops the others.
fn run_vcpus<W: Write + Send + 'static>(
    vcpus: Vec<VcpuFd>,
    legacy: Arc<Mutex<Legacy<W>>>,
    bus: Arc<MmioBus>,
    reset: EventFd,
) -> Result<Exit, Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler).map_err(|e| {
        Error::Host {
            what: "install the vCPU kick signal handler",
            err: std::io::Error::from_raw_os_error(e.errno()),
        }
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let reset = Arc::new(reset);
    let (done_tx, done_rx) = mpsc::channel();
    let mut handles = Vec::new();
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        let (legacy, bus, stop, reset, done) = (
            legacy.clone(),
            bus.clone(),
            stop.clone(),
            reset.clone(),
            done_tx.clone(),
        );
        let handle = std::thread::Builder::new()
            .name(format!("okvm-vcpu-{id}"))
            .spawn(move || {
                let r = vcpu_loop(vcpu, &legacy, &bus, &stop, &reset);
                let _ = done.send(r);
            })
            .map_err(|err| Error::Host {
                what: "start a vCPU thread",
                err,
            })?;
        handles.push(handle);
    }
    drop(done_tx);
    let first = done_rx
        .recv()
        .unwrap_or_else(|_| Err(Error::UnexpectedExit("every vCPU thread died".into())));
    stop.store(true, Ordering::SeqCst);
    // A kick can land just before a thread re-enters KVM_RUN; repeat until all end.
    while handles.iter().any(|h| !h.is_finished()) {
        for h in handles.iter().filter(|h| !h.is_finished()) {
            let _ = h.kill(kick_signal());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for h in handles {
        let _ = h.join();
    }
    if let Ok(mut l) = legacy.lock() {
        let _ = l.serial.writer_mut().flush();
    }
    first
}

/// Where a crashed vCPU was, in the registers that tell boot-time faults apart.
fn cpu_summary(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => format!(
            "rip {:#x} rsp {:#x} rflags {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}",
            r.rip, r.rsp, r.rflags, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
        ),
        (Err(e), _) | (_, Err(e)) => format!("its registers are unreadable: {e}"),
    }
}

fn vcpu_loop<W: Write>(
    mut vcpu: VcpuFd,
    legacy: &Mutex<Legacy<W>>,
    bus: &MmioBus,
    stop: &AtomicBool,
    reset: &EventFd,
) -> Result<Exit, Error> {
    let lock = || {
        legacy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(Exit::Reset);
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                lock().pio_write(port, data);
                // Only the i8042 can ask for a reset; checking after every
                // console byte would add a system call to each exit.
                if port == crate::legacy::I8042_COMMAND && reset.read().is_ok() {
                    return Ok(Exit::Reset);
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => lock().pio_read(port, data),
            // Outside the devices' windows reads float high and writes vanish.
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !bus.read(addr, data) {
                    data.fill(0xff)
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                bus.write(addr, data);
            }
            // Linux reboots through the i8042 (reboot=k), so a shutdown exit is
            // a CPU that faulted with no way out: report where it was.
            Ok(VcpuExit::Shutdown) => return Err(Error::TripleFault(cpu_summary(&vcpu))),
            Ok(VcpuExit::Hlt) => {
                return Err(Error::UnexpectedExit(
                    "a vCPU halted with interrupts off".into(),
                ))
            }
            Ok(other) => return Err(Error::UnexpectedExit(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(err) => {
                return Err(Error::Kvm {
                    what: "run vCPU",
                    err,
                })
            }
        }
    }
}

fn register_memory(vm: &VmFd, mem: &vm_memory::GuestMemoryMmap) -> Result<(), Error> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| Error::Setup(e.to_string()))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which `run` creates
        // before the VM and so drops after it; the slots come from distinct,
        // non-overlapping regions.
        kvm("register guest memory", unsafe {
            vm.set_user_memory_region(r)
        })?;
    }
    Ok(())
}

fn setup_vcpu(kvm_sys: &Kvm, vcpu: &VcpuFd, id: u8) -> Result<(), Error> {
    let mut cpuid = kvm(
        "get supported CPUID",
        kvm_sys.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
    )?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            // Initial APIC ID; the hypervisor-present bit; and the TSC-deadline
            // timer, which KVM's in-kernel LAPIC emulates but does not list as
            // supported. Without it the guest calibrates its LAPIC timer at boot,
            // which cost ~0.9 s in the test host.
            1 => {
                e.ebx = (e.ebx & 0x00ff_ffff) | (u32::from(id) << 24);
                e.ecx |= (1 << 31) | (1 << 24);
            }
            0xb => e.edx = u32::from(id),
            _ => {}
        }
    }
    kvm("set CPUID", vcpu.set_cpuid2(&cpuid))?;

    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let msrs = Msrs::from_entries(&[
        msr(0x174, 0),       // SYSENTER_CS
        msr(0x175, 0),       // SYSENTER_ESP
        msr(0x176, 0),       // SYSENTER_EIP
        msr(0xc000_0081, 0), // STAR
        msr(0xc000_0082, 0), // LSTAR
        msr(0xc000_0083, 0), // CSTAR
        msr(0xc000_0084, 0), // SYSCALL_MASK
        msr(0xc000_0102, 0), // KERNEL_GS_BASE
        msr(0x10, 0),        // TSC
        msr(0x1a0, 1),       // MISC_ENABLE: fast strings
    ])
    .map_err(|e| Error::Setup(format!("MSR list: {e:?}")))?;
    kvm("set MSRs", vcpu.set_msrs(&msrs))?;

    // LINT0 delivers the PIC's ExtINT, LINT1 NMIs, as firmware would leave them.
    let mut lapic = kvm("get LAPIC", vcpu.get_lapic())?;
    set_lvt(&mut lapic.regs, 0x350, 0x7);
    set_lvt(&mut lapic.regs, 0x360, 0x4);
    kvm("set LAPIC", vcpu.set_lapic(&lapic))?;
    Ok(())
}

/// The boot vCPU starts at the kernel's 64-bit entry in long mode.
fn setup_boot_vcpu(
    vcpu: &VcpuFd,
    mem: &vm_memory::GuestMemoryMmap,
    entry: u64,
) -> Result<(), Error> {
    let mut sregs = kvm("get sregs", vcpu.get_sregs())?;
    x86::setup_long_mode(mem, &mut sregs)?;
    kvm("set sregs", vcpu.set_sregs(&sregs))?;
    kvm("set regs", vcpu.set_regs(&x86::boot_regs(entry)))?;
    kvm("set FPU", vcpu.set_fpu(&x86::boot_fpu()))?;
    Ok(())
}

/// Sets the delivery mode of one local-APIC LVT register.
fn set_lvt(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut raw = [0u8; 4];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    let v = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_delivery_mode_is_set_without_touching_other_bits() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[0x350] = 0x30;
        regs[0x351] = 0x01; // vector bits and an old delivery mode
        set_lvt(&mut regs, 0x350, 7);
        assert_eq!(regs[0x350] as u8, 0x30);
        assert_eq!(regs[0x351] as u8, 0x07);
    }

    #[test]
    fn the_command_line_says_there_is_no_acpi_unless_the_user_did() {
        assert_eq!(
            full_cmdline("console=ttyS0", " virtio_mmio.device=4K@0xc0000000:5"),
            "console=ttyS0 acpi=off virtio_mmio.device=4K@0xc0000000:5"
        );
        assert_eq!(full_cmdline("acpi=force", ""), "acpi=force");
    }

    #[test]
    fn vcpu_count_is_checked_first() {
        let cfg = VmConfig {
            kernel: "/nonexistent".into(),
            initrd: None,
            cmdline: String::new(),
            vcpus: 9,
            mem_mib: 64,
            console: Console::Off,
            fs: Vec::new(),
            net: None,
            vsock: None,
        };
        assert!(matches!(run(&cfg), Err(Error::BadVcpus(9))));
    }
}
