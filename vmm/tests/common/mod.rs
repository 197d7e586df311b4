#![allow(dead_code)] // each test file uses a different part
//! Shared helpers for KVM tests: the skip rule and a tiny assembler driver.

use std::path::{Path, PathBuf};
use std::process::Command;

pub use husk_vmm::testing::kvm_or_skip;

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("husk-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (binutils is installed by ci/setup.sh)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Assembles GNU-as source into a flat binary loaded at `org`.
pub fn assemble_flat(dir: &Path, source: &str, org: u64) -> Vec<u8> {
    let (src, obj, bin) = (dir.join("flat.s"), dir.join("flat.o"), dir.join("flat.bin"));
    std::fs::write(&src, source).unwrap();
    run(Command::new("as").arg("--64").arg("-o").arg(&obj).arg(&src));
    let elf = dir.join("flat.elf");
    run(Command::new("ld")
        .args(["-m", "elf_x86_64", &format!("-Ttext={org:#x}"), "-o"])
        .arg(&elf)
        .arg(&obj));
    run(Command::new("objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(&elf)
        .arg(&bin));
    std::fs::read(bin).unwrap()
}

/// Assembles GNU-as source into an ELF64 executable linked at `org`.
pub fn assemble_elf(dir: &Path, source: &str, org: u64) -> PathBuf {
    let (src, obj, elf) = (
        dir.join("guest.s"),
        dir.join("guest.o"),
        dir.join("guest.elf"),
    );
    std::fs::write(&src, source).unwrap();
    run(Command::new("as").arg("--64").arg("-o").arg(&obj).arg(&src));
    run(Command::new("ld")
        .args(["-m", "elf_x86_64", &format!("-Ttext={org:#x}"), "-o"])
        .arg(&elf)
        .arg(&obj));
    elf
}
