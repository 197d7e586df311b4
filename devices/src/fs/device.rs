//! The virtio-fs device's virtio contract: configuration, config space,
//! activation and reset.
//!
//! As with vsock, every eventfd is created with the device so event-manager
//! registrations never change across guest resets. Reset also drops the FUSE
//! server and every inode and handle the guest held, and empties the DAX
//! window, so a rebooted guest starts from a fresh mount. Reset runs on the
//! vCPU thread that wrote the status register, whose seccomp list opens no
//! files, so it only marks the server stale; the device thread makes the
//! new one (opening the share afresh) before it serves the next request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{self, FuseServer};
use super::dax::{DaxWindow, DAX_ALIGNMENT};
use super::space::SpaceBudget;
use super::{FsMetrics, DAX_SHM_ID, VIRTIO_ID_FS};
use crate::virtio::{
    ActivateContext, ActivateError, ActiveQueues, QueueSnapshot, ShmRegion, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// Size of the tag field in config space; the guest mounts the tag.
pub const TAG_LEN: usize = 36;
/// Cap on request queues (queue 0, hiprio, comes on top).
pub const MAX_REQUEST_QUEUES: usize = 16;
const QUEUE_MAX_SIZE: u16 = 256;

/// How long the guest may cache names, attributes and file data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// No caching: every access reaches the host (for directories the host changes).
    None,
    /// Short timeouts, page cache kept while the file is unchanged.
    #[default]
    Auto,
    /// The guest owns the tree: long timeouts, page cache kept.
    Always,
}

/// How the VMM configures a virtio-fs device.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Name the guest mounts (`mount -t virtiofs TAG /mnt`), 1..=36 bytes.
    pub tag: String,
    /// Host directory the guest sees as the root of the filesystem.
    pub shared_dir: PathBuf,
    pub cache: CacheMode,
    /// Pass extended attributes through.
    pub xattr: bool,
    /// Size in bytes of the DAX window, a multiple of 2 MiB; None disables DAX.
    pub dax_window: Option<u64>,
    /// Number of request queues, 1..=MAX_REQUEST_QUEUES.
    pub request_queues: usize,
    /// How many bytes the guest may add to the share (see `space`); None:
    /// no limit beyond the host filesystem's.
    pub size_limit: Option<u64>,
}

