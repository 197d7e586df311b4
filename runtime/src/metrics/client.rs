//! Scraping a husk process's metrics endpoint: what `husk metrics` and
//! `husk bench density` do. One HTTP/1.0 GET, the whole answer read
//! (bounded), the body returned when the status is 200; the socket peer's
//! credentials say which process served it (the bench finds a containerd
//! pod's husk process that way).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::MetricsError;

/// Longest answer read: a sandbox's exposition is a few KiB.
const MAX_ANSWER: u64 = 4 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

/// The exposition text served at `socket`.
pub fn scrape(socket: &Path) -> Result<String, MetricsError> {
    scrape_from(socket).map(|s| s.text)
}

/// An exposition and the process that served it.
#[derive(Debug, Clone)]
pub struct Scraped {
    pub text: String,
    /// The serving process (the socket peer's credentials).
    pub pid: Option<u32>,
}

/// The exposition served at `socket`, and who served it.
pub fn scrape_from(socket: &Path) -> Result<Scraped, MetricsError> {
    let mut conn = UnixStream::connect(socket).map_err(|source| MetricsError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let pid = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .and_then(|c| u32::try_from(c.pid()).ok());
    let io = |source| MetricsError::Io {
        path: socket.to_path_buf(),
        source,
    };
    conn.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    conn.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: husk\r\n\r\n")
        .map_err(io)?;
    let mut answer = Vec::new();
    conn.take(MAX_ANSWER).read_to_end(&mut answer).map_err(io)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| MetricsError::Http {
            path: socket.to_path_buf(),
            status: "no complete HTTP answer".into(),
        })?;
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        return Err(MetricsError::Http {
            path: socket.to_path_buf(),
            status: status.to_string(),
        });
    }
    Ok(Scraped {
        text: body.to_string(),
        pid,
    })
}
