//! Real guests: the project's kernel and initramfs booted on this machine's
//! /dev/kvm by the embedded VMM (`VmHandle`), and the panic case by the
//! `husk vm` command, whose error line is what a user sees. Slow where
//! /dev/kvm is software (a minute or more per boot), so boots run two at a
//! time and each one asserts as much as it can.

mod common;

use std::process::Command;

use common::{boot, guest_assets, kvm_or_skip, GuestRun};

/// The kernel saw `cpus` CPUs and about 256 MiB, and started /init.
fn assert_booted(c: &str, cpus: u8) {
    let want = if cpus == 1 {
        "smp: Brought up 1 node, 1 CPU".to_string()
    } else {
        format!("smp: Brought up 1 node, {cpus} CPUs")
    };
    assert!(c.contains(&want), "no {want:?} on the console:\n{c}");
    let total_kib: u64 = c
        .lines()
        .find_map(|l| l.split("Memory: ").nth(1))
        .and_then(|m| m.split('/').nth(1))
        .and_then(|t| t.split('K').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no Memory: line on the console:\n{c}"));
    // 256 MiB less the BIOS hole and page 0.
    assert!(
        (255 * 1024..=256 * 1024).contains(&total_kib),
        "guest saw {total_kib} KiB"
    );
    assert!(
        c.contains("Run /init as init process"),
        "/init was not started:\n{c}"
    );
}

#[test]
fn boots_runs_user_space_and_reports_a_panic() {
    if !kvm_or_skip("boots_runs_user_space_and_reports_a_panic") {
        return;
    }
    let assets = guest_assets();
    // Two guests at a time: on a 2-core software-KVM host more than that
    // starves the emulated guest kernels (timer handlers outrun the CPU).
    let [one, two] = in_parallel([(&assets.initrd, 1, ""), (&assets.initrd, 2, "")]);
    let busybox = std::thread::spawn(|| {
        boot(
            &guest_assets().busybox_initrd,
            1,
            r#"run /bin/busybox sh -c "echo ok; ls /; cat /proc/uptime""#,
        )
    });
    let (panic_console, panic_out) = panic_through_the_cli();
    let results = [(1u8, one), (2, two)];

    assert_busybox_ran(&busybox.join().unwrap());
    assert_booted(&panic_console, 1);
    assert!(
        !panic_out.status.success(),
        "a panicking guest must fail husk vm"
    );
    let err = String::from_utf8_lossy(&panic_out.stderr);
    let first = err
        .lines()
        .find(|l| l.contains("husk: error:"))
        .unwrap_or_else(|| panic!("no error line:\n{err}"));
    assert!(
        first.contains("guest kernel panicked: ")
            && first.contains("Kernel panic - not syncing: Attempted to kill init!"),
        "{first}"
    );

    // The init's own exit status 3 (0x300), not a crash of it.
    assert!(first.contains("exitcode=0x00000300"), "{first}");

    for (cpus, run) in &results {
        assert_booted(&run.console, *cpus);
        assert!(
            run.console.contains("HUSK-SELFTEST-PASS"),
            "self-test did not pass:\n{}",
            run.console
        );
        // The init powered the guest off, and husk saw it as such.
        assert!(run.console.contains("System halted"), "{}", run.console);
        run.assert_powered_off();
    }
}

/// `husk vm` with an init that exits: the console and the command's result.
fn panic_through_the_cli() -> (String, std::process::Output) {
    let assets = guest_assets();
    let console =
        std::env::temp_dir().join(format!("husk-real-panic-{}.console", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(["vm", "--mem", "256M", "--cpus", "1"])
        .args(["--cmdline", "console=ttyS0 reboot=k panic=-1 -- exit"])
        .arg("--kernel")
        .arg(&assets.kernel)
        .arg("--initrd")
        .arg(&assets.initrd)
        .arg("--console")
        .arg(&console)
        .output()
        .expect("running husk vm");
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    let _ = std::fs::remove_file(&console);
    (text, out)
}

/// busybox's `sh -c 'echo ok; ls /; cat /proc/uptime'` as a guest process.
fn assert_busybox_ran(run: &GuestRun) {
    let c = &run.console;
    let after_init = c
        .split("Run /init as init process")
        .nth(1)
        .unwrap_or_else(|| panic!("no /init:\n{c}"));
    let lines: Vec<&str> = after_init.lines().map(str::trim).collect();
    assert!(lines.contains(&"ok"), "no 'ok' line:\n{after_init}");
    for entry in ["bin", "dev", "init", "proc", "sys"] {
        assert!(
            after_init.split_whitespace().any(|w| w == entry),
            "ls / does not list {entry}:\n{after_init}"
        );
    }
    let uptime = lines
        .iter()
        .find_map(|l| {
            let mut it = l.split(' ');
            let (a, b) = (
                it.next()?.parse::<f64>().ok()?,
                it.next()?.parse::<f64>().ok()?,
            );
            it.next().is_none().then_some((a, b))
        })
        .unwrap_or_else(|| panic!("no /proc/uptime line:\n{after_init}"));
    assert!(uptime.0 > 0.0, "uptime {uptime:?}");
    assert!(
        c.contains("HUSK-RUN-EXIT Some(0)"),
        "busybox sh did not exit 0:\n{after_init}"
    );
    run.assert_powered_off();
}

/// Boots two guests at once: (initrd, vCPUs, init arguments).
fn in_parallel(guests: [(&std::path::Path, u8, &'static str); 2]) -> [GuestRun; 2] {
    let handles = guests.map(|(initrd, cpus, args)| {
        let initrd = initrd.to_path_buf();
        std::thread::spawn(move || boot(&initrd, cpus, args))
    });
    handles.map(|h| h.join().expect("boot thread"))
}
