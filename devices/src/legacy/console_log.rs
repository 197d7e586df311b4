//! A tap on the console byte stream that remembers its last lines.
//!
//! When a guest dies, the user needs to see why: the VMM quotes the kernel's
//! panic line and the lines before it. `ConsoleWriter` passes every byte on to
//! the real sink (stdout or a file) and keeps a bounded tail in `ConsoleLog`.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

const TAIL_LINES: usize = 40;
// A guest that never sends a newline must not grow the buffer without bound.
const MAX_LINE: usize = 1024;

#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
    panic_line: Option<String>,
    power_off: Option<EventFd>,
}

impl Tail {
    fn push_byte(&mut self, byte: u8) {
        match byte {
            b'\n' => self.end_line(),
            b'\r' => {}
            _ if self.partial.len() < MAX_LINE => self.partial.push(byte),
            _ => self.end_line(),
        }
    }

    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        if self.panic_line.is_none() && line.contains("Kernel panic") {
            self.panic_line = Some(line.clone());
        }
        if is_power_down(&line) {
            if let Some(evt) = &self.power_off {
                let _ = evt.write(1);
            }
        }
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
}

/// The kernel's last words before it halts for good (kernel/reboot.c, printed
/// at KERN_EMERG so `quiet` does not hide them). Without ACPI, a power-off
/// request becomes a halt: "Power off not available: System halted instead".
const HALT_MESSAGES: [&str; 3] = [
    "reboot: Power down",
    "reboot: System halted",
    "reboot: Power off not available: System halted instead",
];

fn is_power_down(line: &str) -> bool {
    line.starts_with('[')
        && line
            .split_once("] ")
            .is_some_and(|(_, msg)| HALT_MESSAGES.contains(&msg))
}

/// Shared view of the console's recent output.
#[derive(Clone, Default)]
pub struct ConsoleLog(Arc<Mutex<Tail>>);

impl ConsoleLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `evt` when the guest kernel announces power-off. Without ACPI a
    /// Linux guest has no way to tell the VMM it powered off: it prints this
    /// line and halts with interrupts off, which the VMM cannot observe.
    pub fn notify_power_off(&self, evt: EventFd) {
        self.lock().power_off = Some(evt);
    }

    /// The first "Kernel panic" line the guest printed, if any.
    pub fn panic_line(&self) -> Option<String> {
        self.lock().panic_line.clone()
    }

    /// Up to `n` of the last lines, oldest first, counting an unfinished one.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let tail = self.lock();
        let partial = (!tail.partial.is_empty()).then(|| String::from_utf8_lossy(&tail.partial));
        let complete = n.saturating_sub(partial.is_some() as usize);
        let mut out: Vec<String> = tail
            .lines
            .iter()
            .rev()
            .take(complete)
            .rev()
            .cloned()
            .collect();
        out.extend(partial.map(|p| p.into_owned()));
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The console sink: forwards to `inner` and records into a `ConsoleLog`.
pub struct ConsoleWriter {
    inner: Box<dyn Write + Send>,
    log: ConsoleLog,
}

impl ConsoleWriter {
    pub fn new(inner: Box<dyn Write + Send>, log: ConsoleLog) -> Self {
        Self { inner, log }
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        {
            let mut tail = self.log.lock();
            buf.iter().for_each(|&b| tail.push_byte(b));
        }
        // A console that cannot be written (closed pipe, full disk) must not
        // stop the guest: the bytes are dropped, the tail still has them.
        let _ = self.inner.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.inner.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_bounded_tail_and_the_first_panic_line() {
        let log = ConsoleLog::new();
        let mut w = ConsoleWriter::new(Box::new(io::sink()), log.clone());
        for i in 0..100 {
            write!(w, "line {i}\r\n").unwrap();
        }
        w.write_all(b"Kernel panic - not syncing: Attempted to kill init!\nafter\npart")
            .unwrap();
        let last = log.last_lines(3);
        assert_eq!(
            last,
            [
                "Kernel panic - not syncing: Attempted to kill init!",
                "after",
                "part"
            ]
        );
        assert_eq!(log.last_lines(1000).len(), TAIL_LINES + 1);
        assert_eq!(
            log.panic_line().as_deref(),
            Some("Kernel panic - not syncing: Attempted to kill init!")
        );
    }

    #[test]
    fn signals_the_kernels_power_down_line_only() {
        let log = ConsoleLog::new();
        let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        log.notify_power_off(evt.try_clone().unwrap());
        let mut w = ConsoleWriter::new(Box::new(io::sink()), log.clone());
        w.write_all(b"echo reboot: Power down\n[ 1.0] reboot: Power downstairs\n")
            .unwrap();
        assert!(evt.read().is_err(), "not the kernel's line");
        w.write_all(b"[   63.3] reboot: Power down\n").unwrap();
        assert_eq!(evt.read().unwrap(), 1);
        w.write_all(b"[   31.4] reboot: Power off not available: System halted instead\n")
            .unwrap();
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn splits_endless_lines() {
        let log = ConsoleLog::new();
        let mut w = ConsoleWriter::new(Box::new(io::sink()), log.clone());
        w.write_all(&vec![b'x'; MAX_LINE * 3]).unwrap();
        assert!(log.last_lines(10).iter().all(|l| l.len() <= MAX_LINE));
    }
}
