//! Reading a process's memory and thread figures from /proc.

use anyhow::Context;

/// Memory figures in KiB.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemFigures {
    pub rss_kib: u64,
    pub pss_kib: u64,
}

fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(':'))
        .and_then(|l| l[name.len() + 1..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Whole-process RSS and PSS from smaps_rollup.
pub fn process_memory(pid: u32) -> anyhow::Result<MemFigures> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .context("reading smaps_rollup")?;
    Ok(MemFigures {
        rss_kib: field(&text, "Rss").unwrap_or(0),
        pss_kib: field(&text, "Pss").unwrap_or(0),
    })
}

/// RSS and PSS of the mappings of exactly `size_kib` (the guest RAM mappings).
pub fn mappings_of_size(pid: u32, size_kib: u64) -> anyhow::Result<MemFigures> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).context("reading smaps")?;
    let mut total = MemFigures::default();
    let mut in_match = false;
    for line in text.lines() {
        if let Some(size) = line.strip_prefix("Size:") {
            in_match = size
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                == Some(size_kib);
        } else if in_match {
            if let Some(v) = field(line, "Rss") {
                total.rss_kib += v;
            } else if let Some(v) = field(line, "Pss") {
                total.pss_kib += v;
            }
        }
    }
    Ok(total)
}

pub fn thread_count(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading status")?;
    field(&text, "Threads").context("no Threads line in /proc status")
}

/// CLOCK_MONOTONIC in nanoseconds, comparable across processes.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let m = process_memory(me).unwrap();
        assert!(m.rss_kib > 0 && m.pss_kib > 0 && m.pss_kib <= m.rss_kib);
        assert!(thread_count(me).unwrap() >= 1);
        // An anonymous mapping of an unusual size with 4 pages touched.
        let size = (64 << 20) + 3 * 4096;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        for i in 0..4 {
            // SAFETY: inside the mapping.
            unsafe { *(ptr as *mut u8).add(i * 4096 * 100) = 1 };
        }
        let g = mappings_of_size(me, size as u64 / 1024).unwrap();
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(ptr, size) };
        assert_eq!(g.rss_kib, 16);
        assert_eq!(g.pss_kib, 16);
    }
}
