//! Arbitrary register read/write sequences on `MmioTransport` with a live
//! vsock device behind it: any offset in the MMIO window, any access width,
//! any value, interleaved with queue kicks and event-loop runs, starting
//! from a driver that finished initialization (so resets, re-negotiation
//! and queue moves while active are all reachable).

#![no_main]

use husk_devices::bus::BusDevice;
use husk_devices::virtio::MMIO_LEN;
use husk_devices::vsock::harness::Harness;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

/// Most register accesses one input may make.
const MAX_OPS: usize = 256;

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        offset: u16,
        width: u8,
    },
    Write {
        offset: u16,
        width: u8,
        value: u64,
    },
    /// A 32-bit write to a register the transport decodes (offset / 4 of
    /// the first 0x100 bytes), so most writes hit a real register.
    WriteReg {
        reg: u8,
        value: u32,
    },
    /// The driver offers fresh RX buffers and kicks RX.
    FillRx,
    /// Runs the device's event loop.
    Pump,
}

fn width(sel: u8) -> usize {
    [1, 2, 4, 8][usize::from(sel % 4)]
}

fuzz_target!(|ops: Vec<Op>| {
    let mut h = Harness::new();
    for op in ops.iter().take(MAX_OPS) {
        match *op {
            Op::Read { offset, width: w } => {
                let mut data = [0u8; 8];
                let offset = u64::from(offset) % MMIO_LEN;
                h.drv.transport.read(offset, &mut data[..width(w)]);
            }
            Op::Write {
                offset,
                width: w,
                value,
            } => {
                let offset = u64::from(offset) % MMIO_LEN;
                h.drv
                    .transport
                    .write(offset, &value.to_le_bytes()[..width(w)]);
            }
            Op::WriteReg { reg, value } => {
                let offset = u64::from(reg % 64) * 4;
                h.drv.transport.write(offset, &value.to_le_bytes());
            }
            Op::FillRx => h.fill_rx(),
            Op::Pump => h.pump(),
        }
    }
    h.pump();
});
