//! A real guest with the vsock device: 16 MiB echoed full duplex (the host
//! writes and reads at once) with 64 KiB guest reads and writes, over a
//! guest-initiated connection (the guest connects to `<uds>_<port>`) and a
//! host-initiated one (`CONNECT <port>`), each checksummed. In between,
//! malformed CONNECT lines and a port nothing listens on get the host
//! connection closed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use common::{guest_assets, kvm_or_skip, vm_config, TestVm, BOOT_TIMEOUT};
use husk_vmm::VsockSpec;

const GUEST_PORT: u32 = 1234;
const HOST_PORT: u32 = 5000;
const TOTAL: usize = 16 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(600);

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

fn pattern(seed: u32) -> Vec<u8> {
    (0..TOTAL as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes `data` on one thread while reading the echo on this one; checks
/// the echo's length and checksum and says how long it took.
fn echo_full_duplex(what: &str, writer: UnixStream, reader: &mut impl Read, data: Vec<u8>) {
    let want = fnv1a(&data);
    let start = Instant::now();
    let send = std::thread::spawn(move || {
        let mut writer = writer;
        writer.write_all(&data).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(TOTAL);
    reader
        .read_to_end(&mut back)
        .unwrap_or_else(|e| panic!("{what}: reading the echo after {} bytes: {e}", back.len()));
    send.join().unwrap();
    assert_eq!(back.len(), TOTAL, "{what}: echo length");
    assert_eq!(fnv1a(&back), want, "{what}: echo checksum");
    eprintln!("{what}: 16 MiB echoed in {:.1?}", start.elapsed());
}

/// Accepts one connection, failing with the console if the VM ends first.
fn accept_while_running(listener: &UnixListener, guest: &TestVm) -> UnixStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        assert!(
            !guest.vm.is_finished(),
            "the VM ended before the guest connected:\n{}",
            guest.console.text()
        );
        assert!(
            Instant::now() < deadline,
            "the guest never connected:\n{}",
            guest.console.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn guest_vsock_echoes_16_mib_full_duplex_both_ways() {
    if !kvm_or_skip("guest_vsock_echoes_16_mib_full_duplex_both_ways") {
        return;
    }
    let assets = guest_assets();
    let dir = std::env::temp_dir().join(format!("husk-vsock-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    let host_listener = UnixListener::bind(format!("{}_{HOST_PORT}", uds.display())).unwrap();

    let mut config = vm_config(
        256,
        1,
        &format!("console=ttyS0 reboot=k panic=-1 -- vsock {HOST_PORT} {GUEST_PORT}"),
    );
    config.initrd = Some(assets.initrd.clone());
    config.vsock = Some(VsockSpec {
        cid: 3,
        uds: uds.clone(),
    });
    let guest = TestVm::start(&config);

    // Guest-initiated: the guest connects to HOST_PORT and echoes.
    let guest_conn = accept_while_running(&host_listener, &guest);
    guest_conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut reader = guest_conn.try_clone().unwrap();
    echo_full_duplex("guest-initiated", guest_conn, &mut reader, pattern(1));

    guest.wait_for(&format!("HUSK-VSOCK-LISTENING {GUEST_PORT}"));
    rejected(&uds, b"CONNECT banana\n");
    rejected(&uds, format!("CONNECT {}\n", "9".repeat(40)).as_bytes());
    rejected(&uds, b"CONNECT 999\n");

    // Host-initiated: CONNECT to the guest's listener, which echoes.
    let stream = UnixStream::connect(&uds).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    (&stream)
        .write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("OK ") && ok.ends_with('\n'), "{ok:?}");
    echo_full_duplex("host-initiated", stream, &mut reader, pattern(2));

    let run = guest.finish();
    assert!(
        run.console
            .contains(&format!("HUSK-VSOCK-ECHOED {TOTAL} {TOTAL}")),
        "{}",
        run.console
    );
    run.assert_powered_off();
    assert!(
        !uds.exists(),
        "the bridge socket is removed when the VM ends"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
