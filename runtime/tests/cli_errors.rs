//! Bad input to `husk vm`: each case is a one-line error naming the problem,
//! a non-zero exit, and no panic or backtrace.

use std::path::PathBuf;
use std::process::Command;

fn husk() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk"));
    cmd.env("RUST_BACKTRACE", "1");
    cmd
}

/// A file `name` holding `bytes` in `dir` (removed with it).
fn temp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Runs husk with `args` and returns its stderr, checking the failure shape.
fn fails_with(args: &[&str], expect: &[&str]) {
    let out = husk().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert_ne!(out.status.code(), Some(101), "{args:?} panicked: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
        "{stderr}"
    );
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(
        error_lines.len(),
        1,
        "one error line expected for {args:?}: {stderr}"
    );
    for e in expect {
        assert!(
            error_lines[0].contains(e),
            "{args:?}: {:?} does not mention {e:?}",
            error_lines[0]
        );
    }
}

#[test]
fn bad_input_gets_one_clear_line() {
    let files = tempfile::Builder::new()
        .prefix("husk-cli-")
        .tempdir()
        .unwrap();
    let not_kernel = temp(&files, "not-a-kernel", &[0x42; 4096]);
    let not_kernel = not_kernel.to_str().unwrap();
    let elf_garbage = temp(&files, "bad-elf", b"\x7fELF\x02\x01\x01garbage");
    let elf_garbage = elf_garbage.to_str().unwrap();
    fails_with(
        &["vm", "--kernel", "/nonexistent/vmlinux"],
        &["/nonexistent/vmlinux", "No such file"],
    );
    fails_with(
        &["vm", "--kernel", not_kernel],
        &[not_kernel, "neither an ELF vmlinux nor a bzImage"],
    );
    fails_with(&["vm", "--kernel", elf_garbage], &[elf_garbage, "ELF"]);
    fails_with(&["vm", "--kernel", not_kernel, "--cpus", "0"], &["0 vCPUs"]);
    fails_with(
        &["vm", "--kernel", not_kernel, "--mem", "8M"],
        &["8 MiB", "at least 16 MiB"],
    );
    fails_with(
        &["vm", "--kernel", not_kernel, "--mem", "64T"],
        &["more than this host has"],
    );
    fails_with(
        &["vm", "--kernel", not_kernel, "--mem", "lots"],
        &["invalid memory size"],
    );
    fails_with(&["vm", "--kernel", not_kernel, "--cpus", "300"], &["300"]);
}

#[test]
fn unreadable_initrd_is_named() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!(
            "SKIP unreadable_initrd_is_named: needs /dev/kvm to get as far as loading the initrd"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("husk-cli-initrd-{}", std::process::id()));
    let elf = loop_kernel(&dir);
    let elf = elf.to_str().unwrap();
    fails_with(
        &[
            "vm",
            "--kernel",
            elf,
            "--initrd",
            "/nonexistent/initrd.cpio",
        ],
        &["/nonexistent/initrd.cpio", "initrd"],
    );
    let dir_as_initrd = dir.to_str().unwrap();
    fails_with(
        &["vm", "--kernel", elf, "--initrd", dir_as_initrd],
        &[dir_as_initrd, "initrd"],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A loadable ELF kernel that only loops, assembled in `dir`: enough for
/// checks that run after the kernel loads (initrd, pmem images).
fn loop_kernel(dir: &std::path::Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let src = dir.join("k.s");
    std::fs::write(&src, ".globl _start\n_start: jmp _start\n").unwrap();
    let obj = dir.join("k.o");
    let elf = dir.join("k.elf");
    assert!(Command::new("as")
        .arg("-o")
        .arg(&obj)
        .arg(&src)
        .status()
        .unwrap()
        .success());
    assert!(Command::new("ld")
        .args(["-Ttext=0x1000000", "-o"])
        .arg(&elf)
        .arg(&obj)
        .status()
        .unwrap()
        .success());
    elf
}

#[test]
fn bad_pmem_options_and_images_are_named() {
    fails_with(
        &["vm", "--kernel", "/k", "--pmem", "/img,readonly"],
        &["--pmem", "\"readonly\"", "FILE[,ro]"],
    );
    fails_with(
        &["vm", "--kernel", "/k", "--pmem", ",ro"],
        &["--pmem", "FILE"],
    );
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIP pmem image checks: need /dev/kvm to get as far as mapping images");
        return;
    }
    let dir = std::env::temp_dir().join(format!("husk-cli-pmem-{}", std::process::id()));
    let elf = loop_kernel(&dir);
    let elf = elf.to_str().unwrap();
    let sized = |name: &str, len: u64| {
        let path = dir.join(name);
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (empty, odd, plain) = (
        sized("empty.img", 0),
        sized("odd.img", 3 << 20),
        sized("plain.img", 2 << 20),
    );
    let pmem = |img: &str| {
        vec!["vm", "--kernel", elf, "--pmem"]
            .into_iter()
            .chain([img])
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let run = |args: Vec<String>, expect: &[&str]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, expect);
    };
    run(
        pmem("/nonexistent/root.img,ro"),
        &["/nonexistent/root.img", "No such file"],
    );
    run(pmem(&empty), &[&empty, "is empty"]);
    run(
        pmem(&format!("{odd},ro")),
        &[&odd, "not a multiple of 2 MiB"],
    );
    run(
        pmem(&format!("{plain},ro")),
        &[&plain, "neither erofs nor ext4"],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_fs_shares_are_named() {
    fails_with(
        &["vm", "--kernel", "/k", "--fs", "data=/srv,cache=sometimes"],
        &["--fs", "\"sometimes\"", "none, auto or always"],
    );
    fails_with(
        &["vm", "--kernel", "/k", "--fs", "/srv"],
        &["--fs", "TAG=DIR"],
    );
    fails_with(
        &["vm", "--kernel", "/k", "--fs", "data=/srv,dax=huge"],
        &["--fs", "dax window", "\"huge\""],
    );
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIP virtio-fs share checks: need /dev/kvm to get as far as creating devices");
        return;
    }
    let dir = std::env::temp_dir().join(format!("husk-cli-fs-{}", std::process::id()));
    let elf = loop_kernel(&dir);
    let (elf, share) = (elf.to_str().unwrap(), dir.to_str().unwrap());
    let with_fs = |fs: &str, expect: &[&str]| {
        fails_with(&["vm", "--kernel", elf, "--fs", fs], expect);
    };
    with_fs(
        "data=/nonexistent/share",
        &["/nonexistent/share", "virtio-fs"],
    );
    with_fs(&format!("data={}/k.s", share), &["k.s", "not a directory"]);
    with_fs(&format!("data={share},dax=3M"), &["DAX window", "3145728"]);
    let long_tag = "t".repeat(37);
    with_fs(
        &format!("{long_tag}={share}"),
        &[&long_tag, "1 to 36 bytes"],
    );
    std::fs::remove_dir_all(dir).unwrap();
}
