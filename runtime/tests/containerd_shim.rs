//! husk under a real containerd: Debian's containerd 1.6 started by the test
//! (its own socket, root and state), `ctr` as the client, the busybox image
//! built locally, `--runtime io.containerd.husk.v2`.
//!
//! Boots are slow on software KVM, so one sandbox (one VM) serves most
//! checks: `pod` runs a long-lived init, and the other containers join it
//! with CRI's annotations (as a Kubernetes pod's containers do), each
//! through `ctr run` as a user would. Plain containers, each in a sandbox
//! of its own, are `plain_container_and_bad_input` and `kill_dash_nine`.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::containerd::{
    assert_no_host_cgroups, containerd_or_skip, stderr, stdout, Containerd, IMAGE, RUNTIME,
};

const JOIN: [&str; 4] = [
    "--annotation",
    "io.kubernetes.cri.container-type=container",
    "--annotation",
    "io.kubernetes.cri.sandbox-id=pod",
];

/// The pod's init: forwards SIGTERM to its child, which dies of it, and
/// exits with the child's status (143): a PID-namespace init with no
/// handler ignores SIGTERM, under runc as under husk.
const POD_INIT: &str = "trap 'kill -TERM $c; wait $c; exit $?' TERM; sleep 100000 & c=$!; wait $c";

fn ok_lines(o: &std::process::Output) -> Vec<String> {
    stdout(o)
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect()
}

