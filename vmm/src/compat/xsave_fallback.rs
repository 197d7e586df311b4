//! `xsave`/`xrstor` completed by the VMM for a guest kernel on software KVM.
//!
//! On a kvm_pvm host guest user code runs natively and uses every vector
//! register the host CPU has (AVX, AVX-512), while guest kernel code runs
//! through KVM's emulator, which cannot run the XSAVE family. A guest kernel
//! kept to FXSAVE (`noxsave`) then saves only x87 and XMM0-15 per task and
//! leaks the rest between processes. So the guest kernel uses plain XSAVE and
//! XRSTOR (the optimised, compacted and supervisor variants are hidden), and
//! the VMM completes each one against the vCPU's register state, which KVM
//! holds in the standard XSAVE format (KVM_GET_XSAVE / KVM_SET_XSAVE).
//!
//! This module is the pure part: decoding the instruction and moving state
//! between KVM's buffer and the memory image the instruction addresses,
//! following the SDM (vol. 1, ch. 13). `vcpu.rs` does the guest memory I/O.

use kvm_bindings::kvm_regs;

/// Legacy region (512 bytes) plus the XSAVE header (64 bytes).
pub const LEGACY_AND_HEADER: usize = 576;
const HEADER: usize = 512;
const MXCSR: std::ops::Range<usize> = 24..28;
const MXCSR_MASK: std::ops::Range<usize> = 28..32;
/// Default MXCSR_MASK when the saved one is 0 (SDM 11.6.6).
const MXCSR_DEFAULT_MASK: u32 = 0xffbf;
const X87: u64 = 1;
const SSE: u64 = 2;
const AVX: u64 = 4;
/// Highest user state component the layout describes (PKRU is 9).
pub const MAX_COMPONENT: usize = 19;

/// Which of the two instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XsaveOp {
    Save,
    Restore,
}

/// A decoded `xsave64 m` / `xrstor64 m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XsaveInsn {
    pub op: XsaveOp,
    pub len: u64,
    operand: MemOperand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MemOperand {
    base: Option<u8>,
    index: Option<(u8, u8)>,
    disp: i64,
    rip_relative: bool,
}

/// Decodes REX.W 0F AE /4 (xsave64) or /5 (xrstor64) with a memory operand:
/// the forms Linux uses. Any other prefix or form is not ours (`None`).
pub fn decode(bytes: &[u8]) -> Option<XsaveInsn> {
    let (&rex, rest) = bytes.split_first()?;
    if rex & 0xf8 != 0x48 {
        return None; // needs REX with W: the 32-bit forms store FIP/FDP differently
    }
    let [0x0f, 0xae, modrm, ref tail @ ..] = *rest else {
        return None;
    };
    let op = match (modrm >> 3) & 7 {
        4 => XsaveOp::Save,
        5 => XsaveOp::Restore,
        _ => return None,
    };
    let (operand, used) = decode_modrm(rex, modrm, tail)?;
    Some(XsaveInsn {
        op,
        len: 4 + used as u64,
        operand,
    })
}

/// ModRM (+SIB, +displacement) of a memory operand; returns it and the bytes
/// used after the ModRM byte.
fn decode_modrm(rex: u8, modrm: u8, tail: &[u8]) -> Option<(MemOperand, usize)> {
    let (md, rm) = (modrm >> 6, modrm & 7);
    if md == 3 {
        return None; // a register operand is #UD
    }
    let (rex_b, rex_x) = ((rex & 1) << 3, ((rex >> 1) & 1) << 3);
    let mut used = 0;
    let mut operand = MemOperand {
        base: Some(rm | rex_b),
        index: None,
        disp: 0,
        rip_relative: false,
    };
    if rm == 4 {
        let sib = *tail.first()?;
        used = 1;
        let (scale, index, base) = (sib >> 6, ((sib >> 3) & 7) | rex_x, sib & 7);
        operand.index = (index != 4).then_some((index, 1 << scale));
        operand.base = (!(md == 0 && base == 5)).then_some(base | rex_b);
        if md == 0 && base == 5 {
            operand.disp = i64::from(read_i32(tail.get(used..)?)?);
            used += 4;
        }
    } else if md == 0 && rm == 5 {
        operand.base = None;
        operand.rip_relative = true;
    }
    match md {
        1 => {
            operand.disp = i64::from(*tail.get(used)? as i8);
            used += 1;
        }
        2 => {
            operand.disp = i64::from(read_i32(tail.get(used..)?)?);
            used += 4;
        }
        _ if operand.rip_relative => {
            operand.disp = i64::from(read_i32(tail.get(used..)?)?);
            used += 4;
        }
        _ => {}
    }
    Some((operand, used))
}

