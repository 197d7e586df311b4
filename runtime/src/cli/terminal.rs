//! The host terminal for `husk run -t`: raw mode while the container owns
//! it (restored on drop, also on errors), and its size sent to the
//! container's pty.

use std::os::fd::AsFd;

use husk_agent_protocol::agent;
use husk_runtime::agent::Agent;
use husk_runtime::sandbox::{ctx, RPC_TIMEOUT};
use nix::sys::termios::{self, SetArg, Termios};

pub struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    pub fn enter() -> anyhow::Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Sends this terminal's size to the container's pty (nothing if stdout is
/// not a terminal).
pub fn send_size(agent: &Agent, id: &str) {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it from a valid fd.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize through a valid pointer.
    if unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } != 0 || ws.ws_row == 0 {
        return;
    }
    let req = agent::TtyWinResizeRequest {
        container_id: id.to_string(),
        rows: u32::from(ws.ws_row),
        cols: u32::from(ws.ws_col),
        ..Default::default()
    };
    if let Err(e) = agent.tty_win_resize(ctx(RPC_TIMEOUT), &req) {
        tracing::debug!("resizing the container's terminal: {e}");
    }
}
