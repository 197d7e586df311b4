//! A tiny PVH guest, booted through the whole `Vm` path, reports from inside
//! the guest what the PVH boot protocol promises: EBX pointing at a valid
//! hvm_start_info, flat 32-bit protected mode with paging off, the e820 map,
//! the initrd module and the command line. It prints them in hex on COM1 and
//! resets through the i8042; the test checks the report.

mod common;

use husk_vmm::boot::params::{e820_map, E820_RAM};
use husk_vmm::{CompatMode, ConsoleTarget, ExitReason, Vm, VmConfig, VmOutcome};

const GUEST: &str = r#"
.section .note.Xen, "a", @note
.align 4
.long 4, 4, 18              # name size, desc size, XEN_ELFNOTE_PHYS32_ENTRY
.asciz "Xen"
.long _start

.text
.code32
.globl _start
_start:
    mov $0x80000, %esp
    mov %ebx, %eax
    call hex32              # EBX: start info address
    call space
    mov %cr0, %eax
    call hex32              # CR0
    call space
    xor %eax, %eax
    mov %cs, %ax
    call hex32              # CS selector
    call space
    mov %ds, %ax
    call hex32              # DS selector
    call newline
    mov %ebx, %esi
    mov $56, %ecx
    call dump               # hvm_start_info
    call newline
    mov 40(%ebx), %esi      # memmap_paddr
    mov 48(%ebx), %ecx      # memmap_entries
    imul $24, %ecx
    call dump
    call newline
    mov 16(%ebx), %esi      # modlist_paddr
    mov 12(%ebx), %ecx      # nr_modules
    shl $5, %ecx
    call dump
    call newline
    mov 24(%ebx), %esi      # cmdline_paddr
1:  lodsb
    test %al, %al
    jz 2f
    call putc
    jmp 1b
2:  call newline
    mov $0xfe, %al
    out %al, $0x64          # i8042 pulse reset: the VM ends
3:  jmp 3b

hex32:                      # eax as 8 hex digits
    push %ecx
    mov $8, %ecx
1:  rol $4, %eax
    push %eax
    and $0xf, %al
    call nibble
    pop %eax
    loop 1b
    pop %ecx
    ret
dump:                       # ecx bytes at esi as hex
    test %ecx, %ecx
    jz 2f
1:  lodsb
    push %eax
    shr $4, %al
    call nibble
    pop %eax
    and $0xf, %al
    call nibble
    loop 1b
2:  ret
nibble:
    add $'0', %al
    cmp $'9', %al
    jbe 1f
    add $7, %al
1:  jmp putc
space:
    mov $' ', %al
    jmp putc
newline:
    mov $'\n', %al
putc:
    push %edx
    mov $0x3f8, %dx
    out %al, %dx
    pop %edx
    ret
"#;

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

#[test]
fn pvh_guest_sees_the_promised_boot_state() {
    if !common::kvm_or_skip("pvh_guest_sees_the_promised_boot_state") {
        return;
    }
    let dir = common::temp_dir("pvh-boot");
    let kernel = common::assemble_elf(&dir, GUEST, 0x100000);
    let initrd = dir.join("initrd");
    std::fs::write(&initrd, vec![0x42u8; 12345]).unwrap();
    let console = dir.join("console");
    let mem_bytes = 64u64 << 20;
    let config = VmConfig {
        kernel,
        initrd: Some(initrd),
        mem_bytes,
        cpus: 1,
        cmdline: Some("husk.test=pvh console=ttyS0".into()),
        console: ConsoleTarget::File(console.clone()),
        compat: CompatMode::Off,
        on_first_entry: None,
        vsock: None,
        pmem: Vec::new(),
        fs: Vec::new(),
        net: Vec::new(),
        template: None,
        seccomp: true,
    };
    let vm = Vm::new(&config).unwrap();
    let metrics = vm.metrics();
    let report = vm.run().unwrap();
    assert_eq!(report.outcome, VmOutcome::Reset);

    let text = std::fs::read_to_string(&console).unwrap();
    // Every console byte was one port write; the VM counted each exit.
    assert!(
        metrics.exits(ExitReason::IoOut) >= text.len() as u64,
        "{} io_out exits for {} console bytes",
        metrics.exits(ExitReason::IoOut),
        text.len()
    );
    assert!(metrics.first_entry_ns().is_some());
    assert_eq!(metrics.mem_bytes, mem_bytes);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "console: {text}");
    let regs: Vec<u32> = lines[0]
        .split(' ')
        .map(|h| u32::from_str_radix(h, 16).unwrap())
        .collect();
    let (ebx, cr0, cs, ds) = (regs[0], regs[1], regs[2], regs[3]);
    assert_eq!(cr0 & 1, 1, "protected mode");
    assert_eq!(cr0 >> 31, 0, "paging off");
    assert_ne!(cs, 0, "a real code selector");
    assert_ne!(ds, 0, "a real data selector");

    let info = hex_bytes(lines[1]);
    assert_eq!(info.len(), 56);
    assert_eq!(u32_at(&info, 0), 0x336e_c578, "hvm_start_info magic");
    assert!(u32_at(&info, 4) >= 1, "version");
    assert_eq!(u32_at(&info, 12), 1, "one module: the initrd");
    assert!(ebx < 0x100000, "start info below 1 MiB");

    let memmap = hex_bytes(lines[2]);
    let expected = e820_map(mem_bytes);
    assert_eq!(memmap.len(), expected.len() * 24);
    let mut ram = 0;
    for (entry, (addr, size, kind)) in memmap.chunks(24).zip(&expected) {
        assert_eq!(
            (u64_at(entry, 0), u64_at(entry, 8), u32_at(entry, 16)),
            (*addr, *size, *kind)
        );
        if *kind == E820_RAM {
            ram += size;
        }
    }
    assert_eq!(
        ram,
        mem_bytes - (0x100000 - 0x9fc00),
        "all RAM but the BIOS hole is usable"
    );

    let module = hex_bytes(lines[3]);
    let (paddr, size) = (u64_at(&module, 0), u64_at(&module, 8));
    assert_eq!(size, 12345);
    assert_eq!(paddr % 4096, 0);
    assert!(paddr + size <= mem_bytes);
    assert_eq!(lines[4], "husk.test=pvh console=ttyS0");
    std::fs::remove_dir_all(dir).unwrap();
}
