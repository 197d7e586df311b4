//! A real guest keeps each process's vector registers and segment bases its
//! own across context switches. On a software-KVM host guest user code uses
//! the host's AVX/AVX-512 natively while the guest kernel's XSAVE/XRSTOR are
//! completed by the VMM; before that the kernel ran `noxsave` and YMM/ZMM
//! state leaked between processes (busybox segfaulted in glibc's TLS setup).

mod common;

use common::{boot, guest_assets, kvm_or_skip};

#[test]
fn processes_keep_their_own_vector_registers() {
    if !kvm_or_skip("processes_keep_their_own_vector_registers") {
        return;
    }
    let run = boot(&guest_assets().initrd, 1, "fpu-leak");
    let c = &run.console;
    assert!(
        c.contains("fpu-leak: user CPUID says"),
        "the check did not start:\n{c}\n{:?}",
        run.result
    );
    assert!(c.contains("HUSK-FPU-LEAK-CLEAN"), "state leaked:\n{c}");
    run.assert_powered_off();
}
