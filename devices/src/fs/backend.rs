//! The filesystem behind the device: fuse-backend-rs's passthrough, confined
//! to the shared directory, under husk's policy (`policy::PolicyFs`).
//!
//! Confinement comes from how the passthrough works: every inode is an
//! O_PATH fd opened with openat(parent_fd, name, O_NOFOLLOW), names with '/'
//! are refused, ".." at the root resolves to the root, and only regular files
//! and directories are ever reopened for I/O (a symlink or device inode is
//! never opened, so the host never follows a guest-made link). LINK and
//! RENAME name both ends by inodes the guest looked up, so both stay inside.
//! What the passthrough allows and the policy refuses: device nodes,
//! setuid/setgid files, file capabilities, and growth past a size limit.

use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use super::device::{CacheMode, FsConfig, FsError};
use super::policy::PolicyFs;
use super::space::SpaceBudget;
use super::FsMetrics;

/// The FUSE server the device hands each request to.
pub(super) type FuseServer = Server<Arc<PolicyFs>>;

/// A fresh server over `config.shared_dir` (already validated and canonical),
/// counting into `metrics` and charging `space`, which outlives servers.
/// The root is opened when the guest sends FUSE INIT.
pub(super) fn new_server(
    config: &FsConfig,
    metrics: &Arc<FsMetrics>,
    space: Option<&Arc<SpaceBudget>>,
) -> Result<FuseServer, FsError> {
    let passthrough = passthrough_config(config);
    // The guest keeps a missing name as long as one that exists.
    let negative_timeout = passthrough.entry_timeout;
    let fs = PassthroughFs::new(passthrough).map_err(|source| FsError::Passthrough {
        path: config.shared_dir.clone(),
        source,
    })?;
    let fs = PolicyFs::new(fs, metrics.clone(), space.cloned(), negative_timeout);
    Ok(Server::new(Arc::new(fs)))
}

fn passthrough_config(config: &FsConfig) -> Config {
    let (cache_policy, timeout) = match config.cache {
        CacheMode::None => (CachePolicy::Never, Duration::ZERO),
        // fuse-backend-rs's Auto drops the guest's page cache on every
        // open (no KEEP_CACHE): every exec re-reads the binary. Its Always
        // keeps it; with short timeouts and AUTO_INVAL_DATA (`PolicyFs`)
        // the guest still sees host changes within a second.
        CacheMode::Auto => (CachePolicy::Always, Duration::from_secs(1)),
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
