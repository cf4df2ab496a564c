//! The legacy port-I/O devices a microVM keeps: the 8250 UART at 0x3f8 (the
//! kernel console, interrupt 4) and the i8042 controller, whose only job here is
//! to turn the guest's reset request into the VMM's exit.

use std::io::Write;

use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;
pub const I8042_DATA: u16 = 0x60;
pub const I8042_COMMAND: u16 = 0x64;

/// Raises an interrupt (or a reset request) by writing to an eventfd.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub struct Legacy<W: Write> {
    pub serial: Serial<EventFdTrigger, vm_superio::serial::NoEvents, W>,
    pub i8042: I8042Device<EventFdTrigger>,
}

impl<W: Write> Legacy<W> {
    pub fn new(serial_irq: EventFd, reset: EventFd, console: W) -> Self {
        Legacy {
            serial: Serial::new(EventFdTrigger(serial_irq), console),
            i8042: I8042Device::new(EventFdTrigger(reset)),
        }
    }

    /// A port read. Ports nobody owns read as all ones, like an empty ISA bus.
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        if data.len() != 1 {
            return;
        }
        match port {
            p if (SERIAL_PORT..SERIAL_PORT + 8).contains(&p) => {
                data[0] = self.serial.read((p - SERIAL_PORT) as u8)
            }
            I8042_DATA | I8042_COMMAND => data[0] = self.i8042.read((port - I8042_DATA) as u8),
            _ => {}
        }
    }

    /// A port write; writes to ports nobody owns are dropped.
    pub fn pio_write(&mut self, port: u16, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        match port {
            p if (SERIAL_PORT..SERIAL_PORT + 8).contains(&p) => {
                // The UART has nowhere to report errors but its own output.
                let _ = self.serial.write((p - SERIAL_PORT) as u8, data[0]);
            }
            I8042_DATA | I8042_COMMAND => {
                let _ = self.i8042.write((port - I8042_DATA) as u8, data[0]);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy() -> (Legacy<Vec<u8>>, EventFd, EventFd) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let l = Legacy::new(
            irq.try_clone().unwrap(),
            reset.try_clone().unwrap(),
            Vec::new(),
        );
        (l, irq, reset)
    }

    #[test]
    fn console_bytes_reach_the_writer() {
        let (mut l, _irq, reset) = legacy();
        for b in b"hi\n" {
            l.pio_write(SERIAL_PORT, &[*b]);
        }
        assert_eq!(l.serial.writer(), b"hi\n");
        assert!(reset.read().is_err(), "no reset requested");
    }

    #[test]
    fn i8042_reset_command_signals_the_vmm() {
        let (mut l, _irq, reset) = legacy();
        l.pio_write(I8042_COMMAND, &[0xfe]);
        assert_eq!(reset.read().unwrap(), 1);
    }

    #[test]
    fn odd_accesses_never_panic() {
        let (mut l, _irq, _reset) = legacy();
        let mut wide = [0u8; 4];
        l.pio_read(SERIAL_PORT, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        l.pio_write(0x80, &[1, 2]);
        let mut one = [0u8; 1];
        l.pio_read(0x1234, &mut one);
        assert_eq!(one, [0xff]);
    }
}