/// Runs `ctr ARGS` with a pty of `rows` x `cols` as its terminal; returns
/// what it printed and its exit status.
fn ctr_in_pty(c: &Containerd, args: &[String], rows: u16, cols: u16) -> (String, i32) {
    let ws = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = c
        .ctr_cmd(&argv)
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the last slave fd (ctr's) closes.
        while let Ok(n @ 1..) = master.read(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let status = child.wait().unwrap().code().unwrap_or(-1);
    (reader.join().unwrap(), status)
}

#[test]
fn one_sandbox_serves_a_pod_of_containers() {
    if !containerd_or_skip("one_sandbox_serves_a_pod_of_containers") {
        return;
    }
    let c = Containerd::start("pod");
    // The pod's own container boots the sandbox; ctr stays attached so its
    // exit status is the init's.
    let pod_args = c.run_args(&[], "pod", &["sh", "-c", POD_INIT]);
    let pod_argv: Vec<&str> = pod_args.iter().map(String::as_str).collect();
    let mut pod = c
        .lasting_ctr_cmd(&pod_argv)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    c.wait_task_status("pod", "RUNNING", Duration::from_secs(600));
    assert_eq!(c.shim_pids().len(), 1, "one husk process for the sandbox");

    joined_containers_run_and_exit(&c);
    stdio_round_trips(&c);
    close_io_ends_cat(&c);
    a_tty_is_a_tty(&c);
    exec_kill_ps_metrics_pause(&c);
    bind_mounts_reach_the_guest(&c);
    assert_eq!(c.shim_pids().len(), 1, "still one husk process");
    a_spec_the_agent_refuses_is_a_clear_error(&c);

    let kill = c.ctr(&["task", "kill", "-s", "SIGTERM", "pod"]);
    assert!(kill.status.success(), "{}", stderr(&kill));
    let status = pod.wait().unwrap();
    assert_eq!(status.code(), Some(143), "the pod's init ended by SIGTERM");
    // ctr run --rm deleted it; the last container takes the sandbox along.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !c.leftovers().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.leftovers(), Vec::<String>::new(), "nothing left behind");
    assert!(!c.socket_of("pod").exists(), "the shim socket is gone");
}

fn joined_containers_run_and_exit(c: &Containerd) {
    let args = c.run_args(&JOIN, "j1", &["sh", "-c", "echo hello; exit 7"]);
    let out = c.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(ok_lines(&out), ["hello"], "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(7));
}

fn stdio_round_trips(c: &Containerd) {
    // 1 MiB from a process that exits right after writing it.
    let script = "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 1048576";
    let args = c.run_args(&JOIN, "j2", &["sh", "-c", script]);
    let out = c.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz\n";
    let want: Vec<u8> = line.iter().copied().cycle().take(1 << 20).collect();
    assert_eq!(out.stdout.len(), want.len(), "all of the 1 MiB arrived");
    assert!(out.stdout == want, "the 1 MiB arrived intact");

    // echo data | ctr run ... head -n1
    let args = c.run_args(&JOIN, "j3", &["head", "-n1"]);
    let mut child = c
        .ctr_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"data\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(ok_lines(&out), ["data"]);
    assert!(out.status.success());
}

/// CloseIO through the shim's Task API (ctr has no command for it alone):
/// with our end of ctr's stdin still open, `cat` ends only if CloseIO
/// reaches its stdin.
fn close_io_ends_cat(c: &Containerd) {
    use containerd_shim_protos::api::CloseIORequest;
    use containerd_shim_protos::{ttrpc, TaskClient};
    let args = c.run_args(&JOIN, "j4", &["cat"]);
    let mut child = c
        .ctr_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"through cat\n").unwrap();
    c.wait_task_status("j4", "RUNNING", Duration::from_secs(300));
    let address = husk_runtime::shim::address_of(&c.socket_of("pod"));
    let client = TaskClient::new(ttrpc::Client::connect(&address).unwrap());
    let mut req = CloseIORequest::new();
    req.id = "j4".into();
    req.stdin = true;
    client
        .close_io(ttrpc::context::with_timeout(60_000_000_000), &req)
        .expect("CloseIO");
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(ok_lines(&out), ["through cat"]);
    assert!(out.status.success(), "cat ended by CloseIO");
}

fn a_tty_is_a_tty(c: &Containerd) {
    let mut extra = vec!["-t"];
    extra.extend(JOIN);
    let args = c.run_args(&extra, "j5", &["sh", "-c", "tty; stty size"]);
    let (out, status) = ctr_in_pty(c, &args, 33, 101);
    assert_eq!(status, 0, "{out}");
    let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert!(lines.iter().any(|l| l.starts_with("/dev/pts/")), "{out:?}");
    assert!(
        lines.contains(&"33 101"),
        "the pty has the terminal's size: {out:?}"
    );
}

/// Waits until the shim reports exec `exec` of the pod RUNNING (ctr has no
/// way to ask).
fn wait_exec_running(c: &Containerd, exec: &str) {
    use containerd_shim_protos::api::{StateRequest, Status};
    use containerd_shim_protos::{ttrpc, TaskClient};
    let address = husk_runtime::shim::address_of(&c.socket_of("pod"));
    let client = TaskClient::new(ttrpc::Client::connect(&address).unwrap());
    let mut req = StateRequest::new();
    req.id = "pod".into();
    req.exec_id = exec.into();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let state = client.state(ttrpc::context::with_timeout(10_000_000_000), &req);
        if state.is_ok_and(|s| s.status.enum_value() == Ok(Status::RUNNING)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "exec {exec} never ran"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn exec_kill_ps_metrics_pause(c: &Containerd) {
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "pod",
        "sh",
        "-c",
        "echo in-exec; exit 4",
    ]);
    assert_eq!(
        ok_lines(&out),
        ["in-exec"],
        "ctr ended with {:?}: {}",
        out.status,
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(4));

    let mut sleeper = c
        .ctr_cmd(&["task", "exec", "--exec-id", "e2", "pod", "sleep", "1000"])
        .spawn()
        .unwrap();
    wait_exec_running(c, "e2");
    let ps = c.ctr(&["task", "ps", "pod"]);
    let listed: Vec<u32> = ok_lines(&ps)
        .iter()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse::<u32>().ok())
        .collect();
    assert!(
        listed.len() >= 3,
        "ps lists the init, its sleep and the exec: {listed:?}"
    );
    let kill = c.ctr(&["task", "kill", "-s", "SIGTERM", "--exec-id", "e2", "pod"]);
    assert!(kill.status.success(), "{}", stderr(&kill));
    assert_eq!(
        sleeper.wait().unwrap().code(),
        Some(143),
        "killed by SIGTERM"
    );

    let m = c.ctr(&["task", "metrics", "pod"]);
    let text = stdout(&m);
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert!(value("memory.usage_in_bytes") > 0, "{text}");
    assert!(value("cpuacct.usage") > 0, "{text}");
    assert!(value("pids.current") >= 2, "{text}");

    assert!(c.ctr(&["task", "pause", "pod"]).status.success());
    c.wait_task_status("pod", "PAUSED", Duration::from_secs(10));
    assert!(c.ctr(&["task", "resume", "pod"]).status.success());
    c.wait_task_status("pod", "RUNNING", Duration::from_secs(10));
}

/// A host file and a host directory bound into a container (the spec's
/// bind mounts) are there in the guest, the directory read-only.
fn bind_mounts_reach_the_guest(c: &Containerd) {
    let host = c.dir.join("bind-src");
    std::fs::create_dir_all(host.join("dir")).unwrap();
    std::fs::write(host.join("file"), "a host file\n").unwrap();
    std::fs::write(host.join("dir/inside"), "in a host dir\n").unwrap();
    let file = format!(
        "type=bind,src={},dst=/etc/from-host,options=rbind:ro",
        host.join("file").display()
    );
    let dir = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        host.join("dir").display()
    );
    let mut extra = vec!["--mount", &file, "--mount", &dir];
    extra.extend(JOIN);
    let script = "cat /etc/from-host /data/inside; touch /data/x 2>/dev/null && echo writable || echo read-only";
    let args = c.run_args(&extra, "j7", &["sh", "-c", script]);
    let out = c.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        ok_lines(&out),
        ["a host file", "in a host dir", "read-only"],
        "{}",
        stderr(&out)
    );
    assert!(!host.join("dir/x").exists());
}

