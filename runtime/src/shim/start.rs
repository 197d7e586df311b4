//! `containerd-shim-husk-v2 ... start`: find or start the sandbox's shim.
//!
//! containerd runs `start` in the bundle, with stdout and stderr on one pipe
//! it reads to the end and takes whole as the address, and dials that
//! address once, right away. So: the socket is bound and listening before
//! its address is printed, the daemon gets the listening fd and no stdio
//! (holding the pipe would hang containerd), and the address also goes to
//! `<bundle>/address`, which containerd reads back after its own restart.
//! Every container of a sandbox shares one shim (one husk process, one VM):
//! the socket is named after the sandbox, and a container that joins a
//! sandbox whose shim is up just gets that shim's address.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use super::args::ShimArgs;
use crate::sandbox::spec::{BundleSpec, SandboxRole};

/// Where containerd's shims put their sockets, whatever its state dir.
pub const SOCKET_DIR: &str = "/run/containerd/s";
/// The fd the daemon finds its listening socket on.
pub const LISTENER_FD: i32 = 3;

/// The sandbox a container of this bundle belongs to: its own id, or the
/// sandbox named by CRI's annotations.
pub fn sandbox_of(id: &str, bundle: &Path) -> anyhow::Result<String> {
    let spec = BundleSpec::load(bundle)?;
    Ok(match spec.sandbox_role()? {
        SandboxRole::Own => id.to_string(),
        SandboxRole::Join(sandbox) => sandbox,
    })
}

/// `/run/containerd/s/<sha256(address/namespace/sandbox)>`, as containerd's
/// own shims name theirs.
pub fn socket_path(address: &str, namespace: &str, sandbox: &str) -> PathBuf {
    let joined = format!("{address}/{namespace}/{sandbox}");
    let digest = Sha256::digest(joined.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Path::new(SOCKET_DIR).join(hex)
}

pub fn address_of(socket: &Path) -> String {
    format!("unix://{}", socket.display())
}

/// Whether a shim listens on `socket`.
pub fn is_live(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

pub fn run(args: &ShimArgs) -> anyhow::Result<()> {
    let bundle = std::env::current_dir().context("finding the bundle (the working directory)")?;
    let sandbox = sandbox_of(&args.id, &bundle)?;
    let socket = socket_path(&args.address, &args.namespace, &sandbox);
    if !is_live(&socket) {
        if sandbox != args.id {
            bail!(
                "container {} joins sandbox {sandbox}, whose shim is not running (create the \
                 sandbox's own container first)",
                args.id
            );
        }
        let listener = bind(&socket)?;
        spawn_daemon(args, &bundle, listener)?;
    }
    let address = address_of(&socket);
    std::fs::write(bundle.join("address"), &address)
        .with_context(|| format!("writing {}/address", bundle.display()))?;
    print!("{address}");
    Ok(())
}

/// Binds the sandbox's socket; a socket file left by a dead shim goes first.
fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    std::fs::create_dir_all(SOCKET_DIR).with_context(|| format!("creating {SOCKET_DIR}"))?;
    if socket.exists() {
        std::fs::remove_file(socket)
            .with_context(|| format!("removing the stale shim socket {}", socket.display()))?;
    }
    UnixListener::bind(socket)
        .with_context(|| format!("binding the shim socket {}", socket.display()))
}

/// Starts `husk serve` for this sandbox in its own session, the listener on
/// fd 3, no stdio; returns once it runs (it needs nothing from us).
fn spawn_daemon(args: &ShimArgs, bundle: &Path, listener: UnixListener) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the husk binary")?;
    let fd = OwnedFd::from(listener);
    let raw = fd.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.arg0("containerd-shim-husk-v2")
        .args(["-namespace", &args.namespace, "-address", &args.address])
        .args(["-publish-binary", &args.publish_binary, "-id", &args.id])
        .args(args.debug.then_some("-debug"))
        .arg("serve")
        .current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (setsid, dup2, fcntl) between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The listener may already be fd 3, where dup2 does nothing and
            // would leave close-on-exec set.
            let moved = if raw == LISTENER_FD {
                libc::fcntl(raw, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, LISTENER_FD)
            };
            if libc::setsid() < 0 || moved < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the shim daemon")?;
    tracing::debug!(pid = child.id(), "shim daemon started");
    drop(fd);
    Ok(())
}

/// The listener `start` handed down, in the daemon.
pub fn inherited_listener() -> anyhow::Result<OwnedFd> {
    // SAFETY: fd 3 was put there by `spawn_daemon` for this process alone.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTENER_FD) };
    let st = nix::sys::stat::fstat(&fd).context("the shim daemon has no listener on fd 3")?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        bail!("fd 3 of the shim daemon is not its listening socket");
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_named_like_containerds() {
        // `printf %s /run/containerd/containerd.sock/default/c1 | sha256sum`
        let p = socket_path("/run/containerd/containerd.sock", "default", "c1");
        assert_eq!(
            p,
            Path::new(SOCKET_DIR)
                .join("d25aa4ef11a84e954e74a5bcff06557d0b6ea8d0c00243896f29826694bbd888")
        );
        assert_eq!(
            p,
            socket_path("/run/containerd/containerd.sock", "default", "c1")
        );
        assert_ne!(
            p,
            socket_path("/run/containerd/containerd.sock", "k8s.io", "c1")
        );
        assert_eq!(address_of(&p), format!("unix://{}", p.display()));
    }
}
