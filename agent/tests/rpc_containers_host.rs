//! Container RPCs end to end on a host, as root: the built husk-agent serves
//! on a Unix socket, the generated ttrpc client creates a busybox container
//! and reads its output and exit code; bad requests get clear statuses and
//! leave nothing behind.

mod agent_process;
mod common;

use std::path::Path;
use std::thread;

use agent_process::{
    create_req, create_sandbox, ctx, read_all, start_req, status_of, wait, AgentProcess,
};
use common::{busybox_rootfs, can_run, spec};
use husk_agent_protocol::agent;
use husk_agent_protocol::ttrpc::Code;

#[test]
fn a_busybox_container_runs_and_reports_output_and_exit_code() {
    if !can_run("a_busybox_container_runs_and_reports_output_and_exit_code") {
        return;
    }
    let agent = AgentProcess::start("ctr-run");
    let c = agent.client.clone();
    create_sandbox(&c);
    let rootfs = busybox_rootfs();
    let script = spec(&["sh", "-c", "echo hi; echo err >&2; exit 3"]);
    let pid = c
        .create_container(ctx(), &create_req("echo", &script, rootfs.path()))
        .unwrap()
        .pid;
    assert!(pid > 1, "pid {pid}");
    c.start_container(ctx(), &start_req("echo")).unwrap();

    let (c1, c2) = (c.clone(), c.clone());
    let stdout = thread::spawn(move || read_all(&c1, "echo", false));
    let stderr = thread::spawn(move || read_all(&c2, "echo", true));
    assert_eq!(wait(&c, "echo"), 3);
    assert_eq!(String::from_utf8(stdout.join().unwrap()).unwrap(), "hi\n");
    assert_eq!(String::from_utf8(stderr.join().unwrap()).unwrap(), "err\n");

    let (code, msg) = status_of(c.start_container(ctx(), &start_req("echo")));
    assert_eq!(code, Code::FAILED_PRECONDITION, "second start: {msg}");

    let remove = agent::RemoveContainerRequest {
        container_id: "echo".into(),
        ..Default::default()
    };
    c.remove_container(ctx(), &remove).unwrap();
    let (code, msg) = status_of(c.start_container(ctx(), &start_req("echo")));
    assert_eq!(code, Code::NOT_FOUND, "start after remove: {msg}");
}

/// Rootfs with a mount: the agent bind-mounts the rootfs at a new path,
/// runs the container from there, and takes the mount and folder away again.
#[test]
fn a_rootfs_mount_is_made_for_the_container_and_removed_with_it() {
    if !can_run("a_rootfs_mount_is_made_for_the_container_and_removed_with_it") {
        return;
    }
    let agent = AgentProcess::start("ctr-mount");
    let c = &agent.client;
    create_sandbox(c);
    let rootfs = busybox_rootfs();
    let target = agent.dir.join("mnt");
    let mut req = create_req("m1", &spec(&["sh", "-c", "exit 7"]), &target);
    req.rootfs.mut_or_insert_default().source = rootfs.path().display().to_string();
    req.rootfs.mut_or_insert_default().fstype = "none".into();
    req.rootfs.mut_or_insert_default().options = vec!["bind".into()];
    c.create_container(ctx(), &req).unwrap();
    assert!(target.join("bin/busybox").exists(), "the rootfs is mounted");
    c.start_container(ctx(), &start_req("m1")).unwrap();
    assert_eq!(wait(c, "m1"), 7);
    let remove = agent::RemoveContainerRequest {
        container_id: "m1".into(),
        ..Default::default()
    };
    c.remove_container(ctx(), &remove).unwrap();
    assert!(!target.exists(), "mount and mount point are gone");

    req.container_id = "m2".into();
    req.rootfs.mut_or_insert_default().fstype = "no-such-fs".into();
    req.rootfs.mut_or_insert_default().options.clear();
    let (code, msg) = status_of(c.create_container(ctx(), &req));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("no-such-fs"), "{msg}");
    assert!(!target.exists(), "a failed mount leaves no mount point");
}

#[test]
fn bad_container_requests_get_clear_statuses_and_leave_nothing() {
    if !can_run("bad_container_requests_get_clear_statuses_and_leave_nothing") {
        return;
    }
    let agent = AgentProcess::start("ctr-bad");
    let c = &agent.client;
    create_sandbox(c);
    let rootfs = busybox_rootfs();
    let rootfs = rootfs.path();
    let sleeper = spec(&["sleep", "600"]);

    let mut bad_spec = create_req("c1", &sleeper, rootfs);
    bad_spec.oci_spec = b"{ not json".to_vec();
    let (code, msg) = status_of(c.create_container(ctx(), &bad_spec));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("spec"), "{msg}");

    let missing = create_req("c1", &sleeper, Path::new("/nonexistent/husk-rootfs"));
    let (code, msg) = status_of(c.create_container(ctx(), &missing));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("/nonexistent/husk-rootfs"), "{msg}");

    let (code, msg) = status_of(c.start_container(ctx(), &start_req("nobody")));
    assert_eq!(code, Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("nobody"), "{msg}");

    // The failures left no trace: the id is free and works.
    c.create_container(ctx(), &create_req("c1", &sleeper, rootfs))
        .unwrap();
    let (code, msg) = status_of(c.create_container(ctx(), &create_req("c1", &sleeper, rootfs)));
    assert_eq!(code, Code::ALREADY_EXISTS, "{msg}");
    c.start_container(ctx(), &start_req("c1")).unwrap();
    let (code, msg) = status_of(c.start_container(ctx(), &start_req("c1")));
    assert_eq!(code, Code::FAILED_PRECONDITION, "{msg}");

    let list = agent::ListProcessesRequest {
        container_id: "c1".into(),
        ..Default::default()
    };
    assert!(!c.list_processes(ctx(), &list).unwrap().pids.is_empty());

    // DestroySandbox takes the running container down with it.
    let destroy = agent::DestroySandboxRequest {
        sandbox_id: "pod".into(),
        ..Default::default()
    };
    c.destroy_sandbox(ctx(), &destroy).unwrap();
    create_sandbox(c);
    let (code, msg) = status_of(c.list_processes(ctx(), &list));
    assert_eq!(code, Code::NOT_FOUND, "{msg}");
}
