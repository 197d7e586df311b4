//! What the VMM does with an instruction the host's KVM cannot emulate.
//!
//! Software-KVM hosts (kvm_pvm) run guest kernel code through KVM's
//! instruction emulator, which lacks a few instructions a stock kernel uses.
//! When KVM gives up (KVM_EXIT_INTERNAL_ERROR, emulation suberror), the VMM
//! decodes the bytes at RIP and, for the instructions listed here, produces
//! exactly what the CPU would have done:
//!
//! - `int3` (0xcc): a #BP trap, delivered with RIP after the instruction
//!   (the kernel's int3 self-test and text patching rely on it);
//! - `fwait` (0x9b): nothing, unless an unmasked x87 exception is pending,
//!   in which case #MF (the kernel's fpu__drop() runs it on every exit).
//!
//! `xsave64`/`xrstor64` are completed by `xsave_fallback`. Anything else is
//! not guessed at: the VM stops with RIP and the bytes.

const INT3: u8 = 0xcc;
const FWAIT: u8 = 0x9b;
pub const BP_VECTOR: u8 = 3;
pub const MF_VECTOR: u8 = 16;
/// x87 status word exception flags (IE, DE, ZE, OE, UE, PE) and control word masks.
const X87_EXCEPTIONS: u16 = 0x3f;

/// The CPU's response to an instruction the host could not emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Advance RIP by `len` and deliver exception `vector` (a trap).
    TrapAfter { len: u64, vector: u8 },
    /// Deliver fault `vector` with RIP unchanged.
    Fault { vector: u8 },
    /// The instruction has no effect: advance RIP by `len`.
    Skip { len: u64 },
}

/// Decides what to do with the instruction `bytes` at RIP. `x87` yields the
/// FPU status and control words, read only when an instruction needs them.
pub fn decide(bytes: &[u8], x87: impl FnOnce() -> Option<(u16, u16)>) -> Option<Fallback> {
    match *bytes.first()? {
        INT3 => Some(Fallback::TrapAfter {
            len: 1,
            vector: BP_VECTOR,
        }),
        FWAIT => {
            let (status, control) = x87()?;
            let pending = status & !control & X87_EXCEPTIONS;
            Some(if pending != 0 {
                Fallback::Fault { vector: MF_VECTOR }
            } else {
                Fallback::Skip { len: 1 }
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int3_traps_after_the_instruction() {
        assert_eq!(
            decide(&[0xcc, 0x90], || None),
            Some(Fallback::TrapAfter {
                len: 1,
                vector: BP_VECTOR
            })
        );
    }

    #[test]
    fn fwait_is_a_no_op_unless_an_unmasked_x87_exception_is_pending() {
        // Default control word masks everything.
        assert_eq!(
            decide(&[0x9b, 0x31, 0xc0], || Some((0x0001, 0x037f))),
            Some(Fallback::Skip { len: 1 })
        );
        assert_eq!(
            decide(&[0x9b], || Some((0x0000, 0x0000))),
            Some(Fallback::Skip { len: 1 })
        );
        // Zero-divide flagged and unmasked.
        assert_eq!(
            decide(&[0x9b], || Some((0x0004, 0x037b))),
            Some(Fallback::Fault { vector: MF_VECTOR })
        );
        // FPU state unreadable: do not guess.
        assert_eq!(decide(&[0x9b], || None), None);
    }

    #[test]
    fn other_instructions_are_not_guessed() {
        assert_eq!(decide(&[0x48, 0x0f, 0xae, 0x2f], || Some((0, 0))), None);
        assert_eq!(decide(&[], || Some((0, 0))), None);
    }
}
