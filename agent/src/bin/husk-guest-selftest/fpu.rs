//! `fpu-leak`: does each guest process keep its own vector registers and
//! segment bases across context switches?
//!
//! On a software-KVM host guest user code runs natively and sees the host's
//! CPUID, so glibc uses AVX/AVX-512 while a guest kernel booted with
//! `noxsave` saves only the FXSAVE state (x87 and the low 128 bits of
//! XMM0-15) per task. Several processes each fill the vector registers with
//! their own pattern, yield and spin so the kernel switches between them, then
//! check every lane; threads check their FS base (glibc's TCB self pointer at
//! %fs:0) and a GS base of their own. Prints `HUSK-FPU-LEAK-CLEAN` or
//! `HUSK-FPU-LEAK-CORRUPT` and what differed.

use std::arch::asm;

const PROCS: u32 = 4;
const ROUNDS: u32 = 40;
const YIELDS: u64 = 4;
const SPINS: u64 = 2_000_000;

/// `fpu-leak`: forks the checking processes, reports, ends the VM.
pub fn fpu_leak() -> ! {
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    println!("fpu-leak: user CPUID says avx2={avx2} avx512f={avx512}");
    let mut children = Vec::new();
    for id in 1..=PROCS {
        // SAFETY: fork(2); the child only runs `check_process` and exits.
        match unsafe { libc::fork() } {
            0 => std::process::exit(check_process(id, avx2, avx512)),
            pid if pid > 0 => children.push(pid),
            _ => println!("fpu-leak: fork failed: {}", std::io::Error::last_os_error()),
        }
    }
    let mut bad = 0;
    for pid in children {
        let mut status = 0;
        // SAFETY: waitpid(2) on our own child with a valid status pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            bad += 1;
        }
    }
    if bad == 0 {
        println!("HUSK-FPU-LEAK-CLEAN");
    } else {
        println!("HUSK-FPU-LEAK-CORRUPT {bad} of {PROCS} processes saw foreign state");
    }
    super::end_vm();
    std::process::exit(0)
}

/// One process: a base-checking thread beside the vector checks. Returns the
/// exit status: 0 when everything matched.
fn check_process(id: u32, avx2: bool, avx512: bool) -> i32 {
    let bases = std::thread::spawn(move || check_bases(id * 2 + 1));
    let mut errors = check_bases(id * 2);
    for round in 0..ROUNDS {
        let pattern: [u32; 32] = std::array::from_fn(|r| (id << 24) | (round << 8) | r as u32);
        if avx512 {
            errors += compare(id, "zmm", 16, &pattern, &zmm_roundtrip(&pattern), errors);
        } else if avx2 {
            errors += compare(id, "ymm", 8, &pattern, &ymm_roundtrip(&pattern), errors);
        }
    }
    errors += bases.join().unwrap_or(1);
    i32::from(errors > 0)
}

/// Counts registers whose lanes differ from the pattern; prints the first
/// few of the process (`before` were found earlier).
fn compare(
    id: u32,
    kind: &str,
    lanes: usize,
    pattern: &[u32; 32],
    seen: &[u32],
    before: u32,
) -> u32 {
    let mut errors = 0;
    for (reg, chunk) in seen.chunks(lanes).enumerate() {
        if chunk.iter().all(|&v| v == pattern[reg]) {
            continue;
        }
        if before + errors < 4 {
            let lanes: Vec<String> = chunk.iter().map(|v| format!("{v:08x}")).collect();
            println!(
                "fpu-leak: process {id} {kind}{reg} want {:08x} in every lane, saw [{}]",
                pattern[reg],
                lanes.join(" ")
            );
        }
        errors += 1;
    }
    errors
}

/// Fills YMM0-15, lets other tasks run, stores them back.
fn ymm_roundtrip(pattern: &[u32; 32]) -> Vec<u32> {
    let mut out = vec![0u32; 16 * 8];
    // SAFETY: AVX2 was detected by the caller's check; the asm reads 16
    // dwords of `pattern` and writes 16 * 32 bytes of `out`.
    unsafe { ymm_asm(pattern.as_ptr(), out.as_mut_ptr()) };
    out
}

