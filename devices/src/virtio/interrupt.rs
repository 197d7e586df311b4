//! How a device signals the guest: an interrupt status word plus a trigger.
//!
//! virtio-mmio has one interrupt line per device and an InterruptStatus
//! register saying why it fired (used buffers, config change). The status
//! word lives here, shared by the transport (which reads and acks it) and the
//! device (which sets it and triggers). The trigger is an eventfd: the VMM
//! registers it as an irqfd, tests read it directly, so no /dev/kvm is needed.

use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// Why the device interrupts the driver (InterruptStatus bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptCause {
    /// The device used buffers in at least one queue.
    Queue = 1,
    /// The device configuration (or its status, e.g. NEEDS_RESET) changed.
    Config = 2,
}

/// A device's interrupt line as seen by devices and transports.
pub trait VirtioInterrupt: Send + Sync {
    /// Sets the cause bit and raises the line.
    fn trigger(&self, cause: InterruptCause) -> std::io::Result<()>;
    /// The current InterruptStatus word.
    fn status(&self) -> u32;
    /// Clears the acknowledged bits (InterruptACK).
    fn ack(&self, bits: u32);
    /// Sets the status word from a snapshot, raising the line if any bit is set.
    fn restore_status(&self, bits: u32) -> std::io::Result<()>;
}

/// An interrupt line backed by an eventfd (an irqfd once the VMM registers it).
pub struct IrqFdInterrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl IrqFdInterrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// The eventfd the VMM registers with KVM_IRQFD.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

impl VirtioInterrupt for IrqFdInterrupt {
    fn trigger(&self, cause: InterruptCause) -> std::io::Result<()> {
        self.status.fetch_or(cause as u32, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn restore_status(&self, bits: u32) -> std::io::Result<()> {
        self.status.store(bits, Ordering::SeqCst);
        if bits != 0 {
            self.irqfd.write(1)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn trigger_sets_status_and_fires_the_eventfd() {
        let irq = IrqFdInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        irq.trigger(InterruptCause::Queue).unwrap();
        irq.trigger(InterruptCause::Config).unwrap();
        assert_eq!(irq.status(), 3);
        assert_eq!(irq.irqfd().read().unwrap(), 2);
        irq.ack(1);
        assert_eq!(irq.status(), 2);
    }
}
