//! `containerd-shim-husk-v2 ... delete`: cleaning up after a shim that is
//! gone.
//!
//! containerd runs it in the bundle when it loses the shim's connection (the
//! husk process was killed or crashed) and after a failed create, with a
//! 5 s limit; its stdout must be a `DeleteResponse`. Whatever the shim left
//! goes: the container's rootfs mount, and, if the sandbox's shim is dead,
//! its host resources (the pod network's tc filters, the host cgroup), the
//! whole sandbox directory (its mounts first) and the shim's socket.
//! The VM died with its process, so there is nothing else to stop. The exit
//! status reported is 128 + SIGKILL, as runc's shim reports a killed task.

use std::io::Write;
use std::time::SystemTime;

use anyhow::Context;
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;

use super::args::ShimArgs;
use super::start::{address_of, is_live, socket_path};
use super::state::BundleState;
use crate::sandbox::host::release_recorded;
use crate::sandbox::mounts::unmount_all_under;
use crate::sandbox::SandboxDir;

const KILLED: u32 = 128 + 9;

pub fn run(args: &ShimArgs) -> anyhow::Result<()> {
    let bundle = match &args.bundle {
        Some(b) => b.clone(),
        None => std::env::current_dir().context("finding the bundle")?,
    };
    if let Some(state) = BundleState::read(&bundle) {
        if state.mounted_rootfs {
            unmount_all_under(&bundle.join("rootfs"))
                .context("unmounting the container's rootfs")?;
        }
        let socket = socket_path(&args.address, &args.namespace, &state.sandbox_id);
        if !is_serving(&socket, &state.sandbox_id) {
            let dir = SandboxDir::new(&state.state_dir, &state.sandbox_id);
            release_recorded(&dir);
            dir.remove().context("removing the sandbox directory")?;
            let _ = std::fs::remove_file(&socket);
        }
        BundleState::remove(&bundle);
    }
    let mut resp = DeleteResponse::new();
    resp.exit_status = KILLED;
    resp.exited_at = Some(super::convert::timestamp(SystemTime::now())).into();
    let bytes = resp
        .write_to_bytes()
        .context("encoding the DeleteResponse")?;
    std::io::stdout()
        .write_all(&bytes)
        .context("writing the DeleteResponse")?;
    Ok(())
}

/// Whether the sandbox's shim still answers on `socket`. Accepting a
/// connection is not enough: a dying shim's listener accepts until the
/// kernel closes it, which can be after containerd saw the shim's
/// connection drop and ran this; a dead shim's sandbox left alone leaks.
fn is_serving(socket: &std::path::Path, sandbox_id: &str) -> bool {
    use containerd_shim_protos::{api::ConnectRequest, ttrpc, TaskClient};
    if !is_live(socket) {
        return false;
    }
    let Ok(client) = ttrpc::Client::connect(&address_of(socket)) else {
        return false;
    };
    let req = ConnectRequest {
        id: sandbox_id.to_string(),
        ..Default::default()
    };
    let ctx = ttrpc::context::with_timeout(std::time::Duration::from_secs(2).as_nanos() as i64);
    match TaskClient::new(client).connect(ctx, &req) {
        Ok(_) | Err(ttrpc::Error::RpcStatus(_)) => true,
        Err(_) => false,
    }
}
