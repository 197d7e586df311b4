//! The container engine on this host, as root: real namespaces, cgroups,
//! mounts and a busybox rootfs. Each test uses its own container ids, so
//! they can run in parallel. Tests skip (saying why) when not root.

mod common;

use std::time::Duration;

use common::{bytes, read_all, read_until, spec, Fixture};
use husk_agent::container::{ContainerError, ProcessStatus};
use serde_json::json;

/// A profile that lets everything but mkdir through.
fn deny_mkdir() -> serde_json::Value {
    json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]})
}

#[test]
fn output_streams_and_exit_code_come_back() {
    let Some(fx) = Fixture::new("output_streams_and_exit_code_come_back") else {
        return;
    };
    let engine = &fx.engine;
    let id = "streams";
    let spec = spec(&["sh", "-c", "echo hi; echo err >&2; exit 3"]);
    let pid = fx.start(id, &spec);
    assert_eq!(read_all(engine, id, None, false).unwrap(), "hi\n");
    assert_eq!(read_all(engine, id, None, true).unwrap(), "err\n");
    assert_eq!(engine.wait(id, None).unwrap(), 3);
    let state = engine.state(id, None).unwrap();
    assert_eq!(
        (state.pid, state.status, state.exit_code),
        (pid, ProcessStatus::Stopped, Some(3))
    );
    engine.remove(id).expect("remove");
    assert!(matches!(
        engine.wait(id, None),
        Err(ContainerError::NotFound(_))
    ));
    fx.assert_nothing_left(id, &[pid]);
}

#[test]
fn exec_joins_the_pid_namespace_and_signals_map_like_runc() {
    let Some(fx) = Fixture::new("exec_joins_the_pid_namespace_and_signals_map_like_runc") else {
        return;
    };
    let engine = &fx.engine;
    let id = "execsig";
    let mut spec = spec(&["sleep", "1000"]);
    let masked = spec["linux"]["maskedPaths"].as_array_mut().unwrap();
    masked.extend([json!("/proc/version"), json!("/sys/kernel")]);
    spec["linux"]["seccomp"] = deny_mkdir();
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("hello"), "from-host\n").unwrap();
    let bind = json!({"destination": "/data", "type": "bind", "source": host_dir.path(),
                      "options": ["rbind", "ro"]});
    spec["mounts"].as_array_mut().unwrap().push(bind);
    let init = fx.start(id, &spec);

    // As root: a masked file reads as empty, a masked directory is empty,
    // /proc/sys is read-only, seccomp applies, the bind mount is there and
    // read-only.
    let script = "cat /proc/1/comm; wc -c < /proc/version; ls /sys/kernel | wc -l; \
                  (echo x > /proc/sys/kernel/domainname) 2>/dev/null || echo sys-ro; \
                  mkdir /tmp/y 2>/dev/null || echo mkdir-denied; cat /data/hello; \
                  (echo x > /data/new) 2>/dev/null || echo data-ro; echo pid=$$";
    let ps = json!({"args": ["sh", "-c", script], "cwd": "/", "user": {"uid": 0, "gid": 0},
                    "env": ["PATH=/bin"]});
    engine.exec(id, "ps", &bytes(&ps), false).expect("exec ps");
    let out = read_all(engine, id, Some("ps"), false).unwrap();
    let err = read_all(engine, id, Some("ps"), true).unwrap();
    assert!(
        out.starts_with("sleep\n0\n0\nsys-ro\nmkdir-denied\nfrom-host\ndata-ro\n"),
        "PID 1 is not the init, or paths not masked: {out:?} {err:?}"
    );
    let own_pid: u32 = out.trim().rsplit("pid=").next().unwrap().parse().unwrap();
    assert!(
        own_pid > 1 && own_pid < 100,
        "exec pid {own_pid} is not from the container's pid namespace"
    );
    assert_eq!(engine.wait(id, Some("ps")).unwrap(), 0);
    assert!(!host_dir.path().join("new").exists());
    let ps_state = engine.state(id, Some("ps")).unwrap();
    assert_eq!(
        (ps_state.status, ps_state.exit_code),
        (ProcessStatus::Stopped, Some(0))
    );
    assert_eq!(engine.delete_exec(id, "ps").unwrap(), 0);
    assert!(matches!(
        engine.wait(id, Some("ps")),
        Err(ContainerError::ExecNotFound { .. })
    ));

    // A process that is not the namespace's init dies of SIGTERM: 128+15.
    let sleeper = json!({"args": ["sleep", "1000"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]});
    let sleeper_pid = engine
        .exec(id, "sleeper", &bytes(&sleeper), false)
        .expect("exec sleeper");
    assert!(engine.list_processes(id).unwrap().contains(&sleeper_pid));
    assert!(matches!(
        engine.exec(id, "sleeper", &bytes(&sleeper), false),
        Err(ContainerError::ExecAlreadyExists { .. })
    ));
    engine.signal(id, Some("sleeper"), libc::SIGTERM).unwrap();
    assert_eq!(engine.wait(id, Some("sleeper")).unwrap(), 143);

    // The init has no SIGTERM handler, so the kernel drops SIGTERM (as under
    // runc); had it been delivered, the status would be 143, not 137.
    engine.signal(id, None, libc::SIGTERM).unwrap();
    engine.signal(id, None, libc::SIGKILL).unwrap();
    assert_eq!(engine.wait(id, None).unwrap(), 137);
    assert!(matches!(
        engine.signal(id, None, libc::SIGKILL),
        Err(ContainerError::NotRunning(_))
    ));
    engine.remove(id).expect("remove");
    fx.assert_nothing_left(id, &[init, sleeper_pid]);
}

