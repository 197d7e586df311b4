//! Reaching husk-agent in the guest from the host: connect to the vsock
//! device's host Unix socket, do the `CONNECT <port>\n` / `OK <port>\n`
//! handshake (the protocol Firecracker and Dragonball use), then hand the
//! stream to the ttrpc client (`AgentClient`).
//!
//! The handshake reads its reply one byte at a time so not a byte of the
//! ttrpc stream that follows is consumed, and caps the reply line's length:
//! what comes back is decided by the guest.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent::AgentClient;

pub use husk_agent_protocol::AGENT_VSOCK_PORT;

/// `OK ` + a u32 + `\n` fits easily; anything longer is not an answer.
const MAX_REPLY_LEN: usize = 32;

/// Why the agent could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum AgentConnectError {
    #[error("connecting to the vsock socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vsock handshake with guest port {port} through {path}: {source}")]
    Io {
        path: PathBuf,
        port: u32,
        source: std::io::Error,
    },
    #[error(
        "vsock handshake with guest port {port} through {path}: the connection was closed \
         before an answer (nothing listens on that port in the guest, or the VM is gone)"
    )]
    Closed { path: PathBuf, port: u32 },
    #[error("vsock handshake with guest port {port} through {path}: unexpected answer {reply:?} (want \"OK <port>\")")]
    BadReply {
        path: PathBuf,
        port: u32,
        reply: String,
    },
    #[error("creating the ttrpc client: {0}")]
    Client(std::io::Error),
}

/// Opens a stream to `port` in the guest through the vsock device's Unix
/// socket `uds`; `timeout` bounds the wait for the handshake's answer.
pub fn connect_vsock(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, AgentConnectError> {
    let mut stream = UnixStream::connect(uds).map_err(|source| AgentConnectError::Connect {
        path: uds.into(),
        source,
    })?;
    let io = |source| AgentConnectError::Io {
        path: uds.into(),
        port,
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io)?;
    let reply = read_reply_line(&mut stream).map_err(io)?;
    match reply {
        None => Err(AgentConnectError::Closed {
            path: uds.into(),
            port,
        }),
        Some(line) if is_ok_reply(&line) => {
            stream.set_read_timeout(None).map_err(io)?;
            Ok(stream)
        }
        Some(line) => Err(AgentConnectError::BadReply {
            path: uds.into(),
            port,
            reply: line,
        }),
    }
}

/// A ttrpc client for husk-agent listening on `port` in the guest.
pub fn connect_agent(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<AgentClient, AgentConnectError> {
    let stream = connect_vsock(uds, port, timeout)?;
    AgentClient::over(stream).map_err(AgentConnectError::Client)
}

/// One line, without its `\n`; `None` when the peer closed (or reset) first.
/// A line longer than [`MAX_REPLY_LEN`] is returned cut, to be refused.
fn read_reply_line(stream: &mut UnixStream) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_REPLY_LEN {
        match stream.read(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// `OK <host-side port>`.
fn is_ok_reply(line: &str) -> bool {
    line.strip_prefix("OK ")
        .is_some_and(|p| p.parse::<u32>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake bridge that answers the first CONNECT line with `answer`
    /// (or closes the connection when it is `None`); its socket goes with
    /// the directory, even when a test fails.
    fn bridge(answer: Option<&'static [u8]>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = [0u8; 13];
            s.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"CONNECT 1024\n");
            if let Some(a) = answer {
                s.write_all(a).unwrap();
                // Hold the connection open until the client is done.
                let _ = s.read(&mut [0u8; 1]);
            }
        });
        (dir, path)
    }

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn ok_hands_over_the_stream_without_eating_bytes() {
        let (_dir, uds) = bridge(Some(b"OK 1073741824\nTTRPC"));
        let mut s = connect_vsock(&uds, 1024, T).unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"TTRPC");
    }

    #[test]
    fn a_closed_connection_says_nothing_listens() {
        let (_dir, uds) = bridge(None);
        let err = connect_vsock(&uds, 1024, T).unwrap_err();
        assert!(
            matches!(err, AgentConnectError::Closed { port: 1024, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("nothing listens"), "{err}");
    }

    #[test]
    fn a_wrong_or_endless_answer_is_refused() {
        let (_dir, uds) = bridge(Some(b"NO 1\n"));
        let err = connect_vsock(&uds, 1024, T).unwrap_err();
        assert!(err.to_string().contains("\"NO 1\""), "{err}");

        let (_dir, uds) = bridge(Some(&[b'O'; 4096]));
        let err = connect_vsock(&uds, 1024, T).unwrap_err();
        assert!(matches!(err, AgentConnectError::BadReply { .. }), "{err}");
    }

    #[test]
    fn a_missing_socket_names_its_path() {
        let err = connect_vsock(Path::new("/nonexistent/husk.vsock"), 1024, T).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/husk.vsock"), "{err}");
    }
}
