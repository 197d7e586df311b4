//! Host clients speaking the hybrid-vsock handshake (`CONNECT <port>\n`) to
//! the device's Unix socket with arbitrary bytes in arbitrary chunks, through
//! the real device, muxer and event loop (`vsock::harness::Harness`), while a
//! scripted guest drains RX and answers the REQUESTs it sees with RESPONSE or
//! RST. Checks that the muxer never holds more connections than its limit,
//! that a client only ever reads (a prefix of) `OK <port>\n` for a port the
//! guest accepted, and that after everything is closed the device serves a
//! fresh, well-formed connection.

#![no_main]

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use husk_devices::vsock::harness::{Harness, Hdr, OP_REQUEST, OP_RESPONSE, OP_RST};
use husk_devices::vsock::DEFAULT_HANDSHAKE_TIMEOUT;
use libfuzzer_sys::fuzz_target;

/// Small, so inputs reach the connection limit (handshakes count too).
const MAX_CONNS: usize = 4;
/// Live host clients at once; more than MAX_CONNS so the limit is hit.
const MAX_CLIENTS: usize = 8;
const MAX_STEPS: usize = 64;
/// The port the final liveness check connects to.
const CHECK_PORT: u32 = 5000;

enum Step<'a> {
    /// A new host client connects to the device's socket.
    Connect,
    /// Arbitrary bytes from a client (partial lines, junk, several lines).
    Write { client: u8, bytes: &'a [u8] },
    /// A well-formed `CONNECT` line from a client, cut after `cut` bytes so
    /// the rest can come in a later step (or never).
    Line { client: u8, port: u32, cut: u8 },
    /// A client closes, or half-closes its write side.
    Close { client: u8, half: bool },
    /// Every client reads what it has been sent.
    HostRead,
    /// The guest takes what the device put in RX and refills it.
    DrainRx,
    /// The guest accepts (RESPONSE) or refuses (RST) a REQUEST it has seen.
    Answer { req: u8, accept: bool },
}

/// One operand byte; zero past the end.
fn byte(rest: &mut &[u8]) -> u8 {
    let (&b, tail) = rest.split_first().unwrap_or((&0, &[]));
    *rest = tail;
    b
}

/// The input is a script, not `Arbitrary` data, so seeds can be written by
/// hand and the bytes a client writes appear verbatim in the input:
/// byte 0 bit 0 = instant handshake expiry, then steps, each an op byte
/// (`c`onnect, `w`rite, `l`ine, `x` close, `r`ead, `d`rain, `a`nswer; any
/// other byte is op `byte % 7`) and its operands:
/// `w client len bytes[len]`, `l client cut port_le32`, `x client|0x80=half`,
/// `a req|0x80=accept`. A truncated operand reads as zero (a short port as
/// CHECK_PORT); a short write takes what is left.
fn parse(data: &[u8]) -> (bool, Vec<Step<'_>>) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return (false, Vec::new());
    };
    let mut steps = Vec::new();
    while !rest.is_empty() && steps.len() < MAX_STEPS {
        let op = byte(&mut rest);
        let op = match op {
            b'c' => 0,
            b'w' => 1,
            b'l' => 2,
            b'x' => 3,
            b'r' => 4,
            b'd' => 5,
            b'a' => 6,
            other => other % 7,
        };
        steps.push(match op {
            0 => Step::Connect,
            1 => {
                let client = byte(&mut rest);
                let len = usize::from(byte(&mut rest)).min(rest.len());
                let (bytes, tail) = rest.split_at(len);
                rest = tail;
                Step::Write { client, bytes }
            }
            2 => {
                let client = byte(&mut rest);
                let cut = byte(&mut rest);
                let port = match rest.get(..4) {
                    Some(p) => u32::from_le_bytes(p.try_into().unwrap()),
                    None => CHECK_PORT,
                };
                rest = rest.get(4..).unwrap_or(&[]);
                Step::Line { client, port, cut }
            }
            3 => {
                let b = byte(&mut rest);
                Step::Close {
                    client: b & 0x7f,
                    half: b & 0x80 != 0,
                }
            }
            4 => Step::HostRead,
            5 => Step::DrainRx,
            _ => {
                let b = byte(&mut rest);
                Step::Answer {
                    req: b & 0x7f,
                    accept: b & 0x80 != 0,
                }
            }
        });
    }
    (flags & 1 != 0, steps)
}

struct Client {
    stream: UnixStream,
    got: Vec<u8>,
}

struct Guest {
    /// (host-side port, guest port) of every REQUEST the guest has seen.
    seen: BTreeSet<(u32, u32)>,
    /// Host-side ports of the connections the guest accepted.
    accepted: BTreeSet<u32>,
}

impl Guest {
    /// How many packets the guest took.
    fn drain(&mut self, h: &mut Harness) -> usize {
        let pkts = h.recv();
        for (hdr, _) in &pkts {
            if hdr.op == OP_REQUEST {
                self.seen.insert((hdr.src_port, hdr.dst_port));
            }
        }
        pkts.len()
    }

    fn answer(&mut self, h: &mut Harness, req: u8, accept: bool) {
        let Some(&(local, peer)) = self
            .seen
            .iter()
            .nth(usize::from(req) % self.seen.len().max(1))
        else {
            return;
        };
        let op = if accept { OP_RESPONSE } else { OP_RST };
        h.send(Hdr::guest(peer, local, op), &[]);
        if accept {
            self.accepted.insert(local);
        }
    }
}

