//! The rest of a container's life over ttrpc, on a host as root: exec into a
//! running container, signals with runc's exit codes, process listing,
//! stats, a terminal with resize, an OOM kill reported by GetOOMEvent, and
//! RemoveContainer leaving no process or cgroup behind. The engine's own
//! tests cover each behaviour in depth; these prove the RPC layer carries it.

mod agent_process;
mod common;

use std::path::Path;
use std::thread;

use agent_process::{create_req, create_sandbox, ctx, read_all, start_req, wait, AgentProcess};
use common::{busybox_rootfs, can_run, spec};
use husk_agent_protocol::agent;
use husk_agent_protocol::agent_ttrpc::AgentServiceClient;
use serde_json::json;

fn exec(c: &AgentServiceClient, id: &str, exec_id: &str, args: &[&str], terminal: bool) -> u32 {
    let process = json!({"args": args, "cwd": "/", "user": {"uid": 0, "gid": 0},
                         "env": ["PATH=/bin"], "terminal": terminal});
    let req = agent::ExecProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        process: serde_json::to_vec(&process).unwrap(),
        terminal,
        ..Default::default()
    };
    c.exec_process(ctx(), &req).unwrap().pid
}

fn read_exec(c: &AgentServiceClient, id: &str, exec_id: &str) -> String {
    let req = agent::ReadStreamRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    let mut out = Vec::new();
    loop {
        let data = c.read_stdout(ctx(), &req).unwrap().data;
        if data.is_empty() {
            return String::from_utf8(out).unwrap();
        }
        out.extend(data);
    }
}

fn read_until(c: &AgentServiceClient, id: &str, needle: &str) -> String {
    let req = agent::ReadStreamRequest {
        container_id: id.into(),
        ..Default::default()
    };
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(needle) {
        let data = c.read_stdout(ctx(), &req).unwrap().data;
        assert!(
            !data.is_empty(),
            "stdout ended before {needle:?}: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend(data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn wait_exec(c: &AgentServiceClient, id: &str, exec_id: &str) -> i32 {
    let req = agent::WaitProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    c.wait_process(ctx(), &req).unwrap().exit_status
}

fn signal(c: &AgentServiceClient, id: &str, exec_id: &str, signal: u32) {
    let req = agent::SignalProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        signal,
        ..Default::default()
    };
    c.signal_process(ctx(), &req).unwrap();
}

fn remove(c: &AgentServiceClient, id: &str) {
    let req = agent::RemoveContainerRequest {
        container_id: id.into(),
        ..Default::default()
    };
    c.remove_container(ctx(), &req).unwrap();
}

/// After RemoveContainer: no pid alive, no cgroup directory in any hierarchy.
fn assert_nothing_left(agent: &AgentProcess, id: &str, pids: &[u32]) {
    for &pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still exists"
        );
    }
    for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = entry.path().join(&agent.cgroup_parent).join(id);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn exec_signals_stats_and_remove_over_ttrpc() {
    if !can_run("exec_signals_stats_and_remove_over_ttrpc") {
        return;
    }
    let agent = AgentProcess::start("ctr-life");
    let c = &agent.client;
    create_sandbox(c);
    let rootfs = busybox_rootfs();
    let id = "life";
    let init = c
        .create_container(
            ctx(),
            &create_req(id, &spec(&["sleep", "1000"]), rootfs.path()),
        )
        .unwrap()
        .pid;
    c.start_container(ctx(), &start_req(id)).unwrap();

    // An exec'd process shares the container's PID namespace: its init is PID 1.
    exec(c, id, "ps", &["cat", "/proc/1/cmdline"], false);
    assert_eq!(read_exec(c, id, "ps"), "sleep\u{0}1000\u{0}");
    assert_eq!(wait_exec(c, id, "ps"), 0);

    let sleeper = exec(c, id, "sleeper", &["sleep", "1000"], false);
    let listed = c
        .list_processes(
            ctx(),
            &agent::ListProcessesRequest {
                container_id: id.into(),
                ..Default::default()
            },
        )
        .unwrap()
        .pids;
    assert!(
        listed.contains(&init) && listed.contains(&sleeper),
        "{listed:?}"
    );
    let stats = c
        .stats_container(
            ctx(),
            &agent::StatsContainerRequest {
                container_id: id.into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(stats.cpu.usage_ns > 0, "{stats:?}");
    assert!(stats.memory.usage_bytes > 0, "{stats:?}");
    assert!(stats.pids.current >= 2, "{stats:?}");

    signal(c, id, "sleeper", 15);
    assert_eq!(wait_exec(c, id, "sleeper"), 143);
    signal(c, id, "", 9);
    assert_eq!(wait(c, id), 137);
    remove(c, id);
    assert_nothing_left(&agent, id, &[init, sleeper]);
}

#[test]
fn a_terminal_process_gets_a_tty_that_honours_resize() {
    if !can_run("a_terminal_process_gets_a_tty_that_honours_resize") {
        return;
    }
    let agent = AgentProcess::start("ctr-tty");
    let c = &agent.client;
    create_sandbox(c);
    let rootfs = busybox_rootfs();
    let id = "tty";
    let mut spec = spec(&[
        "sh",
        "-c",
        "tty; echo ready; read x; stty size; echo done-$x",
    ]);
    spec["process"]["terminal"] = json!(true);
    let mut req = create_req(id, &spec, rootfs.path());
    req.terminal = true;
    let pid = c.create_container(ctx(), &req).unwrap().pid;
    c.start_container(ctx(), &start_req(id)).unwrap();
    let out = read_until(c, id, "ready");
    assert!(out.contains("/dev/pts/"), "no terminal: {out:?}");

    let resize = agent::TtyWinResizeRequest {
        container_id: id.into(),
        rows: 40,
        cols: 120,
        ..Default::default()
    };
    c.tty_win_resize(ctx(), &resize).unwrap();
    let stdin = agent::WriteStreamRequest {
        container_id: id.into(),
        data: b"go\n".to_vec(),
        ..Default::default()
    };
    c.write_stdin(ctx(), &stdin).unwrap();
    let rest = String::from_utf8(read_all(c, id, false)).unwrap();
    assert!(rest.contains("40 120"), "resize not applied: {rest:?}");
    assert!(rest.contains("done-go"), "stdin not delivered: {rest:?}");
    assert_eq!(wait(c, id), 0);
    remove(c, id);
    assert_nothing_left(&agent, id, &[pid]);
}

#[test]
fn a_memory_limit_oom_kill_is_reported_by_get_oom_event() {
    if !can_run("a_memory_limit_oom_kill_is_reported_by_get_oom_event") {
        return;
    }
    let agent = AgentProcess::start("ctr-oom");
    let c = &agent.client;
    create_sandbox(c);
    let rootfs = busybox_rootfs();
    let id = "oom";
    let limit = 32 * 1024 * 1024;
    // tail keeps the last "line" of newline-free input in memory: 64 MiB.
    let mut spec = spec(&["sh", "-c", "head -c 67108864 /dev/zero | tail"]);
    spec["linux"]["resources"]["memory"] = json!({"limit": limit, "swap": limit});
    let pid = c
        .create_container(ctx(), &create_req(id, &spec, rootfs.path()))
        .unwrap()
        .pid;
    let events = c.clone();
    let oom = thread::spawn(move || events.get_oom_event(ctx(), &agent::GetOOMEventRequest::new()));
    c.start_container(ctx(), &start_req(id)).unwrap();
    assert_eq!(wait(c, id), 137);
    assert_eq!(oom.join().unwrap().unwrap().container_id, id);
    remove(c, id);
    assert_nothing_left(&agent, id, &[pid]);
}
