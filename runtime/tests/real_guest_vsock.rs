//! A real guest with the vsock device: the guest says hello to a host
//! listener at `<uds>_<port>`, then echoes a host connection made with
//! `CONNECT <port>`; 1 MiB round-trips and is compared. Malformed CONNECT
//! lines and a port nothing listens on get the host connection closed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{guest_assets, kvm_or_skip, wait_for_console};

const GUEST_PORT: u32 = 1234;
const HOST_PORT: u32 = 5000;

/// Sends `line` on a fresh connection and expects the bridge to close it.
fn rejected(uds: &std::path::Path, line: &[u8]) {
    let mut s = UnixStream::connect(uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(line).unwrap();
    let mut buf = Vec::new();
    // Closed either way: EOF, or a reset when the bridge drops unread input.
    match s.read_to_end(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!(
            "{:?} was not refused: {other:?}, got {:?}",
            String::from_utf8_lossy(line),
            String::from_utf8_lossy(&buf)
        ),
    }
}

#[test]
fn guest_vsock_round_trips_through_the_unix_bridge() {
    if !kvm_or_skip("guest_vsock_round_trips_through_the_unix_bridge") {
        return;
    }
    let assets = guest_assets();
    let dir = std::env::temp_dir().join(format!("husk-vsock-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    let console = dir.join("console");
    let host_listener = UnixListener::bind(format!("{}_{HOST_PORT}", uds.display())).unwrap();
    let hello = std::thread::spawn(move || {
        let (mut s, _) = host_listener.accept().unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    });

    let mut child = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(["vm", "--mem", "256M", "--cpus", "1"])
        .arg("--cmdline")
        .arg(format!(
            "console=ttyS0 reboot=k panic=-1 -- vsock {GUEST_PORT} {HOST_PORT}"
        ))
        .arg("--vsock")
        .arg(format!("cid=3,uds={}", uds.display()))
        .arg("--kernel")
        .arg(&assets.kernel)
        .arg("--initrd")
        .arg(&assets.initrd)
        .arg("--console")
        .arg(&console)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_console(
        &console,
        &format!("HUSK-VSOCK-LISTENING {GUEST_PORT}"),
        &mut child,
    );
    assert_eq!(hello.join().unwrap(), "hello from the guest\n");

    rejected(&uds, b"CONNECT banana\n");
    rejected(&uds, format!("CONNECT {}\n", "9".repeat(40)).as_bytes());
    rejected(&uds, b"CONNECT 999\n");

    let stream = UnixStream::connect(&uds).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    (&stream)
        .write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())
        .unwrap();
    let mut reader = BufReader::new(&stream);
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("OK ") && ok.ends_with('\n'), "{ok:?}");

    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sent = data.clone();
    let mut writer = stream.try_clone().unwrap();
    let send = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    reader.read_to_end(&mut back).unwrap();
    send.join().unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ");

    let out = child.wait_with_output().unwrap();
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(
        text.contains(&format!("HUSK-VSOCK-ECHOED {}", data.len())),
        "{text}"
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !uds.exists(),
        "the bridge socket is removed when the VM ends"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