#[target_feature(enable = "avx2")]
unsafe fn ymm_asm(pattern: *const u32, out: *mut u32) {
    // SAFETY: see ymm_roundtrip; sched_yield clobbers only rax, rcx, r11.
    unsafe {
        asm!(
        "vpbroadcastd ymm0, dword ptr [rdi + 0]",
        "vpbroadcastd ymm1, dword ptr [rdi + 4]",
        "vpbroadcastd ymm2, dword ptr [rdi + 8]",
        "vpbroadcastd ymm3, dword ptr [rdi + 12]",
        "vpbroadcastd ymm4, dword ptr [rdi + 16]",
        "vpbroadcastd ymm5, dword ptr [rdi + 20]",
        "vpbroadcastd ymm6, dword ptr [rdi + 24]",
        "vpbroadcastd ymm7, dword ptr [rdi + 28]",
        "vpbroadcastd ymm8, dword ptr [rdi + 32]",
        "vpbroadcastd ymm9, dword ptr [rdi + 36]",
        "vpbroadcastd ymm10, dword ptr [rdi + 40]",
        "vpbroadcastd ymm11, dword ptr [rdi + 44]",
        "vpbroadcastd ymm12, dword ptr [rdi + 48]",
        "vpbroadcastd ymm13, dword ptr [rdi + 52]",
        "vpbroadcastd ymm14, dword ptr [rdi + 56]",
        "vpbroadcastd ymm15, dword ptr [rdi + 60]",
        "mov r8, {yields}",
        "2:",
        "mov rdx, {spins}",
        "3:",
        "dec rdx",
        "jnz 3b",
        "mov eax, 24",
        "syscall",
        "dec r8",
        "jnz 2b",
        "vmovdqu ymmword ptr [rsi + 0], ymm0",
        "vmovdqu ymmword ptr [rsi + 32], ymm1",
        "vmovdqu ymmword ptr [rsi + 64], ymm2",
        "vmovdqu ymmword ptr [rsi + 96], ymm3",
        "vmovdqu ymmword ptr [rsi + 128], ymm4",
        "vmovdqu ymmword ptr [rsi + 160], ymm5",
        "vmovdqu ymmword ptr [rsi + 192], ymm6",
        "vmovdqu ymmword ptr [rsi + 224], ymm7",
        "vmovdqu ymmword ptr [rsi + 256], ymm8",
        "vmovdqu ymmword ptr [rsi + 288], ymm9",
        "vmovdqu ymmword ptr [rsi + 320], ymm10",
        "vmovdqu ymmword ptr [rsi + 352], ymm11",
        "vmovdqu ymmword ptr [rsi + 384], ymm12",
        "vmovdqu ymmword ptr [rsi + 416], ymm13",
        "vmovdqu ymmword ptr [rsi + 448], ymm14",
        "vmovdqu ymmword ptr [rsi + 480], ymm15",
        in("rdi") pattern,
        in("rsi") out,
        yields = const YIELDS,
        spins = const SPINS,
        out("rax") _, out("rcx") _, out("rdx") _, out("r8") _, out("r11") _,
        out("ymm0") _,
        out("ymm1") _,
        out("ymm2") _,
        out("ymm3") _,
        out("ymm4") _,
        out("ymm5") _,
        out("ymm6") _,
        out("ymm7") _,
        out("ymm8") _,
        out("ymm9") _,
        out("ymm10") _,
        out("ymm11") _,
        out("ymm12") _,
        out("ymm13") _,
        out("ymm14") _,
        out("ymm15") _,
        );
    }
}

/// Fills ZMM0-31, lets other tasks run, stores them back.
fn zmm_roundtrip(pattern: &[u32; 32]) -> Vec<u32> {
    let mut out = vec![0u32; 32 * 16];
    // SAFETY: AVX-512F was detected by the caller; the asm reads 32 dwords
    // of `pattern` and writes 32 * 64 bytes of `out`.
    unsafe { zmm_asm(pattern.as_ptr(), out.as_mut_ptr()) };
    out
}

