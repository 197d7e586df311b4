//! A guest process's stdio, bridged to the host: containerd's FIFOs (or, for
//! `husk run`, this process's own stdin and stdout).
//!
//! One thread per stream. Output threads call the agent's ReadStdout or
//! ReadStderr (which block until there is data, and return empty at end of
//! stream) and write what comes to the sink; a blocked write holds the next
//! read back, so a slow reader slows the guest process instead of growing a
//! buffer. The stdin thread reads the source and calls WriteStdin; at EOF (or
//! on CloseIO) it closes the process's stdin. Callers wait for the output
//! threads before they report an exit, so nothing written just before the
//! exit is lost. FIFOs are opened in their thread: opening blocks until
//! containerd's side is open.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_agent_protocol::agent;

use crate::agent::Agent;
use crate::sandbox::{blocking_ctx, ctx, RPC_TIMEOUT};

/// Bytes per ReadStdout / WriteStdin call.
const CHUNK: usize = 64 * 1024;

/// Where a stream's bytes come from or go.
pub enum Endpoint {
    None,
    /// A FIFO path (containerd's).
    Fifo(PathBuf),
    /// A host stream (`husk run`'s own stdin/stdout/stderr).
    Reader(Box<dyn Read + Send>),
    Writer(Box<dyn Write + Send>),
}

impl Endpoint {
    /// containerd's convention: an empty path means no stream.
    pub fn fifo(path: &str) -> Self {
        if path.is_empty() {
            Endpoint::None
        } else {
            Endpoint::Fifo(PathBuf::from(path))
        }
    }
}

pub struct ProcessStdio {
    pub stdin: Endpoint,
    pub stdout: Endpoint,
    pub stderr: Endpoint,
    /// With a terminal there is no stderr stream: the pty carries both.
    pub terminal: bool,
}

/// Which process of which container.
#[derive(Debug, Clone)]
pub struct ProcessId {
    pub container: String,
    pub exec: String,
}

pub struct StdioCopiers {
    outputs_done: Receiver<()>,
    outputs: usize,
    stdin_closed: Arc<AtomicBool>,
    /// containerd's stdin FIFO, while its copier may still be opening it.
    stdin_fifo: Option<PathBuf>,
    agent: Agent,
    process: ProcessId,
    _threads: Vec<JoinHandle<()>>,
}

impl StdioCopiers {
    pub fn start(agent: &Agent, process: &ProcessId, io: ProcessStdio) -> Self {
        let (done_tx, outputs_done) = channel();
        let stdin_closed = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut outputs = 0;
        let streams = [(io.stdout, false), (io.stderr, true)];
        for (sink, is_stderr) in streams {
            if matches!(sink, Endpoint::None) || (is_stderr && io.terminal) {
                continue;
            }
            let (agent, p, done) = (agent.clone(), process.clone(), done_tx.clone());
            let name = if is_stderr {
                "husk-stderr"
            } else {
                "husk-stdout"
            };
            if let Some(t) = spawn(name, move || {
                copy_out(&agent, &p, is_stderr, sink);
                let _ = done.send(());
            }) {
                threads.push(t);
                outputs += 1;
            }
        }
        let stdin_fifo = match &io.stdin {
            Endpoint::Fifo(path) => Some(path.clone()),
            _ => None,
        };
        if !matches!(io.stdin, Endpoint::None) {
            let (agent, p, closed) = (agent.clone(), process.clone(), stdin_closed.clone());
            let source = io.stdin;
            threads.extend(spawn("husk-stdin", move || {
                copy_in(&agent, &p, source, &closed)
            }));
        }
        Self {
            outputs_done,
            outputs,
            stdin_closed,
            stdin_fifo,
            agent: agent.clone(),
            process: process.clone(),
            _threads: threads,
        }
    }

