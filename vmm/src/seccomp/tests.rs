//! The lists compile, keep out what no husk thread needs, and a filter
//! really kills the process with a report naming the call. Filters cannot
//! be removed, so tests that install one run in a child copy of this test
//! binary (`in_child`).

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use syscalls::Sysno;

use super::lists::{self, NEVER};
use super::*;

#[test]
fn every_list_compiles() {
    VmFilters::compile().unwrap();
    ThreadFilter::compile(ThreadKind::Runtime, vm_builder_allowlist()).unwrap();
}

#[test]
fn no_list_allows_what_no_husk_thread_needs() {
    let all = [
        ("vcpu", lists::vcpu_allowlist()),
        ("devices", lists::devices_allowlist()),
        ("vmm", lists::control_allowlist()),
        ("vm builder", vm_builder_allowlist()),
        ("all of the VMM", vmm_allowlist()),
    ];
    for (name, list) in &all {
        for call in NEVER {
            assert!(
                !list.mentions(*call),
                "the {name} list allows {}",
                call.name()
            );
        }
    }
}

#[test]
fn each_thread_kind_is_kept_from_what_it_does_not_do() {
    let vcpu = lists::vcpu_allowlist();
    for call in [
        Sysno::openat,
        Sysno::socket,
        Sysno::read,
        Sysno::mount,
        Sysno::clone3,
    ] {
        assert!(!vcpu.mentions(call), "vcpu allows {}", call.name());
    }
    assert!(
        !vcpu.allows_any_args(Sysno::ioctl),
        "vcpu ioctls are by request"
    );
    let devices = lists::devices_allowlist();
    for call in [
        Sysno::mount,
        Sysno::setns,
        Sysno::clone3,
        Sysno::bind,
        Sysno::listen,
    ] {
        assert!(!devices.mentions(call), "devices allows {}", call.name());
    }
    assert!(!devices.allows_any_args(Sysno::socket));
    let control = lists::control_allowlist();
    for call in [Sysno::socket, Sysno::connect, Sysno::mount, Sysno::clone3] {
        assert!(!control.mentions(call), "vmm allows {}", call.name());
    }
}

#[test]
fn the_vmm_list_holds_each_thread_list() {
    let all = vmm_allowlist();
    for list in [
        lists::vcpu_allowlist(),
        lists::devices_allowlist(),
        lists::control_allowlist(),
    ] {
        for name in list.names() {
            let call: Sysno = name.parse().unwrap();
            assert!(all.mentions(call), "{name}");
            if list.allows_any_args(call) {
                assert!(all.allows_any_args(call), "{name} with any arguments");
            }
        }
    }
}

#[test]
fn kvm_requests_have_kvms_numbers() {
    // From <linux/kvm.h>: _IO(KVMIO, 0x80), _IOR(KVMIO, 0x81, struct kvm_regs).
    assert_eq!(ioctls::KVM_RUN(), 0xae80);
    assert_eq!(ioctls::KVM_GET_REGS(), 0x8090_ae81);
    assert_eq!(ioctls::KVM_GET_XSAVE(), 0x9000_aea4);
    assert!(ioctls::vcpu_requests()
        .iter()
        .all(|r| r & ioctls::TYPE_MASK == ioctls::KVM_TYPE));
}

/// Runs the test `name` again in a child process with `HUSK_SECCOMP_CHILD`
/// set; returns its exit status and output (stdout, then stderr). In the
/// child, returns None.
fn in_child(name: &str) -> Option<(std::process::ExitStatus, String)> {
    if std::env::var_os("HUSK_SECCOMP_CHILD").is_some() {
        return None;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("HUSK_SECCOMP_CHILD", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status, text))
}

#[test]
fn a_call_outside_the_list_kills_the_process_with_a_line_naming_it() {
    let name = "seccomp::tests::a_call_outside_the_list_kills_the_process_with_a_line_naming_it";
    if let Some((status, stderr)) = in_child(name) {
        assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}: {stderr}");
        assert!(
            stderr.contains(
                "husk: seccomp: thread husk-vcpu-test (vcpu allowlist) called openat (system \
                 call 257), which its allowlist does not allow; killing the process"
            ),
            "{stderr}"
        );
        assert!(stderr.contains("allowed calls ran"), "{stderr}");
        return;
    }
    let filters = VmFilters::compile().unwrap();
    std::thread::Builder::new()
        .name("husk-vcpu-test".into())
        .spawn(move || {
            filters.vcpu.install().unwrap();
            // Allowed: memory, a log line, the time.
            let v = vec![1u8; 1 << 20];
            eprintln!("allowed calls ran ({} bytes)", v.len());
            let _ = std::time::SystemTime::now();
            // SAFETY: a valid path; the filter stops the call.
            unsafe { libc::openat(libc::AT_FDCWD, c"/dev/null".as_ptr(), libc::O_RDONLY) };
            unreachable!("openat went through");
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn the_device_list_lets_a_thread_serve_files() {
    let name = "seccomp::tests::the_device_list_lets_a_thread_serve_files";
    if let Some((status, output)) = in_child(name) {
        assert!(status.success(), "{status:?}: {output}");
        assert!(
            output.contains("1 passed"),
            "the child ran the test: {output}"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("husk-seccomp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let filters = VmFilters::compile().unwrap();
    let inner = dir.clone();
    std::thread::spawn(move || {
        filters.devices.install().unwrap();
        // What a FUSE server does, through std (openat, write, fsync,
        // statx, renameat2 or rename, unlinkat...): calls the list must allow.
        let f = inner.join("a");
        std::fs::write(&f, b"data").unwrap();
        std::fs::File::open(&f).unwrap().sync_all().unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 4);
        std::fs::remove_file(&f).unwrap();
    })
    .join()
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
