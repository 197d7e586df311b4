//! What a container's bundle remembers for husk (`<bundle>/husk.json`), so
//! that `delete` can clean up after a shim that died (kill -9, a crash)
//! knowing nothing but the bundle: which sandbox the container was in,
//! where that sandbox's directory is, and whether husk mounted the rootfs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE: &str = "husk.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleState {
    pub sandbox_id: String,
    /// husk's state directory (config `runtime.state_dir`) at create time.
    pub state_dir: PathBuf,
    /// `<bundle>/rootfs` was mounted by husk (containerd gave mounts).
    pub mounted_rootfs: bool,
}

impl BundleState {
    pub fn write(&self, bundle: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = bundle.join(format!("{FILE}.tmp"));
        std::fs::write(&tmp, json)?;
        std::fs::rename(tmp, bundle.join(FILE))
    }

    /// None when the bundle has no (readable) state: the container never
    /// got as far as its host mounts.
    pub fn read(bundle: &Path) -> Option<Self> {
        let text = std::fs::read(bundle.join(FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn remove(bundle: &Path) {
        let _ = std::fs::remove_file(bundle.join(FILE));
    }
}
