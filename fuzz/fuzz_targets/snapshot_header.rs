//! A template directory with arbitrary `template.json`, `state.json` and
//! `memory.bin`, through the checks a restore makes before it touches KVM:
//! `Template::open` (header parse, versions, state digest, state parse,
//! vCPU count), the `require`/`require_file` comparisons `check_config`
//! makes with header values, `memory::verify` of the memory file, the RAM
//! ranges of the header's memory size, and the checks of the saved queues and
//! vsock connections. Every refusal must be an error, never a panic.

#![no_main]

use std::path::Path;

use husk_devices::virtio::DeviceState;
use husk_vmm::snapshot::format::{sha256_hex, HEADER_FILE, HUSK_VERSION, MEMORY_FILE, STATE_FILE};
use husk_vmm::snapshot::{memory, Template};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::tempdir::TempDir;

/// Replaced in the header by the state file's real digest, so inputs get
/// past the integrity check (a fuzzer cannot forge a sha256).
const STATE_DIGEST: &[u8] = b"@STATE@";
/// Replaced by this build's version, which a saved seed would otherwise
/// pin to one release.
const VERSION: &[u8] = b"@HUSK@";
/// The device's connection limit the vsock check is held to.
const MAX_CONNS: usize = 128;

fn replace(hay: &[u8], what: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut rest = hay;
    while let Some(at) = rest.windows(what.len()).position(|w| w == what) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + what.len()..];
    }
    out.extend_from_slice(rest);
    out
}

// What `vm::restore` checks once the template is open, short of KVM.
fn check_opened(t: &Template, dir: &Path) {
    let h = &t.header;
    let mib = |b: u64| format!("{} MiB", b >> 20);
    let _ = t.require("memory size", &mib(h.mem_bytes), &mib(256 << 20));
    let _ = t.require("vCPU count", &h.vcpus.to_string(), "1");
    let tags = h.devices.fs_tags.join(",");
    let _ = t.require("virtio-fs tags", &tags, "rootfs");
    // The caller's kernel and pmem image: a real file whose digest the
    // header's may or may not match, as in `check_config`.
    let given = dir.join("kernel");
    let _ = t.require_file("kernel", &h.kernel, &given);
    if let Some(initrd) = &h.initrd {
        let _ = t.require_file("initrd", initrd, &given);
    }
    for (made_with, _) in &h.devices.pmem {
        let _ = t.require_file("pmem image", made_with, &given);
    }
    for net in &h.devices.net {
        let _ = t.require("net device MAC", &net.mac.to_string(), "02:00:00:00:00:01");
        let _ = t.require("net device MTU", &net.mtu.to_string(), "1500");
    }
    let _ = memory::verify(&t.memory_path(), h.mem_bytes, h.memory_checksum);
    let ranges = husk_vmm::memory::ram_ranges(h.mem_bytes);
    let total: u64 = ranges.iter().map(|&(_, len)| len).sum();
    assert_eq!(total, h.mem_bytes, "RAM ranges {ranges:?} do not add up");
    for transport in &t.state.transports {
        let active = transport.active_queues.iter().flatten();
        for q in transport.queues.iter().chain(active) {
            let _ = q.to_queue();
        }
        if let Some(DeviceState::Vsock(v)) = &transport.device_state {
            let _ = v.check(MAX_CONNS);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // template.json NUL state.json NUL memory.bin: JSON holds no raw NUL.
    let mut parts = data.splitn(3, |&b| b == 0);
    let header = parts.next().unwrap_or_default();
    let state = parts.next().unwrap_or_default();
    let mem = parts.next().unwrap_or_default();

    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("husk-fuzz-template-")).unwrap();
    let path = dir.as_path();
    let header = replace(header, STATE_DIGEST, sha256_hex(state).as_bytes());
    let header = replace(&header, VERSION, HUSK_VERSION.as_bytes());
    std::fs::write(path.join(HEADER_FILE), header).unwrap();
    std::fs::write(path.join(STATE_FILE), state).unwrap();
    std::fs::write(path.join(MEMORY_FILE), mem).unwrap();
    std::fs::write(path.join("kernel"), b"a kernel").unwrap();

    if let Ok(t) = Template::open(path) {
        check_opened(&t, path);
    }
});
