//! Guest page tables walked by the VMM (`compat::guest_walk`): the guest
//! controls both its tables and its control registers, and the VMM walks
//! them to fetch instruction bytes and to complete `xsave`/`xrstor`.
//!
//! Guest memory is 256 KiB at 0 plus 64 KiB at 512 KiB (so leaves can
//! point into a hole), holding page-table entries the input plants; CR0/CR3/CR4/
//! EFER, CS base and the address are the input's. Checks, besides "no
//! panic": a translation keeps the page offset and stays below 2^52;
//! `translate_for_write` implies `translate` with the same answer;
//! `read_virt` reads what byte-wise translation reads; `instruction_bytes`
//! is at most 15 bytes and a prefix of that; and `write_virt`, which
//! promises a failed write changes nothing, changes nothing when it fails.

#![no_main]

use husk_vmm::compat::guest_walk::{
    instruction_bytes, read_virt, translate, translate_for_write, write_virt, MAX_INSN_LEN,
};
use kvm_bindings::kvm_sregs;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Small on purpose: every input copies all of guest memory twice to check
/// that a failed write changed nothing, and 64 pages hold more page tables
/// than the 64 entries an input plants can fill.
const LOW: u64 = 256 << 10;
const HIGH: u64 = 512 << 10;
const HIGH_LEN: u64 = 64 << 10;
/// Pages an entry can point at: the low region, the hole, the high region
/// and as many pages again beyond it.
const PAGES: u64 = (HIGH + HIGH_LEN) / 4096 + 16;
/// Longest read or write one input asks for: an XSAVE area is at most a few
/// pages, and longer buys nothing but time.
const MAX_LEN: usize = 3 * 4096;

/// A page-table entry: mostly pointing into guest memory so walks go deep.
#[derive(Arbitrary, Debug)]
enum Entry {
    /// Page `page` of guest memory (counted from 0, past the low region
    /// into the hole, the high region and beyond) with flag bits `flags`
    /// (P, RW, PS, ...).
    Page {
        page: u16,
        flags: u16,
    },
    Raw(u64),
}

impl Entry {
    fn value(&self) -> u64 {
        match *self {
            Entry::Page { page, flags } => {
                ((u64::from(page) % PAGES) << 12) | u64::from(flags & 0xfff)
            }
            Entry::Raw(v) => v,
        }
    }
}

/// A guest virtual address: by table indices (so it meets planted entries)
/// or raw.
#[derive(Arbitrary, Debug)]
enum Gva {
    Indices { idx: [u16; 5], offset: u16 },
    Raw(u64),
}

impl Gva {
    fn value(&self) -> u64 {
        match *self {
            Gva::Indices { idx, offset } => {
                let mut v = 0u64;
                for (level, i) in idx.iter().enumerate() {
                    v |= u64::from(i % 512) << (48 - 9 * level);
                }
                v | u64::from(offset % 4096)
            }
            Gva::Raw(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    cr0: u64,
    /// CR3's page within guest memory, or the raw value.
    cr3: Result<u16, u64>,
    cr4: u64,
    efer: u64,
    cs_base: u64,
    /// (8-byte slot within the low region, entry) pairs.
    entries: Vec<(u32, Entry)>,
    gva: Gva,
    len: u16,
    data: Vec<u8>,
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), LOW as usize),
        (GuestAddress(HIGH), HIGH_LEN as usize),
    ])
    .unwrap()
}

/// Translates and reads `len` bytes at `gva` one byte at a time.
fn bytewise(mem: &GuestMemoryMmap, s: &kvm_sregs, gva: u64, len: usize) -> Option<Vec<u8>> {
    (0..len as u64)
        .map(|i| {
            let gpa = translate(mem, s, gva.wrapping_add(i))?;
            mem.read_obj::<u8>(GuestAddress(gpa)).ok()
        })
        .collect()
}

fn snapshot(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut v = vec![0u8; (LOW + HIGH_LEN) as usize];
    mem.read_slice(&mut v[..LOW as usize], GuestAddress(0))
        .unwrap();
    mem.read_slice(&mut v[LOW as usize..], GuestAddress(HIGH))
        .unwrap();
    v
}

fuzz_target!(|input: Input| {
    let mem = memory();
    for (slot, entry) in input.entries.iter().take(64) {
        let at = u64::from(*slot) * 8 % LOW;
        mem.write_obj(entry.value(), GuestAddress(at)).unwrap();
    }
    let mut s = kvm_sregs {
        cr0: input.cr0,
        cr3: input
            .cr3
            .map_or_else(|raw| raw, |page| (u64::from(page) % (LOW / 4096)) << 12),
        cr4: input.cr4,
        efer: input.efer,
        ..Default::default()
    };
    s.cs.base = input.cs_base;
    let gva = input.gva.value();

    let read = translate(&mem, &s, gva);
    if let Some(gpa) = read {
        assert!(gpa < 1 << 52, "gpa {gpa:#x} beyond 52 bits");
        assert_eq!(gpa & 0xfff, gva & 0xfff, "page offset not kept");
    }
    if let Some(gpa) = translate_for_write(&mem, &s, gva) {
        assert_eq!(read, Some(gpa), "writable but not readable, or elsewhere");
    }

    let len = usize::from(input.len) % (MAX_LEN + 1);
    let mut buf = vec![0u8; len];
    let whole = read_virt(&mem, &s, gva, &mut buf).map(|()| buf);
    let by_byte = bytewise(&mem, &s, gva, len);
    assert_eq!(whole, by_byte, "read_virt and byte-wise reads differ");

    let insn = instruction_bytes(&mem, &s, gva);
    assert!(insn.len() <= MAX_INSN_LEN);
    let fetched = bytewise(&mem, &s, s.cs.base.wrapping_add(gva), insn.len());
    assert_eq!(fetched.as_deref(), Some(&insn[..]), "instruction bytes");

    let data = &input.data[..input.data.len().min(MAX_LEN)];
    let before = snapshot(&mem);
    if write_virt(&mem, &s, gva, data).is_none() {
        assert!(
            snapshot(&mem) == before,
            "a failed write_virt changed memory"
        );
    }
});