fn read_i32(b: &[u8]) -> Option<i32> {
    Some(i32::from_le_bytes(b.get(..4)?.try_into().ok()?))
}

/// General-purpose register `n` (0 = rax ... 15 = r15).
fn gpr(regs: &kvm_regs, n: u8) -> u64 {
    [
        regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi, regs.r8,
        regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
    ][usize::from(n & 15)]
}

impl XsaveInsn {
    /// The linear address of the XSAVE area (segment bases are 0 in long
    /// mode for the DS/SS the kernel uses).
    pub fn address(&self, regs: &kvm_regs) -> u64 {
        let o = &self.operand;
        let mut addr = o.disp as u64;
        if o.rip_relative {
            // The guest picks RIP: at the top of the address space the next
            // instruction's address wraps, as the CPU's does.
            addr = addr.wrapping_add(regs.rip.wrapping_add(self.len));
        }
        if let Some(b) = o.base {
            addr = addr.wrapping_add(gpr(regs, b));
        }
        if let Some((i, scale)) = o.index {
            addr = addr.wrapping_add(gpr(regs, i).wrapping_mul(u64::from(scale)));
        }
        addr
    }

    /// The requested-feature bitmap: EDX:EAX & XCR0.
    pub fn rfbm(regs: &kvm_regs, xcr0: u64) -> u64 {
        ((regs.rdx << 32) | (regs.rax & 0xffff_ffff)) & xcr0
    }
}

/// Where each state component >= 2 lives in the standard format: (offset,
/// size), from CPUID leaf 0xD sub-leaf i; (0, 0) when the CPU lacks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XsaveLayout(pub [(u32, u32); MAX_COMPONENT]);

impl XsaveLayout {
    /// The host CPU's layout, which is also the one KVM_GET_XSAVE uses.
    pub fn host() -> Self {
        let mut table = [(0, 0); MAX_COMPONENT];
        for (i, slot) in table.iter_mut().enumerate().skip(2) {
            let r = std::arch::x86_64::__cpuid_count(0xd, i as u32);
            *slot = (r.ebx, r.eax);
        }
        Self(table)
    }

    /// Bytes an XSAVE area with the components of `rfbm` spans.
    pub fn area_len(&self, rfbm: u64) -> usize {
        (2..MAX_COMPONENT)
            .filter(|i| rfbm & (1 << i) != 0)
            .map(|i| (self.0[i].0 + self.0[i].1) as usize)
            .fold(LEGACY_AND_HEADER, usize::max)
    }

    fn component(&self, i: usize) -> std::ops::Range<usize> {
        let (offset, size) = self.0[i];
        offset as usize..(offset + size) as usize
    }
}

/// Why an XRSTOR raises #GP instead of loading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreFault {
    #[error("XCOMP_BV or reserved header bytes are not zero (compacted form unsupported)")]
    HeaderReserved,
    #[error("XSTATE_BV {xstate_bv:#x} has components XCR0 {xcr0:#x} lacks")]
    NotEnabled { xstate_bv: u64, xcr0: u64 },
    #[error("MXCSR {0:#x} sets reserved bits")]
    Mxcsr(u32),
    #[error("the XSAVE area extends past the state KVM holds")]
    TooLarge,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], r: std::ops::Range<usize>) -> u32 {
    u32::from_le_bytes(b[r].try_into().expect("4 bytes"))
}

