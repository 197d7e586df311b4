//! A container process's standard streams, as the agent holds them.
//!
//! Without a terminal there are three pipes. With one, the pty is opened by
//! the process itself inside the container (so its /dev/pts is the
//! container's devpts and `tty` names a path that exists there) and the
//! master comes back over the control channel. Reads block until data; an
//! empty result means end of stream (for a pty, the EIO after the last
//! slave closes).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use super::ContainerError;

/// Which output stream to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The child's ends of the three pipes.
pub struct ChildPipes {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// The agent's side.
pub enum Stdio {
    Pipes {
        stdin: Mutex<Option<File>>,
        stdout: File,
        stderr: File,
    },
    Terminal {
        master: File,
    },
}

/// ASCII EOT: what a terminal's line discipline turns into end-of-file.
const VEOF: u8 = 4;

nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, libc::winsize);

/// Sets the window size of the terminal behind `fd`.
pub fn set_size(fd: RawFd, rows: u16, cols: u16) -> nix::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    unsafe { set_window_size(fd, &size) }.map(|_| ())
}

impl Stdio {
    /// Three close-on-exec pipes: the agent's ends and the child's ends.
    pub fn pipes() -> Result<(Stdio, ChildPipes), ContainerError> {
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ContainerError::Io {
                what: "creating a stdio pipe".into(),
                source: e.into(),
            })
        };
        let (stdin_r, stdin_w) = pipe()?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let ours = Stdio::Pipes {
            stdin: Mutex::new(Some(File::from(stdin_w))),
            stdout: File::from(stdout_r),
            stderr: File::from(stderr_r),
        };
        Ok((
            ours,
            ChildPipes {
                stdin: stdin_r,
                stdout: stdout_w,
                stderr: stderr_w,
            },
        ))
    }

    /// Reads at most `max` bytes; blocks until data; empty = end of stream.
    pub fn read(&self, stream: Stream, max: usize) -> Result<Vec<u8>, ContainerError> {
        let mut file = match (self, stream) {
            (Stdio::Pipes { stdout, .. }, Stream::Stdout) => stdout,
            (Stdio::Pipes { stderr, .. }, Stream::Stderr) => stderr,
            (Stdio::Terminal { master }, Stream::Stdout) => master,
            // A terminal merges stderr into the one stream.
            (Stdio::Terminal { .. }, Stream::Stderr) => return Ok(Vec::new()),
        };
        let mut buf = vec![0u8; max.clamp(1, 1 << 20)];
        loop {
            match file.read(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(Vec::new()),
                Err(e) => {
                    return Err(ContainerError::Io {
                        what: "reading process output".into(),
                        source: e,
                    })
                }
            }
        }
    }

    /// Writes all of `data` to the process's stdin.
    pub fn write_stdin(&self, data: &[u8]) -> Result<usize, ContainerError> {
        let io = |e| ContainerError::Io {
            what: "writing process stdin".into(),
            source: e,
        };
        match self {
            Stdio::Pipes { stdin, .. } => {
                let mut guard = stdin.lock().unwrap_or_else(|e| e.into_inner());
                let file = guard.as_mut().ok_or(ContainerError::StdinClosed)?;
                file.write_all(data).map_err(io)?;
            }
            Stdio::Terminal { master } => (&*master).write_all(data).map_err(io)?,
        }
        Ok(data.len())
    }

    /// Ends the process's input: closes the pipe, or sends the terminal's
    /// end-of-file character (the pty stays open for output).
    pub fn close_stdin(&self) -> Result<(), ContainerError> {
        match self {
            Stdio::Pipes { stdin, .. } => {
                stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
                Ok(())
            }
            Stdio::Terminal { .. } => self.write_stdin(&[VEOF]).map(|_| ()),
        }
    }

    /// Sets the terminal's size (the process gets SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ContainerError> {
        let Stdio::Terminal { master } = self else {
            return Err(ContainerError::NoTerminal);
        };
        set_size(master.as_raw_fd(), rows, cols).map_err(|e| ContainerError::Io {
            what: "resizing the terminal".into(),
            source: e.into(),
        })
    }
}
