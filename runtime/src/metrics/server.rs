//! The metrics endpoint: HTTP/1.x `GET /metrics` on a Unix socket beside
//! the sandbox's vsock socket, answered from one thread.
//!
//! HTTP rather than a bare dump so the usual tools work unchanged
//! (`curl --unix-socket .../metrics.sock http://husk/metrics`, or a
//! Prometheus scraping through a socket proxy). One thread serves one
//! connection at a time: a request head is at most `MAX_REQUEST` bytes and
//! must arrive within `IO_TIMEOUT`, so a stuck or hostile client costs
//! other scrapers at most that long and never grows memory. The thread
//! sleeps in poll(2) on the listener and a stop socket, so an idle pod's
//! endpoint costs no wake-ups; dropping the server stops the thread and
//! removes the socket file.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::MetricsError;

/// Longest request head read.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request or read the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// What renders the exposition at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

pub struct MetricsServer {
    path: PathBuf,
    stop: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `path` (replacing a socket file left there) and serves.
    pub fn start(path: &Path, render: Render) -> Result<Self, MetricsError> {
        let bind = |source| MetricsError::Bind {
            path: path.to_path_buf(),
            source,
        };
        if path.exists() {
            std::fs::remove_file(path).map_err(bind)?;
        }
        let listener = UnixListener::bind(path).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let (stop, stopped) = UnixStream::pair().map_err(bind)?;
        let thread = std::thread::Builder::new()
            .name("husk-metrics".into())
            .spawn(move || serve(&listener, &stopped, &render))
            .map_err(bind)?;
        Ok(Self {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        let _ = self.stop.write_all(b"x");
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: &UnixListener, stopped: &UnixStream, render: &Render) {
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stopped.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => {
                tracing::warn!("metrics endpoint: poll: {e}; it stops");
                return;
            }
        }
        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[1]) {
            return;
        }
        if !ready(&fds[0]) {
            continue;
        }
        match listener.accept() {
            Ok((conn, _)) => {
                if let Err(e) = answer(conn, render) {
                    tracing::debug!("metrics endpoint: a client: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::debug!("metrics endpoint: accept: {e}"),
        }
    }
}

/// Reads one request head and answers it; the connection closes after.
fn answer(mut conn: UnixStream, render: &Render) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = read_head(&mut conn)?;
    let (status, body) = match route(&head) {
        Ok(()) => ("200 OK", render()),
        Err(status) => (status, format!("{status}\n")),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(reply.as_bytes())
}

/// The bytes up to the blank line ending the head (at most MAX_REQUEST).
fn read_head(conn: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while head.len() < MAX_REQUEST {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
    }
    Ok(head)
}

/// `GET /metrics` (or `/`) answers; anything else gets its HTTP status.
fn route(head: &[u8]) -> Result<(), &'static str> {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    match (method, target, version) {
        (Some("GET"), Some("/metrics" | "/"), Some(v)) if v.starts_with("HTTP/1.") => Ok(()),
        (Some(_), Some("/metrics" | "/"), Some(v)) if v.starts_with("HTTP/1.") => {
            Err("405 Method Not Allowed")
        }
        (Some(_), Some(_), Some(v)) if v.starts_with("HTTP/1.") => Err("404 Not Found"),
        _ => Err("400 Bad Request"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::client::scrape;
    use super::*;

    fn socket(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("husk-metrics-{name}-{}.sock", std::process::id()))
    }

    fn raw(path: &Path, request: &[u8]) -> String {
        let mut c = UnixStream::connect(path).unwrap();
        c.write_all(request).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_and_refuses_other_requests() {
        let path = socket("serve");
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = calls.clone();
        let server = MetricsServer::start(
            &path,
            Arc::new(move || {
                let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                format!("# TYPE husk_test_scrapes_total counter\nhusk_test_scrapes_total {n}\n")
            }),
        )
        .unwrap();
        let first = super::super::client::scrape_from(&path).unwrap();
        assert_eq!(
            first.text,
            "# TYPE husk_test_scrapes_total counter\nhusk_test_scrapes_total 1\n"
        );
        assert_eq!(first.pid, Some(std::process::id()), "the server's pid");
        assert!(
            scrape(&path).unwrap().ends_with(" 2\n"),
            "rendered per scrape"
        );
        let curl = raw(&path, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(curl.starts_with("HTTP/1.1 200 OK\r\n"), "{curl}");
        assert!(curl.contains("Content-Length: 65\r\n"), "{curl}");
        for (req, status) in [
            (&b"POST /metrics HTTP/1.1\r\n\r\n"[..], "405"),
            (b"GET /other HTTP/1.0\r\n\r\n", "404"),
            (b"hello\n\n", "400"),
        ] {
            let got = raw(&path, req);
            assert!(got.starts_with(&format!("HTTP/1.1 {status}")), "{got}");
        }
        // A head without an end is read up to MAX_REQUEST and refused; the
        // server lives on.
        let got = raw(&path, &[b'A'; MAX_REQUEST]);
        assert!(got.starts_with("HTTP/1.1 400"), "{got}");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
        drop(server);
        assert!(!path.exists(), "the socket goes with the server");
        assert!(scrape(&path).is_err());
    }

    #[test]
    fn a_silent_client_only_delays_the_next() {
        let path = socket("silent");
        let _server = MetricsServer::start(&path, Arc::new(|| "a 1\n".to_string())).unwrap();
        let _silent = UnixStream::connect(&path).unwrap();
        // Served once the silent client's IO_TIMEOUT is over.
        assert_eq!(scrape(&path).unwrap(), "a 1\n");
    }
}