/// XSAVE: writes the components `rfbm` selects from `state` (KVM's standard
/// format buffer) into `area` (the memory image, `layout.area_len(rfbm)`
/// long), and their in-use bits into XSTATE_BV; the rest of `area` stays.
pub fn save(state: &[u8], rfbm: u64, layout: &XsaveLayout, area: &mut [u8]) {
    if rfbm & X87 != 0 {
        area[..24].copy_from_slice(&state[..24]);
        area[32..160].copy_from_slice(&state[32..160]);
    }
    if rfbm & (SSE | AVX) != 0 {
        area[24..32].copy_from_slice(&state[24..32]);
    }
    if rfbm & SSE != 0 {
        area[160..416].copy_from_slice(&state[160..416]);
    }
    for i in (2..MAX_COMPONENT).filter(|i| rfbm & (1 << i) != 0) {
        let r = layout.component(i);
        area[r.clone()].copy_from_slice(&state[r]);
    }
    let in_use = u64_at(state, HEADER);
    let bv = (u64_at(area, HEADER) & !rfbm) | (in_use & rfbm);
    area[HEADER..HEADER + 8].copy_from_slice(&bv.to_le_bytes());
}

/// XRSTOR (standard form): loads the components `rfbm` selects from `area`
/// into `state`, or their initial values where `area`'s XSTATE_BV says so.
pub fn restore(
    state: &mut [u8],
    rfbm: u64,
    xcr0: u64,
    layout: &XsaveLayout,
    area: &[u8],
) -> Result<(), RestoreFault> {
    let xstate_bv = u64_at(area, HEADER);
    if area[HEADER + 8..HEADER + 24].iter().any(|&b| b != 0) {
        return Err(RestoreFault::HeaderReserved);
    }
    if xstate_bv & !xcr0 != 0 {
        return Err(RestoreFault::NotEnabled { xstate_bv, xcr0 });
    }
    if layout.area_len(rfbm) > state.len() {
        return Err(RestoreFault::TooLarge);
    }
    if rfbm & (SSE | AVX) != 0 {
        let mask = match u32_at(state, MXCSR_MASK) {
            0 => MXCSR_DEFAULT_MASK,
            m => m,
        };
        let mxcsr = u32_at(area, MXCSR);
        if mxcsr & !mask != 0 {
            return Err(RestoreFault::Mxcsr(mxcsr));
        }
        state[MXCSR].copy_from_slice(&area[MXCSR]);
    }
    let load = |state: &mut [u8], bit: u64, r: std::ops::Range<usize>| {
        if xstate_bv & bit != 0 {
            state[r.clone()].copy_from_slice(&area[r]);
        } else {
            state[r].fill(0);
        }
    };
    if rfbm & X87 != 0 {
        load(state, X87, 0..24);
        load(state, X87, 32..160);
        if xstate_bv & X87 == 0 {
            state[..2].copy_from_slice(&0x037fu16.to_le_bytes()); // FCW's initial value
        }
    }
    if rfbm & SSE != 0 {
        load(state, SSE, 160..416);
    }
    for i in (2..MAX_COMPONENT).filter(|i| rfbm & (1 << i) != 0) {
        load(state, 1 << i, layout.component(i));
    }
    let bv = (u64_at(state, HEADER) & !rfbm) | (xstate_bv & rfbm);
    state[HEADER..HEADER + 8].copy_from_slice(&bv.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> kvm_regs {
        kvm_regs {
            rax: 0xe7,
            rdx: 0,
            rdi: 0x1000,
            rbx: 0x2000,
            rcx: 3,
            r12: 0x4000,
            rip: 0xffff_ffff_8100_0000,
            ..Default::default()
        }
    }

    #[test]
    fn decodes_the_kernels_forms_and_their_operands() {
        // xrstor64 (%rdi), xsave64 (%rdi): what Linux's XSTATE_OP emits.
        let rstor = decode(&[0x48, 0x0f, 0xae, 0x2f, 0x31, 0xc0]).unwrap();
        assert_eq!((rstor.op, rstor.len), (XsaveOp::Restore, 4));
        assert_eq!(rstor.address(&regs()), 0x1000);
        let save = decode(&[0x48, 0x0f, 0xae, 0x27]).unwrap();
        assert_eq!((save.op, save.address(&regs())), (XsaveOp::Save, 0x1000));
        // xsave64 0x40(%rbx,%rcx,8) : SIB + disp8.
        let sib = decode(&[0x48, 0x0f, 0xae, 0x64, 0xcb, 0x40]).unwrap();
        assert_eq!((sib.len, sib.address(&regs())), (6, 0x2000 + 3 * 8 + 0x40));
        // xrstor64 -0x10(%r12) : REX.B, SIB (r12 needs one), disp8.
        let r12 = decode(&[0x49, 0x0f, 0xae, 0x6c, 0x24, 0xf0]).unwrap();
        assert_eq!(r12.address(&regs()), 0x4000 - 0x10);
        // xsave64 0x100(%rip) : relative to the next instruction.
        let rip = decode(&[0x48, 0x0f, 0xae, 0x25, 0x00, 0x01, 0, 0]).unwrap();
        assert_eq!(rip.len, 8);
        assert_eq!(rip.address(&regs()), regs().rip + 8 + 0x100);
        // xsave64 0x12345678 (no base, no index) : SIB base 5 with mod 0.
        let abs = decode(&[0x48, 0x0f, 0xae, 0x24, 0x25, 0x78, 0x56, 0x34, 0x12]).unwrap();
        assert_eq!((abs.len, abs.address(&regs())), (9, 0x1234_5678));
    }

    // Found by the insn_decode fuzz target: a rip-relative xsave64 in the
    // last bytes of the address space overflowed computing its operand's
    // address (a panic in debug builds) instead of wrapping like the CPU.
    #[test]
    fn a_rip_relative_operand_at_the_top_of_the_address_space_wraps() {
        let insn = decode(&[0x48, 0x0f, 0xae, 0x2d, 0xf0, 0xff, 0xff, 0xff]).unwrap();
        let mut r = regs();
        r.rip = u64::MAX - 3;
        assert_eq!(insn.address(&r), 4u64.wrapping_sub(0x10));
    }

    #[test]
    fn other_forms_are_not_ours() {
        // fxsave64 (/0), xsaveopt64 (/6), 32-bit xsave, register operand, truncated.
        for bytes in [
            &[0x48, 0x0f, 0xae, 0x07][..],
            &[0x48, 0x0f, 0xae, 0x37],
            &[0x0f, 0xae, 0x27],
            &[0x48, 0x0f, 0xae, 0xe7],
            &[0x48, 0x0f, 0xae, 0x64],
            &[0x48, 0x0f, 0xae, 0xa7, 0x00],
            &[],
        ] {
            assert_eq!(decode(bytes), None, "{bytes:02x?}");
        }
    }

    #[test]
    fn rfbm_is_edx_eax_within_xcr0() {
        let mut r = regs();
        (r.rax, r.rdx) = (0xffff_ffff_ffff_ffff, 0xffff_ffff);
        assert_eq!(XsaveInsn::rfbm(&r, 0xe7), 0xe7);
        (r.rax, r.rdx) = (0x3, 0);
        assert_eq!(XsaveInsn::rfbm(&r, 0xe7), 0x3);
    }

    /// AVX at 576 (256 bytes) and an opmask-like component 5 at 832 (64).
    fn layout() -> XsaveLayout {
        let mut t = [(0, 0); MAX_COMPONENT];
        t[2] = (576, 256);
        t[5] = (832, 64);
        XsaveLayout(t)
    }

    /// A KVM state buffer: every byte of component c filled with c + 0x10,
    /// legacy x87 bytes 0x11, XMM bytes 0x12, MXCSR 0x1f80, XSTATE_BV `bv`.
    fn kvm_state(bv: u64) -> Vec<u8> {
        let mut s = vec![0u8; 4096];
        s[..160].fill(0x11);
        s[160..416].fill(0x12);
        s[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        s[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
        s[576..832].fill(0x12 + 0x10);
        s[832..896].fill(0x15 + 0x10);
        s[512..520].copy_from_slice(&bv.to_le_bytes());
        s
    }

    #[test]
    fn save_writes_only_the_requested_components() {
        let layout = layout();
        assert_eq!(layout.area_len(0x27), 896);
        assert_eq!(layout.area_len(0x3), LEGACY_AND_HEADER);
        let state = kvm_state(0x7);
        let mut area = vec![0xaa; 896];
        area[512..520].copy_from_slice(&0x20u64.to_le_bytes()); // an earlier save of comp. 5
        save(&state, 0x7, &layout, &mut area);
        assert!(area[..24].iter().all(|&b| b == 0x11));
        assert_eq!(&area[24..28], &0x1f80u32.to_le_bytes());
        assert!(area[160..416].iter().all(|&b| b == 0x12));
        assert!(
            area[416..512].iter().all(|&b| b == 0xaa),
            "reserved bytes kept"
        );
        assert!(area[576..832].iter().all(|&b| b == 0x22), "AVX saved");
        assert!(
            area[832..896].iter().all(|&b| b == 0xaa),
            "component 5 not requested"
        );
        assert_eq!(
            u64_at(&area, 512),
            0x27,
            "XSTATE_BV: 0-2 from the state, 5 kept"
        );
        assert!(
            area[520..576].iter().all(|&b| b == 0xaa),
            "XCOMP_BV not written"
        );
    }

    #[test]
    fn restore_loads_or_initialises_and_round_trips() {
        let layout = layout();
        let mut saved = vec![0u8; 896];
        save(&kvm_state(0x27), 0x27, &layout, &mut saved);
        // Another task's state is loaded, then ours comes back.
        let mut state = kvm_state(0x7);
        state[576..832].fill(0x99);
        restore(&mut state, 0x27, 0x27, &layout, &saved).unwrap();
        assert_eq!(state, kvm_state(0x27));

        // XSTATE_BV without AVX: AVX returns to its initial (zero) state.
        saved[512..520].copy_from_slice(&0x3u64.to_le_bytes());
        restore(&mut state, 0x27, 0x27, &layout, &saved).unwrap();
        assert!(state[576..832].iter().all(|&b| b == 0));
        assert_eq!(u64_at(&state, 512), 0x3);
        // Not requested: left as it was.
        state[832..896].fill(0x77);
        restore(&mut state, 0x7, 0x27, &layout, &saved).unwrap();
        assert!(state[832..896].iter().all(|&b| b == 0x77));
    }

    #[test]
    fn restore_faults_like_the_cpu_and_changes_nothing() {
        let layout = layout();
        let mut area = vec![0u8; 896];
        save(&kvm_state(0x7), 0x7, &layout, &mut area);
        let before = kvm_state(0x3);
        let mut state = before.clone();

        let mut compacted = area.clone();
        compacted[520 + 7] = 0x80;
        let mut not_enabled = area.clone();
        not_enabled[512..520].copy_from_slice(&0x107u64.to_le_bytes());
        let mut bad_mxcsr = area.clone();
        bad_mxcsr[24..28].copy_from_slice(&0xffff_0000u32.to_le_bytes());
        for (area, want) in [
            (&compacted, RestoreFault::HeaderReserved),
            (
                &not_enabled,
                RestoreFault::NotEnabled {
                    xstate_bv: 0x107,
                    xcr0: 0x27,
                },
            ),
            (&bad_mxcsr, RestoreFault::Mxcsr(0xffff_0000)),
        ] {
            assert_eq!(restore(&mut state, 0x7, 0x27, &layout, area), Err(want));
            assert_eq!(state, before);
        }
    }
}
