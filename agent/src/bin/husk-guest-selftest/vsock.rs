//! `vsock HOST_PORT LISTEN_PORT`: the guest side of the real-guest vsock test.
//!
//! First a guest-initiated connection: connect to the host's HOST_PORT and
//! echo it; then a host-initiated one: listen on LISTEN_PORT, accept one
//! connection and echo it. Echoing uses 64 KiB reads and writes, so the
//! guest kernel sends large packets (header + several data descriptors on
//! Linux 6.x). Prints `HUSK-VSOCK-LISTENING <port>` before accepting and
//! `HUSK-VSOCK-ECHOED <guest-initiated bytes> <host-initiated bytes>` (or
//! `HUSK-VSOCK-FAILED <why>`) at the end, then ends the VM.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{end_vm, errno};

/// Size of each guest read and write.
const CHUNK: usize = 64 * 1024;

pub fn echo_both_ways(args: &[String]) -> ! {
    let port = |i: usize| args.get(i).and_then(|p| p.parse::<u32>().ok());
    let result = match (port(0), port(1)) {
        (Some(host), Some(listen)) => {
            guest_initiated(host).and_then(|a| host_initiated(listen).map(|b| (a, b)))
        }
        _ => Err("usage: vsock HOST_PORT LISTEN_PORT".into()),
    };
    match result {
        Ok((a, b)) => println!("HUSK-VSOCK-ECHOED {a} {b}"),
        Err(e) => println!("HUSK-VSOCK-FAILED {e}"),
    }
    end_vm();
    std::process::exit(0)
}

fn addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

fn socket() -> Result<OwnedFd, String> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(errno("socket(AF_VSOCK)"));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn guest_initiated(host_port: u32) -> Result<u64, String> {
    let sock = socket()?;
    let to = addr(libc::VMADDR_CID_HOST, host_port);
    // SAFETY: connect(2) with a valid sockaddr_vm of the given length.
    if unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&to as *const libc::sockaddr_vm).cast(),
            ADDR_LEN,
        )
    } != 0
    {
        return Err(errno("connect to the host"));
    }
    echo(File::from(sock)).map_err(|e| format!("guest-initiated echo: {e}"))
}

fn host_initiated(port: u32) -> Result<u64, String> {
    let sock = socket()?;
    let any = addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: bind/listen on our socket with a valid address.
    unsafe {
        if libc::bind(
            sock.as_raw_fd(),
            (&any as *const libc::sockaddr_vm).cast(),
            ADDR_LEN,
        ) != 0
        {
            return Err(errno("bind"));
        }
        if libc::listen(sock.as_raw_fd(), 1) != 0 {
            return Err(errno("listen"));
        }
    }
    println!("HUSK-VSOCK-LISTENING {port}");
    let _ = std::io::stdout().flush();
    // SAFETY: accept(2) on our listening socket; no peer address wanted.
    let fd = unsafe { libc::accept(sock.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut()) };
    if fd < 0 {
        return Err(errno("accept"));
    }
    // SAFETY: fd is the accepted connection, owned by nobody else.
    let conn = unsafe { File::from_raw_fd(fd) };
    echo(conn).map_err(|e| format!("host-initiated echo: {e}"))
}

/// Writes back everything it reads until EOF, in whole 64 KiB writes (each
/// read fills the buffer first, so the kernel sends 64 KiB packets); then
/// shuts its side down so the host sees EOF too.
fn echo(conn: File) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < CHUNK {
            match (&conn).read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        (&conn).write_all(&buf[..filled])?;
        total += filled as u64;
        if filled < CHUNK {
            break;
        }
    }
    // SAFETY: shutdown(2) on our own socket.
    unsafe { libc::shutdown(conn.as_raw_fd(), libc::SHUT_WR) };
    Ok(total)
}