impl FsConfig {
    /// A share of `dir` as `tag` with the defaults: cache auto, no xattr,
    /// no DAX window, one request queue, no size limit.
    pub fn new(tag: &str, dir: &std::path::Path) -> Self {
        Self {
            tag: tag.to_string(),
            shared_dir: dir.to_path_buf(),
            cache: CacheMode::Auto,
            xattr: false,
            dax_window: None,
            request_queues: 1,
            size_limit: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag {0:?} must be 1 to {TAG_LEN} bytes")]
    BadTag(String),
    #[error("shared directory {path}: {source}")]
    SharedDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("shared directory {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("shared directory {0} is not valid UTF-8")]
    NonUtf8Path(PathBuf),
    #[error("{0} request queues requested; virtio-fs supports 1 to {MAX_REQUEST_QUEUES}")]
    RequestQueues(usize),
    #[error("DAX window of {0} bytes must be a non-zero multiple of {DAX_ALIGNMENT} bytes")]
    DaxWindowSize(u64),
    #[error("cannot reserve a DAX window of {len} bytes: {source}")]
    DaxReserve {
        len: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("a virtio-fs size limit must be more than 0 bytes")]
    ZeroSizeLimit,
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("cannot set up the passthrough filesystem over {path}: {source}")]
    Passthrough {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FsConfig {
    /// Checks the configuration; returns the shared directory, canonical.
    fn validate(&self) -> Result<PathBuf, FsError> {
        if self.tag.is_empty() || self.tag.len() > TAG_LEN {
            return Err(FsError::BadTag(self.tag.clone()));
        }
        if !(1..=MAX_REQUEST_QUEUES).contains(&self.request_queues) {
            return Err(FsError::RequestQueues(self.request_queues));
        }
        if let Some(len) = self.dax_window {
            if len == 0 || len % DAX_ALIGNMENT != 0 {
                return Err(FsError::DaxWindowSize(len));
            }
        }
        if self.size_limit == Some(0) {
            return Err(FsError::ZeroSizeLimit);
        }
        canonical_dir(&self.shared_dir)
    }
}

// The passthrough filesystem opens its root with O_NOFOLLOW, so resolve
// symlinks in the configured path here, once, from the host's point of view.
fn canonical_dir(path: &Path) -> Result<PathBuf, FsError> {
    let shared_dir = |source| FsError::SharedDir {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.canonicalize().map_err(shared_dir)?;
    if !dir.metadata().map_err(shared_dir)?.is_dir() {
        return Err(FsError::NotADirectory(path.to_path_buf()));
    }
    if dir.to_str().is_none() {
        return Err(FsError::NonUtf8Path(dir));
    }
    Ok(dir)
}

pub struct FsDevice {
    pub(super) config: FsConfig,
    config_space: Vec<u8>,
    queue_sizes: Vec<u16>,
    pub(super) queue_evts: Vec<EventFd>,
    pub(super) activate_evt: EventFd,
    pub(super) active: Option<ActiveQueues>,
    pub(super) server: FuseServer,
    /// Set by a reset: `server` is replaced before the next request.
    pub(super) server_stale: bool,
    pub(super) dax: Option<DaxWindow>,
    dax_base: Option<GuestAddress>,
    pub(super) metrics: Arc<FsMetrics>,
    /// The size limit's usage; it outlives servers (guest resets).
    space: Option<Arc<SpaceBudget>>,
}

impl FsDevice {
    pub fn new(config: &FsConfig) -> Result<Self, FsError> {
        let shared_dir = config.validate()?;
        let config = FsConfig {
            shared_dir,
            ..config.clone()
        };
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(FsError::EventFd);
        let queue_count = 1 + config.request_queues;
        let dax = match config.dax_window {
            Some(len) => {
                Some(DaxWindow::new(len).map_err(|source| FsError::DaxReserve { len, source })?)
            }
            None => None,
        };
        let metrics = Arc::new(FsMetrics::default());
        let space = config.size_limit.map(|l| Arc::new(SpaceBudget::new(l)));
        tracing::debug!(
            tag = config.tag,
            size_limit = config.size_limit,
            "virtio-fs policy: no device nodes, no setuid/setgid files, no security.capability"
        );
        Ok(Self {
            server: backend::new_server(&config, &metrics, space.as_ref())?,
            server_stale: false,
            config_space: config_space(&config),
            queue_sizes: vec![QUEUE_MAX_SIZE; queue_count],
            queue_evts: (0..queue_count).map(|_| evt()).collect::<Result<_, _>>()?,
            activate_evt: evt()?,
            active: None,
            dax,
            dax_base: None,
            metrics,
            space,
            config,
        })
    }

    /// After a reset, a fresh server (on the device thread, before it
    /// serves anything); if that fails the old one keeps serving and the
    /// guest's next INIT re-imports the root.
    pub(super) fn renew_server_if_stale(&mut self) {
        if !std::mem::take(&mut self.server_stale) {
            return;
        }
        match backend::new_server(&self.config, &self.metrics, self.space.as_ref()) {
            // The old server's nodes and handles are closed with it.
            Ok(server) => self.server = server,
            Err(e) => {
                crate::error_limited!("virtio-fs: cannot recreate the filesystem on reset: {e}")
            }
        }
    }

    pub fn metrics(&self) -> Arc<FsMetrics> {
        self.metrics.clone()
    }

    /// Bytes charged against the size limit, if there is one.
    pub fn space_used(&self) -> Option<u64> {
        self.space.as_ref().map(|s| s.used())
    }

    /// The configuration in use; `shared_dir` is canonical.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }
}

// struct virtio_fs_config: tag[36] (NUL-padded) then num_request_queues (le32).
fn config_space(config: &FsConfig) -> Vec<u8> {
    let mut space = vec![0u8; TAG_LEN];
    space[..config.tag.len()].copy_from_slice(config.tag.as_bytes());
    space.extend((config.request_queues as u32).to_le_bytes());
    space
}

impl VirtioDevice for FsDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok());
            *b = at
                .and_then(|o| self.config_space.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        crate::warn_limited!(offset, "virtio-fs: guest wrote read-only config space");
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.active = Some(ctx.into_active(self.active.is_some(), self.queue_sizes.len())?);
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    fn reset(&mut self) {
        self.active = None;
        // The guest's nodes and handles are gone with the reset: its
        // orphans are freed now, its server replaced on the device thread.
        self.server_stale = true;
        if let Some(space) = &self.space {
            space.guest_reset();
        }
        if let Some(dax) = self.dax.as_mut() {
            if let Err(e) = dax.clear() {
                crate::error_limited!("virtio-fs: cannot empty the DAX window on reset: {e}");
            }
        }
    }

    fn active_queue_states(&self) -> Option<Vec<QueueSnapshot>> {
        self.active.as_ref().map(ActiveQueues::snapshots)
    }

    fn shm_regions(&self) -> Vec<ShmRegion> {
        self.dax
            .iter()
            .map(|dax| ShmRegion {
                id: DAX_SHM_ID,
                host_addr: dax.host_addr(),
                len: dax.len(),
            })
            .collect()
    }

    fn set_shm_base(&mut self, id: u8, guest_base: GuestAddress) {
        if id == DAX_SHM_ID && self.dax.is_some() {
            self.dax_base = Some(guest_base);
        } else {
            tracing::warn!(id, "virtio-fs: no shared memory region with this id");
        }
    }

    fn shm_base(&self, id: u8) -> Option<GuestAddress> {
        (id == DAX_SHM_ID).then_some(self.dax_base).flatten()
    }
}