#[target_feature(enable = "avx512f")]
unsafe fn zmm_asm(pattern: *const u32, out: *mut u32) {
    // SAFETY: see zmm_roundtrip; sched_yield clobbers only rax, rcx, r11.
    unsafe {
        asm!(
        "vpbroadcastd zmm0, dword ptr [rdi + 0]",
        "vpbroadcastd zmm1, dword ptr [rdi + 4]",
        "vpbroadcastd zmm2, dword ptr [rdi + 8]",
        "vpbroadcastd zmm3, dword ptr [rdi + 12]",
        "vpbroadcastd zmm4, dword ptr [rdi + 16]",
        "vpbroadcastd zmm5, dword ptr [rdi + 20]",
        "vpbroadcastd zmm6, dword ptr [rdi + 24]",
        "vpbroadcastd zmm7, dword ptr [rdi + 28]",
        "vpbroadcastd zmm8, dword ptr [rdi + 32]",
        "vpbroadcastd zmm9, dword ptr [rdi + 36]",
        "vpbroadcastd zmm10, dword ptr [rdi + 40]",
        "vpbroadcastd zmm11, dword ptr [rdi + 44]",
        "vpbroadcastd zmm12, dword ptr [rdi + 48]",
        "vpbroadcastd zmm13, dword ptr [rdi + 52]",
        "vpbroadcastd zmm14, dword ptr [rdi + 56]",
        "vpbroadcastd zmm15, dword ptr [rdi + 60]",
        "vpbroadcastd zmm16, dword ptr [rdi + 64]",
        "vpbroadcastd zmm17, dword ptr [rdi + 68]",
        "vpbroadcastd zmm18, dword ptr [rdi + 72]",
        "vpbroadcastd zmm19, dword ptr [rdi + 76]",
        "vpbroadcastd zmm20, dword ptr [rdi + 80]",
        "vpbroadcastd zmm21, dword ptr [rdi + 84]",
        "vpbroadcastd zmm22, dword ptr [rdi + 88]",
        "vpbroadcastd zmm23, dword ptr [rdi + 92]",
        "vpbroadcastd zmm24, dword ptr [rdi + 96]",
        "vpbroadcastd zmm25, dword ptr [rdi + 100]",
        "vpbroadcastd zmm26, dword ptr [rdi + 104]",
        "vpbroadcastd zmm27, dword ptr [rdi + 108]",
        "vpbroadcastd zmm28, dword ptr [rdi + 112]",
        "vpbroadcastd zmm29, dword ptr [rdi + 116]",
        "vpbroadcastd zmm30, dword ptr [rdi + 120]",
        "vpbroadcastd zmm31, dword ptr [rdi + 124]",
        "mov r8, {yields}",
        "2:",
        "mov rdx, {spins}",
        "3:",
        "dec rdx",
        "jnz 3b",
        "mov eax, 24",
        "syscall",
        "dec r8",
        "jnz 2b",
        "vmovdqu32 zmmword ptr [rsi + 0], zmm0",
        "vmovdqu32 zmmword ptr [rsi + 64], zmm1",
        "vmovdqu32 zmmword ptr [rsi + 128], zmm2",
        "vmovdqu32 zmmword ptr [rsi + 192], zmm3",
        "vmovdqu32 zmmword ptr [rsi + 256], zmm4",
        "vmovdqu32 zmmword ptr [rsi + 320], zmm5",
        "vmovdqu32 zmmword ptr [rsi + 384], zmm6",
        "vmovdqu32 zmmword ptr [rsi + 448], zmm7",
        "vmovdqu32 zmmword ptr [rsi + 512], zmm8",
        "vmovdqu32 zmmword ptr [rsi + 576], zmm9",
        "vmovdqu32 zmmword ptr [rsi + 640], zmm10",
        "vmovdqu32 zmmword ptr [rsi + 704], zmm11",
        "vmovdqu32 zmmword ptr [rsi + 768], zmm12",
        "vmovdqu32 zmmword ptr [rsi + 832], zmm13",
        "vmovdqu32 zmmword ptr [rsi + 896], zmm14",
        "vmovdqu32 zmmword ptr [rsi + 960], zmm15",
        "vmovdqu32 zmmword ptr [rsi + 1024], zmm16",
        "vmovdqu32 zmmword ptr [rsi + 1088], zmm17",
        "vmovdqu32 zmmword ptr [rsi + 1152], zmm18",
        "vmovdqu32 zmmword ptr [rsi + 1216], zmm19",
        "vmovdqu32 zmmword ptr [rsi + 1280], zmm20",
        "vmovdqu32 zmmword ptr [rsi + 1344], zmm21",
        "vmovdqu32 zmmword ptr [rsi + 1408], zmm22",
        "vmovdqu32 zmmword ptr [rsi + 1472], zmm23",
        "vmovdqu32 zmmword ptr [rsi + 1536], zmm24",
        "vmovdqu32 zmmword ptr [rsi + 1600], zmm25",
        "vmovdqu32 zmmword ptr [rsi + 1664], zmm26",
        "vmovdqu32 zmmword ptr [rsi + 1728], zmm27",
        "vmovdqu32 zmmword ptr [rsi + 1792], zmm28",
        "vmovdqu32 zmmword ptr [rsi + 1856], zmm29",
        "vmovdqu32 zmmword ptr [rsi + 1920], zmm30",
        "vmovdqu32 zmmword ptr [rsi + 1984], zmm31",
        in("rdi") pattern,
        in("rsi") out,
        yields = const YIELDS,
        spins = const SPINS,
        out("rax") _, out("rcx") _, out("rdx") _, out("r8") _, out("r11") _,
        out("zmm0") _,
        out("zmm1") _,
        out("zmm2") _,
        out("zmm3") _,
        out("zmm4") _,
        out("zmm5") _,
        out("zmm6") _,
        out("zmm7") _,
        out("zmm8") _,
        out("zmm9") _,
        out("zmm10") _,
        out("zmm11") _,
        out("zmm12") _,
        out("zmm13") _,
        out("zmm14") _,
        out("zmm15") _,
        out("zmm16") _,
        out("zmm17") _,
        out("zmm18") _,
        out("zmm19") _,
        out("zmm20") _,
        out("zmm21") _,
        out("zmm22") _,
        out("zmm23") _,
        out("zmm24") _,
        out("zmm25") _,
        out("zmm26") _,
        out("zmm27") _,
        out("zmm28") _,
        out("zmm29") _,
        out("zmm30") _,
        out("zmm31") _,
        );
    }
}