/// What a client may have read: a prefix of `OK <port>\n` for a port the
/// guest accepted (the guest in this target never sends data).
fn check_reply(got: &[u8], accepted: &BTreeSet<u32>) {
    let text = std::str::from_utf8(got).expect("reply is not ASCII");
    let matches = |port: &u32| {
        let line = format!("OK {port}\n");
        line.starts_with(text)
    };
    assert!(
        accepted.iter().any(matches),
        "client read {text:?}, accepted ports {accepted:?}"
    );
}

fn read_client(c: &mut Client, accepted: &BTreeSet<u32>) {
    let mut buf = [0u8; 256];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => c.got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            // The device closed a connection it had read from (RST, reject).
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("host read: {e}"),
        }
    }
    if !c.got.is_empty() {
        check_reply(&c.got, accepted);
    }
}

fn pick(clients: &mut [Option<Client>], n: u8) -> Option<&mut Client> {
    let len = clients.len();
    if len == 0 {
        return None;
    }
    clients[usize::from(n) % len].as_mut()
}

fn connect(h: &Harness) -> UnixStream {
    let s = UnixStream::connect(&h.path).expect("the device's socket refused a client");
    s.set_nonblocking(true).unwrap();
    s
}

// After the input: every client gone and every connection the guest saw
// refused, the muxer must hold nothing and must still serve a new client end
// to end (REQUEST to the guest, `OK <port>\n` to the client).
fn check_still_works(h: &mut Harness, guest: &mut Guest) {
    // A REQUEST may wait behind a full RX queue until the guest refills it,
    // so the guest drains until nothing comes, refuses what it saw, and
    // does it again while connections are left.
    for _ in 0..8 {
        // Up to 1024 stray RSTs queue (the muxer's cap), 64 per drain.
        let quiet = (0..64).any(|_| guest.drain(h) == 0);
        assert!(
            quiet,
            "the device keeps filling RX with nothing from the host"
        );
        for &(local, peer) in &guest.seen {
            h.send(Hdr::guest(peer, local, OP_RST), &[]);
        }
        if h.conns() == 0 {
            break;
        }
    }
    assert_eq!(h.conns(), 0, "connections left after every RST");

    let mut s = connect(h);
    s.write_all(format!("CONNECT {CHECK_PORT}\n").as_bytes())
        .unwrap();
    // Stray RSTs the input provoked may queue ahead of the REQUEST.
    let mut req = None;
    for _ in 0..64 {
        h.pump();
        req = h
            .recv()
            .into_iter()
            .find(|(hdr, _)| hdr.op == OP_REQUEST && hdr.dst_port == CHECK_PORT);
        if req.is_some() {
            break;
        }
    }
    let local = req.expect("no REQUEST for a fresh client").0.src_port;
    h.send(Hdr::guest(CHECK_PORT, local, OP_RESPONSE), &[]);
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let want = format!("OK {local}\n");
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got)
        .expect("no OK line for a fresh client");
    assert_eq!(got, want.as_bytes());
}

fuzz_target!(|data: &[u8]| {
    let (instant_expiry, steps) = parse(data);
    // Zero makes every new client expire all pending handshakes.
    let timeout = if instant_expiry {
        Duration::ZERO
    } else {
        DEFAULT_HANDSHAKE_TIMEOUT
    };
    let mut h = Harness::with_limits(MAX_CONNS, timeout);
    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut guest = Guest {
        seen: BTreeSet::new(),
        accepted: BTreeSet::new(),
    };
    for step in &steps {
        match step {
            Step::Connect => {
                // Reuse a closed slot first, so indices stay small.
                let live = clients.iter().filter(|c| c.is_some()).count();
                if live < MAX_CLIENTS {
                    let c = Some(Client {
                        stream: connect(&h),
                        got: Vec::new(),
                    });
                    match clients.iter_mut().find(|c| c.is_none()) {
                        Some(slot) => *slot = c,
                        None => clients.push(c),
                    }
                }
            }
            Step::Write { client, bytes } => {
                if let Some(c) = pick(&mut clients, *client) {
                    // The device may have closed it or its buffer may be full.
                    let _ = c.stream.write(bytes);
                }
            }
            Step::Line { client, port, cut } => {
                if let Some(c) = pick(&mut clients, *client) {
                    let line = format!("CONNECT {port}\n");
                    let end = usize::from(*cut).min(line.len());
                    let _ = c.stream.write(&line.as_bytes()[..end]);
                }
            }
            Step::Close { client, half } => {
                let len = clients.len().max(1);
                if let Some(slot) = clients.get_mut(usize::from(*client) % len) {
                    match (slot.as_ref(), half) {
                        (Some(c), true) => {
                            let _ = c.stream.shutdown(std::net::Shutdown::Write);
                        }
                        _ => *slot = None,
                    }
                }
            }
            Step::HostRead => {
                for c in clients.iter_mut().flatten() {
                    read_client(c, &guest.accepted);
                }
            }
            Step::DrainRx => {
                guest.drain(&mut h);
            }
            Step::Answer { req, accept } => guest.answer(&mut h, *req, *accept),
        }
        h.pump();
        assert!(
            h.conns() <= MAX_CONNS,
            "{} connections, limit {MAX_CONNS}",
            h.conns()
        );
    }
    h.pump();
    for c in clients.iter_mut().flatten() {
        read_client(c, &guest.accepted);
    }
    drop(clients);
    check_still_works(&mut h, &mut guest);
});
