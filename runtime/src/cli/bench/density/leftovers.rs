//! What a run left on the host after its teardown, looked for the way an
//! operator would: processes serving a pod of this run (their command
//! lines name the pod id), files and sockets in the run's state
//! directory, mounts under the work directory, cgroups named after a pod,
//! and, through containerd, shim sockets and container records. Pod ids
//! share the run's prefix (`hd<bench pid>-`), so nothing of another run
//! or another husk is taken for this one.

use std::path::{Path, PathBuf};

use husk_runtime::shim::socket_path;

use super::setup::Bench;

pub fn find(bench: &Bench, containerd: Option<&Path>, ids: &[String]) -> Vec<String> {
    let mut found = processes(&bench.prefix);
    found.extend(state_files(bench.state_dir()));
    found.extend(mounts(&bench.work));
    found.extend(cgroups(&bench.prefix));
    if let Some(address) = containerd {
        found.extend(containerd_records(address, ids, &bench.prefix));
    }
    found
}

/// Live processes whose command line carries `-id <prefix>-...` or
/// `--id <prefix>-...` (the shim and `husk run`).
fn processes(prefix: &str) -> Vec<String> {
    let id = format!("{prefix}-");
    husk_runtime::procfs::live_processes()
        .into_iter()
        .filter(|p| {
            p.args
                .windows(2)
                .any(|w| (w[0] == "-id" || w[0] == "--id") && w[1].starts_with(&id))
        })
        .map(|p| format!("process {}: {}", p.pid, p.args.join(" ")))
        .collect()
}

/// Anything left in the run's state directory but its empty skeleton.
fn state_files(state: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack: Vec<PathBuf> = vec![state.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) => {
                    use std::os::unix::fs::FileTypeExt;
                    let what = if t.is_socket() { "socket" } else { "file" };
                    found.push(format!("{what} {}", path.display()));
                }
                Err(_) => {}
            }
        }
    }
    found
}

fn mounts(work: &Path) -> Vec<String> {
    let work = work.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&work))
        .map(|p| format!("mount {p}"))
        .collect()
}

/// Cgroup directories named after a pod of this run, up to three levels
/// into each hierarchy (`/default/<id>` is ctr's default path).
fn cgroups(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack: Vec<(PathBuf, usize)> = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{prefix}-")) {
                found.push(format!("cgroup {}", e.path().display()));
            } else if depth < 3 {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    found
}

fn containerd_records(address: &Path, ids: &[String], prefix: &str) -> Vec<String> {
    let mut found: Vec<String> = ids
        .iter()
        .map(|id| socket_path(&address.display().to_string(), "default", id))
        .filter(|s| s.exists())
        .map(|s| format!("shim socket {}", s.display()))
        .collect();
    let listed = std::process::Command::new("ctr")
        .arg("--address")
        .arg(address)
        .args(["containers", "ls", "-q"])
        .output();
    if let Ok(out) = listed {
        found.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with(&format!("{prefix}-")))
                .map(|l| format!("containerd container record {l}")),
        );
    }
    found
}