/// This thread's FS base must stay glibc's TCB (whose first word points to
/// itself) and a GS base set to a cell holding `tag` must keep reading `tag`.
/// Returns the number of mismatches.
fn check_bases(tag: u32) -> u32 {
    let cell = Box::new(u64::from(tag) | 0x5a5a_0000_0000_0000);
    let cell_addr = &*cell as *const u64 as u64;
    // SAFETY: arch_prctl(ARCH_SET_GS) with an address we keep alive; nothing
    // else in this program uses GS.
    if unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1001, cell_addr) } != 0 {
        println!(
            "fpu-leak: ARCH_SET_GS failed: {}",
            std::io::Error::last_os_error()
        );
        return 1;
    }
    let mut errors = 0;
    for round in 0..ROUNDS {
        for _ in 0..YIELDS {
            // SAFETY: sched_yield has no arguments.
            unsafe { libc::sched_yield() };
        }
        let (fs_base, fs_self, gs_word) = read_bases();
        let gs_base = get_base(0x1004);
        let ok = fs_base == fs_self && gs_word == *cell && gs_base == cell_addr;
        if !ok && errors < 3 {
            println!(
                "fpu-leak: tag {tag} round {round}: fs base {fs_base:#x} %fs:0 {fs_self:#x}, gs base {gs_base:#x} (want {cell_addr:#x}) %gs:0 {gs_word:#x} (want {:#x})",
                *cell
            );
        }
        errors += u32::from(!ok);
    }
    errors
}

/// ARCH_GET_FS (0x1003) or ARCH_GET_GS (0x1004).
fn get_base(code: libc::c_int) -> u64 {
    let mut base = 0u64;
    // SAFETY: arch_prctl GET writes one u64 to the pointer we pass.
    unsafe { libc::syscall(libc::SYS_arch_prctl, code, &mut base as *mut u64) };
    base
}

/// (FS base from the kernel, %fs:0, %gs:0)
fn read_bases() -> (u64, u64, u64) {
    let fs_base = get_base(0x1003);
    let (fs_self, gs_word): (u64, u64);
    // SAFETY: %fs:0 is glibc's TCB self pointer, %gs:0 our cell (set above).
    unsafe {
        asm!("mov {0}, qword ptr fs:[0]", "mov {1}, qword ptr gs:[0]", out(reg) fs_self, out(reg) gs_word);
    }
    (fs_base, fs_self, gs_word)
}
