//! The filesystem behind the device: fuse-backend-rs's passthrough, confined
//! to the shared directory, plus the little policy husk adds on top.
//!
//! Confinement comes from how the passthrough works: every inode is an
//! O_PATH fd opened with openat(parent_fd, name, O_NOFOLLOW), names with '/'
//! are refused, ".." at the root resolves to the root, and only regular files
//! and directories are ever reopened for I/O (a symlink or device inode is
//! never opened, so the host never follows a guest-made link). LINK and
//! RENAME name both ends by inodes the guest looked up, so both stay inside.
//! What the passthrough allows and husk refuses: creating device nodes,
//! which would hand host devices to any host process that opens the share.

use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{InHeader, MknodIn, Opcode};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::Reader;

use super::device::{CacheMode, FsConfig, FsError};

/// The FUSE server the device hands each request to.
pub(super) type FuseServer = Server<Arc<PassthroughFs>>;

/// A fresh server over `config.shared_dir` (already validated and canonical).
/// The root is opened when the guest sends FUSE INIT.
pub(super) fn new_server(config: &FsConfig) -> Result<FuseServer, FsError> {
    let fs =
        PassthroughFs::new(passthrough_config(config)).map_err(|source| FsError::Passthrough {
            path: config.shared_dir.clone(),
            source,
        })?;
    Ok(Server::new(Arc::new(fs)))
}

fn passthrough_config(config: &FsConfig) -> Config {
    let (cache_policy, timeout) = match config.cache {
        CacheMode::None => (CachePolicy::Never, Duration::ZERO),
        CacheMode::Auto => (CachePolicy::Auto, Duration::from_secs(1)),
        CacheMode::Always => (CachePolicy::Always, Duration::from_secs(86_400)),
    };
    Config {
        root_dir: config.shared_dir.to_string_lossy().into_owned(),
        cache_policy,
        attr_timeout: timeout,
        entry_timeout: timeout,
        xattr: config.xattr,
        do_import: true,
        ..Config::default()
    }
}

/// The errno husk's policy answers `header` with, if it refuses the request.
/// `body` reads the request after its header.
pub(super) fn refused(header: &InHeader, mut body: Reader<'_>) -> Option<i32> {
    if header.opcode != Opcode::Mknod as u32 {
        return None;
    }
    let Ok(args) = body.read_obj::<MknodIn>() else {
        // Too short: the server itself replies with an error.
        return None;
    };
    let kind = args.mode & libc::S_IFMT;
    // A 0:0 character device is an overlayfs whiteout, not a device.
    let device = kind == libc::S_IFBLK || (kind == libc::S_IFCHR && args.rdev != 0);
    device.then(|| {
        tracing::warn!(
            mode = args.mode,
            rdev = args.rdev,
            "virtio-fs: refusing to create a device node"
        );
        libc::EPERM
    })
}
