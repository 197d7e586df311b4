//! The instruction bytes and XSAVE areas a guest hands the VMM when KVM
//! cannot emulate an instruction (`compat::insn_fallback` and
//! `compat::xsave_fallback`), as `Vcpu::handle_internal_error` and
//! `complete_xsave` use them: up to 15 fetched bytes, any registers and
//! XCR0, KVM's 4 KiB XSAVE buffer and the guest's area, with this host's
//! XSAVE layout.
//!
//! Checks, besides "no panic": a decided or decoded instruction's length
//! is within the fetched bytes, and decoding just those bytes gives the same
//! instruction (the decoder reads nothing it does not count); `save` changes
//! only the selected components and XSTATE_BV of the area ("the rest of
//! `area` stays"); `restore` changes nothing when it faults, and otherwise
//! only the selected components, MXCSR and XSTATE_BV of the state.

#![no_main]

use std::ops::Range;

use husk_vmm::compat::guest_walk::MAX_INSN_LEN;
use husk_vmm::compat::insn_fallback::{decide, Fallback};
use husk_vmm::compat::xsave_fallback::{
    decode, restore, save, XsaveInsn, XsaveLayout, XsaveOp, MAX_COMPONENT,
};
use kvm_bindings::kvm_regs;
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

/// KVM_GET_XSAVE's region.
const STATE_LEN: usize = 4096;
const X87: u64 = 1;
const SSE: u64 = 2;
const AVX: u64 = 4;
const XSTATE_BV: Range<usize> = 512..520;

/// Everything but the instruction bytes, which come first in the input,
/// raw, so seeds are readable: a length byte (the fetch may stop short of
/// 15 at an unmapped page) and 15 bytes.
#[derive(Arbitrary, Debug)]
struct Input {
    rip: u64,
    xcr0: u64,
    /// FPU status and control words, or KVM_GET_FPU failing.
    x87: Option<(u16, u16)>,
    gprs: [u64; 16],
    /// Seeds for KVM's state buffer and the guest's area.
    state: Vec<u8>,
    area: Vec<u8>,
}

/// `len` bytes: `seed` repeated (zeros if empty).
fn filled(seed: &[u8], len: usize) -> Vec<u8> {
    if seed.is_empty() {
        return vec![0; len];
    }
    seed.iter().copied().cycle().take(len).collect()
}

/// The byte ranges an XSAVE/XRSTOR with `rfbm` may change, per the SDM:
/// the selected components, MXCSR (with SSE or AVX) and XSTATE_BV.
fn touched(rfbm: u64, layout: &XsaveLayout) -> Vec<Range<usize>> {
    let mut r = vec![XSTATE_BV];
    if rfbm & X87 != 0 {
        r.extend([0..24, 32..160]);
    }
    if rfbm & (SSE | AVX) != 0 {
        r.push(24..32);
    }
    if rfbm & SSE != 0 {
        r.push(160..416);
    }
    for i in (2..MAX_COMPONENT).filter(|i| rfbm & (1 << i) != 0) {
        let (offset, size) = layout.0[i];
        r.push(offset as usize..(offset + size) as usize);
    }
    r
}

fn assert_only_touched(before: &[u8], after: &[u8], allowed: &[Range<usize>], what: &str) {
    for (i, (a, b)) in before.iter().zip(after).enumerate() {
        if a != b {
            assert!(
                allowed.iter().any(|r| r.contains(&i)),
                "{what} changed byte {i}, outside {allowed:?}"
            );
        }
    }
}

fn regs(input: &Input) -> kvm_regs {
    let g = input.gprs;
    kvm_regs {
        rax: g[0],
        rcx: g[1],
        rdx: g[2],
        rbx: g[3],
        rsp: g[4],
        rbp: g[5],
        rsi: g[6],
        rdi: g[7],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip: input.rip,
        ..Default::default()
    }
}

fn check_decide(bytes: &[u8], x87: Option<(u16, u16)>) {
    let len = match decide(bytes, || x87) {
        Some(Fallback::TrapAfter { len, .. } | Fallback::Skip { len }) => len,
        Some(Fallback::Fault { .. }) | None => return,
    };
    assert!(
        (1..=bytes.len() as u64).contains(&len),
        "length {len} of {bytes:02x?}"
    );
}

fn check_xsave(input: &Input, bytes: &[u8], layout: &XsaveLayout) {
    let Some(insn) = decode(bytes) else {
        return;
    };
    let len = insn.len as usize;
    assert!(len <= bytes.len(), "length {len} of {bytes:02x?}");
    assert_eq!(decode(&bytes[..len]), Some(insn), "decoded past its length");

    // What `complete_xsave` does with it, short of guest memory and KVM.
    let regs = regs(input);
    let _ = insn.address(&regs);
    let rfbm = XsaveInsn::rfbm(&regs, input.xcr0);
    let area_len = layout.area_len(rfbm);
    if area_len > STATE_LEN {
        return; // #GP in the VMM
    }
    let mut state = filled(&input.state, STATE_LEN);
    let mut area = filled(&input.area, area_len);
    let allowed = touched(rfbm, layout);
    match insn.op {
        XsaveOp::Save => {
            let before = area.clone();
            save(&state, rfbm, layout, &mut area);
            assert_only_touched(&before, &area, &allowed, "xsave's area");
        }
        XsaveOp::Restore => {
            let before = state.clone();
            match restore(&mut state, rfbm, input.xcr0, layout, &area) {
                Err(fault) => assert!(state == before, "xrstor changed state and faulted: {fault}"),
                Ok(()) => assert_only_touched(&before, &state, &allowed, "xrstor's state"),
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    static LAYOUT: std::sync::OnceLock<XsaveLayout> = std::sync::OnceLock::new();
    let layout = LAYOUT.get_or_init(XsaveLayout::host);
    let Some((&fetched, rest)) = data.split_first() else {
        return;
    };
    let (insn, rest) = rest.split_at(rest.len().min(MAX_INSN_LEN));
    let bytes = &insn[..insn.len().min(usize::from(fetched))];
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(rest)) else {
        return;
    };
    check_decide(bytes, input.x87);
    check_xsave(&input, bytes, layout);
});
