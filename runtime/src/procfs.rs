//! A process's memory, threads and CPU time, from the kernel's own
//! accounting in /proc: what the metrics endpoint reports about its own
//! process and what the benches read about husk processes.
//!
//! Memory is split by mapping (/proc/PID/smaps): the guest's RAM is the
//! mapping of exactly the guest's size (anonymous for a cold boot, the
//! template's memory.bin for a clone), the guest image is the pmem file's
//! shared mapping, and everything else is husk's own (shim, VMM, devices,
//! the binary and its libraries). PSS is the kernel's proportional share:
//! a page shared by N processes counts 1/N in each, so summing PSS over
//! pods never counts a shared page twice.

use std::path::{Path, PathBuf};

use husk_vmm::snapshot::format::MEMORY_FILE;

#[derive(Debug, thiserror::Error)]
pub enum ProcfsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} has no {field} field")]
    Field { path: PathBuf, field: &'static str },
}

/// Memory figures in KiB.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemFigures {
    pub rss_kib: u64,
    pub pss_kib: u64,
}

impl std::ops::AddAssign for MemFigures {
    fn add_assign(&mut self, o: Self) {
        self.rss_kib += o.rss_kib;
        self.pss_kib += o.pss_kib;
    }
}

impl MemFigures {
    pub fn saturating_sub(self, o: Self) -> Self {
        Self {
            rss_kib: self.rss_kib.saturating_sub(o.rss_kib),
            pss_kib: self.pss_kib.saturating_sub(o.pss_kib),
        }
    }
}

/// One process's memory, split by what it is for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemSplit {
    pub total: MemFigures,
    /// The guest's RAM mapping.
    pub guest_ram: MemFigures,
    /// The guest image (pmem) mapping, when named.
    pub guest_image: MemFigures,
}

impl MemSplit {
    /// Everything that is not the guest's: shim, VMM, devices, binary.
    pub fn husk_own(&self) -> MemFigures {
        self.total
            .saturating_sub(self.guest_ram)
            .saturating_sub(self.guest_image)
    }
}

fn read(path: PathBuf) -> Result<(String, PathBuf), ProcfsError> {
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((text, path)),
        Err(source) => Err(ProcfsError::Read { path, source }),
    }
}

/// The first number after `name:` on the line that starts with it.
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(':'))
        .and_then(|l| l[name.len() + 1..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Whole-process RSS and PSS from smaps_rollup.
pub fn process_memory(pid: u32) -> Result<MemFigures, ProcfsError> {
    let (text, path) = read(proc_path(pid, "smaps_rollup"))?;
    let get = |f: &'static str| {
        field(&text, f).ok_or(ProcfsError::Field {
            path: path.clone(),
            field: f,
        })
    };
    Ok(MemFigures {
        rss_kib: get("Rss")?,
        pss_kib: get("Pss")?,
    })
}

/// The process's memory split into the guest's RAM (the mappings of
/// exactly `guest_ram_kib`), the guest image (mappings of `image`) and the
/// rest, all from one read of smaps.
pub fn memory_split(
    pid: u32,
    guest_ram_kib: u64,
    image: Option<&Path>,
) -> Result<MemSplit, ProcfsError> {
    let (text, _) = read(proc_path(pid, "smaps"))?;
    Ok(split_smaps(&text, guest_ram_kib, image))
}

fn split_smaps(text: &str, guest_ram_kib: u64, image: Option<&Path>) -> MemSplit {
    #[derive(Clone, Copy, PartialEq)]
    enum Part {
        Ram,
        Image,
        Other,
    }
    let image = image.map(|p| p.to_string_lossy().into_owned());
    let mut split = MemSplit::default();
    // What the current mapping may be from its path; then, from its size.
    let mut path_part = Part::Other;
    let mut part = Part::Other;
    for line in text.lines() {
        if is_mapping_header(line) {
            // `start-end perms offset dev inode   [path]`
            let path = line.split_whitespace().nth(5);
            path_part = match (&image, path) {
                (Some(i), Some(p)) if p == i => Part::Image,
                // Guest RAM is anonymous, or a template's memory file.
                (_, None) => Part::Ram,
                (_, Some(p)) if p.rsplit('/').next() == Some(MEMORY_FILE) => Part::Ram,
                _ => Part::Other,
            };
            part = Part::Other;
        } else if let Some(size) = line.strip_prefix("Size:") {
            let size = size.split_whitespace().next().and_then(|v| v.parse().ok());
            part = match path_part {
                Part::Ram if size == Some(guest_ram_kib) => Part::Ram,
                Part::Image => Part::Image,
                _ => Part::Other,
            };
        } else {
            let fig = if let Some(v) = field(line, "Rss") {
                MemFigures {
                    rss_kib: v,
                    pss_kib: 0,
                }
            } else if let Some(v) = field(line, "Pss") {
                MemFigures {
                    rss_kib: 0,
                    pss_kib: v,
                }
            } else {
                continue;
            };
            split.total += fig;
            match part {
                Part::Ram => split.guest_ram += fig,
                Part::Image => split.guest_image += fig,
                Part::Other => {}
            }
        }
    }
    split
}

/// A mapping's first line starts with its hex address range.
fn is_mapping_header(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .and_then(|range| range.split_once('-'))
        .is_some_and(|(a, b)| {
            !a.is_empty()
                && a.bytes().all(|c| c.is_ascii_hexdigit())
                && b.bytes().all(|c| c.is_ascii_hexdigit())
        })
}

/// A running process and its arguments.
#[derive(Debug, Clone)]
pub struct ProcessArgs {
    pub pid: u32,
    pub args: Vec<String>,
}

/// Every process of the host that is not a zombie, with its arguments
/// (processes that end during the scan are left out).
pub fn live_processes() -> Vec<ProcessArgs> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if zombie {
            continue;
        }
        let args = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        found.push(ProcessArgs { pid, args });
    }
    found
}