/// A user namespace: husk's agent refuses it (the guest is the boundary).
fn a_spec_the_agent_refuses_is_a_clear_error(c: &Containerd) {
    let mut extra = vec!["--uidmap", "0:1000:1000", "--gidmap", "0:1000:1000"];
    extra.extend(JOIN);
    let args = c.run_args(&extra, "j6", &["true"]);
    let out = c.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.to_lowercase().contains("user namespaces"), "{err}");
    let bundle = c.bundle("j6");
    assert!(!bundle.join("husk.json").exists(), "no state left for j6");
    assert!(
        !c.state_dir.join("sandboxes/pod/shared/j6").exists(),
        "no share left for j6"
    );
    let _ = c.ctr(&["containers", "rm", "j6"]);
}

/// A container without annotations gets a sandbox of its own; bad input
/// (an annotation over the config's maximum, a missing kernel, a broken
/// config, a rootfs type husk cannot share) is a clear error at ctr and
/// leaves nothing behind.
#[test]
fn plain_container_and_bad_input() {
    if !containerd_or_skip("plain_container_and_bad_input") {
        return;
    }
    let c = Containerd::start("plain");
    let good = std::fs::read_to_string(&c.config).unwrap();
    let fails_with = |extra: &[&str], id: &str, needles: &[&str]| {
        let args = c.run_args(extra, id, &["true"]);
        let out = c.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!out.status.success(), "{id} should fail");
        let err = stderr(&out);
        for n in needles {
            assert!(err.contains(n), "{id}: {n:?} not in {err}");
        }
        let _ = c.ctr(&["containers", "rm", id]);
        wait_clean(&c);
    };
    fails_with(
        &["--annotation", "io.husk.vcpus=8"],
        "b1",
        &["io.husk.vcpus", "max_vcpus = 2"],
    );
    std::fs::write(&c.config, good.replace("vmlinux", "no-such-vmlinux")).unwrap();
    fails_with(&[], "b2", &["no-such-vmlinux", "husk install"]);
    std::fs::write(&c.config, "[guest\nkernel = 1\n").unwrap();
    fails_with(&[], "b3", &[&c.config.display().to_string(), "not valid"]);
    std::fs::write(&c.config, &good).unwrap();
    unsupported_rootfs_type_is_refused(&c);

    let args = c.run_args(&[], "c1", &["sh", "-c", "echo hello; exit 7"]);
    let out = c.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(ok_lines(&out), ["hello"], "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(7));
    wait_clean(&c);
}

fn wait_clean(c: &Containerd) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !c.leftovers().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.leftovers(), Vec::<String>::new(), "nothing left behind");
}

