//! `husk run --bundle` on a busybox bundle: the container's output on our
//! stdout, SIGINT to husk reaching the container (whose trap answers), the
//! container's exit status as husk's, and nothing left behind.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::containerd::husk_config;
use common::kvm_or_skip;

const SCRIPT: &str =
    "trap 'echo got-INT; exit 5' INT; echo hello from the bundle; while :; do sleep 1; done";

#[test]
fn husk_run_runs_a_bundle_and_forwards_sigint() {
    if !kvm_or_skip("husk_run_runs_a_bundle_and_forwards_sigint") {
        return;
    }
    let base = std::env::temp_dir().join(format!("husk-run-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let bundle = base.join("bundle");
    common::busybox_bundle(&bundle, &["sh", "-c", SCRIPT]);
    let state = base.join("state");
    let config = base.join("husk.toml");
    std::fs::write(&config, husk_config(&state)).unwrap();

    let mut husk = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(["run", "--id", "run1", "--config"])
        .arg(&config)
        .arg("--bundle")
        .arg(&bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(husk.stdout.take().unwrap()).lines();
    let first = lines.next().expect("output").unwrap();
    assert_eq!(first, "hello from the bundle");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(husk.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = husk.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut husk.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(rest, ["got-INT"], "{err}");
    assert_eq!(status.code(), Some(5), "the container's exit status: {err}");
    assert!(
        err.contains("booting sandbox run1"),
        "progress on stderr: {err}"
    );

    let sandboxes = state.join("sandboxes");
    let left: Vec<_> = std::fs::read_dir(&sandboxes)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "sandbox directories left: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&base.display().to_string()),
        "mounts left under {}",
        base.display()
    );
    std::fs::remove_dir_all(&base).unwrap();
}
