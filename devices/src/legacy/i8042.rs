//! The i8042 keyboard controller, reduced to what a Linux guest uses to reboot.
//!
//! With `reboot=k` the kernel resets the machine by writing the pulse-reset
//! command 0xFE to the command port. That is the guest's way to end the VM, so
//! the device signals `reset_evt` and the VMM stops. Everything else reads as
//! an idle controller with no keyboard.

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Port base of the controller (data port 0x60, command/status port 0x64).
pub const I8042_BASE: u16 = 0x60;
pub const I8042_LEN: u64 = 5;
const COMMAND_OFFSET: u64 = 4;
const CMD_PULSE_RESET: u8 = 0xfe;

pub struct I8042 {
    reset_evt: EventFd,
}

impl I8042 {
    pub fn new(reset_evt: EventFd) -> Self {
        Self { reset_evt }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty, no data.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_PULSE_RESET) {
            if let Err(e) = self.reset_evt.write(1) {
                crate::error_limited!("i8042: cannot signal guest reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn pulse_reset_signals_only_on_the_command_port() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());
        dev.write(0, &[CMD_PULSE_RESET]);
        dev.write(COMMAND_OFFSET, &[0xd1]);
        assert!(evt.read().is_err(), "no reset expected yet");
        dev.write(COMMAND_OFFSET, &[CMD_PULSE_RESET]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