/// containerd's snapshotters here give overlay or bind mounts, which husk
/// shares; a block-device rootfs (devmapper, say) it cannot. ctr cannot
/// produce one, so the test starts the shim as containerd does and calls
/// Create itself.
fn unsupported_rootfs_type_is_refused(c: &Containerd) {
    use containerd_shim_protos::api::{CreateTaskRequest, Mount, ShutdownRequest};
    use containerd_shim_protos::{ttrpc, TaskClient};
    let bundle = c.dir.join("manual-bundle");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    let spec = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}}"#;
    std::fs::write(bundle.join("config.json"), spec).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_husk"))
        .arg0_shim()
        .args(["-namespace", "default", "-address"])
        .arg(&c.address)
        .args([
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "manual",
            "start",
        ])
        .current_dir(&bundle)
        .env("HUSK_CONFIG", &c.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "shim start: {}", stderr(&out));
    let address = stdout(&out);
    assert!(
        address.starts_with("unix:///run/containerd/s/"),
        "{address:?}"
    );
    let client = TaskClient::new(ttrpc::Client::connect(&address).unwrap());
    let mut req = CreateTaskRequest::new();
    req.id = "manual".into();
    req.bundle = bundle.display().to_string();
    let mut m = Mount::new();
    m.type_ = "ext4".into();
    m.source = "/dev/vdz".into();
    req.rootfs.push(m);
    let ctx = || ttrpc::context::with_timeout(60_000_000_000);
    let err = client.create(ctx(), &req).unwrap_err().to_string();
    assert!(err.contains("ext4") && err.contains("overlay"), "{err}");
    let _ = client.shutdown(ctx(), &ShutdownRequest::new());
    wait_clean(c);
}

trait Arg0Shim {
    fn arg0_shim(&mut self) -> &mut Self;
}

impl Arg0Shim for Command {
    fn arg0_shim(&mut self) -> &mut Self {
        std::os::unix::process::CommandExt::arg0(self, "containerd-shim-husk-v2")
    }
}

/// kill -9 of the husk process: containerd sees the task exit and runs
/// `containerd-shim-husk-v2 delete`, which must clean up everything.
#[test]
fn kill_dash_nine_of_the_husk_process_is_cleaned_up() {
    if !containerd_or_skip("kill_dash_nine_of_the_husk_process_is_cleaned_up") {
        return;
    }
    let c = Containerd::start("kill9");
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "k9",
        "sleep",
        "100000",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pids = c.shim_pids();
    assert_eq!(pids.len(), 1);
    assert!(
        !c.leftovers().is_empty(),
        "a running sandbox has mounts and state"
    );
    let events = EventStream::subscribe(&c);
    // Only kill once the subscription is proven live: an event published
    // before `ctr events` subscribed would never reach it.
    let subscribed = events.wait_for(
        Duration::from_secs(30),
        || {
            let _ = c.ctr(&["containers", "label", "k9", "husk.test=subscribed"]);
        },
        |l| l.contains("/containers/update") && l.contains("k9"),
    );
    assert!(
        subscribed.is_ok(),
        "ctr events never subscribed: {subscribed:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_clean(&c);
    assert_no_host_cgroups(&["k9"]);
    assert!(
        !c.socket_of("k9").exists(),
        "the dead shim's socket is gone"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ls = stdout(&c.ctr(&["task", "ls"]));
        if !ls
            .lines()
            .any(|l| l.starts_with("k9 ") && l.contains("RUNNING"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "k9 still RUNNING:\n{ls}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let exited = events.wait_for(
        Duration::from_secs(30),
        || {},
        |l| l.contains("/tasks/exit") && l.contains("k9"),
    );
    assert!(
        exited.is_ok(),
        "containerd reported no exit of k9:\n{}",
        exited.unwrap_err()
    );
    let _ = c.ctr(&["task", "delete", "k9"]);
    let rm = c.ctr(&["containers", "rm", "k9"]);
    assert!(rm.status.success(), "{}", stderr(&rm));
}

/// `ctr events` running beside a test, its lines collected as they come.
struct EventStream {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: std::cell::RefCell<Vec<String>>,
}

impl EventStream {
    fn subscribe(c: &Containerd) -> Self {
        // ctr itself, not under `timeout`, so killing it ends the stream.
        let mut child = Command::new("ctr")
            .arg("--address")
            .arg(&c.address)
            .arg("events")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Default::default(),
        }
    }

    /// Runs `poke` every second until a line matching `want` arrives; on
    /// timeout returns everything seen so far.
    fn wait_for(
        &self,
        timeout: Duration,
        mut poke: impl FnMut(),
        want: impl Fn(&str) -> bool,
    ) -> Result<(), String> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            poke();
            while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(1)) {
                let hit = want(&l);
                self.seen.borrow_mut().push(l);
                if hit {
                    return Ok(());
                }
            }
        }
        Err(self.seen.borrow().join("\n"))
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