#[test]
fn terminal_process_gets_a_tty_and_its_size() {
    let Some(fx) = Fixture::new("terminal_process_gets_a_tty_and_its_size") else {
        return;
    };
    let engine = &fx.engine;
    let rootfs = &fx.rootfs;
    let id = "tty";
    let script = "tty; stty size; test -t 0 && echo stdin-is-tty; read x; stty size; echo done-$x";
    let mut spec = spec(&["sh", "-c", script]);
    spec["process"]["terminal"] = json!(true);
    spec["process"]["consoleSize"] = json!({"height": 33, "width": 101});
    let pid = engine
        .create(id, &bytes(&spec), rootfs.path(), true)
        .expect("create");
    engine.start(id).expect("start");
    let out = read_until(engine, id, None, "stdin-is-tty");
    assert!(out.contains("/dev/pts/0"), "no terminal: {out:?}");
    assert!(out.contains("33 101"), "size not applied: {out:?}");

    // An exec with a terminal gets its own pty in the container's devpts.
    let tty = json!({"args": ["tty"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"],
                     "terminal": true});
    engine
        .exec(id, "tty", &bytes(&tty), true)
        .expect("exec tty");
    let exec_out = read_all(engine, id, Some("tty"), false).unwrap();
    assert!(
        exec_out.contains("/dev/pts/1"),
        "exec has no terminal: {exec_out:?}"
    );
    assert_eq!(engine.wait(id, Some("tty")).unwrap(), 0);

    // Resizing a running process's terminal: the next `stty size` sees it.
    engine.resize_tty(id, None, 40, 120).expect("resize");
    engine.write_stdin(id, None, b"go\n").unwrap();
    let rest = read_all(engine, id, None, false).unwrap();
    assert!(rest.contains("40 120"), "resize not applied: {rest:?}");
    assert!(rest.contains("done-go"), "stdin not delivered: {rest:?}");
    assert_eq!(
        read_all(engine, id, None, true).unwrap(),
        "",
        "a terminal has no separate stderr"
    );
    assert_eq!(engine.wait(id, None).unwrap(), 0);
    assert!(matches!(
        engine.resize_tty("nope", None, 1, 1),
        Err(ContainerError::NotFound(_))
    ));
    engine.remove(id).expect("remove");
    fx.assert_nothing_left(id, &[pid]);
}

#[test]
fn pipes_have_no_terminal_to_resize() {
    let Some(fx) = Fixture::new("pipes_have_no_terminal_to_resize") else {
        return;
    };
    let engine = &fx.engine;
    let rootfs = &fx.rootfs;
    let id = "notty";
    let spec = spec(&[
        "sh",
        "-c",
        "read line; echo got:$line; test -t 0 || echo not-a-tty",
    ]);
    let pid = engine
        .create(id, &bytes(&spec), rootfs.path(), false)
        .expect("create");
    assert!(matches!(
        engine.resize_tty(id, None, 10, 10),
        Err(ContainerError::NoTerminal)
    ));
    engine.start(id).expect("start");
    assert_eq!(engine.write_stdin(id, None, b"hello\n").unwrap(), 6);
    engine.close_stdin(id, None).unwrap();
    assert!(matches!(
        engine.write_stdin(id, None, b"x"),
        Err(ContainerError::StdinClosed)
    ));
    assert_eq!(
        read_all(engine, id, None, false).unwrap(),
        "got:hello\nnot-a-tty\n"
    );
    assert_eq!(engine.wait(id, None).unwrap(), 0);
    engine.remove(id).expect("remove");
    fx.assert_nothing_left(id, &[pid]);
}

#[test]
fn memory_limit_oom_kills_and_is_reported() {
    let Some(fx) = Fixture::new("memory_limit_oom_kills_and_is_reported") else {
        return;
    };
    let engine = &fx.engine;
    let rootfs = &fx.rootfs;
    let id = "oom";
    let limit = 32 * 1024 * 1024;
    // tail keeps the last "line" of newline-free input in memory: 64 MiB.
    let mut spec = spec(&["sh", "-c", "head -c 67108864 /dev/zero | tail"]);
    spec["linux"]["resources"]["memory"] = json!({"limit": limit, "swap": limit});
    let pid = engine
        .create(id, &bytes(&spec), rootfs.path(), false)
        .expect("create");
    let stats = engine.stats(id).unwrap();
    assert_eq!(stats.memory_limit_bytes, Some(limit as u64));
    engine.start(id).expect("start");
    assert_eq!(engine.wait(id, None).unwrap(), 137);
    let event = engine
        .next_oom_event_timeout(Duration::from_secs(60))
        .unwrap();
    assert_eq!(event.as_deref(), Some(id));
    engine.remove(id).expect("remove");
    fx.assert_nothing_left(id, &[pid]);
}

#[test]
fn stats_report_cpu_memory_and_pids() {
    let Some(fx) = Fixture::new("stats_report_cpu_memory_and_pids") else {
        return;
    };
    let engine = &fx.engine;
    let id = "stats";
    let script = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo busy-done; \
                  while read l; do echo got-$l; done";
    let pid = fx.start(id, &spec(&["sh", "-c", script]));
    read_until(engine, id, None, "busy-done");
    let stats = engine.stats(id).unwrap();
    assert!(stats.cpu_usage_ns > 0, "{stats:?}");
    assert!(stats.memory_usage_bytes > 0, "{stats:?}");
    assert!(stats.pids_current >= 1, "{stats:?}");
    assert_eq!(engine.list_processes(id).unwrap(), vec![pid]);
    engine
        .update(id, br#"{"pids": {"limit": 50}}"#)
        .expect("update");
    let pids_max = fx.v1_file(id, "pids", "pids.max");
    assert_eq!(pids_max.trim(), "50");
    assert!(matches!(
        engine.update(id, b"{not json"),
        Err(ContainerError::InvalidSpec(_))
    ));

    // Pause freezes the cgroup (the kernel reports FROZEN once every task
    // is), resume lets the shell go on reading its input.
    engine.pause(id).expect("pause");
    assert_eq!(
        engine.state(id, None).unwrap().status,
        ProcessStatus::Paused
    );
    let freezer_state = fx.v1_file(id, "freezer", "freezer.state");
    assert_eq!(freezer_state.trim(), "FROZEN");
    assert!(matches!(
        engine.pause(id),
        Err(ContainerError::NotRunning(_))
    ));
    engine.resume(id).expect("resume");
    assert_eq!(
        engine.state(id, None).unwrap().status,
        ProcessStatus::Running
    );
    engine.write_stdin(id, None, b"x\n").unwrap();
    read_until(engine, id, None, "got-x");
    engine.pause(id).expect("pause again");
    // remove() of a paused container thaws and kills it.
    engine.remove(id).expect("remove");
    fx.assert_nothing_left(id, &[pid]);
}

#[test]
fn process_settings_from_the_spec_apply() {
    let Some(fx) = Fixture::new("process_settings_from_the_spec_apply") else {
        return;
    };
    let engine = &fx.engine;
    let id = "settings";
    // The agent raises its own open-file limit at start; a spec without
    // RLIMIT_NOFILE gets the one the agent started with. A soft limit
    // below the hard one makes the raise visible even where this process
    // lacks CAP_SYS_RESOURCE (it then raises only the soft limit).
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let hard = getrlimit(Resource::RLIMIT_NOFILE).unwrap().1;
    setrlimit(Resource::RLIMIT_NOFILE, 512, hard).unwrap();
    husk_agent::fd_limit::raise().expect("raising the open-file limit");
    assert!(getrlimit(Resource::RLIMIT_NOFILE).unwrap().0 > 512);
    let script = "id -u; id -G; umask; hostname; pwd; echo $FOO; \
                  mkdir /tmp/x 2>/dev/null || echo mkdir-denied; \
                  ls /sys/fs/cgroup | grep -c memory; \
                  grep 'open files' /proc/self/limits | tr -s ' ' | cut -d' ' -f4,5; \
                  ls /proc/self/fd";
    let mut spec = spec(&["sh", "-c", script]);
    spec["process"]["rlimits"] = json!([]);
    spec["process"]["user"] =
        json!({"uid": 1000, "gid": 1000, "additionalGids": [1001, 1002], "umask": 0o77});
    spec["process"]["env"] = json!(["PATH=/bin", "FOO=bar"]);
    spec["process"]["cwd"] = json!("/tmp");
    // Without no_new_privs (and without CAP_SYS_ADMIN) the filter must go on
    // before the capabilities are dropped.
    spec["process"]["noNewPrivileges"] = json!(false);
    spec["linux"]["seccomp"] = deny_mkdir();
    let pid = fx.start(id, &spec);
    let out = read_all(engine, id, None, false).unwrap();
    assert_eq!(engine.wait(id, None).unwrap(), 0, "stdout: {out}");
    let lines: Vec<&str> = out.lines().collect();
    let cgroup_line = if std::path::Path::new("/sys/fs/cgroup/memory").exists() {
        "1"
    } else {
        "0"
    };
    assert_eq!(
        lines,
        [
            "1000",
            "1000 1001 1002",
            "0077",
            "husk-test",
            "/tmp",
            "bar",
            "mkdir-denied",
            cgroup_line,
            &format!("512 {hard}"),
            // No descriptor of the agent leaks in: stdio, and ls's own.
            "0",
            "1",
            "2",
            "3"
        ],
        "stderr: {}",
        read_all(engine, id, None, true).unwrap()
    );
    engine.remove(id).expect("remove");
    fx.assert_nothing_left(id, &[pid]);
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    let Some(fx) = Fixture::new("bad_input_is_refused_and_leaves_nothing") else {
        return;
    };
    let engine = &fx.engine;
    let rootfs = &fx.rootfs;
    let good = bytes(&spec(&["sleep", "1000"]));
    let err = |r: Result<u32, ContainerError>| r.expect_err("must fail");

    assert!(matches!(
        err(engine.create("bad-json", b"{nope", rootfs.path(), false)),
        ContainerError::InvalidSpec(_)
    ));
    let missing = rootfs.path().join("missing");
    assert!(matches!(
        err(engine.create("no-rootfs", &good, &missing, false)),
        ContainerError::MissingRootfs(_)
    ));
    assert!(matches!(
        err(engine.create("../x", &good, rootfs.path(), false)),
        ContainerError::InvalidId(_)
    ));
    assert!(matches!(
        engine.start("unknown"),
        Err(ContainerError::NotFound(_))
    ));
    assert!(matches!(
        engine.remove("unknown"),
        Err(ContainerError::NotFound(_))
    ));

    let mut hugepages = spec(&["true"]);
    hugepages["linux"]["resources"]["hugepageLimits"] = json!([{"pageSize": "2MB", "limit": 1}]);
    let e = err(engine.create("unsupported", &bytes(&hugepages), rootfs.path(), false));
    assert!(matches!(e, ContainerError::Unsupported(_)), "{e}");
    let e = err(engine.create(
        "no-program",
        &bytes(&spec(&["/bin/nope"])),
        rootfs.path(),
        false,
    ));
    assert!(e.to_string().contains("/bin/nope"), "{e}");
    let mut user_ns = spec(&["true"]);
    user_ns["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    assert!(matches!(
        err(engine.create("userns", &bytes(&user_ns), rootfs.path(), false)),
        ContainerError::Unsupported(_)
    ));
    // Mount destinations must be absolute and stay inside the rootfs.
    let mut relative = spec(&["true"]);
    relative["mounts"][0]["destination"] = json!("../../etc");
    let e = err(engine.create("relative", &bytes(&relative), rootfs.path(), false));
    assert!(matches!(e, ContainerError::InvalidSpec(_)), "{e}");
    let e = err(engine.create(
        "nul",
        &bytes(&spec(&["sh", "-c", "a\0b"])),
        rootfs.path(),
        false,
    ));
    assert!(matches!(e, ContainerError::InvalidSpec(_)), "{e}");
    let e = err(engine.create("no-args", &bytes(&spec(&[])), rootfs.path(), false));
    assert!(matches!(e, ContainerError::InvalidSpec(_)), "{e}");
    for id in [
        "relative",
        "nul",
        "no-args",
        "bad-json",
        "no-rootfs",
        "unsupported",
        "no-program",
        "userns",
    ] {
        fx.assert_nothing_left(id, &[]);
        assert!(
            matches!(engine.start(id), Err(ContainerError::NotFound(_))),
            "{id} was kept"
        );
    }

    let pid = engine
        .create("dup", &good, rootfs.path(), false)
        .expect("create");
    assert!(matches!(
        err(engine.create("dup", &good, rootfs.path(), false)),
        ContainerError::AlreadyExists(_)
    ));
    assert!(matches!(
        engine.exec("dup", "e", b"{}", false),
        Err(ContainerError::InvalidSpec(_))
    ));
    let sleeper = json!({"args": ["sleep", "1"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    assert!(matches!(
        engine.exec("dup", "e", &bytes(&sleeper), false),
        Err(ContainerError::NotRunning(_))
    ));
    assert_eq!(
        engine.state("dup", None).unwrap().status,
        ProcessStatus::Created
    );
    engine.start("dup").expect("start");
    assert_eq!(
        engine.state("dup", None).unwrap().status,
        ProcessStatus::Running
    );
    assert!(matches!(
        engine.start("dup"),
        Err(ContainerError::AlreadyStarted(_))
    ));
    assert!(matches!(
        engine.signal("dup", None, 9999),
        Err(ContainerError::InvalidSignal(9999))
    ));
    assert!(matches!(
        engine.wait("dup", Some("nope")),
        Err(ContainerError::ExecNotFound { .. })
    ));
    engine.remove("dup").expect("remove");
    fx.assert_nothing_left("dup", &[pid]);
}

#[test]
fn cgroup_v2_hierarchy_works_and_refuses_missing_controllers() {
    let Some(fx) =
        Fixture::with_cgroup2("cgroup_v2_hierarchy_works_and_refuses_missing_controllers")
    else {
        return;
    };
    let engine = &fx.engine;
    let rootfs = &fx.rootfs;
    let id = "v2";
    // In its own cgroup namespace the container sits at the root of the
    // cgroup2 filesystem mounted at /sys/fs/cgroup.
    let script = "grep ^0:: /proc/self/cgroup; test -f /sys/fs/cgroup/cgroup.procs && echo cgroup2-mounted; sleep 1000";
    let pid = fx.start(id, &spec(&["sh", "-c", script]));
    let out = read_until(engine, id, None, "cgroup2-mounted");
    assert_eq!(out, "0::/\ncgroup2-mounted\n");
    let procs = std::fs::read_to_string(fx.cgroup_dirs(id)[1].join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l == pid.to_string()),
        "init {pid} not in the v2 cgroup: {procs:?}"
    );
    assert!(engine.stats(id).unwrap().cpu_usage_ns > 0);
    // This hierarchy has no memory controller: a limit must fail, not vanish.
    let e = engine
        .update(id, br#"{"memory": {"limit": 33554432}}"#)
        .expect_err("no memory controller");
    assert!(e.to_string().contains("memory.max"), "{e}");
    let mut limited = spec(&["true"]);
    limited["linux"]["resources"]["memory"] = json!({"limit": 33554432});
    let e = engine
        .create("v2-limited", &bytes(&limited), rootfs.path(), false)
        .expect_err("no memory controller");
    assert!(e.to_string().contains("memory.max"), "{e}");
    fx.assert_nothing_left("v2-limited", &[]);
    engine.remove(id).expect("remove");
    fx.assert_nothing_left(id, &[pid]);
}