    /// Waits until every output stream reached its end, at most `timeout`;
    /// false if some did not (a child still holds the stream open).
    pub fn wait_output(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.outputs > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.outputs_done.recv_timeout(left).is_err() {
                return false;
            }
            self.outputs -= 1;
        }
        true
    }

    /// CloseIO: the process's stdin ends now, whatever the source still holds.
    pub fn close_stdin(&self) {
        if !self.stdin_closed.swap(true, Ordering::AcqRel) {
            close_guest_stdin(&self.agent, &self.process);
        }
    }

    /// For a process that has exited: its stdin copier must not wait on.
    /// Opening containerd's stdin FIFO blocks until a writer comes, and
    /// ctr gives up its own pending open once the process has ended, so a
    /// process that ended before its copier got there left the copier
    /// blocked for good (a thread and its stack per exec, seen as 13-16 KiB
    /// of husk's RSS per `ctr task exec` of `true`). Opening the write end
    /// once, without blocking, completes the copier's open; it then reads
    /// end-of-file and returns. Without a blocked reader the open fails
    /// (ENXIO) and nothing happens.
    pub fn release_stdin(&self) {
        self.stdin_closed.store(true, Ordering::Release);
        if let Some(fifo) = &self.stdin_fifo {
            use std::os::unix::fs::OpenOptionsExt;
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(fifo);
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Option<JoinHandle<()>> {
    match std::thread::Builder::new().name(name.into()).spawn(f) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!("cannot start the {name} copier: {e}");
            None
        }
    }
}

fn open_sink(sink: Endpoint) -> std::io::Result<Box<dyn Write + Send>> {
    match sink {
        Endpoint::Fifo(path) => Ok(Box::new(OpenOptions::new().write(true).open(path)?)),
        Endpoint::Writer(w) => Ok(w),
        Endpoint::None | Endpoint::Reader(_) => Ok(Box::new(std::io::sink())),
    }
}

fn copy_out(agent: &Agent, p: &ProcessId, is_stderr: bool, sink: Endpoint) {
    let mut out = match open_sink(sink) {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::warn!(container = %p.container, exec = %p.exec, "opening the output sink: {e}");
            None
        }
    };
    let req = agent::ReadStreamRequest {
        container_id: p.container.clone(),
        exec_id: p.exec.clone(),
        max_len: CHUNK as u32,
        ..Default::default()
    };
    loop {
        let read = if is_stderr {
            agent.read_stderr(blocking_ctx(), &req)
        } else {
            agent.read_stdout(blocking_ctx(), &req)
        };
        let data = match read {
            Ok(r) if r.data.is_empty() => break,
            Ok(r) => r.data,
            Err(e) => {
                tracing::debug!(container = %p.container, exec = %p.exec, "output stream ended: {e}");
                break;
            }
        };
        // A reader that went away stops getting bytes, but the stream is
        // still drained so the guest process never blocks on it.
        if let Some(w) = out.as_mut() {
            if w.write_all(&data).and_then(|()| w.flush()).is_err() {
                out = None;
            }
        }
    }
}

fn open_source(source: Endpoint) -> std::io::Result<Box<dyn Read + Send>> {
    match source {
        Endpoint::Fifo(path) => Ok(Box::new(File::open(path)?)),
        Endpoint::Reader(r) => Ok(r),
        Endpoint::None | Endpoint::Writer(_) => Ok(Box::new(std::io::empty())),
    }
}

fn copy_in(agent: &Agent, p: &ProcessId, source: Endpoint, closed: &AtomicBool) {
    let mut input = match open_source(source) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(container = %p.container, exec = %p.exec, "opening stdin: {e}");
            return;
        }
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        if closed.load(Ordering::Acquire) {
            return;
        }
        if n == 0 || !write_guest_stdin(agent, p, &buf[..n]) {
            break;
        }
    }
    if !closed.swap(true, Ordering::AcqRel) {
        close_guest_stdin(agent, p);
    }
}

/// WriteStdin until all of `data` is taken; false when the process is gone.
fn write_guest_stdin(agent: &Agent, p: &ProcessId, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        let req = agent::WriteStreamRequest {
            container_id: p.container.clone(),
            exec_id: p.exec.clone(),
            data: data.to_vec(),
            ..Default::default()
        };
        match agent.write_stdin(blocking_ctx(), &req) {
            Ok(r) if r.len > 0 => data = &data[(r.len as usize).min(data.len())..],
            Ok(_) => return false,
            Err(e) => {
                tracing::debug!(container = %p.container, exec = %p.exec, "stdin: {e}");
                return false;
            }
        }
    }
    true
}

fn close_guest_stdin(agent: &Agent, p: &ProcessId) {
    let req = agent::CloseStdinRequest {
        container_id: p.container.clone(),
        exec_id: p.exec.clone(),
        ..Default::default()
    };
    if let Err(e) = agent.close_stdin(ctx(RPC_TIMEOUT), &req) {
        tracing::debug!(container = %p.container, exec = %p.exec, "closing stdin: {e}");
    }
}