pub fn thread_count(pid: u32) -> Result<u64, ProcfsError> {
    let (text, path) = read(proc_path(pid, "status"))?;
    field(&text, "Threads").ok_or(ProcfsError::Field {
        path,
        field: "Threads",
    })
}

/// User plus system CPU time of the whole process (all its threads), in
/// clock ticks (`CLK_TCK`).
pub fn cpu_ticks(pid: u32) -> Result<u64, ProcfsError> {
    let (text, path) = read(proc_path(pid, "stat"))?;
    // The command name may hold spaces and parentheses: fields count from
    // the last ')'. utime and stime are fields 14 and 15.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = || fields.next().and_then(|v| v.parse::<u64>().ok());
    match (next(), next()) {
        (Some(u), Some(s)) => Ok(u + s),
        _ => Err(ProcfsError::Field {
            path,
            field: "utime/stime",
        }),
    }
}

/// Clock ticks per second for `cpu_ticks`.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// The host's MemAvailable, in KiB.
pub fn mem_available_kib() -> Result<u64, ProcfsError> {
    let (text, path) = read(PathBuf::from("/proc/meminfo"))?;
    field(&text, "MemAvailable").ok_or(ProcfsError::Field {
        path,
        field: "MemAvailable",
    })
}

/// Busy and total jiffies of all CPUs (/proc/stat's `cpu` line): busy is
/// everything but idle and iowait.
pub fn host_cpu_jiffies() -> Result<(u64, u64), ProcfsError> {
    let (text, path) = read(PathBuf::from("/proc/stat"))?;
    let values: Vec<u64> = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if values.len() < 5 {
        return Err(ProcfsError::Field { path, field: "cpu" });
    }
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values[3] + values[4];
    Ok((total - idle, total))
}

fn proc_path(pid: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_processes_include_this_one_with_its_arguments() {
        let me = std::process::id();
        let found = live_processes();
        let mine = found.iter().find(|p| p.pid == me).expect("this process");
        let want: Vec<String> = std::env::args().collect();
        assert_eq!(mine.args, want);
    }

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
        let s = memory_split(me, size as u64 / 1024, None).unwrap();
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(ptr, size) };
        assert_eq!(s.guest_ram.rss_kib, 16);
        assert_eq!(s.guest_ram.pss_kib, 16);
        assert!(s.total.rss_kib > s.guest_ram.rss_kib);
        assert_eq!(s.husk_own().rss_kib, s.total.rss_kib - 16);
    }

    #[test]
    fn splits_smaps_by_mapping() {
        let smaps = "\
7f0000000000-7f0010000000 rw-p 00000000 00:00 0 
Size:             262144 kB
Rss:                1024 kB
Pss:                 512 kB
7f0010000000-7f0020000000 r--s 00000000 08:01 1234                       /cache/agent.erofs
Size:             262144 kB
Rss:                2048 kB
Pss:                 100 kB
Pss_Dirty:             0 kB
55d000000000-55d000100000 r-xp 00000000 08:01 99                         /usr/bin/husk
Size:               1024 kB
Rss:                 800 kB
Pss:                 300 kB
VmFlags: rd ex mr mw me
";
        let s = split_smaps(smaps, 262_144, Some(Path::new("/cache/agent.erofs")));
        assert_eq!(
            s.guest_ram,
            MemFigures {
                rss_kib: 1024,
                pss_kib: 512
            }
        );
        assert_eq!(
            s.guest_image,
            MemFigures {
                rss_kib: 2048,
                pss_kib: 100
            }
        );
        assert_eq!(
            s.total,
            MemFigures {
                rss_kib: 3872,
                pss_kib: 912
            }
        );
        assert_eq!(s.husk_own().pss_kib, 300);
        // Without the image's path, the image is husk's own; the image's
        // mapping is never taken for RAM although it has the RAM's size.
        let s = split_smaps(smaps, 262_144, None);
        assert_eq!(s.guest_ram.pss_kib, 512);
        assert_eq!(s.husk_own().pss_kib, 400);
    }

    #[test]
    fn cpu_and_host_figures_read() {
        let me = std::process::id();
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(0u64.wrapping_add(1));
        }
        assert!(cpu_ticks(me).unwrap() > 0);
        assert!(mem_available_kib().unwrap() > 0);
        let (busy, total) = host_cpu_jiffies().unwrap();
        assert!(busy > 0 && busy < total);
        assert!(ticks_per_second() >= 100);
    }
}
