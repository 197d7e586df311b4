//! Telling the host the agent is ready: once the ttrpc server listens, PID 1
//! connects to the host's READY_VSOCK_PORT and writes `READY <version>\n`.
//!
//! The runtime listens on that port before it boots the VM and waits on the
//! connection, so it learns the agent is up the moment it is, without
//! retrying CONNECTs to a guest that is still booting. Nobody listening (a
//! VM started by hand) is fine: the agent logs it and serves anyway.

use std::io::Write;

use husk_agent_protocol::READY_VSOCK_PORT;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

/// VMADDR_CID_HOST.
const HOST_CID: u32 = 2;

pub fn notify_host() {
    match send_ready() {
        Ok(()) => tracing::info!(port = READY_VSOCK_PORT, "told the host the agent is ready"),
        Err(e) => tracing::info!(
            port = READY_VSOCK_PORT,
            "no ready notification (nothing listens on the host?): {e}"
        ),
    }
}

fn send_ready() -> std::io::Result<()> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(HOST_CID, READY_VSOCK_PORT),
    )?;
    let mut stream = std::fs::File::from(fd);
    stream.write_all(format!("READY {}\n", env!("CARGO_PKG_VERSION")).as_bytes())
}
