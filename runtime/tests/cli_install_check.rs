//! `husk install` puts everything in place under a prefix and writes a
//! config that loads; `husk check` reports this host item by item and
//! fails when the kernel is missing.

mod common;

use std::process::Command;

use common::guest_assets;
use husk_runtime::config::HuskConfig;

fn husk(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn install_puts_binary_shim_guest_and_config_in_place() {
    let a = guest_assets();
    let prefix = std::env::temp_dir().join(format!("husk-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&prefix);
    let config = prefix.join("etc/husk/config.toml");
    let p = |x: &std::path::Path| x.display().to_string();
    let args = [
        "install",
        "--prefix",
        &p(&prefix),
        "--config",
        &p(&config),
        "--kernel",
        &p(&a.kernel),
        "--image",
        &p(&a.agent_image),
        "--initrd",
        &p(&a.agent_initrd),
    ];
    let out = husk(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(r#"runtime_type = "io.containerd.husk.v2""#),
        "{text}"
    );
    assert!(text.contains("version 3"), "{text}");
    let link = prefix.join("bin/containerd-shim-husk-v2");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        std::path::Path::new("husk")
    );
    assert!(prefix.join("bin/husk").is_file());
    let c = HuskConfig::from_file(&config).unwrap();
    assert_eq!(c.guest.kernel, prefix.join("share/husk/vmlinux"));
    assert_eq!(
        std::fs::read(&c.guest.image).unwrap(),
        std::fs::read(&a.agent_image).unwrap()
    );
    c.check_guest_files().unwrap();

    // A second install keeps the config someone may have edited.
    std::fs::write(&config, "[guest]\nvcpus = 2\n").unwrap();
    let out = husk(&args);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept the existing config"));
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "[guest]\nvcpus = 2\n"
    );

    // The installed shim answers as the shim.
    let v = Command::new(&link).arg("-v").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains("containerd-shim-husk-v2 (husk)"));
    std::fs::remove_dir_all(&prefix).unwrap();
}

#[test]
fn check_reports_each_item_and_fails_without_a_kernel() {
    let a = guest_assets();
    let dir = std::env::temp_dir().join(format!("husk-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    let write = |kernel: &std::path::Path| {
        let text = format!(
            "[guest]\nkernel = \"{}\"\nimage = \"{}\"\ninitrd = \"{}\"\n",
            kernel.display(),
            a.agent_image.display(),
            a.agent_initrd.display()
        );
        std::fs::write(&config, text).unwrap();
    };
    write(&a.kernel);
    let out = husk(&["check", "--config", &config.display().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    for item in [
        "/dev/kvm",
        "config",
        "compat",
        "kernel",
        "image",
        "cgroups",
        "containerd",
    ] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(item)),
            "no {item} line:\n{text}"
        );
    }
    assert!(!text.contains("FAIL"), "{text}");

    write(&dir.join("missing-vmlinux"));
    let out = husk(&["check", "--config", &config.display().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("missing-vmlinux")),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
